package relay

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"switchboard/store/inbox"
	"switchboard/store/redistest"
)

func xadd(t testing.TB, c redis.UniversalClient, stream string, values ...string) {
	t.Helper()
	if err := c.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: values}).Err(); err != nil {
		t.Fatal(err)
	}
}

func startInbox(t testing.TB, ib *inbox.Inbox, pub Publisher, set *metrics.Set, edit ...func(*InboxConfig)) *Inbox {
	cfg := InboxConfig{Inbox: ib, Hub: pub, Rules: rules(t), ClaimAfter: 500 * time.Millisecond, Metrics: set}
	for _, e := range edit {
		e(&cfg)
	}
	r := StartInbox(cfg)
	t.Cleanup(r.Stop)
	return r
}

// TestInboxRelaysAndDeadLettersPoison: entries are published in stream order, acknowledged and
// deleted; the ones the rules refuse go to the dead-letter stream with the reason, and the
// entries behind them flow.
func TestInboxRelaysAndDeadLettersPoison(t *testing.T) {
	c := redistest.Client(t)
	inboxPoison(t, c, redistest.Prefix(t, c))
}

// TestInboxOnRedisCluster: the same on a Redis Cluster, where the stream and its dead-letter
// stream live in different slots.
func TestInboxOnRedisCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Redis Cluster")
	}
	c := redistest.SharedCluster(t).Client()
	t.Cleanup(func() { _ = c.Close() }) // after the prefix's keys are deleted
	inboxPoison(t, c, redistest.Prefix(t, c))
}

func inboxPoison(t *testing.T, c redis.UniversalClient, prefix string) {
	ib := inbox.New(c, prefix, "node-a")
	poison := map[string]string{}
	for i := range 20 {
		xadd(t, c, ib.Stream, "topic", "dashboards.inbox", "pkg_id", "7", "data", fmt.Sprintf(`{"n": %d}`, i))
		switch i {
		case 3:
			xadd(t, c, ib.Stream, "topic", "authors", "pkg_id", "3", "data", `{}`)
			poison["authors"] = "only the server publishes"
		case 6:
			xadd(t, c, ib.Stream, "topic", "dashboards.nopkg", "data", `{}`)
			poison["dashboards.nopkg"] = "pkg_id is missing"
		case 9:
			xadd(t, c, ib.Stream, "topic", "dashboards.json", "pkg_id", "7", "data", `{"n":`)
			poison["dashboards.json"] = "not valid JSON"
		case 12:
			xadd(t, c, ib.Stream, "topic", "dashboards.key", "pkg_id", "7", "key", strings.Repeat("k", 300))
			poison["dashboards.key"] = "key must be"
		}
	}
	pub, rec := memoryBus(t)
	set := metrics.NewSet()
	startInbox(t, ib, pub, set)
	eventually(t, patience, "20 messages", func() bool { return len(rec.snapshot()) >= 20 })
	for i, m := range rec.snapshot() {
		if m.Topic != "dashboards.inbox" || n(t, m) != i || m.Seq != uint64(i+1) {
			t.Fatalf("message %d: %+v %s", i, m, m.Data)
		}
	}
	ctx := context.Background()
	eventually(t, patience, "the stream to empty", func() bool { return c.XLen(ctx, ib.Stream).Val() == 0 })
	dead, err := c.XRange(ctx, ib.Dead, "-", "+").Result()
	if err != nil || len(dead) != len(poison) {
		t.Fatalf("dead letters: %+v %v", dead, err)
	}
	for _, d := range dead {
		topic, reason := fmt.Sprint(d.Values["topic"]), fmt.Sprint(d.Values["reason"])
		if !strings.Contains(reason, poison[topic]) || d.Values["entry_id"] == nil {
			t.Errorf("dead letter %v: want a reason with %q and the entry id", d.Values, poison[topic])
		}
	}
	if got := counter(set, `relay_events_total{source="inbox",outcome="dead_lettered"}`); got != 4 {
		t.Errorf("dead-lettered counter %g", got)
	}
	if got := counter(set, `relay_events_total{source="inbox",outcome="published"}`); got != 20 {
		t.Errorf("published counter %g", got)
	}
}

// TestInboxDeadNodesEntriesAreClaimedAndDeliveredOnce: a node that took entries, published
// them and died before acknowledging leaves them pending; another node claims them after
// ClaimAfter, publishes them again, the dedup drops them, and each reached subscribers once.
func TestInboxDeadNodesEntriesAreClaimedAndDeliveredOnce(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	pub, rec := memoryBus(t)
	dead := inbox.New(c, prefix, "node-dead")
	halted := make(chan struct{})
	first := StartInbox(InboxConfig{Inbox: dead, Hub: pub, Rules: rules(t), ClaimAfter: time.Hour,
		AfterPublish: func(ctx context.Context, _ int) { close(halted); <-ctx.Done() }})
	for i := range 10 {
		xadd(t, c, dead.Stream, "topic", "dashboards.claim", "pkg_id", "7", "data", fmt.Sprintf(`{"n": %d}`, i), "key", fmt.Sprintf("evt-%d", i))
	}
	<-halted
	first.Stop()
	ctx := context.Background()
	if p := c.XPending(ctx, dead.Stream, inbox.Group).Val(); p == nil || p.Count == 0 {
		t.Fatalf("nothing pending after the node died: %+v", p)
	}
	set := metrics.NewSet()
	startInbox(t, inbox.New(c, prefix, "node-b"), pub, set)
	eventually(t, patience, "the stream to empty", func() bool { return c.XLen(ctx, dead.Stream).Val() == 0 })
	time.Sleep(100 * time.Millisecond)
	msgs := rec.snapshot()
	if len(msgs) != 10 {
		t.Fatalf("delivered %d messages, want 10", len(msgs))
	}
	for i, m := range msgs {
		if n(t, m) != i {
			t.Fatalf("message %d is n=%d", i, n(t, m))
		}
	}
	if got := counter(set, `relay_claimed_total{source="inbox"}`); got == 0 {
		t.Error("claimed counter 0")
	}
	if got := counter(set, `relay_events_total{source="inbox",outcome="duplicate"}`); got == 0 {
		t.Error("duplicate counter 0")
	}
}

// TestInboxSurvivesItsStreamDeleted: the stream and its group gone (Redis lost its data, or
// someone deleted the key): the relay creates the group again and relays what comes next.
func TestInboxSurvivesItsStreamDeleted(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	ib := inbox.New(c, prefix, "node-a")
	pub, rec := memoryBus(t)
	startInbox(t, ib, pub, metrics.NewSet())
	xadd(t, c, ib.Stream, "topic", "dashboards.gone", "pkg_id", "7", "data", `{"n": 0}`)
	eventually(t, patience, "the first message", func() bool { return len(rec.snapshot()) == 1 })
	c.Del(context.Background(), ib.Stream)
	xadd(t, c, ib.Stream, "topic", "dashboards.gone", "pkg_id", "7", "data", `{"n": 1}`)
	eventually(t, patience, "the message after the stream was deleted", func() bool { return len(rec.snapshot()) == 2 })
}
