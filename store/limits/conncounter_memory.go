package limits

import (
	"context"
	"fmt"
	"sync"
)

// MemoryConnCounter is the in-process ConnCounter for a single node: nothing can die without
// the counter dying too, so it needs no expiry and starts no goroutine.
type MemoryConnCounter struct {
	mu    sync.Mutex
	users map[string]map[string]struct{} // user → connIDs
}

// NewMemoryConnCounter returns an empty counter.
func NewMemoryConnCounter() *MemoryConnCounter {
	return &MemoryConnCounter{users: make(map[string]map[string]struct{})}
}

// Acquire implements ConnCounter. The error is non-nil only for invalid arguments.
func (c *MemoryConnCounter) Acquire(_ context.Context, user, connID string, limit int) (bool, error) {
	if limit <= 0 || user == "" || connID == "" {
		return false, fmt.Errorf("%w: connection %q/%q: limit %d", ErrInvalidArgument, user, connID, limit)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	conns := c.users[user]
	if _, held := conns[connID]; held {
		return true, nil
	}
	if len(conns) >= limit {
		return false, nil
	}
	if conns == nil {
		conns = make(map[string]struct{})
		c.users[user] = conns
	}
	conns[connID] = struct{}{}
	return true, nil
}

// Release implements ConnCounter.
func (c *MemoryConnCounter) Release(_ context.Context, user, connID string) error {
	if user == "" || connID == "" {
		return fmt.Errorf("%w: connection %q/%q", ErrInvalidArgument, user, connID)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if conns := c.users[user]; conns != nil {
		delete(conns, connID)
		if len(conns) == 0 {
			delete(c.users, user)
		}
	}
	return nil
}

// Held implements ConnCounter. The error is non-nil only for an empty user.
func (c *MemoryConnCounter) Held(_ context.Context, user string) (int, error) {
	if user == "" {
		return 0, fmt.Errorf("%w: connection count of an empty user", ErrInvalidArgument)
	}
	return c.Count(user), nil
}

// Count returns the number of connections user holds.
func (c *MemoryConnCounter) Count(user string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.users[user])
}

// Compile-time checks that every implementation satisfies its interface.
var (
	_ RateLimiter = (*RedisRateLimiter)(nil)
	_ RateLimiter = (*MemoryRateLimiter)(nil)
	_ ConnCounter = (*RedisConnCounter)(nil)
	_ ConnCounter = (*MemoryConnCounter)(nil)
)
