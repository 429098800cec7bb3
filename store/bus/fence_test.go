package bus

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"switchboard/store/redistest"
)

// A stream written by another Redis server (its srv is not this server's run_id: a promoted
// replica, a restarted server) is not continued: the next publish starts a new epoch at seq 1.
func TestRedisFenceOtherServer(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	b := newRedisBus(t, c, prefix, "node-a", (&recorder{}).deliver)
	ctx := context.Background()
	for range 3 {
		if _, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "dash.f"}, 10); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := b.History(ctx, "dash.f", 0)
	if err := c.HSet(ctx, b.streamKey("dash.f"), "srv", "0123456789abcdef0123456789abcdef01234567").Err(); err != nil {
		t.Fatal(err)
	}
	seq, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "dash.f"}, 10)
	after, _ := b.History(ctx, "dash.f", 0)
	if err != nil || seq != 1 || after.Epoch == before.Epoch || len(after.Msgs) != 1 {
		t.Fatalf("publish on a stream of another server: seq %d, %v; epoch %s → %s, %d kept", seq, err, before.Epoch, after.Epoch, len(after.Msgs))
	}
}

// fenceCase publishes a stream, lets kill take the primary down and a replica over, publishes
// again, and checks that the stream went on under a new epoch: nobody can take the new messages
// for the old ones, and a reader of the old epoch is told it cannot recover.
func fenceCase(t *testing.T, c redis.UniversalClient, kill func(b *Redis, topic string)) {
	prefix := redistest.Prefix(t, c)
	rec := &recorder{}
	b := newRedisBus(t, c, prefix, "node-a", rec.deliver, WithProbeInterval(100*time.Millisecond), WithTimeout(2*time.Second))
	waitHealthy(t, b, 20*time.Second)
	ctx := context.Background()
	const topic = "dashboards.fence"
	for i := 1; i <= 5; i++ {
		if seq, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: topic, Data: json.RawMessage(`1`)}, 100); err != nil || seq != uint64(i) {
			t.Fatalf("publish %d: %d, %v", i, seq, err)
		}
	}
	before, err := b.History(ctx, topic, 0)
	if err != nil || before.Latest != 5 {
		t.Fatalf("History before = %+v, %v", before, err)
	}
	kill(b, topic)
	// The subscriptions follow the new primary (what was published while they were away would be
	// read back from the history: see OnSubscribed).
	waitHealthy(t, b, 60*time.Second)
	var seq uint64
	if !waitFor(60*time.Second, func() bool {
		seq, _, err = b.Publish(ctx, &Message{PkgID: 1, Topic: topic, Data: json.RawMessage(`2`)}, 100)
		return err == nil
	}) {
		t.Fatalf("no publish after the failover: %v", err)
	}
	after, err := b.History(ctx, topic, 5)
	if err != nil || seq != 1 || after.Epoch == before.Epoch || after.Latest != 1 {
		t.Fatalf("after the failover: seq %d, History(5) = %+v, %v; the epoch before was %s", seq, after, err, before.Epoch)
	}
	// The new message reaches the subscriber too, under the new epoch.
	if !waitFor(30*time.Second, func() bool {
		got := rec.snapshot()
		return len(got) > 0 && got[len(got)-1].Epoch == after.Epoch
	}) {
		t.Fatalf("the message of the new epoch was not delivered: %d messages", rec.len())
	}
}

// A Sentinel failover and a cluster primary killed: the stream is fenced (new epoch) on the
// promoted replica.
func TestRedisFenceFailover(t *testing.T) {
	t.Run("sentinel", func(t *testing.T) {
		s := redistest.StartSentinel(t)
		c := s.Client()
		t.Cleanup(func() { _ = c.Close() })
		fenceCase(t, c, func(*Redis, string) {
			if _, err := s.KillPrimary(60 * time.Second); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("cluster", func(t *testing.T) {
		cl := redistest.StartCluster(t)
		c := cl.Client()
		t.Cleanup(func() { _ = c.Close() })
		fenceCase(t, c, func(b *Redis, topic string) {
			if _, err := cl.KillPrimaryOf(b.streamKey(topic), 60*time.Second); err != nil {
				t.Fatal(err)
			}
		})
	})
}

// Where the ACL forbids INFO, publishing still works (without the fence: srv stays "").
func TestRedisFenceWithoutInfo(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client()
	ctx := context.Background()
	if err := admin.Do(ctx, "ACL", "SETUSER", "noinfo", "on", "nopass", "~*", "&*", "+@all", "-info").Err(); err != nil {
		t.Fatal(err)
	}
	c := srv.Client(func(o *redis.Options) { o.Username, o.Password = "noinfo", "any" }) // nopass: any password
	if err := c.Info(ctx, "server").Err(); err == nil {
		t.Fatal("INFO allowed for the restricted user")
	}
	b := newRedisBus(t, c, "", "node-a", (&recorder{}).deliver)
	for i := 1; i <= 3; i++ {
		if seq, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "dash.acl"}, 10); err != nil || seq != uint64(i) {
			t.Fatalf("publish %d without INFO: %d, %v", i, seq, err)
		}
	}
	if got := admin.HGet(ctx, b.streamKey("dash.acl"), "srv").Val(); got != "" {
		t.Fatalf("srv = %q, want empty", got)
	}
}
