package limits

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"time"
)

const memShards = 64

// MemoryRateLimiter is the in-process RateLimiter: the same sliding-window log as the Redis one,
// per node. Memory stays bounded by the keys active recently: a shard drops its idle keys (all
// of whose requests have left their window) on an access at most every sweep interval.
type MemoryRateLimiter struct {
	clock  func() time.Time
	start  time.Time // offsets from it keep the monotonic clock of time.Now
	sweep  time.Duration
	seed   maphash.Seed
	shards [memShards]memShard
}

type memShard struct {
	mu        sync.Mutex
	keys      map[string]*slidingLog
	lastSweep time.Duration
}

// slidingLog holds the times of the requests in the window, oldest first, in times[head:]. It
// grows with the requests actually made (at most limit are recorded) and is compacted as old
// ones leave, so a large limit costs nothing until it is used.
type slidingLog struct {
	times  []time.Duration
	head   int
	window time.Duration // of the last check, for sweeping
}

// NewMemoryRateLimiter returns an in-process limiter. It starts no goroutine.
func NewMemoryRateLimiter(opts ...Option) *MemoryRateLimiter {
	cfg := newConfig(opts)
	l := &MemoryRateLimiter{clock: cfg.clock, sweep: cfg.sweepInterval, seed: maphash.MakeSeed()}
	l.start = l.clock()
	for i := range l.shards {
		l.shards[i].keys = make(map[string]*slidingLog)
	}
	return l
}

// Allow records one request under (scope, id) if fewer than limit were recorded in the last
// window. The error is non-nil only for invalid arguments.
func (l *MemoryRateLimiter) Allow(_ context.Context, scope, id string, limit int, window time.Duration) (Decision, error) {
	if limit <= 0 || window <= 0 || !validKey(scope, id) {
		return Decision{}, fmt.Errorf("%w: rate limit %q/%q: limit %d, window %s", ErrInvalidArgument, scope, id, limit, window)
	}
	key := scope + ":" + id
	now := l.clock().Sub(l.start)
	s := &l.shards[maphash.String(l.seed, key)%memShards]

	s.mu.Lock()
	defer s.mu.Unlock()
	if now-s.lastSweep >= l.sweep {
		s.sweepLocked(now)
	}
	g := s.keys[key]
	if g == nil {
		g = &slidingLog{}
		s.keys[key] = g
	}
	g.window = window
	g.trim(now - window)
	count := len(g.times) - g.head
	allowed := count < limit
	if allowed {
		g.times = append(g.times, now)
		count++
	}
	return decide(allowed, limit, count, g.times[g.head]+window-now), nil
}

// trim forgets the requests made at or before cutoff, compacting once half the slice is dead.
func (g *slidingLog) trim(cutoff time.Duration) {
	for g.head < len(g.times) && g.times[g.head] <= cutoff {
		g.head++
	}
	if g.head > 0 && g.head >= len(g.times)/2 {
		n := copy(g.times, g.times[g.head:])
		g.times, g.head = g.times[:n], 0
	}
}

// newest returns the time of the last recorded request.
func (g *slidingLog) newest() time.Duration { return g.times[len(g.times)-1] }

func (s *memShard) sweepLocked(now time.Duration) {
	s.lastSweep = now
	for k, g := range s.keys {
		if g.head == len(g.times) || g.newest() <= now-g.window {
			delete(s.keys, k)
		}
	}
}

// Len returns the number of keys currently held (for tests and debugging).
func (l *MemoryRateLimiter) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.keys)
		s.mu.Unlock()
	}
	return n
}

// Close drops all state. There is no goroutine to stop; the limiter stays usable and starts
// from empty windows.
func (l *MemoryRateLimiter) Close() error {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		s.keys = make(map[string]*slidingLog)
		s.mu.Unlock()
	}
	return nil
}
