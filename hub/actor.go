package hub

import (
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"
)

// member is one registered connection and its subscriptions.
type member struct {
	conn   Conn
	topics map[string]*sub // nil until the first subscription
}

// sub is one subscription. While its history loads, live messages of the topic are held in
// pending, so the answer, the history and the live messages leave in that order with no gap
// and no duplicate (messages at or below the loaded sequence are dropped from pending).
type sub struct {
	loading bool
	gen     uint64 // the load this subscription waits for; answers of older loads are ignored
	since   *uint64
	ack     func(latest uint64, recovered bool, err error) []byte
	settled func() // SubscribeRequest.Settled of the subscription being answered
	pending []*Message
	// pos is, on a topic with history, the last sequence this subscriber was given or that its
	// answer covered (replayed, or older than the subscription). A message at or below it is a
	// duplicate for this subscriber (still on its way through the bus when the history was read,
	// or already filled in from the history) and is skipped.
	pos uint64
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
	// known: seq is meaningful. seq is a lower bound of the pos of every settled subscriber, so
	// a live message seq+1 leaves no settled subscriber with a gap, and one above it might.
	known bool
	seq   uint64
	// live is the sequence of the last message that came live off the bus (0: none yet). The bus
	// delivers a topic in increasing order, so one at or below it means the counter restarted.
	live uint64
	// While filling, the missed messages after fillSince are being read from the history; live
	// messages wait in held. again asks for another fill when this one is done (the bus
	// resubscribed meanwhile, or a subscriber settled below fillSince).
	filling   bool
	again     bool
	fillID    uint64
	fillSince uint64
	held      []*Message
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
		a.deliver(m.msg)
	case *subscribe:
		a.subscribe(m.req)
	case *unsubscribe:
		if mem, ok := a.conns[m.id]; ok {
			a.dropSub(mem, m.topic)
		}
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

// remove forgets a connection and its subscriptions.
func (a *hubActor) remove(mem *member) {
	for name := range mem.topics {
		a.dropSub(mem, name)
	}
	delete(a.conns, mem.conn.ID())
	a.changed()
}

func (a *hubActor) dropSub(mem *member, name string) {
	s, ok := mem.topics[name]
	if !ok {
		return
	}
	if s.loading {
		callSettled(s.settled) // it ends unanswered
	}
	delete(mem.topics, name)
	if t := a.topics[name]; t != nil {
		delete(t.members, mem.conn.ID())
		t.dirty = true
		if len(t.members) == 0 {
			delete(a.topics, name)
		}
	}
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
// first (deliverSeq).
func (a *hubActor) deliver(msg *Message) {
	start := time.Now()
	a.total.Inc()
	if msg.Topic == "" {
		enc := encoder{a: a, msg: msg}
		for _, mem := range a.snapshot() {
			if f := enc.frame(mem.conn.Codec()); f != nil {
				a.enqueue(mem, f)
			}
		}
		a.dur.UpdateDuration(start)
		return
	}
	t := a.topics[msg.Topic]
	if t == nil {
		return
	}
	if t.tracked && msg.Seq != 0 {
		a.deliverSeq(msg.Topic, t, msg, false)
	} else {
		a.fanOut(t, msg)
	}
	a.dur.UpdateDuration(start)
}

// fanOut hands msg to the topic's subscribers: held for those whose history still loads,
// skipped by those that already have it (a sequence at or below their pos), queued for the
// others.
func (a *hubActor) fanOut(t *topic, msg *Message) {
	enc := encoder{a: a, msg: msg}
	seq := t.tracked && msg.Seq != 0
	for _, mem := range t.snapshot() {
		s := mem.topics[msg.Topic]
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
			if msg.Seq <= s.pos {
				continue
			}
			s.pos = msg.Seq
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
		callSettled(req.Settled) // the connection closed meanwhile
		return
	}
	s, again := mem.topics[req.Topic]
	if !again && len(mem.topics) >= a.hub.opts.MaxTopicsPerConn {
		a.enqueue(mem, req.Ack(0, false, ErrTooManyTopics))
		callSettled(req.Settled)
		return
	}
	t := a.topics[req.Topic]
	if !again {
		s = &sub{}
		if mem.topics == nil {
			mem.topics = make(map[string]*sub)
		}
		mem.topics[req.Topic] = s
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
	if s.loading {
		callSettled(s.settled) // replaced before it settled: its answer never comes
	}
	s.loading, s.since, s.ack, s.settled, s.pending = true, req.Since, req.Ack, req.Settled, nil
	if !t.tracked {
		a.settle(req.Topic, mem, s, nil, 0, false) // nothing kept, nothing recovered
		return
	}
	a.load(mem, req.Topic, s)
}

// load (re)starts the history load of a subscription; the answer of an earlier load, if one is
// still on its way, is ignored.
func (a *hubActor) load(mem *member, name string, s *sub) {
	s.gen = a.nextID()
	since := uint64(math.MaxUint64) // only the latest sequence is wanted
	if s.since != nil {
		since = *s.since
	}
	a.hub.loadHistory(mem.conn.ID(), name, since, s.gen)
}

func (a *hubActor) historyLoaded(h *historyLoaded) {
	mem, ok := a.conns[h.id]
	if !ok {
		return
	}
	s, ok := mem.topics[h.topic]
	if !ok || !s.loading || s.gen != h.gen {
		return
	}
	if h.err != nil {
		a.log.Warn("hub: topic history unavailable", "topic", h.topic, "err", h.err)
		ack, settled := s.ack, s.settled
		s.settled = nil // called below, once the answer is queued
		a.dropSub(mem, h.topic)
		a.enqueue(mem, ack(0, false, ErrHistory))
		callSettled(settled)
		return
	}
	// recovered: the client asked for the messages after since and got every one of them.
	var msgs []*Message
	recovered := false
	if s.since != nil && h.complete {
		msgs, recovered = h.msgs, true
	}
	a.settle(h.topic, mem, s, msgs, h.latest, recovered)
}

// settle finishes a subscription: the answer, then the recovered messages, then the live
// messages held meanwhile that are newer than latest (older ones were in the history, or predate
// the subscription). On a topic with history the held messages must follow latest without a
// gap; one that skips some (the bus lost them while the history loaded) stops there, and the
// topic fills the rest in from the history.
func (a *hubActor) settle(name string, mem *member, s *sub, history []*Message, latest uint64, recovered bool) {
	pending := s.pending
	s.loading, s.pending, s.pos = false, nil, latest
	defer callSettled(s.settled)
	s.settled = nil
	if !a.enqueue(mem, s.ack(latest, recovered, nil)) {
		return
	}
	for _, msg := range history {
		if !a.enqueueOne(mem, msg) {
			return
		}
	}
	t := a.topics[name]
	tracked := t != nil && t.tracked
	gap := false
	for _, msg := range pending {
		if tracked && msg.Seq != 0 {
			if msg.Seq <= s.pos {
				continue
			}
			if msg.Seq > s.pos+1 {
				gap = true
				break
			}
			s.pos = msg.Seq
		}
		if !a.enqueueOne(mem, msg) {
			return
		}
	}
	if tracked {
		a.settled(name, t, s.pos, gap)
	}
}

// callSettled calls a SubscribeRequest's Settled, if it has one.
func callSettled(f func()) {
	if f != nil {
		f()
	}
}

// enqueueOne encodes msg for mem alone (history and held messages are per subscriber).
func (a *hubActor) enqueueOne(mem *member, msg *Message) bool {
	f := a.encode(mem.conn.Codec(), msg)
	return f == nil || a.enqueue(mem, f)
}
