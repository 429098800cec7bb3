package bus

import (
	"container/list"
	"time"
)

// The dedup window: a Message with a Key is published at most once per topic and Key within
// the window (DefaultDedupWindow, WithDedupWindow). The check and the record happen inside the
// same atomic step that assigns the seq (the Redis script, the Memory bus's lock), so a message
// published again — a relay that died after publishing and before marking its row — gets no
// second seq and reaches no subscriber twice. Each topic keeps at most MaxDedupKeys keys (the
// oldest go first), so the window's memory is bounded whatever the rate.
const (
	DefaultDedupWindow = 10 * time.Minute
	MaxDedupKeys       = 100_000
	MaxKeyLen          = 200
)

// WithDedupWindow sets how long a published Key is remembered (default 10 minutes, at least
// 1 s).
func WithDedupWindow(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.dedupWindow = max(d, time.Second)
		}
	}
}

// memDedup is the Memory bus's window: the keys in expiry order (a list) and by name (a map).
// Guarded by the bus's mutex.
type memDedup struct {
	window time.Duration
	order  *list.List // of *dedupEntry, oldest first
	byKey  map[string]*list.Element
	count  map[string]int // keys per topic, for MaxDedupKeys
}

type dedupEntry struct {
	key, topic string
	expires    time.Time
}

func newMemDedup(window time.Duration) *memDedup {
	return &memDedup{window: window, order: list.New(), byKey: make(map[string]*list.Element), count: make(map[string]int)}
}

// seen reports whether key was published on topic within the window; if not, it records it.
func (d *memDedup) seen(topic, key string, now time.Time) bool {
	for e := d.order.Front(); e != nil && !e.Value.(*dedupEntry).expires.After(now); e = d.order.Front() {
		d.remove(e)
	}
	k := topic + "\x00" + key
	if _, ok := d.byKey[k]; ok {
		return true
	}
	if d.count[topic] >= MaxDedupKeys {
		for e := d.order.Front(); e != nil; e = e.Next() {
			if e.Value.(*dedupEntry).topic == topic {
				d.remove(e)
				break
			}
		}
	}
	d.byKey[k] = d.order.PushBack(&dedupEntry{key: k, topic: topic, expires: now.Add(d.window)})
	d.count[topic]++
	return false
}

func (d *memDedup) remove(e *list.Element) {
	de := d.order.Remove(e).(*dedupEntry)
	delete(d.byKey, de.key)
	if d.count[de.topic]--; d.count[de.topic] <= 0 {
		delete(d.count, de.topic)
	}
}
