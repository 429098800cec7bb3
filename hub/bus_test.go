package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"switchboard/hub"
	"switchboard/store/bus"
	"switchboard/store/redistest"
)

// busNode is a hub on a real bus, as cmd/switchboard wires them: the bus starts first and hands
// its messages to the hub once the hub exists.
type busNode struct {
	hub     *hub.Hub
	metrics *metrics.Set
	late    atomic.Pointer[hub.Hub]
	gate    atomic.Pointer[chan struct{}] // set: deliver waits for it to close
}

func (n *busNode) deliver(m *bus.Message) {
	if g := n.gate.Load(); g != nil {
		<-*g
	}
	if h := n.late.Load(); h != nil {
		h.Deliver(m)
	}
}

func (n *busNode) start(t *testing.T, b hub.Bus, history func(string) int) {
	t.Helper()
	system := newSystem()
	n.metrics = metrics.NewSet()
	n.hub = hub.Start(system.Root, hub.Options{
		Bus: b, History: history, Logger: slog.New(slog.DiscardHandler), Metrics: n.metrics,
	})
	n.late.Store(n.hub)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := n.hub.Stop(ctx, 1001, "test over"); err != nil {
			t.Errorf("hub stop: %v", err)
		}
		system.Shutdown()
	})
}

func (n *busNode) metric(name string) string {
	var b strings.Builder
	n.metrics.WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

func (n *busNode) subscribe(t *testing.T, c *fakeConn, topic string, since *uint64, epoch string) string {
	t.Helper()
	before := c.count()
	n.hub.Subscribe(&hub.SubscribeRequest{Conn: c, Topic: topic, Since: since, Epoch: epoch, Ack: answer(topic)})
	waitFor(t, 10*time.Second, "the SUBSCRIBE answer", func() bool { return c.count() > before })
	return string(c.received()[before])
}

// epochOf is topic's current stream on b.
func epochOf(t *testing.T, b bus.Bus, topic string) string {
	t.Helper()
	w, err := b.History(context.Background(), topic, 0)
	if err != nil {
		t.Fatalf("History: %v", err)
	}
	return w.Epoch
}

// publishOn publishes seqs first..last on topic through b (data {"n":<seq>}), checking the seq
// each gets.
func publishOn(t *testing.T, b bus.Bus, topic string, history int, first, last uint64) {
	t.Helper()
	for i := first; i <= last; i++ {
		m := &bus.Message{PkgID: 1, Topic: topic, Data: json.RawMessage(`{"n":` + strconv.FormatUint(i, 10) + `}`)}
		seq, _, err := b.Publish(context.Background(), m, history)
		if err != nil || seq != i {
			t.Fatalf("Publish on %s = seq %d, %v; want seq %d", topic, seq, err, i)
		}
	}
}

// TestMemoryBusSubscribersGetEveryMessageOnce: with the in-process bus, which loses nothing,
// subscribers that join while messages are still on their way, with and without since, get
// every message after their answer exactly once and in order, and none is closed.
func TestMemoryBusSubscribersGetEveryMessageOnce(t *testing.T) {
	n := &busNode{}
	mb := bus.NewMemory(n.deliver)
	t.Cleanup(func() { _ = mb.Close() })
	n.start(t, mb, func(string) int { return 1000 })

	conns := make([]*fakeConn, 8)
	for i := range conns {
		conns[i] = newFake(uint64(i+1), seqCodec{})
		n.hub.Register(conns[i])
	}
	waitFor(t, 10*time.Second, "registration", func() bool { return n.hub.Active() == len(conns) })
	// Each subscription joins while the bus still has messages on their way to the hub: they
	// come after its answer, some covered by it.
	var last uint64
	from := make([]uint64, len(conns)) // first seq each connection must get
	for i, c := range conns {
		gate := make(chan struct{})
		n.gate.Store(&gate)
		publishOn(t, mb, "dash.m", 1000, last+1, last+50)
		last += 50
		var since *uint64
		if i%2 == 1 {
			since = u64(last - 30)
		}
		ack := n.subscribe(t, c, "dash.m", since, epochOf(t, mb, "dash.m"))
		var latest uint64
		var recovered bool
		if _, err := fmt.Sscanf(strings.ReplaceAll(ack, "|", " "), "ack dash.m %d %t", &latest, &recovered); err != nil {
			t.Fatalf("answer %q: %v", ack, err)
		}
		if recovered != (since != nil) {
			t.Fatalf("answer %q with since %v", ack, since)
		}
		from[i] = latest + 1
		if recovered {
			from[i] = *since + 1
		}
		n.gate.Store(nil)
		close(gate)
	}
	publishOn(t, mb, "dash.m", 1000, last+1, last+50)
	last += 50
	for i, c := range conns {
		expectRun(t, c, "dash.m", from[i], last)
	}
	for _, c := range conns {
		if n, _, _ := c.closed(); n != 0 {
			t.Fatalf("conn %d closed", c.id)
		}
	}
	if got := n.metric(`ws_topic_fills_total{result="lost"}`); got != "0" {
		t.Errorf(`ws_topic_fills_total{result="lost"} = %q, want 0`, got)
	}
	// The first subscriber's answer covered messages still on their way before any came live:
	// their epoch tells that they are late duplicates, not a restarted counter, without asking
	// the history.
	if got := n.metric(`ws_topic_fills_total{result="recovered"}`); got != "0" {
		t.Errorf(`ws_topic_fills_total{result="recovered"} = %q, want 0`, got)
	}
}

// cutProxy forwards TCP to a Redis; cut closes every connection open through it and refuses new
// ones until restore: a node whose Redis connections are gone (its bus subscription included).
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	refuse bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		cc, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		p.mu.Unlock()
		if refuse {
			_ = cc.Close()
			continue
		}
		sc, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = cc.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, cc, sc)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(cc, sc)
		go p.pipe(sc, cc)
	}
}

func (p *cutProxy) pipe(from, to net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(to, from)
	_ = to.Close()
	_ = from.Close()
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = false
}

func (p *cutProxy) close() {
	_ = p.ln.Close()
	p.cut()
	p.wg.Wait()
}

const testProbe = 100 * time.Millisecond

// newRedisBus builds a Redis bus closed when the test ends (registered after the client, so it
// is closed before it).
func newRedisBus(t *testing.T, c redis.UniversalClient, node string, deliver func(*bus.Message)) *bus.Redis {
	t.Helper()
	b, err := bus.NewRedis(c, "sbtest:hubgap:", node, deliver, bus.WithProbeInterval(testProbe))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func waitHealthy(t *testing.T, b bus.Bus) {
	t.Helper()
	waitFor(t, 10*time.Second, "the bus to be healthy", func() bool { return b.Healthy(context.Background()) == nil })
}

// TestRedisBusMissedMessagesReachSubscribers: node B's Redis connections are cut (its bus
// subscription with them) while node A publishes; once B is back, its subscribers get what was
// published meanwhile, without waiting for a later message, exactly once and in order. On a
// topic whose history no longer holds all of it, B's subscribers are closed instead.
func TestRedisBusMissedMessagesReachSubscribers(t *testing.T) {
	srv := redistest.StartServer(t)
	px := newCutProxy(t, srv.Addr())
	fast := func(o *redis.Options) { o.DialTimeout, o.MaxRetries = 200*time.Millisecond, -1 }
	direct := srv.Client(fast)
	viaProxy := redis.NewClient(&redis.Options{Addr: px.addr(), ContextTimeoutEnabled: true,
		DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = viaProxy.Close() })

	const long, short = 100, 2
	history := func(topic string) int {
		if topic == "dash.short" {
			return short
		}
		return long
	}
	a := newRedisBus(t, direct, "node-a", func(*bus.Message) {})
	b := &busNode{}
	bb := newRedisBus(t, viaProxy, "node-b", b.deliver)
	b.start(t, bb, history)
	waitHealthy(t, a)
	waitHealthy(t, bb)

	x1, x2, s := newFake(1, seqCodec{}), newFake(2, seqCodec{}), newFake(3, seqCodec{})
	for _, c := range []*fakeConn{x1, x2, s} {
		b.hub.Register(c)
	}
	waitFor(t, 10*time.Second, "registration", func() bool { return b.hub.Active() == 3 })
	b.subscribe(t, x1, "dash.long", nil, "")
	b.subscribe(t, s, "dash.short", nil, "")
	publishOn(t, a, "dash.long", long, 1, 3)
	publishOn(t, a, "dash.short", short, 1, 1)
	expectRun(t, x1, "dash.long", 1, 3)
	expectRun(t, s, "dash.short", 1, 1)
	b.subscribe(t, x2, "dash.long", u64(1), epochOf(t, a, "dash.long")) // replays 2..3
	expectRun(t, x2, "dash.long", 2, 3)

	for round := range 2 {
		px.cut()
		waitFor(t, 10*time.Second, "node B's subscription to be down", func() bool {
			return bb.Healthy(context.Background()) != nil
		})
		first := uint64(4 + round*10)
		publishOn(t, a, "dash.long", long, first, first+9) // node B misses these
		if round == 0 {
			publishOn(t, a, "dash.short", short, 2, 4) // 2 is no longer kept
		}
		px.restore()
		waitHealthy(t, bb)
		// No later message: the resubscription alone brings them.
		expectRun(t, x1, "dash.long", 1, first+9)
		expectRun(t, x2, "dash.long", 2, first+9)
	}
	waitFor(t, 10*time.Second, "the dash.short subscriber to be closed", func() bool { n, _, _ := s.closed(); return n == 1 })
	if _, code, reason := s.closed(); code != hub.CloseMissedMessages || reason != "missed topic messages" {
		t.Fatalf("dash.short subscriber closed with %d %q", code, reason)
	}
	expectRun(t, s, "dash.short", 1, 1) // and nothing after the hole
	publishOn(t, a, "dash.long", long, 24, 25)
	expectRun(t, x1, "dash.long", 1, 25)
	expectRun(t, x2, "dash.long", 2, 25)
	for _, c := range []*fakeConn{x1, x2} {
		if n, _, _ := c.closed(); n != 0 {
			t.Fatalf("conn %d closed", c.id)
		}
	}
	if got := b.metric(`ws_topic_fills_total{result="lost"}`); got != "1" {
		t.Errorf(`ws_topic_fills_total{result="lost"} = %q, want 1 (dash.short)`, got)
	}
}

// TestRedisRestartClosesSubscribers: Redis restarted without its data: the topic's counter starts
// over and the history is gone, so the node's subscribers are closed to recover with since.
func TestRedisRestartClosesSubscribers(t *testing.T) {
	srv := redistest.StartServer(t)
	c := srv.Client(func(o *redis.Options) { o.DialTimeout, o.MaxRetries = 200*time.Millisecond, -1 })
	n := &busNode{}
	rb := newRedisBus(t, c, "node-a", n.deliver)
	n.start(t, rb, func(string) int { return 100 })
	waitHealthy(t, rb)
	x := newFake(1, seqCodec{})
	n.hub.Register(x)
	waitFor(t, 10*time.Second, "registration", func() bool { return n.hub.Active() == 1 })
	n.subscribe(t, x, "dash.r", nil, "")
	publishOn(t, rb, "dash.r", 100, 1, 3)
	expectRun(t, x, "dash.r", 1, 3)

	srv.Kill()
	waitFor(t, 10*time.Second, "the bus to notice", func() bool { return rb.Healthy(context.Background()) != nil })
	srv.Restart()
	waitFor(t, 15*time.Second, "the subscriber to be closed", func() bool { n, _, _ := x.closed(); return n == 1 })
	if _, code, _ := x.closed(); code != hub.CloseMissedMessages {
		t.Fatalf("closed with %d", code)
	}
	expectRun(t, x, "dash.r", 1, 3)
}

// TestRedisDataLossSinceNotRecovered: seq 1..5 on a history topic, then Redis loses its data
// (FLUSHDB; a restart without persistence) and the topic's counter starts again. A client that
// saw 1..5 and comes back with since 5 and its epoch is told recovered:false — right after one
// new publish, and also once the new stream has passed 5 (by seq alone its 6 and 7 would look
// like exactly what the client missed). A subscriber that stayed is closed to recover the same
// way rather than handed the new stream's messages as if they followed its 5.
func TestRedisDataLossSinceNotRecovered(t *testing.T) {
	for _, how := range []string{"flushdb", "restart"} {
		t.Run(how, func(t *testing.T) {
			srv := redistest.StartServer(t)
			c := srv.Client(func(o *redis.Options) { o.DialTimeout, o.MaxRetries = 200*time.Millisecond, -1 })
			n := &busNode{}
			rb := newRedisBus(t, c, "node-a", n.deliver)
			n.start(t, rb, func(string) int { return 100 })
			waitHealthy(t, rb)
			stay := newFake(1, seqCodec{})
			n.hub.Register(stay)
			waitFor(t, 10*time.Second, "registration", func() bool { return n.hub.Active() == 1 })
			n.subscribe(t, stay, "dash.l", nil, "")
			publishOn(t, rb, "dash.l", 100, 1, 5)
			expectRun(t, stay, "dash.l", 1, 5)
			_, _, epochs := streamEpochs(t, stay, "dash.l")
			old := epochs[4]

			switch how {
			case "flushdb":
				if err := c.FlushDB(context.Background()).Err(); err != nil { // the test's own server
					t.Fatal(err)
				}
			case "restart":
				srv.Kill()
				srv.Restart()
				waitHealthy(t, rb)
			}
			publishOn(t, rb, "dash.l", 100, 1, 1)
			waitFor(t, 15*time.Second, "the subscriber that stayed to be closed", func() bool { n, _, _ := stay.closed(); return n == 1 })
			if _, code, reason := stay.closed(); code != hub.CloseMissedMessages || reason != "missed topic messages" {
				t.Fatalf("closed with %d %q", code, reason)
			}
			expectRun(t, stay, "dash.l", 1, 5) // and nothing of the new stream

			latest := uint64(1)
			for i, upTo := range []uint64{1, 7} {
				publishOn(t, rb, "dash.l", 100, latest+1, upTo)
				latest = upTo
				back := newFake(uint64(10+i), seqCodec{})
				n.hub.Register(back)
				waitFor(t, 10*time.Second, "registration", func() bool { return n.hub.Active() == 1 })
				ack := n.subscribe(t, back, "dash.l", u64(5), old)
				cur := epochOf(t, rb, "dash.l")
				if want := fmt.Sprintf("ack|dash.l|%d|false|<nil>|%s", latest, cur); ack != want || cur == old {
					t.Fatalf("SUBSCRIBE since 5 of %s with the new stream at %d: %q, want %q", old, latest, ack, want)
				}
				latest++
				publishOn(t, rb, "dash.l", 100, latest, latest)
				expectRun(t, back, "dash.l", latest, latest) // nothing replayed; live follows
				n.hub.Unregister(back.id)
				waitFor(t, 10*time.Second, "unregistration", func() bool { return n.hub.Active() == 0 })
			}
		})
	}
}

// TestBroadcastDuplicateKey: a message whose Key the bus published on its topic within the
// dedup window is refused with ErrDuplicate, and takes no seq.
func TestBroadcastDuplicateKey(t *testing.T) {
	n := &busNode{}
	b := bus.NewMemory(n.deliver)
	t.Cleanup(func() { _ = b.Close() })
	n.start(t, b, func(string) int { return 10 })
	ctx := context.Background()
	m := func() *hub.Message {
		return &hub.Message{PkgID: 7, Topic: "dashboards.dup", Data: json.RawMessage(`{}`), Key: "evt-1"}
	}
	if _, err := n.hub.Broadcast(ctx, m()); err != nil {
		t.Fatal(err)
	}
	if _, err := n.hub.Broadcast(ctx, m()); err != hub.ErrDuplicate {
		t.Fatalf("second broadcast of the key: %v, want ErrDuplicate", err)
	}
	w, err := b.History(ctx, "dashboards.dup", 0)
	if err != nil || w.Latest != 1 {
		t.Fatalf("history: latest %d, %v", w.Latest, err)
	}
}
