package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"switchboard/store/redistest"
)

// TestRedisHangingServer: a Redis that accepts connections and never answers. NewRedis returns,
// calls fail with ErrUnavailable once the bus's own timeout passes, and Close is bounded by the
// client's dial and read timeouts (a reconnect in progress inside go-redis cannot be
// interrupted). The client's timeouts are long, so only the bus's timeout can end a call early:
// the bounds below are many times that timeout and catch a call that ignores it, not a slow
// machine. How long a failing call takes is measured by BenchmarkRedisHangingPublish.
func TestRedisHangingServer(t *testing.T) {
	const dial, read = 1500 * time.Millisecond, 1500 * time.Millisecond
	b := hangingBus(t, dial, read)
	start := time.Now()
	ctx := context.Background()
	if _, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "a"}, 3); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Publish = %v", err)
	}
	if took := time.Since(start); took >= read {
		t.Fatalf("Publish took %s: the bus's 100ms timeout was not applied (the client's read timeout is %s)", took, read)
	}
	if err := b.Healthy(ctx); !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("Healthy = %v", err)
	}
	done := make(chan struct{})
	go func() { _ = b.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(dial + read + 10*time.Second):
		t.Fatal("Close hangs")
	}
}

// hangingBus is a Redis bus in front of a server that never answers, with a 100 ms bus timeout.
func hangingBus(t testing.TB, dial, read time.Duration) *Redis {
	c := redis.NewClient(&redis.Options{Addr: redistest.BlackHole(t), ContextTimeoutEnabled: true,
		DialTimeout: dial, ReadTimeout: read, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	b, err := NewRedis(c, "sbtest:hang:", "node-a", func(*Message) {}, WithTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// BenchmarkRedisHangingPublish measures how long a publish to a Redis that never answers takes
// to fail (the bus's timeout is 100 ms).
func BenchmarkRedisHangingPublish(b *testing.B) {
	bus := hangingBus(b, 3*time.Second, 3*time.Second)
	defer bus.Close()
	ctx := context.Background()
	for b.Loop() {
		if _, _, err := bus.Publish(ctx, &Message{PkgID: 1, Topic: "a"}, 3); !errors.Is(err, ErrUnavailable) {
			b.Fatalf("Publish = %v", err)
		}
	}
}
