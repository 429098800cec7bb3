package bus

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Memory is the single-node bus: Publish queues the message for one delivery goroutine, and
// history lives in an in-process ring per topic, whose stream gets a fresh epoch when the topic
// is created (so a restarted process never continues an earlier one's epochs). It never fails
// once built, except after Close.
type Memory struct {
	deliver func(*Message)
	logger  *slog.Logger
	ttl     time.Duration
	now     func() time.Time

	mu        sync.Mutex
	closed    bool
	topics    map[string]*memTopic
	dedup     *memDedup
	lastSweep time.Time
	queue     []*Message    // published, not yet taken by the delivery goroutine
	wake      chan struct{} // capacity 1: "the queue is not empty"

	stop chan struct{}
	done chan struct{}
}

type memTopic struct {
	epoch string // this stream's identity: new whenever the topic is created (or again after expiry)
	seq   uint64
	hist  []*Message // oldest first, seqs contiguous, ending at seq
	last  time.Time  // last publish, for WithHistoryTTL
}

// NewMemory returns a started single-node bus that calls deliver for every published message,
// in publish order, from its own goroutine (see the package doc). Options used: WithHistoryTTL,
// WithLogger, WithDedupWindow.
// A nil deliver panics: it is a programming error.
func NewMemory(deliver func(*Message), opts ...Option) *Memory {
	if deliver == nil {
		panic("bus: NewMemory with a nil deliver function")
	}
	cfg := newConfig(opts)
	b := &Memory{
		deliver: deliver,
		logger:  cfg.logger,
		ttl:     cfg.historyTTL,
		now:     time.Now,
		topics:  make(map[string]*memTopic),
		dedup:   newMemDedup(cfg.dedupWindow),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	b.lastSweep = b.now()
	go b.run()
	return b
}

// Publish implements Bus. nodes is always 1.
func (b *Memory) Publish(ctx context.Context, m *Message, history int) (uint64, int, error) {
	if err := checkPublish(m, history); err != nil {
		return 0, 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	data, err := normalData(m.Data)
	if err != nil {
		return 0, 0, err
	}
	msg := &Message{PkgID: m.PkgID, Data: data, Topic: m.Topic}

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, 0, ErrClosed
	}
	// Checked before a seq is assigned: a duplicate takes none.
	if m.Key != "" && b.dedup.seen(m.Topic, m.Key, b.now()) {
		return 0, 0, ErrDuplicate
	}
	if history > 0 {
		now := b.now()
		b.sweepLocked(now)
		t := b.topics[m.Topic]
		if t == nil {
			// A new stream: the process started, or the topic expired. Its seqs start at 1
			// again, under an epoch that no earlier stream of the topic had.
			t = &memTopic{epoch: newEpoch()}
			b.topics[m.Topic] = t
		}
		t.seq++
		t.last = now
		msg.Seq, msg.Epoch = t.seq, t.epoch
		t.hist = append(t.hist, msg)
		if drop := len(t.hist) - history; drop > 0 {
			clear(t.hist[:drop]) // let the dropped messages be collected
			t.hist = t.hist[drop:]
		}
	}
	// Queued under the same lock that assigned the seq: queue order is seq order.
	b.queue = append(b.queue, msg)
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return msg.Seq, 1, nil
}

// sweepLocked forgets the topics idle for longer than the TTL, at most every TTL/10.
func (b *Memory) sweepLocked(now time.Time) {
	if b.ttl <= 0 || now.Sub(b.lastSweep) < b.ttl/10 {
		return
	}
	b.lastSweep = now
	for name, t := range b.topics {
		if now.Sub(t.last) >= b.ttl {
			delete(b.topics, name)
		}
	}
}

// ImmediateHistory tells the hub that History answers at once (hub.ImmediateHistory): it takes
// the bus's lock and copies what it keeps, and never waits for anything else.
func (b *Memory) ImmediateHistory() bool { return true }

// History implements Bus.
func (b *Memory) History(ctx context.Context, topic string, since uint64) (Window, error) {
	if !validTopic(topic) {
		return Window{}, fmt.Errorf("%w: topic %.40q", ErrInvalidArgument, topic)
	}
	if err := ctx.Err(); err != nil {
		return Window{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return Window{}, ErrClosed
	}
	t := b.topics[topic]
	if t == nil || (b.ttl > 0 && b.now().Sub(t.last) >= b.ttl) {
		return Window{Complete: since == 0}, nil
	}
	var msgs []*Message
	if since < t.seq && len(t.hist) > 0 {
		oldest := t.hist[0].Seq
		start := 0
		if since >= oldest {
			start = int(since - oldest + 1)
		}
		msgs = append([]*Message(nil), t.hist[start:]...)
	}
	return Window{Epoch: t.epoch, Latest: t.seq, Msgs: msgs, Complete: complete(since, t.seq, msgs)}, nil
}

// Healthy implements Bus: nil until Close, ErrClosed after.
func (b *Memory) Healthy(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	return nil
}

// Close stops the delivery goroutine and waits for it. Messages still queued are dropped;
// deliver is not called after Close returns. Calling Close again is a no-op.
func (b *Memory) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		<-b.done
		return nil
	}
	b.closed = true
	b.queue = nil
	b.topics = nil
	b.mu.Unlock()
	close(b.stop)
	<-b.done
	return nil
}

func (b *Memory) run() {
	defer close(b.done)
	var batch []*Message
	for {
		select {
		case <-b.stop:
			return
		case <-b.wake:
		}
		b.mu.Lock()
		batch, b.queue = b.queue, batch[:0]
		b.mu.Unlock()
		for i, m := range batch {
			select {
			case <-b.stop:
				return
			default:
			}
			safeDeliver(b.deliver, m, b.logger)
			batch[i] = nil
		}
	}
}
