// Package sessions records logins in Redis under `session:<sub>` with the token's lifetime as
// TTL, so operators (and later features) can see who is logged in across the cluster.
//
// Concurrency: a *Redis is safe for concurrent use; each call runs under its own timeout.
package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrInvalid is returned for a session without a subject or with a non-positive TTL.
var ErrInvalid = errors.New("sessions: subject and a positive ttl are required")

// Redis stores sessions as JSON strings.
type Redis struct {
	c       redis.UniversalClient
	timeout time.Duration
}

// New returns a store over c; timeout bounds each call (250ms when zero).
func New(c redis.UniversalClient, timeout time.Duration) *Redis {
	if timeout <= 0 {
		timeout = 250 * time.Millisecond
	}
	return &Redis{c: c, timeout: timeout}
}

// Key is the Redis key of a subject's session.
func Key(sub string) string { return "session:" + sub }

// Save writes v (any JSON-encodable value) as the session of sub for ttl, replacing an earlier one.
func (r *Redis) Save(ctx context.Context, sub string, v any, ttl time.Duration) error {
	if sub == "" || ttl <= 0 {
		return ErrInvalid
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("sessions: encode: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := r.c.Set(ctx, Key(sub), b, ttl).Err(); err != nil {
		return fmt.Errorf("sessions: save: %w", err)
	}
	return nil
}

// Load reads the session of sub into v; found is false when there is none.
func (r *Redis) Load(ctx context.Context, sub string, v any) (found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	b, err := r.c.Get(ctx, Key(sub)).Bytes()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("sessions: load: %w", err)
	}
	return true, json.Unmarshal(b, v)
}
