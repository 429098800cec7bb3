package main

// End-to-end tests of multi-node operation and topic recovery (docs/protocol.md §1.2, §1.4 pkg_id 10
// and 11, §2 POST /api/broadcast and /health; docs/protocol.md §8):
//
//   - a broadcast posted to one node reaches every subscriber on every node exactly once, in
//     order, untopiced and on a topic (seq strictly +1), and delivered_to_nodes counts the nodes;
//   - the Redis pub/sub connection killed, kept from reconnecting, or Redis restarted: delivery
//     resumes by itself, /health is 503 (pubsub unhealthy) while the bus is down and 200 after;
//   - recovery with SUBSCRIBE since: the answer, then exactly the missed messages, then live ones,
//     gap-free and duplicate-free also while messages are published during the resubscription;
//     recovered:false when since is older than the history (single node in-process, and two nodes
//     on Redis);
//   - domain events on `authors` cross nodes.
//
// Tests that need exact counts, untopiced broadcasts, the `authors` topic or an outage run on a
// redis-server of their own (random port, killed at cleanup): on the shared Redis every node of
// everyone listens on the same shard channels "switchboard:bus:{b<k>}", so untopiced broadcasts would reach
// other people's connections and theirs ours. On the shared Redis (127.0.0.1:6379, or
// SWITCHBOARD_TEST_REDIS_URL) only topics named dashboards.cl<random> are used, and their keys
// (and the per-user limit keys, whose user names carry the same tag) are deleted at cleanup.
// Missing redis-server or an unreachable Redis skips, or fails under CI=true.
//
// The subscribers read raw frames (wsClient) rather than use transport/client: exactly once and
// the replay after SUBSCRIBE since are checked frame by frame, and the Go client would drop a
// duplicate and resubscribe over a hole by itself.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"switchboard/config"
	"switchboard/store/bus"
	"switchboard/store/redistest"
)

// clPkgID is the pkg_id of the broadcasts these tests post.
const clPkgID = 77

// clWait bounds every single wait for a frame; generous for -race on a loaded 2-core machine.
const clWait = 20 * time.Second

// ---------------------------------------------------------------------------------------------
// The shared Redis.

// clSharedRedis connects to the shared Redis (skips when unreachable, fails under CI=true) and
// deletes, at cleanup, the keys of topics and the keys whose names contain tag. Call it before
// startServer, so that the keys are deleted after the servers stopped.
func clSharedRedis(t testing.TB, tag string, topics ...string) string {
	t.Helper()
	c := redistest.Client(t)
	url := redistest.URL(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var keys []string
		// A topic's keys are <prefix>topic:{b<shard>}:<topic>:stream and :hist.
		patterns := []string{config.DefaultRedisPrefix + "*" + tag + "*"}
		for _, topic := range topics {
			patterns = append(patterns, config.DefaultRedisPrefix+"topic:{*}:"+topic+":*")
		}
		for _, pattern := range patterns {
			iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
			for iter.Next(ctx) {
				keys = append(keys, iter.Val())
			}
			if err := iter.Err(); err != nil {
				t.Errorf("find the test's keys %s: %v", pattern, err)
			}
		}
		if len(keys) == 0 {
			return
		}
		if err := c.Del(ctx, keys...).Err(); err != nil {
			t.Errorf("delete the test's keys: %v", err)
		}
	})
	return url
}

// ---------------------------------------------------------------------------------------------
// Nodes, posting, reading.

// clNodes starts n nodes sharing one data directory (so one development issuer key: a token
// minted on any node verifies on every node), each with its own SQLite database, on redisURL
// ("" = in-process bus, meaningful only for n == 1), with limits raised for many broadcasts.
func clNodes(t testing.TB, n int, redisURL string) []*testServer {
	t.Helper()
	shared := t.TempDir()
	nodes := make([]*testServer, n)
	for i := range nodes {
		db := "sqlite://" + t.TempDir() + "/switchboard.db"
		nodes[i] = startServer(t, func(c *config.Config) {
			c.DataDir = shared
			c.DatabaseURL = db
			c.RedisURL = redisURL
			c.RateLimitPerMinute = 1000000
			c.WSMessageRateLimit = 1000000
			c.WSMaxConnsPerUser = 1000
		})
	}
	return nodes
}

var clHTTP = &http.Client{Timeout: 15 * time.Second}

// clPost posts a broadcast; safe from any goroutine. It returns the HTTP status, the
// delivered_to_nodes of a 202 and the body.
func clPost(s *testServer, token string, body any) (status, nodes int, raw []byte, err error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, 0, nil, err
	}
	req, err := http.NewRequest(http.MethodPost, s.base+"/api/broadcast", strings.NewReader(string(b)))
	if err != nil {
		return 0, 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := clHTTP.Do(req)
	if err != nil {
		return 0, 0, nil, err
	}
	defer resp.Body.Close()
	raw, _ = io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusAccepted {
		var out struct {
			Nodes *int `json:"delivered_to_nodes"`
		}
		if err := json.Unmarshal(raw, &out); err != nil || out.Nodes == nil {
			return resp.StatusCode, 0, raw, fmt.Errorf("202 body %s is not {\"delivered_to_nodes\": n}", raw)
		}
		nodes = *out.Nodes
	}
	return resp.StatusCode, nodes, raw, nil
}

// clBroadcastBody is a broadcast's body: data {"n", "run"} (and the topic when not empty).
func clBroadcastBody(topic, run string, n uint64) map[string]any {
	body := map[string]any{"pkg_id": clPkgID, "data": map[string]any{"n": n, "run": run}}
	if topic != "" {
		body["topic"] = topic
	}
	return body
}

// clMustPost posts a broadcast and fails unless it is accepted; it returns delivered_to_nodes.
func clMustPost(t testing.TB, s *testServer, token string, body any) int {
	t.Helper()
	status, nodes, raw, err := clPost(s, token, body)
	if err != nil || status != http.StatusAccepted {
		t.Fatalf("POST /api/broadcast %v: %d %s %v", body, status, raw, err)
	}
	return nodes
}

// clData is the data of the broadcasts these tests post.
type clData struct {
	N   uint64 `json:"n"`
	Run string `json:"run"`
}

func clDataOf(t testing.TB, e envelope) clData {
	t.Helper()
	var d clData
	if err := json.Unmarshal(e.Data, &d); err != nil {
		t.Fatalf("broadcast data %s: %v", e.Data, err)
	}
	return d
}

// clTryNext returns the next frame within d, or false.
func clTryNext(t testing.TB, c *wsClient, d time.Duration) (envelope, bool) {
	t.Helper()
	select {
	case b := <-c.msgs:
		var e envelope
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("frame is not an envelope: %v: %s", err, b)
		}
		return e, true
	case <-time.After(d):
		return envelope{}, false
	}
}

func clIsBroadcast(e envelope) bool { return e.StatusCode == nil && e.ReqID == bcZeroReqID }

// clExpectUntopicedRun reads n untopiced broadcasts and checks they are run's 0..n-1 in order.
func clExpectUntopicedRun(t testing.TB, c *wsClient, who, run string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		e, ok := clTryNext(t, c, clWait)
		if !ok {
			t.Fatalf("%s: broadcast %d of run %s did not arrive within %s", who, i, run, clWait)
		}
		if !clIsBroadcast(e) || e.Topic != "" || e.Seq != 0 || e.PkgID != clPkgID {
			t.Fatalf("%s: frame %d is not an untopiced broadcast of pkg_id %d: %+v %s", who, i, clPkgID, e, e.Data)
		}
		if d := clDataOf(t, e); d.Run != run || d.N != uint64(i) {
			t.Fatalf("%s: frame %d of run %s has data %s (a duplicate, a gap or out of order)", who, i, run, e.Data)
		}
	}
}

// clNextTopicFrame returns the next broadcast on topic. Untopiced broadcasts are skipped when
// noise is set (the shared Redis); any other frame fails the test.
func clNextTopicFrame(t testing.TB, c *wsClient, who, topic string, noise bool) envelope {
	t.Helper()
	for {
		e, ok := clTryNext(t, c, clWait)
		if !ok {
			t.Fatalf("%s: no broadcast on %s within %s", who, topic, clWait)
		}
		if noise && clIsBroadcast(e) && e.Topic == "" {
			continue
		}
		if !clIsBroadcast(e) || e.Topic != topic {
			t.Fatalf("%s: want a broadcast on %s, got %+v %s", who, topic, e, e.Data)
		}
		return e
	}
}

// clExpectSeqRun reads the broadcasts on topic with seq from..to and checks each is exactly the
// next one (seq strictly +1, data.n == seq: nothing missing, repeated or reordered), all of one
// stream (epoch), which it returns.
func clExpectSeqRun(t testing.TB, c *wsClient, who, topic string, from, to uint64, noise bool) string {
	t.Helper()
	var seen []uint64
	epoch := ""
	for want := from; want <= to; want++ {
		e := clNextTopicFrame(t, c, who, topic, noise)
		d := clDataOf(t, e)
		seen = append(seen, e.Seq)
		if e.Seq != want || d.N != want || e.PkgID != clPkgID {
			t.Fatalf("%s: want seq %d (of %d..%d) on %s, got pkg_id %d seq %d data %s; seqs received: %v",
				who, want, from, to, topic, e.PkgID, e.Seq, e.Data, seen)
		}
		if e.Epoch == "" || (epoch != "" && e.Epoch != epoch) {
			t.Fatalf("%s: seq %d on %s has epoch %q, the run's is %q", who, e.Seq, topic, e.Epoch, epoch)
		}
		epoch = e.Epoch
	}
	return epoch
}

// clSubAnswer is SUBSCRIBE's answer data.
type clSubAnswer struct {
	Topic     string `json:"topic"`
	Seq       uint64 `json:"seq"`
	Epoch     string `json:"epoch"`
	Recovered bool   `json:"recovered"`
}

// clSubscribe sends SUBSCRIBE (with since when not nil, in no epoch) and returns its answer.
func clSubscribe(t testing.TB, c *wsClient, who, topic string, since *uint64, noise bool) clSubAnswer {
	t.Helper()
	return clSubscribeAt(t, c, who, topic, since, "", noise)
}

// clSubscribeAt sends SUBSCRIBE (with since when not nil, and epoch when not empty) and returns
// its answer, which must come before any broadcast on the topic (untopiced broadcasts are
// skipped when noise is set).
func clSubscribeAt(t testing.TB, c *wsClient, who, topic string, since *uint64, epoch string, noise bool) clSubAnswer {
	t.Helper()
	id := uuid.NewString()
	data := map[string]any{"topic": topic}
	if since != nil {
		data["since"] = *since
	}
	if epoch != "" {
		data["epoch"] = epoch
	}
	frame, _ := json.Marshal(map[string]any{"pkg_id": 10, "req_id": id, "data": data})
	c.sendText(string(frame))
	for {
		e, ok := clTryNext(t, c, clWait)
		if !ok {
			t.Fatalf("%s: no answer to SUBSCRIBE %s within %s", who, topic, clWait)
		}
		if noise && clIsBroadcast(e) && e.Topic == "" {
			continue
		}
		if e.ReqID != id || e.PkgID != 10 {
			t.Fatalf("%s: frame before the answer to SUBSCRIBE %s: %+v %s", who, topic, e, e.Data)
		}
		if e.status() != 0 {
			t.Fatalf("%s: SUBSCRIBE %s: status %d msg %q data %s", who, topic, e.status(), e.msg(), e.Data)
		}
		var a clSubAnswer
		decodeData(t, e, &a)
		if a.Topic != topic {
			t.Fatalf("%s: SUBSCRIBE answer %s, want topic %s", who, e.Data, topic)
		}
		return a
	}
}

// clExpectQuiet checks that nothing more arrives on c: a round trip (UNSUBSCRIBE of a topic the
// connection does not have) is answered with no broadcast before it, and nothing follows within
// a short while. Untopiced broadcasts are tolerated when noise is set.
func clExpectQuiet(t testing.TB, c *wsClient, who string, noise bool) {
	t.Helper()
	id := uuid.NewString()
	frame, _ := json.Marshal(map[string]any{"pkg_id": 11, "req_id": id, "data": map[string]any{"topic": "dashboards.clquiet"}})
	c.sendText(string(frame))
	for answered := false; !answered; {
		e, ok := clTryNext(t, c, clWait)
		switch {
		case !ok:
			t.Fatalf("%s: no answer to the quiet check within %s", who, clWait)
		case noise && clIsBroadcast(e) && e.Topic == "":
		case e.ReqID == id && e.status() == 0:
			answered = true
		default:
			t.Fatalf("%s: unexpected frame (a duplicate or an extra message?): %+v %s", who, e, e.Data)
		}
	}
	deadline := time.After(200 * time.Millisecond)
	for {
		select {
		case b := <-c.msgs:
			var e envelope
			_ = json.Unmarshal(b, &e)
			if noise && clIsBroadcast(e) && e.Topic == "" {
				continue
			}
			t.Fatalf("%s: unexpected frame after the quiet check: %s", who, b)
		case <-deadline:
			return
		}
	}
}

// clHangUp closes the client's connection and waits for the close handshake.
func clHangUp(t testing.TB, c *wsClient) {
	t.Helper()
	_ = c.conn.WriteClose(1000, nil)
	if !c.waitClosed(clWait) {
		t.Fatalf("connection not closed within %s", clWait)
	}
}

// clHealth returns /health's status and body.
func clHealth(s *testServer) (int, map[string]string, error) {
	resp, err := clHTTP.Get(s.base + "/health")
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]string
	if err := json.Unmarshal(raw, &body); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("/health body %s: %w", raw, err)
	}
	return resp.StatusCode, body, nil
}

// clWaitFor polls cond every 20ms until it holds or d passes; cond says what it saw last.
func clWaitFor(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last saw: %s", d, what, saw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clWaitHealth waits until every node's /health is want (200 or 503) with pubsub as given.
func clWaitHealth(t testing.TB, d time.Duration, phase string, want int, pubsub string, nodes ...*testServer) {
	t.Helper()
	for i, s := range nodes {
		clWaitFor(t, d, fmt.Sprintf("%s: node %d /health %d with pubsub %s", phase, i, want, pubsub), func() (bool, string) {
			status, body, err := clHealth(s)
			return err == nil && status == want && body["pubsub"] == pubsub, fmt.Sprintf("%d %v %v", status, body, err)
		})
	}
}

// clMetric returns the value of the sample line name on s's /metrics (-1 when absent).
func clMetric(t testing.TB, s *testServer, name string) float64 {
	t.Helper()
	resp, err := clHTTP.Get(s.base + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s = %q", name, v)
			}
			return f
		}
	}
	return -1
}

// ---------------------------------------------------------------------------------------------
// 1. Exactly once, in order, across nodes.

// clFanout posts 100 broadcasts to nodes[0], untopiced (when untopiced) and on a fresh topic, and
// checks that every subscriber on every node gets each exactly once in order, that bystanders
// (not subscribed to the topic) get none of the topic's, and delivered_to_nodes.
func clFanout(t *testing.T, nodes []*testServer, tag, topic string, untopiced, noise bool, nodesOK func(int) bool) {
	const n = 100
	a, b := nodes[0], nodes[1]
	prod := a.token(t, "cl-producer-"+tag, "broadcast")
	viewer := a.token(t, "cl-viewer-"+tag)
	type client struct {
		who string
		c   *wsClient
		sub bool
	}
	clients := []client{
		{"A/subscriber", a.dial(t, viewer), true},
		{"A/bystander", a.dial(t, viewer), false},
		{"B/subscriber-1", b.dial(t, viewer), true},
		{"B/subscriber-2", b.dial(t, viewer), true},
		{"B/bystander", b.dial(t, viewer), false},
	}
	for _, cl := range clients {
		if cl.sub {
			if ans := clSubscribe(t, cl.c, cl.who, topic, nil, noise); ans.Seq != 0 || ans.Recovered {
				t.Fatalf("%s: SUBSCRIBE to fresh topic %s answered %+v, want seq 0, recovered false", cl.who, topic, ans)
			}
		}
	}
	// The hub registers a connection at the upgrade; a bystander's answered round trip shows it is
	// up, and that nothing has arrived yet.
	for _, cl := range clients {
		if !cl.sub {
			clExpectQuiet(t, cl.c, cl.who, noise)
		}
	}

	if untopiced {
		run := "all-" + tag
		for i := 0; i < n; i++ {
			if got := clMustPost(t, a, prod, clBroadcastBody("", run, uint64(i))); !nodesOK(got) {
				t.Fatalf("untopiced broadcast %d: delivered_to_nodes = %d", i, got)
			}
		}
		for _, cl := range clients {
			clExpectUntopicedRun(t, cl.c, cl.who, run, n)
		}
		for _, cl := range clients {
			clExpectQuiet(t, cl.c, cl.who, noise)
		}
	}

	for i := 1; i <= n; i++ {
		if got := clMustPost(t, a, prod, clBroadcastBody(topic, "topic-"+tag, uint64(i))); !nodesOK(got) {
			t.Fatalf("broadcast %d on %s: delivered_to_nodes = %d", i, topic, got)
		}
	}
	for _, cl := range clients {
		if cl.sub {
			clExpectSeqRun(t, cl.c, cl.who, topic, 1, n, noise)
		}
	}
	for _, cl := range clients {
		clExpectQuiet(t, cl.c, cl.who, noise)
	}
}

func TestClusterBroadcastExactlyOnceInOrder(t *testing.T) {
	t.Run("own-redis", func(t *testing.T) {
		rs := redistest.StartServer(t)
		nodes := clNodes(t, 2, rs.URL())
		tag := limRandomHex(5)
		clFanout(t, nodes, tag, "dashboards.cl"+tag, true, false, func(n int) bool { return n == 2 })
		// Exactly the two nodes listen on the bus: no node subscribed twice.
		if err := clShardSubscribers(rs.Client(), config.DefaultRedisPrefix, 2); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("shared-redis", func(t *testing.T) {
		// Topic only: untopiced broadcasts would reach everybody's nodes on the shared channel.
		tag := limRandomHex(5)
		topic := "dashboards.cl" + tag
		url := clSharedRedis(t, tag, topic)
		nodes := clNodes(t, 2, url)
		clFanout(t, nodes, tag, topic, false, true, func(n int) bool { return n >= 2 })
	})
}

// ---------------------------------------------------------------------------------------------
// 2. Bus outages.

// clOutageRig is two nodes on the test's own Redis with an untopiced subscriber on each.
type clOutageRig struct {
	t       *testing.T
	rs      *redistest.Server
	admin   *redis.Client
	nodes   []*testServer
	prod    string
	clients []*wsClient
	whos    []string
	tag     string
	probe   uint64
	round   int
}

// awaitFlow posts probe broadcasts to node A (failures tolerated: the bus may still be down)
// until one reaches every client, skipping older probes; bounded by d.
func (r *clOutageRig) awaitFlow(phase string, d time.Duration) {
	t := r.t
	t.Helper()
	deadline := time.Now().Add(d)
	run := "probe-" + r.tag
	for {
		if time.Now().After(deadline) {
			t.Fatalf("%s: delivery did not resume within %s", phase, d)
		}
		r.probe++
		k := r.probe
		_, _, _, _ = clPost(r.nodes[0], r.prod, clBroadcastBody("", run, k))
		all := true
		for i, c := range r.clients {
			got := false
			wait := time.Now().Add(time.Second)
			for !got && time.Now().Before(wait) {
				e, ok := clTryNext(t, c, time.Until(wait))
				if !ok {
					break
				}
				if !clIsBroadcast(e) || e.Topic != "" {
					t.Fatalf("%s: %s: unexpected frame %+v %s", phase, r.whos[i], e, e.Data)
				}
				dd := clDataOf(t, e)
				if dd.Run != run || dd.N > k {
					t.Fatalf("%s: %s: unexpected broadcast %s", phase, r.whos[i], e.Data)
				}
				got = dd.N == k
			}
			all = all && got
		}
		if all {
			return
		}
	}
}

// exactRound posts n broadcasts to node A and checks delivered_to_nodes == 2 and that each
// client gets them exactly once, in order, and nothing else.
func (r *clOutageRig) exactRound(phase string, n int) {
	t := r.t
	t.Helper()
	r.round++
	run := fmt.Sprintf("round%d-%s", r.round, r.tag)
	for i := 0; i < n; i++ {
		if got := clMustPost(t, r.nodes[0], r.prod, clBroadcastBody("", run, uint64(i))); got != 2 {
			t.Fatalf("%s: broadcast %d: delivered_to_nodes = %d, want 2", phase, i, got)
		}
	}
	for i, c := range r.clients {
		clExpectUntopicedRun(t, c, phase+": "+r.whos[i], run, n)
		clExpectQuiet(t, c, phase+": "+r.whos[i], false)
	}
	if err := clShardSubscribers(r.admin, config.DefaultRedisPrefix, 2); err != nil {
		t.Fatalf("%s: %v (one subscription per node)", phase, err)
	}
}

func (r *clOutageRig) busErrors() (float64, float64) {
	name := `redis_errors_total{operation="bus_subscribe"}`
	return clMetric(r.t, r.nodes[0], name), clMetric(r.t, r.nodes[1], name)
}

func TestClusterBusOutageRecovers(t *testing.T) {
	rs := redistest.StartServer(t)
	nodes := clNodes(t, 2, rs.URL())
	tag := limRandomHex(5)
	viewer := nodes[0].token(t, "cl-viewer-"+tag)
	admin := rs.Client()
	r := &clOutageRig{
		t: t, rs: rs, admin: admin, nodes: nodes, tag: tag,
		prod:    nodes[0].token(t, "cl-producer-"+tag, "broadcast"),
		clients: []*wsClient{nodes[0].dial(t, viewer), nodes[1].dial(t, viewer)},
		whos:    []string{"A/client", "B/client"},
	}
	ctx := context.Background()

	clWaitHealth(t, 30*time.Second, "start", http.StatusOK, "healthy", nodes...)
	r.awaitFlow("start", 30*time.Second)
	r.exactRound("start", 20)

	// 1. The pub/sub connections killed: go-redis reconnects and resubscribes by itself.
	errA, errB := r.busErrors()
	killed, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
	if err != nil || killed < 2 {
		t.Fatalf("CLIENT KILL TYPE pubsub: killed %d, %v; want the 2 nodes' subscriptions", killed, err)
	}
	r.awaitFlow("after CLIENT KILL TYPE pubsub", 30*time.Second)
	clWaitHealth(t, 30*time.Second, "after CLIENT KILL TYPE pubsub", http.StatusOK, "healthy", nodes...)
	r.exactRound("after CLIENT KILL TYPE pubsub", 20)
	if a, b := r.busErrors(); a <= errA || b <= errB {
		t.Errorf("redis_errors_total{operation=\"bus_subscribe\"} went from %v/%v to %v/%v; want both nodes to have seen the kill", errA, errB, a, b)
	}

	// 2. Killed and kept from reconnecting (maxclients below the connections already open):
	// /health says 503, pubsub unhealthy, for as long as the bus is down.
	conn := admin.Conn() // a connection of our own that stays usable under the lowered limit
	defer conn.Close()
	if err := conn.ConfigSet(ctx, "maxclients", "1").Err(); err != nil {
		t.Fatalf("CONFIG SET maxclients 1: %v", err)
	}
	restored := false
	defer func() {
		if !restored {
			_ = conn.ConfigSet(context.Background(), "maxclients", "10000").Err()
		}
	}()
	if killed, err := conn.ClientKillByFilter(ctx, "TYPE", "pubsub").Result(); err != nil || killed < 2 {
		t.Fatalf("CLIENT KILL TYPE pubsub (held down): killed %d, %v", killed, err)
	}
	clWaitHealth(t, 30*time.Second, "bus held down", http.StatusServiceUnavailable, "unhealthy", nodes...)
	time.Sleep(1500 * time.Millisecond) // still down: it must not report healthy without a subscription
	for i, s := range nodes {
		if status, body, err := clHealth(s); err != nil || status != http.StatusServiceUnavailable || body["pubsub"] != "unhealthy" || body["status"] != "unhealthy" {
			t.Fatalf("bus held down: node %d /health = %d %v %v, want 503 with pubsub and status unhealthy", i, status, body, err)
		}
	}
	if err := conn.ConfigSet(ctx, "maxclients", "10000").Err(); err != nil {
		t.Fatalf("CONFIG SET maxclients 10000: %v", err)
	}
	restored = true
	r.awaitFlow("bus allowed back", 30*time.Second)
	clWaitHealth(t, 30*time.Second, "bus allowed back", http.StatusOK, "healthy", nodes...)
	r.exactRound("bus allowed back", 20)

	// 3. Redis killed and started again on the same port.
	rs.Kill()
	clWaitHealth(t, 30*time.Second, "Redis killed", http.StatusServiceUnavailable, "unhealthy", nodes...)
	for i, s := range nodes {
		if status, body, err := clHealth(s); err != nil || body["redis"] != "unhealthy" || body["status"] != "unhealthy" {
			t.Errorf("Redis killed: node %d /health = %d %v %v, want redis and status unhealthy", i, status, body, err)
		}
	}
	// Broadcasts are refused (503) or reach nobody while Redis is down; never a false success.
	if status, nodesN, raw, err := clPost(nodes[0], r.prod, clBroadcastBody("", "lost-"+tag, 0)); err == nil && status == http.StatusAccepted && nodesN != 0 {
		t.Errorf("broadcast with Redis down: %d %s, want 503 or delivered_to_nodes 0", status, raw)
	}
	rs.Restart()
	r.awaitFlow("Redis restarted", 45*time.Second)
	clWaitHealth(t, 30*time.Second, "Redis restarted", http.StatusOK, "healthy", nodes...)
	r.exactRound("Redis restarted", 20)
	if lag := clMetric(t, nodes[0], "pubsub_probe_lag_seconds"); lag < 0 {
		t.Errorf("pubsub_probe_lag_seconds missing from /metrics")
	}
}

// ---------------------------------------------------------------------------------------------
// 3. Recovery with SUBSCRIBE since.

// clRecovery runs the recovery scenario: subscribers on sub, publisher on pub (the same node
// without Redis). Topic must be fresh.
func clRecovery(t *testing.T, pub, sub *testServer, tag, topic string, noise bool, nodesOK func(int) bool) {
	prod := pub.token(t, "cl-producer-"+tag, "broadcast")
	viewer := sub.token(t, "cl-viewer-"+tag)
	var latest uint64 // the topic's latest seq: every accepted broadcast takes the next one
	var epoch string  // the topic's stream, as the witness saw it
	// The witness stays subscribed on the subscribers' node throughout: its stream must be exact
	// too, and once it has a message, that node's hub has delivered it. publish waits for that,
	// so that the checks outside concurrent-resubscribe do not depend on when a message published
	// just before a SUBSCRIBE reaches the hub (see the BUG there).
	witness := sub.dial(t, viewer)
	if ans := clSubscribe(t, witness, "witness", topic, nil, noise); ans.Seq != 0 || ans.Recovered {
		t.Fatalf("SUBSCRIBE to a fresh topic: %+v, want seq 0, recovered false", ans)
	}
	publish := func(k int) {
		t.Helper()
		from := latest + 1
		for i := 0; i < k; i++ {
			latest++
			if got := clMustPost(t, pub, prod, clBroadcastBody(topic, "rec-"+tag, latest)); !nodesOK(got) {
				t.Fatalf("broadcast seq %d: delivered_to_nodes = %d", latest, got)
			}
		}
		if e := clExpectSeqRun(t, witness, "witness", topic, from, latest, noise); epoch == "" {
			epoch = e
		} else if e != epoch {
			t.Fatalf("the topic's epoch changed from %s to %s", epoch, e)
		}
	}
	u64 := func(v uint64) *uint64 { return &v }

	// Subscribe, receive some, disconnect.
	c1 := sub.dial(t, viewer)
	if ans := clSubscribe(t, c1, "first", topic, nil, noise); ans.Seq != 0 || ans.Recovered {
		t.Fatalf("SUBSCRIBE to a fresh topic: %+v, want seq 0, recovered false", ans)
	}
	publish(5)
	clExpectSeqRun(t, c1, "first", topic, 1, 5, noise)
	last := latest
	clHangUp(t, c1)

	// K published while away; back with since: the answer, exactly those K, then live ones.
	const k = 7
	publish(k)
	c2 := sub.dial(t, viewer)
	if ans := clSubscribeAt(t, c2, "back", topic, u64(last), epoch, noise); ans.Seq != latest || !ans.Recovered {
		t.Fatalf("SUBSCRIBE since %d: %+v, want seq %d, recovered true", last, ans, latest)
	}
	clExpectSeqRun(t, c2, "back", topic, last+1, last+k, noise)
	publish(3)
	clExpectSeqRun(t, c2, "back", topic, last+k+1, latest, noise)
	clExpectQuiet(t, c2, "back", noise)
	// since == latest: complete, nothing to replay.
	if ans := clSubscribeAt(t, c2, "back, again", topic, u64(latest), epoch, noise); ans.Seq != latest || !ans.Recovered {
		t.Fatalf("SUBSCRIBE again since latest %d: %+v, want seq %d, recovered true", latest, ans, latest)
	}
	clExpectQuiet(t, c2, "back, again", noise)
	// since without the epoch it belongs to, or with another stream's: never recovered, nothing
	// replayed; the answer names the topic's stream.
	for _, other := range []string{"", "0123456789abcdef"} {
		if ans := clSubscribeAt(t, c2, "epoch "+other, topic, u64(latest-1), other, noise); ans.Seq != latest || ans.Recovered || ans.Epoch != epoch {
			t.Fatalf("SUBSCRIBE since %d in epoch %q: %+v, want seq %d, epoch %s, recovered false", latest-1, other, ans, latest, epoch)
		}
		clExpectQuiet(t, c2, "epoch "+other, noise)
	}
	publish(1)
	clExpectSeqRun(t, c2, "back, again", topic, latest, latest, noise)
	clExpectQuiet(t, c2, "back, again", noise)
	clHangUp(t, c2)

	// Published concurrently while the client resubscribes: the whole stream after since is
	// gap-free and duplicate-free, with the answer first.
	ok := t.Run("concurrent-resubscribe", func(t *testing.T) {
		for round := 0; round < 8; round++ {
			const m = 30
			since := latest - uint64(2*round)
			base := latest
			latest += m
			started := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				var err error
				for i := 0; i < m && err == nil; i++ {
					if i == 5 {
						close(started)
					}
					status, nodes, raw, perr := clPost(pub, prod, clBroadcastBody(topic, "rec-"+tag, base+1+uint64(i)))
					switch {
					case perr != nil:
						err = perr
					case status != http.StatusAccepted || !nodesOK(nodes):
						err = fmt.Errorf("broadcast seq %d: %d %s", base+1+uint64(i), status, raw)
					}
				}
				if err != nil {
					select {
					case <-started:
					default:
						close(started)
					}
				}
				done <- err
			}()
			c := sub.dial(t, viewer)
			fresh := sub.dial(t, viewer) // subscribes without since: live messages after the answer's seq
			who := fmt.Sprintf("concurrent round %d", round)
			select {
			case <-started:
			case <-time.After(60 * time.Second):
				t.Fatalf("%s: publisher did not start", who)
			}
			ans := clSubscribeAt(t, c, who, topic, u64(since), epoch, noise)
			ans0 := clSubscribe(t, fresh, who+" (no since)", topic, nil, noise)
			if ans0.Recovered || ans0.Seq < base || ans0.Seq > latest {
				t.Fatalf("%s: SUBSCRIBE without since during publishing: %+v, want recovered false and seq in %d..%d", who, ans0, base, latest)
			}
			if !ans.Recovered || ans.Seq < base || ans.Seq > latest {
				t.Fatalf("%s: SUBSCRIBE since %d during publishing: %+v, want recovered true and seq in %d..%d", who, since, ans, base, latest)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("%s: publisher: %v", who, err)
				}
			case <-time.After(120 * time.Second):
				t.Fatalf("%s: publisher did not finish", who)
			}
			t.Logf("%s: answer seq %d (since %d, last published %d): %d to replay, %d live", who, ans.Seq, since, latest, ans.Seq-since, latest-ans.Seq)
			clExpectSeqRun(t, c, who, topic, since+1, latest, noise)
			clExpectQuiet(t, c, who, noise)
			clHangUp(t, c)
			clExpectSeqRun(t, fresh, who+" (no since)", topic, ans0.Seq+1, latest, noise)
			clExpectQuiet(t, fresh, who+" (no since)", noise)
			clHangUp(t, fresh)
			clExpectSeqRun(t, witness, who+" (witness)", topic, base+1, latest, noise)
		}
	})
	if !ok {
		return
	}

	// since older than the history (100 kept): recovered false, nothing replayed, live follows.
	old := latest
	publish(105)
	c3 := sub.dial(t, viewer)
	if ans := clSubscribeAt(t, c3, "too old", topic, u64(old), epoch, noise); ans.Seq != latest || ans.Recovered {
		t.Fatalf("SUBSCRIBE since %d, 105 behind: %+v, want seq %d, recovered false", old, ans, latest)
	}
	clExpectQuiet(t, c3, "too old", noise)
	publish(1)
	clExpectSeqRun(t, c3, "too old", topic, latest, latest, noise)
	clExpectQuiet(t, c3, "too old", noise)

	// The edge of the history: since = latest-100 is still complete, latest-101 is not.
	c4 := sub.dial(t, viewer)
	if ans := clSubscribeAt(t, c4, "edge", topic, u64(latest-100), epoch, noise); ans.Seq != latest || !ans.Recovered {
		t.Fatalf("SUBSCRIBE since latest-100 = %d: %+v, want seq %d, recovered true", latest-100, ans, latest)
	}
	clExpectSeqRun(t, c4, "edge", topic, latest-99, latest, noise)
	clExpectQuiet(t, c4, "edge", noise)
	c5 := sub.dial(t, viewer)
	if ans := clSubscribeAt(t, c5, "past the edge", topic, u64(latest-101), epoch, noise); ans.Seq != latest || ans.Recovered {
		t.Fatalf("SUBSCRIBE since latest-101 = %d: %+v, want seq %d, recovered false", latest-101, ans, latest)
	}
	clExpectQuiet(t, c5, "past the edge", noise)
	// since ahead of the topic (its counter was reset, say): recovered false.
	if ans := clSubscribeAt(t, c5, "ahead", topic, u64(latest+5), epoch, noise); ans.Seq != latest || ans.Recovered {
		t.Fatalf("SUBSCRIBE since latest+5 = %d: %+v, want seq %d, recovered false", latest+5, ans, latest)
	}
	clExpectQuiet(t, c5, "ahead", noise)
	// Live messages still reach every subscription, once.
	publish(2)
	for _, cc := range []struct {
		who string
		c   *wsClient
	}{{"too old", c3}, {"edge", c4}, {"ahead", c5}} {
		clExpectSeqRun(t, cc.c, cc.who, topic, latest-1, latest, noise)
		clExpectQuiet(t, cc.c, cc.who, noise)
	}
	clExpectQuiet(t, witness, "witness", noise)
}

func TestClusterTopicRecovery(t *testing.T) {
	t.Run("single-node-in-process", func(t *testing.T) {
		s := clNodes(t, 1, "")[0]
		tag := limRandomHex(5)
		clRecovery(t, s, s, tag, "dashboards.cl"+tag, false, func(n int) bool { return n == 1 })
	})
	t.Run("two-nodes-shared-redis", func(t *testing.T) {
		tag := limRandomHex(5)
		topic := "dashboards.cl" + tag
		url := clSharedRedis(t, tag, topic)
		nodes := clNodes(t, 2, url)
		clRecovery(t, nodes[0], nodes[1], tag, topic, true, func(n int) bool { return n >= 2 })
	})
}

// ---------------------------------------------------------------------------------------------
// 4. Domain events across nodes.

type clAuthorEvent struct {
	Event  string `json:"event"`
	Author struct {
		ID   *int64  `json:"id"`
		Name *string `json:"name"`
	} `json:"author"`
}

func TestClusterAuthorEventsAcrossNodes(t *testing.T) {
	rs := redistest.StartServer(t) // own Redis: `authors` is one topic for everybody on the shared one
	nodes := clNodes(t, 2, rs.URL())
	a, b := nodes[0], nodes[1]
	tag := limRandomHex(5)

	readers := []struct {
		who string
		c   *wsClient
	}{
		{"B/reader", b.dial(t, b.token(t, "cl-reader-"+tag, "get-authors"))},
		{"A/reader", a.dial(t, a.token(t, "cl-reader-"+tag, "get-authors"))},
	}
	var seq0 uint64
	for i, r := range readers {
		ans := clSubscribe(t, r.c, r.who, "authors", nil, false)
		if i == 0 {
			seq0 = ans.Seq
		} else if ans.Seq != seq0 {
			t.Fatalf("%s: authors seq %d, the other node said %d", r.who, ans.Seq, seq0)
		}
	}
	writerRoles := []string{"create-author", "update-author", "delete-author"}
	writerA := a.dial(t, a.token(t, "cl-writer-"+tag, writerRoles...))
	httpB := b.token(t, "cl-writer-"+tag, writerRoles...)
	httpA := a.token(t, "cl-writer-"+tag, writerRoles...)

	want := seq0
	expect := func(what string, pkgID int, event string, id int64, name string) {
		t.Helper()
		want++
		for _, r := range readers {
			e := clNextTopicFrame(t, r.c, r.who, "authors", false)
			var ev clAuthorEvent
			if err := json.Unmarshal(e.Data, &ev); err != nil {
				t.Fatalf("%s: %s: event data %s: %v", r.who, what, e.Data, err)
			}
			ok := e.PkgID == pkgID && e.Seq == want && ev.Event == event && ev.Author.ID != nil && *ev.Author.ID == id
			if name == "" {
				ok = ok && ev.Author.Name == nil
			} else {
				ok = ok && ev.Author.Name != nil && *ev.Author.Name == name
			}
			if !ok {
				t.Fatalf("%s: %s: got pkg_id %d seq %d data %s; want pkg_id %d seq %d event %q id %d name %q",
					r.who, what, e.PkgID, e.Seq, e.Data, pkgID, want, event, id, name)
			}
		}
	}

	// CREATE_AUTHOR over WebSocket on A reaches the reader on B (and on A).
	name := "Ada " + tag
	r := writerA.call(3, map[string]any{"name": name})
	if r.status() != 0 {
		t.Fatalf("CREATE_AUTHOR on A: %+v %s", r, r.Data)
	}
	var created struct {
		ID   int64  `json:"id"`
		Name string `json:"name"`
	}
	decodeData(t, r, &created)
	expect("create on A", 3, "created", created.ID, name)

	// UPDATE over HTTP on A.
	renamed := "Ada Lovelace " + tag
	if resp, body := a.do(t, http.MethodPut, "/authors/"+strconv.FormatInt(created.ID, 10), httpA, `{"name":"`+renamed+`"}`); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT /authors/%d on A: %d %s", created.ID, resp.StatusCode, body)
	}
	expect("update on A", 4, "updated", created.ID, renamed)

	// CREATE over HTTP on B (its own database) reaches the reader on A too.
	resp, body := b.do(t, http.MethodPost, "/authors", httpB, `{"name":"Grace `+tag+`"}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /authors on B: %d %s", resp.StatusCode, body)
	}
	var onB struct {
		ID int64 `json:"id"`
	}
	if err := json.Unmarshal(body, &onB); err != nil {
		t.Fatalf("POST /authors body %s: %v", body, err)
	}
	expect("create on B", 3, "created", onB.ID, "Grace "+tag)

	// DELETE over WebSocket on A.
	if r := writerA.call(5, map[string]any{"id": created.ID}); r.status() != 0 {
		t.Fatalf("DELETE_AUTHOR on A: %+v %s", r, r.Data)
	}
	expect("delete on A", 5, "deleted", created.ID, "")

	// A failed write publishes nothing.
	if r := writerA.call(4, map[string]any{"id": created.ID, "name": "ghost"}); r.status() != 1 {
		t.Fatalf("UPDATE_AUTHOR of a deleted author: %+v %s", r, r.Data)
	}
	for _, r := range readers {
		clExpectQuiet(t, r.c, r.who, false)
	}
	// Nobody but the server publishes on authors.
	if status, _, raw, err := clPost(a, a.token(t, "cl-producer-"+tag, "broadcast"), map[string]any{"pkg_id": 3, "topic": "authors", "data": map[string]any{}}); err != nil || status != http.StatusForbidden {
		t.Fatalf("POST /api/broadcast on authors: %d %s %v, want 403", status, raw, err)
	}
}

// TestClusterRedisPrefixSeparatesDeployments: two nodes on one Redis with different
// SWITCHBOARD_REDIS_PREFIX values are two deployments — a broadcast on one reaches only its
// own node and its own clients, and every key each writes starts with its prefix.
func TestClusterRedisPrefixSeparatesDeployments(t *testing.T) {
	url := redistest.URL(t)
	admin := redistest.Client(t)
	tag := fmt.Sprintf("sbpfx%x", time.Now().UnixNano())
	prefixes := []string{tag + "-a:", tag + "-b:"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		iter := admin.Scan(ctx, 0, tag+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if len(keys) > 0 {
			if err := admin.Del(ctx, keys...).Err(); err != nil {
				t.Errorf("delete the test's keys: %v", err)
			}
		}
	})
	shared := t.TempDir()
	nodes := make([]*testServer, 2)
	for i := range nodes {
		db := "sqlite://" + t.TempDir() + "/switchboard.db"
		nodes[i] = startServer(t, func(c *config.Config) {
			c.DataDir, c.DatabaseURL, c.RedisURL, c.RedisPrefix = shared, db, url, prefixes[i]
		})
	}
	clWaitHealth(t, clWait, "start", http.StatusOK, "healthy", nodes...)
	token := nodes[0].token(t, "pfx-"+tag, "broadcast")
	a, b := nodes[0].dial(t, token), nodes[1].dial(t, token)
	for _, s := range nodes { // the hub registers a connection just after its upgrade
		s.waitHubActive(t, 1)
	}
	run := tag
	for i, s := range nodes {
		if n := clMustPost(t, s, token, clBroadcastBody("", run, uint64(i))); n != 1 {
			t.Fatalf("node %d: delivered_to_nodes = %d, want 1 (the other prefix is another deployment)", i, n)
		}
	}
	for i, c := range []*wsClient{a, b} {
		e, ok := clTryNext(t, c, clWait)
		if !ok || !clIsBroadcast(e) || clDataOf(t, e).N != uint64(i) {
			t.Fatalf("node %d's client: got %+v (ok %v), want its own node's broadcast %d", i, e, ok, i)
		}
		if e, ok := clTryNext(t, c, 500*time.Millisecond); ok {
			t.Fatalf("node %d's client got a second frame %+v: the other deployment's broadcast crossed", i, e)
		}
	}
	for _, p := range prefixes {
		if err := clShardSubscribers(admin, p, 1); err != nil {
			t.Fatal(err)
		}
	}
}

// clShardSubscribers checks that each of the bus's shard channels under prefix (the default
// count) has exactly want subscribers: one per node.
func clShardSubscribers(c redis.UniversalClient, prefix string, want int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	channels := make([]string, bus.DefaultShards)
	for k := range channels {
		channels[k] = prefix + "bus:{b" + strconv.Itoa(k) + "}"
	}
	n, err := c.PubSubShardNumSub(ctx, channels...).Result()
	if err != nil {
		return fmt.Errorf("PUBSUB SHARDNUMSUB: %w", err)
	}
	for _, ch := range channels {
		if n[ch] != want {
			return fmt.Errorf("PUBSUB SHARDNUMSUB %s = %d, want %d (all: %v)", ch, n[ch], want, n)
		}
	}
	return nil
}
