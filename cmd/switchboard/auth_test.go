package main

// End-to-end tests of the WebSocket handshake (docs/protocol.md §1.1, §3, §6): token checks before
// the upgrade, both token forms, allowed origins, roles from an external (Keycloak-shaped)
// issuer, and tokens kept out of the logs. Handshakes are raw (net/http, wsClient) since both
// token forms, origins and refusal bodies are what is under test.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"

	"switchboard/config"
	"switchboard/transport/auth"
	"switchboard/transport/auth/oidctest"
)

// handshake sends a WebSocket upgrade request with plain net/http, so the status and JSON body
// of a refusal can be read. query is added to /web as is; header may be nil. On 101 it checks
// Sec-WebSocket-Accept and closes the connection; body is then nil.
func wsHandshake(t testing.TB, s *testServer, query string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	u := s.base + "/web"
	if query != "" {
		u += "?" + query
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", key)
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	// A context, not Client.Timeout: the latter wraps a 101's body, hiding the connection.
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()
	resp, err := (&http.Client{Transport: tr}).Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		if got := resp.Header.Get("Sec-WebSocket-Accept"); got != base64.StdEncoding.EncodeToString(sum[:]) {
			t.Fatalf("101 with Sec-WebSocket-Accept %q", got)
		}
		rw, ok := resp.Body.(io.ReadWriter)
		if !ok {
			t.Fatalf("101 body is a %T, not the connection", resp.Body)
		}
		closeHandshake(t, rw)
		return resp, nil
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read handshake answer: %v", err)
	}
	return resp, body
}

// closeHandshake sends a masked close frame (1000) on an upgraded connection and waits for the
// server's close frame. The answer proves the socket is served (its read loop runs), so a test
// that stops the server next does not race the end of the upgrade.
func closeHandshake(t testing.TB, rw io.ReadWriter) {
	t.Helper()
	mask := [4]byte{0x1a, 0x2b, 0x3c, 0x4d}
	payload := []byte{0x03, 0xe8} // 1000
	frame := []byte{0x88, 0x80 | byte(len(payload)), mask[0], mask[1], mask[2], mask[3]}
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	if _, err := rw.Write(frame); err != nil {
		t.Fatalf("write close frame: %v", err)
	}
	got := make(chan []byte, 1)
	go func() {
		var hdr [2]byte
		_, _ = io.ReadFull(rw, hdr[:])
		got <- hdr[:]
	}()
	select {
	case hdr := <-got:
		if hdr[0] != 0x88 {
			t.Fatalf("want the server's close frame, got first bytes %x", hdr)
		}
	case <-time.After(e2eWait):
		t.Fatalf("no close frame from the server within %s", e2eWait)
	}
}

func tokenQuery(tok string) string { return url.Values{"token": {tok}}.Encode() }

func bearerHeader(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// expectUpgrade fails unless the handshake is answered 101.
func expectUpgrade(t testing.TB, s *testServer, query string, header http.Header) {
	t.Helper()
	resp, body := wsHandshake(t, s, query, header)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("want 101, got %d %s", resp.StatusCode, body)
	}
}

// expectRefused fails unless the handshake is answered status with a JSON {"detail": "..."}
// body (containing hint when given, case-insensitively, and never the token) and no upgrade.
func expectRefused(t testing.TB, s *testServer, query string, header http.Header, status int, hint, token string) string {
	t.Helper()
	resp, body := wsHandshake(t, s, query, header)
	if resp.StatusCode != status {
		t.Fatalf("want %d, got %d %s", status, resp.StatusCode, body)
	}
	if resp.Header.Get("Upgrade") != "" || resp.Header.Get("Sec-WebSocket-Accept") != "" {
		t.Fatalf("refusal carries upgrade headers: %v", resp.Header)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("Content-Type %q, body %s", ct, body)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("body is not JSON: %s", body)
	}
	detail, ok := m["detail"].(string)
	if len(m) != 1 || !ok || detail == "" {
		t.Fatalf(`body is not {"detail": "<reason>"}: %s`, body)
	}
	if hint != "" && !strings.Contains(strings.ToLower(detail), hint) {
		t.Fatalf("detail %q does not mention %q", detail, hint)
	}
	if token != "" && (strings.Contains(string(body), token) || strings.Contains(string(body), signaturePart(token))) {
		t.Fatalf("refusal repeats the token: %s", body)
	}
	return detail
}

// signaturePart is the last segment of a compact JWS (the part that makes it a credential).
func signaturePart(tok string) string {
	if i := strings.LastIndexByte(tok, '.'); i >= 0 && i < len(tok)-1 {
		return tok[i+1:]
	}
	return tok
}

// rejection is a token the handshake must refuse with 401.
type rejection struct {
	name  string
	token string
	hint  string // expected in the detail, lower case; "" = any reason
}

// expectRejections checks each token in both forms (query and Authorization header).
func expectRejections(t *testing.T, s *testServer, cases []rejection) {
	t.Helper()
	for _, rc := range cases {
		t.Run(rc.name, func(t *testing.T) {
			expectRefused(t, s, tokenQuery(rc.token), nil, http.StatusUnauthorized, rc.hint, rc.token)
			expectRefused(t, s, "", bearerHeader(rc.token), http.StatusUnauthorized, rc.hint, rc.token)
		})
	}
}

// devSigner signs arbitrary claims with the development issuer's key (or another key).
type devSigner struct {
	priv *rsa.PrivateKey
	kid  string
}

func newDevSigner(t testing.TB, s *testServer) devSigner {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.cfg.DataDir, auth.DevKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatal("development key is not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := s.dev.PublicKeySet().Key(0)
	if !ok {
		t.Fatal("development key set is empty")
	}
	return devSigner{priv: k.(*rsa.PrivateKey), kid: pub.KeyID()}
}

// claims are those of a valid development token for user.
func (d devSigner) claims(clientID, user string, roles ...string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": auth.DevIssuerID, "sub": user, "preferred_username": user,
		"aud": []string{clientID}, "azp": clientID, "typ": "Bearer",
		"realm_access": map[string]any{"roles": roles},
		"iat":          now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
}

func (d devSigner) sign(t testing.TB, claims map[string]any) string {
	t.Helper()
	return signRS256(t, d.priv, d.kid, claims)
}

func signRS256(t testing.TB, priv *rsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.TypeKey, "JWT")
	_ = hdr.Set(jws.KeyIDKey, kid)
	tok, err := jws.Sign(payload, jws.WithKey(jwa.RS256, priv, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(tok)
}

// unsignedToken is claims with alg "none" and an empty signature.
func unsignedToken(kid string, claims map[string]any) string {
	h, _ := json.Marshal(map[string]any{"alg": "none", "typ": "JWT", "kid": kid})
	p, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(h) + "." + enc.EncodeToString(p) + "."
}

// hmacWithPublicKey is the key-confusion attack: HS256 with the issuer's public key (PEM) as
// the shared secret.
func hmacWithPublicKey(t testing.TB, pub *rsa.PublicKey, kid string, claims map[string]any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	payload, _ := json.Marshal(claims)
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, kid)
	tok, err := jws.Sign(payload, jws.WithKey(jwa.HS256, secret, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(tok)
}

// withClaims returns a copy of c with the given claims set (nil value: removed).
func withClaims(c map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(c))
	for k, v := range c {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

// tamper replaces the payload of a signed token, keeping header and signature.
func tamper(t testing.TB, tok string, claims map[string]any) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a compact JWS: %d parts", len(parts))
	}
	p, _ := json.Marshal(claims)
	parts[1] = base64.RawURLEncoding.EncodeToString(p)
	return strings.Join(parts, ".")
}

func TestAuthHandshakeDevIssuer(t *testing.T) {
	s := startServer(t, nil)
	d := newDevSigner(t, s)
	cid := s.cfg.OIDCClientID
	base := d.claims(cid, "mallory", allAuthorRoles...)
	now := time.Now()

	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("valid token upgrades", func(t *testing.T) {
		expectUpgrade(t, s, tokenQuery(s.token(t, "alice", "get-authors")), nil)
		expectUpgrade(t, s, "", bearerHeader(s.token(t, "alice", "get-authors")))
		// A hand-signed token with the same claims as Mint's passes too (the signer is right).
		expectUpgrade(t, s, tokenQuery(d.sign(t, base)), nil)
		// Expired, but within the leeway.
		expectUpgrade(t, s, tokenQuery(d.sign(t, withClaims(base, "exp", now.Add(-s.cfg.JWTLeeway/2).Unix()))), nil)
	})
	t.Run("missing token", func(t *testing.T) {
		expectRefused(t, s, "", nil, http.StatusUnauthorized, "", "")
		expectRefused(t, s, "token=", nil, http.StatusUnauthorized, "", "")
		expectRefused(t, s, "", http.Header{"Authorization": {"Bearer "}}, http.StatusUnauthorized, "", "")
		tok := s.token(t, "alice", "get-authors")
		// Another scheme is not a bearer token.
		expectRefused(t, s, "", http.Header{"Authorization": {"Basic " + tok}}, http.StatusUnauthorized, "", tok)
	})

	expectRejections(t, s, []rejection{
		{"garbage", "not-a-token", ""},
		{"three garbage segments", "abc.def.ghi", ""},
		{"expired", d.sign(t, withClaims(base, "iat", now.Add(-2*time.Hour).Unix(), "nbf", now.Add(-2*time.Hour).Unix(),
			"exp", now.Add(-time.Hour).Unix())), "expired"},
		{"expired beyond leeway", d.sign(t, withClaims(base, "exp", now.Add(-s.cfg.JWTLeeway-5*time.Second).Unix())), "expired"},
		{"not yet valid", d.sign(t, withClaims(base, "nbf", now.Add(10*time.Minute).Unix())), "not yet valid"},
		{"no expiry", d.sign(t, withClaims(base, "exp", nil)), ""},
		{"wrong issuer", d.sign(t, withClaims(base, "iss", "https://evil.example/realms/app")), "issuer"},
		{"no issuer", d.sign(t, withClaims(base, "iss", nil)), "issuer"},
		{"wrong audience", d.sign(t, withClaims(base, "aud", []string{"other-client"}, "azp", "other-client")), "audience"},
		{"no audience", d.sign(t, withClaims(base, "aud", nil, "azp", nil)), "audience"},
		{"minted for another client", func() string {
			tok, _, err := s.dev.Mint(auth.MintParams{Subject: "mallory", ClientID: "other-client", Roles: allAuthorRoles})
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}(), "audience"},
		{"signed by another key with the issuer's kid", signRS256(t, other, d.kid, base), ""},
		{"signed by another key with its own kid", signRS256(t, other, "some-other-kid", base), ""},
		{"alg none", unsignedToken(d.kid, base), ""},
		{"HS256 with the public key", hmacWithPublicKey(t, &d.priv.PublicKey, d.kid, base), ""},
		{"tampered payload", tamper(t, s.token(t, "mallory"), base), ""},
		{"ID token", d.sign(t, withClaims(base, "typ", "ID")), ""},
	})

	t.Run("bearer header connects and serves", func(t *testing.T) {
		c, err := s.tryDial(t, "", bearerHeader(s.token(t, "bob", "get-authors")))
		if err != nil {
			t.Fatal(err)
		}
		expectStatus(t, c.call(1, nil), 0, "")
		expectStatus(t, c.call(3, map[string]any{"name": "x"}), 3, "Permission denied")
	})
	t.Run("query token connects and serves", func(t *testing.T) {
		c := s.dial(t, s.token(t, "carol", "get-authors", "create-author"))
		expectStatus(t, c.call(3, map[string]any{"name": "Carol's"}), 0, "")
		expectStatus(t, c.call(1, nil), 0, "")
	})
	t.Run("gws dial with a bad token fails", func(t *testing.T) {
		if _, err := s.tryDial(t, d.sign(t, withClaims(base, "iss", "x")), nil); err == nil {
			t.Fatal("upgrade succeeded with a wrong issuer")
		}
	})
}

func TestAuthAllowedOrigins(t *testing.T) {
	s := startServer(t, func(c *config.Config) {
		c.AllowedOrigins = []string{"https://app.example", "http://localhost:3000"}
	})
	tok := s.token(t, "alice", "get-authors")
	origin := func(o string) http.Header { return http.Header{"Origin": {o}} }

	expectUpgrade(t, s, tokenQuery(tok), origin("https://app.example"))
	expectUpgrade(t, s, tokenQuery(tok), origin("http://localhost:3000"))
	// No Origin: a non-browser client.
	expectUpgrade(t, s, tokenQuery(tok), nil)
	for _, o := range []string{
		"https://evil.example",
		"http://app.example",                // other scheme
		"https://app.example:8443",          // other port
		"https://app.example.evil.example",  // prefix
		"https://evil.example/https://app.", // junk
		"null",
	} {
		t.Run(o, func(t *testing.T) {
			expectRefused(t, s, tokenQuery(tok), origin(o), http.StatusForbidden, "", tok)
		})
	}

	// Through a real client: allowed and missing Origins serve, a foreign one cannot dial.
	c, err := s.tryDial(t, tok, origin("https://app.example"))
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, c.call(1, nil), 0, "")
	if _, err := s.tryDial(t, tok, origin("https://evil.example")); err == nil {
		t.Fatal("dial from a foreign origin succeeded")
	}

	// Without the setting every Origin is allowed.
	open := startServer(t, nil)
	expectUpgrade(t, open, tokenQuery(open.token(t, "alice", "get-authors")), origin("https://anything.example"))
}

// passwordGrant gets an access token from the issuer's token endpoint, as Keycloak would give
// it (aud "account", azp = the client).
func passwordGrant(t testing.TB, iss *oidctest.Issuer, user, password string) string {
	t.Helper()
	resp, err := http.PostForm(iss.URL()+"/protocol/openid-connect/token", url.Values{
		"grant_type": {"password"}, "client_id": {iss.ClientID()}, "username": {user}, "password": {password},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK || body.AccessToken == "" {
		t.Fatalf("password grant: %d %v", resp.StatusCode, err)
	}
	return body.AccessToken
}

func TestAuthExternalIssuer(t *testing.T) {
	iss := oidctest.New(t)
	s := startServer(t, func(c *config.Config) {
		c.OIDCIssuer = iss.URL()
		c.OIDCClientID = iss.ClientID()
	})
	cid := iss.ClientID()
	now := time.Now()

	t.Run("valid tokens", func(t *testing.T) {
		expectUpgrade(t, s, tokenQuery(iss.Token(t, oidctest.TokenClaims{Subject: "u-valid-1"})), nil)
		expectUpgrade(t, s, "", bearerHeader(iss.Token(t, oidctest.TokenClaims{Subject: "u-valid-2"})))
		// Keycloak's default access token: aud "account", the client in azp.
		expectUpgrade(t, s, tokenQuery(iss.Token(t, oidctest.TokenClaims{Subject: "u-valid-3", Audience: []string{"account"}, AZP: cid})), nil)
		iss.AddUser("grace", "s3cret", []string{"get-authors"}, nil)
		c := s.connect(t, passwordGrant(t, iss, "grace", "s3cret"))
		expectStatus(t, c.call(1, nil), 0, "")
	})

	stranger := oidctest.New(t)
	expectRejections(t, s, []rejection{
		{"expired", iss.Token(t, oidctest.TokenClaims{IssuedAt: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour)}), "expired"},
		{"not yet valid", iss.Token(t, oidctest.TokenClaims{NotBefore: now.Add(10 * time.Minute)}), "not yet valid"},
		{"no expiry", iss.Token(t, oidctest.TokenClaims{NoExpiry: true}), ""},
		{"wrong issuer", iss.Token(t, oidctest.TokenClaims{Issuer: "http://127.0.0.1:1/realms/other"}), "issuer"},
		{"wrong audience", iss.Token(t, oidctest.TokenClaims{Audience: []string{"other-client"}}), "audience"},
		{"azp of another client", iss.Token(t, oidctest.TokenClaims{Audience: []string{"account"}, AZP: "other-client"}), "audience"},
		{"signed by another key with the issuer's kid", stranger.Token(t, oidctest.TokenClaims{Issuer: iss.URL(), KeyID: iss.KeyID()}), ""},
		{"signed by another key with its own kid", stranger.Token(t, oidctest.TokenClaims{Issuer: iss.URL()}), ""},
		{"alg none", iss.Token(t, oidctest.TokenClaims{Alg: "none"}), ""},
		{"HS256 with the public key", iss.Token(t, oidctest.TokenClaims{Alg: "HS256"}), ""},
		{"ID token", iss.Token(t, oidctest.TokenClaims{Extra: map[string]any{"typ": "ID"}}), ""},
	})

	t.Run("roles from realm_access and resource_access of this client", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			claims oidctest.TokenClaims
			pkg1   int // status of GET_AUTHORS
			pkg3   int // status of CREATE_AUTHOR
		}{
			{"realm role", oidctest.TokenClaims{RealmRoles: []string{"get-authors"}}, 0, 3},
			{"client role", oidctest.TokenClaims{ClientRoles: map[string][]string{cid: {"get-authors"}}}, 0, 3},
			{"both", oidctest.TokenClaims{RealmRoles: []string{"create-author"}, ClientRoles: map[string][]string{cid: {"get-authors"}}}, 0, 0},
			{"role of another client only", oidctest.TokenClaims{ClientRoles: map[string][]string{"other-app": {"get-authors", "create-author"}}}, 3, 3},
			{"another client beside this one", oidctest.TokenClaims{ClientRoles: map[string][]string{"other-app": {"get-authors"}, cid: {"create-author"}}}, 3, 0},
			{"roles outside the claim paths", oidctest.TokenClaims{Extra: map[string]any{"roles": []string{"get-authors"}, "groups": []string{"get-authors"}}}, 3, 3},
			{"no roles", oidctest.TokenClaims{}, 3, 3},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tc.claims.Subject = "user-" + strings.ReplaceAll(tc.name, " ", "-")
				c := s.connect(t, iss.Token(t, tc.claims))
				e := c.call(1, nil)
				if e.status() != tc.pkg1 {
					t.Fatalf("GET_AUTHORS: status %d msg %q, want %d", e.status(), e.msg(), tc.pkg1)
				}
				if tc.pkg1 == 3 {
					expectStatus(t, e, 3, "Permission denied")
				}
				e = c.call(3, map[string]any{"name": "by " + tc.name})
				if e.status() != tc.pkg3 {
					t.Fatalf("CREATE_AUTHOR: status %d msg %q, want %d", e.status(), e.msg(), tc.pkg3)
				}
			})
		}
	})
}

// logBuffer is a bytes.Buffer safe for the server's concurrent log writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *logBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *logBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestAuthTokenNeverLogged(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var buf logBuffer
			opts := &slog.HandlerOptions{Level: slog.LevelDebug}
			var h slog.Handler = slog.NewTextHandler(&buf, opts)
			if format == "json" {
				h = slog.NewJSONHandler(&buf, opts)
			}
			s := startServerLogged(t, nil, slog.New(h))
			d := newDevSigner(t, s)
			base := d.claims(s.cfg.OIDCClientID, "logged", "get-authors")

			good := s.token(t, "logged", "get-authors")
			goodHeader := s.token(t, "logged-header", "get-authors")
			expired := d.sign(t, withClaims(base, "exp", time.Now().Add(-time.Hour).Unix()))
			badSig := tamper(t, s.token(t, "logged"), withClaims(base, "realm_access", map[string]any{"roles": []string{"admin"}}))
			wrongIss := d.sign(t, withClaims(base, "iss", "https://evil.example"))
			tokens := map[string]string{"good": good, "goodHeader": goodHeader, "expired": expired, "badSig": badSig, "wrongIss": wrongIss}

			// Failing handshakes, in both forms.
			expectRefused(t, s, tokenQuery(expired), nil, http.StatusUnauthorized, "expired", expired)
			expectRefused(t, s, "", bearerHeader(expired), http.StatusUnauthorized, "expired", expired)
			expectRefused(t, s, tokenQuery(badSig)+"&format=json", nil, http.StatusUnauthorized, "", badSig)
			expectRefused(t, s, tokenQuery(wrongIss), nil, http.StatusUnauthorized, "issuer", wrongIss)
			// Succeeding ones, used for a request and closed.
			c := s.dial(t, good)
			expectStatus(t, c.call(1, nil), 0, "")
			c2, err := s.tryDial(t, "", bearerHeader(goodHeader))
			if err != nil {
				t.Fatal(err)
			}
			expectStatus(t, c2.call(1, nil), 0, "")
			expectUpgrade(t, s, "format=json&"+tokenQuery(good), nil)
			// A token in the query of other routes, too.
			if resp, _ := s.do(t, http.MethodGet, "/livez?token="+good, "", ""); resp.StatusCode != http.StatusOK {
				t.Fatalf("livez: %d", resp.StatusCode)
			}
			if resp, _ := s.do(t, http.MethodGet, "/no-such-route?access_token="+good, "", ""); resp.StatusCode != http.StatusNotFound {
				t.Fatalf("unknown route: %d", resp.StatusCode)
			}

			// Every request with a token in the query (3 refused handshakes, 2 upgraded, 2 other
			// routes) has its access-log line, with the token redacted, before the server stops.
			eventually(t, e2eWait, "access-log lines of the handshakes", func() bool {
				return strings.Count(buf.String(), "/web?") >= 5
			})
			c.conn.WriteClose(1000, nil)
			c2.conn.WriteClose(1000, nil)
			if err := s.stop(); err != nil {
				t.Fatal(err)
			}

			logs := buf.String()
			if n := strings.Count(logs, "[REDACTED]"); n < 7 {
				t.Fatalf("want the query tokens redacted in the access log (%d [REDACTED]); logs:\n%s", n, logs)
			}
			for name, tok := range tokens {
				for _, part := range append(strings.Split(tok, ".")[1:], tok) {
					if part != "" && strings.Contains(logs, part) {
						t.Fatalf("token %s (or a part of it) is in the server logs:\n%s", name, logs)
					}
				}
			}
		})
	}
}

// rawUpgrade completes a handshake and returns the open connection without waiting for the
// server to serve it.
func rawUpgrade(t testing.TB, s *testServer, tok string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(s.base, "http://"), e2eWait)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(e2eWait))
	req := "GET /web?" + tokenQuery(tok) + " HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	// Read exactly the response head, so the frames that follow stay unread.
	var head []byte
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		var b [1]byte
		if _, err := conn.Read(b[:]); err != nil {
			t.Fatalf("upgrade: %q %v", head, err)
		}
		head = append(head, b[0])
	}
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101 ")) {
		t.Fatalf("upgrade: %q", head)
	}
	return conn
}

// TestAuthShutdownRightAfterUpgrade: a socket upgraded just before shutdown must still be closed
// with 1001 and must not hold the shutdown up to its deadline.
func TestAuthShutdownRightAfterUpgrade(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.ShutdownTimeout = 5 * time.Second })
	tok := s.token(t, "late", "get-authors")
	conns := make([]net.Conn, 0, 4)
	for i := 0; i < cap(conns); i++ {
		conns = append(conns, rawUpgrade(t, s, tok))
	}
	start := time.Now()
	err := s.stop()
	took := time.Since(start)
	for i, c := range conns {
		// Each socket got the server's close frame with 1001 (going away), possibly after a
		// keepalive ping queued just before the shutdown.
		r := &rawWS{t: t, c: c, br: bufio.NewReader(c)}
		if code, reason := r.closeCode(); code != 1001 {
			t.Errorf("socket %d: close %d %q, want 1001", i, code, reason)
		}
		_ = c.Close()
	}
	if err != nil {
		t.Fatalf("stop: %v (after %s)", err, took.Round(time.Millisecond))
	}
}

// TestAuthHealthWithQueryToken: a public route answers normally when a (stray) token is in its
// query, and the token stays out of the logs. It also runs /health's parallel checks under the
// race detector: transport/http.go health() writes the "disabled" entries into the result map
// without the mutex while the database check's goroutine writes into the same map under it.
func TestAuthHealthWithQueryToken(t *testing.T) {
	var buf logBuffer
	s := startServerLogged(t, nil, slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	tok := s.token(t, "health", "get-authors")
	resp, body := s.do(t, http.MethodGet, "/health?token="+tok, "", "")
	var m map[string]string
	if err := json.Unmarshal(body, &m); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("health: %d %s", resp.StatusCode, body)
	}
	want := map[string]string{"status": "healthy", "database": "healthy", "redis": "disabled", "pubsub": "disabled"}
	for k, v := range want {
		if m[k] != v {
			t.Fatalf("health %s = %q, want %q (%s)", k, m[k], v, body)
		}
	}
	eventually(t, e2eWait, "the access-log line", func() bool { return strings.Contains(buf.String(), "/health?token=[REDACTED]") })
	if strings.Contains(buf.String(), signaturePart(tok)) {
		t.Fatalf("token in the logs:\n%s", buf.String())
	}
}
