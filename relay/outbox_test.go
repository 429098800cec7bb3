package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/uptrace/bun"

	"switchboard/store/bus"
	"switchboard/store/outbox"
	"switchboard/store/storetest"
)

const patience = 60 * time.Second

func insert(t testing.TB, db bun.IDB, topic string, pkgID int, data string) {
	t.Helper()
	if err := outbox.Insert(context.Background(), db, outbox.Event{Topic: topic, PkgID: pkgID, Data: json.RawMessage(data)}); err != nil {
		t.Fatal(err)
	}
}

func startOutbox(t testing.TB, o *outbox.Outbox, pub Publisher, set *metrics.Set, edit ...func(*OutboxConfig)) *Outbox {
	cfg := OutboxConfig{Outbox: o, Hub: pub, Rules: rules(t), PollInterval: 50 * time.Millisecond, Metrics: set, MaxBytes: 4096}
	for _, e := range edit {
		e(&cfg)
	}
	r := StartOutbox(cfg)
	t.Cleanup(r.Stop)
	return r
}

// TestOutboxRelaysInOrderAndDeadLettersPoison: rows are published in id order and deleted; the
// rows the broadcast rules refuse are moved aside with their reason, and the rows behind them
// flow.
func TestOutboxRelaysInOrderAndDeadLettersPoison(t *testing.T) {
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		o := outbox.New(db.Bun)
		ctx := context.Background()
		poison := map[string]string{}
		for i := range 30 {
			insert(t, db.Bun, "dashboards.order", 7, fmt.Sprintf(`{"n": %d}`, i))
			switch i {
			case 5: // a topic the policy does not list
				insert(t, db.Bun, "secret.topic", 7, `{}`)
				poison["secret.topic"] = "not allowed by the RBAC policy"
			case 10: // data that is not an object, written in plain SQL
				if _, err := db.Bun.ExecContext(ctx, "INSERT INTO switchboard_outbox (topic, pkg_id, data) VALUES ('dashboards.array', 7, '[1,2]')"); err != nil {
					t.Fatal(err)
				}
				poison["dashboards.array"] = "/data"
			case 15: // too large for SWITCHBOARD_MAX_REQUEST_BYTES (4 KiB here)
				insert(t, db.Bun, "dashboards.big", 7, `{"s": "`+strings.Repeat("x", 5000)+`"}`)
				poison["dashboards.big"] = "larger than"
			case 20: // a pkg_id out of range
				if _, err := db.Bun.ExecContext(ctx, "INSERT INTO switchboard_outbox (topic, pkg_id, data) VALUES ('dashboards.pkg', 4294967296, '{}')"); err != nil {
					t.Fatal(err)
				}
				poison["dashboards.pkg"] = "pkg_id"
			}
		}
		pub, rec := memoryBus(t)
		set := metrics.NewSet()
		startOutbox(t, o, pub, set)
		eventually(t, patience, "30 messages", func() bool { return len(rec.snapshot()) >= 30 })
		msgs := rec.snapshot()
		if len(msgs) != 30 {
			t.Fatalf("delivered %d messages, want 30", len(msgs))
		}
		for i, m := range msgs {
			if m.Topic != "dashboards.order" || n(t, m) != i || m.Seq != uint64(i+1) || m.PkgID != 7 {
				t.Fatalf("message %d: %+v %s", i, m, m.Data)
			}
		}
		eventually(t, patience, "the outbox to empty", func() bool { rows, _ := o.Pending(ctx, 0, 10, 1<<20, 1<<20); return len(rows) == 0 })
		dead, err := o.Dead(ctx)
		if err != nil || len(dead) != len(poison) {
			t.Fatalf("dead rows: %+v %v", dead, err)
		}
		for _, d := range dead {
			if !strings.Contains(d.Reason, poison[d.Topic]) {
				t.Errorf("dead row on %s: reason %q, want it to contain %q", d.Topic, d.Reason, poison[d.Topic])
			}
		}
		if got := counter(set, `relay_events_total{source="outbox",outcome="published"}`); got != 30 {
			t.Errorf("published counter %g", got)
		}
		if got := counter(set, `relay_events_total{source="outbox",outcome="dead_lettered"}`); got != 4 {
			t.Errorf("dead-lettered counter %g", got)
		}
		if got := counter(set, `relay_leader{source="outbox"}`); got != 1 {
			t.Errorf("leader gauge %g", got)
		}
	})
}

// TestOutboxRepublishIsDeliveredOnce: a relay that stops dead after publishing and before
// deleting (its node died there) leaves the rows; the next relay publishes them again, the
// bus's dedup window drops them, and they are deleted: every event reached subscribers once.
func TestOutboxRepublishIsDeliveredOnce(t *testing.T) {
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		o := outbox.New(db.Bun)
		ctx := context.Background()
		for i := range 10 {
			insert(t, db.Bun, "dashboards.once", 7, fmt.Sprintf(`{"n": %d}`, i))
		}
		pub, rec := memoryBus(t)
		halted := make(chan struct{})
		first := StartOutbox(OutboxConfig{Outbox: o, Hub: pub, Rules: rules(t), PollInterval: 50 * time.Millisecond,
			AfterPublish: func(ctx context.Context, _ int) { close(halted); <-ctx.Done() }})
		<-halted
		first.Stop()
		if rows, _ := o.Pending(ctx, 0, 100, 1<<20, 1<<20); len(rows) != 10 {
			t.Fatalf("%d rows left after the halted relay, want 10", len(rows))
		}
		set := metrics.NewSet()
		startOutbox(t, o, pub, set)
		eventually(t, patience, "the outbox to empty", func() bool { rows, _ := o.Pending(ctx, 0, 10, 1<<20, 1<<20); return len(rows) == 0 })
		time.Sleep(100 * time.Millisecond) // anything delivered twice would be here by now
		if msgs := rec.snapshot(); len(msgs) != 10 {
			t.Fatalf("delivered %d messages, want 10", len(msgs))
		}
		if got := counter(set, `relay_events_total{source="outbox",outcome="duplicate"}`); got != 10 {
			t.Errorf("duplicate counter %g, want 10", got)
		}
	})
}

// TestOutboxTwoRelaysRace: two relays (two nodes' database handles) race for the lease while
// four producers write concurrently: every event is delivered once, one relay leads at a time,
// and each producer's events keep their order.
func TestOutboxTwoRelaysRace(t *testing.T) {
	url := storetest.PostgresURL(t)
	dbA, dbB := storetest.NewDB(t, url), storetest.NewDB(t, url)
	pub, rec := memoryBus(t)
	setA, setB := metrics.NewSet(), metrics.NewSet()
	a := startOutbox(t, outbox.New(dbA.Bun), pub, setA)
	startOutbox(t, outbox.New(dbB.Bun), pub, setB)

	const producers, each = 4, 100
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db := dbA
			if p%2 == 1 {
				db = dbB
			}
			for i := range each {
				err := db.Bun.RunInTx(context.Background(), nil, func(ctx context.Context, tx bun.Tx) error {
					return outbox.Insert(ctx, tx, outbox.Event{Topic: "dashboards.race", PkgID: 7,
						Data: json.RawMessage(fmt.Sprintf(`{"p": %d, "n": %d}`, p, i))})
				})
				if err != nil {
					t.Error(err)
					return
				}
				if p == 0 && i == each/2 {
					a.Stop() // the leader, or not, leaves half-way; the other carries on
				}
			}
		}()
	}
	wg.Wait()
	eventually(t, patience, "every event", func() bool { return len(rec.snapshot()) >= producers*each })
	time.Sleep(100 * time.Millisecond)
	msgs := rec.snapshot()
	if len(msgs) != producers*each {
		t.Fatalf("delivered %d, want %d", len(msgs), producers*each)
	}
	next := make([]int, producers)
	for i, m := range msgs {
		var d struct{ P, N int }
		_ = json.Unmarshal(m.Data, &d)
		if d.N != next[d.P] {
			t.Fatalf("producer %d: event %d arrived when %d was next", d.P, d.N, next[d.P])
		}
		next[d.P]++
		if m.Seq != uint64(i+1) {
			t.Fatalf("message %d has seq %d", i, m.Seq)
		}
	}
	if l := counter(setA, `relay_leader{source="outbox"}`) + counter(setB, `relay_leader{source="outbox"}`); l != 1 {
		t.Errorf("leaders: %g", l)
	}
}

// TestOutboxBurstReportsLag: 10 000 rows committed at once are all relayed, and the relay lag
// is reported while they wait and falls back to 0.
func TestOutboxBurstReportsLag(t *testing.T) {
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		o := outbox.New(db.Bun)
		ctx := context.Background()
		const burst = 10_000
		q := "INSERT INTO switchboard_outbox (topic, pkg_id, data) SELECT 'dashboards.burst', 7, json_build_object('n', g) FROM generate_series(0, ?) g"
		if db.Dialect != "postgres" {
			q = "WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < ?) " +
				"INSERT INTO switchboard_outbox (topic, pkg_id, data) SELECT 'dashboards.burst', 7, json_object('n', n) FROM g"
		}
		if _, err := db.Bun.NewRaw(q, burst-1).Exec(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond) // the rows' age, for the lag to show
		rec := &recorder{}
		b := bus.NewMemory(rec.deliver)
		defer b.Close()
		set := metrics.NewSet()
		var lag float64
		r := startOutbox(t, o, busPublisher{b: b, history: func(string) int { return 100 }}, set, func(c *OutboxConfig) {
			c.AfterPublish = func(context.Context, int) {
				if l := counter(c.Metrics, `relay_lag_seconds{source="outbox"}`); l > lag {
					lag = l
				}
			}
		})
		if err := r.Healthy(ctx); err != nil {
			t.Errorf("healthy with a minute to go: %v", err)
		}
		eventually(t, patience, "every row relayed", func() bool { return len(rec.snapshot()) >= burst })
		eventually(t, patience, "the lag back to 0", func() bool { return counter(set, `relay_lag_seconds{source="outbox"}`) == 0 })
		msgs := rec.snapshot()
		for i, m := range msgs {
			if n(t, m) != i {
				t.Fatalf("message %d is n=%d", i, n(t, m))
			}
		}
		if lag < 1 {
			t.Errorf("lag reported while relaying: %gs, want at least 1s", lag)
		}
		t.Logf("%d rows relayed; lag reported up to %.1fs", len(msgs), lag)
	})
}

// TestOutboxHealthyReportsAStuckRelay: with nothing relaying, Healthy fails once the oldest row
// is older than StuckAfter.
func TestOutboxHealthyReportsAStuckRelay(t *testing.T) {
	db := storetest.NewDB(t, storetest.SQLiteURL(t))
	o := outbox.New(db.Bun)
	r := &Outbox{cfg: OutboxConfig{Outbox: o, StuckAfter: time.Second}}
	ctx := context.Background()
	if err := r.Healthy(ctx); err != nil {
		t.Fatal(err)
	}
	insert(t, db.Bun, "dashboards.stuck", 7, `{}`)
	eventually(t, patience, "Healthy to fail", func() bool {
		err := r.Healthy(ctx)
		return err != nil && strings.Contains(err.Error(), "relay stuck")
	})
}

// TestOutboxCommitOrderOfConflictingProducers: producers whose transactions change the same row
// and insert their event after the change commit one after another on that row's lock; their
// events reach subscribers in that commit order (the counter each transaction read), while a
// relay runs throughout.
func TestOutboxCommitOrderOfConflictingProducers(t *testing.T) {
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		ctx := context.Background()
		if _, err := db.Bun.ExecContext(ctx, "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Bun.ExecContext(ctx, "INSERT INTO counter VALUES (1, 0)"); err != nil {
			t.Fatal(err)
		}
		pub, rec := memoryBus(t)
		startOutbox(t, outbox.New(db.Bun), pub, metrics.NewSet())
		const producers, each = 4, 50
		var wg sync.WaitGroup
		for range producers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each {
					err := db.Bun.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
						var n int
						if err := tx.NewRaw("UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n").Scan(ctx, &n); err != nil {
							return err
						}
						return outbox.Insert(ctx, tx, outbox.Event{Topic: "dashboards.commits", PkgID: 7, Data: json.RawMessage(fmt.Sprintf(`{"n": %d}`, n))})
					})
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		eventually(t, patience, "every event", func() bool { return len(rec.snapshot()) >= producers*each })
		for i, m := range rec.snapshot() {
			if n(t, m) != i+1 {
				t.Fatalf("event %d carries counter %d: not in commit order", i, n(t, m))
			}
		}
	})
}
