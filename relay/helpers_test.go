package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"go.uber.org/goleak"

	"switchboard/actors"
	"switchboard/hub"
	"switchboard/store/bus"
	"switchboard/store/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener"),
		goleak.Cleanup(func(int) { redistest.StopShared() })) // the shared Redis Cluster, if a test started it
}

// busPublisher publishes straight on a real bus with the policy's history, as hub.Broadcast
// does (the hub's own tests cover the hub; here the relay's contract with the bus is tested).
type busPublisher struct {
	b       bus.Bus
	history func(string) int
}

func (p busPublisher) Broadcast(ctx context.Context, m *hub.Message) (int, error) {
	h := 0
	if m.Topic != "" {
		h = p.history(m.Topic)
	}
	_, n, err := p.b.Publish(ctx, m, h)
	return n, err
}

// recorder keeps what a bus delivered.
type recorder struct {
	mu   sync.Mutex
	msgs []*bus.Message
}

func (r *recorder) deliver(m *bus.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
}

func (r *recorder) snapshot() []*bus.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*bus.Message(nil), r.msgs...)
}

// eventually polls cond every 20 ms until it holds, or fails the test after d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rules are the built-in policy's broadcast rules with a 4 KiB size limit.
func rules(t testing.TB) *actors.Broadcasts {
	r, err := actors.NewBroadcasts(actors.DefaultPolicy(), 4096)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// memoryBus is a real in-process bus delivering to a recorder.
func memoryBus(t testing.TB) (busPublisher, *recorder) {
	rec := &recorder{}
	b := bus.NewMemory(rec.deliver)
	t.Cleanup(func() { _ = b.Close() })
	return busPublisher{b: b, history: actors.DefaultPolicy().HistoryOf}, rec
}

// counter reads a counter or gauge of set by its full name (0 when absent).
func counter(set *metrics.Set, name string) float64 {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// n reads the "n" field of a delivered message's data.
func n(t testing.TB, m *bus.Message) int {
	var d struct {
		N int `json:"n"`
	}
	if err := json.Unmarshal(m.Data, &d); err != nil {
		t.Fatalf("data %s: %v", m.Data, err)
	}
	return d.N
}
