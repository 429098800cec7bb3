package store_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/uptrace/bun/driver/pgdriver"

	"switchboard/store"
	"switchboard/store/outbox"
	"switchboard/store/storetest"
)

// TestWriteGivenUpNeverCommits: writes whose context ends while they wait behind a locked table
// fail for their callers and do not commit when the lock goes, although the server had started
// their statements. Conflicts and missing rows do not leave a pooled connection inside a
// transaction: the pool keeps working afterwards.
func TestWriteGivenUpNeverCommits(t *testing.T) {
	t.Parallel()
	url := storetest.PostgresURL(t)
	r := store.NewAuthors(storetest.NewDB(t, url))
	ctx := context.Background()
	if _, err := r.Create(ctx, "existing"); err != nil {
		t.Fatal(err)
	}
	admin := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(url)))
	defer admin.Close()
	count := func(query string) int {
		var n int
		if err := admin.QueryRowContext(ctx, query).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	lock, err := admin.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Rollback() }()
	if _, err := lock.ExecContext(ctx, "LOCK TABLE authors IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	// More writers than pooled connections: some wait in the server, the rest for a connection.
	var wg sync.WaitGroup
	errs := make([]error, 12)
	for i := range errs {
		wg.Go(func() {
			wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			switch i % 3 {
			case 0:
				_, errs[i] = r.Create(wctx, fmt.Sprintf("given-up-%d", i))
			case 1:
				_, errs[i] = r.Update(wctx, 1, fmt.Sprintf("given-up-%d", i))
			case 2:
				errs[i] = r.Delete(wctx, 1)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, store.ErrDatabase) {
			t.Fatalf("write %d behind the lock: %v, want a database error", i, err)
		}
	}
	if err := lock.Rollback(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for count(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
		AND backend_type = 'client backend' AND state IS DISTINCT FROM 'idle'`) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the given-up statements are still running")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := count(`SELECT count(*) FROM authors WHERE name LIKE 'given-up-%'`); n != 0 {
		t.Fatalf("%d writes committed after their callers were told they failed", n)
	}
	if n := count(`SELECT count(*) FROM authors WHERE id = 1 AND name = 'existing'`); n != 1 {
		t.Fatal("an update or delete of author 1 committed after its caller was told it failed")
	}

	for range 20 { // more than the pool's connections
		if _, err := r.Create(ctx, "existing"); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("duplicate create: %v", err)
		}
		if _, err := r.Update(ctx, 999, "x"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("update of a missing author: %v", err)
		}
		if err := r.Delete(ctx, 999); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("delete of a missing author: %v", err)
		}
	}
	if n := count(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`); n != 0 {
		t.Fatalf("%d pooled connections left inside a transaction", n)
	}
	b, err := r.Create(ctx, "after")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.List(ctx, store.AuthorFilter{ID: &b.ID}); err != nil || len(got) != 1 {
		t.Fatalf("list after: %v %v", got, err)
	}
}

// TestWritesLabelledByVerb: db_query_duration_seconds names a write by its statement, not by
// the transaction around it.
func TestWritesLabelledByVerb(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		set := metrics.NewSet()
		db.Observe(set)
		r := store.NewAuthors(db)
		ctx := context.Background()
		a, err := r.Create(ctx, "verb")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Update(ctx, a.ID, "verb 2"); err != nil {
			t.Fatal(err)
		}
		if err := r.Delete(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		set.WritePrometheus(&b)
		for op, n := range map[string]int{"insert": 1, "update": 1, "delete": 1, "commit": 3} {
			if !strings.Contains(b.String(), fmt.Sprintf(`db_query_duration_seconds_count{operation=%q} %d`, op, n)) {
				t.Errorf("%s not counted %d times:\n%s", op, n, b.String())
			}
		}
	})
}

// TestWriteEventCommitsWithItsChange: on PostgreSQL a write's event row goes out in one query
// string with the COMMIT. Each change commits with its event; an event row the database refuses
// rolls the change back (the COMMIT after it never runs) and leaves no pooled connection inside
// a transaction.
func TestWriteEventCommitsWithItsChange(t *testing.T) {
	t.Parallel()
	url := storetest.PostgresURL(t)
	db := storetest.NewDB(t, url)
	committed := 0
	r := store.NewAuthors(db).WithEvents(store.AuthorEvents{
		Event: func(op string, a store.Author) outbox.Event {
			topic := "authors"
			if a.Name == "refused" {
				topic = "refused"
			}
			return outbox.Event{Topic: topic, PkgID: 7, Data: json.RawMessage(fmt.Sprintf(`{"op":%q,"id":%d}`, op, a.ID))}
		},
		Committed: func() { committed++ },
		Quiet:     func() bool { return committed%2 == 1 }, // both forms of the event's INSERT
	})
	ctx := context.Background()
	a, err := r.Create(ctx, "evented")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Update(ctx, a.ID, "evented 2"); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	var data []string
	if err := db.Bun.NewRaw("SELECT CAST(data AS TEXT) FROM "+outbox.Table+" ORDER BY id").Scan(ctx, &data); err != nil {
		t.Fatal(err)
	}
	want := []string{
		fmt.Sprintf(`{"op":"created","id":%d}`, a.ID),
		fmt.Sprintf(`{"op":"updated","id":%d}`, a.ID),
		fmt.Sprintf(`{"op":"deleted","id":%d}`, a.ID),
	}
	if fmt.Sprint(data) != fmt.Sprint(want) || committed != 3 {
		t.Fatalf("events %v (committed %d), want %v", data, committed, want)
	}

	if _, err := db.Bun.ExecContext(ctx, "ALTER TABLE "+outbox.Table+" ADD CONSTRAINT no_refused CHECK (topic <> 'refused')"); err != nil {
		t.Fatal(err)
	}
	for range 20 { // more than the pool's connections
		if _, err := r.Create(ctx, "refused"); !errors.Is(err, store.ErrDatabase) {
			t.Fatalf("create whose event is refused: %v, want a database error", err)
		}
	}
	var n int
	if err := db.Bun.NewRaw("SELECT count(*) FROM authors WHERE name = 'refused'").Scan(ctx, &n); err != nil || n != 0 {
		t.Fatalf("%d authors committed without their event (%v)", n, err)
	}
	if err := db.Bun.NewRaw(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`).Scan(ctx, &n); err != nil || n != 0 {
		t.Fatalf("%d pooled connections left inside a transaction (%v)", n, err)
	}
	if _, err := r.Create(ctx, "after"); err != nil || committed != 4 {
		t.Fatalf("create after the refusals: %v (committed %d)", err, committed)
	}
}
