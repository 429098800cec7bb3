package hub_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"switchboard/hub"
)

// Tests of SUBSCRIBE's answer (recovered and the topic's stream), of the bounds on the work a
// SUBSCRIBE starts, and of "every request gets exactly one answer".

// newCappedEnv is a hub on a gapBus (history of 100) with MaxPending and MaxLoads set.
func newCappedEnv(t *testing.T, maxPending, maxLoads int) *gapEnv {
	t.Helper()
	b := newGapBus()
	e := newEnvWith(t, hub.Options{Bus: b, History: func(string) int { return 100 }, MaxPending: maxPending, MaxLoads: maxLoads})
	b.hub = e.hub
	return &gapEnv{env: e, bus: b}
}

// tracked is a SubscribeRequest whose Ack and Done calls are counted.
type tracked struct {
	mu    sync.Mutex
	acks  []hub.Answer
	dones int
}

func (r *tracked) request(c hub.Conn, topic string, since *uint64, epoch string) *hub.SubscribeRequest {
	ack := answer(topic)
	return &hub.SubscribeRequest{Conn: c, Topic: topic, Since: since, Epoch: epoch,
		Ack: func(a hub.Answer) []byte {
			r.mu.Lock()
			r.acks = append(r.acks, a)
			r.mu.Unlock()
			return ack(a)
		},
		Done: func() {
			r.mu.Lock()
			r.dones++
			r.mu.Unlock()
		}}
}

func (r *tracked) counts() (acks, dones int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.acks), r.dones
}

func (r *tracked) answers() []hub.Answer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hub.Answer(nil), r.acks...)
}

// waitDone waits until r's request is finished and checks it was answered acks times (0 or 1).
func (r *tracked) waitDone(t *testing.T, acks int) hub.Answer {
	t.Helper()
	waitFor(t, 10*time.Second, "the request to be finished", func() bool { _, d := r.counts(); return d >= 1 })
	if a, d := r.counts(); a != acks || d != 1 {
		t.Fatalf("Ack called %d times and Done %d times, want %d and 1", a, d, acks)
	}
	if acks == 0 {
		return hub.Answer{}
	}
	return r.answers()[0]
}

// acks returns c's SUBSCRIBE answers on topic, in order.
func acks(c *fakeConn, topic string) []string {
	var out []string
	for _, f := range c.received() {
		if s := string(f); strings.HasPrefix(s, "ack|"+topic+"|") {
			out = append(out, s)
		}
	}
	return out
}

// TestRecoveredNeedsTheSameEpoch: since is recovered only with the epoch it belongs to, when that
// is the topic's stream and the history covers since; the answer names the stream either way.
func TestRecoveredNeedsTheSameEpoch(t *testing.T) {
	e := newGapEnv(t, 100)
	e.publish("dash.x", 1, 5) // ep1
	for i, tc := range []struct {
		since *uint64
		epoch string
		want  string
		from  uint64 // first seq replayed; 0 = none
	}{
		{u64(3), "ep1", "ack|dash.x|5|true|<nil>|ep1", 4},
		{u64(5), "ep1", "ack|dash.x|5|true|<nil>|ep1", 0},
		{u64(0), "ep1", "ack|dash.x|5|true|<nil>|ep1", 1},
		{u64(3), "", "ack|dash.x|5|false|<nil>|ep1", 0},    // no epoch: since could be of any stream
		{u64(3), "ep0", "ack|dash.x|5|false|<nil>|ep1", 0}, // another stream's
		{u64(6), "ep1", "ack|dash.x|5|false|<nil>|ep1", 0}, // ahead of the stream
		{nil, "ep1", "ack|dash.x|5|false|<nil>|ep1", 0},    // no since: nothing to recover
	} {
		c := newFake(uint64(10+i), seqCodec{})
		e.register(c)
		e.subscribeAt(c, "dash.x", tc.since, tc.epoch)
		ack, seqs := stream(t, c, "dash.x")
		if ack != tc.want {
			t.Fatalf("case %d: answer %q, want %q", i, ack, tc.want)
		}
		var want []uint64
		for s := tc.from; tc.from != 0 && s <= 5; s++ {
			want = append(want, s)
		}
		if fmt.Sprint(seqs) != fmt.Sprint(want) {
			t.Fatalf("case %d: replayed %v, want %v", i, seqs, want)
		}
	}
	// A topic without a stream yet: no epoch in the answer, and nothing recovered.
	c := newFake(99, seqCodec{})
	e.register(c)
	e.subscribeAt(c, "dash.new", u64(0), "")
	if ack, _ := stream(t, c, "dash.new"); ack != "ack|dash.new|0|false|<nil>|" {
		t.Fatalf("answer on a topic without a stream: %q", ack)
	}
}

// TestStreamRestartedSinceNotRecovered: the topic's stream starts again (Redis lost its data)
// and reaches past the client's since before the client comes back. By seq alone the client at
// 5 would be "recovered" with 6 and 7 although it missed the new 1..5; its epoch says otherwise.
func TestStreamRestartedSinceNotRecovered(t *testing.T) {
	e := newGapEnv(t, 100)
	e.publish("dash.x", 1, 5) // ep1 1..5
	e.bus.restart()
	for _, n := range []int{1, 6} { // the new stream at 1, then at 7
		e.publish("dash.x", 1+(n/6), n)
		c := newFake(uint64(n), seqCodec{})
		e.register(c)
		e.subscribeAt(c, "dash.x", u64(5), "ep1")
		latest := map[int]int{1: 1, 6: 7}[n]
		ack, seqs := stream(t, c, "dash.x")
		if want := fmt.Sprintf("ack|dash.x|%d|false|<nil>|ep2", latest); ack != want || len(seqs) != 0 {
			t.Fatalf("since 5 of ep1 with the new stream at %d: answer %q and %v, want %q and nothing", latest, ack, seqs, want)
		}
	}
}

// TestLiveMessageOfAnotherEpochClosesSubscribers: a live message of a new stream reaches
// subscribers of the old one: they are closed (1013), and coming back with since and epoch they
// are told recovered:false with the new epoch; from then on they follow the new stream.
func TestLiveMessageOfAnotherEpochClosesSubscribers(t *testing.T) {
	e := newGapEnv(t, 100)
	a := newFake(1, seqCodec{})
	e.register(a)
	e.subscribe(a, "dash.x", nil)
	e.publish("dash.x", 1, 5)
	expectRun(t, a, "dash.x", 1, 5)
	e.bus.restart() // the subscription stays up: FLUSHDB
	e.publish("dash.x", 1, 1)
	waitFor(t, 10*time.Second, "the subscriber to be closed", func() bool { n, _, _ := a.closed(); return n == 1 })
	if _, code, reason := a.closed(); code != hub.CloseMissedMessages || reason != "missed topic messages" {
		t.Fatalf("closed with %d %q", code, reason)
	}
	if _, seqs, epochs := streamEpochs(t, a, "dash.x"); fmt.Sprint(seqs) != "[1 2 3 4 5]" || epochs[4] != "ep1" {
		t.Fatalf("got %v %v, want ep1's 1..5 and nothing of ep2", seqs, epochs)
	}
	waitFor(t, 10*time.Second, "the closed subscriber to be dropped", func() bool { return e.hub.Active() == 0 })
	back := newFake(2, seqCodec{})
	e.register(back)
	e.subscribeAt(back, "dash.x", u64(5), "ep1")
	if ack, _ := stream(t, back, "dash.x"); ack != "ack|dash.x|1|false|<nil>|ep2" {
		t.Fatalf("answer %q, want latest 1 of ep2, not recovered", ack)
	}
	e.publish("dash.x", 2, 2)
	expectRun(t, back, "dash.x", 2, 3)
	if _, _, epochs := streamEpochs(t, back, "dash.x"); epochs[0] != "ep2" {
		t.Fatalf("epochs %v", epochs)
	}
}

// TestNewSubscriberOfRestartedStreamStays: the stream restarted while this node's bus was down;
// a subscriber that comes in then reads the new stream. The old stream's subscribers are closed,
// the new one stays and gets the new stream gap-free, also what the bus missed.
func TestNewSubscriberOfRestartedStreamStays(t *testing.T) {
	e := newGapEnv(t, 100)
	old := newFake(1, seqCodec{})
	e.register(old)
	e.subscribe(old, "dash.x", nil)
	e.publish("dash.x", 1, 3)
	expectRun(t, old, "dash.x", 1, 3)
	e.bus.setDown(true, false)
	e.bus.restart()
	e.publish("dash.x", 1, 2) // ep2 1..2, missed by the bus
	fresh := newFake(2, seqCodec{})
	e.register(fresh)
	e.subscribeAt(fresh, "dash.x", nil, "")
	if ack, _ := stream(t, fresh, "dash.x"); ack != "ack|dash.x|2|false|<nil>|ep2" {
		t.Fatalf("answer %q", ack)
	}
	waitFor(t, 10*time.Second, "the old subscriber to be closed", func() bool { n, _, _ := old.closed(); return n == 1 })
	e.publish("dash.x", 3, 1) // missed too
	e.bus.setDown(false, true)
	e.publish("dash.x", 4, 2)
	expectRun(t, fresh, "dash.x", 3, 5)
	if n, _, _ := fresh.closed(); n != 0 {
		t.Fatal("the subscriber of the new stream was closed")
	}
}

// TestSubscriberOffTheLiveStreamClosed: a subscriber whose answer saw a stream that the live
// messages do not continue (the bus dropped that stream's messages without reporting it) is
// closed rather than handed another stream's messages.
func TestSubscriberOffTheLiveStreamClosed(t *testing.T) {
	e := newGapEnv(t, 100)
	none, seen := newFake(1, seqCodec{}), newFake(2, seqCodec{})
	e.register(none, seen)
	e.subscribe(none, "dash.x", nil) // no stream yet
	e.bus.setDown(true, false)
	e.publish("dash.x", 1, 3) // ep1, never delivered
	e.subscribe(seen, "dash.x", nil)
	if ack, _ := stream(t, seen, "dash.x"); ack != "ack|dash.x|3|false|<nil>|ep1" {
		t.Fatalf("answer %q", ack)
	}
	e.bus.restart()
	e.bus.setDown(false, false)
	e.publish("dash.x", 1, 1) // ep2 1
	waitFor(t, 10*time.Second, "the subscriber of ep1 to be closed", func() bool { n, _, _ := seen.closed(); return n == 1 })
	if _, seqs := stream(t, seen, "dash.x"); len(seqs) != 0 {
		t.Fatalf("the subscriber of ep1 got %v", seqs)
	}
	if got := e.metric("ws_topic_gap_disconnects_total"); got != "1" {
		t.Fatalf("ws_topic_gap_disconnects_total = %q", got)
	}
}

// TestPendingCapClosesSlowSubscription: live messages held for a subscription whose history
// still loads are capped (Options.MaxPending): past it the connection is closed as a slow
// consumer, and the others get every message.
func TestPendingCapClosesSlowSubscription(t *testing.T) {
	const maxPending = 5
	e := newCappedEnv(t, maxPending, 0)
	settled, loading := newFake(1, seqCodec{}), newFake(2, seqCodec{})
	e.register(settled, loading)
	e.subscribe(settled, "dash.x", nil)
	gate := make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = gate })
	e.hub.Subscribe(&hub.SubscribeRequest{Conn: loading, Topic: "dash.x", Ack: answer("dash.x")})
	waitFor(t, 10*time.Second, "the load to start", func() bool { return e.bus.historyCalls() == 2 })
	e.publish("dash.x", 1, maxPending) // held: exactly the cap
	expectRun(t, settled, "dash.x", 1, maxPending)
	if n, _, _ := loading.closed(); n != 0 {
		t.Fatalf("closed with %d held, the cap is %d", maxPending, maxPending)
	}
	e.publish("dash.x", maxPending+1, 1) // one more than the cap
	waitFor(t, 10*time.Second, "the loading subscriber to be closed", func() bool { n, _, _ := loading.closed(); return n == 1 })
	if _, code, reason := loading.closed(); code != hub.CloseSlowConsumer || reason != "slow consumer" {
		t.Fatalf("closed with %d %q", code, reason)
	}
	waitFor(t, 10*time.Second, "the slow subscriber to be dropped", func() bool { return e.hub.Active() == 1 })
	if got := e.metric("ws_slow_consumer_disconnects_total"); got != "1" {
		t.Fatalf("ws_slow_consumer_disconnects_total = %q", got)
	}
	close(gate)
	e.publish("dash.x", maxPending+2, 1)
	expectRun(t, settled, "dash.x", 1, maxPending+2)
	if n := loading.count(); n != 0 {
		t.Fatalf("the closed subscriber was given %d frames", n)
	}
}

// TestHeldCapDuringFillClosesSubscribers: live messages a topic holds while it reads missed
// messages back are capped too (MaxPending): past it the topic's subscribers are closed with
// 1013 missed topic messages instead of the hub holding without bound.
func TestHeldCapDuringFillClosesSubscribers(t *testing.T) {
	const maxPending = 5
	e := newCappedEnv(t, maxPending, 0)
	a := newFake(1, seqCodec{})
	e.register(a)
	e.subscribe(a, "dash.x", nil)
	e.publish("dash.x", 1, 1)
	expectRun(t, a, "dash.x", 1, 1)
	gate := make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = gate })
	e.bus.setDown(true, false)
	e.publish("dash.x", 2, 2) // missed
	e.bus.setDown(false, false)
	e.publish("dash.x", 4, maxPending) // 4 reveals the gap and the fill waits: held up to the cap
	waitFor(t, 10*time.Second, "the fill to start", func() bool { return e.bus.historyCalls() == 2 })
	fence := newFake(2, seqCodec{})
	e.register(fence) // every message published before is in the hub when this one is
	if n, _, _ := a.closed(); n != 0 {
		t.Fatalf("closed with %d held, the cap is %d", maxPending, maxPending)
	}
	e.publish("dash.x", 4+maxPending, 1) // one more than the cap
	waitFor(t, 10*time.Second, "the subscriber to be closed", func() bool { n, _, _ := a.closed(); return n == 1 })
	if _, code, reason := a.closed(); code != hub.CloseMissedMessages || reason != "missed topic messages" {
		t.Fatalf("closed with %d %q", code, reason)
	}
	if _, seqs := stream(t, a, "dash.x"); fmt.Sprint(seqs) != "[1]" {
		t.Fatalf("got %v before being closed, want [1]", seqs)
	}
	if got := e.metric(`ws_topic_fills_total{result="lost"}`); got != "1" {
		t.Fatalf(`ws_topic_fills_total{result="lost"} = %q`, got)
	}
	close(gate)
}

// TestHistoryLoadsCapped: no more than MaxLoads SUBSCRIBE history loads run at once; the others
// wait (counted in ws_topic_history_loads_waiting) and run as slots free, in order, and every
// subscription is answered.
func TestHistoryLoadsCapped(t *testing.T) {
	const maxLoads, subs = 3, 12
	e := newCappedEnv(t, 0, maxLoads)
	e.publish("dash.x", 1, 4)
	gate := make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = gate })
	conns := fakes(subs, seqCodec{})
	e.register(conns...)
	for i, c := range conns {
		topic := fmt.Sprintf("dash.%d", i%2) // two topics; the cap is over all of them
		if i%2 == 0 {
			topic = "dash.x"
		}
		e.hub.Subscribe(&hub.SubscribeRequest{Conn: c, Topic: topic, Since: u64(1), Epoch: "ep1", Ack: answer(topic)})
	}
	// The hub hands the first loads to its loader goroutines, which start them when they are
	// scheduled: wait for both, then check that no more started.
	waitFor(t, 10*time.Second, "the loads to start and the rest to wait", func() bool {
		return e.metric("ws_topic_history_loads_waiting") == fmt.Sprint(subs-maxLoads) &&
			e.bus.historyCalls() >= maxLoads
	})
	if calls := e.bus.historyCalls(); calls != maxLoads {
		t.Fatalf("%d history loads started, the cap is %d", calls, maxLoads)
	}
	close(gate)
	for i, c := range conns {
		topic, want := "dash.1", "ack|dash.1|0|false|<nil>|"
		if i%2 == 0 {
			topic, want = "dash.x", "ack|dash.x|4|true|<nil>|ep1"
		}
		waitFor(t, 10*time.Second, "every answer", func() bool { return len(acks(c, topic)) == 1 })
		if got := acks(c, topic)[0]; got != want {
			t.Fatalf("conn %d: answer %q, want %q", c.id, got, want)
		}
	}
	e.bus.set(func(b *gapBus) {
		if b.maxRunning != maxLoads {
			t.Errorf("%d history loads ran at once, the cap is %d", b.maxRunning, maxLoads)
		}
	})
	if got := e.metric("ws_topic_history_loads_waiting"); got != "0" {
		t.Fatalf("ws_topic_history_loads_waiting = %q after every answer", got)
	}
}

// TestResubscribeWhileLoadingAnswersEach: a second SUBSCRIBE to a topic whose first answer still
// loads does not replace the first: each gets its answer, in order, with its own replay.
func TestResubscribeWhileLoadingAnswersEach(t *testing.T) {
	e := newGapEnv(t, 100)
	e.publish("dash.x", 1, 5)
	a := newFake(1, seqCodec{})
	e.register(a)
	gate := make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = gate })
	first, second := &tracked{}, &tracked{}
	e.hub.Subscribe(first.request(a, "dash.x", u64(3), "ep1"))
	e.hub.Subscribe(second.request(a, "dash.x", u64(1), "ep1"))
	waitFor(t, 10*time.Second, "the first load to start", func() bool { return e.bus.historyCalls() == 1 })
	e.publish("dash.x", 6, 1) // held for the first
	e.bus.set(func(b *gapBus) { b.gate = nil })
	close(gate)
	first.waitDone(t, 1)
	second.waitDone(t, 1)
	waitFor(t, 10*time.Second, "the second replay", func() bool { return a.count() == 2+3+5 })
	var got []string
	for _, f := range a.received() {
		got = append(got, strings.SplitN(string(f), "|", 3)[1])
	}
	// first: answer (latest 5), 4 5, the held 6; second: answer (latest 6), 2..6.
	if want := "[dash.x 4 5 6 dash.x 2 3 4 5 6]"; fmt.Sprint(got) != want {
		t.Fatalf("frames %v, want %s", got, want)
	}
	if fmt.Sprint(acks(a, "dash.x")) != "[ack|dash.x|5|true|<nil>|ep1 ack|dash.x|6|true|<nil>|ep1]" {
		t.Fatalf("answers %v", acks(a, "dash.x"))
	}
	e.publish("dash.x", 7, 1)
	waitFor(t, 10*time.Second, "the live message", func() bool { return a.count() == 11 })
}

// TestUnsubscribeWhileLoadingAnswers: UNSUBSCRIBE while SUBSCRIBEs of the topic still load
// answers them at once (ErrUnsubscribed); the late history read is dropped and frees its slot.
func TestUnsubscribeWhileLoadingAnswers(t *testing.T) {
	e := newCappedEnv(t, 0, 1)
	e.publish("dash.x", 1, 2)
	a, b := newFake(1, seqCodec{}), newFake(2, seqCodec{})
	e.register(a, b)
	gate := make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = gate })
	first, second := &tracked{}, &tracked{}
	e.hub.Subscribe(first.request(a, "dash.x", nil, ""))
	e.hub.Subscribe(second.request(a, "dash.x", u64(0), "ep1"))
	waitFor(t, 10*time.Second, "the load to start", func() bool { return e.bus.historyCalls() == 1 })
	e.hub.Unsubscribe(a.id, "dash.x")
	for _, r := range []*tracked{first, second} {
		if ans := r.waitDone(t, 1); ans.Err != hub.ErrUnsubscribed {
			t.Fatalf("answer %+v, want ErrUnsubscribed", ans)
		}
	}
	if got := acks(a, "dash.x"); len(got) != 2 || !strings.HasSuffix(got[1], "|false|"+hub.ErrUnsubscribed.Error()+"|") {
		t.Fatalf("answers %q", got)
	}
	// The one load slot is taken by the dropped read until it returns; then b's runs.
	other := &tracked{}
	e.hub.Subscribe(other.request(b, "dash.x", nil, ""))
	e.bus.set(func(b *gapBus) { b.gate = nil })
	close(gate)
	if ans := other.waitDone(t, 1); ans.Latest != 2 || ans.Err != nil {
		t.Fatalf("b's answer %+v", ans)
	}
	e.publish("dash.x", 3, 1)
	expectRun(t, b, "dash.x", 3, 3)
	if n := a.count(); n != 2 {
		t.Fatalf("a got %d frames after unsubscribing, want its 2 answers only", n)
	}
}

// TestEveryRequestFinishedOnce: Ack at most once and Done exactly once per request, whatever
// becomes of it.
func TestEveryRequestFinishedOnce(t *testing.T) {
	e := newCappedEnv(t, 0, 0)
	e.publish("dash.x", 1, 1)

	// The connection is not (or no longer) registered: no answer, Done all the same.
	gone := &tracked{}
	e.hub.Subscribe(gone.request(newFake(77, seqCodec{}), "dash.x", nil, ""))
	gone.waitDone(t, 0)

	// Plain success.
	a := newFake(1, seqCodec{})
	e.register(a)
	ok := &tracked{}
	e.hub.Subscribe(ok.request(a, "dash.x", nil, ""))
	if ans := ok.waitDone(t, 1); ans.Latest != 1 || ans.Epoch != "ep1" || ans.Err != nil {
		t.Fatalf("answer %+v", ans)
	}

	// The history fails: ErrHistory, and the subscription is not made.
	e.bus.set(func(b *gapBus) { b.failures = 1 })
	failed := &tracked{}
	e.hub.Subscribe(failed.request(a, "dash.y", nil, ""))
	if ans := failed.waitDone(t, 1); ans.Err != hub.ErrHistory {
		t.Fatalf("answer %+v, want ErrHistory", ans)
	}

	// The history read panics (a bug in the bus): the same as a failure, and the loaders go
	// on with the next read.
	e.bus.set(func(b *gapBus) { b.panics = 1 })
	panicked := &tracked{}
	e.hub.Subscribe(panicked.request(a, "dash.z", nil, ""))
	if ans := panicked.waitDone(t, 1); ans.Err != hub.ErrHistory {
		t.Fatalf("answer %+v, want ErrHistory", ans)
	}
	after := &tracked{}
	e.hub.Subscribe(after.request(a, "dash.z", nil, ""))
	if ans := after.waitDone(t, 1); ans.Err != nil {
		t.Fatalf("answer after the panic %+v", ans)
	}

	// Over the connection's topic cap.
	capped := newEnvWith(t, hub.Options{MaxTopicsPerConn: 1})
	c := newFake(1, seqCodec{})
	capped.register(c)
	one, two := &tracked{}, &tracked{}
	capped.hub.Subscribe(one.request(c, "t1", nil, ""))
	capped.hub.Subscribe(two.request(c, "t2", nil, ""))
	one.waitDone(t, 1)
	if ans := two.waitDone(t, 1); ans.Err != hub.ErrTooManyTopics {
		t.Fatalf("answer %+v, want ErrTooManyTopics", ans)
	}

	// The connection goes away while its history loads (and with a second SUBSCRIBE waiting):
	// no answers, Done for both.
	gate := make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = gate })
	b := newFake(2, seqCodec{})
	e.register(b)
	loading, waiting := &tracked{}, &tracked{}
	calls := e.bus.historyCalls()
	e.hub.Subscribe(loading.request(b, "dash.x", nil, ""))
	e.hub.Subscribe(waiting.request(b, "dash.x", u64(0), "ep1"))
	waitFor(t, 10*time.Second, "the load to start", func() bool { return e.bus.historyCalls() == calls+1 })
	e.hub.Unregister(b.id)
	loading.waitDone(t, 0)
	waiting.waitDone(t, 0)
	close(gate)
	if n := b.count(); n != 0 {
		t.Fatalf("the closed connection got %d frames", n)
	}
}

// TestNewStreamSubscriberKeepsWhatWasHeld: the topic is filling a gap of its old stream (live
// messages held) when the stream restarts and a new subscriber reads the new one. The old
// stream's subscriber is closed; the new one stays and gets the new stream's held messages,
// while the old stream's late ones are dropped.
func TestNewStreamSubscriberKeepsWhatWasHeld(t *testing.T) {
	e := newGapEnv(t, 100)
	old, fresh := newFake(1, seqCodec{}), newFake(2, seqCodec{})
	e.register(old, fresh)
	e.subscribe(old, "dash.x", nil)
	e.publish("dash.x", 1, 3) // ep1
	expectRun(t, old, "dash.x", 1, 3)
	fillGate := make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = fillGate })
	e.bus.setDown(true, false)
	e.publish("dash.x", 4, 1) // missed
	e.bus.setDown(false, false)
	e.publish("dash.x", 5, 1) // reveals the gap: the fill waits, 5 is held
	waitFor(t, 10*time.Second, "the fill to start", func() bool { return e.bus.historyCalls() == 2 })
	e.bus.set(func(b *gapBus) { b.gate = nil })
	e.bus.restart()
	e.bus.set(func(b *gapBus) { b.delayed = true }) // ep2's first two are still on their way...
	e.publish("dash.x", 1, 2)
	e.subscribeAt(fresh, "dash.x", nil, "") // ...when the new subscriber reads ep2 at 2
	if ack, _ := stream(t, fresh, "dash.x"); ack != "ack|dash.x|2|false|<nil>|ep2" {
		t.Fatalf("answer %q", ack)
	}
	waitFor(t, 10*time.Second, "the old stream's subscriber to be closed", func() bool { n, _, _ := old.closed(); return n == 1 })
	e.bus.release() // ep2 1..2 arrive: already covered
	e.publish("dash.x", 3, 2)
	close(fillGate) // the old fill's answer comes back: ignored
	expectRun(t, fresh, "dash.x", 3, 4)
	if n, _, _ := fresh.closed(); n != 0 {
		t.Fatal("the new stream's subscriber was closed")
	}
}

// TestOneHistoryReadServesEveryWaitingSubscription: the SUBSCRIBEs of a topic that wait while a
// read runs are served together by the next read, from the smallest since among them, each
// answered and replayed from its own since (the clients of a restarted node coming back at once
// cost a few reads, not one each).
func TestOneHistoryReadServesEveryWaitingSubscription(t *testing.T) {
	e := newCappedEnv(t, 0, 1)
	e.publish("dash.x", 1, 5)
	gate := make(chan struct{})
	e.bus.set(func(b *gapBus) { b.gate = gate })
	first := newFake(1, seqCodec{})
	e.register(first)
	e.hub.Subscribe(&hub.SubscribeRequest{Conn: first, Topic: "dash.x", Ack: answer("dash.x")})
	waitFor(t, 10*time.Second, "the first read to start", func() bool { return e.bus.historyCalls() == 1 })
	sinces := []*uint64{u64(1), u64(3), nil, u64(5), u64(2), nil}
	conns := fakes(len(sinces), seqCodec{})
	for i, c := range conns {
		c.id = uint64(10 + i)
	}
	e.register(conns...)
	for i, c := range conns {
		e.hub.Subscribe(&hub.SubscribeRequest{Conn: c, Topic: "dash.x", Since: sinces[i], Epoch: "ep1", Ack: answer("dash.x")})
	}
	waitFor(t, 10*time.Second, "the others to wait", func() bool {
		return e.metric("ws_topic_history_loads_waiting") == fmt.Sprint(len(sinces))
	})
	e.bus.set(func(b *gapBus) { b.gate = nil })
	close(gate)
	for i, c := range conns {
		want := []string{"dash.x"}
		ack := "ack|dash.x|5|false|<nil>|ep1"
		if sinces[i] != nil {
			ack = "ack|dash.x|5|true|<nil>|ep1"
			for s := *sinces[i] + 1; s <= 5; s++ {
				want = append(want, strconv.FormatUint(s, 10))
			}
		}
		waitFor(t, 10*time.Second, "every answer and replay", func() bool { return c.count() == len(want) })
		var got []string
		for _, f := range c.received() {
			got = append(got, strings.SplitN(string(f), "|", 3)[1])
		}
		if fmt.Sprint(got) != fmt.Sprint(want) || acks(c, "dash.x")[0] != ack {
			t.Fatalf("since %v: frames %v (answer %v), want %v (answer %s)", sinces[i], got, acks(c, "dash.x"), want, ack)
		}
	}
	if calls := e.bus.historyCalls(); calls != 2 {
		t.Fatalf("%d history reads for %d subscriptions, want 2 (one for the first, one for the rest)", calls, 1+len(sinces))
	}
	e.publish("dash.x", 6, 1)
	for _, c := range append(conns, first) {
		waitFor(t, 10*time.Second, "the live message", func() bool {
			r := c.received()
			return len(r) > 0 && strings.HasPrefix(string(r[len(r)-1]), "dash.x|6|")
		})
	}
}
