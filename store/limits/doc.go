// Package limits enforces Switchboard's cluster-wide limits, a sliding-window rate limiter and a
// per-user connection counter (which also answers how many connections a user holds, so the
// edge can tell a handshake that will be refused from one that will be admitted), in Redis (one Lua script per check, timed by the Redis server's
// clock) or in-process for the single-node embedded default.
// Built WithFailOpen(true), the Redis implementations answer "allowed" with a nil error when
// Redis fails or times out, counting redis_errors_total{operation} and rate_limit_fail_open_total
// (conn_limit_fail_open_total for connections) and warning at most once per 10 s, so callers
// simply use the result; limits apply again as soon as Redis answers, scripts reloaded.
//
// Concurrency: every type is safe for concurrent use by any number of goroutines. Each Redis call
// runs under its own timeout (WithTimeout, 250 ms by default); build the client with
// ContextTimeoutEnabled so go-redis honours it on the socket. The only goroutine is
// RedisConnCounter's heartbeat, owned by Start and Close (Close stops it and waits). A node that
// dies without releasing its connections frees its users' slots at most the connection TTL
// (15 s by default, refreshed every 5 s) after its last heartbeat. The memory implementations
// start no goroutine: idle rate-limit keys are swept lazily on use, and MemoryRateLimiter.Close
// only drops state.
package limits
