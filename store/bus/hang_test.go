package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"switchboard/store/redistest"
)

// TestRedisHangingServer: a Redis that accepts connections and never answers. NewRedis returns
// after its timeout, calls fail within theirs, and Close is bounded by the client's own dial and
// read timeouts (a reconnect in progress inside go-redis cannot be interrupted).
func TestRedisHangingServer(t *testing.T) {
	const dial, read = 200 * time.Millisecond, 200 * time.Millisecond
	c := redis.NewClient(&redis.Options{Addr: redistest.BlackHole(t), ContextTimeoutEnabled: true,
		DialTimeout: dial, ReadTimeout: read, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	start := time.Now()
	b, err := NewRedis(c, "sbtest:hang:", "node-a", func(*Message) {}, WithTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("NewRedis took %s", took)
	}
	ctx := context.Background()
	start = time.Now()
	if _, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "a"}, 3); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Publish = %v", err)
	}
	if took := time.Since(start); took > 400*time.Millisecond {
		t.Fatalf("Publish took %s with a 100ms timeout", took)
	}
	if err := b.Healthy(ctx); !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("Healthy = %v", err)
	}
	start = time.Now()
	_ = b.Close()
	if took := time.Since(start); took > dial+read+time.Second {
		t.Fatalf("Close took %s", took)
	}
}
