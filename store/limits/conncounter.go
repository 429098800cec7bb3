package limits

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ConnCounter counts a user's live connections across every node.
type ConnCounter interface {
	// Acquire records connection connID of user on this node if fewer than limit are live;
	// ok=false otherwise, and nothing is recorded. Acquiring a connID again only refreshes it.
	Acquire(ctx context.Context, user, connID string, limit int) (ok bool, err error)
	// Release forgets connection connID of user. Releasing an unknown connID is not an error.
	Release(ctx context.Context, user, connID string) error
	// Held returns how many connections user holds now, on every node (expired ones, such as
	// those of a node that died, are not counted). It records nothing.
	Held(ctx context.Context, user string) (int, error)
}

// acquireScript trims expired members, counts, and adds "<node>:<connID>" scored by its expiry
// (Redis server time in milliseconds + ttl). The key expires with its last member.
//
//	KEYS[1] = <prefix>conns:<user>;  ARGV = limit, ttl in ms, member;  returns 1 or 0
var acquireScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return 1
`)

// heartbeatScript re-registers this node's live members of one user with a fresh expiry. It
// adds members that are missing too (a Redis restart or an outage longer than the TTL lost
// them, or Acquire failed open), so live connections are always counted again.
//
//	KEYS[1] = <prefix>conns:<user>;  ARGV = ttl in ms, member...;  returns the member count
var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[1], last[2])
end
return redis.call('ZCARD', KEYS[1])
`)

// heldScript counts the members of one user that have not expired, by the Redis server's clock
// (the same test as acquireScript's trim). It writes nothing.
//
//	KEYS[1] = <prefix>conns:<user>;  returns the count
var heldScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
`)

// RedisConnCounter is a ConnCounter shared by every node using the same Redis. Each node keeps
// the connections it acquired and, between Start and Close, refreshes them every heartbeat; the
// entries of a node that stops refreshing (crash, Close without Release) expire after the TTL.
type RedisConnCounter struct {
	client    redis.UniversalClient
	prefix    string
	node      string
	timeout   time.Duration
	ttl       time.Duration
	heartbeat time.Duration
	trouble   *trouble

	mu    sync.Mutex
	local map[string]map[string]struct{} // user → connIDs held on this node

	runMu   sync.Mutex
	started bool
	stop    context.CancelFunc
	done    chan struct{}
}

// NewRedisConnCounter returns a counter keeping one ZSET per user at <prefix>conns:<user>
// (prefix "" means DefaultPrefix). nodeID must be unique among live nodes; "" picks a random
// one. The client is borrowed. Call Start to run the heartbeat and Close to stop it.
func NewRedisConnCounter(c redis.UniversalClient, prefix, nodeID string, opts ...Option) *RedisConnCounter {
	cfg := newConfig(opts)
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if nodeID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		nodeID = hex.EncodeToString(b[:])
	}
	return &RedisConnCounter{
		client: c, prefix: prefix, node: nodeID,
		timeout: cfg.timeout, ttl: cfg.ttl, heartbeat: cfg.heartbeat,
		trouble: newTrouble(&cfg, c, "conn_acquire", "conn_release", "conn_heartbeat", "conn_held"),
		local:   make(map[string]map[string]struct{}),
	}
}

// TTL returns how long a connection stays counted without a heartbeat: the bound within which a
// dead node's connections are freed.
func (c *RedisConnCounter) TTL() time.Duration { return c.ttl }

// Acquire implements ConnCounter. On a Redis failure it returns an ErrUnavailable error, or,
// with WithFailOpen(true), ok=true and a nil error; the connection is then kept locally and
// counted by the first heartbeat that reaches Redis.
func (c *RedisConnCounter) Acquire(ctx context.Context, user, connID string, limit int) (bool, error) {
	if limit <= 0 || user == "" || connID == "" {
		return false, fmt.Errorf("%w: connection %q/%q: limit %d", ErrInvalidArgument, user, connID, limit)
	}
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	n, err := acquireScript.Run(callCtx, c.client, []string{c.key(user)},
		limit, c.ttl.Milliseconds(), c.member(connID)).Int64()
	if err != nil {
		if err := c.trouble.fail(ctx, "conn_acquire", err); err != nil {
			return false, err
		}
		c.trouble.metrics.GetOrCreateCounter("conn_limit_fail_open_total").Inc()
		n = 1
	}
	if n != 1 {
		return false, nil
	}
	c.mu.Lock()
	conns := c.local[user]
	if conns == nil {
		conns = make(map[string]struct{})
		c.local[user] = conns
	}
	conns[connID] = struct{}{}
	c.mu.Unlock()
	return true, nil
}

// Release implements ConnCounter. On a Redis failure the entry is no longer refreshed and so
// expires within the TTL; the error is returned unless failing open.
func (c *RedisConnCounter) Release(ctx context.Context, user, connID string) error {
	if user == "" || connID == "" {
		return fmt.Errorf("%w: connection %q/%q", ErrInvalidArgument, user, connID)
	}
	// Forget locally first: a heartbeat that re-adds the member after the ZREM below sees it
	// gone when it re-checks, and removes it again (see beat).
	c.forget(user, connID)
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := c.client.ZRem(callCtx, c.key(user), c.member(connID)).Err(); err != nil {
		return c.trouble.fail(ctx, "conn_release", err)
	}
	return nil
}

// Held implements ConnCounter. On a Redis failure it returns an ErrUnavailable error, or, with
// WithFailOpen(true), 0 and a nil error (as if the user held nothing, which is what a failed-open
// Acquire assumes too).
func (c *RedisConnCounter) Held(ctx context.Context, user string) (int, error) {
	if user == "" {
		return 0, fmt.Errorf("%w: connection count of an empty user", ErrInvalidArgument)
	}
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	n, err := heldScript.Run(callCtx, c.client, []string{c.key(user)}).Int()
	if err != nil {
		return 0, c.trouble.fail(ctx, "conn_held", err)
	}
	return n, nil
}

func (c *RedisConnCounter) forget(user, connID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if conns := c.local[user]; conns != nil {
		delete(conns, connID)
		if len(conns) == 0 {
			delete(c.local, user)
		}
	}
}

// Start runs the heartbeat until ctx ends or Close is called. Calling it again is a no-op.
func (c *RedisConnCounter) Start(ctx context.Context) {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	if c.started {
		return
	}
	c.started = true
	ctx, c.stop = context.WithCancel(ctx)
	c.done = make(chan struct{})
	go c.run(ctx, c.done)
}

// Close stops the heartbeat and waits for it. It releases nothing: connections are released
// one by one as their sockets close, and whatever is left expires within the TTL.
func (c *RedisConnCounter) Close() error {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	if c.stop != nil {
		c.stop()
		<-c.done
		c.stop = nil
	}
	return nil
}

func (c *RedisConnCounter) run(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(c.heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			c.beat(ctx)
		}
	}
}

// beat refreshes every connection held on this node, heartbeatBatch users per round trip.
func (c *RedisConnCounter) beat(ctx context.Context) {
	c.mu.Lock()
	snapshot := make(map[string][]string, len(c.local))
	for user, conns := range c.local {
		ids := make([]string, 0, len(conns))
		for id := range conns {
			ids = append(ids, id)
		}
		snapshot[user] = ids
	}
	c.mu.Unlock()

	// Stop at the first failed batch: Redis is down or slow, and the next beat retries (the TTL
	// outlasts two missed beats). This also bounds how long Close waits for a beat.
	batch := make(map[string][]string, heartbeatBatch)
	for user, ids := range snapshot {
		batch[user] = ids
		if len(batch) == heartbeatBatch {
			if !c.refresh(ctx, batch) {
				return
			}
			clear(batch)
		}
	}
	if len(batch) > 0 && !c.refresh(ctx, batch) {
		return
	}

	// A Release that ran between the snapshot and the refresh had its ZREM undone by the
	// refresh; its connID is gone from c.local by now, so remove it again.
	stale := 0
	pipe := c.client.Pipeline()
	c.mu.Lock()
	for user, ids := range snapshot {
		for _, id := range ids {
			if _, live := c.local[user][id]; !live {
				pipe.ZRem(ctx, c.key(user), c.member(id))
				stale++
			}
		}
	}
	c.mu.Unlock()
	if stale > 0 {
		callCtx, cancel := context.WithTimeout(ctx, c.timeout)
		defer cancel()
		if _, err := pipe.Exec(callCtx); err != nil {
			_ = c.trouble.fail(ctx, "conn_release", err)
		}
	}
}

// refresh runs heartbeatScript for each user of batch in one pipeline, loading the script and
// retrying once if Redis lost it (restart, SCRIPT FLUSH). It reports whether that worked.
func (c *RedisConnCounter) refresh(ctx context.Context, batch map[string][]string) bool {
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	err := c.refreshOnce(callCtx, batch)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		if err = heartbeatScript.Load(callCtx, c.client).Err(); err == nil {
			err = c.refreshOnce(callCtx, batch)
		}
	}
	if err != nil {
		_ = c.trouble.fail(ctx, "conn_heartbeat", err)
		return false
	}
	return true
}

func (c *RedisConnCounter) refreshOnce(ctx context.Context, batch map[string][]string) error {
	pipe := c.client.Pipeline()
	ttl := c.ttl.Milliseconds()
	for user, ids := range batch {
		args := make([]any, 0, len(ids)+1)
		args = append(args, ttl)
		for _, id := range ids {
			args = append(args, c.member(id))
		}
		heartbeatScript.EvalSha(ctx, pipe, []string{c.key(user)}, args...)
	}
	cmds, err := pipe.Exec(ctx)
	for _, cmd := range cmds { // Exec reports only the first error; prefer a NOSCRIPT one
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			return cmd.Err()
		}
	}
	return err
}

func (c *RedisConnCounter) key(user string) string { return c.prefix + "conns:" + user }

func (c *RedisConnCounter) member(connID string) string { return c.node + ":" + connID }
