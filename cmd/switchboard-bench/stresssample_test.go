package main

import (
	"testing"
	"time"
)

func TestStatusKB(t *testing.T) {
	status := []byte("Name:\tswitchboard\nVmRSS:\t   48696 kB\nRssAnon:\t   22396 kB\nRssFile:\t   26300 kB\n")
	if v, ok := statusKB(status, "VmRSS:"); !ok || v != 48696 {
		t.Fatalf("VmRSS = %d %v", v, ok)
	}
	if v, ok := statusKB(status, "RssAnon:"); !ok || v != 22396 {
		t.Fatalf("RssAnon = %d %v", v, ok)
	}
	if _, ok := statusKB(status, "RssShmem:"); ok {
		t.Fatal("a missing field was found")
	}
}

func TestMetricSeries(t *testing.T) {
	text := []byte(`# HELP x
ws_closes_total{code="1000"} 12
ws_closes_total{code="other"} 1
ws_closes_total_extra 5
ws_connection_panics_total 0
`)
	got := metricSeries(text, "ws_closes_total")
	if len(got) != 2 || got[`ws_closes_total{code="1000"}`] != 12 || got[`ws_closes_total{code="other"}`] != 1 {
		t.Fatalf("series = %v", got)
	}
	after := metricSeries([]byte("ws_closes_total{code=\"1000\"} 20\nws_closes_total{code=\"other\"} 1\n"), "ws_closes_total")
	if d := seriesDelta(got, after); len(d) != 1 || d[`ws_closes_total{code="1000"}`] != 8 {
		t.Fatalf("delta = %v", d)
	}
	if v := metricSeries(text, "ws_connection_panics_total")["ws_connection_panics_total"]; v != 0 {
		t.Fatalf("panics = %v", v)
	}
}

func TestMemBounds(t *testing.T) {
	o := &options{rssSlackMiB: 16, heapSlackMiB: 8}
	base := memPoint{Goroutines: 80, AnonMiB: 20, HeapMiB: 8, GCForced: true}
	b := boundsFor(base, o)
	if b.Goroutines != 80*1.05+20 || b.AnonMiB != 36 || b.HeapMiB != 16 {
		t.Fatalf("bounds = %+v", b)
	}
	if !b.holds(memPoint{Goroutines: 100, AnonMiB: 35, HeapMiB: 15}) {
		t.Fatal("within the bounds, not held")
	}
	for _, m := range []memPoint{{Goroutines: 105, AnonMiB: 20, HeapMiB: 8}, {Goroutines: 80, AnonMiB: 37, HeapMiB: 8}, {Goroutines: 80, AnonMiB: 20, HeapMiB: 17}} {
		if b.holds(m) {
			t.Fatalf("%+v held", m)
		}
	}
	// Without a forced collection the heap is not judged.
	if b := boundsFor(memPoint{Goroutines: 80, AnonMiB: 100, HeapMiB: 8}, o); b.HeapMiB != 0 || b.AnonMiB != 150 || !b.holds(memPoint{AnonMiB: 149, HeapMiB: 1000}) {
		t.Fatalf("bounds without GC = %+v", b)
	}
}

func TestFaultLogOverlaps(t *testing.T) {
	t0 := time.Now()
	var f faultLog
	i := f.begin("redis-kill", t0.Add(10*time.Second))
	if !f.overlaps(t0.Add(9*time.Second), t0.Add(11*time.Second)) || f.overlaps(t0, t0.Add(9*time.Second)) {
		t.Fatal("a kill still going on")
	}
	f.end(i, t0.Add(13*time.Second), nil)
	if !f.overlaps(t0.Add(17*time.Second), t0.Add(19*time.Second)) { // within the grace after it
		t.Fatal("within the grace")
	}
	if f.overlaps(t0.Add(13*time.Second+faultGrace+time.Second), t0.Add(30*time.Second)) {
		t.Fatal("long after it")
	}
	f.begin("redis-flush", t0.Add(40*time.Second))
	if !f.overlaps(t0.Add(39*time.Second), t0.Add(41*time.Second)) {
		t.Fatal("a flush")
	}
}

func TestStressFlags(t *testing.T) {
	o := &options{topics: 6, topicsPerSub: 3, rpcRate: 20, redisDown: 3 * time.Second, allRatio: 0.1}
	if err := o.killAt.Set("20s, 40s"); err != nil {
		t.Fatal(err)
	}
	if err := o.stressDefaults(map[string]bool{}); err != nil {
		t.Fatal(err)
	}
	if o.n != 40 || o.duration != 60*time.Second || o.rate != 40 || o.producers != 2 || o.external {
		t.Fatalf("defaults: %+v", o)
	}
	bad := []func(o *options){
		func(o *options) { o.killAt = durationList{58 * time.Second} },                   // not back before the end
		func(o *options) { o.killAt = durationList{20 * time.Second, 21 * time.Second} }, // overlapping kills
		func(o *options) { o.topicsPerSub = 7 },
		func(o *options) { o.dsn = "postgres://db.example.com/x" },
	}
	for i, mod := range bad {
		o := &options{topics: 6, topicsPerSub: 3, rpcRate: 20, redisDown: 3 * time.Second}
		mod(o)
		if err := o.stressDefaults(map[string]bool{}); err == nil {
			t.Errorf("case %d: no error", i)
		}
	}
	ext := &options{topics: 6, topicsPerSub: 3, rpcRate: 20, redisDown: 3 * time.Second, flushAt: durationList{time.Second}}
	if err := ext.stressDefaults(map[string]bool{"url": true}); err == nil {
		t.Error("a Redis fault against --url was accepted")
	}
}
