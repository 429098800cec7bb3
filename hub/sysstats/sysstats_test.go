package sysstats

import (
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"go.uber.org/goleak"

	"switchboard/hub"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeHub records what the publisher delivers.
type fakeHub struct {
	mu   sync.Mutex
	msgs []*hub.Message
}

func (f *fakeHub) DeliverUncounted(m *hub.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs = append(f.msgs, m)
}

func (f *fakeHub) got() []*hub.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*hub.Message(nil), f.msgs...)
}

// The rates are the counters' increase over the time between two samples; the broadcast mean is
// the histogram's sum over its count in that interval, null without broadcasts.
func TestComputeRates(t *testing.T) {
	set := metrics.NewSet()
	active := 0.0
	set.NewGauge(seriesConnections, func() float64 { return active })
	in, out := set.NewCounter(seriesIn), set.NewCounter(seriesOut)
	hits1 := set.NewCounter(`rate_limit_hits_total{limit_type="ws_message"}`)
	hits2 := set.NewCounter(`rate_limit_hits_total{limit_type="http"}`)
	dur := set.NewPrometheusHistogram("ws_broadcast_duration_seconds")
	bc := set.NewCounter(seriesBroadcasts)

	first := read(set, quiet)
	active = 7
	in.Add(20)
	out.Add(40)
	hits1.Add(3)
	hits2.Add(1)
	bc.Add(2)
	dur.Update(0.001)
	dur.Update(0.003)
	second := read(set, quiet)
	second.at = first.at.Add(2 * time.Second)

	st := compute("node-a", first, second)
	if st.Node != "node-a" || st.Connections != 7 || st.IntervalS != 2 {
		t.Fatalf("stats %+v", st)
	}
	if st.MessagesInPerS != 10 || st.MessagesOutPerS != 20 || st.BroadcastsPerS != 1 {
		t.Fatalf("rates %+v", st)
	}
	if st.RateLimitHitsPerS != 2 || st.RateLimitHitsTotal != 4 {
		t.Fatalf("rate-limit hits %+v", st)
	}
	if st.BroadcastMeanMS == nil || *st.BroadcastMeanMS != 2 {
		t.Fatalf("broadcast mean %v, want 2 ms", st.BroadcastMeanMS)
	}

	third := read(set, quiet)
	third.at = second.at.Add(time.Second)
	if st := compute("node-a", second, third); st.BroadcastMeanMS != nil || st.MessagesInPerS != 0 {
		t.Fatalf("an interval without traffic: %+v", st)
	}
}

// A series that is not registered yet reads 0, and a counter that went back gives no negative rate.
func TestMissingSeriesAndResets(t *testing.T) {
	empty := read(metrics.NewSet(), quiet)
	later := empty
	later.at = empty.at.Add(time.Second)
	later.in = 5
	if st := compute("n", later, empty); st.MessagesInPerS != 0 {
		t.Fatalf("rate after a reset: %+v", st)
	}
	if empty.connections != 0 || empty.durCount != 0 {
		t.Fatalf("empty sample %+v", empty)
	}
}

// The publisher delivers one message per interval on sys.stats, until Stop, which leaves no
// goroutine behind.
func TestPublisherDeliversUntilStopped(t *testing.T) {
	defer goleak.VerifyNone(t)
	set := metrics.NewSet()
	set.NewGauge(seriesConnections, func() float64 { return 3 })
	h := &fakeHub{}
	p := Start(Config{Node: "n1", Metrics: set, Hub: h, Interval: 10 * time.Millisecond})
	deadline := time.Now().Add(10 * time.Second)
	for len(h.got()) < 3 {
		if time.Now().After(deadline) {
			t.Fatal("no three stats messages within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.Stop()
	p.Stop() // a second Stop returns at once
	n := len(h.got())
	for _, m := range h.got() {
		if m.Topic != Topic || m.PkgID != PkgID || m.Seq != 0 {
			t.Fatalf("message %+v", m)
		}
		var st Stats
		if err := json.Unmarshal(m.Data, &st); err != nil || st.Node != "n1" || st.Connections != 3 {
			t.Fatalf("data %s: %v", m.Data, err)
		}
	}
	// Stop waited for the goroutine (goleak checks it is gone): nothing can come after it.
	if len(h.got()) != n {
		t.Fatalf("delivered after Stop: %d, then %d", n, len(h.got()))
	}
}
