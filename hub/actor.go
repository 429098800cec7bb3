package hub

import (
	"container/list"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"
)

// member is one registered connection and its subscriptions.
type member struct {
	conn   Conn
	topics subs // nil until the first subscription
}

// subs are a connection's subscriptions by topic name: a slice searched in order rather than a
// map, because almost every connection holds one to a few topics, and a map of one entry costs
// about 250 bytes per idle connection against 24 (and a lookup per delivery costs more than
// comparing a few names). MaxTopicsPerConn bounds the search.
type subs []topicSub

type topicSub struct {
	name string
	s    *sub
}

// get returns the subscription to name, or nil.
func (ss subs) get(name string) *sub {
	for i := range ss {
		if ss[i].name == name {
			return ss[i].s
		}
	}
	return nil
}

// set adds the subscription s to name (which ss does not hold).
func (ss *subs) set(name string, s *sub) { *ss = append(*ss, topicSub{name: name, s: s}) }

// del removes the subscription to name, if any, keeping the order of the others.
func (ss *subs) del(name string) {
	for i := range *ss {
		if (*ss)[i].name == name {
			*ss = slices.Delete(*ss, i, i+1)
			if len(*ss) == 0 {
				*ss = nil
			}
			return
		}
	}
}

// sub is one subscription. While its history loads, live messages of the topic are held in
// pending, so the answer, the history and the live messages leave in that order with no gap
// and no duplicate (messages the loaded history already covers are dropped from pending).
//
// The two flags come last, side by side: 96 bytes a subscription instead of 112.
type sub struct {
	gen uint64 // the load this subscription waits for; answers of older loads are ignored
	// req is the SUBSCRIBE being answered while loading; waiting are the later SUBSCRIBEs of the
	// same topic on this connection, re-run in turn once req is answered. Each holds one of the
	// connection's in-flight slots until answered, so the transport's in-flight cap bounds them.
	req     *SubscribeRequest
	waiting []*SubscribeRequest
	pending []*Message
	// epoch and pos are, on a topic with history, where this subscriber stands in the topic's
	// stream: the last sequence it was given or that its answer covered (replayed, or older than
	// the subscription), in stream epoch ("" and 0: no stream yet). A message of that stream at
	// or below pos is a duplicate for this subscriber (still on its way through the bus when the
	// history was read, or already filled in from the history) and is skipped.
	epoch   string
	pos     uint64
	loading bool
	// queued: the subscription waits in its topic's queue of loads (topic.loadq) for a read.
	queued bool
}

// step is how a message of a stream relates to a subscriber's position in it.
type step int

const (
	stepDup   step = iota // already given, or covered by its answer
	stepNext              // the very next message
	stepOther             // further on (a gap), or another stream: delivering it would leave a hole
)

// follows tells how msg relates to s's position.
func (s *sub) follows(msg *Message) step {
	switch {
	case msg.Epoch == s.epoch && msg.Seq <= s.pos:
		return stepDup
	case msg.Epoch == s.epoch && msg.Seq == s.pos+1:
		return stepNext
	case s.epoch == "" && s.pos == 0 && msg.Seq == 1:
		return stepNext // the topic's first stream begins
	}
	return stepOther
}

// topic is the set of members subscribed to one topic, with a snapshot for delivery.
//
// On a topic with history (tracked), the hub also watches the sequence numbers coming off the
// bus, so that a subscriber never gets a hole: the bus loses what is published while this node's
// subscription is down (Redis pub/sub keeps nothing for an absent subscriber). See gap.go.
type topic struct {
	members map[uint64]*member
	snap    []*member
	dirty   bool

	tracked bool // the topic keeps history and there is a bus to read it from
	// known: epoch and seq are meaningful. epoch is the stream the settled subscribers follow
	// (see gap.go for "" with seq 0, the only state in which some may already stand in a stream
	// the others have not seen yet), and seq a lower bound of their pos, so a live message seq+1
	// of epoch leaves no settled subscriber with a gap, and one above it might.
	known bool
	epoch string
	seq   uint64
	// live is the sequence of the last message of epoch that came live off the bus (0: none
	// yet). The bus delivers a stream in increasing order, so one at or below it means the
	// counter went back.
	live uint64
	// prev is the stream the topic left for the one a new subscriber read (gap.go, settled); its
	// late messages are dropped.
	prev string
	// While filling, the missed messages after fillSince are being read from the history; live
	// messages wait in held. again asks for another fill when this one is done (the bus
	// resubscribed meanwhile, or a subscriber settled below fillSince).
	filling   bool
	again     bool
	fillID    uint64
	fillSince uint64
	held      []*Message

	// loadq are the subscriptions whose history load waits for a read (entries whose sub is no
	// longer queued are skipped), and inLoads the topic's place in hubActor.loads, nil when none
	// waits. One read serves every subscription queued when it starts.
	loadq   []queuedLoad
	inLoads *list.Element
}

type queuedLoad struct {
	mem *member
	s   *sub
}

func (t *topic) snapshot() []*member {
	if t.dirty {
		t.snap = rebuild(t.snap, t.members)
		t.dirty = false
	}
	return t.snap
}

// rebuild refills snap from members, reusing its array; the tail past the new length is
// cleared so members that left are not kept alive by it.
func rebuild(snap []*member, members map[uint64]*member) []*member {
	old := len(snap)
	snap = snap[:0]
	for _, m := range members {
		snap = append(snap, m)
	}
	if len(snap) < old {
		clear(snap[len(snap):old])
	}
	// Let a snapshot that shrank a lot go, rather than keep its largest array forever.
	if cap(snap) > 1024 && len(snap) < cap(snap)/4 {
		snap = append([]*member(nil), snap...)
	}
	return snap
}

// hubActor owns the registry and the subscriptions. Deliveries iterate over snapshot slices
// that are rebuilt only after a change, so a steady stream of broadcasts allocates nothing per
// target.
type hubActor struct {
	hub    *Hub
	conns  map[uint64]*member
	snap   []*member
	dirty  bool
	topics map[string]*topic

	log                  *slog.Logger
	total, dropped, slow *metrics.Counter
	dur                  *metrics.PrometheusHistogram
	// fills: history fills that completed (filledOK) or could not (fillLost); gapClosed:
	// connections closed because their subscription missed messages for good.
	filledOK, fillLost, gapClosed *metrics.Counter

	ids uint64 // source of subscription load generations and fill ids

	// loads is the queue of topics with subscriptions waiting for a history read (names),
	// oldest first; running is how many reads run. A read takes every subscription its topic has
	// queued (topic.loadq), so N clients that subscribe to one topic at once, after a restart say,
	// cost a few reads instead of N. A subscription is queued at most once; one that is dropped
	// leaves its entry behind until its topic's next read skips it, so a topic's queue holds at
	// most one entry per subscription request — which the transport's in-flight cap and
	// MaxTopicsPerConn bound. waiting counts the subscriptions queued, for the gauge.
	loads   *list.List
	running int
	waiting int
	// read holds the reads done on the actor itself (a Bus with ImmediateHistory) until
	// startLoads settles them; settling is set while it does, so that a load a settlement
	// starts is read by the nested startLoads and settled by the outer one, in order.
	read     []*historyLoaded
	settling bool
}

// loadRef is one subscription served by a history read: its connection, the load it waits for
// and its since.
type loadRef struct {
	id, gen, since uint64
}

func (a *hubActor) nextID() uint64 {
	a.ids++
	return a.ids
}

func (a *hubActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started, *actor.Stopping, *actor.Stopped, *actor.Restarting:
	case *register:
		a.conns[m.conn.ID()] = &member{conn: m.conn}
		a.changed()
	case *unregister:
		if mem, ok := a.conns[m.id]; ok {
			a.remove(mem)
		}
	case *deliver:
		a.deliver(m.msg, !m.uncounted)
	case *subscribe:
		a.subscribe(m.req)
	case *unsubscribe:
		a.unsubscribe(m.id, m.topic)
	case *historyLoaded:
		a.historyLoaded(m)
	case *resync:
		a.resync()
	case *filled:
		a.filled(m)
	case *pingAll:
		for _, mem := range a.snapshot() {
			if mem.conn.ID()%m.of == m.slice {
				mem.conn.Ping()
			}
		}
	case *closeAll:
		n := len(a.conns)
		for _, mem := range a.snapshot() {
			mem.conn.Close(m.code, m.reason)
		}
		clear(a.conns)
		clear(a.topics)
		a.changed()
		ctx.Respond(&closedAll{count: n})
	default:
		a.log.Warn("hub: unexpected message", "type", fmt.Sprintf("%T", m))
	}
}

func (a *hubActor) changed() {
	a.dirty = true
	a.hub.active.Store(int64(len(a.conns)))
}

func (a *hubActor) snapshot() []*member {
	if a.dirty {
		a.snap = rebuild(a.snap, a.conns)
		a.dirty = false
	}
	return a.snap
}

// remove forgets a connection and its subscriptions. The SUBSCRIBEs it had waiting get no
// answer (the connection is gone), only their Done.
func (a *hubActor) remove(mem *member) {
	delete(a.conns, mem.conn.ID())
	a.changed()
	for len(mem.topics) > 0 {
		s := a.dropSub(mem, mem.topics[0].name)
		if s == nil {
			continue
		}
		if s.loading {
			s.req.finish()
		}
		for _, w := range s.waiting {
			w.finish()
		}
	}
}

// unsubscribe removes a subscription; the SUBSCRIBEs of that topic still waiting for their
// answer are answered ErrUnsubscribed.
func (a *hubActor) unsubscribe(id uint64, name string) {
	mem, ok := a.conns[id]
	if !ok {
		return
	}
	s := a.dropSub(mem, name)
	if s == nil {
		return
	}
	if s.loading {
		a.answer(mem, s.req, Answer{Err: ErrUnsubscribed})
	}
	for _, w := range s.waiting {
		a.answer(mem, w, Answer{Err: ErrUnsubscribed})
	}
}

// dropSub removes mem's subscription to name and returns it (nil if there was none); its
// requests are the caller's to answer.
func (a *hubActor) dropSub(mem *member, name string) *sub {
	s := mem.topics.get(name)
	if s == nil {
		return nil
	}
	mem.topics.del(name)
	if s.queued {
		s.queued = false
		a.waiting--
		a.hub.loadsWaiting.Store(int64(a.waiting))
	}
	if t := a.topics[name]; t != nil {
		delete(t.members, mem.conn.ID())
		t.dirty = true
		if len(t.members) == 0 {
			if t.inLoads != nil {
				a.loads.Remove(t.inLoads)
			}
			delete(a.topics, name)
		}
	}
	return s
}

// answer queues the answer to req on mem, unless mem is gone, and calls req's Done.
func (a *hubActor) answer(mem *member, req *SubscribeRequest, ans Answer) bool {
	ok := a.ack(mem, req, ans)
	req.finish()
	return ok
}

// ack queues req's answer on mem's connection (unless it has gone) and tells whether it was
// queued; the caller calls req.finish once what follows the answer is queued too.
func (a *hubActor) ack(mem *member, req *SubscribeRequest, ans Answer) bool {
	if a.conns[mem.conn.ID()] != mem {
		return false
	}
	if f := req.Ack(ans); f != nil {
		return a.enqueue(mem, f)
	}
	return false
}

// enqueue queues a frame on mem; a refusal (over budget or closing) removes the member, which
// closes itself.
func (a *hubActor) enqueue(mem *member, frame []byte) bool {
	if mem.conn.Enqueue(frame) {
		return true
	}
	if _, ok := a.conns[mem.conn.ID()]; ok {
		a.remove(mem)
	}
	return false
}

// deliver sends msg to every connection (no topic) or to the topic's subscribers, encoding it
// once per codec. A message with a sequence on a topic with history passes the topic's gap check
// first (deliverSeq). counted says whether it goes into the broadcast metrics.
func (a *hubActor) deliver(msg *Message, counted bool) {
	start := time.Now()
	if counted {
		a.total.Inc()
	}
	if msg.Topic == "" {
		enc := encoder{a: a, msg: msg}
		for _, mem := range a.snapshot() {
			if f := enc.frame(mem.conn.Codec()); f != nil {
				a.enqueue(mem, f)
			}
		}
		if counted {
			a.dur.UpdateDuration(start)
		}
		return
	}
	t := a.topics[msg.Topic]
	if t == nil {
		return
	}
	if t.tracked && msg.Seq != 0 {
		a.deliverSeq(msg.Topic, t, msg)
	} else {
		a.fanOut(t, msg)
	}
	if counted {
		a.dur.UpdateDuration(start)
	}
}

// fanOut hands msg to the topic's subscribers: held for those whose history still loads,
// skipped by those that already have it (a sequence at or below their pos), queued for the
// others. On a topic with history the topic's own checks (deliverSeq, filled) let through only
// what follows every settled subscriber's position; a subscriber for which msg would still leave
// a hole is closed rather than given it (gap.go).
func (a *hubActor) fanOut(t *topic, msg *Message) {
	enc := encoder{a: a, msg: msg}
	seq := t.tracked && msg.Seq != 0
	for _, mem := range t.snapshot() {
		s := mem.topics.get(msg.Topic)
		if s == nil {
			continue // removed during this delivery
		}
		if s.loading {
			if len(s.pending) >= a.hub.opts.MaxPending {
				a.slow.Inc()
				mem.conn.Close(CloseSlowConsumer, "slow consumer")
				a.remove(mem)
				continue
			}
			s.pending = append(s.pending, msg)
			continue
		}
		if seq {
			switch s.follows(msg) {
			case stepDup:
				continue
			case stepOther:
				a.closeMissed(mem)
				continue
			}
			s.epoch, s.pos = msg.Epoch, msg.Seq
		}
		if f := enc.frame(mem.conn.Codec()); f != nil {
			a.enqueue(mem, f)
		}
	}
}

// encoder caches one frame per codec for one message: almost always one or two codecs, so a
// linear scan beats a map.
type encoder struct {
	a      *hubActor
	msg    *Message
	codecs [2]Codec
	frames [2][]byte
	extra  map[Codec][]byte
}

func (e *encoder) frame(c Codec) []byte {
	for i := range e.codecs {
		if e.codecs[i] == c {
			return e.frames[i]
		}
		if e.codecs[i] == nil {
			e.codecs[i] = c
			e.frames[i] = e.a.encode(c, e.msg)
			return e.frames[i]
		}
	}
	if e.extra == nil {
		e.extra = make(map[Codec][]byte)
	}
	f, ok := e.extra[c]
	if !ok {
		f = e.a.encode(c, e.msg)
		e.extra[c] = f
	}
	return f
}

func (a *hubActor) encode(c Codec, msg *Message) []byte {
	f, err := c.EncodeBroadcast(msg)
	if err != nil {
		a.dropped.Inc()
		a.log.Error("hub: encode broadcast", "pkg_id", msg.PkgID, "err", err)
		return nil
	}
	return f
}

func (a *hubActor) subscribe(req *SubscribeRequest) {
	mem, ok := a.conns[req.Conn.ID()]
	if !ok {
		req.finish() // the connection closed meanwhile
		return
	}
	s := mem.topics.get(req.Topic)
	again := s != nil
	if again && s.loading {
		// Answered in turn: the answers and their replays must not interleave.
		s.waiting = append(s.waiting, req)
		return
	}
	if !again && len(mem.topics) >= a.hub.opts.MaxTopicsPerConn {
		a.answer(mem, req, Answer{Err: ErrTooManyTopics})
		return
	}
	t := a.topics[req.Topic]
	if !again {
		s = &sub{}
		mem.topics.set(req.Topic, s)
		if t == nil {
			t = &topic{
				members: make(map[uint64]*member),
				tracked: a.hub.opts.Bus != nil && a.hub.opts.History(req.Topic) > 0,
			}
			a.topics[req.Topic] = t
		}
		t.members[mem.conn.ID()] = mem
		t.dirty = true
	}
	s.loading, s.req, s.pending = true, req, nil
	if !t.tracked {
		a.settle(req.Topic, mem, s, Window{}) // nothing kept, nothing recovered
		return
	}
	a.load(mem, req.Topic, s)
}

// load (re)starts the history load of a subscription: it joins its topic's queue of loads
// (unless it is there already) and is served by the topic's next read. The answer of an earlier
// load, if one is still on its way, is ignored.
func (a *hubActor) load(mem *member, name string, s *sub) {
	s.gen = a.nextID()
	if !s.queued {
		s.queued = true
		a.waiting++
		t := a.topics[name]
		t.loadq = append(t.loadq, queuedLoad{mem: mem, s: s})
		if t.inLoads == nil {
			t.inLoads = a.loads.PushBack(name)
		}
	}
	a.startLoads()
}

// startLoads starts a read for the oldest topic with queued loads while fewer than MaxLoads
// run. Each read takes every subscription the topic has queued, reads History off the actor
// once, from the smallest since among them, and answers with historyLoaded, which frees its slot.
func (a *hubActor) startLoads() {
	for a.running < a.hub.opts.MaxLoads && a.loads.Len() > 0 {
		name := a.loads.Remove(a.loads.Front()).(string)
		t := a.topics[name]
		if t == nil {
			continue
		}
		t.inLoads = nil
		refs := make([]loadRef, 0, len(t.loadq))
		from := uint64(math.MaxUint64) // only the latest sequence is wanted
		for i, q := range t.loadq {
			t.loadq[i] = queuedLoad{}
			if !q.s.queued || a.conns[q.mem.conn.ID()] != q.mem || q.mem.topics.get(name) != q.s || !q.s.loading {
				continue
			}
			q.s.queued = false
			a.waiting--
			since := uint64(math.MaxUint64)
			if q.s.req.Since != nil {
				since = *q.s.req.Since
			}
			from = min(from, since)
			refs = append(refs, loadRef{id: q.mem.conn.ID(), gen: q.s.gen, since: since})
		}
		t.loadq = t.loadq[:0]
		if cap(t.loadq) > 1024 {
			t.loadq = nil // a burst of subscriptions is over; do not keep its array
		}
		if len(refs) == 0 {
			continue
		}
		if a.hub.immediate {
			w, err := a.hub.history(name, from)
			a.read = append(a.read, &historyLoaded{topic: name, refs: refs, w: w, err: err})
			continue
		}
		a.running++
		a.hub.loadHistory(name, from, refs)
	}
	a.hub.loadsWaiting.Store(int64(a.waiting))
	if a.settling {
		return
	}
	a.settling = true
	for i := 0; i < len(a.read); i++ {
		h := a.read[i]
		a.read[i] = nil
		a.settleLoad(h)
	}
	a.read = a.read[:0]
	a.settling = false
}

// windowAfter is what a read of the history after since would have returned, taken from w, a
// read after from <= since of the same moment.
func windowAfter(w Window, since uint64) Window {
	i := 0
	for i < len(w.Msgs) && w.Msgs[i].Seq <= since {
		i++
	}
	out := Window{Epoch: w.Epoch, Latest: w.Latest, Msgs: w.Msgs[i:]}
	if len(out.Msgs) == 0 {
		out.Msgs = nil
	}
	out.Complete = since <= w.Latest && uint64(len(out.Msgs)) == w.Latest-since
	for k, m := range out.Msgs {
		if m.Seq != since+1+uint64(k) {
			out.Complete = false
			break
		}
	}
	return out
}

func (a *hubActor) historyLoaded(h *historyLoaded) {
	a.running--
	defer a.startLoads()
	a.settleLoad(h)
}

// settleLoad answers the subscriptions a history read served (those still waiting for it).
func (a *hubActor) settleLoad(h *historyLoaded) {
	for _, r := range h.refs {
		mem, ok := a.conns[r.id]
		if !ok {
			continue
		}
		s := mem.topics.get(h.topic)
		if s == nil || !s.loading || s.gen != r.gen {
			continue // dropped, or loading again (a later read serves it)
		}
		if h.err != nil {
			// Debug only: every SUBSCRIBE fails this way while Redis is down, and the bus already
			// counts (redis_errors_total) and warns, at most every 10 s.
			a.log.Debug("hub: topic history unavailable", "topic", h.topic, "err", h.err)
			a.dropSub(mem, h.topic)
			a.answer(mem, s.req, Answer{Err: ErrHistory})
			for _, w := range s.waiting {
				a.subscribe(w) // each is a request of its own: it may well succeed
			}
			continue
		}
		a.settle(h.topic, mem, s, windowAfter(h.w, r.since))
	}
}

// settle finishes a subscription: the answer, then the recovered messages, then the live
// messages held meanwhile that are newer than what the answer covered (older ones were in the
// history, or predate the subscription). On a topic with history the held messages must follow
// the answer's position without a gap; one that skips some (the bus lost them while the history
// loaded) or belongs to another stream stops there, and the topic reads the rest from the
// history (gap.go). Then the next SUBSCRIBE waiting on this topic, if any, runs.
func (a *hubActor) settle(name string, mem *member, s *sub, w Window) {
	req := s.req
	queued := a.settleQueue(name, mem, s, w)
	// Done comes after the recovered and held messages: the connection answers its next request
	// only then, so nothing lands between this answer and its replay.
	req.finish()
	if queued {
		a.next(name, mem, s)
	}
}

// settleQueue is settle's part on the connection: the answer, the recovered messages, then the
// held ones. It tells whether all of them were queued (false: the connection is gone or
// closing).
func (a *hubActor) settleQueue(name string, mem *member, s *sub, w Window) bool {
	req := s.req
	// recovered: the client named a position in the topic's current stream, and every message
	// after it is still kept. A since without an epoch, or of another epoch (the stream
	// restarted since), is never taken for the current stream's: that would hide a hole.
	recovered := req.Since != nil && req.Epoch != "" && req.Epoch == w.Epoch && w.Complete
	pending := s.pending
	s.loading, s.req, s.pending = false, nil, nil
	s.epoch, s.pos = w.Epoch, w.Latest
	if !a.ack(mem, req, Answer{Latest: w.Latest, Epoch: w.Epoch, Recovered: recovered}) {
		return false
	}
	if recovered {
		for _, msg := range w.Msgs {
			if !a.enqueueOne(mem, msg) {
				return false
			}
		}
	}
	t := a.topics[name]
	tracked := t != nil && t.tracked
	gap := false
	for _, msg := range pending {
		if tracked && msg.Seq != 0 {
			st := s.follows(msg)
			if st == stepDup {
				continue
			}
			if st == stepOther {
				gap = true
				break
			}
			s.epoch, s.pos = msg.Epoch, msg.Seq
		}
		if !a.enqueueOne(mem, msg) {
			return false
		}
	}
	if tracked {
		a.settled(name, t, s, gap)
	}
	return true
}

// next runs the SUBSCRIBE that waited for s's answer, if any and if s is still there.
func (a *hubActor) next(name string, mem *member, s *sub) {
	if a.conns[mem.conn.ID()] != mem || mem.topics.get(name) != s || s.loading || len(s.waiting) == 0 {
		return
	}
	req := s.waiting[0]
	s.waiting[0] = nil
	s.waiting = s.waiting[1:]
	if len(s.waiting) == 0 {
		s.waiting = nil
	}
	a.subscribe(req)
}

// enqueueOne encodes msg for mem alone (history and held messages are per subscriber).
func (a *hubActor) enqueueOne(mem *member, msg *Message) bool {
	f := a.encode(mem.conn.Codec(), msg)
	return f == nil || a.enqueue(mem, f)
}
