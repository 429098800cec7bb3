package limits

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"switchboard/store/redistest"
)

// limiters runs f against both implementations.
func limiters(t *testing.T, f func(t *testing.T, lim RateLimiter)) {
	t.Run("redis", func(t *testing.T) {
		c := redistest.Client(t)
		f(t, NewRedisRateLimiter(c, redistest.Prefix(t, c)))
	})
	t.Run("memory", func(t *testing.T) {
		lim := NewMemoryRateLimiter()
		t.Cleanup(func() { _ = lim.Close() })
		f(t, lim)
	})
}

func TestRateLimiterWindow(t *testing.T) {
	limiters(t, func(t *testing.T, lim RateLimiter) {
		const n = 5
		const window = 400 * time.Millisecond
		ctx := context.Background()
		t0 := time.Now()
		for i := range n {
			d, err := lim.Allow(ctx, "http", "alice", n, window)
			if err != nil || !d.Allowed || d.Limit != n || d.Remaining != n-1-i {
				t.Fatalf("request %d: %+v, %v; want allowed with %d remaining", i+1, d, err, n-1-i)
			}
			if last := i == n-1; last != (d.RetryAfter > 0) || d.Reset <= 0 || d.Reset > window {
				t.Fatalf("request %d: RetryAfter %s, Reset %s", i+1, d.RetryAfter, d.Reset)
			}
		}
		d, err := lim.Allow(ctx, "http", "alice", n, window)
		elapsed := time.Since(t0)
		if err != nil || d.Allowed || d.Remaining != 0 {
			t.Fatalf("request %d: %+v, %v; want refused", n+1, d, err)
		}
		// The oldest request was made after t0, so a slot frees no earlier than t0+window.
		if d.RetryAfter > window || d.RetryAfter < window-elapsed-time.Millisecond || d.Reset != d.RetryAfter {
			t.Fatalf("refused after %s with RetryAfter %s, Reset %s; window %s", elapsed, d.RetryAfter, d.Reset, window)
		}
		if other, err := lim.Allow(ctx, "http", "bob", n, window); err != nil || !other.Allowed {
			t.Fatalf("another id is limited separately: %+v, %v", other, err)
		}
		if other, err := lim.Allow(ctx, "ws", "alice", n, window); err != nil || !other.Allowed {
			t.Fatalf("another scope is limited separately: %+v, %v", other, err)
		}

		// Refused polls are not recorded: the first request's slot frees one window after it.
		var passed time.Duration
		ok := waitFor(window+time.Second, func() bool {
			d, err := lim.Allow(ctx, "http", "alice", n, window)
			if err != nil {
				t.Fatal(err)
			}
			passed = time.Since(t0)
			return d.Allowed
		})
		if !ok {
			t.Fatalf("still refused %s after the first request; window %s", time.Since(t0), window)
		}
		if passed < window {
			t.Fatalf("allowed again after %s, before the window of %s slid", passed, window)
		}
		t.Logf("allowed again %s after the first request (window %s)", passed, window)
	})
}

func TestRateLimiterConcurrent(t *testing.T) {
	limiters(t, func(t *testing.T, lim RateLimiter) {
		const limit, goroutines, each = 50, 64, 8
		var (
			wg        sync.WaitGroup
			allowed   atomic.Int64
			mu        sync.Mutex
			remaining = map[int]int{}
			start     = make(chan struct{})
		)
		for range goroutines {
			wg.Go(func() {
				<-start
				for range each {
					d, err := lim.Allow(context.Background(), "ws", "carol", limit, time.Minute)
					if err != nil {
						t.Error(err)
						return
					}
					if d.Allowed {
						allowed.Add(1)
						mu.Lock()
						remaining[d.Remaining]++
						mu.Unlock()
					}
				}
			})
		}
		close(start)
		wg.Wait()
		if got := allowed.Load(); got != limit {
			t.Fatalf("%d of %d concurrent requests allowed, want exactly %d", got, goroutines*each, limit)
		}
		// Every admission saw a different count: the checks were atomic.
		for r := range limit {
			if remaining[r] != 1 {
				t.Fatalf("Remaining=%d answered %d times, want once (all: %v)", r, remaining[r], remaining)
			}
		}
	})
}

func TestRateLimiterSameInstant(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		c := redistest.Client(t)
		prefix := redistest.Prefix(t, c)
		lim := NewRedisRateLimiter(c, prefix)
		const burst = 200
		var wg sync.WaitGroup
		for range burst {
			wg.Go(func() {
				if d, err := lim.Allow(context.Background(), "ws", "dave", 1000, time.Minute); err != nil || !d.Allowed {
					t.Errorf("%+v, %v", d, err)
				}
			})
		}
		wg.Wait()
		key := prefix + "rl:ws:dave"
		entries, err := c.ZRangeWithScores(context.Background(), key, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		scores := map[float64]int{}
		for _, z := range entries {
			scores[z.Score]++
		}
		if len(entries) != burst {
			t.Fatalf("%d entries for %d requests", len(entries), burst)
		}
		t.Logf("%d requests recorded in %d distinct microseconds", burst, len(scores))

		// Force the same instant: the script with Redis's clock frozen still counts every call.
		frozen := strings.Replace(rateLimitLua, "redis.call('TIME')", "{'1700000000', '123456'}", 1)
		frozenKey := prefix + "rl:ws:frozen"
		for i := range 50 {
			res, err := c.Eval(context.Background(), frozen, []string{frozenKey}, 40, time.Minute.Microseconds(), "tag"+strconv.Itoa(i)).Int64Slice()
			if err != nil || res[0] != int64(btoi(i < 40)) || res[1] != int64(min(i+1, 40)) {
				t.Fatalf("call %d at a frozen instant: %v, %v", i+1, res, err)
			}
		}
	})
	t.Run("memory", func(t *testing.T) {
		frozen := time.Now()
		lim := NewMemoryRateLimiter(WithClock(func() time.Time { return frozen }))
		for i := range 100 {
			if d, _ := lim.Allow(context.Background(), "ws", "dave", 100, time.Second); !d.Allowed || d.Remaining != 99-i {
				t.Fatalf("request %d at one instant: %+v", i+1, d)
			}
		}
		if d, _ := lim.Allow(context.Background(), "ws", "dave", 100, time.Second); d.Allowed || d.RetryAfter != time.Second {
			t.Fatalf("101st at the same instant: %+v", d)
		}
	})
}

func TestRateLimiterInvalidArguments(t *testing.T) {
	limiters(t, func(t *testing.T, lim RateLimiter) {
		for _, tc := range []struct {
			scope, id string
			limit     int
			window    time.Duration
		}{{"http", "u", 0, time.Second}, {"http", "u", 1, 0}, {"", "u", 1, time.Second}, {"http", "", 1, time.Second}} {
			if _, err := lim.Allow(context.Background(), tc.scope, tc.id, tc.limit, tc.window); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("%+v: %v, want ErrInvalidArgument", tc, err)
			}
		}
	})
}

// fakeClock is a settable clock for the memory limiter.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }
func newFakeClock() *fakeClock               { c := &fakeClock{}; c.ns.Store(time.Now().UnixNano()); return c }
func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func allow(l RateLimiter, id string, n int) bool {
	d, _ := l.Allow(context.Background(), "http", id, n, time.Second)
	return d.Allowed
}

func TestMemoryRateLimiterSlidesAndSweeps(t *testing.T) {
	clock := newFakeClock()
	lim := NewMemoryRateLimiter(WithClock(clock.now), WithSweepInterval(time.Second))
	defer lim.Close()

	// Sliding, not fixed: 2 at t=0, 1 at t=0.6 s; at t=1.0 s the first two leave the window.
	if !allow(lim, "erin", 3) || !allow(lim, "erin", 3) {
		t.Fatal("first two refused")
	}
	clock.advance(600 * time.Millisecond)
	if !allow(lim, "erin", 3) || allow(lim, "erin", 3) {
		t.Fatal("third should pass and fourth be refused")
	}
	clock.advance(399 * time.Millisecond)
	if allow(lim, "erin", 3) {
		t.Fatal("allowed 0.999 s after two requests in a 1 s window")
	}
	clock.advance(time.Millisecond)
	if !allow(lim, "erin", 3) || !allow(lim, "erin", 3) || allow(lim, "erin", 3) {
		t.Fatal("after 1 s exactly two slots should have freed")
	}

	for i := range 1000 {
		allow(lim, "idle-"+strconv.Itoa(i), 10)
	}
	if lim.Len() != 1001 {
		t.Fatalf("Len = %d, want 1001", lim.Len())
	}
	clock.advance(2 * time.Second) // past every window and the sweep interval
	for i := range 1000 {          // touching keys sweeps their shards lazily
		allow(lim, "fresh-"+strconv.Itoa(i), 10)
	}
	if lim.Len() != 1000 {
		t.Fatalf("Len = %d after sweeping, want the 1000 fresh keys only", lim.Len())
	}

	// A changed limit applies to the requests already in the window.
	clock.advance(2 * time.Second)
	for range 4 {
		allow(lim, "frank", 4)
	}
	if allow(lim, "frank", 2) || !allow(lim, "frank", 8) {
		t.Fatal("limit change not honoured")
	}
}
