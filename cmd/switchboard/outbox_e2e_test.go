package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/uptrace/bun"

	"switchboard/config"
	"switchboard/store"
	"switchboard/store/outbox"
	"switchboard/store/redistest"
	"switchboard/transport/auth"
)

// metricValue reads one sample of a node's /metrics (0 when absent).
func metricValue(t *testing.T, base, name string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// TestOutboxRelayKilledBetweenPublishAndDelete: node A relays the outbox and stops dead after
// publishing a batch and before deleting its rows (the test hook), and an author created on A
// meanwhile has its event committed but not published; A is SIGKILLed there. Node B takes the
// relay over within seconds, publishes the batch again — which the bus's dedup window drops —
// and the author's event; then more rows flow. Every subscriber (those of A reconnect to B
// and recover from the history) sees every event exactly once, in order.
func TestOutboxRelayKilledBetweenPublishAndDelete(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two server processes")
	}
	pc := newProcCluster(t, "SWITCHBOARD_OUTBOX_POLL_INTERVAL=200ms", "SWITCHBOARD_WS_PING_INTERVAL=2s")
	dsn, data, env := pc.dsn, pc.data, pc.env
	a := startProcNode(t, append(env, haltEnv+"=1")...)
	eventually(t, 30*time.Second, "node A to take the relay", func() bool {
		return strings.Contains(a.logs.String(), "this node relays the outbox")
	})
	b := startProcNode(t, env...)
	dev, err := auth.LoadDevIssuer(data)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{base: a.base, cfg: config.Default(), dev: dev}

	const topic = "dashboards.outbox"
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var boards []*dashboard
	for i, n := range []*procNode{a, b, b} {
		for _, tp := range []string{topic, "authors"} {
			d := &dashboard{name: fmt.Sprintf("board%d-%s", i, tp), topic: tp, nodes: []string{b.wsURL()}}
			d.token = s.token(t, fmt.Sprintf("viewer%d", i), "get-authors")
			c, err := d.subscribe(t, n.wsURL())
			if err != nil {
				t.Fatalf("%s: %v", d.name, err)
			}
			boards = append(boards, d)
			wg.Add(1)
			go func() { defer wg.Done(); d.run(t, c, stop) }()
		}
	}

	db, err := store.Open(context.Background(), dsn, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	produce := func(from, count int) {
		t.Helper()
		// One transaction: the relay reads them as one batch.
		err := db.Bun.RunInTx(context.Background(), nil, func(ctx context.Context, tx bun.Tx) error {
			for i := from; i < from+count; i++ {
				if err := outbox.Insert(ctx, tx, outbox.Event{Topic: topic, PkgID: 7, Data: json.RawMessage(fmt.Sprintf(`{"n": %d}`, i))}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	seen := func(tp string, n uint64) func() bool {
		return func() bool {
			for _, d := range boards {
				d.mu.Lock()
				got := d.seq
				d.mu.Unlock()
				if d.topic == tp && got < n {
					return false
				}
			}
			return true
		}
	}

	produce(0, 50)
	eventually(t, 30*time.Second, "node A to halt between publish and delete", func() bool {
		return strings.Contains(a.logs.String(), "outbox relay halted after publishing")
	})
	eventually(t, 30*time.Second, "every board to see the 50 published rows", seen(topic, 50))
	// An author created on A now: its event row commits with it, and A's relay never gets to it.
	writer := s.token(t, "writer", "create-author")
	resp, body := s.do(t, http.MethodPost, "/authors", writer, `{"name": "Outbox Kill"}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("create author: %d %s", resp.StatusCode, body)
	}
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	eventually(t, 60*time.Second, "node B to take the relay over", func() bool {
		return strings.Contains(b.logs.String(), "this node relays the outbox")
	})
	t.Logf("node B relays %s after the kill", time.Since(killed).Round(time.Millisecond))
	eventually(t, 60*time.Second, "the author's event on every board", seen("authors", 1))
	produce(50, 50)
	eventually(t, 60*time.Second, "every board to see 100 rows", seen(topic, 100))
	eventually(t, 30*time.Second, "the outbox to empty", func() bool {
		rows, err := outbox.New(db.Bun).Pending(context.Background(), 0, 10, 1<<20, 1<<20)
		return err == nil && len(rows) == 0
	})
	time.Sleep(500 * time.Millisecond) // a duplicate would arrive now
	close(stop)
	wg.Wait()

	for _, d := range boards {
		d.mu.Lock()
		for _, e := range d.errs {
			t.Error(e)
		}
		want := 100
		if d.topic == "authors" {
			want = 1
		}
		if d.got != want || d.lost {
			t.Errorf("%s: got %d messages (lost: %v), want %d exactly once", d.name, d.got, d.lost, want)
		}
		d.mu.Unlock()
	}
	if dup := metricValue(t, b.base, `relay_events_total{source="outbox",outcome="duplicate"}`); dup != 50 {
		t.Errorf("node B dropped %g duplicates, want the 50 rows A published", dup)
	}
}

// TestStreamInboxEndToEnd: entries XADDed to the node's stream inbox reach a subscriber in
// order, the ones the rules refuse land in the dead-letter stream with their reason, and the
// entries behind them flow.
func TestStreamInboxEndToEnd(t *testing.T) {
	rc := redistest.Client(t)
	prefix := redistest.Prefix(t, rc)
	s := startServer(t, func(c *config.Config) {
		c.RedisURL, c.RedisPrefix = redistest.URL(t), prefix
	})
	const topic = "dashboards.inbox"
	d := &dashboard{name: "inbox", topic: topic, nodes: []string{s.wsURL("")}}
	d.token = s.token(t, "inbox-viewer")
	c, err := d.subscribe(t, s.wsURL(""))
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); d.run(t, c, stop) }()
	defer func() { close(stop); <-done }()

	ctx := context.Background()
	stream := prefix + "inbox"
	for i := range 10 {
		values := []any{"topic", topic, "pkg_id", "7", "data", fmt.Sprintf(`{"n": %d}`, i)}
		if err := rc.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: values}).Err(); err != nil {
			t.Fatal(err)
		}
		if i == 4 { // poison: a server-only topic, then a pkg_id that is not a number
			for _, v := range [][]any{{"topic", "authors", "pkg_id", "3", "data", `{}`}, {"topic", topic, "pkg_id", "seven"}} {
				if err := rc.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: v}).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	eventually(t, e2eWait, "10 messages", func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.got >= 10 })
	eventually(t, e2eWait, "2 dead letters", func() bool { return rc.XLen(ctx, stream+":dead").Val() == 2 })
	dead := rc.XRange(ctx, stream+":dead", "-", "+").Val()
	if r := fmt.Sprint(dead[0].Values["reason"]); !strings.Contains(r, "only the server publishes") {
		t.Errorf("first dead letter's reason: %q", r)
	}
	if r := fmt.Sprint(dead[1].Values["reason"]); !strings.Contains(r, "pkg_id") {
		t.Errorf("second dead letter's reason: %q", r)
	}
	d.mu.Lock()
	if d.got != 10 || len(d.errs) > 0 {
		t.Errorf("got %d messages, errors %v", d.got, d.errs)
	}
	d.mu.Unlock()
	if v := metricValue(t, s.base, `relay_events_total{source="inbox",outcome="dead_lettered"}`); v != 2 {
		t.Errorf("dead-lettered counter %g", v)
	}
}

// TestHealthReportsAStuckRelay: a relay that stops moving rows (here it halts after publishing
// them, by the test hook) makes /health report relay unhealthy once the oldest row has waited
// longer than SWITCHBOARD_RELAY_STUCK_AFTER. The node itself still serves: status stays healthy
// and the answer 200 (every node reads the same table, so a 503 would empty the load balancer).
func TestHealthReportsAStuckRelay(t *testing.T) {
	t.Setenv(haltEnv, "1")
	s := startServer(t, func(c *config.Config) { c.RelayStuckAfter = time.Second })
	if err := outbox.Insert(context.Background(), s.app.db.Bun, outbox.Event{Topic: "dashboards.stuck", PkgID: 7}); err != nil {
		t.Fatal(err)
	}
	var body map[string]string
	eventually(t, e2eWait, "/health to report the relay stuck", func() bool {
		resp, b := s.do(t, http.MethodGet, "/health", "", "")
		body = nil
		_ = json.Unmarshal(b, &body)
		return resp.StatusCode == http.StatusOK && body["relay"] == "unhealthy"
	})
	if body["database"] != "healthy" || body["status"] != "healthy" {
		t.Fatalf("health: %v", body)
	}
}

// TestOutboxTwoNodesRaceForTheRelay: two nodes start at once and race for the relay while
// 2 000 rows arrive from four producers: exactly one relays, and subscribers on both nodes see
// every row once, with no hole or repeat in the topic's seq (each producer's order is checked
// in relay's TestOutboxTwoRelaysRace).
func TestOutboxTwoNodesRaceForTheRelay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two server processes")
	}
	pc := newProcCluster(t)
	dsn, data, env := pc.dsn, pc.data, pc.env
	// Migrate first: two nodes migrating one database at once is covered elsewhere.
	db, err := store.Open(context.Background(), dsn, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	nodes := make([]*procNode, 2)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); nodes[i] = startProcNode(t, env...) }()
	}
	wg.Wait()
	dev, err := auth.LoadDevIssuer(data)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{base: nodes[0].base, cfg: config.Default(), dev: dev}
	const topic = "dashboards.race"
	stop := make(chan struct{})
	var boards []*dashboard
	var runs sync.WaitGroup
	for i, n := range nodes {
		url := n.wsURL()
		d := &dashboard{name: fmt.Sprintf("board@node%d", i), topic: topic, nodes: []string{url}, token: s.token(t, fmt.Sprintf("racer%d", i))}
		c, err := d.subscribe(t, url)
		if err != nil {
			t.Fatal(err)
		}
		boards = append(boards, d)
		runs.Add(1)
		go func() { defer runs.Done(); d.run(t, c, stop) }()
	}

	const producers, each = 4, 500
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i += 50 {
				err := db.Bun.RunInTx(context.Background(), nil, func(ctx context.Context, tx bun.Tx) error {
					for k := i; k < i+50; k++ {
						ev := outbox.Event{Topic: topic, PkgID: 7, Data: json.RawMessage(fmt.Sprintf(`{"p": %d, "n": %d}`, p, k))}
						if err := outbox.Insert(ctx, tx, ev); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	eventually(t, 60*time.Second, "every board to see 2 000 rows", func() bool {
		for _, d := range boards {
			d.mu.Lock()
			got := d.got
			d.mu.Unlock()
			if got < producers*each {
				return false
			}
		}
		return true
	})
	time.Sleep(500 * time.Millisecond)
	close(stop)
	runs.Wait()
	for _, d := range boards {
		d.mu.Lock()
		for _, e := range d.errs {
			t.Error(e)
		}
		if d.got != producers*each || d.lost {
			t.Errorf("%s: %d messages (lost %v), want %d once each", d.name, d.got, d.lost, producers*each)
		}
		d.mu.Unlock()
	}
	leaders := metricValue(t, nodes[0].base, `relay_leader{source="outbox"}`) + metricValue(t, nodes[1].base, `relay_leader{source="outbox"}`)
	published := metricValue(t, nodes[0].base, `relay_events_total{source="outbox",outcome="published"}`) +
		metricValue(t, nodes[1].base, `relay_events_total{source="outbox",outcome="published"}`)
	if leaders != 1 || published != producers*each {
		t.Errorf("%g nodes relay, %g rows published; want 1 and %d", leaders, published, producers*each)
	}
}
