package main

// End-to-end tests of the HTTP edge before authentication: request headers bounded in size
// (431) and time (408), the per-address cap on connections that have not authenticated, the
// HTTP server's own refusals and bad WebSocket handshakes answered in the contract's JSON shape
// with their real status, and no backend error text in a response body.

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"switchboard/config"
)

// rawExchange sends raw bytes on a fresh connection and reads one answer.
func rawExchange(t testing.TB, s *testServer, raw string) (*http.Response, []byte) {
	t.Helper()
	c := rawDial(t, s)
	go func() { _, _ = io.WriteString(c, raw) }() // a refused peer may still be writing
	var req *http.Request
	if strings.HasPrefix(raw, "HEAD ") {
		req = &http.Request{Method: http.MethodHead} // an answer without a body
	}
	return rawRead(t, bufio.NewReader(c), req)
}

func rawDial(t testing.TB, s *testServer) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(s.base, "http://"), e2eWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(e2eWait))
	return c
}

// rawRead reads one answer; req is the request it answers (nil: a GET).
func rawRead(t testing.TB, br *bufio.Reader, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// upgradeRequest is a valid opening handshake for token, with edit applied to its header lines.
func upgradeRequest(method, token string, edit func(h map[string]string)) string {
	h := map[string]string{
		"Host": "switchboard", "Connection": "Upgrade", "Upgrade": "websocket",
		"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
	}
	if edit != nil {
		edit(h)
	}
	var b strings.Builder
	b.WriteString(method + " /web?token=" + token + " HTTP/1.1\r\n")
	for k, v := range h {
		if v != "" {
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("\r\n")
	return b.String()
}

// A request on /web that is not an opening handshake the upgrade can complete is answered in
// JSON before the upgrade, and logged and counted with that status, never as 101.
func TestEdgeWebHandshakeChecks(t *testing.T) {
	s := startServer(t, nil)
	tok := s.token(t, "shaker", "get-authors")
	for _, tc := range []struct {
		name, method string
		edit         func(h map[string]string)
		status       int
		detail       string
		header       string // a header the answer must carry
	}{
		{"plain GET", "GET", func(h map[string]string) { h["Connection"], h["Upgrade"] = "", "" }, 426,
			"WebSocket upgrade required: send Connection: Upgrade and Upgrade: websocket", "Upgrade"},
		{"no Connection: Upgrade", "GET", func(h map[string]string) { h["Connection"] = "keep-alive" }, 426,
			"WebSocket upgrade required: send Connection: Upgrade and Upgrade: websocket", "Upgrade"},
		{"other protocol", "GET", func(h map[string]string) { h["Upgrade"] = "h2c" }, 426,
			"WebSocket upgrade required: send Connection: Upgrade and Upgrade: websocket", "Upgrade"},
		{"version 8", "GET", func(h map[string]string) { h["Sec-WebSocket-Version"] = "8" }, 426,
			"Unsupported WebSocket version: use 13", "Sec-WebSocket-Version"},
		{"no key", "GET", func(h map[string]string) { h["Sec-WebSocket-Key"] = "" }, 400,
			"Invalid Sec-WebSocket-Key: want 16 bytes in base64", ""},
		{"short key", "GET", func(h map[string]string) { h["Sec-WebSocket-Key"] = "c2hvcnQ=" }, 400,
			"Invalid Sec-WebSocket-Key: want 16 bytes in base64", ""},
		{"HEAD", "HEAD", nil, 405, "", "Allow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawExchange(t, s, upgradeRequest(tc.method, tok, tc.edit))
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.status, body)
			}
			if tc.header != "" && resp.Header.Get(tc.header) == "" {
				t.Fatalf("answer lacks %s: %v", tc.header, resp.Header)
			}
			if resp.Header.Get("Sec-WebSocket-Accept") != "" {
				t.Fatalf("refusal carries Sec-WebSocket-Accept: %v", resp.Header)
			}
			if tc.method == "HEAD" {
				return // no body
			}
			expectDetail(t, resp, body, tc.detail)
		})
	}
	for status, want := range map[string]float64{"426": 4, "400": 2, "405": 1, "101": 0} {
		name := `http_requests_total{method="GET",route="GET /web",status="` + status + `"}`
		if status == "405" {
			name = `http_requests_total{method="HEAD",route="GET /web",status="405"}`
		}
		if got := limMetric(t, s, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := limMetric(t, s, `ws_connections_total{status="rejected_handshake"}`); got != 7 {
		t.Errorf(`ws_connections_total{status="rejected_handshake"} = %v, want 7`, got)
	}
	// A valid handshake still upgrades.
	expectUpgrade(t, s, tokenQuery(tok), nil)
}

// Request headers over SWITCHBOARD_MAX_HEADER_BYTES are answered 431 in JSON, on /web (a token
// too large) as on any route; headers that stop arriving are answered 408 after
// SWITCHBOARD_HEADER_TIMEOUT; the server's other own refusals are JSON too.
func TestEdgeHeaderLimits(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.HeaderTimeout = 500 * time.Millisecond })
	big := strings.Repeat("a", 24<<10)
	resp, body := rawExchange(t, s, upgradeRequest("GET", big, nil))
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("/web with a 24 KiB token: %d %s", resp.StatusCode, body)
	}
	expectDetail(t, resp, body, "Request headers too large: at most 16384 bytes")
	// Unfinished: the header never ends.
	resp, body = rawExchange(t, s, "GET /authors HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("b", 1<<20))
	expectDetail(t, resp, body, "Request headers too large: at most 16384 bytes")
	if resp.Header.Get("X-Correlation-ID") == "" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("431 without the usual headers: %v", resp.Header)
	}

	slow := rawDial(t, s)
	if _, err := io.WriteString(slow, "GET /livez HTTP/1.1\r\nHost: x\r\nX-Trickle: "); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, body = rawRead(t, bufio.NewReader(slow), nil)
	if resp.StatusCode != http.StatusRequestTimeout || time.Since(start) > e2eWait {
		t.Fatalf("slow headers: %d after %s", resp.StatusCode, time.Since(start))
	}
	expectDetail(t, resp, body, "Request headers not received within 500ms")

	resp, body = rawExchange(t, s, "GET /livez HTTP/1.1\r\n\r\n")
	expectDetail(t, resp, body, "Malformed request: missing required Host header")
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("no Host: %d", resp.StatusCode)
	}

	for status, want := range map[string]float64{"431": 2, "408": 1, "400": 1} {
		name := `http_requests_total{method="other",route="unparsed",status="` + status + `"}`
		if got := limMetric(t, s, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// At most SWITCHBOARD_MAX_PREAUTH_CONNECTIONS_PER_IP connections per address that have not
// authenticated; upgraded WebSockets and connections that carried a valid token do not count.
func TestEdgePreAuthCap(t *testing.T) {
	const limit = 4
	s := startServer(t, func(c *config.Config) { c.MaxPreAuthConnsIP = limit })
	tok := s.token(t, "capped", "get-authors")
	idle := make([]net.Conn, 0, limit)
	for range limit - 1 {
		c := rawDial(t, s)
		_, _ = io.WriteString(c, "GET /livez HTTP/1.1\r\nHost: x\r\n") // headers never finish
		idle = append(idle, c)
	}
	// WebSockets upgrade through the one free slot, one after the other, and leave it free.
	for range 3 {
		c := s.dial(t, tok)
		expectStatus(t, c.call(1, nil), 0, "")
	}
	// An HTTP connection that authenticated frees its slot and keeps serving.
	authed := rawDial(t, s)
	br := bufio.NewReader(authed)
	get := "GET /authors HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok + "\r\n\r\n"
	for range 2 {
		if _, err := io.WriteString(authed, get); err != nil {
			t.Fatal(err)
		}
		if resp, body := rawRead(t, br, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("authenticated GET /authors: %d %s", resp.StatusCode, body)
		}
	}
	idle = append(idle, rawDial(t, s))
	// (Read in process: a scrape from this address would be over the cap itself.)
	eventually(t, e2eWait, "the pre-auth connections to reach the cap", func() bool {
		return s.app.edge.PreAuth() == limit
	})
	resp, body := rawExchange(t, s, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over the cap: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	expectDetail(t, resp, body, "Too many unauthenticated connections from this address")
	// Closing one frees its slot.
	_ = idle[0].Close()
	eventually(t, e2eWait, "a freed slot", func() bool {
		resp, _ := rawExchange(t, s, "GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		return resp.StatusCode == http.StatusOK
	})
	// (In process again: the scrape's own connection could find the cap full.)
	if got := s.app.metrics.GetOrCreateCounter("http_connections_refused_total").Get(); got < 1 {
		t.Fatalf("http_connections_refused_total = %v", got)
	}
}

// A broadcast the bus cannot take is answered 503 with a fixed text: the Redis error is
// logged, never shown.
func TestEdgeBroadcastErrorHidesBackendText(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.RedisURL = "redis://127.0.0.1:1/0" })
	tok := s.token(t, "producer", "broadcast")
	resp, body := s.do(t, http.MethodPost, "/api/broadcast", tok, `{"pkg_id":1,"data":{"x":1}}`)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("broadcast with Redis down: %d %s", resp.StatusCode, body)
	}
	var d struct {
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal(body, &d); err != nil || d.Detail != "Broadcast not accepted: the message bus is unavailable" {
		t.Fatalf("body %s (%v)", body, err)
	}
	for _, leak := range []string{"127.0.0.1", "dial", "refused", "redis:", "bus:"} {
		if strings.Contains(string(body), leak) {
			t.Fatalf("503 body leaks %q: %s", leak, body)
		}
	}
}

// Numbers the schema takes for integers but encoding/json will not decode into one (1.0, 1e2)
// are answered at their field in the server's words, not encoding/json's.
func TestEdgeDecodeErrorHidesLibraryText(t *testing.T) {
	s := startServer(t, nil)
	c := s.dial(t, s.token(t, "writer", "update-author", "delete-author"))
	for _, tc := range []struct {
		pkg  int
		data map[string]any
	}{
		{5, map[string]any{"id": json.RawMessage("1.0")}},
		{4, map[string]any{"id": json.RawMessage("1e2"), "name": "x"}},
	} {
		e := c.call(tc.pkg, tc.data)
		expectStatus(t, e, 2, "Invalid data")
		var d struct {
			Errors []struct{ Path, Message string } `json:"errors"`
		}
		decodeData(t, e, &d)
		if len(d.Errors) != 1 || d.Errors[0].Path != "/id" ||
			d.Errors[0].Message != "must be a whole number written without a fraction or an exponent" {
			t.Fatalf("pkg_id %d: errors %+v", tc.pkg, d.Errors)
		}
	}
}

// A request refused by its user's rate limit does not take its connection out of the cap: a
// token alone does not buy an attacker unlimited idle connections.
func TestEdgePreAuthCapRateLimitedRequestKeepsSlot(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.MaxPreAuthConnsIP, c.RateLimitPerMinute = 2, 1 })
	tok := s.token(t, "thrifty", "get-authors")
	get := "GET /authors HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok + "\r\n\r\n"
	for _, want := range []int{http.StatusOK, http.StatusTooManyRequests} {
		c := rawDial(t, s)
		if _, err := io.WriteString(c, get); err != nil {
			t.Fatal(err)
		}
		if resp, body := rawRead(t, bufio.NewReader(c), nil); resp.StatusCode != want {
			t.Fatalf("GET /authors: %d %s, want %d", resp.StatusCode, body, want)
		}
	}
	// The admitted connection left the cap, the rate-limited one did not.
	eventually(t, e2eWait, "one pre-auth connection", func() bool { return s.app.edge.PreAuth() == 1 })
	rawDial(t, s)
	eventually(t, e2eWait, "the cap reached", func() bool { return s.app.edge.PreAuth() == 2 })
	resp, body := rawExchange(t, s, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("over the cap: %d %s", resp.StatusCode, body)
	}
	expectDetail(t, resp, body, "Too many unauthenticated connections from this address")
}
