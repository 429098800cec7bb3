package hub_test

import (
	"strings"
	"testing"
	"time"

	"switchboard/hub"
	"switchboard/store/bus"
)

// settledAt returns a SubscribeRequest.Done that reports, on ch, how many frames c held when
// the hub called it.
func settledAt(c *fakeConn, ch chan<- int) func() {
	return func() { ch <- c.count() }
}

func waitSettled(t *testing.T, ch <-chan int) int {
	t.Helper()
	select {
	case n := <-ch:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("Done was not called")
		return 0
	}
}

// TestSettledAfterAnswerAndRecovered: the hub calls Done once the SUBSCRIBE answer and the
// recovered messages are queued (the connection actor holds the next answers until then), and
// also when the subscription ends without an answer.
func TestSettledAfterAnswerAndRecovered(t *testing.T) {
	n := &busNode{}
	mb := bus.NewMemory(n.deliver)
	t.Cleanup(func() { _ = mb.Close() })
	n.start(t, mb, func(string) int { return 100 })
	c := newFake(1, seqCodec{})
	n.hub.Register(c)
	waitFor(t, 10*time.Second, "registration", func() bool { return n.hub.Active() == 1 })
	publishOn(t, mb, "dash.s", 100, 1, 3)

	ch := make(chan int, 1)
	// Without since: the answer alone; it names the topic's stream.
	n.hub.Subscribe(&hub.SubscribeRequest{Conn: c, Topic: "dash.s", Ack: answer("dash.s"), Done: settledAt(c, ch)})
	if got := waitSettled(t, ch); got != 1 {
		t.Fatalf("Done with %d frames queued, want the answer", got)
	}
	first := strings.Split(string(c.received()[0]), "|")
	epoch := first[len(first)-1]
	// Again, with since and the stream: the answer and the 3 recovered messages.
	n.hub.Subscribe(&hub.SubscribeRequest{Conn: c, Topic: "dash.s", Since: u64(0), Epoch: epoch, Ack: answer("dash.s"), Done: settledAt(c, ch)})
	if got := waitSettled(t, ch); got != 5 {
		t.Fatalf("Done with %d frames queued, want the answer and 3 recovered messages after the first answer", got)
	}
	// A connection the hub does not know (it closed meanwhile): no answer, Settled all the same.
	gone := newFake(2, seqCodec{})
	n.hub.Subscribe(&hub.SubscribeRequest{Conn: gone, Topic: "dash.s", Ack: answer("dash.s"), Done: settledAt(gone, ch)})
	if got := waitSettled(t, ch); got != 0 {
		t.Fatalf("Done with %d frames queued for an unknown connection", got)
	}
}

// TestSettledOnRefusal: a subscription refused for too many topics is done after its answer.
func TestSettledOnRefusal(t *testing.T) {
	e := newEnvWith(t, hub.Options{MaxTopicsPerConn: 1})
	c := newFake(1, seqCodec{})
	e.register(c)
	ch := make(chan int, 1)
	e.hub.Subscribe(&hub.SubscribeRequest{Conn: c, Topic: "a", Ack: answer("a"), Done: settledAt(c, ch)})
	if got := waitSettled(t, ch); got != 1 {
		t.Fatalf("first: Settled with %d frames", got)
	}
	e.hub.Subscribe(&hub.SubscribeRequest{Conn: c, Topic: "b", Ack: answer("b"), Done: settledAt(c, ch)})
	if got := waitSettled(t, ch); got != 2 {
		t.Fatalf("refused: Settled with %d frames", got)
	}
}

// TestSettledWhenHistoryFails: a subscription whose history read fails is answered with the error
// and settled after that answer; one dropped while its history loads (its connection went away)
// is settled without one.
func TestSettledWhenHistoryFails(t *testing.T) {
	e := newGapEnv(t, 10)
	c := newFake(1, seqCodec{})
	e.register(c)
	ch := make(chan int, 1)
	e.bus.set(func(b *gapBus) { b.failures = 1 })
	e.hub.Subscribe(&hub.SubscribeRequest{Conn: c, Topic: "dash.f", Since: u64(0), Ack: answer("dash.f"), Done: settledAt(c, ch)})
	if got := waitSettled(t, ch); got != 1 {
		t.Fatalf("Done with %d frames queued, want the error answer", got)
	}
	if f := string(c.received()[0]); f != "ack|dash.f|0|false|"+hub.ErrHistory.Error()+"|" {
		t.Fatalf("answer %q", f)
	}
	gate := make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = gate })
	e.hub.Subscribe(&hub.SubscribeRequest{Conn: c, Topic: "dash.g", Since: u64(0), Ack: answer("dash.g"), Done: settledAt(c, ch)})
	waitFor(t, 10*time.Second, "the history read", func() bool { return e.bus.historyCalls() == 2 })
	e.hub.Unregister(c.ID())
	if got := waitSettled(t, ch); got != 1 {
		t.Fatalf("Done with %d frames queued for a connection that went away", got)
	}
	close(gate)
}
