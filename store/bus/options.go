package bus

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Defaults.
const (
	DefaultProbeInterval = 2 * time.Second
	DefaultTimeout       = time.Second
	// DefaultShards is how many shard channels the Redis bus spreads topics over.
	DefaultShards = 16
	// shardsTTL: the recorded shard count outlives the last running node by this much.
	shardsTTL = time.Minute
	// MaxShards bounds WithShards: every node holds a subscription per shard on a cluster.
	MaxShards = 1024
	// unhealthyAfter probe intervals without a probe coming back, Healthy fails.
	unhealthyAfter = 3
	warnInterval   = 10 * time.Second
)

// Option configures a bus; options that do not apply to a bus are ignored.
type Option func(*config)

type config struct {
	probeInterval time.Duration
	timeout       time.Duration
	historyTTL    time.Duration
	dedupWindow   time.Duration
	shards        int
	logger        *slog.Logger
	metrics       *metrics.Set
}

// WithProbeInterval sets how often the Redis bus publishes its liveness probe (default 2 s,
// at least 10 ms). Healthy fails when no probe came back for 3 intervals.
func WithProbeInterval(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.probeInterval = max(d, 10*time.Millisecond)
		}
	}
}

// WithTimeout bounds every Redis call (default 1 s). Build the client with
// ContextTimeoutEnabled for go-redis to honour it on the socket.
func WithTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// WithHistoryTTL makes the history and the seq counter of a topic expire after d without a
// publish (default: kept forever). A client that comes back later with an old since is told to
// reload (complete=false, since > latest).
func WithHistoryTTL(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.historyTTL = max(d, time.Millisecond)
		}
	}
}

// WithShards sets how many shard channels the Redis bus spreads topics over (default 16, at most
// MaxShards). Every node of a deployment must use the same number: it decides where each topic's
// stream lives and which channel carries it. A node whose number disagrees with the one the
// deployment recorded in Redis reports itself unhealthy.
func WithShards(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.shards = min(n, MaxShards)
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

// WithMetrics sets the set that receives redis_errors_total{operation}, pubsub_probe_lag_seconds
// and bus_invalid_messages_total (default: a private set nobody scrapes).
func WithMetrics(s *metrics.Set) Option {
	return func(c *config) {
		if s != nil {
			c.metrics = s
		}
	}
}

func newConfig(opts []Option) config {
	c := config{
		probeInterval: DefaultProbeInterval,
		timeout:       DefaultTimeout,
		dedupWindow:   DefaultDedupWindow,
		shards:        DefaultShards,
		logger:        slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		o(&c)
	}
	if c.metrics == nil {
		c.metrics = metrics.NewSet()
	}
	return c
}

// Operations counted in redis_errors_total{operation}.
const (
	opPublish   = "bus_publish"
	opSubscribe = "bus_subscribe"
	opHistory   = "bus_history"
)

// trouble counts and logs (at most once per warnInterval) the failures of one bus.
type trouble struct {
	logger     *slog.Logger
	metrics    *metrics.Set
	lastWarn   atomic.Int64 // unix nanoseconds of the last warning
	suppressed atomic.Int64 // failures since the last warning
}

func newTrouble(c *config) *trouble {
	t := &trouble{logger: c.logger, metrics: c.metrics}
	// Create the series up front so dashboards see zeros rather than gaps.
	for _, op := range []string{opPublish, opSubscribe, opHistory} {
		t.errors(op)
	}
	return t
}

func (t *trouble) errors(op string) *metrics.Counter {
	return t.metrics.GetOrCreateCounter(`redis_errors_total{operation="` + op + `"}`)
}

// fail records err from operation op and returns the error the caller should see: ctx's own
// error when the caller gave up (not counted: not Redis's fault), else err wrapped in
// ErrUnavailable.
func (t *trouble) fail(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("bus: %s: %w", op, ctx.Err())
	}
	t.record(op, err)
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

// record counts and warns about err from op.
func (t *trouble) record(op string, err error) {
	t.errors(op).Inc()
	t.warn("redis error in bus", "operation", op, "err", err)
}

// warn logs msg unless another warning was logged in the last warnInterval.
func (t *trouble) warn(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := t.lastWarn.Load()
	if now-last < int64(warnInterval) || !t.lastWarn.CompareAndSwap(last, now) {
		t.suppressed.Add(1)
		return
	}
	t.logger.Warn(msg, append(args, "suppressed_since_last_warning", t.suppressed.Swap(0))...)
}
