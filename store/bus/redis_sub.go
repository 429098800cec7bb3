package bus

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Retry delays of a receive loop after a failed read (Redis down, connection killed).
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = time.Second
)

// shardSub is one subscription of the bus: SSUBSCRIBE to its shard channels on one connection,
// read by its own receive goroutine. Its probes go to its first channel.
type shardSub struct {
	r        *Redis
	channels []string
	want     map[string]bool // channels, for the confirmations

	subscribed   atomic.Bool
	lastRecv     atomic.Int64 // unix ns when the receive goroutine last got something or began to wait
	reading      atomic.Bool  // the receive goroutine is waiting in Receive
	lastProbe    atomic.Int64 // unix ns when our own probe last came back; 0 = not since subscribing
	waitingSince atomic.Int64 // send time of the oldest probe still unanswered; 0 = none

	confirmed map[string]bool // receive goroutine only: channels confirmed since the last (re)connect

	psMu sync.Mutex
	ps   *redis.PubSub // current subscription; nil = make a new one
}

func (r *Redis) newShardSub(channels []string) *shardSub {
	s := &shardSub{r: r, channels: channels, want: make(map[string]bool, len(channels)),
		confirmed: make(map[string]bool, len(channels))}
	for _, c := range channels {
		s.want[c] = true
	}
	s.lastRecv.Store(time.Now().UnixNano())
	return s
}

// name names the subscription in logs and errors.
func (s *shardSub) name() string {
	if len(s.channels) == 1 {
		return s.channels[0]
	}
	return strconv.Itoa(len(s.channels)) + " shard channels " + s.channels[0] + "…"
}

// pubsub returns the current subscription, making a new one if there is none, or nil once the
// bus is closing. go-redis's PubSub reconnects and resubscribes by itself inside Receive after a
// connection error; a new PubSub is made when the watchdog gave up on a silent one, or when Redis
// moved a shard channel's slot elsewhere (a cluster failover or resharding).
func (s *shardSub) pubsub() *redis.PubSub {
	s.psMu.Lock()
	defer s.psMu.Unlock()
	if s.r.ctx.Err() != nil {
		return nil
	}
	if s.ps == nil {
		// Never fails: the channels are recorded even when the SSUBSCRIBE could not be sent, and
		// the next Receive connects and sends it. On a cluster the connection goes to the primary
		// that serves the channel's slot.
		s.ps = s.r.client.SSubscribe(s.r.ctx, s.channels...)
	}
	return s.ps
}

// resetPubSub closes ps if it is still the current subscription, so the receive loop makes a
// new one.
func (s *shardSub) resetPubSub(ps *redis.PubSub) {
	s.psMu.Lock()
	defer s.psMu.Unlock()
	if s.ps == ps && ps != nil {
		_ = ps.Close()
		s.ps = nil
	}
}

func (s *shardSub) close() {
	s.psMu.Lock()
	defer s.psMu.Unlock()
	if s.ps != nil {
		_ = s.ps.Close() // unblocks the receive goroutine's read
		s.ps = nil
	}
}

// receive is the receive goroutine: it reads the subscription, tracks whether it is up, and
// calls deliver for every message.
func (s *shardSub) receive() {
	r := s.r
	defer r.wg.Done()
	backoff := minBackoff
	for {
		ps := s.pubsub()
		if ps == nil {
			return
		}
		// No read deadline: a silent connection is the watchdog's business (see probe), and a
		// deadline could cut a reply in half.
		s.lastRecv.Store(time.Now().UnixNano())
		s.reading.Store(true)
		msg, err := ps.Receive(r.ctx)
		s.reading.Store(false)
		if r.ctx.Err() != nil {
			return
		}
		s.lastRecv.Store(time.Now().UnixNano())
		if err != nil {
			// go-redis has already dropped the connection and tried to reconnect and resubscribe;
			// the confirmation (or the next error) is what the next Receive returns. On a cluster
			// the slot may have moved (failover): read the slot map again and start a new
			// subscription, which goes to the slot's primary now.
			s.down(opSubscribe, err)
			clear(s.confirmed)
			if r.cluster != nil {
				s.resetPubSub(ps)
				r.reloadClusterState()
			}
			if !r.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		switch v := msg.(type) {
		case *redis.Subscription:
			switch {
			case v.Kind == "ssubscribe" && s.want[v.Channel]:
				s.confirmed[v.Channel] = true
				if len(s.confirmed) == len(s.channels) {
					backoff = minBackoff
					s.up()
					r.subscribedAgain()
				}
			case v.Kind == "sunsubscribe":
				// The bus never unsubscribes: Redis dropped the channel because its slot moved
				// to another primary (failover, resharding). Subscribe again where it is now.
				s.down(opSubscribe, fmt.Errorf("redis unsubscribed %s (its slot moved)", v.Channel))
				clear(s.confirmed)
				s.resetPubSub(ps)
				r.reloadClusterState()
			}
		case *redis.Message:
			r.handle(s, v.Payload)
		case *redis.Pong:
			// The watchdog's ping came back: the connection is alive.
		}
	}
}

// reloadClusterState reads the cluster's slot map again, so that a new subscription goes to the
// primary that serves its slot now.
func (r *Redis) reloadClusterState() {
	if r.cluster == nil {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.timeout)
	defer cancel()
	r.cluster.ReloadState(ctx)
}

// up marks the subscription confirmed and asks for a probe at once, so Healthy recovers
// without waiting for the next tick.
func (s *shardSub) up() {
	r := s.r
	if !s.subscribed.Swap(true) {
		r.cfg.logger.Info("bus subscribed", "channels", s.name(), "node", r.node)
	}
	// firstSub is the bus's, closed once when every subscription is up: the subscriptions' receive
	// goroutines come up concurrently, so two may both see every one up.
	allUp := true
	for _, o := range r.subs {
		if !o.subscribed.Load() {
			allUp = false
			break
		}
	}
	if allUp {
		r.firstOnce.Do(func() { close(r.firstSub) })
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// OnSubscribed registers f, called each time one of the bus's subscriptions is confirmed: the
// first time and after every resubscription (go-redis reconnecting after a connection error, the
// watchdog replacing a silent subscription, a cluster shard's slot moving to another primary).
// Redis pub/sub keeps nothing for a subscriber that is away, so the messages published while a
// subscription was down are never delivered; a consumer that keeps history topics reads them
// back with History, and f is its cue to do so.
//
// f runs on the receive goroutine of the subscription that came back, before deliver sees any
// message that came through it, and never at the same time as deliver; so a consumer that hands
// both to one queue (an actor's mailbox) sees the notification exactly between the messages of
// that subscription received before the outage and those received after. Like deliver, f must
// return quickly; a panic in it is logged and ignored. Calling the returned function removes f
// (f may still be running, or about to be called once, when it returns).
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

// subscribedAgain calls the OnSubscribed callbacks, on a receive goroutine.
func (r *Redis) subscribedAgain() {
	r.subMu.Lock()
	fs := make([]func(), 0, len(r.onSub))
	for _, f := range r.onSub {
		fs = append(fs, f)
	}
	r.subMu.Unlock()
	r.deliverMu.Lock()
	defer r.deliverMu.Unlock()
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
func (s *shardSub) down(op string, err error) {
	s.subscribed.Store(false)
	s.lastProbe.Store(0)
	s.r.trouble.record(op, err)
}

// healthy is Healthy for this subscription.
func (s *shardSub) healthy() error {
	if !s.subscribed.Load() {
		return fmt.Errorf("%w: not subscribed to %s", ErrUnhealthy, s.name())
	}
	last := s.lastProbe.Load()
	if last == 0 {
		return fmt.Errorf("%w: no probe came back on %s since subscribing", ErrUnhealthy, s.name())
	}
	if age := time.Since(time.Unix(0, last)); age >= unhealthyAfter*s.r.cfg.probeInterval {
		return fmt.Errorf("%w: last probe on %s came back %s ago", ErrUnhealthy, s.name(), age.Round(time.Millisecond))
	}
	return nil
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

// handle decodes one payload of subscription s; probes from this node set the lag, messages go
// to deliver.
func (r *Redis) handle(s *shardSub, payload string) {
	env, err := decodeEnvelope([]byte(payload))
	if err != nil {
		r.invalid.Inc()
		r.junk.warn("bus: ignoring an undecodable message", "channels", s.name(),
			"err", err, "bytes", len(payload))
		return
	}
	if env.Kind == kindProbe {
		if env.Node != r.node {
			return // another node's probe: its business
		}
		now := time.Now()
		r.lag.Set(max(0, now.Sub(time.Unix(0, env.Time)).Seconds()))
		s.waitingSince.Store(0)
		if s.subscribed.Load() {
			s.lastProbe.Store(now.UnixNano())
		}
		return
	}
	r.deliverMu.Lock()
	defer r.deliverMu.Unlock()
	safeDeliver(r.deliver, env.Msg, r.cfg.logger)
}

// probe is the probe goroutine: every probe interval (and at once after a subscription) it
// publishes a probe on each subscription that its receive goroutine times when it comes back. It
// is also the watchdog: a subscription that has read nothing for 2 intervals, not even our own
// probes, gets a PING, and after 3 it is replaced, which catches connections that died without
// being closed. Until it has read it once, it also checks the deployment's shard count.
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
			for _, s := range r.subs {
				s.watch(interval)
			}
		case <-r.kick:
		}
		failed := false
		for _, s := range r.subs {
			failed = !s.sendProbe() || failed
		}
		if failed {
			r.reloadClusterState() // on a cluster, a shard's slot may have moved
		}
		r.checkShards()
	}
}

// checkShards records the shard count in Redis if none is, keeps the record alive while nodes
// run (it expires shardsTTL after the last node stopped, so a deployment can change its count by
// stopping every node), and compares it with this node's: nodes that disagree would keep a
// topic's stream in two places, so the node reports itself unhealthy until they agree.
func (r *Redis) checkShards() {
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.timeout)
	defer cancel()
	key := r.channel(0) + ":shards"
	ttl := max(shardsTTL, 10*r.cfg.probeInterval)
	if err := r.client.SetNX(ctx, key, r.shards, ttl).Err(); err != nil {
		return // Redis trouble: the subscriptions' health says so
	}
	got, err := r.client.Get(ctx, key).Result()
	if err != nil {
		return
	}
	if got == strconv.Itoa(r.shards) {
		_ = r.client.PExpire(ctx, key, ttl).Err()
		if r.shardsErr.Swap(nil) != nil {
			r.cfg.logger.Info("bus: shard count agrees with the deployment's again", "shards", r.shards)
		}
		return
	}
	err = fmt.Errorf("%w: this node uses %d bus shards, the deployment %s (%s in Redis); "+
		"every node must use the same number", ErrUnhealthy, r.shards, strings.TrimSpace(got), key)
	if r.shardsErr.Swap(&err) == nil {
		r.cfg.logger.Error("bus: shard count disagrees with the deployment's; not healthy", "err", err)
	}
}

// sendProbe publishes one probe on the subscription's first channel and reports whether Redis
// took it.
func (s *shardSub) sendProbe() bool {
	r := s.r
	now := time.Now().UnixNano()
	s.waitingSince.CompareAndSwap(0, now)
	payload := `{"n":` + r.nodeJS + `,"k":"p","t":` + strconv.FormatInt(now, 10) + `}`
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.timeout)
	defer cancel()
	err := r.client.SPublish(ctx, s.channels[0], payload).Err()
	if err != nil && r.ctx.Err() == nil {
		r.trouble.record(opPublish, err)
	}
	// While probes go unanswered the lag gauge shows how long the oldest has waited, so an
	// outage is visible on it and not just a frozen last value.
	if since := s.waitingSince.Load(); since != 0 {
		waited := time.Since(time.Unix(0, since)).Seconds()
		if waited > r.cfg.probeInterval.Seconds() && waited > r.lag.Get() {
			r.lag.Set(waited)
		}
	}
	return err == nil
}

// watch replaces a subscription that has been silent for too long. Only time spent waiting in
// Receive counts: a slow deliver or a retry backoff is not the connection's fault.
func (s *shardSub) watch(interval time.Duration) {
	if !s.reading.Load() {
		return
	}
	silent := time.Since(time.Unix(0, s.lastRecv.Load()))
	switch {
	case silent >= 3*interval:
		s.psMu.Lock()
		ps := s.ps
		s.psMu.Unlock()
		if ps == nil {
			return
		}
		s.down(opSubscribe, errSilent{silent})
		s.lastRecv.Store(time.Now().UnixNano()) // give the new subscription its own 3 intervals
		s.resetPubSub(ps)
		s.r.reloadClusterState()
	case silent >= 2*interval:
		s.psMu.Lock()
		ps := s.ps
		s.psMu.Unlock()
		if ps != nil {
			ctx, cancel := context.WithTimeout(s.r.ctx, s.r.cfg.timeout)
			_ = ps.Ping(ctx) // the PONG arrives through Receive; a failed write reconnects
			cancel()
		}
	}
}

type errSilent struct{ d time.Duration }

func (e errSilent) Error() string {
	return "subscription silent for " + e.d.Round(time.Millisecond).String() + ", resubscribing"
}
