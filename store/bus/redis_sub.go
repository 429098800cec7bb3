package bus

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Retry delays of the receive loop after a failed read (Redis down, connection killed).
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = time.Second
)

// pubsub returns the current subscription, making a new one if there is none, or nil once the
// bus is closing. go-redis's PubSub reconnects and resubscribes by itself inside Receive after a
// connection error; a new PubSub is made only when the watchdog gave up on a silent one.
func (r *Redis) pubsub() *redis.PubSub {
	r.psMu.Lock()
	defer r.psMu.Unlock()
	if r.ctx.Err() != nil {
		return nil
	}
	if r.ps == nil {
		// Never fails: the channel is recorded even when the SUBSCRIBE could not be sent, and
		// the next Receive connects and sends it.
		r.ps = r.client.Subscribe(r.ctx, r.channel)
	}
	return r.ps
}

// resetPubSub closes ps if it is still the current subscription, so the receive loop makes a
// new one.
func (r *Redis) resetPubSub(ps *redis.PubSub) {
	r.psMu.Lock()
	defer r.psMu.Unlock()
	if r.ps == ps && ps != nil {
		_ = ps.Close()
		r.ps = nil
	}
}

// receive is the receive goroutine: it reads the subscription, tracks whether it is up, and
// calls deliver for every message.
func (r *Redis) receive() {
	defer r.wg.Done()
	backoff := minBackoff
	for {
		ps := r.pubsub()
		if ps == nil {
			return
		}
		// No read deadline: a silent connection is the watchdog's business (see probe), and a
		// deadline could cut a reply in half.
		r.lastRecv.Store(time.Now().UnixNano())
		r.reading.Store(true)
		msg, err := ps.Receive(r.ctx)
		r.reading.Store(false)
		if r.ctx.Err() != nil {
			return
		}
		r.lastRecv.Store(time.Now().UnixNano())
		if err != nil {
			// go-redis has already dropped the connection and tried to reconnect and resubscribe;
			// the confirmation (or the next error) is what the next Receive returns.
			r.down(opSubscribe, err)
			if !r.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		switch v := msg.(type) {
		case *redis.Subscription:
			if v.Channel == r.channel && v.Kind == "subscribe" {
				backoff = minBackoff
				r.up()
				r.subscribedAgain()
			}
		case *redis.Message:
			r.handle(v.Payload)
		case *redis.Pong:
			// The watchdog's ping came back: the connection is alive.
		}
	}
}

// up marks the subscription confirmed and asks for a probe at once, so Healthy recovers
// without waiting for the next tick.
func (r *Redis) up() {
	if !r.subscribed.Swap(true) {
		r.cfg.logger.Info("bus subscribed", "channel", r.channel, "node", r.node)
	}
	r.firstOnce.Do(func() { close(r.firstSub) })
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// OnSubscribed registers f, called each time the bus's subscription is confirmed: the first time
// and after every resubscription (go-redis reconnecting after a connection error, or the watchdog
// replacing a silent subscription). Redis pub/sub keeps nothing for a subscriber that is away, so
// the messages published while the subscription was down are never delivered; a consumer that
// keeps history topics reads them back with History, and f is its cue to do so.
//
// f runs on the receive goroutine before deliver sees any message that came through the new
// subscription, so a consumer that hands both to one queue (an actor's mailbox) sees the
// notification exactly between the messages received before the outage and those received after.
// Like deliver, f must return quickly; a panic in it is logged and ignored. Calling the returned
// function removes f (f may still be running, or about to be called once, when it returns).
func (r *Redis) OnSubscribed(f func()) (remove func()) {
	if f == nil {
		return func() {}
	}
	r.subMu.Lock()
	defer r.subMu.Unlock()
	if r.onSub == nil {
		r.onSub = make(map[uint64]func())
	}
	r.onSubID++
	id := r.onSubID
	r.onSub[id] = f
	return func() {
		r.subMu.Lock()
		defer r.subMu.Unlock()
		delete(r.onSub, id)
	}
}

// subscribedAgain calls the OnSubscribed callbacks, on the receive goroutine.
func (r *Redis) subscribedAgain() {
	r.subMu.Lock()
	fs := make([]func(), 0, len(r.onSub))
	for _, f := range r.onSub {
		fs = append(fs, f)
	}
	r.subMu.Unlock()
	for _, f := range fs {
		func() {
			defer func() {
				if v := recover(); v != nil {
					r.cfg.logger.Error("bus: OnSubscribed callback panicked", "panic", v)
				}
			}()
			f()
		}()
	}
}

// down marks the subscription lost: Healthy fails until it is confirmed again and a probe sent
// after that came back.
func (r *Redis) down(op string, err error) {
	r.subscribed.Store(false)
	r.lastProbe.Store(0)
	r.trouble.record(op, err)
}

// sleep waits d or until the bus closes, and reports whether the bus is still open.
func (r *Redis) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// handle decodes one payload; probes from this node set the lag, messages go to deliver.
func (r *Redis) handle(payload string) {
	env, err := decodeEnvelope([]byte(payload))
	if err != nil {
		r.invalid.Inc()
		r.junk.warn("bus: ignoring an undecodable message", "channel", r.channel,
			"err", err, "bytes", len(payload))
		return
	}
	if env.Kind == kindProbe {
		if env.Node != r.node {
			return // another node's probe: its business
		}
		now := time.Now()
		r.lag.Set(max(0, now.Sub(time.Unix(0, env.Time)).Seconds()))
		r.waitingSince.Store(0)
		if r.subscribed.Load() {
			r.lastProbe.Store(now.UnixNano())
		}
		return
	}
	safeDeliver(r.deliver, env.Msg, r.cfg.logger)
}

// probe is the probe goroutine: every probe interval (and at once after a subscription) it
// publishes a probe that the receive goroutine times when it comes back. It is also the
// watchdog: a subscription that has read nothing for 2 intervals, not even our own probes, gets
// a PING, and after 3 it is replaced, which catches connections that died without being closed.
func (r *Redis) probe() {
	defer r.wg.Done()
	interval := r.cfg.probeInterval
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-tick.C:
			r.watch(interval)
		case <-r.kick:
		}
		r.sendProbe()
	}
}

func (r *Redis) sendProbe() {
	now := time.Now().UnixNano()
	r.waitingSince.CompareAndSwap(0, now)
	payload := `{"n":` + r.nodeJS + `,"k":"p","t":` + strconv.FormatInt(now, 10) + `}`
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.timeout)
	defer cancel()
	if err := r.client.Publish(ctx, r.channel, payload).Err(); err != nil && r.ctx.Err() == nil {
		r.trouble.record(opPublish, err)
	}
	// While probes go unanswered the lag gauge shows how long the oldest has waited, so an
	// outage is visible on it and not just a frozen last value.
	if since := r.waitingSince.Load(); since != 0 {
		waited := time.Since(time.Unix(0, since)).Seconds()
		if waited > r.cfg.probeInterval.Seconds() && waited > r.lag.Get() {
			r.lag.Set(waited)
		}
	}
}

// watch replaces a subscription that has been silent for too long. Only time spent waiting in
// Receive counts: a slow deliver or a retry backoff is not the connection's fault.
func (r *Redis) watch(interval time.Duration) {
	if !r.reading.Load() {
		return
	}
	silent := time.Since(time.Unix(0, r.lastRecv.Load()))
	switch {
	case silent >= 3*interval:
		r.psMu.Lock()
		ps := r.ps
		r.psMu.Unlock()
		if ps == nil {
			return
		}
		r.down(opSubscribe, errSilent{silent})
		r.lastRecv.Store(time.Now().UnixNano()) // give the new subscription its own 3 intervals
		r.resetPubSub(ps)
	case silent >= 2*interval:
		r.psMu.Lock()
		ps := r.ps
		r.psMu.Unlock()
		if ps != nil {
			ctx, cancel := context.WithTimeout(r.ctx, r.cfg.timeout)
			_ = ps.Ping(ctx) // the PONG arrives through Receive; a failed write reconnects
			cancel()
		}
	}
}

type errSilent struct{ d time.Duration }

func (e errSilent) Error() string {
	return "subscription silent for " + e.d.Round(time.Millisecond).String() + ", resubscribing"
}
