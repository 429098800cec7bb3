package main

// A node dies with a user's connections on it; the user's clients retry every 250 ms against
// another node and must get in within 20 s, that is once the dead node's connection slots
// expire, without locking themselves out with the handshakes refused (1008) before.

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lxzan/gws"
	"github.com/redis/go-redis/v9"

	"switchboard/config"
	"switchboard/store/redistest"
)

// The retrying clients are raw gws sockets: the test pins their retry cadence and counts the
// handshakes refused with 1008, which transport/client paces with its own backoff.

// tcpProxy forwards connections to target until Cut, which closes the listener and every
// connection: to a node behind it, its Redis is gone as if the node had died.
type tcpProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func startTCPProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Cut)
	return p
}

func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = in.Close()
			continue
		}
		if !p.track(in, out) {
			return
		}
		for _, pair := range [][2]net.Conn{{in, out}, {out, in}} {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				_, _ = io.Copy(pair[0], pair[1])
				_ = pair[0].Close()
				_ = pair[1].Close()
			}()
		}
	}
}

func (p *tcpProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		for _, c := range cs {
			_ = c.Close()
		}
		return false
	}
	p.conns = append(p.conns, cs...)
	return true
}

// Cut closes the listener and every forwarded connection, and waits for the copies to end.
func (p *tcpProxy) Cut() {
	p.mu.Lock()
	p.cut = true
	_ = p.ln.Close()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// retryClient is one browser tab of the user: it dials every 250 ms until a connection is
// admitted (it answers a request) and notes how each attempt ended.
type retryClient struct {
	conn     *gws.Conn
	answered chan struct{}
	closed   chan uint16
}

func (c *retryClient) OnOpen(*gws.Conn)             {}
func (c *retryClient) OnPing(s *gws.Conn, p []byte) { _ = s.WritePong(p) }
func (c *retryClient) OnPong(*gws.Conn, []byte)     {}
func (c *retryClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	m.Close()
	select {
	case c.answered <- struct{}{}:
	default:
	}
}
func (c *retryClient) OnClose(_ *gws.Conn, err error) {
	var ce *gws.CloseError
	code := uint16(0)
	if errors.As(err, &ce) {
		code = ce.Code
	}
	c.closed <- code
}

// attempt dials once and reports "admitted" (the connection stays open, returned), "1008",
// "429" or another outcome.
func attempt(t testing.TB, s *testServer, token string) (string, *retryClient) {
	c := &retryClient{answered: make(chan struct{}, 1), closed: make(chan uint16, 1)}
	conn, _, err := gws.NewClient(c, &gws.ClientOption{Addr: s.wsURL(tokenQuery(token))})
	if err != nil {
		if strings.Contains(err.Error(), "unexpected status code: 429") {
			return "429", nil
		}
		return "dial error: " + err.Error(), nil
	}
	c.conn = conn
	go conn.ReadLoop()
	_ = conn.WriteString(`{"pkg_id":1,"req_id":"` + uuid.NewString() + `"}`)
	select {
	case <-c.answered:
		t.Cleanup(func() { _ = conn.WriteClose(1000, nil); <-c.closed })
		return "admitted", c
	case code := <-c.closed:
		if code == 1008 {
			return "1008", nil
		}
		return "closed " + http.StatusText(int(code)), nil
	case <-time.After(e2eWait):
		_ = conn.NetConn().Close()
		return "no answer", nil
	}
}

func TestFailoverReconnectsWithin20s(t *testing.T) {
	rc := redistest.Client(t)
	prefix := redistest.Prefix(t, rc) // both nodes share it; nothing else does
	url := redistest.URL(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startTCPProxy(t, opt.Addr)
	shared := t.TempDir() // the development key of both nodes
	node := func(redisURL string) *testServer {
		return startServer(t, func(c *config.Config) {
			c.DataDir = shared
			c.DatabaseURL = "sqlite://" + t.TempDir() + "/switchboard.db"
			c.RedisURL = redisURL
			c.RedisPrefix = prefix
			// Production limits: 5 connections per user, 60 HTTP requests a minute.
		})
	}
	dying := node(strings.Replace(url, opt.Addr, proxy.Addr(), 1))
	survivor := node(url)
	max := dying.cfg.WSMaxConnsPerUser
	tok := dying.token(t, "roamer", "get-authors")

	// The user's tabs hold every slot, on the node about to die.
	tabs := make([]*wsClient, max)
	for i := range tabs {
		tabs[i] = expectConnAdmitted(t, dying, tok)
	}
	// The node dies: its Redis link goes (no heartbeat, no release) and its sockets vanish.
	proxy.Cut()
	killed := time.Now()
	for _, c := range tabs {
		_ = c.conn.NetConn().Close()
	}

	// Every tab retries every 250 ms against the survivor.
	type result struct {
		after    time.Duration
		outcomes map[string]int
	}
	results := make([]result, max)
	var wg sync.WaitGroup
	var admitted atomic.Int32
	deadline := killed.Add(20 * time.Second)
	for i := range max {
		wg.Go(func() {
			r := result{outcomes: map[string]int{}}
			defer func() { results[i] = r }()
			for time.Now().Before(deadline) {
				next := time.Now().Add(250 * time.Millisecond)
				outcome, _ := attempt(t, survivor, tok)
				r.outcomes[outcome]++
				if outcome == "admitted" {
					r.after = time.Since(killed)
					admitted.Add(1)
					return
				}
				time.Sleep(time.Until(next))
			}
		})
	}
	wg.Wait()
	for i, r := range results {
		t.Logf("tab %d: admitted %s after the kill; attempts %v", i, r.after.Round(10*time.Millisecond), r.outcomes)
	}
	if n := int(admitted.Load()); n != max {
		t.Fatalf("%d of %d tabs got in within 20 s of the node's death", n, max)
	}
	for i, r := range results {
		for outcome := range r.outcomes {
			if outcome != "admitted" && outcome != "1008" && outcome != "429" {
				t.Fatalf("tab %d: unexpected outcome %q", i, outcome)
			}
		}
	}
	// The refused handshakes were charged to their own budget, not to the HTTP limit: the user
	// still has most of their minute.
	if n := limMetric(t, survivor, `rate_limit_hits_total{limit_type="ws_refused"}`); n < 1 {
		t.Errorf(`rate_limit_hits_total{limit_type="ws_refused"} = %v: the refused handshakes never reached their budget`, n)
	}
	resp, body := limRequest(t, survivor, http.MethodGet, "/authors", tok, "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /authors after reconnecting: %d %s", resp.StatusCode, body)
	}
	if left := limHeaderInt(t, resp, "X-RateLimit-Remaining"); left < 60-2*max-1 {
		t.Fatalf("X-RateLimit-Remaining = %d after reconnecting: refused handshakes spent the HTTP budget", left)
	}
}
