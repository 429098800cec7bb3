package bus

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"switchboard/store/redistest"
)

func counter(s *metrics.Set, name string) uint64 { return s.GetOrCreateCounter(name).Get() }

// TestRedisProbe: probes come back, set the lag gauge and Healthy, and are never delivered.
func TestRedisProbe(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	set := metrics.NewSet()
	ra, rb := &recorder{}, &recorder{}
	a := newRedisBus(t, c, prefix, "node-a", ra.deliver, WithProbeInterval(20*time.Millisecond), WithMetrics(set))
	newRedisBus(t, c, prefix, "node-b", rb.deliver, WithProbeInterval(20*time.Millisecond))
	waitHealthy(t, a, 2*time.Second)
	time.Sleep(100 * time.Millisecond) // several probes of both nodes go round
	if ra.len() != 0 || rb.len() != 0 {
		t.Fatalf("probes were delivered: %d, %d", ra.len(), rb.len())
	}
	lag := set.GetOrCreateGauge("pubsub_probe_lag_seconds", nil).Get()
	if lag <= 0 || lag > 1 {
		t.Fatalf("pubsub_probe_lag_seconds = %v", lag)
	}
	var sb strings.Builder
	set.WritePrometheus(&sb)
	for _, want := range []string{
		`redis_errors_total{operation="bus_publish"} 0`,
		`redis_errors_total{operation="bus_subscribe"} 0`,
		`redis_errors_total{operation="bus_history"} 0`,
		`bus_invalid_messages_total 0`,
		`pubsub_probe_lag_seconds `,
	} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, sb.String())
		}
	}
}

// TestRedisUndecodable: garbage on the channel is counted, logged once and skipped; the bus keeps
// delivering.
func TestRedisUndecodable(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	set, logs := metrics.NewSet(), &logBuffer{}
	rec := &recorder{}
	b := newRedisBus(t, c, prefix, "node-a", rec.deliver, WithMetrics(set), WithLogger(logs.logger()))
	ctx := context.Background()
	bad := []string{``, `nope`, `{}`, `{"n":"x","k":"m"}`, `{"n":"x","k":"z"}`, `{"k":"p"}`,
		`{"n":"x","k":"m","m":{"pkg_id":"one"}}`, `[1,2]`, `{"n":"x","k":"m","m":{"pkg_id":1,"data":{`,
		// A seq without the epoch of its stream.
		`{"n":"x","k":"m","m":{"pkg_id":1,"data":{},"topic":"t","seq":2}}`}
	for _, p := range bad {
		if err := c.SPublish(ctx, b.channel(b.shardOf("")), p).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := b.Publish(ctx, &Message{PkgID: 4, Data: json.RawMessage(`[]`)}, 0); err != nil {
		t.Fatal(err)
	}
	got := rec.waitLen(t, 1, 5*time.Second)
	if len(got) != 1 || got[0].PkgID != 4 {
		t.Fatalf("delivered %+v", got)
	}
	if n := counter(set, "bus_invalid_messages_total"); n != uint64(len(bad)) {
		t.Fatalf("bus_invalid_messages_total = %d, want %d", n, len(bad))
	}
	if n := logs.count("undecodable"); n != 1 {
		t.Fatalf("logged %d warnings about undecodable messages, want 1 (rate-limited)", n)
	}
}

// TestRedisKeys: the keys are where the contract says — the stream hash (epoch, seq) and the
// history list of JSON Messages with their seq — and expire with WithHistoryTTL.
func TestRedisKeys(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	rec := &recorder{}
	b := newRedisBus(t, c, prefix, "node-a", rec.deliver, WithHistoryTTL(time.Hour))
	ctx := context.Background()
	for range 3 {
		if _, _, err := b.Publish(ctx, &Message{PkgID: 5, Data: json.RawMessage(`{"x":"}"}`), Topic: "dash:x-1"}, 2); err != nil {
			t.Fatal(err)
		}
	}
	streamKey, histKey := b.streamKey("dash:x-1"), b.histKey("dash:x-1")
	if !strings.HasPrefix(streamKey, prefix+"topic:{b") || !strings.HasSuffix(streamKey, "}:dash:x-1:stream") {
		t.Fatalf("stream key %s, want %stopic:{b<shard>}:dash:x-1:stream", streamKey, prefix)
	}
	stream, err := c.HGetAll(ctx, streamKey).Result()
	if err != nil || stream["seq"] != "3" || len(stream["epoch"]) != 16 || len(stream) != 3 {
		t.Fatalf("HGETALL %s = %v, %v; want seq 3, a 16-digit epoch and the server's run_id", streamKey, stream, err)
	}
	if info := c.Info(ctx, "server").Val(); !strings.Contains(info, "run_id:"+stream["srv"]+"\r\n") {
		t.Fatalf("srv %q is not the server's run_id", stream["srv"])
	}
	entries, err := c.LRange(ctx, histKey, 0, -1).Result()
	if err != nil || len(entries) != 2 {
		t.Fatalf("LRANGE %s = %v, %v", histKey, entries, err)
	}
	if want := `{"pkg_id":5,"data":{"x":"}"},"topic":"dash:x-1","seq":3}`; entries[1] != want {
		t.Fatalf("entry = %s, want %s", entries[1], want)
	}
	for _, k := range []string{streamKey, histKey} {
		if ttl, err := c.PTTL(ctx, k).Result(); err != nil || ttl < 59*time.Minute || ttl > time.Hour {
			t.Fatalf("PTTL %s = %s, %v", k, ttl, err)
		}
	}
	// What travels on the channel carries the epoch.
	if got := rec.waitLen(t, 3, 5*time.Second)[2]; got.Epoch != stream["epoch"] || got.Seq != 3 {
		t.Fatalf("delivered %+v, want epoch %s seq 3", got, stream["epoch"])
	}
	// Without the option the keys do not expire.
	b2 := newRedisBus(t, c, prefix, "node-b", (&recorder{}).deliver)
	if _, _, err := b2.Publish(ctx, &Message{PkgID: 5, Topic: "other"}, 2); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{b2.histKey("other"), b2.streamKey("other")} {
		if ttl, err := c.PTTL(ctx, k).Result(); err != nil || ttl != -1 {
			t.Fatalf("PTTL %s without TTL = %s, %v", k, ttl, err)
		}
	}
}

// TestRedisStreamLost: the stream key gone while the history list survives (eviction, a key
// deleted by hand): the next publish starts a new stream — a new epoch, seq 1 — and the entries
// of the old stream are dropped rather than served as the new one's. Until then History says
// there is no stream.
func TestRedisStreamLost(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	b := newRedisBus(t, c, prefix, "node-a", (&recorder{}).deliver)
	ctx := context.Background()
	for range 5 {
		if _, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "authors"}, 10); err != nil {
			t.Fatal(err)
		}
	}
	before, err := b.History(ctx, "authors", 3)
	if err != nil || before.Latest != 5 || !before.Complete || before.Epoch == "" {
		t.Fatalf("History = %+v, %v", before, err)
	}
	if err := c.Del(ctx, b.streamKey("authors")).Err(); err != nil {
		t.Fatal(err)
	}
	if w, err := b.History(ctx, "authors", 3); err != nil || w.Epoch != "" || w.Latest != 0 || w.Complete || len(w.Msgs) != 0 {
		t.Fatalf("History with the stream lost = %+v, %v; want no stream", w, err)
	}
	if seq, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "authors"}, 10); err != nil || seq != 1 {
		t.Fatalf("Publish after the stream was lost = %d, %v; want 1", seq, err)
	}
	w, err := b.History(ctx, "authors", 0)
	if err != nil || w.Epoch == "" || w.Epoch == before.Epoch || w.Latest != 1 || len(w.Msgs) != 1 || !w.Complete {
		t.Fatalf("History of the new stream = %+v, %v; the old epoch was %q", w, err, before.Epoch)
	}
}

// TestRedisOddEpochReplaced: a stream key that is not as the buses make it (written by hand, or
// by something else: an epoch not of [0-9a-f] — which is never echoed into the channel —, a seq
// that is not a number, not a hash at all) does not make every publish fail: the stream starts
// again. The counter key of versions before epochs (:seq) is deleted with it.
func TestRedisOddEpochReplaced(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	rec := &recorder{}
	b := newRedisBus(t, c, prefix, "node-a", rec.deliver)
	ctx := context.Background()
	stream, old := b.streamKey("dash.odd"), b.oldSeqKey("dash.odd")
	for _, bad := range []string{`x","seq":99,"pkg_id":6`, "", strings.Repeat("a", 65), "ABCDEF", "bad seq", "not a hash"} {
		var err error
		switch bad {
		case "bad seq":
			err = c.HSet(ctx, stream, "epoch", "0123456789abcdef", "seq", "x1").Err()
		case "not a hash":
			err = c.Set(ctx, stream, "0123456789abcdef", 0).Err()
		default:
			err = c.HSet(ctx, stream, "epoch", bad, "seq", 41).Err()
		}
		if err != nil {
			t.Fatal(err)
		}
		if bad == "not a hash" { // History reads it as no stream
			if w, err := b.History(ctx, "dash.odd", 0); err != nil || w.Epoch != "" {
				t.Fatalf("History of a stream key that is not a hash = %+v, %v", w, err)
			}
		}
		if err := c.Set(ctx, old, 77, 0).Err(); err != nil {
			t.Fatal(err)
		}
		if seq, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "dash.odd"}, 10); err != nil || seq != 1 {
			t.Fatalf("epoch %q: Publish = %d, %v; want a new stream at 1", bad, seq, err)
		}
		w, err := b.History(ctx, "dash.odd", 0)
		if err != nil || w.Epoch == bad || len(w.Epoch) != 16 || w.Latest != 1 || len(w.Msgs) != 1 {
			t.Fatalf("epoch %q: History = %+v, %v", bad, w, err)
		}
		if n, err := c.Exists(ctx, old).Result(); err != nil || n != 0 {
			t.Fatalf("epoch %q: the old counter key is still there (%d, %v)", bad, n, err)
		}
		got := rec.waitLen(t, 1, 5*time.Second)
		if m := got[len(got)-1]; m.Epoch != w.Epoch || m.Seq != 1 || m.PkgID != 1 {
			t.Fatalf("epoch %q: delivered %+v", bad, m)
		}
		rec.mu.Lock()
		rec.msgs = nil
		rec.mu.Unlock()
		if err := c.Del(ctx, stream).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRedisExpiryNewEpoch: with WithHistoryTTL a topic idle for longer loses its stream; the next
// publish starts a new one under a new epoch.
func TestRedisExpiryNewEpoch(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	b := newRedisBus(t, c, prefix, "node-a", (&recorder{}).deliver, WithHistoryTTL(50*time.Millisecond))
	ctx := context.Background()
	if _, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "dash.ttl"}, 10); err != nil {
		t.Fatal(err)
	}
	before, err := b.History(ctx, "dash.ttl", 0)
	if err != nil || before.Epoch == "" {
		t.Fatalf("History = %+v, %v", before, err)
	}
	if !waitFor(10*time.Second, func() bool {
		w, err := b.History(ctx, "dash.ttl", 0)
		return err == nil && w.Epoch == ""
	}) {
		t.Fatal("the stream did not expire")
	}
	if seq, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "dash.ttl"}, 10); err != nil || seq != 1 {
		t.Fatalf("Publish after expiry = %d, %v", seq, err)
	}
	if w, err := b.History(ctx, "dash.ttl", 0); err != nil || w.Epoch == "" || w.Epoch == before.Epoch {
		t.Fatalf("History after expiry = %+v, %v; epoch before %q", w, err, before.Epoch)
	}
}

// TestRedisDown: Redis unreachable from the start: NewRedis still returns, Publish and History
// fail with ErrUnavailable and are counted, Healthy fails, Close is prompt.
func TestRedisDown(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	set, logs := metrics.NewSet(), &logBuffer{}
	start := time.Now()
	b, err := NewRedis(c, "sbtest:down:", "node-a", (&recorder{}).deliver,
		WithTimeout(100*time.Millisecond), WithProbeInterval(50*time.Millisecond), WithMetrics(set), WithLogger(logs.logger()))
	if err != nil {
		t.Fatalf("NewRedis with Redis down: %v", err)
	}
	// A refused connection fails at once; the bound only catches a constructor that waits on
	// Redis (NewRedis must return while Redis is down).
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("NewRedis took %s", took)
	}
	ctx := context.Background()
	if _, _, err := b.Publish(ctx, &Message{PkgID: 1}, 0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Publish = %v, want ErrUnavailable", err)
	}
	if _, _, err := b.Publish(ctx, &Message{PkgID: 1, Topic: "authors"}, 5); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Publish with history = %v, want ErrUnavailable", err)
	}
	if _, err := b.History(ctx, "authors", 0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("History = %v, want ErrUnavailable", err)
	}
	if err := b.Healthy(ctx); !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("Healthy = %v, want ErrUnhealthy", err)
	}
	if !waitFor(5*time.Second, func() bool { return counter(set, `redis_errors_total{operation="bus_subscribe"}`) >= 2 }) {
		t.Fatal("subscribe failures not counted")
	}
	if n := counter(set, `redis_errors_total{operation="bus_history"}`); n != 1 {
		t.Fatalf("bus_history errors = %d", n)
	}
	if n := counter(set, `redis_errors_total{operation="bus_publish"}`); n < 2 {
		t.Fatalf("bus_publish errors = %d", n)
	}
	// A caller that gave up is not Redis's fault.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	before := counter(set, `redis_errors_total{operation="bus_history"}`)
	if _, err := b.History(cancelled, "authors", 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("History with a cancelled context = %v", err)
	}
	if counter(set, `redis_errors_total{operation="bus_history"}`) != before {
		t.Fatal("a cancelled call was counted as a Redis error")
	}
	if n := logs.count("redis error in bus"); n != 1 {
		t.Fatalf("%d warnings logged, want 1 (at most one per 10 s)", n)
	}
	start = time.Now()
	_ = b.Close()
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Close took %s", took)
	}
}

func TestNewRedisArguments(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = c.Close() })
	for name, f := range map[string]func() (*Redis, error){
		"nil client":  func() (*Redis, error) { return NewRedis(nil, "p:", "n", func(*Message) {}) },
		"nil deliver": func() (*Redis, error) { return NewRedis(c, "p:", "n", nil) },
		"no node id":  func() (*Redis, error) { return NewRedis(c, "p:", "", func(*Message) {}) },
	} {
		if b, err := f(); !errors.Is(err, ErrInvalidArgument) || b != nil {
			t.Errorf("%s: %v, %v", name, b, err)
		}
	}
}

// TestRedisOddNodeIDAndPanic: a node id that needs JSON escaping still gets its probes back, and
// a deliver that panics on one message does not stop delivery.
func TestRedisOddNodeIDAndPanic(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	rec := &recorder{}
	b := newRedisBus(t, c, prefix, "nöde \"a\"\t\\x01", func(m *Message) {
		if m.PkgID == 666 {
			panic("boom")
		}
		rec.deliver(m)
	}, WithProbeInterval(20*time.Millisecond))
	waitHealthy(t, b, 2*time.Second)
	ctx := context.Background()
	for _, id := range []int{1, 666, 2} {
		if _, _, err := b.Publish(ctx, &Message{PkgID: id}, 0); err != nil {
			t.Fatal(err)
		}
	}
	if got := rec.waitLen(t, 2, 5*time.Second); got[0].PkgID != 1 || got[1].PkgID != 2 {
		t.Fatalf("delivered %+v, %+v", got[0], got[1])
	}
	waitHealthy(t, b, time.Second)
}

// TestRedisSlowDeliver: a deliver that blocks for many probe intervals makes Healthy fail but
// does not make the watchdog drop a working subscription, so nothing is lost.
func TestRedisSlowDeliver(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	set := metrics.NewSet()
	rec := &recorder{}
	const probe = 30 * time.Millisecond
	b := newRedisBus(t, c, prefix, "node-a", func(m *Message) {
		if m.PkgID == 2 {
			time.Sleep(10 * probe)
		}
		rec.deliver(m)
	}, WithProbeInterval(probe), WithMetrics(set))
	waitHealthy(t, b, 2*time.Second)
	w := watchHealth(b)
	ctx := context.Background()
	for i := 1; i <= 20; i++ {
		if _, _, err := b.Publish(ctx, &Message{PkgID: i}, 0); err != nil {
			t.Fatal(err)
		}
	}
	got := rec.waitLen(t, 20, 5*time.Second)
	for i, m := range got {
		if m.PkgID != i+1 {
			t.Fatalf("message %d has pkg_id %d", i, m.PkgID)
		}
	}
	waitHealthy(t, b, 2*time.Second)
	if !w.end() {
		t.Fatal("Healthy did not fail while deliver was stuck")
	}
	if n := counter(set, `redis_errors_total{operation="bus_subscribe"}`); n != 0 {
		t.Fatalf("the subscription was replaced %d times", n)
	}
}
