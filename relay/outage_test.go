package relay

import (
	"context"
	"fmt"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/store/bus"
	"switchboard/store/outbox"
	"switchboard/store/redistest"
	"switchboard/store/storetest"
)

// TestOutboxWaitsOutARedisOutage: with the bus's Redis killed, the relay cannot publish; it
// retries (counted) and keeps every row; once Redis is back, every row is published, in order,
// and none twice.
func TestOutboxWaitsOutARedisOutage(t *testing.T) {
	db := storetest.NewDB(t, storetest.PostgresURL(t))
	srv := redistest.StartServer(t)
	rc := srv.Client()
	defer rc.Close()
	rec := &recorder{}
	b, err := bus.NewRedis(rc, "outage:", "node-a", rec.deliver)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	o := outbox.New(db.Bun)
	set := metrics.NewSet()
	startOutbox(t, o, busPublisher{b: b, history: func(string) int { return 100 }}, set)
	ctx := context.Background()

	srv.Kill()
	for i := range 20 {
		insert(t, db.Bun, "dashboards.outage", 7, fmt.Sprintf(`{"n": %d}`, i))
	}
	eventually(t, patience, "the relay to retry", func() bool {
		return counter(set, `relay_retries_total{source="outbox"}`) >= 2
	})
	if rows, err := o.Pending(ctx, 0, 100, 1<<20, 1<<20); err != nil || len(rows) != 20 {
		t.Fatalf("rows kept during the outage: %d %v", len(rows), err)
	}
	srv.Restart()
	eventually(t, patience, "the outbox to empty", func() bool {
		rows, err := o.Pending(ctx, 0, 10, 1<<20, 1<<20)
		return err == nil && len(rows) == 0
	})
	w, err := b.History(ctx, "dashboards.outage", 0)
	if err != nil || len(w.Msgs) != 20 || w.Latest != 20 {
		t.Fatalf("history after the outage: latest %d, %d messages, %v", w.Latest, len(w.Msgs), err)
	}
	for i, m := range w.Msgs {
		if n(t, m) != i || m.Seq != uint64(i+1) {
			t.Fatalf("message %d: seq %d n=%d", i, m.Seq, n(t, m))
		}
	}
}
