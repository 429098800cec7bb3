package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"time"

	"switchboard/actors"
	"switchboard/store/limits"
	"switchboard/store/redisconn"
	"switchboard/store/sessions"
	"switchboard/transport"
)

// openLimits builds the rate limiter and the connection counter: in Redis (failing open, so a
// Redis outage never takes the service down) when SWITCHBOARD_REDIS_URL is set, in-process
// otherwise. Their keys, like the bus's, start with SWITCHBOARD_REDIS_PREFIX (sessions excepted:
// PROTOCOL names them). The server starts while Redis is down; go-redis connects as soon as it answers.
func (a *app) openLimits() error {
	if a.cfg.RedisURL == "" {
		a.limiter = limits.NewMemoryRateLimiter()
		a.conns = limits.NewMemoryConnCounter()
		return nil
	}
	target, err := redisconn.Parse(a.cfg.RedisURL)
	if err != nil {
		return redisURLError(err)
	}
	a.redisKind = target.Kind
	a.redis = target.NewClient(redisconn.Settings{DialTimeout: time.Second, MaxRetries: 1})
	lopts := []limits.Option{limits.WithFailOpen(true), limits.WithLogger(a.log), limits.WithMetrics(a.metrics)}
	a.limiter = limits.NewRedisRateLimiter(a.redis, a.cfg.RedisPrefix, lopts...)
	cc := limits.NewRedisConnCounter(a.redis, a.cfg.RedisPrefix, a.node, lopts...)
	cc.Start(context.Background())
	a.conns, a.stopConns = cc, cc.Close
	return nil
}

func (a *app) redisPing() func(context.Context) error {
	if a.redis == nil {
		return nil
	}
	return func(ctx context.Context) error { return redisconn.Ping(ctx, a.redis) }
}

func (a *app) sessions() transport.SessionStore {
	if a.redis == nil {
		return nil
	}
	return sessions.New(a.redis, 0)
}

// nodeID names this process in cluster-wide state: host name plus a random suffix, so two
// processes on one host never share connection slots.
func nodeID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// wsLimiter adapts the rate limiter to the pipeline's per-user WebSocket frame limit.
type wsLimiter struct {
	rl    limits.RateLimiter
	limit int
}

func (l wsLimiter) Allow(ctx context.Context, userID string) (actors.Decision, error) {
	d, err := l.rl.Allow(ctx, "ws", userID, l.limit, time.Minute)
	return actors.Decision{Allowed: d.Allowed, Limit: d.Limit, Remaining: d.Remaining, RetryAfter: d.RetryAfter}, err
}
