package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"switchboard/config"
	"switchboard/store/redistest"
	"switchboard/store/storetest"
	"switchboard/transport/auth"
)

// procNode is a Switchboard node in a child process (this test binary running main through
// TestMainHelper), so that a test can SIGKILL it.
type procNode struct {
	cmd  *exec.Cmd
	logs *logBuffer
	base string // http://127.0.0.1:port
	done chan struct{}
}

// startProcNode starts `switchboard serve` with env (SWITCHBOARD_* settings) on a free port and
// waits until it listens.
// procCluster is what the nodes of a multi-process test share: a PostgreSQL database, a Redis
// key prefix and a seeded data directory (the development signing key, so the test mints tokens
// the nodes accept); env names them, and extra, for startProcNode.
type procCluster struct {
	dsn, data string
	env       []string
}

func newProcCluster(t *testing.T, extra ...string) procCluster {
	t.Helper()
	pc := procCluster{dsn: storetest.PostgresURL(t), data: t.TempDir()}
	prefix := redistest.Prefix(t, redistest.Client(t))
	seedDataDir(t, pc.data)
	pc.env = append([]string{"SWITCHBOARD_DATABASE_URL=" + pc.dsn, "SWITCHBOARD_REDIS_URL=" + redistest.URL(t),
		"SWITCHBOARD_REDIS_PREFIX=" + prefix, "SWITCHBOARD_DATA_DIR=" + pc.data}, extra...)
	return pc
}

// wsURL is the node's WebSocket endpoint.
func (n *procNode) wsURL() string { return strings.Replace(n.base, "http", "ws", 1) + "/web" }

func startProcNode(t *testing.T, env ...string) *procNode {
	t.Helper()
	n := &procNode{logs: &logBuffer{}, done: make(chan struct{})}
	n.cmd = exec.Command(os.Args[0], "-test.run=^TestMainHelper$")
	n.cmd.Env = append(childEnv(), `SWITCHBOARD_TEST_MAIN_ARGS=["serve"]`, "SWITCHBOARD_ADDR=127.0.0.1:0",
		"SWITCHBOARD_LOG_LEVEL=info")
	n.cmd.Env = append(n.cmd.Env, env...)
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.done:
		case <-time.After(20 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.done
		}
	})
	listening := regexp.MustCompile(`msg="switchboard listening" addr=(\S+)`)
	eventually(t, 60*time.Second, "the node to listen", func() bool {
		select {
		case <-n.done:
			t.Fatalf("node exited:\n%s", n.logs.String())
		default:
		}
		if m := listening.FindStringSubmatch(n.logs.String()); m != nil {
			n.base = "http://" + m[1]
			return true
		}
		return false
	})
	return n
}

// dashboard is a hand-made subscriber (a raw socket, not transport/client: the Go client drops
// duplicates and heals gaps by itself, which would hide the server faults this test looks for)
// that behaves as a client must: it keeps the topic's seq and
// epoch, and when its connection drops it reconnects (to the nodes in turn, every 250 ms) and
// subscribes again with since and epoch. It records every violation of "each message once, in
// order, or told recovered:false".
type dashboard struct {
	name    string
	token   string
	topic   string
	nodes   []string // ws URLs to try, in order
	mu      sync.Mutex
	seq     uint64
	epoch   string
	got     int
	lost    bool // told recovered:false at least once
	errs    []string
	gone    time.Time     // when its connection dropped
	back    time.Duration // how long the last reconnect took
	dropped int
}

// subscribe connects to url and subscribes, with since/epoch when it has seen the topic.
func (d *dashboard) subscribe(t *testing.T, url string) (*wsClient, error) {
	c, err := dialURL(t, url+"?token="+d.token, nil)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	data := map[string]any{"topic": d.topic}
	if d.epoch != "" {
		data["since"], data["epoch"] = d.seq, d.epoch
	}
	d.mu.Unlock()
	id := uuid.NewString()
	b, _ := json.Marshal(map[string]any{"pkg_id": 10, "req_id": id, "data": data})
	if err := c.conn.WriteString(string(b)); err != nil {
		return nil, err
	}
	for {
		select {
		case raw := <-c.msgs:
			var e envelope
			if err := json.Unmarshal(raw, &e); err != nil || e.ReqID != id {
				continue
			}
			if e.status() != 0 {
				return nil, fmt.Errorf("SUBSCRIBE answered %d %s", e.status(), e.msg())
			}
			var ans struct {
				Seq       uint64 `json:"seq"`
				Epoch     string `json:"epoch"`
				Recovered bool   `json:"recovered"`
			}
			_ = json.Unmarshal(e.Data, &ans)
			d.mu.Lock()
			if d.epoch != "" && !ans.Recovered {
				d.lost = true
				d.seq, d.epoch = ans.Seq, ans.Epoch
			} else if d.epoch == "" {
				d.seq, d.epoch = ans.Seq, ans.Epoch
			}
			d.mu.Unlock()
			return c, nil
		case <-c.closed:
			return nil, fmt.Errorf("closed while subscribing")
		case <-time.After(10 * time.Second):
			return nil, fmt.Errorf("no SUBSCRIBE answer")
		}
	}
}

// run reads topic messages until stop, reconnecting when the connection drops.
func (d *dashboard) run(t *testing.T, c *wsClient, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case raw := <-c.msgs:
			var e envelope
			if err := json.Unmarshal(raw, &e); err != nil || e.Topic != d.topic {
				continue
			}
			d.mu.Lock()
			if d.epoch == "" && d.seq == 0 {
				d.epoch = e.Epoch // the topic had no stream when it subscribed: this starts one
			}
			switch {
			case e.Epoch != d.epoch:
				d.errs = append(d.errs, fmt.Sprintf("%s: message of epoch %q on stream %q", d.name, e.Epoch, d.epoch))
			case e.Seq != d.seq+1:
				d.errs = append(d.errs, fmt.Sprintf("%s: seq %d after %d without being told", d.name, e.Seq, d.seq))
			}
			d.seq = e.Seq
			d.got++
			d.mu.Unlock()
		case <-c.closed:
			d.mu.Lock()
			d.gone, d.dropped = time.Now(), d.dropped+1
			d.mu.Unlock()
			c = d.reconnect(t, stop)
			if c == nil {
				return
			}
		}
	}
}

func (d *dashboard) reconnect(t *testing.T, stop <-chan struct{}) *wsClient {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return nil
		case <-time.After(250 * time.Millisecond):
		}
		c, err := d.subscribe(t, d.nodes[i%len(d.nodes)])
		if err == nil {
			d.mu.Lock()
			d.back = time.Since(d.gone)
			d.mu.Unlock()
			return c
		}
	}
}

// TestNodeKilledInThreeNodeCluster: three nodes share PostgreSQL and Redis; dashboards are
// spread over them, one user's three tabs all on the node that is SIGKILLed mid-stream while a
// producer keeps publishing on a history topic. The dashboards of the other nodes get every
// message once and in order; those of the killed node reconnect to the others within 20 s while
// retrying every 250 ms (their user's connection slots on the dead node still count until the
// TTL frees them) and recover what they missed from history, with nothing lost or repeated.
func TestNodeKilledInThreeNodeCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three server processes")
	}
	pc := newProcCluster(t, "SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER=3", "SWITCHBOARD_WS_PING_INTERVAL=2s")
	data, env := pc.data, pc.env
	nodes := []*procNode{startProcNode(t, env...), startProcNode(t, env...), startProcNode(t, env...)}
	// The test mints its tokens with the nodes' key.
	dev, err := auth.LoadDevIssuer(data)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{base: nodes[0].base, cfg: config.Default(), dev: dev}

	const topic = "dashboards.nodekill"
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var boards []*dashboard
	survivors := []string{nodes[0].wsURL(), nodes[2].wsURL()}
	for i := range 9 {
		node := i % 3
		d := &dashboard{name: fmt.Sprintf("board%d@node%d", i, node), topic: topic, nodes: survivors}
		d.token = s.token(t, fmt.Sprintf("viewer%d", i))
		if node == 1 {
			d.token = s.token(t, "tabs") // one user, three tabs, all on the node that dies
		}
		c, err := d.subscribe(t, nodes[node].wsURL())
		if err != nil {
			t.Fatalf("%s: %v", d.name, err)
		}
		boards = append(boards, d)
		wg.Add(1)
		go func() { defer wg.Done(); d.run(t, c, stop) }()
	}

	// Producers take turns: each user has 60 HTTP calls a minute.
	producers := []string{s.token(t, "producer0", "broadcast"), s.token(t, "producer1", "broadcast"), s.token(t, "producer2", "broadcast")}
	published := 0
	publish := func() {
		body := fmt.Sprintf(`{"pkg_id": 7, "topic": %q, "data": {"n": %d}}`, topic, published)
		resp, b := s.do(t, http.MethodPost, "/api/broadcast", producers[published%len(producers)], body)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("broadcast %d: %d %s", published, resp.StatusCode, b)
		}
		published++
	}
	for range 10 {
		publish()
		time.Sleep(100 * time.Millisecond)
	}
	killed := time.Now()
	if err := nodes[1].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Keep publishing through the reconnects: about 5 a second, well within the topic's
	// history of 100, so every reconnecting dashboard can recover.
	for time.Since(killed) < 22*time.Second {
		publish()
		time.Sleep(200 * time.Millisecond)
	}
	eventually(t, 30*time.Second, "every dashboard to reach the last message", func() bool {
		for _, d := range boards {
			d.mu.Lock()
			n := d.seq
			d.mu.Unlock()
			if n < uint64(published) {
				return false
			}
		}
		return true
	})
	close(stop)
	wg.Wait()

	for _, d := range boards {
		d.mu.Lock()
		for _, e := range d.errs {
			t.Error(e)
		}
		switch {
		case strings.HasSuffix(d.name, "@node1"):
			if d.dropped != 1 || d.back > 20*time.Second {
				t.Errorf("%s: dropped %d times, back after %s; want once, within 20 s", d.name, d.dropped, d.back)
			}
			if d.lost {
				t.Errorf("%s: told recovered:false, though the history kept what it missed", d.name)
			}
			t.Logf("%s reconnected %s after the kill", d.name, d.back.Round(time.Millisecond))
		default:
			if d.dropped != 0 {
				t.Errorf("%s: dropped %d times on a node that stayed up", d.name, d.dropped)
			}
		}
		if d.got != published {
			t.Errorf("%s: got %d messages, %d published", d.name, d.got, published)
		}
		d.mu.Unlock()
	}
}
