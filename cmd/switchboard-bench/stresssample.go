package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Faults, events and samples of a stress run: what was injected when, what the clients were
// told when, and the server's memory, goroutines and the delivery rate once a second.

// fault is one injected failure of the private Redis.
type fault struct {
	Kind string    // redis-kill | redis-flush
	At   time.Time // when it was injected
	End  time.Time // redis-kill: when redis-server answered again; zero while it is down
	Err  string    // the injection or the restart failed
}

// faultLog is the run's faults; the workers ask it whether one overlapped what they did.
type faultLog struct {
	mu     sync.Mutex
	faults []fault
}

func (f *faultLog) begin(kind string, at time.Time) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, fault{Kind: kind, At: at})
	return len(f.faults) - 1
}

func (f *faultLog) end(i int, at time.Time, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[i].End = at
	if err != nil {
		f.faults[i].Err = err.Error()
	}
}

// faultGrace is how long after a fault ended the server may still act on it: its Redis
// clients reconnect with backoff, connection slots come back with the next heartbeat.
const faultGrace = 5 * time.Second

// overlaps reports whether a fault (plus faultGrace after it) touched [from, to].
func (f *faultLog) overlaps(from, to time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, x := range f.faults {
		end := x.End
		if end.IsZero() {
			end = x.At
			if x.Kind == "redis-kill" {
				end = to // still down
			}
		}
		if !x.At.After(to) && !end.Add(faultGrace).Before(from) {
			return true
		}
	}
	return false
}

func (f *faultLog) snapshot() []fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fault(nil), f.faults...)
}

// eventLog keeps the moments of notices and failures (bounded), so the report can say what
// the clients saw around each fault.
type eventLog struct {
	mu     sync.Mutex
	start  time.Time
	events []event
}

type event struct {
	at   time.Time
	kind string
}

const maxEvents = 200_000

func (l *eventLog) add(kind string) {
	l.mu.Lock()
	if len(l.events) < maxEvents {
		l.events = append(l.events, event{time.Now(), kind})
	}
	l.mu.Unlock()
}

// between counts the events in [from, to) by kind.
func (l *eventLog) between(from, to time.Time) map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int{}
	for _, e := range l.events {
		if !e.at.Before(from) && e.at.Before(to) {
			out[e.kind]++
		}
	}
	return out
}

// stressSample is one second of the run.
type stressSample struct {
	T           float64 `json:"t"` // seconds since the start
	RSSMiB      float64 `json:"rss_mib"`
	AnonMiB     float64 `json:"rss_anon_mib"`
	HeapMiB     float64 `json:"heap_mib"`
	Goroutines  float64 `json:"goroutines"`
	DeliveredPS float64 `json:"delivered_per_s"`
	RequestsPS  float64 `json:"requests_per_s"`
	OpenConns   int64   `json:"open_conns"`   // the tool's
	ServerConns float64 `json:"server_conns"` // ws_connections_active
	Violations  int64   `json:"violations"`
}

// memPoint is the server's memory and goroutines at one moment.
type memPoint struct {
	Goroutines float64 `json:"goroutines"`
	RSSMiB     float64 `json:"rss_mib"`
	AnonMiB    float64 `json:"rss_anon_mib"`   // anonymous RSS: heap, stacks, runtime; not the binary's pages
	HeapMiB    float64 `json:"heap_alloc_mib"` // live heap when taken right after a collection
	GCForced   bool    `json:"gc_forced"`
}

// probe reads the server's figures: /metrics (and /proc/<pid>/status for RSS when the pid is
// known). With the server's pprof listener it can first force a garbage collection
// (/debug/pprof/heap?gc=1), so heap and RSS are compared at the same point of the GC cycle.
type probe struct {
	metricsURL string
	pprofURL   string
	pid        int
	client     *http.Client
}

func newProbe(env *stressEnv) *probe {
	// No keep-alive: an idle HTTP connection holds a server goroutine, which would count in the
	// very goroutine figures the run compares.
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	return &probe{metricsURL: env.http + "/metrics", pprofURL: env.pprof, pid: env.serverPID,
		client: &http.Client{Timeout: 5 * time.Second, Transport: tr}}
}

// metrics fetches /metrics.
func (p *probe) metrics(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.metricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: HTTP %d", resp.StatusCode)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 16<<20))
}

// forceGC asks the server for a heap profile after a collection; false without pprof.
func (p *probe) forceGC(ctx context.Context) bool {
	if p.pprofURL == "" {
		return false
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.pprofURL+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return false
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// mem reads goroutines, RSS and heap, after forced collections when gc is set and possible
// (two: the second also empties what sync.Pools kept through the first).
func (p *probe) mem(ctx context.Context, gc bool) (memPoint, []byte, error) {
	var m memPoint
	if gc {
		m.GCForced = p.forceGC(ctx) && p.forceGC(ctx)
	}
	text, err := p.metrics(ctx)
	if err != nil {
		return m, nil, err
	}
	g, ok := metricValue(text, "go_goroutines")
	if !ok {
		return m, text, fmt.Errorf("no go_goroutines in /metrics")
	}
	m.Goroutines = g
	h, _ := metricValue(text, "go_memstats_heap_alloc_bytes")
	m.HeapMiB = h / (1 << 20)
	if p.pid > 0 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
		if err != nil {
			return m, text, err
		}
		rss, ok1 := statusKB(b, "VmRSS:")
		anon, ok2 := statusKB(b, "RssAnon:")
		if !ok1 || !ok2 {
			return m, text, fmt.Errorf("no VmRSS or RssAnon in /proc/%d/status", p.pid)
		}
		m.RSSMiB, m.AnonMiB = float64(rss)/1024, float64(anon)/1024
	} else {
		v, _ := metricValue(text, "process_resident_memory_bytes")
		a, _ := metricValue(text, "process_resident_memory_anon_bytes")
		m.RSSMiB, m.AnonMiB = v/(1<<20), a/(1<<20)
	}
	return m, text, nil
}

// statusKB reads a "Field:  123 kB" line of /proc/<pid>/status.
func statusKB(status []byte, field string) (int64, bool) {
	for line := range bytes.SplitSeq(status, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte(field))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) < 1 {
			return 0, false
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		return kb, err == nil
	}
	return 0, false
}

// metricSeries returns every sample of the metric name (labelled or not) in Prometheus text,
// keyed by the series as written (name{labels}).
func metricSeries(text []byte, name string) map[string]float64 {
	out := map[string]float64{}
	for line := range bytes.SplitSeq(text, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte(name)) || len(line) <= len(name) {
			continue
		}
		if c := line[len(name)]; c != ' ' && c != '{' {
			continue // another metric whose name starts the same
		}
		i := bytes.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(string(line[i+1:]), 64)
		if err != nil {
			continue
		}
		out[string(line[:i])] = v
	}
	return out
}

// seriesDelta is after − before for every series of after that moved.
func seriesDelta(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// sampler takes one sample a second until stopped; its goroutine is owned by run's caller
// through stop.
type sampler struct {
	p       *probe
	st      *stressState
	mu      sync.Mutex
	samples []stressSample
	stopped chan struct{}
	done    chan struct{}
	died    func() bool // the server process is gone (self-contained mode)
}

// maxSamples bounds the samples whatever the duration (one a second).
const maxStressSamples = 24 * 3600

func startSampler(ctx context.Context, p *probe, st *stressState, died func() bool, rep *reporter) *sampler {
	s := &sampler{p: p, st: st, stopped: make(chan struct{}), done: make(chan struct{}), died: died}
	go s.run(ctx, rep)
	return s
}

func (s *sampler) stop() []stressSample {
	close(s.stopped)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]stressSample(nil), s.samples...)
}

func (s *sampler) run(ctx context.Context, rep *reporter) {
	defer close(s.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastT := time.Now()
	lastDel, lastAns := s.st.delivered.Load(), s.st.answers.Load()
	reportedDeath := false
	for range maxStressSamples {
		select {
		case <-ctx.Done():
			return
		case <-s.stopped:
			return
		case <-t.C:
		}
		now := time.Now()
		dt := now.Sub(lastT).Seconds()
		del, ans := s.st.delivered.Load(), s.st.answers.Load()
		smp := stressSample{T: now.Sub(s.st.start).Seconds(), DeliveredPS: float64(del-lastDel) / dt,
			RequestsPS: float64(ans-lastAns) / dt, OpenConns: s.st.open.Load(), Violations: s.st.v.total.Load()}
		lastT, lastDel, lastAns = now, del, ans
		m, text, err := s.p.mem(ctx, false)
		if err == nil {
			smp.RSSMiB, smp.AnonMiB, smp.HeapMiB, smp.Goroutines = m.RSSMiB, m.AnonMiB, m.HeapMiB, m.Goroutines
			smp.ServerConns, _ = metricValue(text, "ws_connections_active")
		} else {
			smp.RSSMiB, smp.AnonMiB, smp.HeapMiB, smp.Goroutines, smp.ServerConns = math.NaN(), math.NaN(), math.NaN(), math.NaN(), math.NaN()
		}
		if !reportedDeath && s.died != nil && s.died() {
			reportedDeath = true
			s.st.v.add(vServerDied, "the server process exited during the run")
		}
		s.mu.Lock()
		s.samples = append(s.samples, smp)
		s.mu.Unlock()
		if int(smp.T)%5 == 0 {
			rep.progress("stress t=%3.0fs  rss %.1f MiB  goroutines %.0f  delivered %.0f/s  requests %.0f/s  open %d  violations %d",
				smp.T, smp.RSSMiB, smp.Goroutines, smp.DeliveredPS, smp.RequestsPS, smp.OpenConns, smp.Violations)
		}
	}
}

// peak returns the largest RSS and goroutine count among the samples.
func peak(samples []stressSample) memPoint {
	var m memPoint
	for _, s := range samples {
		if finite(s.RSSMiB) {
			m.RSSMiB = max(m.RSSMiB, s.RSSMiB)
		}
		if finite(s.Goroutines) {
			m.Goroutines = max(m.Goroutines, s.Goroutines)
		}
		if finite(s.HeapMiB) {
			m.HeapMiB = max(m.HeapMiB, s.HeapMiB)
		}
		if finite(s.AnonMiB) {
			m.AnonMiB = max(m.AnonMiB, s.AnonMiB)
		}
	}
	return m
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// joinCounts renders a count map as "k n, k n" in key order.
func joinCounts(m map[string]int) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
