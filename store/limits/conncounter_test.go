package limits

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"switchboard/store/redistest"
)

const (
	testTTL       = 600 * time.Millisecond
	testHeartbeat = 200 * time.Millisecond
)

// node starts a RedisConnCounter with the short test TTL and stops its heartbeat at cleanup.
func node(t *testing.T, c redis.UniversalClient, prefix, id string, opts ...Option) *RedisConnCounter {
	n := NewRedisConnCounter(c, prefix, id, append([]Option{WithConnTTL(testTTL, testHeartbeat)}, opts...)...)
	n.Start(context.Background())
	t.Cleanup(func() { _ = n.Close() })
	return n
}

func mustAcquire(t *testing.T, c ConnCounter, user, conn string, limit int, want bool) {
	t.Helper()
	ok, err := c.Acquire(context.Background(), user, conn, limit)
	if err != nil || ok != want {
		t.Fatalf("Acquire(%s, %s, %d) = %v, %v; want %v", user, conn, limit, ok, err, want)
	}
}

func TestConnCounterAcrossNodes(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	a, b := node(t, c, prefix, "node-a"), node(t, c, prefix, "node-b")
	ctx := context.Background()

	mustAcquire(t, a, "u1", "c1", 3, true)
	mustAcquire(t, a, "u1", "c2", 3, true)
	mustAcquire(t, b, "u1", "c3", 3, true)
	mustAcquire(t, b, "u1", "c4", 3, false)
	mustAcquire(t, a, "u1", "c5", 3, false)
	mustAcquire(t, a, "u1", "c1", 3, true) // a held connection refreshes, it does not count twice
	mustAcquire(t, b, "u2", "c1", 3, true) // users are counted separately

	if err := a.Release(ctx, "u1", "c1"); err != nil {
		t.Fatal(err)
	}
	mustAcquire(t, b, "u1", "c4", 3, true)
	mustAcquire(t, a, "u1", "c6", 3, false)
	if err := b.Release(ctx, "u1", "never-acquired"); err != nil {
		t.Fatalf("releasing an unknown connection: %v", err)
	}
	members, _ := c.ZRange(ctx, prefix+"conns:u1", 0, -1).Result()
	if len(members) != 3 {
		t.Fatalf("members %v, want node-a:c2 node-b:c3 node-b:c4", members)
	}
	if _, err := a.Acquire(ctx, "", "x", 1); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty user: %v", err)
	}
}

func TestConnCounterDeadNodeFreesSlots(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	a, b := node(t, c, prefix, "node-a"), node(t, c, prefix, "node-b")
	mustAcquire(t, a, "u1", "c1", 2, true)
	mustAcquire(t, a, "u1", "c2", 2, true)

	// While node-a beats, its connections outlive the TTL many times over.
	until := time.Now().Add(4 * testTTL)
	for time.Now().Before(until) {
		mustAcquire(t, b, "u1", "c3", 2, false)
		time.Sleep(50 * time.Millisecond)
	}

	// node-a dies: its heartbeat stops and it never releases.
	_ = a.Close()
	killed := time.Now()
	// The slots come back once the TTL passes without a heartbeat (the generous bound only
	// catches a slot that never expires; how soon is logged). That they are not freed early is
	// the loop above: held through four TTLs while the node beat. No lower bound on the time
	// after the kill: on a loaded machine the last beat can be late by anything.
	ok := waitFor(testTTL+10*time.Second, func() bool {
		ok, err := b.Acquire(context.Background(), "u1", "c3", 2)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	})
	freed := time.Since(killed)
	if !ok {
		t.Fatalf("dead node's slot freed after %s (ok=%v); the TTL is %s", freed, ok, testTTL)
	}
	t.Logf("dead node's slot freed %s after it stopped (TTL %s, heartbeat %s)", freed, testTTL, testHeartbeat)
	mustAcquire(t, b, "u1", "c4", 2, true)
	mustAcquire(t, b, "u1", "c5", 2, false)
	if ttl := c.PTTL(context.Background(), prefix+"conns:u1").Val(); ttl <= 0 || ttl > testTTL {
		t.Fatalf("key PTTL %s, want within the connection TTL", ttl)
	}
}

// Held counts a user's live connections on every node and stops counting a dead node's once
// they expire; it records nothing.
func TestConnCounterHeld(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	a, b := node(t, c, prefix, "node-a"), node(t, c, prefix, "node-b")
	ctx := context.Background()
	held := func(n *RedisConnCounter, user string) int {
		t.Helper()
		got, err := n.Held(ctx, user)
		if err != nil {
			t.Fatalf("Held(%s): %v", user, err)
		}
		return got
	}
	if n := held(a, "u1"); n != 0 {
		t.Fatalf("Held of a user without connections = %d", n)
	}
	mustAcquire(t, a, "u1", "c1", 3, true)
	mustAcquire(t, a, "u1", "c2", 3, true)
	mustAcquire(t, b, "u1", "c3", 3, true)
	if na, nb := held(a, "u1"), held(b, "u1"); na != 3 || nb != 3 {
		t.Fatalf("Held on node-a %d, node-b %d; want 3 on both", na, nb)
	}
	for range 5 {
		held(b, "u1")
	}
	mustAcquire(t, b, "u1", "c4", 3, false) // Held recorded nothing
	if err := b.Release(ctx, "u1", "c3"); err != nil {
		t.Fatal(err)
	}
	if n := held(a, "u1"); n != 2 {
		t.Fatalf("Held after a release = %d, want 2", n)
	}
	_ = a.Close() // node-a dies with two connections
	if !waitFor(testTTL+2*time.Second, func() bool { return held(b, "u1") == 0 }) {
		t.Fatalf("a dead node's connections still counted after its TTL: %d", held(b, "u1"))
	}
	if _, err := a.Held(ctx, ""); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty user: %v", err)
	}
}

func TestConnCounterHeartbeatReregisters(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	a := node(t, c, prefix, "node-a")
	mustAcquire(t, a, "u1", "c1", 5, true)
	mustAcquire(t, a, "u2", "c1", 5, true)
	ctx := context.Background()
	// Redis lost everything (a restart without persistence): the next heartbeat restores it.
	c.Del(ctx, prefix+"conns:u1", prefix+"conns:u2")
	ok := waitFor(3*testHeartbeat, func() bool {
		return c.ZCard(ctx, prefix+"conns:u1").Val() == 1 && c.ZCard(ctx, prefix+"conns:u2").Val() == 1
	})
	if !ok {
		t.Fatal("heartbeat did not re-register the live connections")
	}
}

func TestConnCounterReleaseRacesHeartbeat(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	// A heartbeat every millisecond collides with the releases below as often as possible.
	a := NewRedisConnCounter(c, prefix, "node-a", WithConnTTL(time.Minute, time.Millisecond))
	a.Start(context.Background())
	ctx := context.Background()
	for i := range 300 {
		id := "c" + strconv.Itoa(i)
		mustAcquire(t, a, "u1", id, 10, true)
		if i%7 == 0 {
			time.Sleep(time.Millisecond)
		}
		if err := a.Release(ctx, "u1", id); err != nil {
			t.Fatal(err)
		}
	}
	_ = a.Close()
	if n := c.ZCard(ctx, prefix+"conns:u1").Val(); n != 0 {
		t.Fatalf("%d released connections resurrected by the heartbeat", n)
	}
}

func TestConnCounterCloseStopsHeartbeat(t *testing.T) {
	c := redistest.Client(t)
	ignore := goleak.IgnoreCurrent()
	a := NewRedisConnCounter(c, redistest.Prefix(t, c), "node-a")
	_ = a.Close() // before Start: a no-op
	a.Start(context.Background())
	a.Start(context.Background())
	_ = a.Close()
	_ = a.Close()
	goleak.VerifyNone(t, ignore)

	ctx, cancel := context.WithCancel(context.Background())
	b := NewRedisConnCounter(c, "", "")
	b.Start(ctx)
	cancel() // the heartbeat also ends with its context; Close still waits
	_ = b.Close()
	goleak.VerifyNone(t, ignore)
	if b.TTL() != DefaultConnTTL || b.heartbeat != DefaultHeartbeat || b.prefix != DefaultPrefix || b.node == "" {
		t.Fatalf("defaults: ttl %s, heartbeat %s, prefix %q, node %q", b.TTL(), b.heartbeat, b.prefix, b.node)
	}
	if n := NewRedisConnCounter(c, "", "", WithConnTTL(time.Second, time.Second)); n.heartbeat > n.ttl/2 {
		t.Fatalf("heartbeat %s not lowered below TTL %s / 2", n.heartbeat, n.ttl)
	}
}

func TestMemoryConnCounter(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	m := NewMemoryConnCounter()
	ctx := context.Background()
	mustAcquire(t, m, "u1", "c1", 2, true)
	mustAcquire(t, m, "u1", "c2", 2, true)
	mustAcquire(t, m, "u1", "c3", 2, false)
	mustAcquire(t, m, "u1", "c1", 2, true)
	mustAcquire(t, m, "u2", "c1", 2, true)
	if err := m.Release(ctx, "u1", "c1"); err != nil {
		t.Fatal(err)
	}
	mustAcquire(t, m, "u1", "c3", 2, true)
	_ = m.Release(ctx, "u1", "c2")
	_ = m.Release(ctx, "u1", "c3")
	_ = m.Release(ctx, "u1", "unknown")
	if n, err := m.Held(ctx, "u2"); n != 1 || err != nil {
		t.Fatalf("Held(u2) = %d, %v; want 1", n, err)
	}
	if _, err := m.Held(ctx, ""); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Held of an empty user: %v", err)
	}
	if m.Count("u1") != 0 || len(m.users) != 1 {
		t.Fatalf("after releasing all: count %d, users %d", m.Count("u1"), len(m.users))
	}
	if _, err := m.Acquire(ctx, "u1", "c1", 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("limit 0: %v", err)
	}
	goleak.VerifyNone(t, ignore)
}
