package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeTopic plays one topic with history by the contract (docs/protocol.md §1.4): SUBSCRIBE with
// since and epoch answers {topic, seq, epoch, recovered} and replays the kept messages after
// since; publish numbers messages and sends them to the live subscribers.
type fakeTopic struct {
	name string
	t    testing.TB

	mu       sync.Mutex
	epoch    string // "" plays a server that sends no epoch
	seq      uint64
	kept     map[uint64]json.RawMessage
	minKept  uint64
	subs     map[*fakeConn]bool
	requests []subReq // every SUBSCRIBE, in order
	// onSubscribe, when set, answers instead (return false to fall through to the default).
	onSubscribe func(fc *fakeConn, r fakeReq, d subReq) bool
}

func newFakeTopic(name, epoch string) *fakeTopic {
	return &fakeTopic{name: name, epoch: epoch, kept: map[uint64]json.RawMessage{}, minKept: 1, subs: map[*fakeConn]bool{}}
}

// serve makes ft answer SUBSCRIBE and UNSUBSCRIBE on s, and echo anything else.
func (ft *fakeTopic) serve(s *fakeServer) {
	ft.t = s.t
	s.set(func(s *fakeServer) {
		s.onRequest = func(fc *fakeConn, r fakeReq) {
			switch r.PkgID {
			case pkgSubscribe:
				ft.subscribe(fc, r)
			case pkgUnsubscribe:
				ft.mu.Lock()
				delete(ft.subs, fc)
				ft.mu.Unlock()
				fc.answer(r, 0, map[string]string{"topic": ft.name}, "")
			default:
				echo(fc, r)
			}
		}
	})
}

func (ft *fakeTopic) subscribe(fc *fakeConn, r fakeReq) {
	d := readSub(ft.t, r)
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.requests = append(ft.requests, d)
	if ft.onSubscribe != nil && ft.onSubscribe(fc, r, d) {
		return
	}
	epochOK := d.Epoch != nil && *d.Epoch == ft.epoch || ft.epoch == "" && d.Epoch == nil
	recovered := d.Since != nil && epochOK && *d.Since+1 >= ft.minKept && *d.Since <= ft.seq
	ans := map[string]any{"topic": ft.name, "seq": ft.seq, "recovered": recovered}
	if ft.epoch != "" {
		ans["epoch"] = ft.epoch
	}
	fc.answer(r, 0, ans, "")
	if recovered {
		for q := *d.Since + 1; q <= ft.seq; q++ {
			fc.send(frame{PkgID: 7, ReqID: zeroUUID, Data: ft.kept[q], Topic: ft.name, Seq: q, Epoch: ft.epoch})
		}
	}
	ft.subs[fc] = true
}

// publish adds n messages ({"n": seq}) and sends them to the open subscribers.
func (ft *fakeTopic) publish(n int) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	for range n {
		ft.seq++
		data, _ := json.Marshal(map[string]uint64{"n": ft.seq})
		ft.kept[ft.seq] = data
		for fc := range ft.subs {
			select {
			case <-fc.closed:
				delete(ft.subs, fc)
				continue
			default:
			}
			fc.send(frame{PkgID: 7, ReqID: zeroUUID, Data: data, Topic: ft.name, Seq: ft.seq, Epoch: ft.epoch})
		}
	}
}

func (ft *fakeTopic) subscribeRequests() []subReq {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return append([]subReq(nil), ft.requests...)
}

func (ft *fakeTopic) liveSubscribers() int {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	n := 0
	for fc := range ft.subs {
		select {
		case <-fc.closed:
		default:
			n++
		}
	}
	return n
}

// collector gathers what a subscription's callbacks get.
type collector struct {
	mu     sync.Mutex
	seqs   []uint64
	epochs []string
	missed []Missed
}

func (col *collector) onMessage(m Message) {
	col.mu.Lock()
	defer col.mu.Unlock()
	col.seqs = append(col.seqs, m.Seq)
	col.epochs = append(col.epochs, m.Epoch)
}

func (col *collector) onMissed(m Missed) {
	col.mu.Lock()
	defer col.mu.Unlock()
	col.missed = append(col.missed, m)
	col.seqs = append(col.seqs, 0) // a marker: where in the stream the event came
}

func (col *collector) got() ([]uint64, []Missed) {
	col.mu.Lock()
	defer col.mu.Unlock()
	return append([]uint64(nil), col.seqs...), append([]Missed(nil), col.missed...)
}

func (col *collector) waitLen(t testing.TB, n int) []uint64 {
	t.Helper()
	eventually(t, fmt.Sprintf("%d callbacks", n), func() bool {
		s, _ := col.got()
		return len(s) >= n
	})
	s, _ := col.got()
	return s
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for q := from; q <= to; q++ {
		out = append(out, q)
	}
	return out
}

func equalSeqs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// After a reconnect the client resubscribes with since and epoch; what the topic kept arrives
// once and in order; a duplicate of a message already delivered is dropped.
func TestSubscribeRecoversAfterReconnect(t *testing.T) {
	for _, format := range []Format{JSON, Protobuf} {
		t.Run(format.String(), func(t *testing.T) {
			s := newFakeServer(t)
			ft := newFakeTopic("dashboards.x", "e1")
			ft.publish(10) // before the subscription: not delivered
			ft.serve(s)
			cfg := testConfig(s)
			cfg.Format = format
			c := dialTest(t, cfg)
			var col collector
			sub, err := c.Subscribe(context.Background(), "dashboards.x", col.onMessage, OnMissed(col.onMissed))
			if err != nil {
				t.Fatal(err)
			}
			if p := sub.Position(); p != (Position{10, "e1"}) || sub.Recovered() {
				t.Fatalf("after SUBSCRIBE: %+v recovered=%v", p, sub.Recovered())
			}
			ft.publish(2) // 11, 12
			col.waitLen(t, 2)

			s.conn(0).closeWith(1001, "server shutting down")
			eventually(t, "the resubscribe", func() bool { return ft.liveSubscribers() == 1 && len(ft.subscribeRequests()) == 2 })
			ft.publish(3) // 13..15 live on the new connection
			seqs := col.waitLen(t, 5)
			if !equalSeqs(seqs, seqRange(11, 15)) {
				t.Fatalf("seqs %v", seqs)
			}
			r := ft.subscribeRequests()[1]
			if r.Since == nil || *r.Since != 12 || r.Epoch == nil || *r.Epoch != "e1" {
				t.Fatalf("resubscribe %+v", r)
			}
			if p := sub.Position(); p != (Position{15, "e1"}) || !sub.Recovered() {
				t.Fatalf("position %+v recovered=%v", p, sub.Recovered())
			}
			// Messages published while the client was away are replayed after the answer.
			release := s.hold()
			s.conn(1).closeWith(1013, "slow consumer")
			ft.publish(4) // 16..19: nobody live
			release()
			eventually(t, "the second resubscribe", func() bool { return ft.liveSubscribers() == 1 && len(ft.subscribeRequests()) == 3 })
			// A duplicate (an overlap of replay and live) is dropped.
			s.conn(2).send(frame{PkgID: 7, ReqID: zeroUUID, Data: []byte(`{}`), Topic: "dashboards.x", Seq: 19, Epoch: "e1"})
			ft.publish(1) // 20
			seqs = col.waitLen(t, 10)
			if !equalSeqs(seqs, seqRange(11, 20)) {
				t.Fatalf("seqs %v", seqs)
			}
			if _, missed := col.got(); len(missed) != 0 {
				t.Fatalf("missed %+v", missed)
			}
		})
	}
}

// recovered: false — history too short or another epoch — tells OnMissed, in order with the
// messages, and the subscription follows the new stream.
func TestSubscribeNotRecoveredTellsOnMissed(t *testing.T) {
	s := newFakeServer(t)
	ft := newFakeTopic("dashboards.x", "e1")
	ft.serve(s)
	c := dialTest(t, testConfig(s))
	var col collector
	sub, err := c.Subscribe(context.Background(), "dashboards.x", col.onMessage, OnMissed(col.onMissed))
	if err != nil {
		t.Fatal(err)
	}
	ft.publish(3)
	col.waitLen(t, 3)
	// The stream restarts (Redis lost its data) while the client is away.
	release := s.hold()
	s.conn(0).closeWith(1001, "")
	ft.mu.Lock()
	ft.epoch, ft.seq, ft.kept, ft.minKept = "e2", 0, map[uint64]json.RawMessage{}, 1
	ft.subs = map[*fakeConn]bool{}
	ft.mu.Unlock()
	ft.publish(5)
	release()
	eventually(t, "the resubscribe", func() bool { return ft.liveSubscribers() == 1 })
	ft.publish(1) // 6 of e2
	seqs := col.waitLen(t, 5)
	_, missed := col.got()
	if !equalSeqs(seqs, []uint64{1, 2, 3, 0, 6}) || len(missed) != 1 {
		t.Fatalf("seqs %v missed %+v", seqs, missed)
	}
	if m := missed[0]; m.From != (Position{3, "e1"}) || m.Now != (Position{5, "e2"}) || m.Topic != "dashboards.x" {
		t.Fatalf("missed %+v", m)
	}
	if p := sub.Position(); p != (Position{6, "e2"}) || sub.Recovered() {
		t.Fatalf("position %+v", p)
	}
	if st := c.Stats(); st.Missed != 1 || st.Connects != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// A server that sends no epoch: the client resubscribes with since alone, and an answer that
// says recovered although its stream is behind since (the sequence restarted) is taken as not
// recovered, rather than dropping every message up to the old position.
func TestSubscribeServerWithoutEpoch(t *testing.T) {
	s := newFakeServer(t)
	ft := newFakeTopic("t", "")
	ft.serve(s)
	c := dialTest(t, testConfig(s))
	var col collector
	if _, err := c.Subscribe(context.Background(), "t", col.onMessage, OnMissed(col.onMissed)); err != nil {
		t.Fatal(err)
	}
	ft.publish(5)
	col.waitLen(t, 5)
	s.conn(0).closeWith(1001, "")
	eventually(t, "the resubscribe", func() bool { return ft.liveSubscribers() == 1 && len(ft.subscribeRequests()) == 2 })
	if r := ft.subscribeRequests()[1]; r.Since == nil || *r.Since != 5 || r.Epoch != nil {
		t.Fatalf("resubscribe %+v (epoch must be left out when unknown)", r)
	}
	ft.publish(1)
	col.waitLen(t, 6)

	// The sequence restarts, and this server still answers recovered: true.
	ft.mu.Lock()
	ft.seq = 0
	ft.onSubscribe = func(fc *fakeConn, r fakeReq, d subReq) bool {
		fc.answer(r, 0, map[string]any{"topic": "t", "seq": ft.seq, "recovered": true}, "")
		ft.subs[fc] = true
		return true
	}
	ft.mu.Unlock()
	release := s.hold()
	s.conn(1).closeWith(1013, "missed topic messages")
	ft.publish(2) // 1, 2 of the new stream, nobody live
	release()
	eventually(t, "the resubscribe", func() bool { return ft.liveSubscribers() == 1 && len(ft.subscribeRequests()) == 3 })
	ft.publish(1) // 3
	seqs := col.waitLen(t, 8)
	_, missed := col.got()
	if !equalSeqs(seqs, []uint64{1, 2, 3, 4, 5, 6, 0, 3}) || len(missed) != 1 || missed[0].From.Seq != 6 || missed[0].Now.Seq != 2 {
		t.Fatalf("seqs %v missed %+v", seqs, missed)
	}
}

// A seq that skips ahead within a connection makes the client resubscribe from its position on
// that connection; the messages between arrive by the replay.
func TestSubscribeGapResubscribesOnTheConnection(t *testing.T) {
	s := newFakeServer(t)
	ft := newFakeTopic("t", "e1")
	ft.serve(s)
	c := dialTest(t, testConfig(s))
	var col collector
	if _, err := c.Subscribe(context.Background(), "t", col.onMessage); err != nil {
		t.Fatal(err)
	}
	ft.publish(2)
	col.waitLen(t, 2)
	// 3 and 4 are lost on the way to this connection; 5 arrives.
	ft.mu.Lock()
	for _, q := range []uint64{3, 4, 5} {
		ft.seq = q
		ft.kept[q], _ = json.Marshal(map[string]uint64{"n": q})
	}
	ft.mu.Unlock()
	s.conn(0).send(frame{PkgID: 7, ReqID: zeroUUID, Data: []byte(`{}`), Topic: "t", Seq: 5, Epoch: "e1"})
	eventually(t, "the resubscribe", func() bool { return len(ft.subscribeRequests()) == 2 })
	ft.publish(1)
	seqs := col.waitLen(t, 6)
	if !equalSeqs(seqs, seqRange(1, 6)) {
		t.Fatalf("seqs %v", seqs)
	}
	if r := ft.subscribeRequests()[1]; *r.Since != 2 || *r.Epoch != "e1" {
		t.Fatalf("resubscribe %+v", r)
	}
	if n := s.connCount(); n != 1 {
		t.Fatalf("%d connections", n)
	}
}

// A resubscribe refused for good (status 3: the refreshed token lost the role) ends the
// subscription; a passing refusal (status 1) is tried again on the same connection.
func TestResubscribeRefusals(t *testing.T) {
	s := newFakeServer(t)
	ft := newFakeTopic("t", "e1")
	ft.serve(s)
	c := dialTest(t, testConfig(s))
	var col collector
	denied, err := c.Subscribe(context.Background(), "t", col.onMessage)
	if err != nil {
		t.Fatal(err)
	}
	var rateLimited atomic.Int32
	ft.mu.Lock()
	ft.onSubscribe = func(fc *fakeConn, r fakeReq, d subReq) bool {
		if d.Topic == "t" {
			fc.answer(r, 3, map[string]any{"missing_roles": []string{"reader"}}, "Permission denied")
			return true
		}
		if rateLimited.Add(1) == 2 { // the first resubscribe of "u"
			fc.answer(r, 1, nil, "Rate limit exceeded")
			return true
		}
		return false
	}
	ft.mu.Unlock()
	other, err := c.Subscribe(context.Background(), "u", func(Message) {})
	if err != nil {
		t.Fatal(err)
	}
	s.conn(0).closeWith(1001, "")
	<-denied.Done()
	if !IsPermissionDenied(denied.Err()) {
		t.Fatalf("Err %v", denied.Err())
	}
	eventually(t, "u resubscribed after the rate limit", func() bool { return rateLimited.Load() >= 3 })
	select {
	case <-other.Done():
		t.Fatalf("u ended: %v", other.Err())
	default:
	}
	if n := s.connCount(); n != 2 {
		t.Fatalf("%d connections", n)
	}
	if _, err := c.Subscribe(context.Background(), "u", func(Message) {}); !errors.Is(err, ErrAlreadySubscribed) {
		t.Fatalf("second subscription: %v", err)
	}
}

func TestUnsubscribe(t *testing.T) {
	s := newFakeServer(t)
	ft := newFakeTopic("t", "e1")
	ft.serve(s)
	c := dialTest(t, testConfig(s))
	var col collector
	sub, err := c.Subscribe(context.Background(), "t", col.onMessage)
	if err != nil {
		t.Fatal(err)
	}
	ft.publish(1)
	col.waitLen(t, 1)
	if err := sub.Unsubscribe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(sub.Err(), ErrUnsubscribed) || ft.liveSubscribers() != 0 {
		t.Fatalf("Err %v, %d subscribers", sub.Err(), ft.liveSubscribers())
	}
	// Subscribing again works, and the old callback gets nothing more.
	var col2 collector
	if _, err := c.Subscribe(context.Background(), "t", col2.onMessage); err != nil {
		t.Fatal(err)
	}
	ft.publish(1)
	col2.waitLen(t, 1)
	if seqs, _ := col.got(); len(seqs) != 1 {
		t.Fatalf("old callback got %v", seqs)
	}
}

// Slow callbacks: the inbound queue fills; the client gives the connection up instead of
// blocking its read loop, waits for the callbacks to catch up, resubscribes from the last
// message it queued, and the callback still gets every message once, in order.
func TestInboundOverflowRecoversBySince(t *testing.T) {
	s := newFakeServer(t)
	ft := newFakeTopic("t", "e1")
	ft.serve(s)
	cfg := testConfig(s)
	cfg.InboundQueue = 4
	cfg.InboundWait = 20 * time.Millisecond
	c := dialTest(t, cfg)
	release := make(chan struct{})
	var col collector
	slow := func(m Message) {
		<-release
		col.onMessage(m)
	}
	if _, err := c.Subscribe(context.Background(), "t", slow); err != nil {
		t.Fatal(err)
	}
	ft.publish(20)
	eventually(t, "the overflow", func() bool { return c.Stats().Overflows == 1 })
	close(release)
	seqs := col.waitLen(t, 20)
	if !equalSeqs(seqs, seqRange(1, 20)) {
		t.Fatalf("seqs %v", seqs)
	}
	// How often the replay bursts overflow again depends on scheduling; each round moves on.
	if st := c.Stats(); st.Connects < 2 || st.Connects != st.Overflows+1 || st.Missed != 0 {
		t.Fatalf("stats %+v", st)
	}
	reqs := ft.subscribeRequests()
	if len(reqs) < 2 || reqs[1].Since == nil || *reqs[1].Since < 4 {
		t.Fatalf("resubscribe %+v", reqs)
	}
}

// Answers are handled on the read goroutine even while a callback blocks.
func TestAnswersDoNotWaitForCallbacks(t *testing.T) {
	s := newFakeServer(t)
	ft := newFakeTopic("t", "e1")
	ft.serve(s)
	c := dialTest(t, testConfig(s))
	release := make(chan struct{})
	defer close(release)
	if _, err := c.Subscribe(context.Background(), "t", func(Message) { <-release }); err != nil {
		t.Fatal(err)
	}
	ft.publish(2)
	if _, err := c.Request(context.Background(), 1, nil, WithTimeout(5*time.Second)); err != nil {
		t.Fatal(err)
	}
}
