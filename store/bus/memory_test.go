package bus

import (
	"context"
	"encoding/json"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestMemoryDeliverNotOnPublisher: a publisher that holds a lock deliver also takes does not
// deadlock, because deliver runs on the bus's own goroutine.
func TestMemoryDeliverNotOnPublisher(t *testing.T) {
	var mu sync.Mutex
	rec := &recorder{}
	b := NewMemory(func(m *Message) {
		mu.Lock()
		defer mu.Unlock()
		rec.deliver(m)
	})
	defer b.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		mu.Lock()
		defer mu.Unlock()
		for range 100 {
			if _, _, err := b.Publish(context.Background(), &Message{PkgID: 1, Topic: "a"}, 5); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Publish blocked on deliver")
	}
	rec.waitLen(t, 100, 5*time.Second)
}

// TestMemoryCloseStopsDelivery: Close returns while deliver is blocked only after it returns,
// drops what is still queued, and deliver is never called after Close.
func TestMemoryCloseStopsDelivery(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var (
		mu     sync.Mutex
		calls  int
		closed bool
	)
	b := NewMemory(func(*Message) {
		mu.Lock()
		calls++
		if closed {
			t.Error("deliver called after Close returned")
		}
		first := calls == 1
		mu.Unlock()
		if first {
			close(entered)
			<-release
		}
	})
	for range 10 {
		if _, _, err := b.Publish(context.Background(), &Message{PkgID: 1}, 0); err != nil {
			t.Fatal(err)
		}
	}
	<-entered
	closeDone := make(chan struct{})
	go func() {
		_ = b.Close()
		mu.Lock()
		closed = true
		mu.Unlock()
		close(closeDone)
	}()
	select {
	case <-closeDone:
		t.Fatal("Close returned while deliver was still running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-closeDone
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Fatalf("deliver called %d times, want 1 (the rest dropped at Close)", calls)
	}
}

// TestMemoryHistoryTTL: an idle topic is forgotten after the TTL, and a client with an old
// since is told to reload.
func TestMemoryHistoryTTL(t *testing.T) {
	b := NewMemory(func(*Message) {}, WithHistoryTTL(time.Hour))
	defer b.Close()
	now := time.Now()
	b.now = func() time.Time { return now }
	ctx := context.Background()
	for range 3 {
		if _, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "idle"}, 5); err != nil {
			t.Fatal(err)
		}
	}
	now = now.Add(59 * time.Minute)
	before, _ := b.History(ctx, "idle", 3)
	if before.Latest != 3 || !before.Complete || before.Epoch == "" {
		t.Fatalf("before the TTL: %+v", before)
	}
	now = now.Add(2 * time.Minute)
	if w, _ := b.History(ctx, "idle", 3); w.Latest != 0 || w.Complete || len(w.Msgs) != 0 || w.Epoch != "" {
		t.Fatalf("after the TTL: %+v; want no stream", w)
	}
	// The next publish sweeps the idle topic and starts a new stream at 1, under a new epoch.
	if seq, _, _ := b.Publish(ctx, &Message{PkgID: 1, Topic: "idle"}, 5); seq != 1 {
		t.Fatalf("seq after expiry = %d, want 1", seq)
	}
	if w, _ := b.History(ctx, "idle", 0); w.Latest != 1 || w.Epoch == "" || w.Epoch == before.Epoch {
		t.Fatalf("after expiry and a publish: %+v; the epoch before was %q", w, before.Epoch)
	}
	b.mu.Lock()
	n := len(b.topics)
	b.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d topics kept", n)
	}
}

// TestMemoryHistoryRing: the ring keeps only the last H and lets the rest go.
func TestMemoryHistoryRing(t *testing.T) {
	b := NewMemory(func(*Message) {})
	defer b.Close()
	ctx := context.Background()
	for range 10000 {
		if _, _, err := b.Publish(ctx, &Message{PkgID: 1, Data: json.RawMessage(`{}`), Topic: "t"}, 7); err != nil {
			t.Fatal(err)
		}
	}
	runtime.Gosched()
	w, err := b.History(ctx, "t", 9993)
	if err != nil || w.Latest != 10000 || !w.Complete || len(w.Msgs) != 7 || w.Msgs[0].Seq != 9994 {
		t.Fatalf("History = %d msgs, latest %d, %v, %v", len(w.Msgs), w.Latest, w.Complete, err)
	}
	b.mu.Lock()
	c := cap(b.topics["t"].hist)
	b.mu.Unlock()
	if c > 64 {
		t.Fatalf("ring capacity %d for a history of 7", c)
	}
}

func TestMemoryDeliverPanics(t *testing.T) {
	rec := &recorder{}
	b := NewMemory(func(m *Message) {
		if m.PkgID == 666 {
			panic("boom")
		}
		rec.deliver(m)
	})
	defer b.Close()
	for _, id := range []int{1, 666, 2} {
		if _, _, err := b.Publish(context.Background(), &Message{PkgID: id}, 0); err != nil {
			t.Fatal(err)
		}
	}
	if got := rec.waitLen(t, 2, 5*time.Second); got[0].PkgID != 1 || got[1].PkgID != 2 {
		t.Fatalf("delivered %+v, %+v", got[0], got[1])
	}
}
