package limits

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"switchboard/store/redistest"
)

func counter(s *metrics.Set, name string) uint64 { return s.GetOrCreateCounter(name).Get() }

// downClient points at addr with the options the server should use in production, except for
// long dial and read timeouts: only the limiter's own timeout can then end a call early, and
// the bounds below (clientTimeout) catch a call that ignores it without timing a slow machine.
// How long a failing call takes is measured by BenchmarkFailOpenHanging.
func downClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true,
		DialTimeout: clientTimeout, ReadTimeout: clientTimeout, WriteTimeout: clientTimeout})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// clientTimeout is the Redis client's own dial and read timeout in these tests.
const clientTimeout = 5 * time.Second

func TestFailOpen(t *testing.T) {
	for _, tc := range []struct{ name, addr string }{
		{"closed port", "127.0.0.1:1"},
		{"hanging server", redistest.BlackHole(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const timeout = 100 * time.Millisecond
			c := downClient(t, tc.addr)
			set, logs := metrics.NewSet(), &logBuffer{}
			opts := []Option{WithFailOpen(true), WithTimeout(timeout), WithMetrics(set), WithLogger(logs.logger())}
			lim := NewRedisRateLimiter(c, "", opts...)
			conns := NewRedisConnCounter(c, "", "node-a", append(opts, WithConnTTL(time.Second, 50*time.Millisecond))...)
			ctx := context.Background()
			conns.Start(ctx)
			defer conns.Close()

			const calls = 5
			for range calls {
				start := time.Now()
				d, err := lim.Allow(ctx, "http", "alice", 10, time.Minute)
				if err != nil || !d.Allowed || d.Limit != 10 || d.Remaining != 9 || d.RetryAfter != 0 {
					t.Fatalf("fail-open Allow = %+v, %v", d, err)
				}
				if took := time.Since(start); took >= clientTimeout {
					t.Fatalf("Allow took %s: its %s timeout was not applied", took, timeout)
				}
			}
			start := time.Now()
			if ok, err := conns.Acquire(ctx, "alice", "c1", 1); !ok || err != nil {
				t.Fatalf("fail-open Acquire = %v, %v", ok, err)
			}
			if err := conns.Release(ctx, "alice", "c1"); err != nil {
				t.Fatalf("fail-open Release: %v", err)
			}
			if took := time.Since(start); took >= clientTimeout {
				t.Fatalf("Acquire+Release took %s: their %s timeout was not applied", took, timeout)
			}
			if ok, err := conns.Acquire(ctx, "alice", "c2", 1); !ok || err != nil {
				t.Fatalf("fail-open Acquire = %v, %v", ok, err)
			}
			if n, err := conns.Held(ctx, "alice"); n != 0 || err != nil {
				t.Fatalf("fail-open Held = %d, %v; want 0, nil", n, err)
			}
			// The heartbeat fails too, is counted, and does not hold up Close.
			if !waitFor(5*time.Second, func() bool { return counter(set, `redis_errors_total{operation="conn_heartbeat"}`) >= 1 }) {
				t.Fatal("failed heartbeat not counted")
			}
			start = time.Now()
			_ = conns.Close()
			if took := time.Since(start); took >= clientTimeout {
				t.Fatalf("Close took %s during an outage", took)
			}

			want := map[string]uint64{
				`redis_errors_total{operation="rate_limit"}`:   calls,
				`rate_limit_fail_open_total`:                   calls,
				`redis_errors_total{operation="conn_acquire"}`: 2,
				`redis_errors_total{operation="conn_release"}`: 1,
				`redis_errors_total{operation="conn_held"}`:    1,
				`conn_limit_fail_open_total`:                   2,
			}
			for name, n := range want {
				if got := counter(set, name); got != n {
					t.Errorf("%s = %d, want %d", name, got, n)
				}
			}
			// One warning per instance per 10 s, however many failures.
			if n := logs.count("redis error in limits"); n != 2 {
				t.Errorf("%d warnings logged, want 2 (one per instance)", n)
			}

			// Without fail-open the caller gets the error.
			strict := NewRedisRateLimiter(c, "", WithTimeout(timeout))
			if d, err := strict.Allow(ctx, "http", "alice", 10, time.Minute); !errors.Is(err, ErrUnavailable) || d.Allowed {
				t.Fatalf("strict Allow = %+v, %v; want ErrUnavailable", d, err)
			}
			strictConns := NewRedisConnCounter(c, "", "node-a", WithTimeout(timeout))
			if ok, err := strictConns.Acquire(ctx, "alice", "c1", 1); !errors.Is(err, ErrUnavailable) || ok {
				t.Fatalf("strict Acquire = %v, %v; want ErrUnavailable", ok, err)
			}
			if n, err := strictConns.Held(ctx, "alice"); !errors.Is(err, ErrUnavailable) || n != 0 {
				t.Fatalf("strict Held = %d, %v; want ErrUnavailable", n, err)
			}

			// The caller giving up is not a Redis failure and is not failed open.
			cancelled, cancel := context.WithCancel(ctx)
			cancel()
			if _, err := lim.Allow(cancelled, "http", "alice", 10, time.Minute); !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled Allow: %v, want context.Canceled", err)
			}
			if got := counter(set, `redis_errors_total{operation="rate_limit"}`); got != calls {
				t.Fatalf("cancelled call counted as a Redis error (%d)", got)
			}
		})
	}
}

// TestRedisRestart stops a private Redis mid-test and starts it again: limits fail open while it
// is down and apply again when it is back, with no restart of the limiter; the fresh server
// knows no scripts (NOSCRIPT) and holds no connections until the heartbeat restores them.
func TestRedisRestart(t *testing.T) {
	srv := redistest.StartServer(t)
	c := downClient(t, srv.Addr())
	set := metrics.NewSet()
	opts := []Option{WithFailOpen(true), WithTimeout(200 * time.Millisecond), WithMetrics(set)}
	lim := NewRedisRateLimiter(c, "", opts...)
	a := node(t, c, "", "node-a", opts...)
	ctx := context.Background()

	limited := func(id string) bool { // 2 allowed, then refused: the limit applies
		for i := range 3 {
			if d, err := lim.Allow(ctx, "http", id, 2, time.Minute); err != nil || d.Allowed != (i < 2) {
				return false
			}
		}
		return true
	}
	if !limited("before") {
		t.Fatal("limit not applied while Redis is up")
	}
	mustAcquire(t, a, "alice", "c1", 2, true)

	srv.Kill()
	for range 3 {
		if d, err := lim.Allow(ctx, "http", "during", 2, time.Minute); err != nil || !d.Allowed {
			t.Fatalf("Redis down: Allow = %+v, %v; want allowed", d, err)
		}
	}
	if got := counter(set, "rate_limit_fail_open_total"); got != 3 {
		t.Fatalf("rate_limit_fail_open_total = %d, want 3", got)
	}
	mustAcquire(t, a, "alice", "c2", 2, true) // failed open, kept locally

	srv.Restart()
	attempt := 0
	if !waitFor(5*time.Second, func() bool { attempt++; return limited("after-" + strconv.Itoa(attempt)) }) {
		t.Fatal("limit not applied again after Redis came back")
	}
	// The heartbeat registers both live connections (c1 lost in the restart, c2 never
	// recorded), so the user is at the limit again.
	b := node(t, c, "", "node-b", opts...)
	ok := waitFor(5*time.Second, func() bool {
		return c.ZCard(ctx, DefaultPrefix+"conns:alice").Val() == 2
	})
	if !ok {
		t.Fatal("heartbeat did not restore the connections after the restart")
	}
	mustAcquire(t, b, "alice", "c3", 2, false)
}

// BenchmarkFailOpenHanging measures how long a rate-limit check takes to fail open against a
// Redis that accepts connections and never answers (the limiter's timeout is 100 ms).
func BenchmarkFailOpenHanging(b *testing.B) {
	c := downClient(b, redistest.BlackHole(b))
	lim := NewRedisRateLimiter(c, "", WithFailOpen(true), WithTimeout(100*time.Millisecond))
	ctx := context.Background()
	for b.Loop() {
		if d, err := lim.Allow(ctx, "http", "alice", 10, time.Minute); err != nil || !d.Allowed {
			b.Fatalf("fail-open Allow = %+v, %v", d, err)
		}
	}
}
