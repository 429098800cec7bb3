package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math/bits"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Pure helpers: percentiles, frame field extraction, per-subscriber delivery accounting and
// process CPU/RSS probes. Everything here is tested in stats_test.go.

// percentiles summarises latency samples (microseconds). The slice is sorted in place.
type percentiles struct {
	Count         int
	P50, P90, P99 time.Duration
	Max           time.Duration
}

// summarize sorts samples (µs) and returns their percentiles (nearest rank).
func summarize(samples []uint32) percentiles {
	if len(samples) == 0 {
		return percentiles{}
	}
	slices.Sort(samples)
	at := func(q float64) time.Duration {
		return time.Duration(samples[rank(len(samples), q)]) * time.Microsecond
	}
	return percentiles{
		Count: len(samples),
		P50:   at(0.50), P90: at(0.90), P99: at(0.99),
		Max: time.Duration(samples[len(samples)-1]) * time.Microsecond,
	}
}

// rank is the nearest-rank index of quantile q in n sorted samples.
func rank(n int, q float64) int {
	i := int(q*float64(n)+0.999999999) - 1
	return min(max(i, 0), n-1)
}

// durationsToMicros converts durations to µs samples, saturating at the uint32 range.
func durationsToMicros(ds []time.Duration) []uint32 {
	out := make([]uint32, 0, len(ds))
	for _, d := range ds {
		out = append(out, micros(d))
	}
	return out
}

func micros(d time.Duration) uint32 {
	us := d.Microseconds()
	switch {
	case us < 0:
		return 0
	case us > int64(^uint32(0)):
		return ^uint32(0)
	}
	return uint32(us)
}

// intField finds `"name":<digits>` in b and parses the (non-negative) integer. It does not
// decode JSON: the load tool's own payloads put seq and ts where nothing else can shadow them
// (the envelope's keys are pkg_id, req_id and data).
func intField(b []byte, key string) (int64, bool) {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return 0, false
	}
	i += len(key)
	var n int64
	start := i
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		n = n*10 + int64(b[i]-'0')
	}
	return n, i > start
}

const (
	seqKey = `"seq":`
	tsKey  = `"ts":`
)

// seqTS extracts the sequence number and send timestamp of a load-tool broadcast frame.
func seqTS(frame []byte) (seq, ts int64, ok bool) {
	seq, ok = intField(frame, seqKey)
	if !ok {
		return 0, 0, false
	}
	ts, ok = intField(frame, tsKey)
	return seq, ts, ok
}

// payload builds the data object of broadcast seq: {"seq":..,"ts":..,"pad":"…"} padded so
// that the object is size bytes long (or as short as possible when size is smaller).
func payload(buf []byte, seq int, ts int64, size int) []byte {
	buf = append(buf[:0], `{"seq":`...)
	buf = strconv.AppendInt(buf, int64(seq), 10)
	buf = append(buf, `,"ts":`...)
	buf = strconv.AppendInt(buf, ts, 10)
	buf = append(buf, `,"pad":"`...)
	for pad := size - len(buf) - 2; pad > 0; pad-- {
		buf = append(buf, 'x')
	}
	return append(buf, `"}`...)
}

// delivery is one subscriber's account of a fan-out run. Only the subscriber's read goroutine
// touches it while the run lasts.
type delivery struct {
	seen      []uint64 // bitmap of sequence numbers received
	last      []int64  // per producer: last sequence received (-1: none)
	unique    int
	dup, ooo  int
	foreign   int      // sequence numbers outside this run's range
	lat       []uint32 // µs, every sampleEvery-th sequence
	lastRecv  int64    // unix nanos of the latest delivery
	total     int
	producers int
}

func newDelivery(messages, producers, sampleCap int) *delivery {
	d := &delivery{
		seen:      make([]uint64, (messages+63)/64),
		last:      make([]int64, producers),
		lat:       make([]uint32, 0, sampleCap),
		total:     messages,
		producers: producers,
	}
	for i := range d.last {
		d.last[i] = -1
	}
	return d
}

// record accounts one broadcast. Producer k sends seq k, k+P, k+2P… one POST after another, so
// the server accepted them in that order: a seq lower than the producer's last one seen is
// out of order. It returns true when this delivery completed the subscriber's set.
func (d *delivery) record(seq, ts, now int64, sampleEvery int) bool {
	if seq < 0 || seq >= int64(d.total) {
		d.foreign++
		return false
	}
	w, bit := seq/64, uint64(1)<<(seq%64)
	if d.seen[w]&bit != 0 {
		d.dup++
		return false
	}
	d.seen[w] |= bit
	p := seq % int64(d.producers)
	if seq < d.last[p] {
		d.ooo++
	} else {
		d.last[p] = seq
	}
	d.unique++
	d.lastRecv = max(d.lastRecv, now)
	if sampleEvery <= 1 || seq%int64(sampleEvery) == 0 {
		d.lat = append(d.lat, micros(time.Duration(now-ts)))
	}
	return d.unique == d.total
}

// popcount counts the set bits of a bitmap (used by tests to cross-check unique).
func popcount(bm []uint64) int {
	n := 0
	for _, w := range bm {
		n += bits.OnesCount64(w)
	}
	return n
}

// cpuTime is a process's user+system CPU time.
type cpuTime time.Duration

// selfCPU returns this process's CPU time.
func selfCPU() cpuTime {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return cpuTime(time.Duration(ru.Utime.Nano() + ru.Stime.Nano()))
}

// clockTicks is USER_HZ, 100 on every Linux this tool targets (sysconf needs cgo).
const clockTicks = 100

// procCPU reads utime+stime of pid from /proc/<pid>/stat.
func procCPU(pid int) (cpuTime, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStatCPU(b)
}

func parseProcStatCPU(b []byte) (cpuTime, error) {
	// The command name may contain spaces and parentheses: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc stat format")
	}
	f := strings.Fields(string(b[i+1:]))
	// After ')': state(3) ppid(4) … utime is field 14, stime 15 (1-based over the whole line).
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc stat format")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unexpected /proc stat format")
	}
	return cpuTime(time.Duration(ut+st) * time.Second / clockTicks), nil
}

// procRSS reads VmRSS of pid in bytes.
func procRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseVmRSS(f)
}

func parseVmRSS(r interface{ Read([]byte) (int, error) }) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS line")
}

// metricValue finds an unlabelled sample `name value` in Prometheus text.
func metricValue(text []byte, name string) (float64, bool) {
	for line := range bytes.SplitSeq(text, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte(name+" "))
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(string(bytes.TrimSpace(rest)), 64)
		return v, err == nil
	}
	return 0, false
}

// cpuPercent is CPU time over wall time, in percent of one core.
func cpuPercent(c cpuTime, wall time.Duration) float64 {
	if wall <= 0 {
		return 0
	}
	return 100 * float64(c) / float64(wall)
}

// machineBusy returns the CPU time all cores spent busy (not idle or waiting for I/O), from
// the "cpu" line of /proc/stat.
func machineBusy() (cpuTime, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseStatBusy(b)
}

func parseStatBusy(b []byte) (cpuTime, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("unexpected /proc/stat format")
	}
	var busy int64
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("unexpected /proc/stat format")
		}
		busy += n
	}
	return cpuTime(time.Duration(busy) * time.Second / clockTicks), nil
}

// cpuWindow measures CPU use over a run: this process, the server (when its pid is known) and
// everything else on the machine (other processes compete for the same two cores).
type cpuWindow struct {
	pid                 int
	start               time.Time
	self, server, total cpuTime
}

func startCPU(pid int) *cpuWindow {
	w := &cpuWindow{pid: pid, start: time.Now(), self: selfCPU()}
	if pid > 0 {
		w.server, _ = procCPU(pid)
	}
	w.total, _ = machineBusy()
	return w
}

// stop returns client, server and other CPU use in percent of one core (server is 0 when the
// pid is unknown; other then includes the server).
func (w *cpuWindow) stop() (client, server, other float64) {
	wall := time.Since(w.start)
	self := selfCPU() - w.self
	var srv cpuTime
	if w.pid > 0 {
		if s, err := procCPU(w.pid); err == nil {
			srv = s - w.server
		}
	}
	total, err := machineBusy()
	client, server = cpuPercent(self, wall), cpuPercent(srv, wall)
	if err == nil {
		other = max(0, cpuPercent(total-w.total-self-srv, wall))
	}
	return client, server, other
}
