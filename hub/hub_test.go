package hub_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/goleak"

	"switchboard/hub"
	"switchboard/store/bus"
)

// fakeConn is a hub.Conn that records what the hub hands it. budget < 0 accepts every frame;
// otherwise the connection accepts budget frames and refuses every Enqueue after that, as the
// transport's bounded writer does once a connection is over its send budget.
type fakeConn struct {
	id     uint64
	codec  hub.Codec
	budget int

	mu          sync.Mutex
	frames      [][]byte
	attempts    int // Enqueue calls, refused ones included
	closes      int
	closeCode   uint16
	closeReason string
	pings       atomic.Int64
}

func newFake(id uint64, c hub.Codec) *fakeConn { return &fakeConn{id: id, codec: c, budget: -1} }

func (f *fakeConn) ID() uint64       { return f.id }
func (f *fakeConn) Codec() hub.Codec { return f.codec }
func (f *fakeConn) Ping()            { f.pings.Add(1) }

func (f *fakeConn) Enqueue(frame []byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts++
	if f.budget >= 0 && len(f.frames) >= f.budget {
		return false
	}
	f.frames = append(f.frames, frame)
	return true
}

func (f *fakeConn) Close(code uint16, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	f.closeCode, f.closeReason = code, reason
}

func (f *fakeConn) received() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.frames...)
}

func (f *fakeConn) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.frames)
}

func (f *fakeConn) enqueueAttempts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts
}

func (f *fakeConn) closed() (n int, code uint16, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closes, f.closeCode, f.closeReason
}

// countingCodec encodes a broadcast as "<name>|<pkg_id>|<data>" and counts its calls.
type countingCodec struct {
	name  string
	calls atomic.Int64
	fail  bool
}

func (c *countingCodec) EncodeBroadcast(m *hub.Message) ([]byte, error) {
	c.calls.Add(1)
	if c.fail {
		return nil, errors.New("codec refuses")
	}
	return []byte(c.name + "|" + strconv.Itoa(m.PkgID) + "|" + string(m.Data)), nil
}

// newSystem returns an actor system that logs nothing (protoactor logs at info by default).
func newSystem() *actor.ActorSystem {
	return actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
}

// env is one hub on a fresh actor system with its own metrics set.
type env struct {
	t       *testing.T
	system  *actor.ActorSystem
	hub     *hub.Hub
	metrics *metrics.Set
	stopped bool
}

func newEnv(t *testing.T, ping time.Duration) *env {
	t.Helper()
	return newEnvWith(t, hub.Options{PingInterval: ping})
}

// newEnvWith starts a hub with opts (Logger and Metrics are the env's) and stops it at cleanup
// unless the test did.
func newEnvWith(t *testing.T, opts hub.Options) *env {
	t.Helper()
	e := &env{t: t, system: newSystem(), metrics: metrics.NewSet()}
	opts.Logger, opts.Metrics = slog.New(slog.DiscardHandler), e.metrics
	e.hub = hub.Start(e.system.Root, opts)
	t.Cleanup(func() {
		if !e.stopped {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := e.hub.Stop(ctx, 1001, "test over"); err != nil {
				t.Errorf("hub stop at cleanup: %v", err)
			}
		}
		e.system.Shutdown()
	})
	return e
}

func (e *env) stop(code uint16, reason string) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := e.hub.Stop(ctx, code, reason)
	if err != nil {
		e.t.Fatalf("Stop: %v", err)
	}
	e.stopped = true
	return n
}

func (e *env) register(conns ...*fakeConn) {
	e.t.Helper()
	want := e.hub.Active() + len(conns)
	for _, c := range conns {
		e.hub.Register(c)
	}
	waitFor(e.t, 10*time.Second, fmt.Sprintf("%d registered connections", want), func() bool { return e.hub.Active() == want })
}

func (e *env) broadcast(pkgID int, data string) {
	e.t.Helper()
	if _, err := e.hub.Broadcast(context.Background(), &hub.Message{PkgID: pkgID, Data: json.RawMessage(data)}); err != nil {
		e.t.Fatalf("Broadcast: %v", err)
	}
}

// metric returns the value of one sample line of the set in Prometheus text, or "" if absent.
func (e *env) metric(name string) string {
	var b bytes.Buffer
	e.metrics.WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// waitFor polls cond every 5ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fakes(n int, codecs ...hub.Codec) []*fakeConn {
	out := make([]*fakeConn, n)
	for i := range out {
		out[i] = newFake(uint64(i+1), codecs[i%len(codecs)])
	}
	return out
}

func TestBroadcastReachesEveryConnExactlyOnceInOrder(t *testing.T) {
	e := newEnv(t, 0)
	codec := &countingCodec{name: "json"}
	conns := fakes(50, codec)
	e.register(conns...)

	const n = 500
	for i := range n {
		e.broadcast(7, `{"n":`+strconv.Itoa(i)+`}`)
	}
	for _, c := range conns {
		waitFor(t, 30*time.Second, fmt.Sprintf("conn %d to receive %d frames", c.id, n), func() bool { return c.count() >= n })
	}
	// A fence: when it has arrived everywhere, any duplicate of the n frames would have too.
	e.broadcast(8, `{"fence":true}`)
	for _, c := range conns {
		waitFor(t, 30*time.Second, "the fence", func() bool { return c.count() >= n+1 })
	}
	for _, c := range conns {
		got := c.received()
		if len(got) != n+1 {
			t.Fatalf("conn %d: %d frames, want %d", c.id, len(got), n+1)
		}
		for i := range n {
			if want := `json|7|{"n":` + strconv.Itoa(i) + `}`; string(got[i]) != want {
				t.Fatalf("conn %d frame %d = %q, want %q", c.id, i, got[i], want)
			}
		}
		if string(got[n]) != `json|8|{"fence":true}` {
			t.Fatalf("conn %d last frame = %q", c.id, got[n])
		}
	}
	if got := e.metric("ws_broadcasts_total"); got != strconv.Itoa(n+1) {
		t.Errorf("ws_broadcasts_total = %q, want %d", got, n+1)
	}
	if got := e.metric("ws_connections_active"); got != "50" {
		t.Errorf("ws_connections_active = %q, want 50", got)
	}
}

func TestBroadcastEncodesOncePerCodec(t *testing.T) {
	e := newEnv(t, 0)
	a, b := &countingCodec{name: "a"}, &countingCodec{name: "b"}
	conns := fakes(200, a, b)
	e.register(conns...)

	const n = 40
	for i := range n {
		e.broadcast(1, `{"i":`+strconv.Itoa(i)+`}`)
	}
	for _, c := range conns {
		waitFor(t, 30*time.Second, "delivery", func() bool { return c.count() == n })
	}
	if a.calls.Load() != n || b.calls.Load() != n {
		t.Fatalf("EncodeBroadcast calls: a=%d b=%d, want %d each (once per codec per broadcast)", a.calls.Load(), b.calls.Load(), n)
	}
	// Every connection of a codec holds the very same bytes: encoded once, shared.
	first := map[hub.Codec][][]byte{}
	for _, c := range conns {
		got := c.received()
		ref, ok := first[c.codec]
		if !ok {
			first[c.codec] = got
			continue
		}
		for i := range got {
			if &got[i][0] != &ref[i][0] {
				t.Fatalf("conn %d frame %d is a separate copy; the hub should share one encoding per codec", c.id, i)
			}
		}
	}
	if string(first[a][3]) != `a|1|{"i":3}` || string(first[b][3]) != `b|1|{"i":3}` {
		t.Fatalf("frames: %q %q", first[a][3], first[b][3])
	}
}

func TestBroadcastManyCodecs(t *testing.T) {
	// More codecs than the hub's inline slots: still once per codec per broadcast.
	e := newEnv(t, 0)
	codecs := make([]hub.Codec, 5)
	for i := range codecs {
		codecs[i] = &countingCodec{name: "c" + strconv.Itoa(i)}
	}
	conns := fakes(25, codecs...)
	e.register(conns...)
	const n = 10
	for i := range n {
		e.broadcast(2, `{"i":`+strconv.Itoa(i)+`}`)
	}
	for _, c := range conns {
		waitFor(t, 30*time.Second, "delivery", func() bool { return c.count() == n })
		got := c.received()
		name := c.codec.(*countingCodec).name
		for i := range n {
			if want := name + `|2|{"i":` + strconv.Itoa(i) + `}`; string(got[i]) != want {
				t.Fatalf("conn %d frame %d = %q, want %q", c.id, i, got[i], want)
			}
		}
	}
	for _, c := range codecs {
		if calls := c.(*countingCodec).calls.Load(); calls != n {
			t.Errorf("codec %s encoded %d times, want %d", c.(*countingCodec).name, calls, n)
		}
	}
}

func TestEncodeErrorSkipsOnlyThatCodec(t *testing.T) {
	e := newEnv(t, 0)
	good, bad := &countingCodec{name: "good"}, &countingCodec{name: "bad", fail: true}
	g, x := newFake(1, good), newFake(2, bad)
	e.register(g, x)
	e.broadcast(1, `{}`)
	e.broadcast(1, `{"second":1}`)
	waitFor(t, 10*time.Second, "delivery to the good codec", func() bool { return g.count() == 2 })
	if x.enqueueAttempts() != 0 {
		t.Fatalf("a connection whose codec failed got %d Enqueue calls", x.enqueueAttempts())
	}
	if got := e.metric("ws_broadcast_encode_errors_total"); got != "2" {
		t.Errorf("ws_broadcast_encode_errors_total = %q, want 2", got)
	}
	if bad.calls.Load() != 2 {
		t.Errorf("failing codec called %d times, want 2 (once per broadcast)", bad.calls.Load())
	}
	// The connection stays registered: an encode error is the producer's problem, not its.
	if e.hub.Active() != 2 {
		t.Errorf("Active = %d, want 2", e.hub.Active())
	}
}

func TestRefusingConnIsDroppedOthersContinue(t *testing.T) {
	e := newEnv(t, 0)
	codec := &countingCodec{name: "json"}
	healthy := fakes(10, codec)
	refuser := newFake(100, codec)
	refuser.budget = 0 // refuses the first frame
	overBudget := newFake(101, codec)
	overBudget.budget = 3 // takes three frames, then refuses
	e.register(append(healthy, refuser, overBudget)...)

	const n = 100
	for i := range n {
		e.broadcast(1, `{"i":`+strconv.Itoa(i)+`}`)
	}
	for _, c := range healthy {
		waitFor(t, 30*time.Second, "healthy delivery", func() bool { return c.count() == n })
		got := c.received()
		for i := range n {
			if want := `json|1|{"i":` + strconv.Itoa(i) + `}`; string(got[i]) != want {
				t.Fatalf("healthy conn %d frame %d = %q, want %q", c.id, i, got[i], want)
			}
		}
	}
	if got := refuser.enqueueAttempts(); got != 1 {
		t.Errorf("refusing conn saw %d Enqueue calls, want 1 (dropped after the first refusal)", got)
	}
	if got := overBudget.enqueueAttempts(); got != 4 {
		t.Errorf("over-budget conn saw %d Enqueue calls, want 4 (3 accepted, 1 refused, then dropped)", got)
	}
	if got := overBudget.count(); got != 3 {
		t.Errorf("over-budget conn holds %d frames, want 3", got)
	}
	if got := e.hub.Active(); got != len(healthy) {
		t.Errorf("Active = %d, want %d", got, len(healthy))
	}
	// The transport unregisters a socket when it ends; for a connection the hub already dropped
	// that is a harmless no-op.
	e.hub.Unregister(refuser.id)
	e.broadcast(1, `{"after":1}`)
	for _, c := range healthy {
		waitFor(t, 30*time.Second, "delivery after the drop", func() bool { return c.count() == n+1 })
	}
	if got := e.hub.Active(); got != len(healthy) {
		t.Errorf("Active after a stale Unregister = %d, want %d", got, len(healthy))
	}
	// The refused connection closes itself (hub.Conn contract); the hub does not close it, and
	// it is no longer part of shutdown either.
	if n := e.stop(1001, "bye"); n != len(healthy) {
		t.Errorf("Stop closed %d, want %d", n, len(healthy))
	}
	if closes, _, _ := refuser.closed(); closes != 0 {
		t.Errorf("hub closed a dropped connection %d times", closes)
	}
}

func TestUnregisterRemoves(t *testing.T) {
	e := newEnv(t, 0)
	codec := &countingCodec{name: "json"}
	a, b := newFake(1, codec), newFake(2, codec)
	e.register(a, b)
	e.broadcast(1, `{"i":0}`)
	waitFor(t, 10*time.Second, "first broadcast", func() bool { return a.count() == 1 && b.count() == 1 })

	e.hub.Unregister(a.id)
	e.hub.Unregister(999) // unknown id: ignored
	waitFor(t, 10*time.Second, "unregister", func() bool { return e.hub.Active() == 1 })
	e.broadcast(1, `{"i":1}`)
	// The hub handles one broadcast in one Receive: once b has it, a would have it too.
	waitFor(t, 10*time.Second, "second broadcast", func() bool { return b.count() == 2 })
	if a.count() != 1 || a.enqueueAttempts() != 1 {
		t.Fatalf("unregistered conn got frames after Unregister: %d frames, %d attempts", a.count(), a.enqueueAttempts())
	}
	// Re-registering the same id brings it back.
	e.register(a)
	e.broadcast(1, `{"i":2}`)
	waitFor(t, 10*time.Second, "third broadcast", func() bool { return a.count() == 2 && b.count() == 3 })
	if n := e.stop(1001, "x"); n != 2 {
		t.Fatalf("Stop closed %d, want 2", n)
	}
	if closes, _, _ := a.closed(); closes != 1 {
		t.Fatalf("re-registered conn closed %d times, want 1", closes)
	}
}

func TestStopClosesEveryConnAndRefusesBroadcasts(t *testing.T) {
	e := newEnv(t, 0)
	conns := fakes(30, &countingCodec{name: "json"})
	e.register(conns...)

	if n := e.stop(1001, "server shutting down"); n != len(conns) {
		t.Fatalf("Stop returned %d, want %d", n, len(conns))
	}
	for _, c := range conns {
		closes, code, reason := c.closed()
		if closes != 1 || code != 1001 || reason != "server shutting down" {
			t.Fatalf("conn %d: closed %d times with %d %q, want once with 1001 %q", c.id, closes, code, reason, "server shutting down")
		}
	}
	if e.hub.Active() != 0 {
		t.Errorf("Active after Stop = %d, want 0", e.hub.Active())
	}
	_, err := e.hub.Broadcast(context.Background(), &hub.Message{PkgID: 1, Data: json.RawMessage(`{}`)})
	if !errors.Is(err, hub.ErrStopped) {
		t.Fatalf("Broadcast after Stop = %v, want ErrStopped", err)
	}
	// A second Stop is a no-op, not a hang or a panic.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n, err := e.hub.Stop(ctx, 1001, "again"); n != 0 || err != nil {
		t.Fatalf("second Stop = %d, %v; want 0, nil", n, err)
	}
	for _, c := range conns {
		if closes, _, _ := c.closed(); closes != 1 {
			t.Fatalf("conn %d closed %d times after a second Stop", c.id, closes)
		}
	}
}

func TestBroadcastContextAndDefaults(t *testing.T) {
	e := newEnv(t, 0)
	c := newFake(1, &countingCodec{name: "json"})
	e.register(c)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.hub.Broadcast(ctx, &hub.Message{PkgID: 1}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Broadcast with a cancelled context = %v, want context.Canceled", err)
	}
	// Missing data goes out as an empty object.
	if _, err := e.hub.Broadcast(context.Background(), &hub.Message{PkgID: 4}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "delivery", func() bool { return c.count() == 1 })
	if got := string(c.received()[0]); got != "json|4|{}" {
		t.Fatalf("frame = %q, want %q (the cancelled broadcast must not be delivered)", got, "json|4|{}")
	}
}

func TestPingTicks(t *testing.T) {
	e := newEnv(t, 10*time.Millisecond)
	conns := fakes(5, &countingCodec{name: "json"})
	e.register(conns...)
	for _, c := range conns {
		waitFor(t, 10*time.Second, "three pings", func() bool { return c.pings.Load() >= 3 })
	}
	e.stop(1001, "bye")
	// Stop waited for the ticker and the actor: no ping may follow. Two tick periods is only the
	// window in which a leaked ticker would show; it does not synchronise anything.
	before := make([]int64, len(conns))
	for i, c := range conns {
		before[i] = c.pings.Load()
	}
	time.Sleep(30 * time.Millisecond)
	for i, c := range conns {
		if got := c.pings.Load(); got != before[i] {
			t.Fatalf("conn %d pinged after Stop: %d → %d", c.id, before[i], got)
		}
	}
}

func TestNoPingsWhenDisabled(t *testing.T) {
	e := newEnv(t, 0)
	c := newFake(1, &countingCodec{name: "json"})
	e.register(c)
	// A broadcast after the registration is a fence: the actor has run since.
	e.broadcast(1, `{}`)
	waitFor(t, 10*time.Second, "delivery", func() bool { return c.count() == 1 })
	if c.pings.Load() != 0 {
		t.Fatalf("pinged %d times with PingInterval 0", c.pings.Load())
	}
}

func TestConcurrentProducers(t *testing.T) {
	// Broadcast is safe for concurrent use; each producer's messages stay in its own order.
	e := newEnv(t, 0)
	conns := fakes(20, &countingCodec{name: "json"})
	e.register(conns...)
	const producers, each = 4, 100
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := e.hub.Broadcast(context.Background(), &hub.Message{PkgID: p, Data: json.RawMessage(`{"i":` + strconv.Itoa(i) + `}`)}); err != nil {
					t.Errorf("Broadcast: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		waitFor(t, 30*time.Second, "delivery", func() bool { return c.count() == producers*each })
		next := make([]int, producers)
		for _, f := range c.received() {
			parts := strings.SplitN(string(f), "|", 3)
			p, _ := strconv.Atoi(parts[1])
			if want := `{"i":` + strconv.Itoa(next[p]) + `}`; parts[2] != want {
				t.Fatalf("conn %d: producer %d frame %q, want %q", c.id, p, parts[2], want)
			}
			next[p]++
		}
	}
}

func TestStopLeavesNoGoroutines(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	system := newSystem()
	h := hub.Start(system.Root, hub.Options{PingInterval: time.Millisecond, Logger: slog.New(slog.DiscardHandler), Metrics: metrics.NewSet()})
	c := newFake(1, &countingCodec{name: "json"})
	h.Register(c)
	waitFor(t, 10*time.Second, "a ping", func() bool { return c.pings.Load() > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.Stop(ctx, 1001, "bye"); err != nil {
		t.Fatal(err)
	}
	system.Shutdown()
	var err error
	waitFor(t, 10*time.Second, "no goroutines left by the hub", func() bool {
		err = goleak.Find(ignore)
		return err == nil
	})
}

// broadcastCounter is what BenchmarkBroadcast10k's fakes share: Enqueue is one atomic add and
// a compare, so the benchmark measures the hub, not the fake.
type broadcastCounter struct {
	n    atomic.Int64
	want atomic.Int64
	done chan struct{}
}

type benchConn struct {
	id uint64
	c  hub.Codec
	bc *broadcastCounter
}

func (b *benchConn) ID() uint64                { return b.id }
func (b *benchConn) Codec() hub.Codec          { return b.c }
func (b *benchConn) Ping()                     {}
func (b *benchConn) Close(uint16, string)      {}
func (b *benchConn) Enqueue(frame []byte) bool { return b.bc.hit() }

func (bc *broadcastCounter) hit() bool {
	if bc.n.Add(1) == bc.want.Load() {
		bc.done <- struct{}{}
	}
	return true
}

// appendCodec encodes with one allocation, like the JSON codec does.
type appendCodec struct{}

func (appendCodec) EncodeBroadcast(m *hub.Message) ([]byte, error) {
	b := make([]byte, 0, 32+len(m.Data))
	b = append(b, `{"pkg_id":`...)
	b = strconv.AppendInt(b, int64(m.PkgID), 10)
	b = append(b, `,"data":`...)
	b = append(b, m.Data...)
	return append(b, '}'), nil
}

// BenchmarkBroadcast10k measures one broadcast to 10 000 connections, from Broadcast until
// every connection has its frame.
func BenchmarkBroadcast10k(b *testing.B) {
	const conns = 10_000
	system := newSystem()
	defer system.Shutdown()
	h := hub.Start(system.Root, hub.Options{Logger: slog.New(slog.DiscardHandler), Metrics: metrics.NewSet()})
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = h.Stop(ctx, 1001, "bye")
	}()
	bc := &broadcastCounter{done: make(chan struct{}, 1)}
	for i := range conns {
		h.Register(&benchConn{id: uint64(i + 1), c: appendCodec{}, bc: bc})
	}
	waitFor(b, 30*time.Second, "registration", func() bool { return h.Active() == conns })
	data := json.RawMessage(`{"price":101.25,"symbol":"SWB"}`)

	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bc.want.Store(int64(i+1) * conns)
		if _, err := h.Broadcast(context.Background(), &hub.Message{PkgID: 1, Data: data}); err != nil {
			b.Fatal(err)
		}
		select {
		case <-bc.done:
		case <-time.After(30 * time.Second):
			b.Fatalf("broadcast %d not delivered to %d connections within 30s (%d frames so far)", i, conns, bc.n.Load())
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/conns, "ns/conn")
}

// BenchmarkTopicBroadcast10k measures one broadcast on a topic with history (the in-process bus:
// seq and epoch, each subscriber's position checked) to 10 000 subscribers, from Broadcast until
// every subscriber has its frame.
func BenchmarkTopicBroadcast10k(b *testing.B) {
	const conns = 10_000
	system := newSystem()
	defer system.Shutdown()
	var late atomic.Pointer[hub.Hub]
	mb := bus.NewMemory(func(m *bus.Message) {
		if h := late.Load(); h != nil {
			h.Deliver(m)
		}
	})
	defer mb.Close()
	h := hub.Start(system.Root, hub.Options{Bus: mb, History: func(string) int { return 100 },
		Logger: slog.New(slog.DiscardHandler), Metrics: metrics.NewSet()})
	late.Store(h)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = h.Stop(ctx, 1001, "bye")
	}()
	bc := &broadcastCounter{done: make(chan struct{}, 1)}
	var answered atomic.Int64
	for i := range conns {
		c := &benchConn{id: uint64(i + 1), c: appendCodec{}, bc: bc}
		h.Register(c)
		h.Subscribe(&hub.SubscribeRequest{Conn: c, Topic: "dash.bench", Ack: func(hub.Answer) []byte {
			answered.Add(1)
			return nil
		}})
	}
	waitFor(b, 60*time.Second, "subscriptions", func() bool { return answered.Load() == conns })
	bc.n.Store(0) // answers enqueued by versions that queue even an empty one
	data := json.RawMessage(`{"price":101.25,"symbol":"SWB"}`)

	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bc.want.Store(int64(i+1) * conns)
		if _, err := h.Broadcast(context.Background(), &hub.Message{PkgID: 1, Data: data, Topic: "dash.bench"}); err != nil {
			b.Fatal(err)
		}
		select {
		case <-bc.done:
		case <-time.After(30 * time.Second):
			b.Fatalf("broadcast %d not delivered to %d subscribers within 30s (%d frames so far)", i, conns, bc.n.Load())
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/conns, "ns/conn")
}

// BenchmarkSubscribe10k measures SUBSCRIBE in the hub alone: 10 000 registered connections
// subscribe (64 waiting for their answer at a time, as the load tool's clients do) to one topic
// with history on the in-process bus, or spread over 100. A per-topic cost that grew with the
// topic's subscribers would make topics=1 slower than topics=100.
func BenchmarkSubscribe10k(b *testing.B) {
	const conns, inFlight = 10_000, 64
	for _, k := range []int{1, 100} {
		b.Run("topics="+strconv.Itoa(k), func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				system := newSystem()
				mb := bus.NewMemory(func(*bus.Message) {})
				h := hub.Start(system.Root, hub.Options{Bus: mb, History: func(string) int { return 100 },
					Logger: slog.New(slog.DiscardHandler), Metrics: metrics.NewSet()})
				bc := &broadcastCounter{done: make(chan struct{}, 1)}
				cs := make([]*benchConn, conns)
				for i := range cs {
					cs[i] = &benchConn{id: uint64(i + 1), c: appendCodec{}, bc: bc}
					h.Register(cs[i])
				}
				waitFor(b, 30*time.Second, "registration", func() bool { return h.Active() == conns })
				b.StartTimer()
				var next atomic.Int64
				var wg sync.WaitGroup
				for range inFlight {
					wg.Go(func() {
						done := make(chan struct{}, 1)
						for {
							i := int(next.Add(1)) - 1
							if i >= conns {
								return
							}
							h.Subscribe(&hub.SubscribeRequest{Conn: cs[i], Topic: "dash." + strconv.Itoa(i%k),
								Ack: func(hub.Answer) []byte { return nil }, Done: func() { done <- struct{}{} }})
							<-done
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, _ = h.Stop(ctx, 1001, "bye")
				cancel()
				_ = mb.Close()
				system.Shutdown()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/conns, "ns/subscribe")
		})
	}
}
