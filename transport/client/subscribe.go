package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
)

// Position is a place in a topic's stream: the seq of the last message taken and the epoch
// that seq counts in (docs/protocol.md §1.2). Epoch is "" from a server that sends none.
type Position struct {
	Seq   uint64
	Epoch string
}

// Message is a broadcast: on a subscribed topic (Topic set; Seq and Epoch on topics that keep
// history) or to every connection (Topic "", through Config.OnBroadcast).
type Message struct {
	PkgID int
	Topic string
	Seq   uint64
	Epoch string
	Data  json.RawMessage
}

// Decode unmarshals the message's data into v.
func (m Message) Decode(v any) error { return json.Unmarshal(m.Data, v) }

// Missed tells a subscription that messages may have been lost: it resubscribed from From and
// the server could not replay what came after (history too short, the stream restarted, a
// topic without history). Reload the state the topic feeds; messages after Now follow.
type Missed struct {
	Topic string
	From  Position // where the client asked to resume
	Now   Position // where the subscription follows from now on
}

// SubscribeOption adjusts a subscription.
type SubscribeOption func(*subscribeOptions)

type subscribeOptions struct {
	from     *Position
	onMissed func(Missed)
}

// From resumes at p (a position the application kept, from Subscription.Position or the last
// Message it handled): the first SUBSCRIBE asks for the messages after it.
func From(p Position) SubscribeOption {
	return func(o *subscribeOptions) { o.from = &p }
}

// OnMissed sets the callback told when a resubscribe (after a reconnect, or a resume with From)
// could not recover what was missed. It runs on the callback goroutine, in order with the
// topic's messages: the messages after it are those after Missed.Now.
func OnMissed(f func(Missed)) SubscribeOption {
	return func(o *subscribeOptions) { o.onMissed = f }
}

// Subscription is a topic subscription that survives reconnects: the client resubscribes with
// since and epoch after each one, drops what it already delivered and tells OnMissed what it
// could not recover.
type Subscription struct {
	c         *Client
	topic     string
	onMessage func(Message)
	onMissed  func(Missed)
	done      chan struct{}
	ended     atomic.Bool // also under c.mu; read without it by the callback goroutine

	// Guarded by c.mu.
	pos         Position
	established bool   // the first SUBSCRIBE succeeded: resubscribe after every reconnect
	liveOn      uint64 // the connection whose SUBSCRIBE answer was taken; messages come from it only
	syncing     bool   // a SUBSCRIBE is on its way on syncOn: its messages wait for the answer
	syncOn      uint64
	needResub   bool // a resubscribe must be tried again on the live connection
	recovered   bool
	err         error
}

// Subscribe subscribes to topic (docs/protocol.md §1.4, pkg_id 10) and calls onMessage with every
// broadcast on it, in order, on the client's callback goroutine. It returns once the server
// answered; a refusal is an *Error (IsPermissionDenied for a topic the user may not read). The
// subscription lasts until Unsubscribe, the client's end, or a resubscribe the server refuses
// for good (Done, Err). When ctx ends before the answer, Subscribe fails; the server may still
// have subscribed the connection, and the client drops what comes on that topic until the
// connection ends.
func (c *Client) Subscribe(ctx context.Context, topic string, onMessage func(Message), opts ...SubscribeOption) (*Subscription, error) {
	if onMessage == nil {
		return nil, errors.New("client: Subscribe needs an onMessage callback")
	}
	var o subscribeOptions
	for _, opt := range opts {
		opt(&o)
	}
	s := &Subscription{c: c, topic: topic, onMessage: onMessage, onMissed: o.onMissed, done: make(chan struct{})}
	if o.from != nil {
		s.pos = *o.from
	}
	c.mu.Lock()
	if c.finalErr != nil {
		c.mu.Unlock()
		return nil, c.stoppedErr()
	}
	if c.subs[topic] != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrAlreadySubscribed, topic)
	}
	c.subs[topic] = s
	c.mu.Unlock()

	asked := o.from
	// Retried across reconnects: a SUBSCRIBE may run twice (a second one re-runs the recovery).
	p, err := c.newPending(pkgSubscribe, subscribeData(topic, asked), true, func(cn *conn, f *frame) {
		c.settle(s, cn, f, asked, true)
	})
	var f *frame
	if err == nil {
		f, err = c.roundTrip(ctx, p, 0)
	}
	if err == nil && f.Status != StatusOK {
		err = errorFromAnswer(f)
	}
	if err != nil {
		c.mu.Lock()
		if c.subs[topic] == s {
			delete(c.subs, topic)
		}
		s.endLocked(err)
		c.mu.Unlock()
		return nil, err
	}
	return s, nil
}

// Topic is the subscription's topic.
func (s *Subscription) Topic() string { return s.topic }

// Position is where the subscription is: the last message handed to the callback queue (or the
// stream's position from the latest SUBSCRIBE answer). Keep it to resume later with From.
func (s *Subscription) Position() Position {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.pos
}

// Recovered reports whether the latest (re)subscribe recovered everything after its since.
func (s *Subscription) Recovered() bool {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.recovered
}

// Done is closed when the subscription ends.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err says why the subscription ended (ErrUnsubscribed, ErrClosed, or the server's *Error for a
// resubscribe it refused), nil while it runs.
func (s *Subscription) Err() error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.err
}

// Unsubscribe ends the subscription: its callback is not called again (one already running
// finishes), and the server is told (pkg_id 11) when the subscription is on the live connection.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	c := s.c
	c.mu.Lock()
	if s.ended.Load() {
		c.mu.Unlock()
		return nil
	}
	live := c.cur != nil && (s.liveOn == c.cur.id || s.syncing && s.syncOn == c.cur.id)
	if c.subs[s.topic] == s {
		delete(c.subs, s.topic)
	}
	s.endLocked(ErrUnsubscribed)
	c.mu.Unlock()
	if !live {
		return nil
	}
	_, err := c.Request(ctx, pkgUnsubscribe, map[string]string{"topic": s.topic})
	if errors.Is(err, ErrConnectionLost) || errors.Is(err, ErrClosed) {
		return nil // the server forgets a connection's subscriptions with it
	}
	return err
}

func (s *Subscription) endLocked(err error) {
	if s.ended.Swap(true) {
		return
	}
	s.err = err
	close(s.done)
}

func subscribeData(topic string, since *Position) json.RawMessage {
	d := struct {
		Topic string  `json:"topic"`
		Since *uint64 `json:"since,omitempty"`
		Epoch string  `json:"epoch,omitempty"` // omitted when unknown: "" is no stream at all
	}{Topic: topic}
	if since != nil {
		d.Since, d.Epoch = &since.Seq, since.Epoch
	}
	b, _ := json.Marshal(d)
	return b
}

// settle takes a SUBSCRIBE answer, on the read goroutine, before the frames after it (the
// replayed messages) are read. asked is the position the SUBSCRIBE resumed from (nil: none).
func (c *Client) settle(s *Subscription, cn *conn, f *frame, asked *Position, initial bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.ended.Load() || c.subs[s.topic] != s {
		return
	}
	if f.Status != StatusOK {
		if initial {
			return // Subscribe returns the refusal
		}
		s.syncing = false
		if f.Status == StatusError {
			// Rate limited, or a database or internal error: it passes. Ask again on this
			// connection after a pause rather than drop the connection and every other topic.
			s.needResub = true
			c.wakeResub()
			return
		}
		err := errorFromAnswer(f)
		c.log.Warn("switchboard client: resubscribe refused; subscription ended", "topic", s.topic, "err", err)
		delete(c.subs, s.topic)
		s.endLocked(err)
		return
	}
	var ans struct {
		Seq       uint64 `json:"seq"`
		Epoch     string `json:"epoch"`
		Recovered bool   `json:"recovered"`
	}
	if err := json.Unmarshal(f.Data, &ans); err != nil {
		c.log.Warn("switchboard client: SUBSCRIBE answer unreadable", "topic", s.topic, "err", err)
	}
	recovered := asked != nil && ans.Recovered
	if recovered && (ans.Seq < asked.Seq || asked.Epoch != "" && ans.Epoch != "" && ans.Epoch != asked.Epoch) {
		// The stream is behind the position asked from, or another one: its sequence restarted.
		// A server that sends no epoch can say recovered here; following from the old position
		// would then drop every message until the new stream passed it.
		recovered = false
	}
	now := Position{Seq: ans.Seq, Epoch: ans.Epoch}
	if recovered {
		now = *asked // the replay follows: from asked on
		if now.Epoch == "" {
			now.Epoch = ans.Epoch
		}
	}
	if !recovered && asked != nil {
		// Queued without the lock (it can wait); this read goroutine is the only one that moves
		// the subscription on meanwhile.
		c.mu.Unlock()
		ok := c.offer(delivery{s: s, missed: &Missed{Topic: s.topic, From: *asked, Now: now}})
		c.mu.Lock()
		if !ok {
			// No room to tell the application. Give the connection up; the next one asks again
			// from the same position, once the callbacks caught up.
			s.established, s.liveOn, s.syncing = true, 0, false
			c.overflow(cn)
			return
		}
		c.stats.missed.Add(1)
		if s.ended.Load() {
			return
		}
	}
	s.established, s.liveOn, s.syncing, s.needResub = true, cn.id, false, false
	s.pos, s.recovered = now, recovered
}

// resubscribeAll resubscribes every established subscription on a new connection, from its
// position.
func (c *Client) resubscribeAll(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.subs {
		if s.established {
			c.resubscribeLocked(cn, s)
		}
	}
}

// resubscribeWaiting retries the resubscribes that failed for a passing reason.
func (c *Client) resubscribeWaiting(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.subs {
		if s.needResub && s.established {
			c.resubscribeLocked(cn, s)
		}
	}
}

// resubscribeLocked sends SUBSCRIBE with since and epoch on cn. Until its answer, the topic's
// messages on cn are dropped: the answer's replay brings them.
func (c *Client) resubscribeLocked(cn *conn, s *Subscription) {
	asked := s.pos
	p, err := c.newPending(pkgSubscribe, subscribeData(s.topic, &asked), false, func(cn *conn, f *frame) {
		c.settle(s, cn, f, &asked, false)
	})
	if err != nil {
		c.log.Error("switchboard client: resubscribe", "topic", s.topic, "err", err)
		return
	}
	s.syncing, s.syncOn, s.needResub = true, cn.id, false
	if !c.sendOnLocked(cn, p) {
		s.needResub = true
		c.wakeResub()
	}
}

func (c *Client) wakeResub() {
	select {
	case c.resubNow <- struct{}{}:
	default:
	}
}

// broadcast routes a broadcast, on the read goroutine. On a topic with history, the position
// decides: a seq already taken is a duplicate (a replay overlapping live messages) and dropped,
// the next one is queued for the callback, and a gap or another epoch makes the client
// resubscribe from its position on this connection. Only this goroutine moves a position
// forward, so it may queue without the lock (queueing can wait) and advance after.
func (c *Client) broadcast(cn *conn, f *frame) {
	m := Message{PkgID: f.PkgID, Topic: f.Topic, Seq: f.Seq, Epoch: f.Epoch, Data: f.Data}
	if f.Topic == "" {
		if c.cfg.OnBroadcast != nil && !c.offer(delivery{msg: m}) {
			c.stats.dropped.Add(1)
		}
		return
	}
	if cn.overflowed.Load() {
		return // being replaced; the resubscribe brings these again
	}
	c.mu.Lock()
	s := c.subs[f.Topic]
	if s == nil || s.liveOn != cn.id || s.syncing {
		c.mu.Unlock()
		return
	}
	if f.Seq == 0 { // no history: nothing to recover it from
		c.mu.Unlock()
		if !c.offer(delivery{s: s, msg: m}) {
			c.stats.dropped.Add(1)
		}
		return
	}
	same := s.pos.Epoch == "" || f.Epoch == s.pos.Epoch
	switch {
	case same && f.Seq <= s.pos.Seq:
		c.mu.Unlock()
	case same && f.Seq == s.pos.Seq+1:
		c.mu.Unlock()
		if !c.offer(delivery{s: s, msg: m}) {
			c.overflow(cn)
			return
		}
		c.mu.Lock()
		s.pos.Seq = f.Seq
		if f.Epoch != "" {
			s.pos.Epoch = f.Epoch
		}
		c.mu.Unlock()
	default:
		c.log.Warn("switchboard client: topic stream skipped; resubscribing", "topic", f.Topic,
			"at", s.pos.Seq, "epoch", s.pos.Epoch, "got", f.Seq, "got_epoch", f.Epoch)
		c.resubscribeLocked(cn, s)
		c.mu.Unlock()
	}
}

// overflow gives cn up because the inbound queue is full.
func (c *Client) overflow(cn *conn) {
	if !cn.overflowed.Swap(true) {
		c.stats.overflows.Add(1)
		c.log.Warn("switchboard client: callbacks fell behind, inbound queue full; reconnecting to resubscribe")
	}
	cn.giveUp(ErrInboundOverflow)
}
