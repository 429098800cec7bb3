package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"switchboard/store/redistest"
)

// Topics spread over the shards, and a topic's shard never changes.
func TestShardOf(t *testing.T) {
	r := &Redis{prefix: "p:", shards: 16}
	seen := map[int]int{}
	for i := 0; i < 1000; i++ {
		topic := "dashboards.t" + strconv.Itoa(i)
		k := r.shardOf(topic)
		if k < 0 || k >= 16 || k != r.shardOf(topic) {
			t.Fatalf("shardOf(%s) = %d", topic, k)
		}
		seen[k]++
	}
	for k := 0; k < 16; k++ {
		if seen[k] < 30 { // 62.5 on average
			t.Errorf("shard %d holds %d of 1000 topics", k, seen[k])
		}
	}
	if r.shardOf("") != 0 {
		t.Errorf("broadcasts to every connection go to shard %d, want 0", r.shardOf(""))
	}
	// A topic's keys and its shard channel share a hash tag, so one slot.
	key, ch := r.streamKey("authors"), r.channel(r.shardOf("authors"))
	if tagOf(key) != tagOf(ch) || tagOf(key) == "" {
		t.Errorf("key %s and channel %s have different hash tags", key, ch)
	}
}

func tagOf(s string) string {
	i := -1
	for j := range s {
		if s[j] == '{' && i < 0 {
			i = j
		}
		if s[j] == '}' && i >= 0 {
			return s[i : j+1]
		}
	}
	return ""
}

// busTopologies runs f with two nodes' buses on the package's shared Redis Cluster and Sentinel
// set.
func busTopologies(t *testing.T, f func(t *testing.T, ca, cb redis.UniversalClient)) {
	t.Run("cluster", func(t *testing.T) {
		cl := redistest.SharedCluster(t)
		a, b := cl.Client(), cl.Client()
		t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
		f(t, a, b)
	})
	t.Run("sentinel", func(t *testing.T) {
		s := redistest.SharedSentinel(t)
		a, b := s.Client(), s.Client()
		t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
		f(t, a, b)
	})
}

// Two nodes on a cluster or a sentinel set: every message reaches both, each topic in seq order
// (topics spread over every shard, so over every cluster primary), broadcasts to every
// connection too; Publish counts both nodes; History reads each topic back.
func TestRedisTopologies(t *testing.T) {
	busTopologies(t, func(t *testing.T, ca, cb redis.UniversalClient) {
		prefix := redistest.Prefix(t, ca)
		ra, rb := &recorder{}, &recorder{}
		a := newRedisBus(t, ca, prefix, "node-a", ra.deliver, WithProbeInterval(100*time.Millisecond))
		b := newRedisBus(t, cb, prefix, "node-b", rb.deliver, WithProbeInterval(100*time.Millisecond))
		waitHealthy(t, a, 20*time.Second)
		waitHealthy(t, b, 20*time.Second)
		ctx := context.Background()
		const topics, per = 24, 5
		shards := map[int]bool{}
		for i := 0; i < per; i++ {
			for tp := 0; tp < topics; tp++ {
				topic := "dashboards.t" + strconv.Itoa(tp)
				shards[a.shardOf(topic)] = true
				pub := a
				if tp%2 == 1 {
					pub = b
				}
				seq, nodes, err := pub.Publish(ctx, &Message{PkgID: 7, Topic: topic,
					Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}, 100)
				if err != nil || seq != uint64(i+1) || nodes != 2 {
					t.Fatalf("Publish %s #%d = seq %d, nodes %d, %v", topic, i, seq, nodes, err)
				}
			}
		}
		if _, nodes, err := b.Publish(ctx, &Message{PkgID: 1, Data: json.RawMessage(`"all"`)}, 0); err != nil || nodes != 2 {
			t.Fatalf("broadcast to every connection: nodes %d, %v", nodes, err)
		}
		if len(shards) < 8 {
			t.Fatalf("the topics used only %d shards", len(shards))
		}
		for name, rec := range map[string]*recorder{"a": ra, "b": rb} {
			got := rec.waitLen(t, topics*per+1, 20*time.Second)
			last := map[string]uint64{}
			for _, m := range got {
				if m.Topic == "" {
					continue
				}
				if m.Seq != last[m.Topic]+1 {
					t.Fatalf("node %s: %s seq %d after %d", name, m.Topic, m.Seq, last[m.Topic])
				}
				last[m.Topic] = m.Seq
			}
		}
		for tp := 0; tp < topics; tp++ {
			topic := "dashboards.t" + strconv.Itoa(tp)
			w, err := b.History(ctx, topic, 2)
			if err != nil || w.Latest != per || !w.Complete || len(w.Msgs) != per-2 || w.Epoch == "" {
				t.Fatalf("History(%s, 2) = %+v, %v", topic, w, err)
			}
		}
	})
}

// A node configured with another shard count than the deployment's says so in Healthy (and its
// log) instead of keeping topics in other places than its peers.
func TestRedisShardCountMismatch(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	a := newRedisBus(t, c, prefix, "node-a", (&recorder{}).deliver, WithProbeInterval(20*time.Millisecond))
	waitHealthy(t, a, 5*time.Second)
	logs := &logBuffer{}
	b := newRedisBus(t, c, prefix, "node-b", (&recorder{}).deliver, WithShards(8),
		WithProbeInterval(20*time.Millisecond), WithLogger(logs.logger()))
	var err error
	if !waitFor(5*time.Second, func() bool { err = b.Healthy(context.Background()); return err != nil && logs.count("shard count") > 0 }) {
		t.Fatalf("a node with 8 shards in a deployment of 16: Healthy = %v", err)
	}
	if !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("Healthy = %v, want ErrUnhealthy", err)
	}
	t.Logf("Healthy: %v", err)
	// Its probe may be late on a busy machine (20 ms apart here): healthy again once one is back.
	if !waitFor(5*time.Second, func() bool { err = a.Healthy(context.Background()); return err == nil }) {
		t.Fatalf("the node that agrees: %v", err)
	}
}

// The recorded shard count lives while nodes run and expires after they all stopped, so a
// deployment can change it; a node that came up with the other count is healthy once the
// record agrees with it.
func TestRedisShardCountRecordExpires(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	a := newRedisBus(t, c, prefix, "node-a", (&recorder{}).deliver, WithProbeInterval(20*time.Millisecond))
	waitHealthy(t, a, 5*time.Second)
	key := a.channel(0) + ":shards"
	if ttl := c.PTTL(context.Background(), key).Val(); ttl <= 0 {
		t.Fatalf("%s has no expiry (%s)", key, ttl)
	}
	b := newRedisBus(t, c, prefix, "node-b", (&recorder{}).deliver, WithShards(8), WithProbeInterval(20*time.Millisecond))
	if !waitFor(5*time.Second, func() bool { return b.Healthy(context.Background()) != nil && b.shardsErr.Load() != nil }) {
		t.Fatal("the node with 8 shards did not notice")
	}
	// The 16-shard deployment stops and its record expires (deleted here rather than waited
	// for); the 8-shard node takes over.
	_ = a.Close()
	if err := c.Del(context.Background(), key).Err(); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, b, 5*time.Second)
	if got := c.Get(context.Background(), key).Val(); got != "8" {
		t.Fatalf("%s = %q, want 8", key, got)
	}
}
