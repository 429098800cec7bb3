package bus

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"switchboard/store/redistest"
)

const testProbe = 100 * time.Millisecond

// healthWatch polls b.Healthy every millisecond and remembers whether it ever failed.
type healthWatch struct {
	failed atomic.Bool
	stop   chan struct{}
	done   chan struct{}
}

func watchHealth(b Bus) *healthWatch {
	w := &healthWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			if err := b.Healthy(context.Background()); err != nil {
				w.failed.Store(true)
			}
			select {
			case <-w.stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return w
}

func (w *healthWatch) end() bool {
	close(w.stop)
	<-w.done
	return w.failed.Load()
}

// deliversAgain publishes a fresh message on pub until rec receives it: delivery has resumed.
func deliversAgain(t *testing.T, pub Bus, rec *recorder, tag string) {
	t.Helper()
	ctx := context.Background()
	want := json.RawMessage(`"` + tag + `"`)
	ok := waitFor(10*time.Second, func() bool {
		_, _, _ = pub.Publish(ctx, &Message{PkgID: 1, Data: want}, 0)
		return waitFor(200*time.Millisecond, func() bool {
			for _, m := range rec.snapshot() {
				if string(m.Data) == string(want) {
					return true
				}
			}
			return false
		})
	})
	if !ok {
		t.Fatalf("delivery did not resume (%s)", tag)
	}
}

// TestResubscribeAfterClientKill: CLIENT KILL TYPE pubsub drops the subscription; the bus
// notices (Healthy fails, bus_subscribe counted), resubscribes by itself and delivers again.
func TestResubscribeAfterClientKill(t *testing.T) {
	srv := redistest.StartServer(t)
	c, admin := privateClient(srv), privateClient(srv)
	set := metrics.NewSet()
	ra, rb := &recorder{}, &recorder{}
	a := newRedisBus(t, c, "sbtest:kill:", "node-a", ra.deliver, WithProbeInterval(testProbe), WithMetrics(set))
	b := newRedisBus(t, c, "sbtest:kill:", "node-b", rb.deliver, WithProbeInterval(testProbe))
	waitHealthy(t, a, 2*time.Second)
	waitHealthy(t, b, 2*time.Second)
	ctx := context.Background()

	for round := range 3 {
		w := watchHealth(a)
		before := counter(set, `redis_errors_total{operation="bus_subscribe"}`)
		n, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
		if err != nil || n != 2 {
			t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v; want 2 (one per bus)", n, err)
		}
		if !waitFor(unhealthyAfter*testProbe+time.Second, func() bool {
			return counter(set, `redis_errors_total{operation="bus_subscribe"}`) > before
		}) {
			t.Fatalf("round %d: the lost subscription was not noticed", round)
		}
		waitHealthy(t, a, 5*time.Second)
		waitHealthy(t, b, 5*time.Second)
		if !w.end() {
			t.Fatalf("round %d: Healthy never failed while the subscription was down", round)
		}
		deliversAgain(t, a, rb, "after kill "+string(rune('0'+round)))
		deliversAgain(t, b, ra, "after kill, other way "+string(rune('0'+round)))
	}
	if _, nodes, err := a.Publish(ctx, &Message{PkgID: 1}, 0); err != nil || nodes != 2 {
		t.Fatalf("Publish after the kills = %d nodes, %v; want 2", nodes, err)
	}
}

// TestResubscribeAfterRestart: redis-server killed and started again on the same port. Healthy
// fails within a few probe intervals, then delivery resumes by itself and Healthy recovers.
// History restarts empty (the test server keeps no data), which History reports.
func TestResubscribeAfterRestart(t *testing.T) {
	srv := redistest.StartServer(t)
	c := privateClient(srv)
	ra, rb := &recorder{}, &recorder{}
	a := newRedisBus(t, c, "sbtest:restart:", "node-a", ra.deliver, WithProbeInterval(testProbe))
	b := newRedisBus(t, c, "sbtest:restart:", "node-b", rb.deliver, WithProbeInterval(testProbe))
	waitHealthy(t, a, 2*time.Second)
	ctx := context.Background()
	if seq, _, err := a.Publish(ctx, &Message{PkgID: 1, Topic: "authors"}, 10); err != nil || seq != 1 {
		t.Fatalf("Publish = %d, %v", seq, err)
	}
	first, err := a.History(ctx, "authors", 0)
	if err != nil || first.Epoch == "" {
		t.Fatalf("History = %+v, %v", first, err)
	}

	for round := range 2 {
		srv.Kill()
		down := time.Now()
		if !waitFor((unhealthyAfter+2)*testProbe, func() bool { return a.Healthy(ctx) != nil && b.Healthy(ctx) != nil }) {
			t.Fatalf("round %d: Healthy still nil %s after Redis died", round, time.Since(down))
		}
		if _, _, err := a.Publish(ctx, &Message{PkgID: 1}, 0); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Publish while Redis is down = %v", err)
		}
		time.Sleep(5 * testProbe) // stay down for a while: several failed reconnects
		if a.Healthy(ctx) == nil {
			t.Fatal("Healthy while Redis is down")
		}
		srv.Restart()
		up := time.Now()
		waitHealthy(t, a, 10*time.Second)
		waitHealthy(t, b, 10*time.Second)
		t.Logf("round %d: healthy again %s after Redis came back", round, time.Since(up).Round(time.Millisecond))
		deliversAgain(t, a, rb, "after restart "+string(rune('0'+round)))
		deliversAgain(t, b, ra, "after restart, other way "+string(rune('0'+round)))
	}
	// The restarted server lost the history: no stream any more, so a client at seq 1 must
	// reload.
	if h, err := b.History(ctx, "authors", 1); err != nil || h.Latest != 0 || h.Complete || h.Epoch != "" {
		t.Fatalf("History after losing the data = %+v, %v; want no epoch, latest 0, not complete", h, err)
	}
	// The scripts are loaded again by themselves; the stream starts again under a new epoch.
	if seq, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "authors"}, 10); err != nil || seq != 1 {
		t.Fatalf("Publish with history after the restart = %d, %v", seq, err)
	}
	if h, err := b.History(ctx, "authors", 0); err != nil || h.Epoch == "" || h.Epoch == first.Epoch {
		t.Fatalf("History after the restart and a publish = %+v, %v; the epoch before was %q", h, err, first.Epoch)
	}
	if !waitFor(5*time.Second, func() bool {
		got := ra.snapshot()
		return got[len(got)-1].Topic == "authors" && got[len(got)-1].Seq == 1
	}) {
		t.Fatal("the history publish after the restart was not delivered")
	}
}

// TestResubscribeSilentConnection: the connections stop passing data without being closed
// (a half-open TCP connection, a frozen proxy). The watchdog replaces the subscription, and
// delivery resumes once the network does.
func TestResubscribeSilentConnection(t *testing.T) {
	srv := redistest.StartServer(t)
	px := newFreezeProxy(t, srv.Addr())
	c := redis.NewClient(&redis.Options{Addr: px.addr(), ContextTimeoutEnabled: true,
		DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	direct := privateClient(srv)
	ra, rb := &recorder{}, &recorder{}
	set := metrics.NewSet()
	a := newRedisBus(t, c, "sbtest:silent:", "node-a", ra.deliver,
		WithProbeInterval(testProbe), WithTimeout(100*time.Millisecond), WithMetrics(set))
	b := newRedisBus(t, direct, "sbtest:silent:", "node-b", rb.deliver, WithProbeInterval(testProbe))
	waitHealthy(t, a, 2*time.Second)

	px.freeze() // existing connections hang from now on; new ones work
	ctx := context.Background()
	if !waitFor((unhealthyAfter+2)*testProbe, func() bool { return a.Healthy(ctx) != nil }) {
		t.Fatal("Healthy still nil with a frozen connection")
	}
	waitHealthy(t, a, 5*time.Second)
	// A frozen connection never errors: only the watchdog can have counted this.
	if n := counter(set, `redis_errors_total{operation="bus_subscribe"}`); n == 0 {
		t.Fatal("recovered without the watchdog replacing the subscription?")
	}
	deliversAgain(t, b, ra, "after freeze")
	deliversAgain(t, a, rb, "after freeze, other way")
}

// freezeProxy forwards TCP to a Redis; freeze makes every connection open at that moment stop
// forwarding without closing it.
type freezeProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []*proxyConn
	wg     sync.WaitGroup
}

type proxyConn struct {
	client, server net.Conn
	frozen         atomic.Bool
}

func newFreezeProxy(t *testing.T, target string) *freezeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *freezeProxy) addr() string { return p.ln.Addr().String() }

func (p *freezeProxy) accept() {
	defer p.wg.Done()
	for {
		cc, err := p.ln.Accept()
		if err != nil {
			return
		}
		sc, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = cc.Close()
			continue
		}
		pc := &proxyConn{client: cc, server: sc}
		p.mu.Lock()
		p.conns = append(p.conns, pc)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(pc, cc, sc)
		go p.pipe(pc, sc, cc)
	}
}

// pipe copies from → to until either side closes; once frozen it reads and drops.
func (p *freezeProxy) pipe(pc *proxyConn, from, to net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 && !pc.frozen.Load() {
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				_ = to.Close()
			}
			_ = to.Close()
			return
		}
	}
}

func (p *freezeProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pc := range p.conns {
		pc.frozen.Store(true)
	}
}

func (p *freezeProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, pc := range p.conns {
		_ = pc.client.Close()
		_ = pc.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestOnSubscribedAfterResubscribe: the OnSubscribed functions run after every resubscription,
// on the receive goroutine before any message received through the new subscription (a marker
// handed to the same recorder comes before them); a panicking one does not stop the bus; a
// removed one is not called again.
func TestOnSubscribedAfterResubscribe(t *testing.T) {
	srv := redistest.StartServer(t)
	c, admin := privateClient(srv), privateClient(srv)
	rec := &recorder{}
	const prefix = "sbtest:onsub:"
	a := newRedisBus(t, c, prefix, "node-a", rec.deliver, WithProbeInterval(testProbe))
	pub := newRedisBus(t, c, prefix, "node-b", func(*Message) {}, WithProbeInterval(testProbe))
	var marks atomic.Int64
	remove := a.OnSubscribed(func() {
		marks.Add(1)
		rec.deliver(&Message{PkgID: -1})
	})
	removePanic := a.OnSubscribed(func() { panic("callback trouble") })
	defer removePanic()
	waitHealthy(t, a, 2*time.Second)
	waitHealthy(t, pub, 2*time.Second)
	ctx := context.Background()

	if _, _, err := pub.Publish(ctx, &Message{PkgID: 1, Topic: "dash.o", Data: data(`1`)}, 10); err != nil {
		t.Fatal(err)
	}
	rec.waitLen(t, 1, 5*time.Second)
	before := marks.Load()
	if _, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Result(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { return marks.Load() > before }) {
		t.Fatal("OnSubscribed not called after the resubscription")
	}
	// Whatever was published after the marker arrives after it.
	if _, _, err := pub.Publish(ctx, &Message{PkgID: 1, Topic: "dash.o", Data: data(`2`)}, 10); err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, func() bool {
		got := rec.snapshot()
		return got[len(got)-1].Seq == 2
	}) {
		t.Fatalf("seq 2 not delivered: %+v", rec.snapshot())
	}
	got := rec.snapshot()
	mark := -1
	for i, m := range got {
		if m.PkgID == -1 {
			mark = i
		}
	}
	if mark < 0 || mark > len(got)-2 || got[mark+1].Seq != 2 {
		t.Fatalf("deliveries %+v: want the marker before seq 2", got)
	}
	if h, err := a.History(ctx, "dash.o", 0); err != nil || h.Latest != 2 || !h.Complete || len(h.Msgs) != 2 {
		t.Fatalf("History = %+v, %v", h, err)
	}

	remove()
	after := marks.Load()
	w := watchHealth(a)
	if _, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Result(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, func() bool { return w.failed.Load() }) {
		t.Fatal("the kill was not noticed")
	}
	w.end()
	waitHealthy(t, a, 5*time.Second)
	deliversAgain(t, pub, rec, "after remove")
	if marks.Load() != after {
		t.Fatal("a removed OnSubscribed function was called")
	}
}
