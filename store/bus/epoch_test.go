package bus

import (
	"context"
	"fmt"
	"testing"
	"time"

	"switchboard/store/redistest"
)

// TestRedisDataLostNewEpoch: Redis loses its data (FLUSHDB; a restart without persistence)
// after seq 1..5. The topic's counter starts again at 1, under a new epoch: a client that saw
// 1..5 of the old stream can tell that the new 1..7 are not the messages after its 5, although
// History(since 5) of the new stream alone looks complete.
func TestRedisDataLostNewEpoch(t *testing.T) {
	for _, how := range []string{"flushdb", "restart"} {
		t.Run(how, func(t *testing.T) {
			srv := redistest.StartServer(t)
			c := privateClient(srv)
			rec := &recorder{}
			b := newRedisBus(t, c, "sbtest:epoch:", "node-a", rec.deliver, WithProbeInterval(testProbe))
			waitHealthy(t, b, 5*time.Second)
			ctx := context.Background()
			publish := func(first, last uint64) {
				t.Helper()
				for want := first; want <= last; want++ {
					seq, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "dash.e", Data: data(`{"n":%d}`, want)}, 100)
					if err != nil || seq != want {
						t.Fatalf("Publish = %d, %v; want seq %d", seq, err, want)
					}
				}
			}
			publish(1, 5)
			old, err := b.History(ctx, "dash.e", 5)
			if err != nil || old.Epoch == "" || old.Latest != 5 || !old.Complete {
				t.Fatalf("History before = %+v, %v", old, err)
			}

			switch how {
			case "flushdb":
				if err := c.FlushDB(ctx).Err(); err != nil { // the test's own server
					t.Fatal(err)
				}
			case "restart":
				srv.Kill()
				srv.Restart()
				waitHealthy(t, b, 10*time.Second)
			}
			if w, err := b.History(ctx, "dash.e", 5); err != nil || w.Epoch != "" || w.Complete {
				t.Fatalf("History right after the loss = %+v, %v; want no stream, not complete", w, err)
			}
			publish(1, 1)
			w, err := b.History(ctx, "dash.e", 5)
			if err != nil || w.Epoch == "" || w.Epoch == old.Epoch || w.Latest != 1 || w.Complete {
				t.Fatalf("History after one publish = %+v, %v; want a new epoch (old %q), latest 1", w, err, old.Epoch)
			}
			publish(2, 7)
			w, err = b.History(ctx, "dash.e", 5)
			// Seqs 6 and 7 of the new stream are kept: only the epoch tells that the client at
			// 5 of the old stream missed the new 1..5.
			if err != nil || w.Epoch == old.Epoch || w.Latest != 7 || !w.Complete || len(w.Msgs) != 2 {
				t.Fatalf("History after 7 publishes = %+v, %v", w, err)
			}
			for _, m := range w.Msgs {
				if m.Epoch != w.Epoch {
					t.Fatalf("kept message %+v has epoch %q, the stream %q", m, m.Epoch, w.Epoch)
				}
			}
			// Delivered messages carry their stream's epoch: the old one up to the loss, the new
			// one after.
			got := rec.waitLen(t, 12, 10*time.Second)
			for i, m := range got {
				want, seq := old.Epoch, uint64(i+1)
				if i >= 5 {
					want, seq = w.Epoch, uint64(i-4)
				}
				if m.Epoch != want || m.Seq != seq || string(m.Data) != fmt.Sprintf(`{"n":%d}`, seq) {
					t.Fatalf("delivery %d = %+v %s, want epoch %s seq %d", i, m, m.Data, want, seq)
				}
			}
		})
	}
}

// TestMemoryEpochPerProcess: the in-process bus names each topic's stream when it starts, so a
// restarted process (a new Memory) has other epochs than the one before; within one process a
// topic's stream keeps its epoch.
func TestMemoryEpochPerProcess(t *testing.T) {
	ctx := context.Background()
	epochOf := func(b *Memory, topic string) string {
		t.Helper()
		w, err := b.History(ctx, topic, 0)
		if err != nil {
			t.Fatal(err)
		}
		return w.Epoch
	}
	first := NewMemory(func(*Message) {})
	if e := epochOf(first, "dash.a"); e != "" {
		t.Fatalf("epoch before any publish = %q, want none", e)
	}
	for range 3 {
		if _, _, err := first.Publish(ctx, &Message{PkgID: 1, Topic: "dash.a"}, 5); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := first.Publish(ctx, &Message{PkgID: 1, Topic: "dash.b"}, 5); err != nil {
		t.Fatal(err)
	}
	a, b := epochOf(first, "dash.a"), epochOf(first, "dash.b")
	if len(a) != 16 || len(b) != 16 || a == b {
		t.Fatalf("epochs %q and %q: want two different 16-digit epochs", a, b)
	}
	_ = first.Close()

	second := NewMemory(func(*Message) {})
	defer second.Close()
	if _, _, err := second.Publish(ctx, &Message{PkgID: 1, Topic: "dash.a"}, 5); err != nil {
		t.Fatal(err)
	}
	if e := epochOf(second, "dash.a"); e == "" || e == a {
		t.Fatalf("epoch after a restart = %q, before %q: want a new one", e, a)
	}
}
