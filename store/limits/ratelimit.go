package limits

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Decision is the answer to one rate-limit check.
type Decision struct {
	Allowed bool
	// Limit is the limit checked against; Remaining the requests still allowed in the window
	// after this one.
	Limit, Remaining int
	// RetryAfter is the time until a slot frees: 0 when this request was allowed and slots
	// remain, otherwise the same as Reset.
	RetryAfter time.Duration
	// Reset is the time until the oldest request in the window leaves it and so frees a slot
	// (for X-RateLimit-Reset; round it up to whole seconds).
	Reset time.Duration
}

// RateLimiter admits at most limit requests per key (scope, id) in any sliding window of the
// given length. Refused requests are not recorded, so a client that keeps retrying is let
// through as soon as a slot frees.
type RateLimiter interface {
	Allow(ctx context.Context, scope, id string, limit int, window time.Duration) (Decision, error)
}

// decide builds the Decision shared by both implementations: count is the number of requests in
// the window including this one when allowed; reset the time until the oldest of them expires.
func decide(allowed bool, limit, count int, reset time.Duration) Decision {
	d := Decision{Allowed: allowed, Limit: limit, Remaining: max(0, limit-count), Reset: reset}
	if !allowed || d.Remaining == 0 {
		d.RetryAfter = reset
	}
	return d
}

// failOpenDecision is what a fail-open check answers: allowed, as if this were the first
// request of the window.
func failOpenDecision(limit int) Decision {
	return Decision{Allowed: true, Limit: limit, Remaining: max(0, limit-1)}
}

// rateLimitScript is the sliding-window log, one round trip per check. Scores are the Redis
// server's TIME in microseconds (exact in a double until the year 2255), so node clocks do not
// matter; Redis 7 replicates the script's effects, which makes TIME legal here. The member is
// the time plus a tag unique per call, so requests in the same microsecond are all counted.
//
//	KEYS[1] = <prefix>rl:<scope>:<id>
//	ARGV    = limit, window in microseconds, unique tag
//	returns {allowed 0|1, requests in the window (with this one if allowed), µs until a slot frees}
const rateLimitLua = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < limit then
  redis.call('ZADD', KEYS[1], now, t[1] .. '.' .. t[2] .. '-' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  count = count + 1
  allowed = 1
end
local reset = window
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] then
  reset = tonumber(oldest[2]) + window - now
end
return {allowed, count, reset}
`

var rateLimitScript = redis.NewScript(rateLimitLua)

// RedisRateLimiter is a RateLimiter shared by every node using the same Redis.
type RedisRateLimiter struct {
	client  redis.UniversalClient
	prefix  string
	timeout time.Duration
	trouble *trouble
	tag     string        // random per instance; with seq it makes every member unique
	seq     atomic.Uint64 // per-call counter
}

// NewRedisRateLimiter returns a limiter keeping one ZSET per key at <prefix>rl:<scope>:<id>
// (prefix "" means DefaultPrefix). The client is borrowed: closing it is the caller's job.
func NewRedisRateLimiter(c redis.UniversalClient, prefix string, opts ...Option) *RedisRateLimiter {
	cfg := newConfig(opts)
	if prefix == "" {
		prefix = DefaultPrefix
	}
	var b [6]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics rather than return an error)
	return &RedisRateLimiter{
		client:  c,
		prefix:  prefix,
		timeout: cfg.timeout,
		trouble: newTrouble(&cfg, c, "rate_limit"),
		tag:     hex.EncodeToString(b[:]),
	}
}

// Allow records one request under (scope, id) if fewer than limit were recorded in the last
// window. On a Redis failure it returns an ErrUnavailable error, or, with WithFailOpen(true), an
// allowed Decision and a nil error.
func (l *RedisRateLimiter) Allow(ctx context.Context, scope, id string, limit int, window time.Duration) (Decision, error) {
	if limit <= 0 || window < time.Millisecond || !validKey(scope, id) {
		return Decision{}, fmt.Errorf("%w: rate limit %q/%q: limit %d, window %s", ErrInvalidArgument, scope, id, limit, window)
	}
	callCtx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	unique := l.tag + strconv.FormatUint(l.seq.Add(1), 36)
	res, err := rateLimitScript.Run(callCtx, l.client, []string{l.key(scope, id)},
		limit, window.Microseconds(), unique).Int64Slice()
	if err == nil && len(res) != 3 {
		err = fmt.Errorf("rate limit script returned %d values, want 3", len(res))
	}
	if err != nil {
		if err := l.trouble.fail(ctx, "rate_limit", err); err != nil {
			return Decision{}, err
		}
		l.trouble.metrics.GetOrCreateCounter("rate_limit_fail_open_total").Inc()
		return failOpenDecision(limit), nil
	}
	return decide(res[0] == 1, limit, int(res[1]), time.Duration(res[2])*time.Microsecond), nil
}

func (l *RedisRateLimiter) key(scope, id string) string {
	return l.prefix + "rl:" + scope + ":" + id
}
