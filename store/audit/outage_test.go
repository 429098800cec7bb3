package audit_test

// The writer against a PostgreSQL that fails: restarted, frozen, refusing one row, or gone past
// the shutdown deadline. PostgreSQL is reached through a fault proxy; the rows are checked
// through a direct connection.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/store"
	"switchboard/store/audit"
	"switchboard/store/faultproxy"
	"switchboard/store/storetest"
)

// proxiedPostgres is a fresh, migrated PostgreSQL database seen directly and through a fault
// proxy.
type proxiedPostgres struct {
	direct *store.DB // for checks
	db     *store.DB // through the proxy, for the writer
	proxy  *faultproxy.Proxy
}

func newProxiedPostgres(t *testing.T) proxiedPostgres {
	t.Helper()
	raw := storetest.PostgresURL(t)
	direct := storetest.NewDB(t, raw)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	p := faultproxy.Start(t, u.Host)
	u.Host = p.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := store.Open(ctx, u.String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return proxiedPostgres{direct: direct, db: db, proxy: p}
}

// numbered is entry i of a run: its request id is unique.
func numbered(i int) audit.Entry {
	e := entry(fmt.Sprint("user-", i%7))
	e.RequestID = fmt.Sprint("req-", i)
	return e
}

// expectEachOnce fails unless the table holds exactly one row for each of the n numbered
// entries, and nothing else.
func expectEachOnce(t *testing.T, db *store.DB, n int) {
	t.Helper()
	var ids []string
	if err := db.Bun.NewSelect().Model((*audit.Entry)(nil)).Column("request_id").Scan(context.Background(), &ids); err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]int, len(ids))
	for _, id := range ids {
		seen[id]++
	}
	var missing, twice []string
	for i := range n {
		switch c := seen[fmt.Sprint("req-", i)]; {
		case c == 0:
			missing = append(missing, fmt.Sprint(i))
		case c > 1:
			twice = append(twice, fmt.Sprint(i))
		}
	}
	if len(missing) > 0 || len(twice) > 0 || len(ids) != n {
		t.Fatalf("%d rows for %d entries: %d missing (%.200s), %d written more than once (%.200s)",
			len(ids), n, len(missing), strings.Join(missing, ","), len(twice), strings.Join(twice, ","))
	}
}

// producer records numbered entries, one every interval, until stop; it returns how many.
type producer struct {
	n    atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func startProducer(w *audit.Writer, every time.Duration) *producer {
	p := &producer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
				w.Record(numbered(int(p.n.Load())))
				p.n.Add(1)
			}
		}
	}()
	return p
}

func (p *producer) finish() int {
	close(p.stop)
	<-p.done
	return int(p.n.Load())
}

// A restart of PostgreSQL in the middle of a stream of entries (every connection cut, then
// connections refused for 3 s): every entry is written, once; nothing is dropped.
func TestWriterSurvivesPostgresRestart(t *testing.T) {
	t.Parallel()
	pg := newProxiedPostgres(t)
	set := metrics.NewSet()
	logs := &lockedBuffer{}
	w := audit.NewWriter(pg.db, audit.WriterConfig{BatchSize: 50, FlushInterval: 20 * time.Millisecond,
		WriteTimeout: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(logs, nil)), Metrics: set})
	prod := startProducer(w, 2*time.Millisecond)

	eventually(t, 10*time.Second, "a first few hundred rows", func() bool { return counter(set, audit.MetricWritten) >= 200 })
	const down = 3 * time.Second
	cut, err := pg.proxy.Restart(context.Background(), down)
	if err != nil {
		t.Fatal(err)
	}
	during := prod.n.Load()
	// Entries keep coming after PostgreSQL is back, and are written.
	eventually(t, 20*time.Second, "writes after the restart", func() bool {
		return counter(set, audit.MetricWritten) >= uint64(during)+100
	})
	n := prod.finish()
	closeWriter(t, w)

	expectEachOnce(t, pg.direct, n)
	written, dropped, retries := counter(set, audit.MetricWritten), counter(set, audit.MetricDropped), counter(set, audit.MetricRetries)
	if written != uint64(n) || dropped != 0 || retries == 0 {
		t.Fatalf("written %d, dropped %d, retries %d for %d entries", written, dropped, retries, n)
	}
	out := logs.String()
	if !strings.Contains(out, "audit batch not written; retrying") || !strings.Contains(out, "audit log writes resumed") {
		t.Errorf("the outage is not in the log:\n%s", out)
	}
	t.Logf("%d entries, PostgreSQL down %s (%d connections cut), %d failed tries, 0 lost, 0 duplicated",
		n, down, cut, retries)
}

// PostgreSQL frozen (a half-open connection: nothing answers, nothing closes) for longer than
// WriteTimeout: the statements sent meanwhile reach it late, when traffic resumes, after the
// writer tried again on other connections. Every entry is written exactly once.
func TestWriterFrozenPostgresWritesOnce(t *testing.T) {
	t.Parallel()
	pg := newProxiedPostgres(t)
	set := metrics.NewSet()
	w := audit.NewWriter(pg.db, audit.WriterConfig{BatchSize: 20, FlushInterval: 10 * time.Millisecond,
		WriteTimeout: 300 * time.Millisecond, RetryMax: 200 * time.Millisecond, Metrics: set})
	prod := startProducer(w, 3*time.Millisecond)
	eventually(t, 10*time.Second, "a first hundred rows", func() bool { return counter(set, audit.MetricWritten) >= 100 })

	pg.proxy.Freeze()
	// Several tries time out, each leaving a statement held in the frozen link.
	eventually(t, 20*time.Second, "tries timing out while frozen", func() bool { return counter(set, audit.MetricRetries) >= 4 })
	pg.proxy.Resume()
	during := prod.n.Load()
	eventually(t, 20*time.Second, "writes after the freeze", func() bool {
		return counter(set, audit.MetricWritten) >= uint64(during)+50
	})
	n := prod.finish()
	closeWriter(t, w)

	expectEachOnce(t, pg.direct, n)
	if written, dropped := counter(set, audit.MetricWritten), counter(set, audit.MetricDropped); written != uint64(n) || dropped != 0 {
		t.Fatalf("written %d, dropped %d for %d entries", written, dropped, n)
	}
	t.Logf("%d entries, %d failed tries while frozen, 0 lost, 0 duplicated", n, counter(set, audit.MetricRetries))
}

// A statement that waits for a lock on the server outlives the try that sent it: the client
// gives up (WriteTimeout) and tries again, and when the lock goes every waiting statement
// runs. The rows are there once.
func TestWriterLockWaitWritesOnce(t *testing.T) {
	t.Parallel()
	url := storetest.PostgresURL(t)
	db := storetest.NewDB(t, url)
	set := metrics.NewSet()
	w := audit.NewWriter(db, audit.WriterConfig{BatchSize: 5, FlushInterval: 10 * time.Millisecond,
		WriteTimeout: 200 * time.Millisecond, RetryMax: 100 * time.Millisecond, Metrics: set})
	release := lockUserActions(t, db)
	for i := range 5 {
		w.Record(numbered(i))
	}
	eventually(t, 20*time.Second, "several tries waiting for the lock", func() bool { return counter(set, audit.MetricRetries) >= 3 })
	release()
	closeWriter(t, w)
	// The statements of the abandoned tries may still be finishing on the server.
	eventually(t, 10*time.Second, "the waiting statements done", func() bool {
		var n int
		err := db.Bun.NewRaw("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'INSERT INTO \"user_actions\"%' AND state = 'active'").Scan(context.Background(), &n)
		return err == nil && n == 0
	})
	expectEachOnce(t, db, 5)
}

// A row the database refuses (here an integer out of range) is found by splitting its batch
// and dropped with a count and a log line; the rows beside it and behind it are written.
func TestWriterSplitsRejectedBatch(t *testing.T) {
	t.Parallel()
	db := storetest.NewDB(t, storetest.PostgresURL(t))
	set := metrics.NewSet()
	logs := &lockedBuffer{}
	w := audit.NewWriter(db, audit.WriterConfig{BatchSize: 16, FlushInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil)), Metrics: set})
	const n = 40
	bad := map[int]bool{5: true, 6: true, 21: true}
	for i := range n {
		e := numbered(i)
		if bad[i] {
			e.ResponseStatus = 1 << 40 // beyond the INTEGER column
		}
		w.Record(e)
	}
	// Before Close, so that the refusals are not losses at Close (which Close would report).
	eventually(t, 10*time.Second, "every entry handled", func() bool {
		return counter(set, audit.MetricWritten)+counter(set, audit.MetricDropped) == n
	})
	closeWriter(t, w)
	if written, dropped := counter(set, audit.MetricWritten), counter(set, audit.MetricDropped); written != n-3 || dropped != 3 {
		t.Fatalf("written %d, dropped %d; want %d and 3", written, dropped, n-3)
	}
	var got []string
	if err := db.Bun.NewSelect().Model((*audit.Entry)(nil)).Column("request_id").Scan(context.Background(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != n-3 || strings.Contains(","+strings.Join(got, ",")+",", ",req-5,") {
		t.Fatalf("rows %v", got)
	}
	out := logs.String()
	if !strings.Contains(out, "rejected_by_database=") || !strings.Contains(out, "dropped_total=3") || !strings.Contains(out, "out of range") {
		t.Errorf("the refused rows are not in the log:\n%s", out)
	}
}

// An outage longer than the queue holds: what does not fit is dropped, counted and logged
// (how many, why), and what the queue held is written once PostgreSQL is back.
func TestWriterOverflowDuringOutage(t *testing.T) {
	t.Parallel()
	pg := newProxiedPostgres(t)
	set := metrics.NewSet()
	logs := &lockedBuffer{}
	w := audit.NewWriter(pg.db, audit.WriterConfig{QueueSize: 50, BatchSize: 10, FlushInterval: 10 * time.Millisecond,
		WriteTimeout: time.Second, RetryMax: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil)), Metrics: set})
	pg.proxy.Refuse()
	const n = 500
	for i := range n {
		w.Record(numbered(i))
	}
	eventually(t, 10*time.Second, "the writer retrying", func() bool { return counter(set, audit.MetricRetries) >= 1 })
	if err := pg.proxy.Listen(); err != nil {
		t.Fatal(err)
	}
	closeWriter(t, w)
	written, dropped := counter(set, audit.MetricWritten), counter(set, audit.MetricDropped)
	// The queue (50) and the batch in hand (10) are kept; the rest overflowed.
	if written+dropped != n || written < 50 || written > 60 || countRows(t, pg.direct) != int(written) {
		t.Fatalf("written %d + dropped %d, want %d with 50..60 written (rows %d)", written, dropped, n, countRows(t, pg.direct))
	}
	out := logs.String()
	if !strings.Contains(out, "audit entries dropped") || !strings.Contains(out, fmt.Sprintf("dropped_total=%d", dropped)) ||
		!strings.Contains(out, "queue_full=") {
		t.Errorf("the overflow is not in the log:\n%s", out)
	}
}

// Close while PostgreSQL is down: the writer keeps trying until Close's context ends, then
// gives the entries up (counted) and stops; Close does not outlast its context.
func TestWriterCloseDuringOutage(t *testing.T) {
	t.Parallel()
	pg := newProxiedPostgres(t)
	set := metrics.NewSet()
	w := audit.NewWriter(pg.db, audit.WriterConfig{BatchSize: 10, FlushInterval: 10 * time.Millisecond,
		WriteTimeout: time.Second, RetryMax: 100 * time.Millisecond, Metrics: set})
	pg.proxy.Refuse()
	const n = 35
	for i := range n {
		w.Record(numbered(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := w.Close(ctx)
	if !errors.Is(err, audit.ErrEntriesLost) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want ErrEntriesLost and DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Close took %s with a 500ms context", took)
	}
	eventually(t, 10*time.Second, "every entry given up", func() bool { return counter(set, audit.MetricDropped) == n })
	if written := counter(set, audit.MetricWritten); written != 0 {
		t.Fatalf("written %d", written)
	}
}

// Close while PostgreSQL is down, and back before Close's deadline: Close waits for it and
// writes everything.
func TestWriterCloseWaitsForShortOutage(t *testing.T) {
	t.Parallel()
	pg := newProxiedPostgres(t)
	set := metrics.NewSet()
	w := audit.NewWriter(pg.db, audit.WriterConfig{BatchSize: 10, FlushInterval: time.Hour,
		WriteTimeout: time.Second, RetryMax: 100 * time.Millisecond, Metrics: set})
	pg.proxy.Refuse()
	const n = 35
	for i := range n {
		w.Record(numbered(i))
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		// Back after the writer has begun retrying its final batches.
		for counter(set, audit.MetricRetries) < 2 {
			time.Sleep(10 * time.Millisecond)
		}
		_ = pg.proxy.Listen()
	})
	closeWriter(t, w) // 10 s
	wg.Wait()
	expectEachOnce(t, pg.direct, n)
}
