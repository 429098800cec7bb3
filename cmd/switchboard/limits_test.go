package main

// End-to-end tests of the limits (docs/protocol.md §1.1, §2, §4): the HTTP rate limit per user and
// per client IP (X-Forwarded-For only from trusted proxies), the WebSocket message rate limit per
// user, the per-user connection limit (also across two nodes sharing Redis), and Redis trouble:
// limits fail open, /health says so, and they apply again when Redis returns.
//
// Tests that need Redis use the one on 127.0.0.1:6379 (SWITCHBOARD_TEST_REDIS_URL overrides it)
// and skip when it is unreachable, or fail under CI=true. Every user name carries a random tag,
// client addresses are random, and every key a test creates is deleted when it ends.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"switchboard/config"
	"switchboard/store/redistest"
)

// limKeyPrefix is the server's default key prefix (SWITCHBOARD_REDIS_PREFIX).
const limKeyPrefix = config.DefaultRedisPrefix

// limRedis is a test's view of the shared Redis: its URL for the server, a client for checks,
// and a random tag that every user name of the test carries, so the test's keys can be found
// and deleted.
type limRedis struct {
	url    string
	client *redis.Client
	tag    string

	mu   sync.Mutex
	keys []string // keys without the tag (client addresses, OIDC subjects) to delete too
}

// newLimRedis connects to the test Redis or skips (fails under CI=true). Call it before
// startServer: cleanups run last-in first-out, so the keys are deleted after the server stopped
// (and released its connection slots).
func newLimRedis(t testing.TB) *limRedis {
	t.Helper()
	c := redistest.Client(t)
	r := &limRedis{url: redistest.URL(t), client: c, tag: limRandomHex(6)}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.mu.Lock()
		keys := append([]string(nil), r.keys...)
		r.mu.Unlock()
		iter := c.Scan(ctx, 0, "*"+r.tag+"*", 1000).Iterator()
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Errorf("find the test's keys *%s*: %v", r.tag, err)
		}
		if len(keys) > 0 {
			if err := c.Del(ctx, keys...).Err(); err != nil {
				t.Errorf("delete the test's keys: %v", err)
			}
		}
	})
	return r
}

// track adds keys to delete at cleanup.
func (r *limRedis) track(keys ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keys = append(r.keys, keys...)
}

// clientIP returns a random address in 10.0.0.0/8 for X-Forwarded-For and tracks the keys the
// server creates for it.
func (r *limRedis) clientIP() string {
	ip := limRandomIP()
	r.track(limKeyPrefix+"rl:http_ip:"+ip, limKeyPrefix+"rl:login_ip:"+ip)
	return ip
}

func (r *limRedis) zcard(t testing.TB, key string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := r.client.ZCard(ctx, key).Result()
	if err != nil {
		t.Fatalf("ZCARD %s: %v", key, err)
	}
	return n
}

func limRandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func limRandomIP() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return netip.AddrFrom4([4]byte{10, b[0], b[1], b[2]}).String()
}

// limUser names a user unique to this run: base, then the Redis tag (or a fresh random one).
func limUser(r *limRedis, base string) string {
	if r != nil {
		return base + "-" + r.tag
	}
	return base + "-" + limRandomHex(4)
}

// limBackends runs fn once with the in-process limits (redis nil, url "") and once with Redis.
func limBackends(t *testing.T, fn func(t *testing.T, r *limRedis, url string)) {
	t.Run("memory", func(t *testing.T) { fn(t, nil, "") })
	t.Run("redis", func(t *testing.T) {
		r := newLimRedis(t)
		fn(t, r, r.url)
	})
}

// limRequest sends one request with an optional bearer token and extra headers, bounded by
// e2eWait.
func limRequest(t testing.TB, s *testServer, method, path, token, body string, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return doRequest(t, req)
}

func xff(addrs ...string) http.Header {
	return http.Header{"X-Forwarded-For": {strings.Join(addrs, ", ")}}
}

// limHeaderInt reads an integer header, failing when it is missing or not an integer.
func limHeaderInt(t testing.TB, resp *http.Response, name string) int {
	t.Helper()
	v := resp.Header.Get(name)
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s: header %s = %q, want an integer (headers %v)", resp.Request.URL.Path, name, v, resp.Header)
	}
	return n
}

// expectLimited checks one response of a rate-limited route: its status, and
// X-RateLimit-Limit/Remaining/Reset (Reset in 1..60 s for a one-minute window). A 429 must also
// carry Retry-After (1..60 s) and {"detail": "Rate limit exceeded"}.
func expectLimited(t testing.TB, resp *http.Response, body []byte, status, limit, remaining int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s %s: want %d, got %d %s", resp.Request.Method, resp.Request.URL.Path, status, resp.StatusCode, body)
	}
	if got := limHeaderInt(t, resp, "X-RateLimit-Limit"); got != limit {
		t.Fatalf("X-RateLimit-Limit = %d, want %d", got, limit)
	}
	if got := limHeaderInt(t, resp, "X-RateLimit-Remaining"); got != remaining {
		t.Fatalf("X-RateLimit-Remaining = %d, want %d", got, remaining)
	}
	if got := limHeaderInt(t, resp, "X-RateLimit-Reset"); got < 1 || got > 60 {
		t.Fatalf("X-RateLimit-Reset = %d, want 1..60", got)
	}
	if status != http.StatusTooManyRequests {
		return
	}
	if got := limHeaderInt(t, resp, "Retry-After"); got < 1 || got > 60 {
		t.Fatalf("Retry-After = %d, want 1..60", got)
	}
	expectDetail(t, resp, body, "Rate limit exceeded")
}

// expectDetail checks a JSON error body {"detail": want} ("" = any non-empty detail) and
// returns the detail.
func expectDetail(t testing.TB, resp *http.Response, body []byte, want string) string {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("Content-Type %q, want JSON (body %s)", ct, body)
	}
	var d struct {
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, body)
	}
	if d.Detail == "" || (want != "" && d.Detail != want) {
		t.Fatalf("detail %q, want %q (body %s)", d.Detail, want, body)
	}
	return d.Detail
}

// limMetric scrapes a counter (full sample name with labels); a missing sample is 0.
func limMetric(t testing.TB, s *testServer, name string) float64 {
	t.Helper()
	v := s.scrapeMetric(t, name)
	if v == "" {
		return 0
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		t.Fatalf("metric %s = %q", name, v)
	}
	return f
}

// limHealth returns GET /health's status and body.
func limHealth(t testing.TB, s *testServer) (int, map[string]string) {
	t.Helper()
	resp, b := limRequest(t, s, http.MethodGet, "/health", "", "", nil)
	var body map[string]string
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("/health body: %v: %s", err, b)
	}
	return resp.StatusCode, body
}

// The connection-limit helpers dial raw sockets: they look at the close code right after the
// upgrade, and the Go client would retry a 1008 by itself and change the counts.

// admitted dials user's token and reports whether the server kept the connection (it answers
// a GET_AUTHORS) or closed it after the upgrade, returning the close code and reason then. An
// admitted connection is returned open.
func admitted(t testing.TB, s *testServer, token string) (c *wsClient, ok bool, code uint16, reason string) {
	t.Helper()
	c, err := s.tryDial(t, token, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	id := uuid.NewString()
	_ = c.conn.WriteString(`{"pkg_id":1,"req_id":"` + id + `"}`) // fails if already closed: fine
	select {
	case b := <-c.msgs:
		var e envelope
		if err := json.Unmarshal(b, &e); err != nil || e.ReqID != id {
			t.Fatalf("unexpected first frame %s", b)
		}
		return c, true, 0, ""
	case <-c.closed:
		code, reason := c.closeStatus(time.Second)
		return c, false, code, reason
	case <-time.After(e2eWait):
		t.Fatalf("connection neither answered nor closed within %s", e2eWait)
		return nil, false, 0, ""
	}
}

// expectConnLimited fails unless the dial is upgraded and then closed with 1008. It sends no
// frame (see TestLimitsRejectedConnectionRunsNoFrames).
func expectConnLimited(t testing.TB, s *testServer, token string) {
	t.Helper()
	c, err := s.tryDial(t, token, nil)
	if err != nil {
		t.Fatalf("dial over the per-user limit: %v (want an upgrade, then 1008)", err)
	}
	if !c.waitClosed(e2eWait) {
		t.Fatalf("connection over the per-user limit still open after %s", e2eWait)
	}
	if code, reason := c.closeStatus(time.Second); code != 1008 || reason != "Maximum concurrent connections exceeded" {
		t.Fatalf("over the limit: closed with %d %q, want 1008 %q", code, reason, "Maximum concurrent connections exceeded")
	}
}

// expectConnAdmitted fails unless the dial is admitted, and returns the open connection.
func expectConnAdmitted(t testing.TB, s *testServer, token string) *wsClient {
	t.Helper()
	c, ok, code, reason := admitted(t, s, token)
	if !ok {
		t.Fatalf("connection refused: closed with %d %q", code, reason)
	}
	return c
}

// closeClient closes c from the client side and waits for the server's answer.
func closeClient(t testing.TB, c *wsClient) {
	t.Helper()
	_ = c.conn.WriteClose(1000, nil)
	if !c.waitClosed(e2eWait) {
		t.Fatalf("connection not closed within %s", e2eWait)
	}
}

// eventuallyAdmitted dials until a connection is admitted (a slot was freed asynchronously).
// Refused attempts are closed by the server; at most one connection is left open.
func eventuallyAdmitted(t testing.TB, s *testServer, token string) *wsClient {
	t.Helper()
	var c *wsClient
	eventually(t, 30*time.Second, "a free connection slot", func() bool {
		var ok bool
		c, ok, _, _ = admitted(t, s, token)
		if !ok {
			time.Sleep(50 * time.Millisecond)
		}
		return ok
	})
	return c
}

func TestLimitsHTTPRateLimit(t *testing.T) {
	limBackends(t, func(t *testing.T, r *limRedis, url string) {
		s := startServer(t, func(c *config.Config) {
			c.RedisURL = url
			c.RateLimitPerMinute = 3
		})
		alice, bob := limUser(r, "alice"), limUser(r, "bob")
		tok := s.token(t, alice, "get-authors")

		for i := 1; i <= 3; i++ {
			resp, b := limRequest(t, s, http.MethodGet, "/authors", tok, "", nil)
			expectLimited(t, resp, b, http.StatusOK, 3, 3-i)
		}
		resp, b := limRequest(t, s, http.MethodGet, "/authors", tok, "", nil)
		expectLimited(t, resp, b, http.StatusTooManyRequests, 3, 0)
		if resp.Header.Get("X-Correlation-ID") == "" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Fatalf("429 without the common headers: %v", resp.Header)
		}
		// The limit is per user, not per route, and refused requests keep being refused.
		resp, b = limRequest(t, s, http.MethodGet, "/authors/paginated", tok, "", nil)
		expectLimited(t, resp, b, http.StatusTooManyRequests, 3, 0)
		// Another user has a budget of their own.
		resp, b = limRequest(t, s, http.MethodGet, "/authors", s.token(t, bob, "get-authors"), "", nil)
		expectLimited(t, resp, b, http.StatusOK, 3, 2)

		// Health, probes and metrics are never limited and carry no limit headers.
		for _, path := range []string{"/health", "/livez", "/readyz", "/metrics"} {
			for i := 0; i < 15; i++ {
				resp, b := limRequest(t, s, http.MethodGet, path, "", "", nil)
				// /health and /readyz may say 503 when a dependency's check runs out of its 1 s
				// on a loaded machine; what counts here is that they are never limited.
				health := path == "/health" || path == "/readyz"
				if resp.StatusCode != http.StatusOK && !(health && resp.StatusCode == http.StatusServiceUnavailable) {
					t.Fatalf("GET %s #%d: %d %s", path, i+1, resp.StatusCode, b)
				}
				if h := resp.Header.Get("X-RateLimit-Limit"); h != "" {
					t.Fatalf("GET %s carries X-RateLimit-Limit %q", path, h)
				}
			}
		}
		if n := limMetric(t, s, `rate_limit_hits_total{limit_type="http"}`); n < 2 {
			t.Fatalf(`rate_limit_hits_total{limit_type="http"} = %v, want >= 2`, n)
		}

		if r != nil {
			// The window lives in Redis: three recorded requests (the refused ones are not).
			if n := r.zcard(t, limKeyPrefix+"rl:http:"+alice); n != 3 {
				t.Fatalf("ZCARD %srl:http:%s = %d, want 3", limKeyPrefix, alice, n)
			}
			_, body := limHealth(t, s)
			if body["redis"] != "healthy" {
				t.Fatalf("/health with Redis: %v", body)
			}
		}
	})
}

// Before authentication the limit is per client IP; with no trusted proxy, X-Forwarded-For is
// ignored. (In-process only: with the shared Redis, 127.0.0.1's key is everyone's.)
func TestLimitsHTTPPerClientIP(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.RateLimitPerMinute = 3 })

	resp, b := limRequest(t, s, http.MethodGet, "/authors", "", "", xff("203.0.113.1"))
	expectLimited(t, resp, b, http.StatusUnauthorized, 3, 2)
	resp, b = limRequest(t, s, http.MethodGet, "/authors", "not-a-jwt", "", xff("203.0.113.2"))
	expectLimited(t, resp, b, http.StatusUnauthorized, 3, 1)
	resp, b = limRequest(t, s, http.MethodPost, "/api/broadcast", "", `{"pkg_id":1}`, nil)
	expectLimited(t, resp, b, http.StatusUnauthorized, 3, 0)
	// The fourth unauthenticated request from 127.0.0.1, whatever it claims to forward for.
	resp, b = limRequest(t, s, http.MethodGet, "/authors", "", "", xff("203.0.113.3"))
	expectLimited(t, resp, b, http.StatusTooManyRequests, 3, 0)
	resp, b = limRequest(t, s, http.MethodGet, "/authors/paginated", "", "", nil)
	expectLimited(t, resp, b, http.StatusTooManyRequests, 3, 0)

	// A verified user is limited per user, not by the exhausted address.
	resp, b = limRequest(t, s, http.MethodGet, "/authors", s.token(t, "ip-user", "get-authors"), "", nil)
	expectLimited(t, resp, b, http.StatusOK, 3, 2)
}

// With 127.0.0.1 trusted, X-Forwarded-For names the client: two clients, two budgets; an
// address the client prepends does not change which one it is.
func TestLimitsHTTPTrustedProxies(t *testing.T) {
	limBackends(t, func(t *testing.T, r *limRedis, url string) {
		s := startServer(t, func(c *config.Config) {
			c.RedisURL = url
			c.RateLimitPerMinute = 3
			c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		})
		a, b := limRandomIP(), limRandomIP()
		if r != nil {
			a, b = r.clientIP(), r.clientIP()
		}
		for i := 1; i <= 3; i++ {
			resp, body := limRequest(t, s, http.MethodGet, "/authors", "", "", xff(a))
			expectLimited(t, resp, body, http.StatusUnauthorized, 3, 3-i)
		}
		resp, body := limRequest(t, s, http.MethodGet, "/authors", "", "", xff(a))
		expectLimited(t, resp, body, http.StatusTooManyRequests, 3, 0)
		// A spoofed first hop: the client is still the rightmost untrusted address.
		resp, body = limRequest(t, s, http.MethodGet, "/authors", "", "", xff(limRandomIP(), a))
		expectLimited(t, resp, body, http.StatusTooManyRequests, 3, 0)
		// The trusted proxy itself in the chain is skipped.
		resp, body = limRequest(t, s, http.MethodGet, "/authors", "", "", xff(a, "127.0.0.1"))
		expectLimited(t, resp, body, http.StatusTooManyRequests, 3, 0)

		resp, body = limRequest(t, s, http.MethodGet, "/authors", "", "", xff(b))
		expectLimited(t, resp, body, http.StatusUnauthorized, 3, 2)
		resp, body = limRequest(t, s, http.MethodGet, "/authors", "", "", xff(limRandomIP(), b))
		expectLimited(t, resp, body, http.StatusUnauthorized, 3, 1)
	})
}

// The WebSocket handshake counts against the user's HTTP limit, answered before the upgrade.
func TestLimitsWSHandshakeRateLimit(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.RateLimitPerMinute = 3 })
	tok := s.token(t, "handshaker", "get-authors")
	for i := 0; i < 3; i++ {
		expectUpgrade(t, s, tokenQuery(tok), nil)
	}
	resp, body := wsHandshake(t, s, tokenQuery(tok), nil)
	expectLimited(t, resp, body, http.StatusTooManyRequests, 3, 0)
	if resp.Header.Get("Upgrade") != "" {
		t.Fatalf("429 with an Upgrade header: %v", resp.Header)
	}
}

// Handshakes of /web without a valid token are limited per client IP like every other route
// before authentication (docs/protocol.md §2: every route but health, probes and metrics).
func TestLimitsWSHandshakeUnauthenticatedPerIP(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.RateLimitPerMinute = 3 })
	resp, body := wsHandshake(t, s, "", nil)
	expectLimited(t, resp, body, http.StatusUnauthorized, 3, 2)
	resp, body = wsHandshake(t, s, tokenQuery("not-a-jwt"), nil)
	expectLimited(t, resp, body, http.StatusUnauthorized, 3, 1)
	resp, body = wsHandshake(t, s, "", nil)
	expectLimited(t, resp, body, http.StatusUnauthorized, 3, 0)
	resp, body = wsHandshake(t, s, "", nil)
	expectLimited(t, resp, body, http.StatusTooManyRequests, 3, 0)
}

func TestLimitsWSMessageRate(t *testing.T) {
	limBackends(t, func(t *testing.T, r *limRedis, url string) {
		s := startServer(t, func(c *config.Config) {
			c.RedisURL = url
			c.WSMessageRateLimit = 5
			c.RateLimitPerMinute = 1000 // handshakes
		})
		u := limUser(r, "chatty")
		tok := s.token(t, u, "get-authors")
		c1, c2 := s.connect(t, tok), s.connect(t, tok)
		for i := 0; i < 3; i++ {
			expectStatus(t, c1.call(1, nil), 0, "")
		}
		for i := 0; i < 2; i++ {
			expectStatus(t, c2.call(1, nil), 0, "")
		}
		// The sixth frame of the user, on either connection, is refused; both stay open.
		e := c2.call(1, nil)
		expectStatus(t, e, 1, "Rate limit exceeded")
		if e.PkgID != 1 {
			t.Fatalf("rate-limited answer with pkg_id %d", e.PkgID)
		}
		expectStatus(t, c1.call(1, nil), 1, "Rate limit exceeded")
		expectStatus(t, c1.call(3, map[string]any{"name": "x"}), 1, "Rate limit exceeded") // before RBAC
		expectStatus(t, c2.call(2, nil), 1, "Rate limit exceeded")
		for _, c := range []*testClient{c1, c2} {
			if n := c.c.Stats().Disconnects; n != 0 {
				t.Fatal("a rate-limited connection was closed")
			}
		}
		// Another user is not affected.
		other := s.connect(t, s.token(t, limUser(r, "quiet"), "get-authors"))
		expectStatus(t, other.call(1, nil), 0, "")

		// Every decoded frame counts, also those RBAC would refuse.
		denied := s.connect(t, s.token(t, limUser(r, "roleless")))
		for i := 0; i < 5; i++ {
			expectStatus(t, denied.call(1, nil), 3, "Permission denied")
		}
		expectStatus(t, denied.call(1, nil), 1, "Rate limit exceeded")

		if n := limMetric(t, s, `rate_limit_hits_total{limit_type="ws_message"}`); n < 5 {
			t.Fatalf(`rate_limit_hits_total{limit_type="ws_message"} = %v, want >= 5`, n)
		}
		if r != nil {
			if n := r.zcard(t, limKeyPrefix+"rl:ws:"+u); n != 5 {
				t.Fatalf("ZCARD %srl:ws:%s = %d, want 5", limKeyPrefix, u, n)
			}
		}
	})
}

func TestLimitsWSConnectionsPerUser(t *testing.T) {
	limBackends(t, func(t *testing.T, r *limRedis, url string) {
		s := startServer(t, func(c *config.Config) {
			c.RedisURL = url
			c.WSMaxConnsPerUser = 2
			c.RateLimitPerMinute = 1000 // handshakes
		})
		u := limUser(r, "multi")
		tok := s.token(t, u, "get-authors")
		c1 := expectConnAdmitted(t, s, tok)
		c2 := expectConnAdmitted(t, s, tok)
		expectConnLimited(t, s, tok)
		// Another user is not affected.
		expectConnAdmitted(t, s, s.token(t, limUser(r, "single"), "get-authors"))
		if n := limMetric(t, s, `ws_connections_total{status="rejected_limit"}`); n != 1 {
			t.Fatalf(`ws_connections_total{status="rejected_limit"} = %v, want 1`, n)
		}
		if r != nil {
			if n := r.zcard(t, limKeyPrefix+"conns:"+u); n != 2 {
				t.Fatalf("ZCARD %sconns:%s = %d, want 2", limKeyPrefix, u, n)
			}
		}

		// Closing one frees its slot.
		closeClient(t, c1)
		c3 := eventuallyAdmitted(t, s, tok)
		expectConnLimited(t, s, tok)
		expectStatus(t, c2.call(1, nil), 0, "")
		expectStatus(t, c3.call(1, nil), 0, "")
		if r != nil {
			if n := r.zcard(t, limKeyPrefix+"conns:"+u); n != 2 {
				t.Fatalf("ZCARD %sconns:%s = %d, want 2", limKeyPrefix, u, n)
			}
		}
	})
}

// A connection closed for exceeding the per-user limit is not admitted: frames the client sent
// right after the upgrade must not reach the handlers (nor count against the message limit).
func TestLimitsRejectedConnectionRunsNoFrames(t *testing.T) {
	limBackends(t, func(t *testing.T, r *limRedis, url string) {
		s := startServer(t, func(c *config.Config) {
			c.RedisURL = url
			c.WSMaxConnsPerUser = 1
			c.RateLimitPerMinute = 1000 // handshakes
		})
		u := limUser(r, "sneaky")
		tok := s.token(t, u, "get-authors", "create-author")
		c1 := s.dial(t, tok)
		expectStatus(t, c1.call(1, nil), 0, "")
		for i := 0; i < 20; i++ {
			c, err := s.tryDial(t, tok, nil)
			if err != nil {
				t.Fatalf("dial #%d: %v", i+1, err)
			}
			// With Redis, a created author would be published to the shared Redis's "authors"
			// topic history: send reads there, and count them.
			frame := fmt.Sprintf(`{"pkg_id":3,"req_id":"%s","data":{"name":"sneaky %d"}}`, uuid.NewString(), i)
			if r != nil {
				frame = `{"pkg_id":1,"req_id":"` + uuid.NewString() + `"}`
			}
			_ = c.conn.WriteString(frame)
			if code, reason := c.closeStatus(e2eWait); code != 1008 {
				t.Fatalf("dial #%d over the limit: closed with %d %q, want 1008", i+1, code, reason)
			}
		}
		if got := decodeAuthors(t, c1.call(1, nil)); len(got) != 0 {
			t.Fatalf("connections refused with 1008 created authors: %+v", got)
		}
		if r != nil {
			if n := r.zcard(t, limKeyPrefix+"rl:ws:"+u); n != 2 {
				t.Fatalf("ZCARD %srl:ws:%s = %d, want 2 (frames of refused connections were counted)", limKeyPrefix, u, n)
			}
		}
	})
}

// Two nodes sharing Redis: one user's connections and frames are limited across both.
func TestLimitsAcrossTwoNodes(t *testing.T) {
	r := newLimRedis(t)
	shared := t.TempDir() // the development key (and users file) of both nodes
	edit := func(c *config.Config) {
		c.DataDir = shared
		c.DatabaseURL = "sqlite://" + t.TempDir() + "/switchboard.db"
		c.RedisURL = r.url
		c.WSMaxConnsPerUser = 2
		c.WSMessageRateLimit = 4
		c.RateLimitPerMinute = 1000
	}
	a, b := startServer(t, edit), startServer(t, edit)
	u := limUser(r, "roamer")
	tok := a.token(t, u, "get-authors")

	a1 := expectConnAdmitted(t, a, tok) // each admission sends one GET_AUTHORS
	b1 := expectConnAdmitted(t, b, tok)
	expectConnLimited(t, a, tok)
	expectConnLimited(t, b, tok)

	// Frames: two were sent by the admissions; one more on each node, then the fifth is refused.
	expectStatus(t, a1.call(1, nil), 0, "")
	expectStatus(t, b1.call(1, nil), 0, "")
	expectStatus(t, a1.call(1, nil), 1, "Rate limit exceeded")
	expectStatus(t, b1.call(1, nil), 1, "Rate limit exceeded")

	// A slot freed on node A is usable on node B.
	closeClient(t, a1)
	eventuallyAdmitted(t, b, tok)
	expectConnLimited(t, a, tok)
	if n := r.zcard(t, limKeyPrefix+"conns:"+u); n != 2 {
		t.Fatalf("ZCARD %sconns:%s = %d, want 2", limKeyPrefix, u, n)
	}
}

// Redis unreachable from the start: the server starts and serves, every limit fails open and is
// counted, /health reports Redis unhealthy.
func TestLimitsRedisUnreachable(t *testing.T) {
	s := startServer(t, func(c *config.Config) {
		c.RedisURL = "redis://127.0.0.1:1/0"
		c.RateLimitPerMinute = 3
		c.WSMessageRateLimit = 2
		c.WSMaxConnsPerUser = 1
	})
	status, body := limHealth(t, s)
	if status != http.StatusServiceUnavailable || body["status"] != "unhealthy" || body["redis"] != "unhealthy" || body["database"] != "healthy" {
		t.Fatalf("/health with Redis down: %d %v", status, body)
	}
	if resp, b := limRequest(t, s, http.MethodGet, "/livez", "", "", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("/livez: %d %s", resp.StatusCode, b)
	}

	tok := s.token(t, "failopen", "get-authors")
	for i := 0; i < 6; i++ {
		resp, b := limRequest(t, s, http.MethodGet, "/authors", tok, "", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /authors #%d with Redis down: %d %s", i+1, resp.StatusCode, b)
		}
	}
	// Two connections of a user limited to one, each sending more frames than allowed.
	c1, c2 := s.connect(t, tok), s.connect(t, tok)
	for i := 0; i < 4; i++ {
		expectStatus(t, c1.call(1, nil), 0, "")
		expectStatus(t, c2.call(1, nil), 0, "")
	}

	for name, atLeast := range map[string]float64{
		"rate_limit_fail_open_total":                   6 + 2 + 8, // HTTP, handshakes, frames
		`redis_errors_total{operation="rate_limit"}`:   6 + 2 + 8,
		"conn_limit_fail_open_total":                   2,
		`redis_errors_total{operation="conn_acquire"}`: 2,
		`ws_connections_total{status="accepted"}`:      2,
	} {
		if n := limMetric(t, s, name); n < atLeast {
			t.Errorf("%s = %v, want >= %v", name, n, atLeast)
		}
	}
	if n := limMetric(t, s, `ws_connections_total{status="rejected_limit"}`); n != 0 {
		t.Errorf(`ws_connections_total{status="rejected_limit"} = %v, want 0`, n)
	}
	before := limMetric(t, s, "rate_limit_fail_open_total")
	if resp, b := limRequest(t, s, http.MethodGet, "/authors", tok, "", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /authors: %d %s", resp.StatusCode, b)
	}
	if after := limMetric(t, s, "rate_limit_fail_open_total"); after != before+1 {
		t.Fatalf("rate_limit_fail_open_total went from %v to %v after one request, want +1", before, after)
	}
}

// Redis down at start, up, killed, up again: limits fail open while it is down and apply again,
// without a restart, when it answers.
func TestLimitsRedisRecovery(t *testing.T) {
	o := redistest.StartServer(t)
	o.Kill() // down at start
	s := startServer(t, func(c *config.Config) {
		c.RedisURL = o.URL()
		c.RateLimitPerMinute = 3
		c.WSMaxConnsPerUser = 1
	})
	healthy := func(want bool) func() bool {
		return func() bool {
			status, body := limHealth(t, s)
			if want {
				return status == http.StatusOK && body["redis"] == "healthy"
			}
			return status == http.StatusServiceUnavailable && body["redis"] == "unhealthy"
		}
	}
	tok := s.token(t, "recovering", "get-authors")
	failsOpen := func(phase string) {
		t.Helper()
		for i := 0; i < 5; i++ {
			if resp, b := limRequest(t, s, http.MethodGet, "/authors", tok, "", nil); resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: GET /authors #%d: %d %s", phase, i+1, resp.StatusCode, b)
			}
		}
	}
	limitsApply := func(phase string) {
		t.Helper()
		// Nothing was recorded while Redis was down (and a restarted Redis is empty).
		for i := 1; i <= 3; i++ {
			resp, b := limRequest(t, s, http.MethodGet, "/authors", tok, "", nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: GET /authors #%d: %d %s", phase, i, resp.StatusCode, b)
			}
		}
		resp, b := limRequest(t, s, http.MethodGet, "/authors", tok, "", nil)
		expectLimited(t, resp, b, http.StatusTooManyRequests, 3, 0)
	}

	// Down at start.
	if !healthy(false)() {
		status, body := limHealth(t, s)
		t.Fatalf("/health before Redis started: %d %v", status, body)
	}
	failsOpen("Redis not started yet")
	// A connection admitted while the counter failed open.
	connTok := s.token(t, "recovering-conn", "get-authors")
	early := expectConnAdmitted(t, s, connTok)

	o.Restart()
	eventually(t, 30*time.Second, "/health to report Redis healthy after it started", healthy(true))
	limitsApply("Redis started")
	// The heartbeat (every few seconds) counts the early connection in Redis, after which the
	// user's limit of one connection holds again.
	rc := redis.NewClient(&redis.Options{Addr: o.Addr()})
	defer rc.Close()
	eventually(t, 30*time.Second, "the heartbeat to count the early connection in Redis", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		n, err := rc.ZCard(ctx, limKeyPrefix+"conns:recovering-conn").Result()
		return err == nil && n == 1
	})
	expectConnLimited(t, s, connTok)
	expectStatus(t, early.call(1, nil), 0, "")

	o.Kill()
	eventually(t, 30*time.Second, "/health to report Redis unhealthy after it was killed", healthy(false))
	failsOpen("Redis killed")

	o.Restart()
	eventually(t, 30*time.Second, "/health to report Redis healthy after the restart", healthy(true))
	limitsApply("Redis restarted")
}

// A handshake refused with 429 takes its connection slot only while it is checked: the slot is
// given back, so the user's count stays at their open connections.
func TestRefusedHandshakeGivesItsSlotBack(t *testing.T) {
	r := newLimRedis(t)
	s := startServer(t, func(c *config.Config) {
		c.RedisURL = r.url
		c.WSMaxConnsPerUser = 2
		c.RateLimitPerMinute = 3
	})
	u := limUser(r, "slotback")
	tok := s.token(t, u, "get-authors")
	expectConnAdmitted(t, s, tok) // the HTTP budget's first request
	for range 2 {
		if resp, b := limRequest(t, s, http.MethodGet, "/authors", tok, "", nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /authors: %d %s", resp.StatusCode, b)
		}
	}
	if c, err := s.tryDial(t, tok, nil); err == nil {
		closeClient(t, c)
		t.Fatal("handshake over the HTTP budget was upgraded, want 429")
	}
	if n := r.zcard(t, limKeyPrefix+"conns:"+u); n != 1 {
		t.Fatalf("ZCARD %sconns:%s = %d after a 429, want 1 (the open connection)", limKeyPrefix, u, n)
	}
}
