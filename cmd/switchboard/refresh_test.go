package main

// End-to-end tests of POST /refresh (docs/protocol.md §2): the development issuer's own refresh
// tokens in the embedded default and the issuer's refresh grant with SWITCHBOARD_OIDC_ISSUER,
// the same answer as /login, 401 for anything that is not a live refresh token, the login
// limit per client IP, and how a dashboard keeps a live connection: POST /refresh, then pkg_id
// 12 with the new access token.

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"switchboard/config"
	"switchboard/store/sessions"
	"switchboard/transport/auth/oidctest"
	sbclient "switchboard/transport/client"
)

func refreshBody(token string) string {
	b, _ := json.Marshal(map[string]string{"refresh_token": token})
	return string(b)
}

// postRefresh sends POST /refresh with body and optional headers (X-Forwarded-For).
func postRefresh(t testing.TB, s *testServer, body string, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	return limRequest(t, s, http.MethodPost, "/refresh", "", body, hdr)
}

// expectRefreshRefused fails unless the answer is 401 {"detail":"Invalid or expired refresh token"}.
func expectRefreshRefused(t testing.TB, s *testServer, token, what string) {
	t.Helper()
	resp, b := postRefresh(t, s, refreshBody(token), nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("%s: want 401, got %d %s", what, resp.StatusCode, b)
	}
	expectDetail(t, resp, b, "Invalid or expired refresh token")
}

func TestRefreshDevIssuer(t *testing.T) {
	alice := loginUser{"alice", "alice-" + limRandomHex(8), []string{"get-authors"}}
	s := startServer(t, func(c *config.Config) {
		writeDevUsers(t, c.DataDir, alice)
		c.LoginRateLimit = 1000
	})
	resp, b := postLogin(t, s, loginBody(alice.name, alice.password), nil)
	first := expectLogin(t, resp, b)

	// A dashboard's live connection, opened with the login's access token.
	live := s.connect(t, first.AccessToken)

	resp, b = postRefresh(t, s, refreshBody(first.RefreshToken), nil)
	renewed := expectLogin(t, resp, b)
	if renewed.AccessToken == first.AccessToken || renewed.RefreshToken == first.RefreshToken {
		t.Fatal("the refresh answered the same tokens")
	}
	loginRoles(t, s, renewed.AccessToken, 0, 3)

	// The live connection takes the new access token with pkg_id 12 and keeps going.
	r := live.call(12, map[string]any{"token": renewed.AccessToken})
	if r.status() != 0 {
		t.Fatalf("REFRESH_TOKEN with the refreshed access token: status %d msg %q %s", r.status(), r.msg(), r.Data)
	}
	var out struct {
		ExpiresAt time.Time `json:"expires_at"`
	}
	decodeData(t, r, &out)
	if left := time.Until(out.ExpiresAt); left < 50*time.Minute || left > time.Hour+time.Minute {
		t.Fatalf("expires_at %s is %s away, want the access token's hour", out.ExpiresAt, left)
	}
	if e := live.call(1, nil); e.status() != 0 {
		t.Fatalf("GET_AUTHORS after the refresh: %d %q", e.status(), e.msg())
	}

	// The refreshed refresh token refreshes again.
	resp, b = postRefresh(t, s, refreshBody(renewed.RefreshToken), nil)
	expectLogin(t, resp, b)

	// What is not a live refresh token of this issuer is 401, alike.
	expectRefreshRefused(t, s, renewed.AccessToken, "an access token from /refresh")
	expectRefreshRefused(t, s, s.token(t, alice.name, "get-authors"), "a token from `switchboard token`")
	expectRefreshRefused(t, s, "garbage", "garbage")
	expectRefreshRefused(t, s, first.RefreshToken[:len(first.RefreshToken)-4]+"AAAA", "a tampered signature")
	// And a refresh token is no access token.
	resp, b = limRequest(t, s, http.MethodGet, "/authors", renewed.RefreshToken, "", nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a refresh token as bearer token: want 401, got %d %s", resp.StatusCode, b)
	}
	var he *sbclient.HandshakeError
	if _, err := s.tryConnect(t, renewed.RefreshToken); !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a refresh token as the WebSocket's token: %v, want a 401 handshake", err)
	}

	// Malformed requests: the façade's error shapes.
	for name, body := range map[string]string{
		"not JSON":            "refresh_token=x",
		"no refresh_token":    `{}`,
		"empty refresh_token": `{"refresh_token":""}`,
		"number":              `{"refresh_token":42}`,
		"array body":          `[]`,
	} {
		resp, b := postRefresh(t, s, body, nil)
		if resp.StatusCode != http.StatusUnprocessableEntity {
			t.Fatalf("%s: want 422, got %d %s", name, resp.StatusCode, b)
		}
		var inv struct {
			Detail string            `json:"detail"`
			Errors []json.RawMessage `json:"errors"`
		}
		if err := json.Unmarshal(b, &inv); err != nil || inv.Detail != "Invalid data" || len(inv.Errors) == 0 {
			t.Fatalf("%s: body %s", name, b)
		}
	}
	resp, b = postRefresh(t, s, refreshBody(strings.Repeat("x", 2<<20)), nil)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("2 MiB body: want 413, got %d %.200s", resp.StatusCode, b)
	}
	resp, b = limRequest(t, s, http.MethodGet, "/refresh", "", "", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET /refresh: want 405, got %d %s", resp.StatusCode, b)
	}
}

// With SWITCHBOARD_OIDC_ISSUER, POST /refresh is the issuer's refresh grant.
func TestRefreshExternalIssuer(t *testing.T) {
	iss := oidctest.New(t, oidctest.WithClientSecret("s3cret"))
	user, password := "lena-"+limRandomHex(4), "pw-"+limRandomHex(8)
	iss.AddUser(user, password, []string{"get-authors"}, nil)
	s := startServer(t, func(c *config.Config) {
		c.OIDCIssuer = iss.URL()
		c.OIDCClientID = iss.ClientID()
		c.OIDCClientSecret = "s3cret"
		c.LoginRateLimit = 1000
	})
	resp, b := postLogin(t, s, loginBody(user, password), nil)
	first := expectLogin(t, resp, b)
	resp, b = postRefresh(t, s, refreshBody(first.RefreshToken), nil)
	renewed := expectLogin(t, resp, b)
	if renewed.ExpiresIn != 300 || iss.Grants("refresh_token") != 1 {
		t.Fatalf("expires_in %d, refresh grants %d", renewed.ExpiresIn, iss.Grants("refresh_token"))
	}
	loginRoles(t, s, renewed.AccessToken, 0, 3)

	expectRefreshRefused(t, s, "not-a-refresh-token", "an unknown refresh token")
	expectRefreshRefused(t, s, renewed.AccessToken, "an access token")

	iss.SetDown(true)
	resp, b = postRefresh(t, s, refreshBody(renewed.RefreshToken), nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("issuer down: want 503, got %d %s", resp.StatusCode, b)
	}
	expectDetail(t, resp, b, "Identity provider unavailable")
	iss.SetDown(false)

	iss.RevokeRefreshTokens()
	expectRefreshRefused(t, s, renewed.RefreshToken, "a revoked refresh token")
}

// /refresh is limited per client address with SWITCHBOARD_LOGIN_RATE_LIMIT, before the token
// is looked at; a successful refresh renews the session record in Redis like a login.
func TestRefreshRateLimitAndSession(t *testing.T) {
	limBackends(t, func(t *testing.T, r *limRedis, url string) {
		user := loginUser{limUser(r, "mia"), "mia-" + limRandomHex(8), []string{"get-authors"}}
		s := startServer(t, func(c *config.Config) {
			writeDevUsers(t, c.DataDir, user)
			c.RedisURL = url
			c.LoginRateLimit = 3
			c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		})
		ip := func() string {
			if r != nil {
				ip := r.clientIP()
				r.track(limKeyPrefix + "rl:refresh_ip:" + ip)
				return ip
			}
			return limRandomIP()
		}
		resp, b := postLogin(t, s, loginBody(user.name, user.password), xff(ip()))
		tok := expectLogin(t, resp, b)

		busy := ip()
		for i := 1; i <= 3; i++ {
			resp, b := postRefresh(t, s, refreshBody("bad-"+limRandomHex(4)), xff(busy))
			expectLimited(t, resp, b, http.StatusUnauthorized, 3, 3-i)
		}
		resp, b = postRefresh(t, s, refreshBody(tok.RefreshToken), xff(busy))
		expectLimited(t, resp, b, http.StatusTooManyRequests, 3, 0)
		resp, b = postRefresh(t, s, `not json`, xff(busy))
		expectLimited(t, resp, b, http.StatusTooManyRequests, 3, 0)
		// Another address refreshes; the refresh limit is not the login limit.
		other := ip()
		resp, b = postRefresh(t, s, refreshBody(tok.RefreshToken), xff(other))
		renewed := expectLogin(t, resp, b)
		if r != nil {
			r.track(sessions.Key(user.name))
			expectSession(t, r, user.name, user.name, "get-authors", renewed.ExpiresIn, other)
		}
		resp, b = postLogin(t, s, loginBody(user.name, user.password), xff(busy))
		expectLogin(t, resp, b)
		if n := limMetric(t, s, `rate_limit_hits_total{limit_type="refresh_ip"}`); n != 2 {
			t.Fatalf(`rate_limit_hits_total{limit_type="refresh_ip"} = %v, want 2`, n)
		}
	})
}
