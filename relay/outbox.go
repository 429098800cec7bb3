package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/actors"
	"switchboard/hub"
	"switchboard/store/bus"
	"switchboard/store/outbox"
)

// Publisher publishes a broadcast on the bus (hub.Hub).
type Publisher interface {
	Broadcast(ctx context.Context, msg *hub.Message) (int, error)
}

// Checker checks a broadcast body (actors.Broadcasts).
type Checker interface {
	Check(body []byte, p actors.Producer) (*hub.Message, string)
}

// Defaults of OutboxConfig.
const (
	DefaultPollInterval = 2 * time.Second
	DefaultStuckAfter   = time.Minute
	DefaultBatch        = 500
	DefaultBatchBytes   = 8 << 20
	// takeoverInterval is how often a node that does not relay tries to take the lease: a dead
	// relay's rows move again within about this long after PostgreSQL saw its session end.
	takeoverInterval = time.Second
	maxBackoff       = 5 * time.Second
)

// OutboxConfig wires the outbox relay.
type OutboxConfig struct {
	Outbox *outbox.Outbox
	Hub    Publisher
	Rules  Checker
	// PollInterval: the safety net under NOTIFY (and SQLite's only way to see other
	// processes' rows). Default DefaultPollInterval.
	PollInterval time.Duration
	// StuckAfter: Healthy fails while the oldest waiting row is older than this.
	StuckAfter time.Duration
	Batch      int // rows per read; default DefaultBatch
	// MaxBytes is SWITCHBOARD_MAX_REQUEST_BYTES: a row's data larger than this is not even read
	// (it is dead-lettered), and a batch reads about DefaultBatchBytes of data at most.
	MaxBytes int64
	Logger   *slog.Logger
	Metrics  *metrics.Set
	// AfterPublish, when set, is called after a batch was published and before its rows are
	// deleted, with ctx ending at Stop (tests use it to stop a relay dead at that point).
	AfterPublish func(ctx context.Context, published int)
}

// Outbox is the outbox relay of one node.
type Outbox struct {
	cfg    OutboxConfig
	log    *slog.Logger
	m      counters
	wake   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
	// leading is true while this node holds the lease (Leading).
	leading atomic.Bool
	lagAt   time.Time // when drain last measured the lag (its goroutine only)
}

// StartOutbox starts the relay's goroutine: it tries to take the lease, and while it holds it,
// relays the waiting rows whenever it is woken (NOTIFY, Wake) or the poll interval passes.
func StartOutbox(cfg OutboxConfig) *Outbox {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.StuckAfter <= 0 {
		cfg.StuckAfter = DefaultStuckAfter
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 1 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	r := &Outbox{cfg: cfg, log: cfg.Logger, m: newCounters(cfg.Metrics, sourceOutbox),
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	go r.run()
	return r
}

// Wake tells the relay that rows were committed (the server's own writes); it never blocks.
func (r *Outbox) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Leading reports whether this node holds the relay's lease now: its own writes then need no
// NOTIFY to wake it (Wake does). A lease lost a moment later costs the new leader at most one
// poll interval for those rows.
func (r *Outbox) Leading() bool { return r.leading.Load() }

// Stop ends the relay and waits for it; the lease is released. Calling it again is a no-op.
func (r *Outbox) Stop() {
	r.once.Do(r.cancel)
	<-r.done
}

// Healthy fails while the oldest waiting row is older than StuckAfter: nobody relays (the
// relaying node hangs, the bus refuses) or the relay cannot keep up. It reads the database,
// so every node answers the same whichever relays.
func (r *Outbox) Healthy(ctx context.Context) error {
	age, err := r.cfg.Outbox.OldestAge(ctx)
	if err != nil {
		return err
	}
	if age > r.cfg.StuckAfter {
		return fmt.Errorf("relay stuck: the oldest outbox row has waited %s (more than %s)", age.Round(time.Second), r.cfg.StuckAfter)
	}
	return nil
}

func (r *Outbox) run() {
	defer close(r.done)
	ctx := r.ctx
	listener := r.cfg.Outbox.Listen(r.log)
	defer listener.Close()
	var notify <-chan struct{}
	if listener != nil {
		notify = listener.C
	}
	var lease *outbox.Lease
	defer func() {
		r.leading.Store(false)
		lease.Release()
		r.m.leader.Set(0)
	}()
	backoff := 100 * time.Millisecond
	leadFailing := false // logged once per outage, not once a second
	for ctx.Err() == nil {
		if lease == nil {
			var l *outbox.Lease
			err := bounded(ctx, func(ctx context.Context) (err error) { l, err = r.cfg.Outbox.Lead(ctx); return err })
			switch {
			case err != nil && ctx.Err() == nil && !leadFailing:
				leadFailing = true
				r.log.Warn("outbox relay: cannot try for the lease; trying every second", "err", err)
			case err == nil && leadFailing:
				leadFailing = false
				r.log.Info("outbox relay: the database answers again")
			}
			if l == nil {
				r.observeLag(ctx)
				wait(ctx, nil, nil, takeoverInterval)
				continue
			}
			lease = l
			r.leading.Store(true)
			r.m.leader.Set(1)
			r.log.Info("outbox relay: this node relays the outbox")
		}
		err := r.drain(ctx, lease)
		if err != nil {
			r.observeLag(ctx) // drain measured it unless it stopped early
		}
		if errors.Is(err, outbox.ErrLeaseLost) {
			if ctx.Err() == nil {
				r.log.Warn("outbox relay: lease lost; another node may relay", "err", err)
			}
			r.leading.Store(false)
			lease.Release()
			lease = nil
			r.m.leader.Set(0)
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.m.retries.Inc()
			r.log.Warn("outbox relay: will retry", "in", backoff, "err", err)
			wait(ctx, nil, nil, backoff)
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = 100 * time.Millisecond
		wait(ctx, notify, r.wake, r.cfg.PollInterval)
	}
}

// observeLag sets relay_lag_seconds from the database (every node, leading or not).
func (r *Outbox) observeLag(ctx context.Context) {
	var age time.Duration
	err := bounded(ctx, func(ctx context.Context) (err error) { age, err = r.cfg.Outbox.OldestAge(ctx); return err })
	if err == nil {
		r.m.lag.Set(age.Seconds())
	}
}

// drain relays batches until the outbox is empty or a step fails. Before each batch it checks
// the lease (a long backlog is not relayed on by a node that lost it), and it measures the lag
// at most every lagEvery, so a backlog shows while it is worked off; the
// empty read that ends it sets the lag to 0 without asking. (Under a stream of writes the relay
// is woken again and again for a few rows: a query for the lag before each batch and after
// each drain was half of what it asked the database.)
func (r *Outbox) drain(ctx context.Context, lease *outbox.Lease) error {
	for {
		if err := bounded(ctx, lease.Check); err != nil {
			return err
		}
		if now := time.Now(); now.Sub(r.lagAt) >= lagEvery {
			r.observeLag(ctx)
			r.lagAt = now
		}
		n, full, err := r.batch(ctx)
		if err != nil {
			return err
		}
		if n == 0 {
			r.m.lag.Set(0)
			return nil
		}
		if !full {
			// The read held every row committed when it ran; a row committed since woke the
			// relay again (NOTIFY or Wake), so asking once more now would find nothing or
			// what the next drain finds anyway.
			return nil
		}
	}
}

// lagEvery is how often a drain measures the lag while rows keep coming.
const lagEvery = 100 * time.Millisecond

// batch relays up to Batch rows in id order: each is checked, published (or dead-lettered),
// and the published ones are deleted together. A failure to publish stops the batch there:
// what was published is deleted, the rest waits for the retry, in order. full reports whether
// the read may have left rows behind (it reached Batch rows or the byte budget).
func (r *Outbox) batch(ctx context.Context) (n int, full bool, err error) {
	var rows []outbox.Row
	err = bounded(ctx, func(ctx context.Context) (err error) {
		rows, err = r.cfg.Outbox.Pending(ctx, 0, r.cfg.Batch, r.cfg.MaxBytes, DefaultBatchBytes)
		return err
	})
	if err != nil || len(rows) == 0 {
		return 0, false, err
	}
	// Pending stops before a row once the rows before it hold the budget (rows over MaxBytes
	// count 0), so a read that left rows behind for the budget returned at least that much.
	var read int64
	for _, row := range rows {
		if row.Size <= r.cfg.MaxBytes {
			read += row.Size
		}
	}
	full = len(rows) >= r.cfg.Batch || read >= DefaultBatchBytes
	done := make([]int64, 0, len(rows))
	var failed error
	for _, row := range rows {
		msg, reason := r.check(row)
		if reason == "" {
			ok, why, err := r.m.publish(ctx, r.cfg.Hub, msg)
			if err != nil {
				failed = fmt.Errorf("publish outbox row %d: %w", row.ID, err)
				break
			}
			if ok {
				done = append(done, row.ID)
				continue
			}
			reason = why
		}
		err := bounded(ctx, func(ctx context.Context) error { return r.cfg.Outbox.DeadLetter(ctx, row.ID, reason) })
		if err != nil {
			failed = err
			break
		}
		r.m.dead.Inc()
		r.log.Warn("outbox relay: row dead-lettered", "id", row.ID, "topic", row.Topic, "reason", reason)
	}
	if len(done) > 0 && r.cfg.AfterPublish != nil {
		r.cfg.AfterPublish(ctx, len(done))
		if ctx.Err() != nil {
			return 0, false, ctx.Err()
		}
	}
	if err := bounded(ctx, func(ctx context.Context) error { return r.cfg.Outbox.Delete(ctx, done) }); err != nil {
		// Published and not deleted: they go out again, and the bus's dedup drops them.
		return 0, false, err
	}
	if failed != nil {
		return 0, false, failed
	}
	return len(rows), full, nil
}

// check turns a row into the broadcast the rules accept, or the reason they refuse it.
func (r *Outbox) check(row outbox.Row) (*hub.Message, string) {
	if row.Size > r.cfg.MaxBytes {
		return nil, fmt.Sprintf("data of %d bytes is larger than SWITCHBOARD_MAX_REQUEST_BYTES (%d)", row.Size, r.cfg.MaxBytes)
	}
	pkgID, err := outbox.ParsePkgID(row.PkgID)
	if err != nil {
		return nil, err.Error()
	}
	if !json.Valid([]byte(row.Data)) {
		return nil, "data is not valid JSON"
	}
	if row.Key == "" || len(row.Key) > bus.MaxKeyLen {
		return nil, fmt.Sprintf("idempotency_key must be 1 to %d bytes, got %d", bus.MaxKeyLen, len(row.Key))
	}
	body := make([]byte, 0, len(row.Data)+len(row.Topic)+40)
	body = append(body, `{"pkg_id":`...)
	body = strconv.AppendInt(body, int64(pkgID), 10)
	if row.Topic != "" {
		t, _ := json.Marshal(row.Topic) // a string always marshals
		body = append(append(body, `,"topic":`...), t...)
	}
	body = append(append(append(body, `,"data":`...), row.Data...), '}')
	msg, reason := r.cfg.Rules.Check(body, actors.ProducerServer)
	if msg != nil {
		msg.Key = row.Key
	}
	return msg, reason
}

// dbTimeout bounds each database call of the relay: the driver does not interrupt a query
// when a context without a deadline is cancelled, so Stop waits at most this long for one that
// a frozen database holds.
const dbTimeout = 5 * time.Second

// bounded runs fn with ctx bounded by dbTimeout.
func bounded(ctx context.Context, fn func(ctx context.Context) error) error {
	c, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	return fn(c)
}

// wait returns when ctx ends, a or b delivers, or d passes.
func wait(ctx context.Context, a, b <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-a:
	case <-b:
	case <-t.C:
	}
}
