package hub

import (
	"slices"
)

// Missed messages on topics with history.
//
// The bus delivers every message to every node, except while a node's subscription is down:
// Redis pub/sub keeps nothing for an absent subscriber, so what was published meanwhile never
// reaches this node. On a topic with history every message carries the topic's stream (epoch)
// and sequence, and stays in the history for a while, so the hub reads the missed ones back and
// its subscribers still get every message exactly once and in order:
//
//   - A live message more than one past the topic's position (seq) reveals a gap. The topic
//     fills it: it reads History(topic, seq) off the actor, holds the live messages meanwhile
//     (at most MaxPending), then delivers the missing messages and the held ones, each
//     subscriber skipping what it already has (its pos).
//   - After the bus resubscribed (Resubscriber), every topic with subscribers fills from its
//     position even if no later message comes to reveal the gap, and the subscriptions whose
//     history was still loading load it again (it may have been read before the missed
//     messages).
//
// A sequence only means something within its stream. When Redis loses its data (a restart
// without persistence, FLUSHDB, a failover to an empty replica) or an idle topic expires, the
// next publish starts a new stream: seq 1 again, under a new epoch. A live message, a history
// read or a new subscriber's answer in another epoch than the one the topic's subscribers follow
// means they missed the rest of their stream (possibly the start of the new one too). The one
// exception is a topic whose subscribers saw no stream at all (epoch "", seq 0): a live message
// seq 1 of a stream begins theirs. A fill that finds a stream where they saw none is not taken
// for its beginning, though: another stream may have come and gone meanwhile, unseen.
//
// When the missed messages cannot be read back — no longer kept (trimmed), the history fetch
// failed (after retries), the topic's stream restarted or its sequence went back, or too many
// live messages piled up while the history loaded — the subscribers must not be left with a
// silent hole. The protocol's way to tell a client that it missed messages is SUBSCRIBE with
// since and epoch answering recovered: false, so the hub closes every connection subscribed to
// that topic (1013 "missed topic messages", like a slow consumer that the hub cannot keep a
// gapless stream for). The client reconnects, subscribes with since = the last seq it got and
// epoch = that message's epoch, and is told whether the history still covers it (recovered
// true, with the messages) or not (recovered false, with the current epoch: reload).
// Subscriptions still loading their history are not closed: they load it again, and their answer
// says what they get. Each such case is logged as a warning and counted in
// ws_topic_fills_total{result="lost"}, and the connections closed in
// ws_topic_gap_disconnects_total.

// CloseMissedMessages is the close code for a connection subscribed to a topic whose missed
// messages could not be read back from its history (1013, try again later; reason "missed topic
// messages"). The client reconnects and subscribes again with since and epoch.
const CloseMissedMessages = 1013

const closeMissedReason = "missed topic messages"

// deliverSeq delivers a live message of a topic with history, or holds it while the topic's
// history loads. It reports whether the next message may follow (false: msg was held, or the
// topic lost messages and started over).
func (a *hubActor) deliverSeq(name string, t *topic, msg *Message) bool {
	if t.filling {
		if len(t.held) >= a.hub.opts.MaxPending {
			a.lose(name, t, "too many live messages held while the history loads", nil)
			return false
		}
		t.held = append(t.held, msg)
		return false
	}
	switch {
	case !t.known:
		// The first message since the topic got subscribers, all still loading their history:
		// their answers settle the seam.
		t.known, t.epoch, t.seq = true, msg.Epoch, msg.Seq
	case t.prev != "" && msg.Epoch == t.prev:
		// A late message of the stream the topic left when a subscriber read the new one: it was
		// published before the new stream began, and nobody follows it any more.
		return true
	case msg.Epoch != t.epoch:
		if t.epoch != "" || t.seq != 0 || msg.Seq != 1 {
			a.lose(name, t, "the topic's stream restarted (another epoch)", nil)
			return false
		}
		t.epoch, t.seq = msg.Epoch, 1 // the topic's first stream begins
	case t.live != 0 && msg.Seq <= t.live:
		// The bus delivers a stream in order: the counter went back (Redis failed over to a
		// replica that had not received the latest messages).
		a.lose(name, t, "the topic's sequence went back", nil)
		return false
	case msg.Seq > t.seq+1:
		a.startFill(name, t)
		t.held = append(t.held, msg)
		return false
	case msg.Seq == t.seq+1:
		t.seq = msg.Seq
	}
	// Not newer than what every subscriber has: it was on its way when a subscriber's history
	// was read; each skips what it has.
	t.live = msg.Seq
	a.fanOut(t, msg)
	return true
}

// settled records where a subscriber of a topic with history now stands (s.epoch, s.pos). gap:
// the live messages held for it skipped some after pos, or were of another stream (the bus lost
// them while its history loaded, or the stream restarted).
func (a *hubActor) settled(name string, t *topic, s *sub, gap bool) {
	switch {
	case !t.known:
		t.known, t.epoch, t.seq = true, s.epoch, s.pos
	case s.epoch == t.epoch:
		t.seq = min(t.seq, s.pos)
	case t.epoch == "" && t.seq == 0:
		// The others saw no stream yet; this one's read saw one. When its first message comes
		// live it begins theirs, and this subscriber skips what it has.
	default:
		// This subscriber read another stream than the one the others follow: theirs restarted.
		// It stands in the new one and stays; the topic follows it from now on, and the live
		// messages it held during a fill go through the topic's checks again.
		prev, held := t.epoch, t.held
		a.lose(name, t, "the topic's stream restarted (another epoch)", nil, s)
		t.known, t.epoch, t.seq, t.prev = true, s.epoch, s.pos, prev
		a.redeliver(name, t, held)
		if t.filling || !t.known {
			return // a gap in what was held, or held messages of yet another stream
		}
	}
	switch {
	case t.filling:
		if gap || (s.epoch == t.epoch && s.pos < t.fillSince) {
			t.again = true // this fill does not reach back to pos
		}
	case gap:
		a.startFill(name, t)
	}
}

// startFill reads the topic's history after its position, off the actor; live messages are
// held until it is back (filled).
func (a *hubActor) startFill(name string, t *topic) {
	t.filling, t.again = true, false
	t.fillID, t.fillSince = a.nextID(), t.seq
	a.hub.fill(name, t.seq, t.fillID)
}

// filled delivers what a fill read, then the live messages held meanwhile.
func (a *hubActor) filled(f *filled) {
	t := a.topics[f.topic]
	if t == nil || !t.filling || t.fillID != f.id {
		return // the topic lost its subscribers, or started over, meanwhile
	}
	t.filling = false
	switch {
	case f.err != nil:
		a.lose(f.topic, t, "the topic's history is unavailable", f.err)
		return
	case f.w.Epoch != t.epoch:
		a.lose(f.topic, t, "the topic's stream restarted (another epoch)", nil)
		return
	case f.since > f.w.Latest:
		a.lose(f.topic, t, "the topic's sequence went back", nil)
		return
	case !f.w.Complete:
		a.lose(f.topic, t, "the missed messages are no longer in the topic's history", nil)
		return
	}
	if t.again || t.seq < f.since {
		// The bus resubscribed after this read, or a subscriber settled below it: read again
		// (the held messages stay held).
		a.startFill(f.topic, t)
		return
	}
	a.filledOK.Inc()
	for _, msg := range f.w.Msgs {
		a.fanOut(t, msg)
	}
	t.seq = max(t.seq, f.w.Latest)
	held := t.held
	t.held = nil
	a.redeliver(f.topic, t, held)
}

// redeliver passes live messages that were held back through deliverSeq, in order, until one
// starts another fill (the rest waits for it) or makes the topic start over (the rest is dropped:
// every subscriber left loads its history again).
func (a *hubActor) redeliver(name string, t *topic, held []*Message) {
	for i, msg := range held {
		if !a.deliverSeq(name, t, msg) {
			if t.filling { // another gap: the rest waits for that fill
				t.held = append(t.held, held[i+1:]...)
			}
			return
		}
	}
}

// resync follows a resubscription of the bus: what was published while it was down never came.
func (a *hubActor) resync() {
	for name, t := range a.topics {
		if !t.tracked {
			continue
		}
		settled := false
		for _, mem := range t.members {
			s := mem.topics.get(name)
			switch {
			case s == nil:
			case s.loading:
				// Its history may have been read before the missed messages; the held live
				// messages all predate the new read.
				s.pending = nil
				a.load(mem, name, s)
			default:
				settled = true
			}
		}
		switch {
		case t.filling:
			t.again = true
		case settled:
			a.startFill(name, t)
		}
	}
}

// lose handles messages of a topic that this node missed and cannot read back: every settled
// subscriber (but keep, if set) is closed (see the comment at the top of this file), every one
// still loading loads again, and the topic starts over as if new.
func (a *hubActor) lose(name string, t *topic, why string, err error, keep ...*sub) {
	a.fillLost.Inc()
	closed, reloaded := 0, 0
	for _, mem := range slices.Clone(t.snapshot()) {
		s := mem.topics.get(name)
		switch {
		case s == nil, slices.Contains(keep, s):
		case s.loading:
			s.pending = nil
			a.load(mem, name, s)
			reloaded++
		default:
			a.closeMissed(mem)
			closed++
		}
	}
	args := []any{"topic", name, "reason", why, "closed", closed, "reloading", reloaded,
		"epoch", t.epoch, "last_seq", t.seq}
	if err != nil {
		args = append(args, "err", err)
	}
	a.log.Warn("hub: topic messages missed and not recoverable; closing its subscribers so that they recover with since", args...)
	t.known, t.epoch, t.seq, t.live, t.prev = false, "", 0, 0, ""
	t.filling, t.again, t.held = false, false, nil
}

// closeMissed closes a subscriber that would be left with a hole, and forgets it.
func (a *hubActor) closeMissed(mem *member) {
	a.gapClosed.Inc()
	mem.conn.Close(CloseMissedMessages, closeMissedReason)
	a.remove(mem)
}
