package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"switchboard/hub"
)

// gapBus is a bus whose losses the test decides. It keeps each topic's sequence and history like
// the real buses; Publish hands the message to the hub (Deliver) in seq order unless the
// subscription is "down" (the message is then only in the history, as with Redis pub/sub), or
// holds it back while delayed (a message still on its way). History can be made to fail or to
// wait. It implements hub.Resubscriber.
type gapBus struct {
	mu       sync.Mutex
	hub      *hub.Hub
	seq      map[string]uint64
	epochs   map[string]string // each topic's stream; a new one after restart
	streams  int               // streams started, for naming them
	hist     map[string][]*hub.Message
	down     bool
	delayed  bool
	inflight []*hub.Message
	onSub    func()
	failures int           // History calls that fail from now on
	panics   int           // History calls that panic from now on (after failures)
	gate     chan struct{} // non-nil: History waits for it to close
	calls    int           // History calls
	returned int           // History calls that returned
	// running is how many History calls are under way, maxRunning the most there were at once.
	running, maxRunning int
}

func newGapBus() *gapBus {
	return &gapBus{seq: map[string]uint64{}, epochs: map[string]string{}, hist: map[string][]*hub.Message{}}
}

func (b *gapBus) Publish(_ context.Context, m *hub.Message, history int) (uint64, int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	msg := &hub.Message{PkgID: m.PkgID, Data: m.Data, Topic: m.Topic}
	if history > 0 {
		if b.epochs[m.Topic] == "" {
			b.streams++
			b.epochs[m.Topic] = "ep" + strconv.Itoa(b.streams)
		}
		b.seq[m.Topic]++
		msg.Seq, msg.Epoch = b.seq[m.Topic], b.epochs[m.Topic]
		h := append(b.hist[m.Topic], msg)
		if len(h) > history {
			h = h[len(h)-history:]
		}
		b.hist[m.Topic] = h
	}
	switch {
	case b.down:
	case b.delayed:
		b.inflight = append(b.inflight, msg)
	default:
		b.hub.Deliver(msg) // under the lock: delivery order is seq order
	}
	return msg.Seq, 1, nil
}

// History reads the state when called; with a gate it then waits before answering (a read
// whose answer is slow to come back).
func (b *gapBus) History(ctx context.Context, topic string, since uint64) (hub.Window, error) {
	b.mu.Lock()
	b.calls++
	b.running++
	b.maxRunning = max(b.maxRunning, b.running)
	gate := b.gate
	fail := b.failures > 0
	if fail {
		b.failures--
	}
	panics := !fail && b.panics > 0
	if panics {
		b.panics--
	}
	latest, epoch := b.seq[topic], b.epochs[topic]
	var msgs []*hub.Message
	for _, m := range b.hist[topic] {
		if m.Seq > since {
			msgs = append(msgs, m)
		}
	}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.returned++
		b.running--
		b.mu.Unlock()
	}()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return hub.Window{}, ctx.Err()
		}
	}
	if fail {
		return hub.Window{}, errors.New("history down")
	}
	if panics {
		panic("history bug")
	}
	complete := since <= latest && uint64(len(msgs)) == latest-since
	return hub.Window{Epoch: epoch, Latest: latest, Msgs: msgs, Complete: complete}, nil
}

func (b *gapBus) OnSubscribed(f func()) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.onSub = f
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.onSub = nil
	}
}

// setDown takes the subscription down (messages go to the history only) or brings it back; back
// up, the bus reports the resubscription when resubscribed is set, as the Redis bus does.
func (b *gapBus) setDown(down, resubscribed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.down = down
	if !down && resubscribed && b.onSub != nil {
		b.onSub() // under the lock, like the Redis bus on its receive goroutine: before any later message
	}
}

// release delivers the messages held back while delayed, and stops delaying.
func (b *gapBus) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.inflight {
		b.hub.Deliver(m)
	}
	b.inflight, b.delayed = nil, false
}

// restart forgets every topic's stream (counter, epoch) and history, as a Redis restart without
// persistence does.
func (b *gapBus) restart() {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.seq)
	clear(b.epochs)
	clear(b.hist)
}

// epoch is topic's current stream ("" before its first message).
func (b *gapBus) epoch(topic string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.epochs[topic]
}

func (b *gapBus) set(f func(b *gapBus)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(b)
}

func (b *gapBus) historyCalls() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls
}

func (b *gapBus) historyReturned() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.returned
}

// gapEnv is a hub on a gapBus, with a history of keep messages on every topic.
type gapEnv struct {
	*env
	bus *gapBus
}

func newGapEnv(t *testing.T, keep int) *gapEnv {
	t.Helper()
	b := newGapBus()
	e := newEnvWith(t, hub.Options{Bus: b, History: func(string) int { return keep }})
	b.hub = e.hub
	return &gapEnv{env: e, bus: b}
}

// publish broadcasts n messages on topic, data {"n":<i>} for i from first.
func (e *gapEnv) publish(topic string, first, n int) {
	e.t.Helper()
	for i := first; i < first+n; i++ {
		msg := &hub.Message{PkgID: 1, Topic: topic, Data: json.RawMessage(`{"n":` + strconv.Itoa(i) + `}`)}
		if _, err := e.hub.Broadcast(context.Background(), msg); err != nil {
			e.t.Fatalf("Broadcast: %v", err)
		}
	}
}

// subscribe subscribes c to topic (since nil: from now on; otherwise since in the topic's
// current stream) and waits for the answer.
func (e *gapEnv) subscribe(c *fakeConn, topic string, since *uint64) {
	e.t.Helper()
	e.subscribeAt(c, topic, since, e.bus.epoch(topic))
}

// subscribeAt subscribes c to topic with since in stream epoch and waits for the answer.
func (e *gapEnv) subscribeAt(c *fakeConn, topic string, since *uint64, epoch string) {
	e.t.Helper()
	before := c.count()
	e.hub.Subscribe(&hub.SubscribeRequest{Conn: c, Topic: topic, Since: since, Epoch: epoch, Ack: answer(topic)})
	waitFor(e.t, 10*time.Second, "the SUBSCRIBE answer", func() bool { return c.count() > before })
}

// answer builds SUBSCRIBE answers as "ack|<topic>|<latest>|<recovered>|<err>|<epoch>".
func answer(topic string) func(hub.Answer) []byte {
	return func(a hub.Answer) []byte {
		return []byte(fmt.Sprintf("ack|%s|%d|%v|%v|%s", topic, a.Latest, a.Recovered, a.Err, a.Epoch))
	}
}

// seqCodec encodes a broadcast as "<topic>|<seq>|<data>|<epoch>".
type seqCodec struct{}

func (seqCodec) EncodeBroadcast(m *hub.Message) ([]byte, error) {
	return []byte(m.Topic + "|" + strconv.FormatUint(m.Seq, 10) + "|" + string(m.Data) + "|" + m.Epoch), nil
}

// stream is what c received on topic after its answer: the seqs of the broadcasts, and the
// answer itself. Every broadcast must be of one stream (epoch).
func stream(t *testing.T, c *fakeConn, topic string) (ack string, seqs []uint64) {
	t.Helper()
	ack, seqs, _ = streamEpochs(t, c, topic)
	return ack, seqs
}

// streamEpochs is stream with the epoch of each broadcast.
func streamEpochs(t *testing.T, c *fakeConn, topic string) (ack string, seqs []uint64, epochs []string) {
	t.Helper()
	for _, f := range c.received() {
		s := string(f)
		if strings.HasPrefix(s, "ack|"+topic+"|") {
			ack, seqs, epochs = s, nil, nil // a later answer starts over
			continue
		}
		parts := strings.SplitN(s, "|", 4)
		if parts[0] != topic {
			continue
		}
		n, _ := strconv.ParseUint(parts[1], 10, 64)
		if want := `{"n":` + parts[1] + `}`; len(parts) != 4 || parts[2] != want {
			t.Fatalf("frame %q: data does not match its seq", s)
		}
		seqs, epochs = append(seqs, n), append(epochs, parts[3])
	}
	return ack, seqs, epochs
}

// expectRun waits until c has the broadcasts of topic up to last, and checks that they are
// exactly from..last, each once, in order.
func expectRun(t *testing.T, c *fakeConn, topic string, from, last uint64) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("conn %d to get %s up to seq %d", c.id, topic, last), func() bool {
		_, seqs := stream(t, c, topic)
		return len(seqs) > 0 && seqs[len(seqs)-1] >= last
	})
	_, seqs := stream(t, c, topic)
	want := make([]uint64, 0, last-from+1)
	for s := from; s <= last; s++ {
		want = append(want, s)
	}
	if fmt.Sprint(seqs) != fmt.Sprint(want) {
		t.Fatalf("conn %d got %s seqs %v, want %v", c.id, topic, seqs, want)
	}
}

func u64(v uint64) *uint64 { return &v }

// TestGapRevealedByNextMessage: messages published while the bus was down reach the subscribers
// once the next live message shows the gap, before it, each once and in order.
func TestGapRevealedByNextMessage(t *testing.T) {
	e := newGapEnv(t, 100)
	a, b := newFake(1, seqCodec{}), newFake(2, seqCodec{})
	e.register(a, b)
	e.subscribe(a, "dash.x", nil)
	e.subscribe(b, "dash.x", nil)
	e.publish("dash.x", 1, 3)
	expectRun(t, a, "dash.x", 1, 3)

	e.bus.setDown(true, false)
	e.publish("dash.x", 4, 5) // 4..8: only in the history
	e.bus.setDown(false, false)
	e.publish("dash.x", 9, 2) // 9 reveals the gap
	for _, c := range []*fakeConn{a, b} {
		expectRun(t, c, "dash.x", 1, 10)
	}
	if got := e.metric(`ws_topic_fills_total{result="recovered"}`); got != "1" {
		t.Errorf(`ws_topic_fills_total{result="recovered"} = %q, want 1`, got)
	}
	if got := e.metric(`ws_topic_fills_total{result="lost"}`); got != "0" {
		t.Errorf(`ws_topic_fills_total{result="lost"} = %q, want 0`, got)
	}
	// A fence on another connection: everything before it has been handled.
	e.publish("dash.x", 11, 1)
	expectRun(t, a, "dash.x", 1, 11)
	expectRun(t, b, "dash.x", 1, 11)
}

// TestResubscribeFillsWithoutNewMessage: the bus reporting its resubscription is enough; no
// later message is needed to reveal the gap.
func TestResubscribeFillsWithoutNewMessage(t *testing.T) {
	e := newGapEnv(t, 100)
	a := newFake(1, seqCodec{})
	other := newFake(2, seqCodec{})
	e.register(a, other)
	e.subscribe(a, "dash.x", nil)
	e.subscribe(a, "dash.y", nil)
	e.subscribe(other, "dash.y", nil)
	e.publish("dash.x", 1, 2)
	e.publish("dash.y", 1, 1)
	expectRun(t, a, "dash.x", 1, 2)

	e.bus.setDown(true, false)
	e.publish("dash.x", 3, 4) // 3..6
	e.publish("dash.y", 2, 2) // 2..3
	e.bus.setDown(false, true)
	expectRun(t, a, "dash.x", 1, 6)
	expectRun(t, a, "dash.y", 1, 3)
	expectRun(t, other, "dash.y", 1, 3)

	e.publish("dash.x", 7, 1)
	expectRun(t, a, "dash.x", 1, 7)
	if closes, _, _ := a.closed(); closes != 0 {
		t.Fatalf("a connection was closed %d times", closes)
	}
}

// TestResubscribeWithNothingMissed: a resubscription that missed nothing delivers nothing twice.
func TestResubscribeWithNothingMissed(t *testing.T) {
	e := newGapEnv(t, 100)
	a := newFake(1, seqCodec{})
	e.register(a)
	e.subscribe(a, "dash.x", nil)
	e.publish("dash.x", 1, 3)
	expectRun(t, a, "dash.x", 1, 3)
	calls := e.bus.historyCalls()
	e.bus.setDown(true, false)
	e.bus.setDown(false, true)
	waitFor(t, 10*time.Second, "the fill", func() bool {
		return e.metric(`ws_topic_fills_total{result="recovered"}`) == "1"
	})
	if e.bus.historyCalls() != calls+1 {
		t.Fatalf("History called %d times for one resubscription, want 1", e.bus.historyCalls()-calls)
	}
	e.publish("dash.x", 4, 1)
	expectRun(t, a, "dash.x", 1, 4)
}

// TestLiveMessagesHeldWhileFilling: live messages that arrive while the history loads wait and
// follow the missed ones.
func TestLiveMessagesHeldWhileFilling(t *testing.T) {
	e := newGapEnv(t, 100)
	a := newFake(1, seqCodec{})
	e.register(a)
	e.subscribe(a, "dash.x", nil)
	e.publish("dash.x", 1, 1)
	expectRun(t, a, "dash.x", 1, 1)

	gate := make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = gate })
	e.bus.setDown(true, false)
	e.publish("dash.x", 2, 3) // 2..4 missed
	e.bus.setDown(false, false)
	e.publish("dash.x", 5, 1) // reveals the gap; the fill waits at the gate
	waitFor(t, 10*time.Second, "the fill to start", func() bool { return e.bus.historyCalls() > 0 })
	e.publish("dash.x", 6, 20) // held
	e.bus.set(func(b *gapBus) { b.gate = nil })
	close(gate)
	expectRun(t, a, "dash.x", 1, 25)
}

// TestSubscribeDuringFill: a subscription whose history loads while the topic fills a gap gets
// its answer, its replay and then every later message once.
func TestSubscribeDuringFill(t *testing.T) {
	e := newGapEnv(t, 100)
	a, b := newFake(1, seqCodec{}), newFake(2, seqCodec{})
	e.register(a, b)
	e.subscribe(a, "dash.x", nil)
	e.publish("dash.x", 1, 2)
	expectRun(t, a, "dash.x", 1, 2)

	gate := make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = gate })
	e.bus.setDown(true, false)
	e.publish("dash.x", 3, 2) // 3..4 missed
	e.bus.setDown(false, false)
	e.publish("dash.x", 5, 1)
	waitFor(t, 10*time.Second, "the fill to start", func() bool { return e.bus.historyCalls() > 0 })
	e.hub.Subscribe(&hub.SubscribeRequest{Conn: b, Topic: "dash.x", Since: u64(1), Epoch: "ep1", Ack: answer("dash.x")})
	waitFor(t, 10*time.Second, "b's load to start", func() bool { return e.bus.historyCalls() > 1 })
	e.publish("dash.x", 6, 2)
	e.bus.set(func(b *gapBus) { b.gate = nil })
	close(gate)
	expectRun(t, a, "dash.x", 1, 7)
	expectRun(t, b, "dash.x", 2, 7)
	if ack, _ := stream(t, b, "dash.x"); !strings.HasPrefix(ack, "ack|dash.x|") || !strings.HasSuffix(ack, "|true|<nil>|ep1") {
		t.Fatalf("b's answer = %q, want recovered", ack)
	}
}

// TestMissedMessagesTrimmedClosesSubscribers: when the history no longer holds what was missed,
// the topic's subscribers are closed (no silent hole); other topics' are not.
func TestMissedMessagesTrimmedClosesSubscribers(t *testing.T) {
	e := newGapEnv(t, 3)
	a, b, other := newFake(1, seqCodec{}), newFake(2, seqCodec{}), newFake(3, seqCodec{})
	e.register(a, b, other)
	e.subscribe(a, "dash.x", nil)
	e.subscribe(b, "dash.x", nil)
	e.subscribe(other, "dash.y", nil)
	e.publish("dash.x", 1, 2)
	expectRun(t, a, "dash.x", 1, 2)

	e.bus.setDown(true, false)
	e.publish("dash.x", 3, 5) // 3..7; 5..7 kept
	e.bus.setDown(false, true)
	for _, c := range []*fakeConn{a, b} {
		waitFor(t, 10*time.Second, "the subscriber to be closed", func() bool { n, _, _ := c.closed(); return n == 1 })
		if _, code, reason := c.closed(); code != hub.CloseMissedMessages || reason != "missed topic messages" {
			t.Fatalf("conn %d closed with %d %q", c.id, code, reason)
		}
		_, seqs := stream(t, c, "dash.x")
		if fmt.Sprint(seqs) != "[1 2]" {
			t.Fatalf("conn %d got %v before being closed, want [1 2]", c.id, seqs)
		}
	}
	waitFor(t, 10*time.Second, "the closed connections to be dropped", func() bool { return e.hub.Active() == 1 })
	if got := e.metric(`ws_topic_fills_total{result="lost"}`); got != "1" {
		t.Errorf(`ws_topic_fills_total{result="lost"} = %q, want 1`, got)
	}
	if got := e.metric("ws_topic_gap_disconnects_total"); got != "2" {
		t.Errorf("ws_topic_gap_disconnects_total = %q, want 2", got)
	}
	e.publish("dash.y", 1, 1)
	expectRun(t, other, "dash.y", 1, 1)
	if n, _, _ := other.closed(); n != 0 {
		t.Fatal("a subscriber of another topic was closed")
	}
	// The topic starts over for whoever subscribes again (the client recovering with since).
	c := newFake(4, seqCodec{})
	e.register(c)
	e.subscribe(c, "dash.x", u64(2))
	if ack, _ := stream(t, c, "dash.x"); ack != "ack|dash.x|7|false|<nil>|ep1" {
		t.Fatalf("SUBSCRIBE since 2 after the loss = %q, want latest 7, not recovered", ack)
	}
	e.publish("dash.x", 8, 1)
	expectRun(t, c, "dash.x", 8, 8)
}

// TestFillRetriesAPassingError: one failed history read is retried.
func TestFillRetriesAPassingError(t *testing.T) {
	e := newGapEnv(t, 100)
	a := newFake(1, seqCodec{})
	e.register(a)
	e.subscribe(a, "dash.x", nil)
	e.publish("dash.x", 1, 1)
	expectRun(t, a, "dash.x", 1, 1)
	e.bus.setDown(true, false)
	e.publish("dash.x", 2, 2)
	e.bus.set(func(b *gapBus) { b.failures = 1 })
	e.bus.setDown(false, true)
	expectRun(t, a, "dash.x", 1, 3)
}

// TestFirstStreamMissedClosesSubscribers: subscribers that saw no stream yet, while the bus was
// down when the topic's first messages were published. The history shows a stream, but not
// that it is the first since the subscribers' answers (another may have come and gone, unseen,
// with Redis's data): they are closed rather than given it as the beginning. A first stream
// that comes live is theirs (TestGapRevealedByNextMessage).
func TestFirstStreamMissedClosesSubscribers(t *testing.T) {
	e := newGapEnv(t, 100)
	a := newFake(1, seqCodec{})
	e.register(a)
	e.subscribe(a, "dash.x", nil)
	if ack, _ := stream(t, a, "dash.x"); ack != "ack|dash.x|0|false|<nil>|" {
		t.Fatalf("answer %q, want latest 0 and no epoch", ack)
	}
	e.bus.setDown(true, false)
	e.publish("dash.x", 1, 2)
	e.bus.setDown(false, true)
	waitFor(t, 10*time.Second, "the subscriber to be closed", func() bool { n, _, _ := a.closed(); return n == 1 })
	if _, code, reason := a.closed(); code != hub.CloseMissedMessages || reason != "missed topic messages" {
		t.Fatalf("closed with %d %q", code, reason)
	}
	if _, seqs := stream(t, a, "dash.x"); len(seqs) != 0 {
		t.Fatalf("got %v, want nothing", seqs)
	}
}

// TestFillFailingClosesSubscribers: a history that stays unreadable closes the subscribers.
func TestFillFailingClosesSubscribers(t *testing.T) {
	e := newGapEnv(t, 100)
	a := newFake(1, seqCodec{})
	e.register(a)
	e.subscribe(a, "dash.x", nil)
	e.publish("dash.x", 1, 1)
	expectRun(t, a, "dash.x", 1, 1)
	e.bus.setDown(true, false)
	e.publish("dash.x", 2, 2)
	e.bus.set(func(b *gapBus) { b.failures = 100 })
	e.bus.setDown(false, true)
	waitFor(t, 10*time.Second, "the subscriber to be closed", func() bool { n, _, _ := a.closed(); return n == 1 })
	if _, code, _ := a.closed(); code != hub.CloseMissedMessages {
		t.Fatalf("closed with %d", code)
	}
	if got := e.bus.historyCalls(); got != 1+3 { // the subscription's load, then 3 attempts
		t.Errorf("History called %d times, want 4", got)
	}
}

// TestSequenceRestartClosesSubscribers: the topic's counter starting over (Redis lost its data,
// an idle topic expired) cannot be told apart from lost messages: the subscribers are closed.
func TestSequenceRestartClosesSubscribers(t *testing.T) {
	for _, resubscribed := range []bool{false, true} {
		t.Run("resubscribed="+strconv.FormatBool(resubscribed), func(t *testing.T) {
			e := newGapEnv(t, 100)
			a := newFake(1, seqCodec{})
			e.register(a)
			e.subscribe(a, "dash.x", nil)
			e.publish("dash.x", 1, 5)
			expectRun(t, a, "dash.x", 1, 5)
			e.bus.setDown(true, false)
			e.bus.restart()
			e.bus.setDown(false, resubscribed)
			e.publish("dash.x", 1, 1) // seq 1 again
			waitFor(t, 10*time.Second, "the subscriber to be closed", func() bool { n, _, _ := a.closed(); return n == 1 })
			if _, seqs := stream(t, a, "dash.x"); fmt.Sprint(seqs) != "[1 2 3 4 5]" {
				t.Fatalf("got %v, want [1 2 3 4 5] and nothing from the new counter", seqs)
			}
		})
	}
}

// TestSequenceRestartBeforeAnyLiveMessage: the counter restarts after the answer and before any
// live message; the history tells it apart from a late duplicate.
func TestSequenceRestartBeforeAnyLiveMessage(t *testing.T) {
	e := newGapEnv(t, 100)
	e.publish("dash.x", 1, 5)
	a := newFake(1, seqCodec{})
	e.register(a)
	e.subscribe(a, "dash.x", nil) // answer: latest 5
	e.bus.restart()
	e.publish("dash.x", 1, 1)
	waitFor(t, 10*time.Second, "the subscriber to be closed", func() bool { n, _, _ := a.closed(); return n == 1 })
	if _, seqs := stream(t, a, "dash.x"); len(seqs) != 0 {
		t.Fatalf("got %v, want nothing", seqs)
	}
}

// TestLateDuplicatesSkipped: messages still on their way when a subscriber's history was read
// arrive after its answer; they are skipped (the answer covered them), the next ones delivered,
// and nothing is closed.
func TestLateDuplicatesSkipped(t *testing.T) {
	e := newGapEnv(t, 100)
	e.bus.set(func(b *gapBus) { b.delayed = true })
	e.publish("dash.x", 1, 4) // in the history, not delivered yet
	a, b := newFake(1, seqCodec{}), newFake(2, seqCodec{})
	e.register(a, b)
	e.subscribe(a, "dash.x", nil)    // answer: latest 4, nothing replayed
	e.subscribe(b, "dash.x", u64(1)) // answer: latest 4, replays 2..4
	e.bus.release()
	e.publish("dash.x", 5, 2)
	expectRun(t, a, "dash.x", 5, 6)
	expectRun(t, b, "dash.x", 2, 6)
	if n, _, _ := a.closed(); n != 0 {
		t.Fatal("closed")
	}
	if got := e.metric(`ws_topic_fills_total{result="lost"}`); got != "0" {
		t.Errorf(`ws_topic_fills_total{result="lost"} = %q, want 0`, got)
	}
}

// TestResubscribeReloadsLoadingSubscription: a subscription whose history was read before the
// outage, and whose answer comes back after the resubscription, reads it again: the messages
// missed meanwhile are not lost even though no later message comes to show the gap.
func TestResubscribeReloadsLoadingSubscription(t *testing.T) {
	e := newGapEnv(t, 100)
	e.publish("dash.x", 1, 2)
	a := newFake(1, seqCodec{})
	e.register(a)
	stale, fresh := make(chan struct{}), make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = stale })
	e.hub.Subscribe(&hub.SubscribeRequest{Conn: a, Topic: "dash.x", Since: u64(0), Epoch: "ep1", Ack: answer("dash.x")})
	waitFor(t, 10*time.Second, "the first load to read", func() bool { return e.bus.historyCalls() == 1 })
	e.bus.setDown(true, false)
	e.publish("dash.x", 3, 2) // missed: the first read has latest 2
	e.bus.set(func(b *gapBus) { b.gate = fresh })
	e.bus.setDown(false, true) // the load starts again
	waitFor(t, 10*time.Second, "the second load to read", func() bool { return e.bus.historyCalls() == 2 })
	close(stale) // the first answer comes back first, and is ignored
	waitFor(t, 10*time.Second, "the first load to return", func() bool { return e.bus.historyReturned() == 1 })
	close(fresh)
	expectRun(t, a, "dash.x", 1, 4)
	e.publish("dash.x", 5, 1)
	expectRun(t, a, "dash.x", 1, 5)
	var acks []string
	for _, f := range a.received() {
		if strings.HasPrefix(string(f), "ack|") {
			acks = append(acks, string(f))
		}
	}
	if fmt.Sprint(acks) != "[ack|dash.x|4|true|<nil>|ep1]" {
		t.Fatalf("answers %q, want only the second load's (latest 4, recovered)", acks)
	}
}
