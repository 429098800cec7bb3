package limits

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
)

// Defaults. DefaultConnTTL is the stated bound: a node that dies without cleanup frees its
// users' connection slots at most DefaultConnTTL after its last successful heartbeat.
const (
	DefaultPrefix        = "switchboard:"
	DefaultTimeout       = 250 * time.Millisecond
	DefaultConnTTL       = 15 * time.Second
	DefaultHeartbeat     = 5 * time.Second
	DefaultSweepInterval = 30 * time.Second
	warnInterval         = 10 * time.Second
	heartbeatBatch       = 256 // users per pipelined round trip of the heartbeat
)

// Option configures a limiter or counter; options that do not apply to a type are ignored.
type Option func(*config)

type config struct {
	timeout       time.Duration
	logger        *slog.Logger
	metrics       *metrics.Set
	failOpen      bool
	clock         func() time.Time
	ttl           time.Duration
	heartbeat     time.Duration
	sweepInterval time.Duration
}

// WithTimeout bounds every Redis call (default 250 ms), so a slow Redis cannot stall callers.
// The client must be built with ContextTimeoutEnabled for go-redis to honour it on the socket.
func WithTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// WithLogger sets where warnings go (default: discarded).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}

// WithMetrics sets the set that receives redis_errors_total{operation}, rate_limit_fail_open_total
// and conn_limit_fail_open_total (default: a private set nobody scrapes).
func WithMetrics(s *metrics.Set) Option {
	return func(c *config) {
		if s != nil {
			c.metrics = s
		}
	}
}

// WithFailOpen makes the Redis implementations answer "allowed" (Decision.Allowed, ok) with a nil
// error when Redis fails or times out. Errors for invalid arguments and for the caller's own
// cancelled context are still returned.
func WithFailOpen(on bool) Option { return func(c *config) { c.failOpen = on } }

// WithClock replaces time.Now for the memory rate limiter (tests). Redis uses its own clock.
func WithClock(now func() time.Time) Option {
	return func(c *config) {
		if now != nil {
			c.clock = now
		}
	}
}

// WithConnTTL sets how long a connection stays counted without a heartbeat (default 15 s) and
// how often the heartbeat refreshes it (default 5 s). A heartbeat above ttl/2 is lowered to
// ttl/3, so one missed beat never expires a live connection.
func WithConnTTL(ttl, heartbeat time.Duration) Option {
	return func(c *config) {
		if ttl >= time.Millisecond {
			c.ttl = ttl
		}
		if heartbeat > 0 {
			c.heartbeat = heartbeat
		}
	}
}

// WithSweepInterval sets how often the memory rate limiter drops idle keys from a shard
// (default 30 s; the sweep runs lazily on an access to that shard).
func WithSweepInterval(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.sweepInterval = d
		}
	}
}

func newConfig(opts []Option) config {
	c := config{
		timeout:       DefaultTimeout,
		logger:        slog.New(slog.DiscardHandler),
		clock:         time.Now,
		ttl:           DefaultConnTTL,
		heartbeat:     DefaultHeartbeat,
		sweepInterval: DefaultSweepInterval,
	}
	for _, o := range opts {
		o(&c)
	}
	if c.metrics == nil {
		c.metrics = metrics.NewSet()
	}
	if c.heartbeat > c.ttl/2 {
		c.heartbeat = c.ttl / 3
	}
	return c
}

// trouble counts, logs (at most once per warnInterval) and classifies Redis failures for one
// Redis-backed instance.
type trouble struct {
	logger     *slog.Logger
	metrics    *metrics.Set
	failOpen   bool
	lastWarn   atomic.Int64 // unix nanoseconds of the last warning
	suppressed atomic.Int64 // failures since the last warning
}

func newTrouble(c *config, client redis.UniversalClient, operations ...string) *trouble {
	t := &trouble{logger: c.logger, metrics: c.metrics, failOpen: c.failOpen}
	// Create the series up front so dashboards see zeros rather than gaps.
	for _, op := range operations {
		t.errors(op)
	}
	t.metrics.GetOrCreateCounter("rate_limit_fail_open_total")
	t.metrics.GetOrCreateCounter("conn_limit_fail_open_total")
	if !contextTimeoutEnabled(client) {
		c.logger.Warn("redis client has ContextTimeoutEnabled=false: limit calls are bounded by its "+
			"read/write timeouts, not by the limits timeout", "timeout", c.timeout)
	}
	return t
}

func (t *trouble) errors(op string) *metrics.Counter {
	return t.metrics.GetOrCreateCounter(`redis_errors_total{operation="` + op + `"}`)
}

// fail records err from operation op. It returns the error the caller should see: nil when
// failing open (the caller then answers "allowed"), ctx's own error when the caller gave up, or
// err wrapped in ErrUnavailable.
func (t *trouble) fail(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		// The caller cancelled or its deadline passed: not Redis's fault, nothing to fail open to.
		return fmt.Errorf("limits: %s: %w", op, ctx.Err())
	}
	t.errors(op).Inc()
	t.warn(op, err)
	if t.failOpen {
		return nil
	}
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

func (t *trouble) warn(op string, err error) {
	now := time.Now().UnixNano()
	last := t.lastWarn.Load()
	if now-last < int64(warnInterval) || !t.lastWarn.CompareAndSwap(last, now) {
		t.suppressed.Add(1)
		return
	}
	t.logger.Warn("redis error in limits", "operation", op, "err", err, "fail_open", t.failOpen,
		"suppressed_since_last_warning", t.suppressed.Swap(0))
}

// contextTimeoutEnabled reports whether go-redis will honour context deadlines on the socket.
// Unknown client types are assumed to.
func contextTimeoutEnabled(c redis.UniversalClient) bool {
	switch v := c.(type) {
	case *redis.Client:
		return v.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return v.Options().ContextTimeoutEnabled
	}
	return true
}

func validKey(scope, id string) bool { return scope != "" && id != "" }
