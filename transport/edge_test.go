package transport

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"go.uber.org/goleak"
)

// edgeServer is an http.Server on 127.0.0.1 behind an Edge, as cmd/switchboard wires it.
type edgeServer struct {
	addr string
	edge *Edge
	set  *metrics.Set
	srv  *http.Server
}

func startEdgeServer(t *testing.T, cfg EdgeConfig, h http.Handler) *edgeServer {
	t.Helper()
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 4096
	}
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = 5 * time.Second
	}
	e := NewEdge(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:        requestStarted(observe(h, APIConfig{Logger: slog.New(slog.DiscardHandler), Metrics: cfg.Metrics})),
		MaxHeaderBytes: cfg.MaxHeaderBytes, ReadHeaderTimeout: cfg.HeaderTimeout,
		ConnContext: e.ConnContext, ConnState: e.ConnState,
		ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(e.Listen(ln)) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	return &edgeServer{addr: ln.Addr().String(), edge: e, set: cfg.Metrics, srv: srv}
}

func (s *edgeServer) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // only fails a test that hangs
	return c
}

// exchange writes raw to a fresh connection and reads one response.
func (s *edgeServer) exchange(t *testing.T, raw string) (*http.Response, []byte) {
	t.Helper()
	c := s.dial(t)
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	return readResponse(t, bufio.NewReader(c))
}

func readResponse(t *testing.T, br *bufio.Reader) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, body
}

// expectJSONError checks a {"detail": …} answer with the headers every response carries.
func expectJSONError(t *testing.T, resp *http.Response, body []byte, status int, detail string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d (body %s)", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json (body %s)", ct, body)
	}
	var d Detail
	if err := json.Unmarshal(body, &d); err != nil || d.Detail != detail {
		t.Fatalf("body %s, want detail %q (%v)", body, detail, err)
	}
	for _, h := range append([]string{"X-Correlation-ID"}, "X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy") {
		if resp.Header.Get(h) == "" {
			t.Fatalf("answer lacks %s: %v", h, resp.Header)
		}
	}
}

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			writeDetail(w, http.StatusNotFound, "Not found")
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"path": r.URL.Path})
	})
}

func counterValue(set *metrics.Set, name string) uint64 { return set.GetOrCreateCounter(name).Get() }

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Request headers over MaxHeaderBytes: 431 in JSON (not net/http's text/plain), counted and
// with nothing held afterwards.
func TestEdgeHeaderTooLarge(t *testing.T) {
	s := startEdgeServer(t, EdgeConfig{MaxPreAuthPerIP: 8, MaxHeaderBytes: 4096}, okHandler())
	c := s.dial(t)
	// The peer never finishes its headers; the server reads about MaxHeaderBytes + 4 KiB.
	go func() {
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("a", 64<<10))
	}()
	resp, body := readResponse(t, bufio.NewReader(c))
	expectJSONError(t, resp, body, http.StatusRequestHeaderFieldsTooLarge, "Request headers too large: at most 4096 bytes")
	if resp.Header.Get("Connection") != "close" && !resp.Close {
		t.Fatalf("431 does not close the connection: %v", resp.Header)
	}
	if n := counterValue(s.set, `http_requests_total{method="other",route="unparsed",status="431"}`); n != 1 {
		t.Fatalf("431 counted %d times, want 1", n)
	}
	waitUntil(t, "the refused connection's slot to be freed", func() bool { return s.edge.PreAuth() == 0 })
}

// A request whose headers do not arrive within the header timeout is answered 408 and closed;
// a connection that sends nothing is closed silently, as an idle one is.
func TestEdgeSlowHeadersCut(t *testing.T) {
	s := startEdgeServer(t, EdgeConfig{MaxPreAuthPerIP: 8, HeaderTimeout: 300 * time.Millisecond}, okHandler())
	slow := s.dial(t)
	if _, err := io.WriteString(slow, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	resp, body := readResponse(t, bufio.NewReader(slow))
	expectJSONError(t, resp, body, http.StatusRequestTimeout, "Request headers not received within 300ms")
	if n, err := slow.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after the 408: read %d, %v; want EOF", n, err)
	}

	silent := s.dial(t)
	if n, err := silent.Read(make([]byte, 64)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("silent connection: read %d, %v; want EOF without an answer", n, err)
	}
	if n := counterValue(s.set, `http_requests_total{method="other",route="unparsed",status="408"}`); n != 1 {
		t.Fatalf("408 counted %d times, want 1", n)
	}
	waitUntil(t, "the slots to be freed", func() bool { return s.edge.PreAuth() == 0 })
}

// Every answer net/http writes by itself comes out as JSON with its real status.
func TestEdgeServerOwnErrorsAreJSON(t *testing.T) {
	s := startEdgeServer(t, EdgeConfig{MaxPreAuthPerIP: 64}, okHandler())
	for _, tc := range []struct {
		name, raw string
		status    int
		detail    string
	}{
		{"garbage request line", "NONSENSE\r\n\r\n", 400, "Malformed request"},
		{"missing Host", "GET / HTTP/1.1\r\n\r\n", 400, "Malformed request: missing required Host header"},
		{"bad header name", "GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400, "Malformed request: invalid header name"},
		{"HTTP/2 request line", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "Unsupported HTTP version: use HTTP/1.1"},
		{"unknown transfer coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "Unsupported transfer encoding"},
		{"unknown expectation", "GET / HTTP/1.1\r\nHost: x\r\nExpect: wonders\r\n\r\n", 417, "Unsupported Expect header: only 100-continue is understood"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := s.exchange(t, tc.raw)
			expectJSONError(t, resp, body, tc.status, tc.detail)
		})
	}
	if n := counterValue(s.set, `http_requests_total{method="other",route="unparsed",status="400"}`); n != 3 {
		t.Fatalf("400s counted %d times, want 3", n)
	}
}

// Handled requests pass through untouched, keep-alive and pipelined ones included, handler
// errors too.
func TestEdgeHandledRequestsPassThrough(t *testing.T) {
	s := startEdgeServer(t, EdgeConfig{MaxPreAuthPerIP: 8}, okHandler())
	c := s.dial(t)
	br := bufio.NewReader(c)
	req := func(path string) string { return "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n" }
	if _, err := io.WriteString(c, req("/a")+req("/missing")+req("/b")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		status int
		body   string
	}{{200, `{"path":"/a"}`}, {404, `{"detail":"Not found"}`}, {200, `{"path":"/b"}`}} {
		resp, body := readResponse(t, br)
		if resp.StatusCode != want.status || strings.TrimSpace(string(body)) != want.body {
			t.Fatalf("got %d %s, want %d %s", resp.StatusCode, body, want.status, want.body)
		}
	}
	// After going idle, the connection serves again; then a malformed request on it is the
	// server's own answer again.
	if _, err := io.WriteString(c, req("/c")); err != nil {
		t.Fatal(err)
	}
	if resp, body := readResponse(t, br); resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"path":"/c"}` {
		t.Fatalf("after idle: %d %s", resp.StatusCode, body)
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, body := readResponse(t, br)
	expectJSONError(t, resp, body, http.StatusBadRequest, "Malformed request: missing required Host header")
}

// The per-address cap: connections over it are answered 429 before their request is read;
// closing, authenticating or upgrading a connection frees its slot; trusted proxies are exempt.
func TestEdgePreAuthCapPerAddress(t *testing.T) {
	auth := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/login":
			admitted(r)
			writeJSON(w, http.StatusOK, map[string]string{})
		case "/upgrade":
			c, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			if _, bare := c.(*net.TCPConn); !bare {
				t.Errorf("hijacked %T, want the bare *net.TCPConn", c)
			}
			_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
			go func() { _, _ = io.Copy(io.Discard, c); _ = c.Close() }()
		default:
			writeJSON(w, http.StatusOK, map[string]string{})
		}
	})
	const limit = 3
	s := startEdgeServer(t, EdgeConfig{MaxPreAuthPerIP: limit}, auth)
	held := make([]net.Conn, 0, limit)
	for range limit {
		held = append(held, s.dial(t))
	}
	waitUntil(t, "three pre-auth connections", func() bool { return s.edge.PreAuth() == limit })
	refused := func() {
		t.Helper()
		c := s.dial(t)
		resp, body := readResponse(t, bufio.NewReader(c))
		expectJSONError(t, resp, body, http.StatusTooManyRequests, "Too many unauthenticated connections from this address")
		if resp.Header.Get("Retry-After") == "" {
			t.Fatalf("429 without Retry-After: %v", resp.Header)
		}
	}
	refused()
	if n := counterValue(s.set, "http_connections_refused_total"); n != 1 {
		t.Fatalf("http_connections_refused_total = %d, want 1", n)
	}

	// Closing one frees its slot.
	_ = held[0].Close()
	waitUntil(t, "the closed connection's slot", func() bool { return s.edge.PreAuth() == limit-1 })
	held[0] = s.dial(t)
	waitUntil(t, "the slot taken again", func() bool { return s.edge.PreAuth() == limit })
	refused()

	// A connection that carries a valid token no longer counts, and keeps serving.
	if _, err := io.WriteString(held[1], "GET /login HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(held[1])
	if resp, _ := readResponse(t, br); resp.StatusCode != 200 {
		t.Fatalf("/login: %d", resp.StatusCode)
	}
	waitUntil(t, "the authenticated connection's slot", func() bool { return s.edge.PreAuth() == limit-1 })
	if _, err := io.WriteString(held[1], "GET /again HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, _ := readResponse(t, br); resp.StatusCode != 200 {
		t.Fatalf("authenticated connection, second request: %d", resp.StatusCode)
	}

	// An upgraded connection no longer counts either, and reads the bare socket.
	up := s.dial(t)
	if _, err := io.WriteString(up, "GET /upgrade HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(bufio.NewReader(up), nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	waitUntil(t, "the upgraded connection's slot", func() bool { return s.edge.PreAuth() == limit-1 })
	held = append(held, s.dial(t)) // the slot the login freed
	waitUntil(t, "the cap reached again", func() bool { return s.edge.PreAuth() == limit })
	refused()
}

func TestEdgeClientKey(t *testing.T) {
	e := NewEdge(EdgeConfig{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	for _, tc := range []struct {
		addr, key string
		counted   bool
	}{
		{"192.0.2.7:1234", "192.0.2.7", true},
		{"[::ffff:192.0.2.7]:1234", "192.0.2.7", true},
		{"[2001:db8:1:2:3:4:5:6]:1234", "2001:db8:1:2::", true},
		{"10.1.2.3:80", "", false},
	} {
		ap := netip.MustParseAddrPort(tc.addr)
		key, counted := e.clientKey(net.TCPAddrFromAddrPort(ap))
		if counted != tc.counted || (counted && key.String() != tc.key) {
			t.Errorf("%s: key %v counted %v; want %s %v", tc.addr, key, counted, tc.key, tc.counted)
		}
	}
	if _, counted := e.clientKey(&net.UnixAddr{Name: "/tmp/x", Net: "unix"}); counted {
		t.Error("a unix socket address was counted")
	}
}

// A flood over the cap: refusals are bounded, Accept keeps serving, and closing the listener
// ends every refusal goroutine.
func TestEdgeRefusalFloodIsBounded(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	e := NewEdge(EdgeConfig{MaxPreAuthPerIP: 1})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	el := e.Listen(ln)
	accepted := make(chan net.Conn, 1)
	go func() {
		for {
			c, err := el.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	first, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	held := <-accepted
	// Silent peers over the cap: each refusal lingers until the listener closes.
	var flood []net.Conn
	for range 3 * maxRefusing {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		flood = append(flood, c)
	}
	waitUntil(t, "every flood connection refused", func() bool {
		return e.refused.Get() == uint64(len(flood))
	})
	if n := len(el.(*edgeListener).slots); n > maxRefusing {
		t.Fatalf("%d refusals at once, bound %d", n, maxRefusing)
	}
	_ = el.Close()
	if _, open := <-accepted; open {
		t.Fatal("Accept returned a connection after Close")
	}
	for _, c := range flood {
		_ = c.Close()
	}
	_ = held.Close()
	if e.PreAuth() != 0 {
		t.Fatalf("%d slots held after every connection closed", e.PreAuth())
	}
	goleak.VerifyNone(t, ignore)
}

func TestParseOwnAnswer(t *testing.T) {
	for _, tc := range []struct {
		in     string
		status int
		reason string
		ok     bool
	}{
		{"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain", 431, "", true},
		{"HTTP/1.1 400 Bad Request: malformed Host header\r\n", 400, "malformed Host header", true},
		{"HTTP/1.1 400 Bad Request: <script>\r\n", 400, "", true},
		{"HTTP/1.1 200 OK\r\n", 0, "", false},
		{"HTTP/1.1 100 Continue\r\n\r\n", 0, "", false},
		{`{"detail":"x"}`, 0, "", false},
		{"HTTP/1.1 4", 0, "", false},
	} {
		status, reason, ok := parseOwnAnswer([]byte(tc.in))
		if status != tc.status || reason != tc.reason || ok != tc.ok {
			t.Errorf("%q: %d %q %v; want %d %q %v", tc.in, status, reason, ok, tc.status, tc.reason, tc.ok)
		}
	}
}
