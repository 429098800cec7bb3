package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"switchboard/store/outbox"
	"switchboard/store/storetest"
)

func TestInsertPendingDeleteDeadLetter(t *testing.T) {
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		o := outbox.New(db.Bun)
		ctx := context.Background()
		// One in a committed transaction, one rolled back: only the first exists.
		if err := db.Bun.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			return outbox.Insert(ctx, tx, outbox.Event{Topic: "authors", PkgID: 3, Data: json.RawMessage(`{"a": 1}`), Key: "k1"})
		}); err != nil {
			t.Fatal(err)
		}
		boom := errors.New("boom")
		if err := db.Bun.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if err := outbox.Insert(ctx, tx, outbox.Event{Topic: "authors", PkgID: 4}); err != nil {
				return err
			}
			return boom
		}); !errors.Is(err, boom) {
			t.Fatal(err)
		}
		if err := outbox.Insert(ctx, db.Bun, outbox.Event{PkgID: 7}); err != nil {
			t.Fatal(err)
		}
		// Plain SQL, as a producer in another language writes it; pkg_id as text on SQLite.
		if _, err := db.Bun.ExecContext(ctx, "INSERT INTO switchboard_outbox (topic, pkg_id, data) VALUES ('dashboards.x', 9, '{\"n\":2}')"); err != nil {
			t.Fatal(err)
		}
		for _, bad := range []outbox.Event{{PkgID: -1}, {PkgID: 1, Data: json.RawMessage(`[1]`)}, {PkgID: 1, Data: json.RawMessage(`{`)}} {
			if err := outbox.Insert(ctx, db.Bun, bad); !errors.Is(err, outbox.ErrInvalidEvent) {
				t.Errorf("Insert(%+v) = %v, want ErrInvalidEvent", bad, err)
			}
		}
		rows, err := o.Pending(ctx, 0, 10, 1<<20, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 3 {
			t.Fatalf("pending: %+v", rows)
		}
		if r := rows[0]; r.Topic != "authors" || r.PkgID != "3" || r.Key != "k1" || !json.Valid([]byte(r.Data)) {
			t.Errorf("row 0: %+v", r)
		}
		if r := rows[1]; r.Topic != "" || r.PkgID != "7" || r.Data != "{}" || r.Key == "" {
			t.Errorf("row 1: %+v", r)
		}
		if rows[2].Key == rows[1].Key || rows[2].ID <= rows[1].ID || rows[1].ID <= rows[0].ID {
			t.Errorf("keys or ids: %+v", rows)
		}
		if age, err := o.OldestAge(ctx); err != nil || age < 0 || age > time.Hour {
			t.Errorf("OldestAge = %s, %v", age, err)
		}
		if after, _ := o.Pending(ctx, rows[1].ID, 10, 1<<20, 1<<20); len(after) != 1 || after[0].ID != rows[2].ID {
			t.Errorf("Pending after %d: %+v", rows[1].ID, after)
		}
		if err := o.DeadLetter(ctx, rows[1].ID, "topic not allowed"); err != nil {
			t.Fatal(err)
		}
		if err := o.Delete(ctx, []int64{rows[0].ID, rows[2].ID}); err != nil {
			t.Fatal(err)
		}
		if left, _ := o.Pending(ctx, 0, 10, 1<<20, 1<<20); len(left) != 0 {
			t.Errorf("left: %+v", left)
		}
		if age, err := o.OldestAge(ctx); err != nil || age != 0 {
			t.Errorf("OldestAge of an empty outbox = %s, %v", age, err)
		}
		dead, err := o.Dead(ctx)
		if err != nil || len(dead) != 1 || dead[0].ID != rows[1].ID || dead[0].Reason != "topic not allowed" || dead[0].PkgID != "7" {
			t.Fatalf("dead: %+v %v", dead, err)
		}
	})
}

// A value of the wrong type (SQLite keeps whatever it is given) is read as text, not an error
// that would stop the rows behind it.
func TestPendingReadsAnythingSQLiteHolds(t *testing.T) {
	db := storetest.NewDB(t, storetest.SQLiteURL(t))
	ctx := context.Background()
	if _, err := db.Bun.ExecContext(ctx, "INSERT INTO switchboard_outbox (topic, pkg_id, data) VALUES (x'00ff', 'abc', x'ff')"); err != nil {
		t.Fatal(err)
	}
	rows, err := outbox.New(db.Bun).Pending(ctx, 0, 10, 1<<20, 1<<20)
	if err != nil || len(rows) != 1 || rows[0].PkgID != "abc" {
		t.Fatalf("%+v %v", rows, err)
	}
	if _, err := outbox.ParsePkgID(rows[0].PkgID); err == nil {
		t.Fatal("pkg_id abc parsed")
	}
}

func TestLeadIsExclusiveAndFreedWithItsSession(t *testing.T) {
	url := storetest.PostgresURL(t)
	a, b := outbox.New(storetest.NewDB(t, url).Bun), outbox.New(storetest.NewDB(t, url).Bun)
	ctx := context.Background()
	la, err := a.Lead(ctx)
	if err != nil || la == nil {
		t.Fatalf("first Lead: %v %v", la, err)
	}
	if lb, err := b.Lead(ctx); err != nil || lb != nil {
		t.Fatalf("second Lead while the first holds: %v %v", lb, err)
	}
	if err := la.Check(ctx); err != nil {
		t.Fatal(err)
	}
	la.Release()
	lb, err := b.Lead(ctx)
	if err != nil || lb == nil {
		t.Fatalf("Lead after Release: %v %v", lb, err)
	}
	lb.Release()
}

func TestListenWakesOnCommit(t *testing.T) {
	db := storetest.NewDB(t, storetest.PostgresURL(t))
	o := outbox.New(db.Bun)
	l := o.Listen(slog.New(slog.DiscardHandler))
	defer l.Close()
	awaitWake(t, db, l)
}

// A Quiet insert (the relaying node's own writes) sends no NOTIFY, with or without a key, and
// leaves the rows and the next transaction's notification as they were.
func TestQuietInsertDoesNotNotify(t *testing.T) {
	db := storetest.NewDB(t, storetest.PostgresURL(t))
	o := outbox.New(db.Bun)
	l := o.Listen(slog.New(slog.DiscardHandler))
	defer l.Close()
	ctx := context.Background()
	woken := func(d time.Duration) bool {
		select {
		case <-l.C:
			return true
		case <-time.After(d):
			return false
		}
	}
	// LISTEN is asynchronous: insert until a wake-up arrives, then drain.
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err := outbox.Insert(ctx, db.Bun, outbox.Event{PkgID: 1}); err != nil {
			t.Fatal(err)
		}
		if woken(200 * time.Millisecond) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no wake-up from NOTIFY")
		}
	}
	for woken(500 * time.Millisecond) {
	}
	before, err := o.Pending(ctx, 0, 1000, 1<<20, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Insert(ctx, db.Bun, outbox.Event{Topic: "dashboards.q", PkgID: 7, Data: json.RawMessage(`{"n":1}`), Quiet: true}); err != nil {
		t.Fatal(err)
	}
	if err := db.Bun.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		return outbox.Insert(ctx, tx, outbox.Event{Topic: "dashboards.q", PkgID: 8, Key: "k-quiet", Quiet: true})
	}); err != nil {
		t.Fatal(err)
	}
	if woken(time.Second) {
		t.Fatal("a quiet insert sent a NOTIFY")
	}
	rows, err := o.Pending(ctx, 0, 1000, 1<<20, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(before)+2 {
		t.Fatalf("%d rows after two quiet inserts, want %d", len(rows), len(before)+2)
	}
	a, b := rows[len(rows)-2], rows[len(rows)-1]
	if a.Topic != "dashboards.q" || a.PkgID != "7" || a.Data != `{"n":1}` || b.PkgID != "8" || b.Key != "k-quiet" {
		t.Fatalf("quiet rows %+v %+v", a, b)
	}
	// The setting ended with its transaction: the next plain insert notifies.
	if err := outbox.Insert(ctx, db.Bun, outbox.Event{PkgID: 1}); err != nil {
		t.Fatal(err)
	}
	if !woken(30 * time.Second) {
		t.Fatal("no NOTIFY for a plain insert after quiet ones")
	}
}

// Pending keeps a batch within its byte budget (plus the row that crosses it) and leaves out the data of a row over maxData.
func TestPendingBoundsWhatItReads(t *testing.T) {
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		o := outbox.New(db.Bun)
		ctx := context.Background()
		big := `{"s": "` + strings.Repeat("x", 3000) + `"}`
		for _, d := range []string{big, `{"a": 1}`, big, big, `{"b": 2}`} {
			if err := outbox.Insert(ctx, db.Bun, outbox.Event{PkgID: 1, Data: json.RawMessage(d)}); err != nil {
				t.Fatal(err)
			}
		}
		// maxData 2000: the big rows come without data and cost nothing of the budget.
		rows, err := o.Pending(ctx, 0, 10, 2000, 100)
		if err != nil || len(rows) != 5 {
			t.Fatalf("%+v %v", rows, err)
		}
		if rows[0].Data != "" || rows[0].Size != int64(len(big)) || rows[1].Data != `{"a": 1}` {
			t.Errorf("rows: %+v", rows[:2])
		}
		// maxData 1 MiB, budget 5000: rows come while what came before them is under the budget.
		rows, err = o.Pending(ctx, 0, 10, 1<<20, 5000)
		if err != nil || len(rows) != 3 || rows[0].Data != big || rows[2].Data != big {
			t.Fatalf("budgeted: %d rows %v", len(rows), err)
		}
		// A first row over the budget comes all the same, alone.
		rows, err = o.Pending(ctx, rows[2].ID, 10, 1<<20, 10)
		if err != nil || len(rows) != 1 || rows[0].Data != big {
			t.Fatalf("first row over the budget: %d rows %v", len(rows), err)
		}
	})
}
