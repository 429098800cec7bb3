// Package inbox is the Redis stream inbox's access: producers that have Redis (and neither the
// database nor a token) XADD broadcasts to <prefix>inbox; every node reads it through one
// consumer group (Group), so each entry goes to one node, which acknowledges it after
// publishing (at-least-once). Entries a node took and never acknowledged (it died) are taken
// over by another with XAUTOCLAIM once idle for long enough. Entries the relay refuses go to the
// dead-letter stream <prefix>inbox:dead with the reason.
//
// Entry fields: pkg_id (required), data (a JSON object; absent = {}), topic (absent = every
// connection), key (the idempotency key; absent = the entry's id).
//
// Concurrency: an Inbox is safe for concurrent use; it holds no goroutine.
package inbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Group is the consumer group every node reads the inbox with.
const Group = "switchboard"

// deadMaxLen bounds the dead-letter stream (approximately: MAXLEN ~); deadFieldMax bounds each
// field of a dead letter (bytes).
const (
	deadMaxLen   = 100_000
	deadFieldMax = 64 << 10
)

// ErrUnavailable wraps (with %w) every Redis failure.
var ErrUnavailable = errors.New("inbox: redis unavailable")

// Entry is one stream entry as read.
type Entry struct {
	ID     string
	Fields map[string]string // nil: the entry was deleted while pending
}

// Inbox is the stream and its dead-letter stream under one prefix, read as one consumer.
type Inbox struct {
	c        redis.UniversalClient
	Stream   string
	Dead     string
	consumer string
}

// New returns the inbox of prefix (SWITCHBOARD_REDIS_PREFIX) read as consumer (the node's id).
// The client is borrowed.
func New(c redis.UniversalClient, prefix, consumer string) *Inbox {
	return &Inbox{c: c, Stream: prefix + "inbox", Dead: prefix + "inbox:dead", consumer: consumer}
}

// EnsureGroup creates the stream and the group when missing. A new group starts at the
// stream's beginning: entries added before any node ever ran are relayed too.
func (i *Inbox) EnsureGroup(ctx context.Context) error {
	err := i.c.XGroupCreateMkStream(ctx, i.Stream, Group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("%w: create group: %w", ErrUnavailable, err)
	}
	return nil
}

// IsNoGroup reports an error of a stream or group that no longer exists (Redis lost its data):
// EnsureGroup again.
func IsNoGroup(err error) bool { return err != nil && strings.Contains(err.Error(), "NOGROUP") }

// Read returns up to count entries: with pending, this consumer's own entries not yet
// acknowledged (from the start, without waiting); otherwise new entries, waiting up to block.
func (i *Inbox) Read(ctx context.Context, pending bool, count int64, block time.Duration) ([]Entry, error) {
	id, b := ">", block
	if pending {
		id, b = "0", -1 // no BLOCK: a pending read never waits
	}
	res, err := i.c.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: Group, Consumer: i.consumer, Streams: []string{i.Stream, id}, Count: count, Block: b,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read: %w", ErrUnavailable, err)
	}
	var out []Entry
	for _, s := range res {
		out = append(out, entries(s.Messages)...)
	}
	return out, nil
}

// Claim takes over up to count entries other consumers took and left unacknowledged for at
// least minIdle (their node died, or hangs).
func (i *Inbox) Claim(ctx context.Context, minIdle time.Duration, count int64) ([]Entry, error) {
	msgs, _, err := i.c.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: i.Stream, Group: Group, Consumer: i.consumer, MinIdle: minIdle, Start: "0-0", Count: count,
	}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%w: claim: %w", ErrUnavailable, err)
	}
	return entries(msgs), nil
}

func entries(msgs []redis.XMessage) []Entry {
	out := make([]Entry, 0, len(msgs))
	for _, m := range msgs {
		var f map[string]string
		if m.Values != nil {
			f = make(map[string]string, len(m.Values))
			for k, v := range m.Values {
				f[k] = fmt.Sprint(v)
			}
		}
		out = append(out, Entry{ID: m.ID, Fields: f})
	}
	return out
}

// Done acknowledges the entries and deletes them from the stream (they were published, or
// dead-lettered), in one round trip.
func (i *Inbox) Done(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := i.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.XAck(ctx, i.Stream, Group, ids...)
		p.XDel(ctx, i.Stream, ids...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: acknowledge: %w", ErrUnavailable, err)
	}
	return nil
}

// DeadLetter adds e to the dead-letter stream with its id and the reason (fields longer than
// 64 KiB cut there), then acknowledges and deletes it.
func (i *Inbox) DeadLetter(ctx context.Context, e Entry, reason string) error {
	values := make([]string, 0, 2*len(e.Fields)+4)
	values = append(values, "entry_id", e.ID, "reason", reason)
	for k, v := range e.Fields {
		if k != "entry_id" && k != "reason" {
			if len(v) > deadFieldMax { // an entry refused for its size is not stored twice
				v = strings.ToValidUTF8(v[:deadFieldMax], "") + "…[truncated]"
			}
			values = append(values, k, v)
		}
	}
	// Two steps, not one MULTI: on a Redis Cluster the two streams may live in different slots.
	// A failure between them leaves the entry pending, to be dead-lettered again (twice at most
	// in the dead-letter stream, never lost).
	if err := i.c.XAdd(ctx, &redis.XAddArgs{Stream: i.Dead, MaxLen: deadMaxLen, Approx: true, Values: values}).Err(); err != nil {
		return fmt.Errorf("%w: dead-letter: %w", ErrUnavailable, err)
	}
	return i.Done(ctx, []string{e.ID})
}

// OldestAge is how long the oldest entry not yet acknowledged has waited (pending or not yet
// read), from the time in its id; 0 when none waits.
func (i *Inbox) OldestAge(ctx context.Context) (time.Duration, error) {
	res, err := i.c.XRangeN(ctx, i.Stream, "-", "+", 1).Result()
	if err != nil {
		return 0, fmt.Errorf("%w: age: %w", ErrUnavailable, err)
	}
	if len(res) == 0 {
		return 0, nil
	}
	ms, _, _ := strings.Cut(res[0].ID, "-")
	var t int64
	if _, err := fmt.Sscan(ms, &t); err != nil {
		return 0, nil
	}
	return max(time.Since(time.UnixMilli(t)), 0), nil
}

// Prune removes the group's consumers other than this one that hold no pending entry and
// have been idle for longer than idle: the names of nodes that are gone (a node's name is new
// at every start).
func (i *Inbox) Prune(ctx context.Context, idle time.Duration) error {
	cs, err := i.c.XInfoConsumers(ctx, i.Stream, Group).Result()
	if err != nil {
		return fmt.Errorf("%w: consumers: %w", ErrUnavailable, err)
	}
	for _, c := range cs {
		if c.Name != i.consumer && c.Pending == 0 && c.Idle > idle {
			if err := i.c.XGroupDelConsumer(ctx, i.Stream, Group, c.Name).Err(); err != nil {
				return fmt.Errorf("%w: delete consumer: %w", ErrUnavailable, err)
			}
		}
	}
	return nil
}
