package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/actors"
	"switchboard/hub"
	"switchboard/store/bus"
	"switchboard/store/inbox"
)

// InboxConfig wires the stream inbox relay.
type InboxConfig struct {
	Inbox *inbox.Inbox
	Hub   Publisher
	Rules Checker
	// ClaimAfter: entries another node took and left unacknowledged this long are taken over
	// (SWITCHBOARD_INBOX_CLAIM_AFTER).
	ClaimAfter time.Duration
	Logger     *slog.Logger
	Metrics    *metrics.Set
	// AfterPublish, when set, is called after a batch was published and before it is
	// acknowledged, with ctx ending at Stop (tests).
	AfterPublish func(ctx context.Context, published int)
}

// Inbox is the stream inbox relay of one node.
type Inbox struct {
	cfg     InboxConfig
	log     *slog.Logger
	m       counters
	claimed *metrics.Counter
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	once    sync.Once
}

const (
	inboxBatch = 100
	inboxBlock = time.Second
)

// StartInbox starts the inbox relay's goroutine.
func StartInbox(cfg InboxConfig) *Inbox {
	if cfg.ClaimAfter <= 0 {
		cfg.ClaimAfter = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	r := &Inbox{cfg: cfg, log: cfg.Logger, m: newCounters(cfg.Metrics, sourceInbox),
		claimed: cfg.Metrics.GetOrCreateCounter(`relay_claimed_total{source="inbox"}`), done: make(chan struct{})}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	go r.run()
	return r
}

// Stop ends the relay and waits for it. Entries it took and did not acknowledge stay pending
// and are claimed by another node (or this one after a restart with the same id) later.
func (r *Inbox) Stop() {
	r.once.Do(r.cancel)
	<-r.done
}

func (r *Inbox) run() {
	defer close(r.done)
	ctx := r.ctx
	backoff := 100 * time.Millisecond
	retry := func(err error) {
		r.m.retries.Inc()
		r.log.Warn("stream inbox relay: will retry", "in", backoff, "err", err)
		wait(ctx, nil, nil, backoff)
		backoff = min(2*backoff, maxBackoff)
	}
	grouped, pending := false, true // after a start or a failure, this node's own pending entries first
	var lastClaim time.Time
	for ctx.Err() == nil {
		if !grouped {
			if err := r.cfg.Inbox.EnsureGroup(ctx); err != nil {
				if ctx.Err() == nil {
					retry(err)
				}
				continue
			}
			grouped = true
		}
		if time.Since(lastClaim) >= r.cfg.ClaimAfter/4 {
			lastClaim = time.Now()
			es, err := r.cfg.Inbox.Claim(ctx, r.cfg.ClaimAfter, inboxBatch)
			if perr := r.cfg.Inbox.Prune(ctx, max(10*r.cfg.ClaimAfter, 10*time.Minute)); perr != nil && ctx.Err() == nil {
				r.log.Debug("stream inbox relay: pruning consumers", "err", perr)
			}
			if err == nil && len(es) > 0 {
				r.claimed.Add(len(es))
				r.log.Info("stream inbox relay: took over entries another node left", "entries", len(es))
				err = r.relay(ctx, es)
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				grouped, pending = !inbox.IsNoGroup(err), true
				retry(err)
				continue
			}
		}
		es, err := r.cfg.Inbox.Read(ctx, pending, inboxBatch, inboxBlock)
		if err == nil {
			if pending && len(es) == 0 {
				pending = false
			}
			err = r.relay(ctx, es)
		}
		if age, aerr := r.cfg.Inbox.OldestAge(ctx); aerr == nil {
			r.m.lag.Set(age.Seconds())
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			grouped, pending = !inbox.IsNoGroup(err), true
			retry(err)
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// relay publishes entries in order, dead-letters those the rules refuse, and acknowledges the
// published ones together; it stops at the first that cannot be published now (the rest stay
// pending and are read again).
func (r *Inbox) relay(ctx context.Context, es []Entry) error {
	done := make([]string, 0, len(es))
	var failed error
	for _, e := range es {
		if e.Fields == nil { // deleted while pending: nothing to publish
			done = append(done, e.ID)
			continue
		}
		msg, reason := r.check(e)
		if reason == "" {
			ok, why, err := r.m.publish(ctx, r.cfg.Hub, msg)
			if err != nil {
				failed = fmt.Errorf("publish stream entry %s: %w", e.ID, err)
				break
			}
			if ok {
				done = append(done, e.ID)
				continue
			}
			reason = why
		}
		if err := r.cfg.Inbox.DeadLetter(ctx, inbox.Entry(e), reason); err != nil {
			failed = err
			break
		}
		r.m.dead.Inc()
		r.log.Warn("stream inbox relay: entry dead-lettered", "id", e.ID, "reason", reason)
	}
	if len(done) > 0 && r.cfg.AfterPublish != nil {
		r.cfg.AfterPublish(ctx, len(done))
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if err := r.cfg.Inbox.Done(ctx, done); err != nil {
		return err // published, not acknowledged: published again later, dropped by the dedup
	}
	return failed
}

// Entry is an inbox entry (an alias, so the relay's signatures read as its own).
type Entry = inbox.Entry

// check turns an entry into the broadcast the rules accept (as an external producer's), or
// the reason they refuse it.
func (r *Inbox) check(e Entry) (*hub.Message, string) {
	f := e.Fields // other fields are ignored, as POST /api/broadcast ignores other keys
	raw, ok := f["pkg_id"]
	if !ok {
		return nil, "pkg_id is missing"
	}
	pkgID, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || pkgID < 0 || pkgID > 1<<31-1 {
		return nil, fmt.Sprintf("pkg_id %.40q is not a whole number in 0..2147483647", raw)
	}
	data, ok := f["data"]
	if !ok {
		data = "{}"
	}
	if !json.Valid([]byte(data)) {
		return nil, "data is not valid JSON"
	}
	key, ok := f["key"]
	if !ok {
		key = "inbox:" + e.ID
	}
	if key == "" || len(key) > bus.MaxKeyLen {
		return nil, fmt.Sprintf("key must be 1 to %d bytes, got %d", bus.MaxKeyLen, len(key))
	}
	body := make([]byte, 0, len(data)+64)
	body = append(body, `{"pkg_id":`...)
	body = strconv.AppendInt(body, pkgID, 10)
	if t, ok := f["topic"]; ok && t != "" {
		tj, _ := json.Marshal(t)
		body = append(append(body, `,"topic":`...), tj...)
	}
	body = append(append(append(body, `,"data":`...), data...), '}')
	msg, reason := r.cfg.Rules.Check(body, actors.ProducerExternal)
	if msg != nil {
		msg.Key = key
	}
	return msg, reason
}
