package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"switchboard/store/redistest"
)

// cluster is what the shared tests run against: publishers (two Redis nodes, or the one Memory
// bus twice) and the deliveries seen by each node.
type cluster struct {
	pubs []Bus
	recs []*recorder
}

// setups builds each implementation; the tests below must hold for both.
var setups = []struct {
	name string
	new  func(t *testing.T, opts ...Option) cluster
}{
	{"memory", func(t *testing.T, opts ...Option) cluster {
		rec := &recorder{}
		b := NewMemory(rec.deliver, opts...)
		t.Cleanup(func() { _ = b.Close() })
		return cluster{pubs: []Bus{b, b}, recs: []*recorder{rec}}
	}},
	{"redis", func(t *testing.T, opts ...Option) cluster {
		c := redistest.Client(t)
		prefix := redistest.Prefix(t, c)
		ra, rb := &recorder{}, &recorder{}
		a := newRedisBus(t, c, prefix, "node-a", ra.deliver, opts...)
		b := newRedisBus(t, c, prefix, "node-b", rb.deliver, opts...)
		return cluster{pubs: []Bus{a, b}, recs: []*recorder{ra, rb}}
	}},
}

func forEach(t *testing.T, f func(t *testing.T, cl cluster), opts ...Option) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) { f(t, s.new(t, opts...)) })
	}
}

func data(format string, args ...any) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(format, args...))
}

// TestPublishOrder: every node delivers every message exactly once, in publish order, and
// Publish reports every node.
func TestPublishOrder(t *testing.T) {
	forEach(t, func(t *testing.T, cl cluster) {
		ctx := context.Background()
		const n = 500
		for i := range n {
			seq, nodes, err := cl.pubs[0].Publish(ctx, &Message{PkgID: 7, Data: data(`{"i": %d}`, i)}, 0)
			if err != nil || seq != 0 || nodes != len(cl.recs) {
				t.Fatalf("Publish %d = seq %d, nodes %d, %v; want 0, %d, nil", i, seq, nodes, err, len(cl.recs))
			}
		}
		// A last marker: once it is in, anything delivered twice would have shown up before it.
		if _, _, err := cl.pubs[0].Publish(ctx, &Message{PkgID: 8, Data: data(`"end"`)}, 0); err != nil {
			t.Fatal(err)
		}
		for node, rec := range cl.recs {
			got := rec.waitLen(t, n+1, 10*time.Second)
			if len(got) != n+1 {
				t.Fatalf("node %d delivered %d messages, want %d", node, len(got), n+1)
			}
			for i, m := range got[:n] {
				if want := fmt.Sprintf(`{"i":%d}`, i); m.PkgID != 7 || string(m.Data) != want || m.Topic != "" || m.Seq != 0 {
					t.Fatalf("node %d message %d = %+v (data %s), want pkg 7 data %s", node, i, m, m.Data, want)
				}
			}
			if last := got[n]; last.PkgID != 8 || string(last.Data) != `"end"` {
				t.Fatalf("node %d last message = %+v", node, last)
			}
		}
	})
}

// TestSeqConcurrent: concurrent publishers on every node get seqs strictly +1 per topic, topics
// count independently, and every node delivers each topic in seq order.
func TestSeqConcurrent(t *testing.T) {
	forEach(t, func(t *testing.T, cl cluster) {
		ctx := context.Background()
		const workers, perWorker = 4, 100
		topics := []string{"dashboards.a", "dashboards.b"}
		var (
			mu   sync.Mutex
			sent = map[string]map[uint64]string{} // topic → seq → data
			wg   sync.WaitGroup
		)
		for _, tp := range topics {
			sent[tp] = map[uint64]string{}
		}
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pub := cl.pubs[w%len(cl.pubs)]
				for i := range perWorker {
					tp := topics[0]
					if i%2 == 1 {
						tp = topics[1]
					}
					d := fmt.Sprintf(`{"w":%d,"i":%d}`, w, i)
					seq, _, err := pub.Publish(ctx, &Message{PkgID: 1, Data: json.RawMessage(d), Topic: tp}, 1000)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					if prev, dup := sent[tp][seq]; dup {
						mu.Unlock()
						errs <- fmt.Errorf("seq %d of %s assigned twice (%s and %s)", seq, tp, prev, d)
						return
					}
					sent[tp][seq] = d
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		total := 0
		for _, tp := range topics {
			n := len(sent[tp])
			total += n
			for s := uint64(1); s <= uint64(n); s++ {
				if _, ok := sent[tp][s]; !ok {
					t.Fatalf("%s: seq %d missing among %d publishes (not strictly +1)", tp, s, n)
				}
			}
		}
		for node, rec := range cl.recs {
			got := rec.waitLen(t, total, 10*time.Second)
			next := map[string]uint64{}
			epochs := map[string]string{}
			for _, m := range got {
				next[m.Topic]++
				if m.Seq != next[m.Topic] {
					t.Fatalf("node %d: %s delivered seq %d, want %d", node, m.Topic, m.Seq, next[m.Topic])
				}
				if e, ok := epochs[m.Topic]; m.Epoch == "" || (ok && e != m.Epoch) {
					t.Fatalf("node %d: %s seq %d has epoch %q, earlier ones %q", node, m.Topic, m.Seq, m.Epoch, e)
				}
				epochs[m.Topic] = m.Epoch
				if string(m.Data) != sent[m.Topic][m.Seq] {
					t.Fatalf("node %d: %s seq %d has data %s, published %s", node, m.Topic, m.Seq, m.Data, sent[m.Topic][m.Seq])
				}
			}
			if len(got) != total {
				t.Fatalf("node %d delivered %d, want %d", node, len(got), total)
			}
		}
	})
}

// TestHistory: trimmed to H, since in the middle, since older than kept, since == latest, since
// > latest, unknown topic, and topics independent.
func TestHistory(t *testing.T) {
	forEach(t, func(t *testing.T, cl cluster) {
		ctx := context.Background()
		const h, n = 10, 25
		for i := 1; i <= n; i++ {
			seq, _, err := cl.pubs[i%2].Publish(ctx, &Message{PkgID: 3, Data: data(`{"n": %d}`, i), Topic: "authors"}, h)
			if err != nil || seq != uint64(i) {
				t.Fatalf("Publish %d = seq %d, %v", i, seq, err)
			}
		}
		// Every node delivers every message of the stream with the stream's one epoch.
		epoch := cl.recs[0].waitLen(t, n, 10*time.Second)[0].Epoch
		if len(epoch) != 16 {
			t.Fatalf("epoch %q, want 16 hexadecimal digits", epoch)
		}
		for node, rec := range cl.recs {
			for _, m := range rec.waitLen(t, n, 10*time.Second) {
				if m.Epoch != epoch {
					t.Fatalf("node %d: seq %d has epoch %q, seq 1 had %q", node, m.Seq, m.Epoch, epoch)
				}
			}
		}
		if seq, _, err := cl.pubs[0].Publish(ctx, &Message{PkgID: 3, Data: data(`{}`), Topic: "dashboards.x"}, h); err != nil || seq != 1 {
			t.Fatalf("other topic: seq %d, %v; want 1", seq, err)
		}
		for _, tc := range []struct {
			since      uint64
			first      uint64 // first seq returned; 0 = none
			complete   bool
			wantLatest uint64
		}{
			{since: 20, first: 21, complete: true},
			{since: 15, first: 16, complete: true}, // oldest kept is 16: nothing lost
			{since: 14, first: 16, complete: false},
			{since: 0, first: 16, complete: false},
			{since: 24, first: 25, complete: true},
			{since: 25, complete: true},
			{since: 26, complete: false}, // the counter went back: reload
		} {
			w, err := cl.pubs[1].History(ctx, "authors", tc.since)
			msgs, latest, ok := w.Msgs, w.Latest, w.Complete
			if err != nil || latest != n || ok != tc.complete || w.Epoch != epoch {
				t.Fatalf("History(since %d) = epoch %q latest %d, complete %v, %v; want %q, %d, %v", tc.since, w.Epoch, latest, ok, err, epoch, n, tc.complete)
			}
			want := 0
			if tc.first != 0 {
				want = n - int(tc.first) + 1
			}
			if len(msgs) != want {
				t.Fatalf("History(since %d) returned %d messages, want %d", tc.since, len(msgs), want)
			}
			for i, m := range msgs {
				s := tc.first + uint64(i)
				if m.Seq != s || m.Epoch != epoch || m.PkgID != 3 || m.Topic != "authors" || string(m.Data) != fmt.Sprintf(`{"n":%d}`, s) {
					t.Fatalf("History(since %d)[%d] = %+v data %s, want seq %d", tc.since, i, m, m.Data, s)
				}
			}
		}
		// A topic never published has no stream: no epoch, latest 0.
		w, err := cl.pubs[0].History(ctx, "dashboards.nothing", 0)
		if err != nil || w.Epoch != "" || w.Latest != 0 || !w.Complete || len(w.Msgs) != 0 {
			t.Fatalf("unknown topic: %+v, %v; want no epoch, 0 msgs, latest 0, complete", w, err)
		}
		if w, err = cl.pubs[0].History(ctx, "dashboards.nothing", 3); err != nil || w.Epoch != "" || w.Complete {
			t.Fatalf("unknown topic since 3: %+v, %v; want not complete", w, err)
		}
		// Each topic has a stream of its own.
		w, err = cl.pubs[0].History(ctx, "dashboards.x", 0)
		if err != nil || w.Latest != 1 || !w.Complete || len(w.Msgs) != 1 || w.Msgs[0].Seq != 1 || w.Epoch == "" || w.Epoch == epoch {
			t.Fatalf("second topic: %+v, %v (epoch of authors %q)", w, err, epoch)
		}
		// A smaller history on a later publish trims to that.
		if _, _, err := cl.pubs[0].Publish(ctx, &Message{PkgID: 3, Data: data(`{}`), Topic: "authors"}, 3); err != nil {
			t.Fatal(err)
		}
		if w, _ := cl.pubs[0].History(ctx, "authors", 0); len(w.Msgs) != 3 || w.Latest != n+1 || w.Complete || w.Msgs[0].Seq != n-1 || w.Epoch != epoch {
			t.Fatalf("after history 3: %+v", w)
		}
	})
}

func TestInvalidArguments(t *testing.T) {
	forEach(t, func(t *testing.T, cl cluster) {
		ctx := context.Background()
		b := cl.pubs[0]
		for name, tc := range map[string]struct {
			m       *Message
			history int
		}{
			"nil message":        {nil, 0},
			"history, no topic":  {&Message{PkgID: 1}, 5},
			"negative history":   {&Message{PkgID: 1, Topic: "a"}, -1},
			"huge history":       {&Message{PkgID: 1, Topic: "a"}, MaxHistory + 1},
			"brace in topic":     {&Message{PkgID: 1, Topic: "a}b"}, 5},
			"space in topic":     {&Message{PkgID: 1, Topic: "a b"}, 0},
			"long topic":         {&Message{PkgID: 1, Topic: strings.Repeat("a", MaxTopicLen+1)}, 5},
			"data is not JSON":   {&Message{PkgID: 1, Data: json.RawMessage(`{"a":`)}, 0},
			"lua in topic":       {&Message{PkgID: 1, Topic: "x')redis.call('FLUSHALL"}, 5},
			"newline in topic":   {&Message{PkgID: 1, Topic: "a\nb"}, 0},
			"not json, history":  {&Message{PkgID: 1, Topic: "a", Data: json.RawMessage(`nope`)}, 5},
			"unicode in a topic": {&Message{PkgID: 1, Topic: "café"}, 0},
		} {
			if _, _, err := b.Publish(ctx, tc.m, tc.history); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("%s: Publish error = %v, want ErrInvalidArgument", name, err)
			}
		}
		for _, topic := range []string{"", "a{b}", strings.Repeat("x", MaxTopicLen+1)} {
			if _, err := b.History(ctx, topic, 0); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("History(%.20q) error = %v, want ErrInvalidArgument", topic, err)
			}
		}
		// The longest allowed name with every allowed character works.
		long := "AZaz09._-:" + strings.Repeat("q", MaxTopicLen-10)
		if seq, _, err := b.Publish(ctx, &Message{PkgID: 1, Data: data(`{}`), Topic: long}, 2); err != nil || seq != 1 {
			t.Fatalf("Publish on the longest topic = %d, %v", seq, err)
		}
		// Empty data travels as null.
		if _, _, err := b.Publish(ctx, &Message{PkgID: 9}, 0); err != nil {
			t.Fatal(err)
		}
		for _, rec := range cl.recs {
			got := rec.waitLen(t, 2, 5*time.Second)
			if m := got[1]; m.PkgID != 9 || string(m.Data) != "null" {
				t.Fatalf("empty data delivered as %+v %s", m, m.Data)
			}
		}
	})
}

// TestPublishDoesNotChangeMessage: Publish leaves the caller's message alone.
func TestPublishDoesNotChangeMessage(t *testing.T) {
	forEach(t, func(t *testing.T, cl cluster) {
		m := &Message{PkgID: 2, Data: json.RawMessage(`{ "a" : 1 }`), Topic: "authors", Seq: 77}
		seq, _, err := cl.pubs[0].Publish(context.Background(), m, 5)
		if err != nil || seq != 1 {
			t.Fatalf("Publish = %d, %v", seq, err)
		}
		if m.Seq != 77 || string(m.Data) != `{ "a" : 1 }` {
			t.Fatalf("Publish changed the message: %+v %s", m, m.Data)
		}
		got := cl.recs[0].waitLen(t, 1, 5*time.Second)[0]
		if got.Seq != 1 || got.Epoch == "" || string(got.Data) != `{"a":1}` || got == m || m.Epoch != "" {
			t.Fatalf("delivered %+v %s", got, got.Data)
		}
	})
}

func TestClosed(t *testing.T) {
	forEach(t, func(t *testing.T, cl cluster) {
		b := cl.pubs[0]
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		ctx := context.Background()
		if _, _, err := b.Publish(ctx, &Message{PkgID: 1}, 0); !errors.Is(err, ErrClosed) {
			t.Fatalf("Publish after Close = %v", err)
		}
		if _, err := b.History(ctx, "authors", 0); !errors.Is(err, ErrClosed) {
			t.Fatalf("History after Close = %v", err)
		}
		if err := b.Healthy(ctx); !errors.Is(err, ErrClosed) {
			t.Fatalf("Healthy after Close = %v", err)
		}
	})
}
