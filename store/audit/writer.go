package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
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
	DefaultQueueBytes    = 64 << 20
	DefaultBatchSize     = 200
	DefaultFlushInterval = time.Second
	DefaultWriteTimeout  = 5 * time.Second
	DefaultRetryMin      = 100 * time.Millisecond
	DefaultRetryMax      = 2 * time.Second
)

// warnEvery bounds each kind of warning (entries dropped, writes failing) to one line per
// period, however many entries or batches are concerned.
const warnEvery = 10 * time.Second

// Longest text kept in a string column (in bytes, cut on a rune boundary). The values come
// from clients (user agent, resource path), so they are bounded like request data.
const (
	maxFieldBytes = 1024
	maxErrorBytes = 4096
)

// Metric names (docs/protocol.md §7, and the writer's own).
const (
	MetricWritten = "audit_logs_written_total"
	MetricDropped = "audit_logs_dropped_total"
	// MetricRetries counts failed writes of a batch that the writer tries again.
	MetricRetries = "audit_write_retries_total"
	// MetricQueued is a gauge of the entries waiting to be written (the queue and the batch in
	// hand).
	MetricQueued = "audit_logs_queued"
)

// WriterConfig configures a Writer; zero fields take the defaults above.
type WriterConfig struct {
	QueueSize     int           // entries waiting for the writer goroutine; beyond it Record drops
	QueueBytes    int64         // their size (request data, text fields, a fixed overhead); beyond it Record drops
	BatchSize     int           // rows per INSERT; a full batch is written at once
	FlushInterval time.Duration // longest time an entry waits for its batch to fill
	WriteTimeout  time.Duration // bound of one INSERT
	RetryMin      time.Duration // first wait before writing a failed batch again
	RetryMax      time.Duration // longest wait between two tries (the wait doubles up to it)
	Logger        *slog.Logger  // nil: discard
	Metrics       *metrics.Set  // nil: a private set (the counters still work, unexported)
}

// Writer records audit entries asynchronously: Record puts an entry on a bounded queue and
// returns; one goroutine inserts the queued entries in multi-row batches.
//
// A batch that fails for a reason that can pass (the database restarting, unreachable, hanging
// past WriteTimeout) is written again with a growing pause (RetryMin doubling up to RetryMax)
// until it succeeds, however long that takes; meanwhile new entries wait in the queue, so an
// outage loses nothing as long as the queue holds what arrives during it. On PostgreSQL a batch
// takes its ids from the table's sequence before its first try, so a try that committed with
// its answer lost is not written twice (see reserveIDs). A batch the database refuses for what
// it holds is split in halves until the refused rows are found; they alone are dropped.
//
// Every recorded entry ends up either written (audit_logs_written_total) or dropped
// (audit_logs_dropped_total, with a warning line at most every 10 s saying how many and why):
// dropped when the queue is full, when Record is called after Close, when the database refuses
// that row, when the database handle was closed, or when Close's context ends before it was
// written.
type Writer struct {
	db      *store.DB
	cfg     WriterConfig
	log     *slog.Logger
	written *metrics.Counter
	dropped *metrics.Counter
	retries *metrics.Counter
	drops   dropLog

	// mu orders Record against Close: Record holds it shared around its non-blocking send, so
	// once Close holds it exclusively no entry can slip into the queue behind the final drain.
	mu     sync.RWMutex
	closed bool

	queue     chan Entry
	held      atomic.Int64       // entries taken from the queue and not yet written or dropped
	bytes     atomic.Int64       // entrySize of every entry queued or held
	stop      chan struct{}      // closed by Close
	runCtx    context.Context    // ends when Close's context ends: the writer gives up
	cancelRun context.CancelFunc // called by Close when its context ends
	done      chan struct{}      // closed when run returns
	closeErr  error              // run's result, read after done

	// Owned by the writer goroutine.
	lostAtClose   int       // entries dropped after Close was called
	lastRetryWarn time.Time // failed writes are logged at most once per warnEvery
	query         []byte    // the INSERT's text, reused by the next batch
	idSequence    string    // PostgreSQL: the sequence of user_actions.id
}

// maxKeptQuery bounds the INSERT buffer the writer keeps between batches.
const maxKeptQuery = 1 << 20

// NewWriter starts a Writer over db. Close it before closing db.
func NewWriter(db *store.DB, cfg WriterConfig) *Writer {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = DefaultQueueBytes
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
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(DefaultRetryMax, cfg.RetryMin)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	runCtx, cancelRun := context.WithCancel(context.Background())
	w := &Writer{
		db:        db,
		cfg:       cfg,
		log:       cfg.Logger,
		written:   cfg.Metrics.GetOrCreateCounter(MetricWritten),
		dropped:   cfg.Metrics.GetOrCreateCounter(MetricDropped),
		retries:   cfg.Metrics.GetOrCreateCounter(MetricRetries),
		queue:     make(chan Entry, cfg.QueueSize),
		stop:      make(chan struct{}),
		runCtx:    runCtx,
		cancelRun: cancelRun,
		done:      make(chan struct{}),
	}
	w.drops.log = cfg.Logger
	cfg.Metrics.GetOrCreateGauge(MetricQueued, func() float64 {
		return float64(len(w.queue)) + float64(w.held.Load())
	})
	go w.run()
	return w
}

// Record queues e and returns at once; it never waits for the database. It redacts
// e.RequestData (see Redact), sets a zero Timestamp to now, stores times in UTC with
// microsecond precision (what both databases keep), replaces an unknown Outcome by
// OutcomeError, and makes string fields storable (valid UTF-8, no NUL bytes, bounded length).
// e.ID is ignored: the database assigns ids. When the queue is full, or after Close, the entry
// is dropped and counted; so is it when the entries waiting would hold more than QueueBytes.
// e.UserRoles is copied, so the caller may reuse it.
func (w *Writer) Record(e Entry) {
	e = w.prepare(e)
	size := entrySize(&e)
	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		w.drop(1, dropClosed, nil)
		return
	}
	if w.bytes.Add(size) > w.cfg.QueueBytes {
		w.bytes.Add(-size)
		w.mu.RUnlock()
		w.drop(1, dropQueueFull, nil)
		return
	}
	select {
	case w.queue <- e:
		w.mu.RUnlock()
	default:
		w.bytes.Add(-size)
		w.mu.RUnlock()
		w.drop(1, dropQueueFull, nil)
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

// entryOverhead approximates what an entry costs in memory besides its variable data.
const entryOverhead = 256

// entrySize approximates the memory an entry holds while it waits, for the QueueBytes bound.
func entrySize(e *Entry) int64 {
	n := entryOverhead + len(e.RequestData) + len(e.UserID) + len(e.Username) + len(e.ActionType) +
		len(e.Resource) + len(e.IPAddress) + len(e.UserAgent) + len(e.RequestID)
	for _, r := range e.UserRoles {
		n += len(r) + 16
	}
	if e.ErrorMessage != nil {
		n += len(*e.ErrorMessage)
	}
	return int64(n)
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

// drop counts n entries lost for reason (err: the database's refusal, or nil).
func (w *Writer) drop(n int, reason dropReason, err error) {
	if n <= 0 {
		return
	}
	w.dropped.Add(n)
	w.drops.add(n, reason, err, w.dropped.Get())
}

// Close stops accepting entries, writes what is queued and waits for the writer goroutine,
// all within ctx. Writes that fail for a reason that can pass are retried until ctx ends; then
// the goroutine gives up what it still holds (counted as dropped) and exits as soon as its
// current statement returns (within WriteTimeout), while Close returns ctx's error at once.
// The error wraps ErrEntriesLost when entries were lost on the way. Later calls return nil at
// once.
func (w *Writer) Close(ctx context.Context) error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	close(w.stop)

	select {
	case <-w.done:
		return w.closeErr
	case <-ctx.Done():
		w.cancelRun()
		return fmt.Errorf("audit: close: %w: %w", ErrEntriesLost, ctx.Err())
	}
}

// run is the writer goroutine: it owns batch and is the only one to insert.
func (w *Writer) run() {
	defer close(w.done)
	defer w.cancelRun()
	batch := make([]Entry, 0, w.cfg.BatchSize)
	timer := time.NewTimer(w.cfg.FlushInterval)
	timer.Stop()
	var timerC <-chan time.Time // nil (never ready) while batch is empty

	for {
		select {
		case e := <-w.queue:
			w.held.Add(1)
			batch = append(batch, e)
			if len(batch) == 1 {
				// The interval counts from the oldest waiting entry, so no entry waits longer.
				timer.Reset(w.cfg.FlushInterval)
				timerC = timer.C
			}
			if len(batch) < w.cfg.BatchSize {
				continue
			}
			timer.Stop()
			timerC = nil
		case <-timerC:
			timerC = nil
		case <-w.stop:
			timer.Stop()
			w.closeErr = w.drain(batch)
			return
		}
		if !w.store(batch) {
			// Only Close's deadline abandons a write; Record no longer queues.
			w.closeErr = w.drain(nil)
			return
		}
		batch = reset(batch)
	}
}

// drain writes batch and everything still queued, until the queue is empty or Close's context
// ends (then the rest is dropped). Record cannot add to the queue any more (closed is set), so
// the loop ends. It returns Close's result.
func (w *Writer) drain(batch []Entry) error {
	for {
		for len(batch) < w.cfg.BatchSize {
			select {
			case e := <-w.queue:
				w.held.Add(1)
				batch = append(batch, e)
				continue
			default:
			}
			break
		}
		if len(batch) == 0 {
			break
		}
		if w.runCtx.Err() != nil {
			w.lose(dropShutdown, nil, batch)
		} else {
			w.store(batch)
		}
		batch = reset(batch)
	}
	w.drops.flush(w.dropped.Get()) // whatever was lost at the end is said before the process goes
	if w.lostAtClose == 0 {
		return nil
	}
	cause := store.ErrDatabase
	if err := w.runCtx.Err(); err != nil {
		cause = context.DeadlineExceeded
	}
	return fmt.Errorf("audit: close: %w: %d entries not written: %w", ErrEntriesLost, w.lostAtClose, cause)
}

// store writes batch. A write that fails for a reason that can pass is tried again, with a
// growing pause, until it succeeds or Close's context ends (then store drops what is left and
// returns false). A batch the database refuses is split in halves until the refused rows are
// found; those are dropped.
func (w *Writer) store(batch []Entry) bool {
	work := [][]Entry{batch}
	fresh := true // no try of these rows was sent yet
	for len(work) > 0 {
		b := work[len(work)-1]
		work = work[:len(work)-1]
		err := w.insertRetrying(b, fresh)
		fresh = false
		switch {
		case err == nil:
			w.written.Add(len(b))
			w.release(b)
		case errors.Is(err, errAbandoned):
			w.lose(dropShutdown, nil, append(work, b)...)
			return false
		case classify(err) == failClosed:
			w.lose(dropDBClosed, err, append(work, b)...)
			return true
		case len(b) == 1:
			w.lose(dropRejected, err, b)
		default:
			mid := len(b) / 2
			work = append(work, b[mid:], b[:mid]) // the first half is written first
		}
	}
	return true
}

// release lets go of held entries that were written or dropped.
func (w *Writer) release(b []Entry) {
	w.held.Add(-int64(len(b)))
	var size int64
	for i := range b {
		size += entrySize(&b[i])
	}
	w.bytes.Add(-size)
}

// lose drops held entries (every part of parts) for reason.
func (w *Writer) lose(reason dropReason, err error, parts ...[]Entry) {
	n := 0
	for _, b := range parts {
		n += len(b)
		w.release(b)
	}
	if w.isClosing() {
		w.lostAtClose += n
	}
	w.drop(n, reason, err)
}

func (w *Writer) isClosing() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// insertRetrying writes b, trying again after failures that can pass. It returns nil once b is
// written, errAbandoned when Close's context ended first, or the error of a write that
// retrying cannot fix (failRejected, failClosed). fresh says that no earlier try of these
// rows was sent.
func (w *Writer) insertRetrying(b []Entry, fresh bool) error {
	var (
		began    time.Time
		attempts int
		pause    = w.cfg.RetryMin
	)
	for {
		if w.runCtx.Err() != nil {
			return errAbandoned
		}
		err := w.reserveIDs(b)
		if err == nil {
			err = w.insert(b, fresh && attempts == 0)
		}
		if err == nil {
			if attempts > 0 {
				w.log.Info("audit log writes resumed", "entries", len(b), "failed_tries", attempts,
					"after", time.Since(began).Round(time.Millisecond))
			}
			return nil
		}
		if c := classify(err); c == failRejected || c == failClosed {
			return err
		}
		if attempts == 0 {
			began = time.Now()
		}
		attempts++
		w.retries.Inc()
		if now := time.Now(); now.Sub(w.lastRetryWarn) >= warnEvery {
			w.lastRetryWarn = now
			w.log.Warn("audit batch not written; retrying", "entries", len(b), "failed_tries", attempts,
				"queued", len(w.queue), "queue_size", w.cfg.QueueSize, "err", err)
		}
		// Jitter, so that several nodes do not come back in step.
		wait := pause/2 + rand.N(pause/2+1)
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-w.runCtx.Done():
			timer.Stop()
			return errAbandoned
		}
		pause = min(2*pause, w.cfg.RetryMax)
	}
}

// reserveIDs gives b's entries their ids from the table's sequence before b is first sent to
// PostgreSQL (parts of a split batch keep theirs). A try whose answer was lost may still
// commit later (a statement held by a frozen network, or waiting for a lock on the server,
// runs when it gets through): with the ids fixed, every later try inserts with ON CONFLICT (id)
// DO NOTHING, and whichever try commits second writes nothing (the first try, without that
// clause, fails on the primary key instead), so no row is written twice. SQLite runs in the
// process: a failed statement there was rolled back, and the database assigns ids as before.
func (w *Writer) reserveIDs(b []Entry) error {
	if w.db.Dialect != store.DialectPostgres || len(b) == 0 || b[0].ID != 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(w.runCtx, w.cfg.WriteTimeout)
	defer cancel()
	if w.idSequence == "" {
		// Looked up once: pg_get_serial_sequence in the query below would cost a catalog
		// lookup per row.
		if err := w.db.Bun.NewRaw("SELECT pg_get_serial_sequence('user_actions', 'id')").Scan(ctx, &w.idSequence); err != nil {
			return fmt.Errorf("%w: find the audit id sequence: %w", store.ErrDatabase, err)
		}
	}
	// One row of comma-separated ids: scanning a row per id cost more than the batch's insert.
	var list string
	err := w.db.Bun.NewRaw("SELECT string_agg(nextval(?::regclass)::text, ',') FROM generate_series(1, ?)", w.idSequence, len(b)).Scan(ctx, &list)
	if err == nil {
		err = parseIDs(list, b)
	}
	if err != nil {
		return fmt.Errorf("%w: reserve %d audit ids: %w", store.ErrDatabase, len(b), err)
	}
	return nil
}

// parseIDs sets the IDs of b from list, len(b) decimal ids separated by commas; on an error
// it leaves every ID 0.
func parseIDs(list string, b []Entry) error {
	all := list
	for i := range b {
		part, rest, more := strings.Cut(list, ",")
		id, err := strconv.ParseInt(part, 10, 64)
		if err != nil || id <= 0 || more != (i < len(b)-1) {
			for j := range b {
				b[j].ID = 0
			}
			return fmt.Errorf("%d ids expected, got %.40q", len(b), all)
		}
		b[i].ID, list = id, rest
	}
	return nil
}

// insert writes b in one statement. Unless first (no earlier try of b was sent), rows whose id
// is in the table already are skipped: an earlier try committed them. The clause is left out
// of first tries, which are nearly all of them, because it makes PostgreSQL check the key
// before each row.
func (w *Writer) insert(b []Entry, first bool) error {
	ctx, cancel := context.WithTimeout(w.runCtx, w.cfg.WriteTimeout)
	defer cancel()
	// RETURNING NULL: the ids are not needed, and scanning them back costs a round of work.
	// The statement is built in a buffer kept between batches: built afresh, its text (all the
	// batch's request data, quoted) grows by doubling, several times the final size in garbage.
	// The statement is Bun's (NewInsert of the batch), written directly where appendInsert can.
	onConflict := !first && b[0].ID != 0
	query, ok := appendInsert(w.query[:0], w.db.Dialect, b, onConflict)
	if !ok {
		q := w.db.Bun.NewInsert().Model(&b).Returning("NULL")
		if onConflict {
			q = q.On("CONFLICT (id) DO NOTHING")
		}
		var err error
		if query, err = q.AppendQuery(w.db.Bun.QueryGen(), w.query[:0]); err != nil {
			return fmt.Errorf("%w: %w: %d audit entries: %w", store.ErrDatabase, errBuild, len(b), err)
		}
	}
	_, err := w.db.Bun.ExecContext(ctx, string(query))
	if cap(query) <= maxKeptQuery {
		w.query = query
	}
	if err != nil {
		return fmt.Errorf("%w: insert %d audit entries: %w", store.ErrDatabase, len(b), err)
	}
	return nil
}

// reset empties batch for reuse, letting go of the entries' data.
func reset(batch []Entry) []Entry {
	clear(batch)
	return batch[:0]
}
