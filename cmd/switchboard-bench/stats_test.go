package main

import (
	"strings"
	"testing"
	"time"
)

func TestSummarizeNearestRank(t *testing.T) {
	var s []uint32
	for i := 100; i >= 1; i-- { // unsorted on purpose
		s = append(s, uint32(i*1000))
	}
	p := summarize(s)
	want := percentiles{Count: 100, P50: 50 * time.Millisecond, P90: 90 * time.Millisecond, P99: 99 * time.Millisecond, Max: 100 * time.Millisecond}
	if p != want {
		t.Fatalf("summarize = %+v, want %+v", p, want)
	}
	if got := summarize(nil); got != (percentiles{}) {
		t.Fatalf("summarize(nil) = %+v", got)
	}
	if got := summarize([]uint32{7}); got.P50 != 7*time.Microsecond || got.P99 != 7*time.Microsecond {
		t.Fatalf("one sample: %+v", got)
	}
}

func TestRankBounds(t *testing.T) {
	for _, c := range []struct {
		n    int
		q    float64
		want int
	}{{1, 0.5, 0}, {2, 0.5, 0}, {3, 0.5, 1}, {10, 0.99, 9}, {1000, 0.99, 989}, {10, 0, 0}, {10, 1, 9}} {
		if got := rank(c.n, c.q); got != c.want {
			t.Errorf("rank(%d, %g) = %d, want %d", c.n, c.q, got, c.want)
		}
	}
}

func TestMicrosSaturates(t *testing.T) {
	if micros(-time.Second) != 0 || micros(1500*time.Nanosecond) != 1 || micros(100*time.Hour) != ^uint32(0) {
		t.Fatal("micros does not clamp")
	}
}

func TestPayloadSizeAndFields(t *testing.T) {
	ts := time.Now().UnixNano()
	for _, size := range []int{0, 40, 100, 1000} {
		p := payload(nil, 12345, ts, size)
		if size >= 60 && len(p) != size {
			t.Errorf("size %d: payload is %d bytes: %s", size, len(p), p)
		}
		frame := []byte(`{"pkg_id":100,"req_id":"00000000-0000-0000-0000-000000000000","data":` + string(p) + `}`)
		seq, got, ok := seqTS(frame)
		if !ok || seq != 12345 || got != ts {
			t.Errorf("size %d: seqTS = %d, %d, %v", size, seq, got, ok)
		}
	}
}

func TestSeqTSRejectsOtherFrames(t *testing.T) {
	for _, f := range []string{
		`{"pkg_id":100,"req_id":"00000000-0000-0000-0000-000000000000","data":{"w":1}}`,
		`{"seq":}`, `{"seq":1}`, `{"seq":1,"ts":"x"}`, ``,
	} {
		if _, _, ok := seqTS([]byte(f)); ok {
			t.Errorf("seqTS(%s) ok", f)
		}
	}
}

func TestIntField(t *testing.T) {
	b := []byte(`{"pkg_id":1,"req_id":"x","status_code":2,"data":null}`)
	if v, ok := intField(b, `"status_code":`); !ok || v != 2 {
		t.Fatalf("status_code = %d, %v", v, ok)
	}
	if _, ok := intField(b, `"nope":`); ok {
		t.Fatal("found a missing key")
	}
}

func TestDeliveryAccounting(t *testing.T) {
	d := newDelivery(10, 1, 10)
	now := int64(2_000_000)
	for _, seq := range []int64{0, 1, 3, 2, 2, 4, 5, 6, 7, 8, 42} {
		d.record(seq, now-1_000_000, now, 1)
	}
	if d.unique != 9 || d.dup != 1 || d.ooo != 1 || d.foreign != 1 {
		t.Fatalf("unique %d dup %d ooo %d foreign %d", d.unique, d.dup, d.ooo, d.foreign)
	}
	if popcount(d.seen) != d.unique {
		t.Fatalf("bitmap has %d bits for %d unique", popcount(d.seen), d.unique)
	}
	if !d.record(9, now, now, 1) {
		t.Fatal("the last missing sequence did not complete the set")
	}
	if len(d.lat) != 10 || d.lat[0] != 1000 {
		t.Fatalf("latency samples %v", d.lat)
	}
}

func TestDeliveryOrderPerProducer(t *testing.T) {
	// Two producers: even and odd sequences interleave freely, each stream must rise.
	d := newDelivery(8, 2, 8)
	for _, seq := range []int64{1, 0, 3, 2, 5, 7, 4, 6} {
		d.record(seq, 0, 1, 1)
	}
	if d.ooo != 0 {
		t.Fatalf("ooo = %d for independent producer streams", d.ooo)
	}
	d.record(1, 0, 1, 1) // duplicate, not reordering
	e := newDelivery(8, 2, 8)
	for _, seq := range []int64{0, 4, 2} {
		e.record(seq, 0, 1, 1)
	}
	if d.dup != 1 || e.ooo != 1 {
		t.Fatalf("dup %d, ooo %d", d.dup, e.ooo)
	}
}

func TestDeliverySampling(t *testing.T) {
	d := newDelivery(100, 1, 100)
	for seq := range int64(100) {
		d.record(seq, 0, 1000, 10)
	}
	if len(d.lat) != 10 {
		t.Fatalf("kept %d samples, want 10", len(d.lat))
	}
}

func TestParseProcStat(t *testing.T) {
	line := "1234 (switch board) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 1000 200 18446744073709551615"
	c, err := parseProcStatCPU([]byte(line))
	if err != nil || time.Duration(c) != 3*time.Second {
		t.Fatalf("cpu = %v, %v", time.Duration(c), err)
	}
	if _, err := parseProcStatCPU([]byte("garbage")); err == nil {
		t.Fatal("garbage parsed")
	}
}

func TestParseVmRSS(t *testing.T) {
	v, err := parseVmRSS(strings.NewReader("Name:\tx\nVmPeak:\t  999 kB\nVmRSS:\t   2048 kB\n"))
	if err != nil || v != 2<<20 {
		t.Fatalf("rss = %d, %v", v, err)
	}
	if _, err := parseVmRSS(strings.NewReader("Name:\tx\n")); err == nil {
		t.Fatal("no VmRSS accepted")
	}
}

func TestMetricValue(t *testing.T) {
	text := []byte("# HELP x\nprocess_resident_memory_bytes_total 1\nprocess_resident_memory_bytes 1.5e+07\nother{a=\"b\"} 2\n")
	if v, ok := metricValue(text, "process_resident_memory_bytes"); !ok || v != 1.5e7 {
		t.Fatalf("value = %g, %v", v, ok)
	}
	if _, ok := metricValue(text, "missing"); ok {
		t.Fatal("found a missing metric")
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, u := range []string{"ws://127.0.0.1:8000", "http://localhost:1", "postgres://u:p@127.0.0.1:5432/db", "ws://[::1]:80"} {
		if err := loopbackOnly(u); err != nil {
			t.Errorf("%s refused: %v", u, err)
		}
	}
	for _, u := range []string{"ws://example.com:8000", "http://10.0.0.1", "postgres://u:secret@db:5432/x"} {
		err := loopbackOnly(u)
		if err == nil {
			t.Errorf("%s accepted", u)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

func TestCPUPercent(t *testing.T) {
	if got := cpuPercent(cpuTime(500*time.Millisecond), time.Second); got != 50 {
		t.Fatalf("cpuPercent = %g", got)
	}
	if cpuPercent(1, 0) != 0 {
		t.Fatal("zero wall time")
	}
}

func TestParseStatBusy(t *testing.T) {
	b := []byte("cpu  100 0 50 1000 10 5 5 0 0 0\ncpu0 1 2 3\n")
	c, err := parseStatBusy(b)
	if err != nil || time.Duration(c) != 1600*time.Millisecond {
		t.Fatalf("busy = %v, %v", time.Duration(c), err)
	}
	if _, err := parseStatBusy([]byte("intr 1 2\n")); err == nil {
		t.Fatal("garbage parsed")
	}
}
