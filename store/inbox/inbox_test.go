package inbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"switchboard/store/inbox"
	"switchboard/store/redistest"
)

func TestGroupReadDoneDeadLetterPrune(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	ctx := context.Background()
	ib := inbox.New(c, prefix, "me")
	// Entries added before the group existed are read too.
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: ib.Stream, Values: []string{"pkg_id", "1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	for range 2 { // creating it again is no error
		if err := ib.EnsureGroup(ctx); err != nil {
			t.Fatal(err)
		}
	}
	es, err := ib.Read(ctx, false, 10, 100*time.Millisecond)
	if err != nil || len(es) != 1 || es[0].Fields["pkg_id"] != "1" {
		t.Fatalf("read: %+v %v", es, err)
	}
	if pending, err := ib.Read(ctx, true, 10, 0); err != nil || len(pending) != 1 {
		t.Fatalf("own pending: %+v %v", pending, err)
	}
	if age, err := ib.OldestAge(ctx); err != nil || age <= 0 || age > time.Minute {
		t.Fatalf("age: %s %v", age, err)
	}
	if err := ib.DeadLetter(ctx, es[0], "because"); err != nil {
		t.Fatal(err)
	}
	if n := c.XLen(ctx, ib.Stream).Val(); n != 0 {
		t.Fatalf("stream keeps %d entries", n)
	}
	dead := c.XRange(ctx, ib.Dead, "-", "+").Val()
	if len(dead) != 1 || dead[0].Values["reason"] != "because" || dead[0].Values["entry_id"] != es[0].ID {
		t.Fatalf("dead letters: %+v", dead)
	}
	if age, err := ib.OldestAge(ctx); err != nil || age != 0 {
		t.Fatalf("age of an empty inbox: %s %v", age, err)
	}
	// Another consumer that took nothing is pruned once idle; this one stays.
	other := inbox.New(c, prefix, "gone")
	if _, err := other.Read(ctx, false, 1, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := ib.Prune(ctx, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	cs := c.XInfoConsumers(ctx, ib.Stream, inbox.Group).Val()
	if len(cs) != 1 || cs[0].Name != "me" {
		t.Fatalf("consumers after Prune: %+v", cs)
	}
	// The stream gone (Redis lost its data): NOGROUP, and EnsureGroup mends it.
	c.Del(ctx, ib.Stream)
	if _, err := ib.Read(ctx, false, 1, 10*time.Millisecond); !inbox.IsNoGroup(err) {
		t.Fatalf("read of a deleted stream: %v", err)
	}
	if err := ib.EnsureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ib.Read(ctx, false, 1, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
}
