package audit_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/store"
	"switchboard/store/audit"
	"switchboard/store/storetest"
)

func TestWriterRoundTrip(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		set := metrics.NewSet()
		w := audit.NewWriter(db, audit.WriterConfig{Metrics: set}) // default 1 s interval
		defer closeWriter(t, w)

		ts := time.Date(2026, 3, 1, 12, 30, 45, 123456789, time.FixedZone("CET", 3600))
		msg := "boom"
		roles := []string{"admin", "get-authors"}
		w.Record(audit.Entry{ID: 999, Timestamp: ts, UserID: "sub-1", Username: "ada", UserRoles: roles,
			ActionType: "LOGIN", Resource: "POST /login", Outcome: audit.OutcomeError, IPAddress: "10.0.0.1",
			UserAgent: "curl/8", RequestID: "corr-1",
			RequestData:    []byte(`{"username":"ada","password":"hunter2","nested":[{"refresh_token":"rt-123"}]}`),
			ResponseStatus: 401, ErrorMessage: &msg, DurationMS: 12.25})
		roles[0] = "mutated" // Record copied the roles

		eventually(t, 2*time.Second, "the entry is written", func() bool { return countRows(t, db) == 1 })
		got, _, err := audit.NewRepo(db).List(context.Background(), audit.Filter{}, 1, 10)
		if err != nil || len(got) != 1 {
			t.Fatalf("List = %v, %v", got, err)
		}
		e := got[0]
		if e.ID == 999 || e.ID <= 0 {
			t.Errorf("ID = %d: the database assigns ids", e.ID)
		}
		if want := ts.UTC().Truncate(time.Microsecond); !e.Timestamp.Equal(want) || e.Timestamp.Location() != time.UTC {
			t.Errorf("Timestamp = %v, want %v in UTC", e.Timestamp, want)
		}
		if e.UserID != "sub-1" || e.Username != "ada" || strings.Join(e.UserRoles, ",") != "admin,get-authors" ||
			e.ActionType != "LOGIN" || e.Resource != "POST /login" || e.Outcome != audit.OutcomeError ||
			e.IPAddress != "10.0.0.1" || e.UserAgent != "curl/8" || e.RequestID != "corr-1" ||
			e.ResponseStatus != 401 || e.ErrorMessage == nil || *e.ErrorMessage != "boom" || e.DurationMS != 12.25 {
			t.Errorf("entry = %+v", e)
		}
		const want = `{"nested":[{"refresh_token":"[REDACTED]"}],"password":"[REDACTED]","username":"ada"}`
		if string(e.RequestData) != want {
			t.Errorf("request_data = %s, want %s", e.RequestData, want)
		}
		if c := counter(set, audit.MetricWritten); c != 1 {
			t.Errorf("written = %d", c)
		}
	})
}

func TestWriterDefaultsAndCleansFields(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		w := audit.NewWriter(db, audit.WriterConfig{FlushInterval: 20 * time.Millisecond})
		defer closeWriter(t, w)

		before := time.Now().Add(-time.Second)
		bad := "nul\x00byte \xff " + strings.Repeat("é", 2000)
		w.Record(audit.Entry{UserID: bad, UserAgent: bad, Outcome: "weird", ErrorMessage: &bad, RequestData: []byte("not json")})
		eventually(t, 2*time.Second, "the entry is written", func() bool { return countRows(t, db) == 1 })

		got, _, err := audit.NewRepo(db).List(context.Background(), audit.Filter{}, 1, 10)
		if err != nil || len(got) != 1 {
			t.Fatalf("List = %v, %v", got, err)
		}
		e := got[0]
		if e.Timestamp.Before(before) || e.Timestamp.After(time.Now()) {
			t.Errorf("Timestamp = %v: not set to now", e.Timestamp)
		}
		if e.Outcome != audit.OutcomeError {
			t.Errorf("Outcome = %q", e.Outcome)
		}
		if e.UserRoles == nil || len(e.UserRoles) != 0 {
			t.Errorf("UserRoles = %#v", e.UserRoles)
		}
		if string(e.RequestData) != `"[UNPARSEABLE]"` {
			t.Errorf("RequestData = %s", e.RequestData)
		}
		if strings.ContainsRune(e.UserID, 0) || len(e.UserID) > 1024 || !strings.HasPrefix(e.UserID, "nulbyte \ufffd é") {
			t.Errorf("UserID = %.40q (%d bytes)", e.UserID, len(e.UserID))
		}
		if e.ErrorMessage == nil || len(*e.ErrorMessage) > 4096 {
			t.Errorf("ErrorMessage not bounded")
		}
	})
}

func TestWriterBatchesBySize(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		hook := &insertCounter{}
		db.Bun.AddQueryHook(hook)
		set := metrics.NewSet()
		w := audit.NewWriter(db, audit.WriterConfig{BatchSize: 3, FlushInterval: time.Hour, Metrics: set})
		for i := range 7 {
			w.Record(entry(fmt.Sprint("u", i)))
		}
		// Two full batches go at once; the seventh entry waits for its batch or Close.
		// The hook counts a statement after it returned: wait for it as well as for the rows.
		eventually(t, 2*time.Second, "two batches written", func() bool { return countRows(t, db) == 6 && hook.n.Load() >= 2 })
		if n := hook.n.Load(); n != 2 {
			t.Fatalf("%d INSERTs for two batches", n)
		}
		closeWriter(t, w)
		if n, rows := hook.n.Load(), countRows(t, db); n != 3 || rows != 7 {
			t.Fatalf("after Close: %d INSERTs, %d rows", n, rows)
		}
		if c := counter(set, audit.MetricWritten); c != 7 {
			t.Fatalf("written = %d", c)
		}
	})
}

func TestWriterFlushesOnInterval(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		hook := &insertCounter{}
		db.Bun.AddQueryHook(hook)
		w := audit.NewWriter(db, audit.WriterConfig{BatchSize: 1000, FlushInterval: 100 * time.Millisecond})
		defer closeWriter(t, w)
		for i := range 5 {
			w.Record(entry(fmt.Sprint("u", i)))
		}
		eventually(t, 2*time.Second, "the interval flush", func() bool { return countRows(t, db) == 5 && hook.n.Load() >= 1 })
		if n := hook.n.Load(); n != 1 {
			t.Fatalf("%d INSERTs for one interval", n)
		}
	})
}

func TestWriterCloseFlushesQueued(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		set := metrics.NewSet()
		w := audit.NewWriter(db, audit.WriterConfig{BatchSize: 4, FlushInterval: time.Hour, Metrics: set})
		for i := range 10 {
			w.Record(entry(fmt.Sprint("u", i)))
		}
		closeWriter(t, w)
		if n := countRows(t, db); n != 10 {
			t.Fatalf("%d rows after Close, want 10", n)
		}
		// Closed: further entries are dropped and counted, never panic or block.
		w.Record(entry("late"))
		if err := w.Close(context.Background()); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if w, d := counter(set, audit.MetricWritten), counter(set, audit.MetricDropped); w != 10 || d != 1 {
			t.Fatalf("written %d dropped %d", w, d)
		}
	})
}

// lockUserActions holds a lock that makes every INSERT into user_actions wait until release.
func lockUserActions(t *testing.T, db *store.DB) (release func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Bun.BeginTx(ctx, nil) // SQLite: BEGIN IMMEDIATE (the DSN's _txlock) takes the write lock
	if err != nil {
		t.Fatal(err)
	}
	if db.Dialect == store.DialectPostgres {
		if _, err := tx.ExecContext(ctx, "LOCK TABLE user_actions IN EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}
	} else if _, err := tx.ExecContext(ctx, "DELETE FROM user_actions WHERE id < 0"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { _ = tx.Rollback() }) }
	t.Cleanup(release)
	return release
}

// A flood beyond the queue while the database is stuck: Record drops and counts instead of
// waiting, and every entry is accounted for once the database answers again.
func TestWriterFloodDropsInsteadOfBlocking(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		set := metrics.NewSet()
		w := audit.NewWriter(db, audit.WriterConfig{QueueSize: 4, BatchSize: 2, FlushInterval: 10 * time.Millisecond,
			WriteTimeout: 30 * time.Second, Metrics: set})
		release := lockUserActions(t, db)

		const n = 5000
		start := time.Now()
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range n / 4 {
					w.Record(entry(fmt.Sprint("g", g, "-", i)))
				}
			})
		}
		wg.Wait()
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("%d Record calls took %s against a stuck database", n, el)
		}
		// At most one batch in flight plus a full queue can still be written.
		if d := counter(set, audit.MetricDropped); d < n-2-4 {
			t.Fatalf("dropped = %d, want >= %d", d, n-2-4)
		}
		release()
		closeWriter(t, w)
		written, dropped := counter(set, audit.MetricWritten), counter(set, audit.MetricDropped)
		if written+dropped != n || int(written) != countRows(t, db) || written == 0 {
			t.Fatalf("written %d + dropped %d != %d (rows %d)", written, dropped, n, countRows(t, db))
		}
	})
}

// With the database closed under it, batches fail: they are counted as dropped, Record stays
// fast, and Close reports the loss instead of hanging.
func TestWriterDatabaseClosed(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		set := metrics.NewSet()
		logs := &lockedBuffer{}
		w := audit.NewWriter(db, audit.WriterConfig{QueueSize: 8, BatchSize: 4, FlushInterval: 10 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(logs, nil)), Metrics: set})
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for i := range 1000 {
			w.Record(entry(fmt.Sprint("u", i)))
		}
		if el := time.Since(start); el > time.Second {
			t.Fatalf("Record took %s with the database closed", el)
		}
		eventually(t, 2*time.Second, "every entry dropped", func() bool { return counter(set, audit.MetricDropped) >= 1000-8 })
		for range 3 {
			w.Record(entry("queued at close"))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := w.Close(ctx)
		if err != nil && !errors.Is(err, store.ErrDatabase) {
			t.Fatalf("Close = %v, want nil or ErrDatabase", err)
		}
		if d, wr := counter(set, audit.MetricDropped), counter(set, audit.MetricWritten); d != 1003 || wr != 0 {
			t.Fatalf("dropped %d written %d, want 1003 and 0", d, wr)
		}
		// Hundreds of lost entries and batches: one line when the drops began, one at Close with
		// what was dropped since, by reason. The log is rate-limited.
		out := logs.String()
		if n := strings.Count(out, "audit entries dropped"); n < 1 || n > 2 {
			t.Errorf("%d 'entries dropped' lines:\n%s", n, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		last := lines[len(lines)-1]
		for _, want := range []string{"database_closed=", "dropped_total=1003", `last_error="database error:`} {
			if !strings.Contains(last, want) {
				t.Errorf("last log line has no %s:\n%s", want, out)
			}
		}
		if strings.Contains(out, "retrying") {
			t.Errorf("a closed database is retried:\n%s", out)
		}
	})
}

// Close gives up when its context ends, counting what it could not write.
func TestWriterCloseHonoursContext(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		set := metrics.NewSet()
		w := audit.NewWriter(db, audit.WriterConfig{BatchSize: 2, FlushInterval: time.Hour, WriteTimeout: 30 * time.Second, Metrics: set})
		release := lockUserActions(t, db)
		for i := range 5 {
			w.Record(entry(fmt.Sprint("u", i)))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		if err := w.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close = %v, want DeadlineExceeded", err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("Close took %s with a 200ms context", el)
		}
		release()
		eventually(t, 15*time.Second, "every entry accounted for", func() bool {
			return counter(set, audit.MetricWritten)+counter(set, audit.MetricDropped) == 5
		})
	})
}

func TestWriterConcurrentRecordAndClose(t *testing.T) {
	t.Parallel()
	db := storetest.NewDB(t, storetest.SQLiteURL(t))
	set := metrics.NewSet()
	w := audit.NewWriter(db, audit.WriterConfig{QueueSize: 64, BatchSize: 16, FlushInterval: 5 * time.Millisecond, Metrics: set})
	var wg sync.WaitGroup
	const goroutines, each = 8, 200
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				w.Record(entry(fmt.Sprint(g, "-", i)))
			}
		})
	}
	// Close while the Record calls are still going on.
	eventually(t, 2*time.Second, "a first batch", func() bool { return counter(set, audit.MetricWritten) > 0 })
	closeWriter(t, w)
	wg.Wait()
	written, dropped := counter(set, audit.MetricWritten), counter(set, audit.MetricDropped)
	if written+dropped != goroutines*each || int(written) != countRows(t, db) {
		t.Fatalf("written %d + dropped %d != %d (rows %d)", written, dropped, goroutines*each, countRows(t, db))
	}
}

// The queue is bounded in bytes as well as in entries: big entries waiting for a stuck
// database are dropped (and counted) once they would hold more than QueueBytes.
func TestWriterQueueBytesBound(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		set := metrics.NewSet()
		const n, size, budget = 100, 8 << 10, 100 << 10
		w := audit.NewWriter(db, audit.WriterConfig{QueueBytes: budget, BatchSize: 4, FlushInterval: 10 * time.Millisecond,
			WriteTimeout: 30 * time.Second, Metrics: set})
		release := lockUserActions(t, db)
		big := []byte(`{"pad":"` + strings.Repeat("x", size) + `"}`)
		for i := range n {
			e := entry(fmt.Sprint("u", i))
			e.RequestData = big
			w.Record(e)
		}
		// Whatever is held or queued fits the budget: at most budget/size entries.
		if dropped := counter(set, audit.MetricDropped); dropped < n-budget/size {
			t.Fatalf("dropped %d of %d entries of %d bytes with a %d-byte budget", dropped, n, size, budget)
		}
		release()
		closeWriter(t, w)
		written, dropped := counter(set, audit.MetricWritten), counter(set, audit.MetricDropped)
		if written+dropped != n || written == 0 || int(written) != countRows(t, db) {
			t.Fatalf("written %d + dropped %d != %d (rows %d)", written, dropped, n, countRows(t, db))
		}
	})
}
