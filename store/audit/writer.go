package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/store"
)

// Writer defaults.
const (
	DefaultQueueSize     = 10000
	DefaultBatchSize     = 200
	DefaultFlushInterval = time.Second
	DefaultWriteTimeout  = 5 * time.Second
)

// dropWarnEvery bounds the "queue full" warning to one line per period, however many entries
// are dropped.
const dropWarnEvery = 10 * time.Second

// Longest text kept in a string column (in bytes, cut on a rune boundary). The values come
// from clients (user agent, resource path), so they are bounded like request data.
const (
	maxFieldBytes = 1024
	maxErrorBytes = 4096
)

// Metric names (PROTOCOL.md §7).
const (
	MetricWritten = "audit_logs_written_total"
	MetricDropped = "audit_logs_dropped_total"
)

// WriterConfig configures a Writer; zero fields take the defaults above.
type WriterConfig struct {
	QueueSize     int           // entries waiting for the writer goroutine; beyond it Record drops
	BatchSize     int           // rows per INSERT; a full batch is written at once
	FlushInterval time.Duration // longest time an entry waits for its batch to fill
	WriteTimeout  time.Duration // bound of one INSERT
	Logger        *slog.Logger  // nil: discard
	Metrics       *metrics.Set  // nil: a private set (the counters still work, unexported)
}

// Writer records audit entries asynchronously: Record puts an entry on a bounded queue and
// returns; one goroutine inserts the queued entries in multi-row batches. Every recorded entry
// ends up either written (audit_logs_written_total) or dropped (audit_logs_dropped_total):
// dropped when the queue is full, when Record is called after Close, when its batch fails
// (logged; a batch is never retried, so a dead database cannot hold memory or the shutdown)
// or when Close's context ends before it was written.
type Writer struct {
	db      *store.DB
	cfg     WriterConfig
	log     *slog.Logger
	written *metrics.Counter
	dropped *metrics.Counter

	// mu orders Record against Close: Record holds it shared around its non-blocking send, so
	// once Close holds it exclusively no entry can slip into the queue behind the final drain.
	mu     sync.RWMutex
	closed bool

	queue    chan Entry
	stop     chan struct{}   // closed by Close
	closeCtx context.Context // set by Close before stop is closed
	done     chan struct{}   // closed when run returns
	closeErr error           // run's result, read after done

	lastDropWarn atomic.Int64 // unix nanoseconds of the last "queue full" warning

	// Owned by the writer goroutine: failed batches are logged at most once per dropWarnEvery,
	// so a dead database under heavy traffic does not flood the log.
	lastFailLog    time.Time
	failsSinceLast int
	query          []byte // the INSERT's text, reused by the next batch
}

// maxKeptQuery bounds the INSERT buffer the writer keeps between batches.
const maxKeptQuery = 1 << 20

// NewWriter starts a Writer over db. Close it before closing db.
func NewWriter(db *store.DB, cfg WriterConfig) *Writer {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	w := &Writer{
		db:      db,
		cfg:     cfg,
		log:     cfg.Logger,
		written: cfg.Metrics.GetOrCreateCounter(MetricWritten),
		dropped: cfg.Metrics.GetOrCreateCounter(MetricDropped),
		queue:   make(chan Entry, cfg.QueueSize),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go w.run()
	return w
}

// Record queues e and returns at once; it never waits for the database. It redacts
// e.RequestData (see Redact), sets a zero Timestamp to now, stores times in UTC with
// microsecond precision (what both databases keep), replaces an unknown Outcome by
// OutcomeError, and makes string fields storable (valid UTF-8, no NUL bytes, bounded length).
// e.ID is ignored: the database assigns ids. When the queue is full, or after Close, the entry
// is dropped and counted. e.UserRoles is copied, so the caller may reuse it.
func (w *Writer) Record(e Entry) {
	e = w.prepare(e)
	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		w.drop(1, "writer closed")
		return
	}
	select {
	case w.queue <- e:
		w.mu.RUnlock()
	default:
		w.mu.RUnlock()
		w.drop(1, "queue full")
	}
}

func (w *Writer) prepare(e Entry) Entry {
	e.ID = 0
	if e.Timestamp.IsZero() {
		e.Timestamp = time.Now()
	}
	e.Timestamp = e.Timestamp.UTC().Truncate(time.Microsecond)
	e.RequestData, e.RequestValue = RedactDecoded(e.RequestData, e.RequestValue), nil
	if e.UserRoles == nil {
		e.UserRoles = []string{}
	} else {
		e.UserRoles = slices.Clone(e.UserRoles)
		for i, r := range e.UserRoles {
			e.UserRoles[i] = clean(r, maxFieldBytes)
		}
	}
	if !validOutcome(e.Outcome) {
		e.Outcome = OutcomeError
	}
	for _, s := range []*string{&e.UserID, &e.Username, &e.ActionType, &e.Resource, &e.IPAddress, &e.UserAgent, &e.RequestID} {
		*s = clean(*s, maxFieldBytes)
	}
	if e.ErrorMessage != nil {
		m := clean(*e.ErrorMessage, maxErrorBytes)
		e.ErrorMessage = &m
	}
	return e
}

// clean makes s storable in a text column of either database: PostgreSQL rejects invalid UTF-8
// and NUL, and bun refuses to inline a string holding NUL. One bad value must not fail a batch.
func clean(s string, limit int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	if len(s) > limit {
		cut := limit
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// drop counts n lost entries and warns at most once per dropWarnEvery.
func (w *Writer) drop(n int, reason string) {
	w.dropped.Add(n)
	now := time.Now().UnixNano()
	last := w.lastDropWarn.Load()
	if now-last < int64(dropWarnEvery) || !w.lastDropWarn.CompareAndSwap(last, now) {
		return
	}
	w.log.Warn("audit entries dropped", "reason", reason, "dropped_total", w.dropped.Get(),
		"queue_size", w.cfg.QueueSize)
}

// Close stops accepting entries, writes what is queued and waits for the writer goroutine,
// all within ctx. It returns an error when entries were lost on the way (a failed final batch,
// or ctx ending first); if ctx ends first, the goroutine gives up the remaining entries (counted
// as dropped) and exits as soon as its current INSERT returns. Later calls return nil at once.
func (w *Writer) Close(ctx context.Context) error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.closeCtx = ctx
	w.mu.Unlock()
	close(w.stop)

	select {
	case <-w.done:
		return w.closeErr
	case <-ctx.Done():
		return fmt.Errorf("audit: close: %w", ctx.Err())
	}
}

// run is the writer goroutine: it owns batch and is the only one to insert.
func (w *Writer) run() {
	defer close(w.done)
	batch := make([]Entry, 0, w.cfg.BatchSize)
	timer := time.NewTimer(w.cfg.FlushInterval)
	timer.Stop()
	var timerC <-chan time.Time // nil (never ready) while batch is empty

	for {
		select {
		case e := <-w.queue:
			batch = append(batch, e)
			if len(batch) == 1 {
				// The interval counts from the oldest waiting entry, so no entry waits longer.
				timer.Reset(w.cfg.FlushInterval)
				timerC = timer.C
			}
			if len(batch) >= w.cfg.BatchSize {
				timer.Stop()
				timerC = nil
				w.flush(context.Background(), batch)
				batch = reset(batch)
			}
		case <-timerC:
			timerC = nil
			w.flush(context.Background(), batch)
			batch = reset(batch)
		case <-w.stop:
			timer.Stop()
			w.closeErr = w.drain(w.closeCtx, batch)
			return
		}
	}
}

// drain writes batch and everything still queued within ctx. Record cannot add to the queue any
// more (closed is set), so the loop ends.
func (w *Writer) drain(ctx context.Context, batch []Entry) error {
	var errs []error
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if ctx.Err() != nil {
			w.drop(len(batch), "closing: "+ctx.Err().Error())
			errs = append(errs, fmt.Errorf("%d entries not written: %w", len(batch), ctx.Err()))
		} else if err := w.flush(ctx, batch); err != nil {
			errs = append(errs, err)
		}
		batch = reset(batch)
	}
	for {
		select {
		case e := <-w.queue:
			batch = append(batch, e)
			if len(batch) >= w.cfg.BatchSize {
				flush()
			}
		default:
			flush()
			if err := errors.Join(errs...); err != nil {
				return fmt.Errorf("audit: close: %w", err)
			}
			return nil
		}
	}
}

// flush inserts batch in one statement. A failure is logged (at most once per dropWarnEvery,
// with the number of batches lost since the last line) and the batch counted as dropped.
func (w *Writer) flush(parent context.Context, batch []Entry) error {
	if len(batch) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(parent, w.cfg.WriteTimeout)
	defer cancel()
	// RETURNING NULL: the ids are not needed, and scanning them back costs a round of work.
	// The statement is built in a buffer kept between batches: built afresh, its text (all the
	// batch's request data, quoted) grows by doubling, several times the final size in garbage.
	q := w.db.Bun.NewInsert().Model(&batch).Returning("NULL")
	query, err := q.AppendQuery(w.db.Bun.QueryGen(), w.query[:0])
	if err == nil {
		_, err = w.db.Bun.ExecContext(ctx, string(query))
		if cap(query) <= maxKeptQuery {
			w.query = query
		}
	}
	if err != nil {
		err = fmt.Errorf("%w: insert %d audit entries: %w", store.ErrDatabase, len(batch), err)
		w.dropped.Add(len(batch))
		w.failsSinceLast++
		if now := time.Now(); now.Sub(w.lastFailLog) >= dropWarnEvery {
			w.log.Error("audit batch lost", "entries", len(batch), "failed_batches", w.failsSinceLast,
				"dropped_total", w.dropped.Get(), "err", err)
			w.lastFailLog, w.failsSinceLast = now, 0
		}
		return err
	}
	w.written.Add(len(batch))
	return nil
}

// reset empties batch for reuse, letting go of the entries' data.
func reset(batch []Entry) []Entry {
	clear(batch)
	return batch[:0]
}
