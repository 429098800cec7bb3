package main

// End-to-end tests of POST /login (docs/protocol.md §2, §6): the development users file of the
// embedded default (created with demo users on first start, printed once), the OIDC password
// grant against an external issuer, the answers for good and bad credentials, malformed bodies
// and an unreachable issuer, the per-username and per-IP login limits, and the session a login
// records in Redis.

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"switchboard/config"
	"switchboard/store/sessions"
	"switchboard/transport/auth"
	"switchboard/transport/auth/oidctest"
)

// loginUser is one entry of a development users file written by a test.
type loginUser struct {
	name, password string
	roles          []string
}

// writeDevUsers writes dir/dev-users.json (mode 0600) with bcrypt hashes of the lowest cost
// (the default cost takes about a second per check under the race detector).
func writeDevUsers(t testing.TB, dir string, users ...loginUser) {
	t.Helper()
	entries := make([]auth.DevUser, 0, len(users))
	for _, u := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(u.password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, auth.DevUser{Username: u.name, PasswordHash: string(h), Roles: u.roles})
	}
	b, err := json.Marshal(entries)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, auth.DevUsersFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func loginBody(user, password string) string {
	b, _ := json.Marshal(map[string]string{"username": user, "password": password})
	return string(b)
}

// postLogin sends POST /login with body and optional headers (X-Forwarded-For).
func postLogin(t testing.TB, s *testServer, body string, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	return limRequest(t, s, http.MethodPost, "/login", "", body, hdr)
}

type loginTokens struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresIn    int    `json:"expires_in"`
}

// expectLogin fails unless the answer is 200 {"access_token","refresh_token","expires_in"}.
func expectLogin(t testing.TB, resp *http.Response, body []byte) loginTokens {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("login: want 200, got %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("login: Content-Type %q", ct)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("login body: %v: %s", err, body)
	}
	for _, k := range []string{"access_token", "refresh_token", "expires_in"} {
		if _, ok := raw[k]; !ok {
			t.Fatalf("login body without %q: %s", k, body)
		}
	}
	var tok loginTokens
	if err := json.Unmarshal(body, &tok); err != nil {
		t.Fatalf("login body: %v: %s", err, body)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" || tok.ExpiresIn <= 0 {
		t.Fatalf("login body incomplete: %s", body)
	}
	return tok
}

// loginRoles checks what an access token may do over a real dial: GET_AUTHORS and CREATE_AUTHOR
// answered with the given status codes.
func loginRoles(t testing.TB, s *testServer, accessToken string, getStatus, createStatus int) {
	t.Helper()
	c := s.connect(t, accessToken)
	if e := c.call(1, nil); e.status() != getStatus {
		t.Fatalf("GET_AUTHORS with the login's token: status %d msg %q, want %d", e.status(), e.msg(), getStatus)
	}
	if e := c.call(3, map[string]any{"name": "by login " + limRandomHex(4)}); e.status() != createStatus {
		t.Fatalf("CREATE_AUTHOR with the login's token: status %d msg %q, want %d", e.status(), e.msg(), createStatus)
	}
}

func TestLoginDevUsers(t *testing.T) {
	carol := loginUser{"carol", "carol-" + limRandomHex(8), []string{"get-authors"}}
	dave := loginUser{"dave", "dave-" + limRandomHex(8), []string{"get-authors", "create-author"}}
	wrong := "wrong-" + limRandomHex(8)
	var logs logBuffer
	s := startServerLogged(t, func(c *config.Config) {
		writeDevUsers(t, c.DataDir, carol, dave)
		c.LoginRateLimit = 1000
	}, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))

	var carolTokens loginTokens
	t.Run("good credentials", func(t *testing.T) {
		resp, b := postLogin(t, s, loginBody(carol.name, carol.password), nil)
		carolTokens = expectLogin(t, resp, b)
		if carolTokens.ExpiresIn != int(auth.DefaultDevTokenTTL/time.Second) {
			t.Fatalf("expires_in %d, want %d", carolTokens.ExpiresIn, int(auth.DefaultDevTokenTTL/time.Second))
		}
		loginRoles(t, s, carolTokens.AccessToken, 0, 3)
		resp, b = limRequest(t, s, http.MethodGet, "/authors", carolTokens.AccessToken, "", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /authors with the login's token: %d %s", resp.StatusCode, b)
		}

		resp, b = postLogin(t, s, loginBody(dave.name, dave.password), nil)
		loginRoles(t, s, expectLogin(t, resp, b).AccessToken, 0, 0)
	})

	t.Run("the refresh token is not an access token", func(t *testing.T) {
		if carolTokens.RefreshToken == "" {
			t.Skip("no tokens")
		}
		expectRefused(t, s, tokenQuery(carolTokens.RefreshToken), nil, http.StatusUnauthorized, "", carolTokens.RefreshToken)
	})

	t.Run("bad credentials", func(t *testing.T) {
		resp, b := postLogin(t, s, loginBody(carol.name, wrong), nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("bad password: want 401, got %d %s", resp.StatusCode, b)
		}
		badPassword := expectDetail(t, resp, b, "")
		// Another user's password.
		resp, b = postLogin(t, s, loginBody(carol.name, dave.password), nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("another user's password: want 401, got %d %s", resp.StatusCode, b)
		}
		resp, b = postLogin(t, s, loginBody("nobody-"+limRandomHex(4), carol.password), nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("unknown user: want 401, got %d %s", resp.StatusCode, b)
		}
		// The answer does not tell which usernames exist.
		if unknown := expectDetail(t, resp, b, ""); unknown != badPassword {
			t.Fatalf("unknown user answered %q, bad password %q", unknown, badPassword)
		}
		if strings.Contains(string(b), "token") {
			t.Fatalf("401 carries tokens: %s", b)
		}
	})

	t.Run("malformed body", func(t *testing.T) {
		for _, tc := range []struct{ name, body string }{
			{"not JSON", `username=carol&password=x`},
			{"truncated JSON", `{"username":"carol","password":`},
			{"empty object", `{}`},
			{"no password", `{"username":"carol"}`},
			{"no username", `{"password":"x"}`},
			{"empty username", `{"username":"","password":"x"}`},
			{"empty password", `{"username":"carol","password":""}`},
			{"number username", `{"username":1,"password":"x"}`},
			{"array", `[]`},
			{"null", `null`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, b := postLogin(t, s, tc.body, nil)
				if resp.StatusCode != http.StatusUnprocessableEntity {
					t.Fatalf("want 422, got %d %s", resp.StatusCode, b)
				}
				var body struct {
					Detail string           `json:"detail"`
					Errors []wireFieldError `json:"errors"`
				}
				if err := json.Unmarshal(b, &body); err != nil || body.Detail != "Invalid data" || len(body.Errors) == 0 {
					t.Fatalf("want {\"detail\":\"Invalid data\",\"errors\":[...]}, got %s (%v)", b, err)
				}
				for _, e := range body.Errors {
					if e.Path == "" || e.Message == "" {
						t.Fatalf("field error without path or message: %s", b)
					}
				}
			})
		}
		resp, b := postLogin(t, s, `{"username":"carol","password":"`+strings.Repeat("x", 2<<20)+`"}`, nil)
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("2 MiB body: want 413, got %d %.200s", resp.StatusCode, b)
		}
		resp, b = limRequest(t, s, http.MethodGet, "/login", "", "", nil)
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("GET /login: want 405, got %d %s", resp.StatusCode, b)
		}
		expectDetail(t, resp, b, "")
	})

	t.Run("no password or token in the logs", func(t *testing.T) {
		out := logs.String()
		if !strings.Contains(out, "/login") {
			t.Fatalf("no access-log line for /login in the captured logs:\n%.2000s", out)
		}
		for what, secret := range map[string]string{
			"carol's password": carol.password, "dave's password": dave.password, "the wrong password": wrong,
			"the access token": carolTokens.AccessToken, "the refresh token": carolTokens.RefreshToken,
		} {
			if secret != "" && strings.Contains(out, secret) {
				t.Errorf("the logs contain %s", what)
			}
		}
	})
}

// demoPassword finds the password of a demo user the app created.
func demoPassword(t testing.TB, created []auth.DemoUser, user string) string {
	t.Helper()
	for _, u := range created {
		if u.Username == user {
			return u.Password
		}
	}
	t.Fatalf("no demo user %q among %d created", user, len(created))
	return ""
}

// With no users file the server creates one with demo users (bcrypt hashes, mode 0600) whose
// passwords are never logged (serve shows them once: see TestServeShowsDemoPasswordsOnce);
// they log in. A restart keeps the file and creates nothing.
func TestLoginDemoUsersOnFirstStart(t *testing.T) {
	dir := t.TempDir()
	edit := func(c *config.Config) { c.DataDir = dir }
	var logs logBuffer
	s := startServerLogged(t, edit, slog.New(slog.NewTextHandler(&logs, nil)))

	path := filepath.Join(dir, auth.DevUsersFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("users file not created: %v", err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("users file mode %04o, want 0600", perm)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var users []auth.DevUser
	if err := json.Unmarshal(file, &users); err != nil {
		t.Fatalf("users file: %v", err)
	}
	var names []string
	for _, u := range users {
		names = append(names, u.Username)
		if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			t.Fatalf("user %q: password_hash is not bcrypt: %v", u.Username, err)
		}
	}
	if !slices.Contains(names, "admin") || !slices.Contains(names, "reader") {
		t.Fatalf("demo users %v, want admin and reader", names)
	}
	out := logs.String()
	readerPW, adminPW := demoPassword(t, s.app.demoUsers, "reader"), demoPassword(t, s.app.demoUsers, "admin")
	if bytes.Contains(file, []byte(readerPW)) {
		t.Fatal("the users file holds a demo password in clear")
	}
	if strings.Contains(out, readerPW) || strings.Contains(out, adminPW) || strings.Contains(out, "password=") {
		t.Fatalf("a demo password is in the logs:\n%.2000s", out)
	}
	if !strings.Contains(out, "DEVELOPMENT") {
		t.Fatalf("startup logs do not say loudly that this is development mode:\n%.2000s", out)
	}

	resp, b := postLogin(t, s, loginBody("reader", readerPW), nil)
	loginRoles(t, s, expectLogin(t, resp, b).AccessToken, 0, 3)
	resp, b = postLogin(t, s, loginBody("admin", adminPW), nil)
	loginRoles(t, s, expectLogin(t, resp, b).AccessToken, 0, 0)
	resp, b = postLogin(t, s, loginBody("reader", adminPW), nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("reader with admin's password: want 401, got %d %s", resp.StatusCode, b)
	}

	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	var again logBuffer
	s2 := startServerLogged(t, edit, slog.New(slog.NewTextHandler(&again, nil)))
	if len(s2.app.demoUsers) != 0 {
		t.Fatalf("users created again on the second start: %d", len(s2.app.demoUsers))
	}
	if now, err := os.ReadFile(path); err != nil || !bytes.Equal(now, file) {
		t.Fatalf("users file changed by the second start (err %v)", err)
	}
	resp, b = postLogin(t, s2, loginBody("reader", readerPW), nil)
	expectLogin(t, resp, b)
}

// Login attempts are limited per username (from any address) and per client address (for any
// username), before the password is checked.
func TestLoginRateLimits(t *testing.T) {
	limBackends(t, func(t *testing.T, r *limRedis, url string) {
		erin := loginUser{limUser(r, "erin"), "erin-" + limRandomHex(8), []string{"get-authors"}}
		frank := loginUser{limUser(r, "frank"), "frank-" + limRandomHex(8), []string{"get-authors"}}
		s := startServer(t, func(c *config.Config) {
			writeDevUsers(t, c.DataDir, erin, frank)
			c.RedisURL = url
			c.LoginRateLimit = 3
			c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		})
		ip := func() string {
			if r != nil {
				return r.clientIP()
			}
			return limRandomIP()
		}

		// Per username: three attempts from three addresses, then even the right password is
		// refused from a fourth.
		for i := 1; i <= 3; i++ {
			resp, b := postLogin(t, s, loginBody(erin.name, "wrong"), xff(ip()))
			expectLimited(t, resp, b, http.StatusUnauthorized, 3, 3-i)
		}
		fourth := ip()
		resp, b := postLogin(t, s, loginBody(erin.name, erin.password), xff(fourth))
		expectLimited(t, resp, b, http.StatusTooManyRequests, 3, 0)
		// That address and that username are fine otherwise.
		resp, b = postLogin(t, s, loginBody(frank.name, frank.password), xff(fourth))
		expectLogin(t, resp, b)

		// Per address: three attempts for three usernames, then a fourth username with the
		// right password, and a malformed body, are refused.
		busy := ip()
		for i := 1; i <= 3; i++ {
			resp, b := postLogin(t, s, loginBody(limUser(r, "nobody"+string(rune('0'+i))), "x"), xff(busy))
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("attempt %d from one address: want 401, got %d %s", i, resp.StatusCode, b)
			}
		}
		resp, b = postLogin(t, s, loginBody(frank.name, frank.password), xff(busy))
		expectLimited(t, resp, b, http.StatusTooManyRequests, 3, 0)
		resp, b = postLogin(t, s, `not json`, xff(busy))
		expectLimited(t, resp, b, http.StatusTooManyRequests, 3, 0)
		// The per-address refusals did not use frank's per-username budget (one login so far).
		resp, b = postLogin(t, s, loginBody(frank.name, frank.password), xff(ip()))
		expectLogin(t, resp, b)
		if n := limMetric(t, s, `rate_limit_hits_total{limit_type="login_user"}`); n != 1 {
			t.Fatalf(`rate_limit_hits_total{limit_type="login_user"} = %v, want 1`, n)
		}
		if n := limMetric(t, s, `rate_limit_hits_total{limit_type="login_ip"}`); n != 2 {
			t.Fatalf(`rate_limit_hits_total{limit_type="login_ip"} = %v, want 2`, n)
		}

		if r != nil {
			if n := r.zcard(t, limKeyPrefix+"rl:login_user:"+erin.name); n != 3 {
				t.Fatalf("ZCARD %srl:login_user:%s = %d, want 3", limKeyPrefix, erin.name, n)
			}
			if n := r.zcard(t, limKeyPrefix+"rl:login_ip:"+busy); n != 3 {
				t.Fatalf("ZCARD %srl:login_ip:%s = %d, want 3", limKeyPrefix, busy, n)
			}
		}
	})
}

// loginSession reads session:<sub> and its TTL from Redis.
func loginSession(t testing.TB, r *limRedis, sub string) (session map[string]any, ttl time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key := sessions.Key(sub)
	raw, err := r.client.Get(ctx, key).Bytes()
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	if ttl, err = r.client.TTL(ctx, key).Result(); err != nil {
		t.Fatalf("TTL %s: %v", key, err)
	}
	var s map[string]any
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("session %s is not JSON: %v: %s", key, err, raw)
	}
	return s, ttl
}

// expectSession checks session:<sub>: JSON naming sub and username, with the user's role, and
// a TTL within a few seconds of expires_in.
func expectSession(t testing.TB, r *limRedis, sub, username, role string, expiresIn int, ip string) {
	t.Helper()
	s, ttl := loginSession(t, r, sub)
	want := time.Duration(expiresIn) * time.Second
	if ttl > want || ttl < want-5*time.Second {
		t.Fatalf("session TTL %s, want within 5s below expires_in %s", ttl, want)
	}
	if s["sub"] != sub || s["username"] != username {
		t.Fatalf("session %v, want sub %q username %q", s, sub, username)
	}
	roles, _ := s["roles"].([]any)
	if !slices.Contains(roles, any(role)) {
		t.Fatalf("session roles %v, want %q among them", s["roles"], role)
	}
	if ip != "" && s["ip_address"] != ip {
		t.Fatalf("session ip_address %v, want %q", s["ip_address"], ip)
	}
}

func TestLoginDevUsersSessionInRedis(t *testing.T) {
	r := newLimRedis(t)
	gina := loginUser{limUser(r, "gina"), "gina-" + limRandomHex(8), []string{"get-authors"}}
	s := startServer(t, func(c *config.Config) {
		writeDevUsers(t, c.DataDir, gina)
		c.RedisURL = r.url
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	addr := r.clientIP()
	r.track(sessions.Key(gina.name))
	resp, b := postLogin(t, s, loginBody(gina.name, gina.password), xff(addr))
	tok := expectLogin(t, resp, b)
	expectSession(t, r, gina.name, gina.name, "get-authors", tok.ExpiresIn, addr)

	// A failed login records nothing.
	hank := limUser(r, "hank")
	resp, b = postLogin(t, s, loginBody(hank, "x"), xff(addr))
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unknown user: %d %s", resp.StatusCode, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if n, err := r.client.Exists(ctx, sessions.Key(hank)).Result(); err != nil || n != 0 {
		t.Fatalf("session of a failed login: exists=%d err=%v", n, err)
	}
}

// With Redis down, logins still work (limits fail open; the session is not saved).
func TestLoginRedisUnreachable(t *testing.T) {
	ivan := loginUser{"ivan", "ivan-" + limRandomHex(8), []string{"get-authors"}}
	s := startServer(t, func(c *config.Config) {
		writeDevUsers(t, c.DataDir, ivan)
		c.RedisURL = "redis://127.0.0.1:1/0"
		c.LoginRateLimit = 1
	})
	for i := 0; i < 3; i++ {
		resp, b := postLogin(t, s, loginBody(ivan.name, ivan.password), nil)
		tok := expectLogin(t, resp, b)
		if i == 0 {
			loginRoles(t, s, tok.AccessToken, 0, 3)
		}
	}
}

// POST /login against an external (Keycloak-shaped) issuer: the password grant.
func TestLoginExternalIssuer(t *testing.T) {
	iss := oidctest.New(t)
	user, password := "judy-"+limRandomHex(4), "pw-"+limRandomHex(8)
	iss.AddUser(user, password, []string{"get-authors"}, nil)
	s := startServer(t, func(c *config.Config) {
		c.OIDCIssuer = iss.URL()
		c.OIDCClientID = iss.ClientID()
		c.LoginRateLimit = 1000
	})
	unavailable := func(t *testing.T, when string) {
		t.Helper()
		resp, b := postLogin(t, s, loginBody(user, password), nil)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("%s: want 503, got %d %s", when, resp.StatusCode, b)
		}
		expectDetail(t, resp, b, "")
	}

	t.Run("issuer down before the first login", func(t *testing.T) {
		iss.SetDown(true)
		defer iss.SetDown(false)
		unavailable(t, "discovery answered 503")
	})

	t.Run("good credentials", func(t *testing.T) {
		resp, b := postLogin(t, s, loginBody(user, password), nil)
		tok := expectLogin(t, resp, b)
		if tok.ExpiresIn != 300 {
			t.Fatalf("expires_in %d, want the issuer's 300", tok.ExpiresIn)
		}
		loginRoles(t, s, tok.AccessToken, 0, 3)
	})

	t.Run("bad credentials", func(t *testing.T) {
		resp, b := postLogin(t, s, loginBody(user, "wrong"), nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("bad password: want 401, got %d %s", resp.StatusCode, b)
		}
		badPassword := expectDetail(t, resp, b, "")
		resp, b = postLogin(t, s, loginBody("nobody-"+limRandomHex(4), password), nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("unknown user: want 401, got %d %s", resp.StatusCode, b)
		}
		if d := expectDetail(t, resp, b, ""); d != badPassword {
			t.Fatalf("unknown user answered %q, bad password %q", d, badPassword)
		}
		resp, b = postLogin(t, s, `{"username":"`+user+`"}`, nil)
		if resp.StatusCode != http.StatusUnprocessableEntity {
			t.Fatalf("no password: want 422, got %d %s", resp.StatusCode, b)
		}
	})

	t.Run("issuer down", func(t *testing.T) {
		iss.SetDown(true)
		unavailable(t, "token endpoint answered 503")
		iss.SetDown(false)
		resp, b := postLogin(t, s, loginBody(user, password), nil)
		expectLogin(t, resp, b)
	})

	t.Run("confidential client", func(t *testing.T) {
		secret := "s3cret-" + limRandomHex(4)
		conf := oidctest.New(t, oidctest.WithClientSecret(secret))
		conf.AddUser(user, password, []string{"get-authors"}, nil)
		server := func(secret string) *testServer {
			return startServer(t, func(c *config.Config) {
				c.OIDCIssuer = conf.URL()
				c.OIDCClientID = conf.ClientID()
				c.OIDCClientSecret = secret
			})
		}
		good := server(secret)
		resp, b := postLogin(t, good, loginBody(user, password), nil)
		loginRoles(t, good, expectLogin(t, resp, b).AccessToken, 0, 3)
		// A wrong client secret is the operator's mistake, not the user's: 503, not 401.
		bad := server("not-" + secret)
		resp, b = postLogin(t, bad, loginBody(user, password), nil)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("wrong client secret: want 503, got %d %s", resp.StatusCode, b)
		}
		expectDetail(t, resp, b, "")
	})
}

// A successful password grant records session:<sub> in Redis for the token's lifetime.
func TestLoginExternalIssuerSessionInRedis(t *testing.T) {
	r := newLimRedis(t)
	iss := oidctest.New(t)
	user, password := limUser(r, "kate"), "pw-"+limRandomHex(8)
	iss.AddUser(user, password, nil, map[string][]string{iss.ClientID(): {"get-authors"}})
	sub := oidctest.UserID(user) // without the tag: track every key the server makes for it
	r.track(sessions.Key(sub), limKeyPrefix+"rl:http:"+sub, limKeyPrefix+"rl:ws:"+sub, limKeyPrefix+"conns:"+sub)
	s := startServer(t, func(c *config.Config) {
		c.OIDCIssuer = iss.URL()
		c.OIDCClientID = iss.ClientID()
		c.RedisURL = r.url
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	addr := r.clientIP()
	resp, b := postLogin(t, s, loginBody(user, password), xff(addr))
	tok := expectLogin(t, resp, b)
	expectSession(t, r, sub, user, "get-authors", tok.ExpiresIn, addr)
	loginRoles(t, s, tok.AccessToken, 0, 3)
}
