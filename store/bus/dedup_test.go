package bus

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestDedup: a Key published again on its topic within the window publishes nothing and takes
// no seq, from any node, with and without history; other keys, other topics and messages
// without a key are not affected.
func TestDedup(t *testing.T) {
	forEach(t, func(t *testing.T, cl cluster) {
		ctx := context.Background()
		pub := func(i int, m *Message, history int) (uint64, error) {
			seq, _, err := cl.pubs[i%len(cl.pubs)].Publish(ctx, m, history)
			return seq, err
		}
		if seq, err := pub(0, &Message{PkgID: 1, Topic: "t", Data: data(`{"n":1}`), Key: "a"}, 10); err != nil || seq != 1 {
			t.Fatalf("first: %d %v", seq, err)
		}
		if _, err := pub(1, &Message{PkgID: 1, Topic: "t", Data: data(`{"n":1}`), Key: "a"}, 10); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("same key again: %v", err)
		}
		if seq, err := pub(0, &Message{PkgID: 1, Topic: "t", Data: data(`{"n":2}`), Key: "b"}, 10); err != nil || seq != 2 {
			t.Fatalf("another key: %d %v (the duplicate took a seq?)", seq, err)
		}
		if seq, err := pub(1, &Message{PkgID: 1, Topic: "u", Data: data(`{"n":3}`), Key: "a"}, 10); err != nil || seq != 1 {
			t.Fatalf("same key on another topic: %d %v", seq, err)
		}
		if _, err := pub(0, &Message{PkgID: 1, Topic: "t", Data: data(`{"n":4}`)}, 10); err != nil {
			t.Fatal(err)
		}
		// Without history, and without a topic.
		if _, err := pub(0, &Message{PkgID: 2, Data: data(`{}`), Key: "a"}, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := pub(1, &Message{PkgID: 2, Data: data(`{}`), Key: "a"}, 0); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("topic-less duplicate: %v", err)
		}
		if _, err := pub(1, &Message{PkgID: 2, Topic: "v", Data: data(`{}`), Key: "a"}, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := pub(0, &Message{PkgID: 2, Topic: "v", Data: data(`{}`), Key: "a"}, 0); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("no-history duplicate: %v", err)
		}
		for _, rec := range cl.recs {
			msgs := rec.waitLen(t, 6, 10*time.Second)
			time.Sleep(100 * time.Millisecond) // anything more would arrive now
			if got := rec.len(); got != 6 {
				t.Errorf("delivered %d messages, want 6: %+v", got, msgs)
			}
		}
		w, err := cl.pubs[0].History(ctx, "t", 0)
		if err != nil || w.Latest != 3 || len(w.Msgs) != 3 {
			t.Fatalf("history: %+v %v", w, err)
		}
	})
}

// TestDedupConcurrent: the same keys published by many goroutines at once on two nodes: each
// is delivered once, and the seqs have no hole.
func TestDedupConcurrent(t *testing.T) {
	forEach(t, func(t *testing.T, cl cluster) {
		const keys, racers = 50, 4
		var wg sync.WaitGroup
		for r := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range keys {
					m := &Message{PkgID: 1, Topic: "race", Data: data(`{"k":%d}`, k), Key: "key-" + string(rune('A'+k%26)) + string(rune('a'+k/26))}
					if _, _, err := cl.pubs[r%len(cl.pubs)].Publish(context.Background(), m, 100); err != nil && !errors.Is(err, ErrDuplicate) {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		for _, rec := range cl.recs {
			msgs := rec.waitLen(t, keys, 10*time.Second)
			time.Sleep(100 * time.Millisecond)
			msgs = rec.snapshot()
			if len(msgs) != keys {
				t.Fatalf("delivered %d, want %d", len(msgs), keys)
			}
			for i, m := range msgs {
				if m.Seq != uint64(i+1) {
					t.Fatalf("message %d has seq %d", i, m.Seq)
				}
			}
		}
	})
}

// TestDedupWindowExpires: after the window a key publishes again.
func TestDedupWindowExpires(t *testing.T) {
	forEach(t, func(t *testing.T, cl cluster) {
		ctx := context.Background()
		m := &Message{PkgID: 1, Topic: "w", Data: data(`{}`), Key: "k"}
		if _, _, err := cl.pubs[0].Publish(ctx, m, 10); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, _, err := cl.pubs[1].Publish(ctx, m, 10)
			if err == nil {
				return
			}
			if !errors.Is(err, ErrDuplicate) || time.Now().After(deadline) {
				t.Fatalf("key never published again: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}, WithDedupWindow(time.Second))
}

func TestDedupKeyTooLong(t *testing.T) {
	b := NewMemory(func(*Message) {})
	defer b.Close()
	long := make([]byte, MaxKeyLen+1)
	for i := range long {
		long[i] = 'k'
	}
	if _, _, err := b.Publish(context.Background(), &Message{PkgID: 1, Key: string(long)}, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatal(err)
	}
}

func TestMemDedupBounded(t *testing.T) {
	d := newMemDedup(time.Hour)
	now := time.Now()
	for i := range MaxDedupKeys + 10 {
		if d.seen("t", strconv.Itoa(i), now) {
			t.Fatalf("key %d seen", i)
		}
	}
	if d.count["t"] != MaxDedupKeys || len(d.byKey) != MaxDedupKeys {
		t.Fatalf("kept %d keys", len(d.byKey))
	}
	if d.seen("other", "x", now.Add(2*time.Hour)); len(d.byKey) != 1 {
		t.Fatalf("expired keys kept: %d", len(d.byKey))
	}
}
