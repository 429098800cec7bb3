package auth

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"switchboard/transport/auth/oidctest"
)

// Both logins satisfy the interface.
var (
	_ Login = (*PasswordGrant)(nil)
	_ Login = DevLogin{}
)

// syncBuffer collects log output from concurrent goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// debugLogger logs everything to a buffer; assertNoSecrets checks what ended up there.
func debugLogger() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func assertNoSecrets(t *testing.T, logs string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(logs, s) {
			t.Fatalf("logs contain a secret (%.6s…):\n%s", s, logs)
		}
	}
}

// recorder is an HTTP transport that counts requests per path and keeps the form of the
// last token request.
type recorder struct {
	base     http.RoundTripper
	mu       sync.Mutex
	paths    map[string]int
	lastForm url.Values
}

func newRecorder(t *testing.T) *recorder {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return &recorder{base: tr, paths: map[string]int{}}
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.paths[req.URL.Path]++
	r.mu.Unlock()
	if req.Method == http.MethodPost && req.Body != nil {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		_ = req.Body.Close()
		form, _ := url.ParseQuery(string(body))
		r.mu.Lock()
		r.lastForm = form
		r.mu.Unlock()
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	return r.base.RoundTrip(req)
}

func (r *recorder) count(suffix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for p, c := range r.paths {
		if strings.HasSuffix(p, suffix) {
			n += c
		}
	}
	return n
}

func (r *recorder) form() url.Values {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastForm
}

func newPasswordGrant(t *testing.T, cfg PasswordGrantConfig) *PasswordGrant {
	t.Helper()
	if cfg.ClientID == "" {
		cfg.ClientID = oidctest.DefaultClientID
	}
	p := NewPasswordGrant(cfg)
	t.Cleanup(p.Close)
	return p
}

func TestPasswordGrantGoodCredentialsVerify(t *testing.T) {
	iss := oidctest.New(t)
	iss.AddUser("alice", "correct horse", []string{"get-authors"},
		map[string][]string{"switchboard": {"create-author"}, "other-client": {"admin"}})
	log, logs := debugLogger()
	rec := newRecorder(t)
	p := newPasswordGrant(t, PasswordGrantConfig{Issuer: iss.URL(), HTTPClient: &http.Client{Transport: rec}, Logger: log})
	v := newVerifier(t, Config{Issuer: iss.URL()})

	tok, err := p.Login(context.Background(), "alice", "correct horse")
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" || tok.ExpiresIn != 300 {
		t.Fatalf("tokens: access %t, refresh %t, expires_in %d", tok.AccessToken != "", tok.RefreshToken != "", tok.ExpiresIn)
	}
	c, err := v.Verify(context.Background(), tok.AccessToken)
	if err != nil {
		t.Fatalf("Verify the granted token: %v", err)
	}
	// Roles of another client never count.
	if c.Subject != oidctest.UserID("alice") || c.Username != "alice" || !slices.Equal(c.Roles, []string{"create-author", "get-authors"}) {
		t.Fatalf("claims = %+v", c)
	}
	form := rec.form()
	want := url.Values{"grant_type": {"password"}, "client_id": {"switchboard"}, "username": {"alice"},
		"password": {"correct horse"}, "scope": {"openid"}}
	for k, vs := range want {
		if !slices.Equal(form[k], vs) {
			t.Errorf("form %s = %q, want %q", k, form[k], vs)
		}
	}
	if form.Has("client_secret") {
		t.Error("client_secret sent for a public client")
	}

	// Discovery is fetched once and cached.
	if _, err := p.Login(context.Background(), "alice", "correct horse"); err != nil {
		t.Fatal(err)
	}
	if n := rec.count("/.well-known/openid-configuration"); n != 1 {
		t.Fatalf("discovery fetched %d times, want 1", n)
	}
	if n := rec.count("/protocol/openid-connect/token"); n != 2 {
		t.Fatalf("token endpoint called %d times, want 2", n)
	}
	assertNoSecrets(t, logs.String(), "correct horse", tok.AccessToken, tok.RefreshToken)
}

func TestPasswordGrantBadCredentials(t *testing.T) {
	iss := oidctest.New(t)
	iss.AddUser("alice", "correct horse", nil, nil)
	log, logs := debugLogger()
	rec := newRecorder(t)
	p := newPasswordGrant(t, PasswordGrantConfig{Issuer: iss.URL(), HTTPClient: &http.Client{Transport: rec}, Logger: log})
	for _, c := range []struct{ name, user, pass string }{
		{"wrong password", "alice", "battery staple"},
		{"unknown user", "mallory", "correct horse"},
		{"empty password", "alice", ""},
		{"empty username", "", "correct horse"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := p.Login(context.Background(), c.user, c.pass)
			if !errors.Is(err, ErrBadCredentials) || errors.Is(err, ErrIdPUnavailable) {
				t.Fatalf("err = %v, want ErrBadCredentials", err)
			}
			if strings.Contains(err.Error(), "horse") || strings.Contains(err.Error(), "staple") {
				t.Fatalf("error text %q contains the password", err)
			}
		})
	}
	// Empty credentials never reach the IdP.
	if n := rec.count("/token"); n != 2 {
		t.Fatalf("token endpoint called %d times, want 2", n)
	}
	assertNoSecrets(t, logs.String(), "correct horse", "battery staple")
}

func TestPasswordGrantIdPDown(t *testing.T) {
	iss := oidctest.New(t)
	iss.AddUser("alice", "correct horse", nil, nil)
	p := newPasswordGrant(t, PasswordGrantConfig{Issuer: iss.URL()}) // the private client: Close releases it

	// Down before discovery: discovery answers 503.
	iss.SetDown(true)
	if _, err := p.Login(context.Background(), "alice", "correct horse"); !errors.Is(err, ErrIdPUnavailable) {
		t.Fatalf("down at discovery: err = %v, want ErrIdPUnavailable", err)
	}
	// The failed discovery is not cached: up again, login works.
	iss.SetDown(false)
	if _, err := p.Login(context.Background(), "alice", "correct horse"); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	// Down after discovery: the token endpoint answers 503.
	iss.SetDown(true)
	_, err := p.Login(context.Background(), "alice", "correct horse")
	if !errors.Is(err, ErrIdPUnavailable) || errors.Is(err, ErrBadCredentials) {
		t.Fatalf("down at token endpoint: err = %v, want ErrIdPUnavailable", err)
	}
}

func TestPasswordGrantUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	endpoint := srv.URL + "/token"
	srv.Close() // nothing listens there any more
	p := newPasswordGrant(t, PasswordGrantConfig{TokenEndpoint: endpoint})
	if _, err := p.Login(context.Background(), "alice", "pw"); !errors.Is(err, ErrIdPUnavailable) {
		t.Fatalf("err = %v, want ErrIdPUnavailable", err)
	}
}

func TestPasswordGrantTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // hang until the client gives up (or the test ends)
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs before srv.Close
	p := newPasswordGrant(t, PasswordGrantConfig{TokenEndpoint: srv.URL + "/token", Timeout: 200 * time.Millisecond})
	start := time.Now()
	_, err := p.Login(context.Background(), "alice", "pw")
	if !errors.Is(err, ErrIdPUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrIdPUnavailable wrapping DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Login took %s with a 200ms timeout", d)
	}
	if DefaultLoginTimeout != 5*time.Second || NewPasswordGrant(PasswordGrantConfig{}).cfg.Timeout != DefaultLoginTimeout {
		t.Fatal("default timeout is not 5s")
	}
}

func TestPasswordGrantClientSecret(t *testing.T) {
	iss := oidctest.New(t, oidctest.WithClientSecret("s3cr3t-value"))
	iss.AddUser("alice", "correct horse", []string{"get-authors"}, nil)
	log, logs := debugLogger()
	rec := newRecorder(t)
	client := &http.Client{Transport: rec}

	p := newPasswordGrant(t, PasswordGrantConfig{Issuer: iss.URL(), ClientSecret: "s3cr3t-value", HTTPClient: client, Logger: log})
	tok, err := p.Login(context.Background(), "alice", "correct horse")
	if err != nil {
		t.Fatalf("confidential client with its secret: %v", err)
	}
	if got := rec.form().Get("client_secret"); got != "s3cr3t-value" {
		t.Fatalf("client_secret sent = %q", got)
	}
	if _, err := newVerifier(t, Config{Issuer: iss.URL()}).Verify(context.Background(), tok.AccessToken); err != nil {
		t.Fatalf("Verify: %v", err)
	}

	// A missing or wrong secret is the operator's problem (invalid_client), not the user's:
	// 503 and an error log, never "bad credentials".
	for name, secret := range map[string]string{"no secret": "", "wrong secret": "not-it"} {
		t.Run(name, func(t *testing.T) {
			p := newPasswordGrant(t, PasswordGrantConfig{Issuer: iss.URL(), ClientSecret: secret, HTTPClient: client, Logger: log})
			_, err := p.Login(context.Background(), "alice", "correct horse")
			if !errors.Is(err, ErrIdPUnavailable) || errors.Is(err, ErrBadCredentials) {
				t.Fatalf("err = %v, want ErrIdPUnavailable", err)
			}
		})
	}
	if !strings.Contains(logs.String(), "invalid_client") {
		t.Fatalf("no error log for the rejected client:\n%s", logs)
	}
	assertNoSecrets(t, logs.String(), "correct horse", "s3cr3t-value", "not-it", tok.AccessToken, tok.RefreshToken)
}

// A redirect must not carry the password to another server.
func TestPasswordGrantDoesNotFollowRedirects(t *testing.T) {
	var leaked atomic.Int32
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Add(1)
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{"access_token":"x","token_type":"Bearer","expires_in":60}`))
	}))
	t.Cleanup(elsewhere.Close)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/token", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)
	p := newPasswordGrant(t, PasswordGrantConfig{TokenEndpoint: redirector.URL + "/token"})
	if _, err := p.Login(context.Background(), "alice", "pw"); !errors.Is(err, ErrIdPUnavailable) {
		t.Fatalf("err = %v, want ErrIdPUnavailable", err)
	}
	if leaked.Load() != 0 {
		t.Fatal("the token request followed a redirect")
	}
}

func TestPasswordGrantMalformedAnswers(t *testing.T) {
	for name, c := range map[string]struct {
		status int
		body   string
		want   error
	}{
		"200 without token":     {200, `{"token_type":"Bearer"}`, ErrIdPUnavailable},
		"200 not JSON":          {200, `<html>`, ErrIdPUnavailable},
		"200 DPoP token":        {200, `{"access_token":"x","token_type":"DPoP"}`, ErrIdPUnavailable},
		"400 invalid_grant":     {400, `{"error":"invalid_grant"}`, ErrBadCredentials},
		"401 invalid_grant":     {401, `{"error":"invalid_grant"}`, ErrBadCredentials},
		"400 unauthorized":      {400, `{"error":"unauthorized_client"}`, ErrIdPUnavailable},
		"401 without body":      {401, ``, ErrIdPUnavailable},
		"429 too many requests": {429, `{"error":"slow_down"}`, ErrIdPUnavailable},
		"502 from the proxy":    {502, `<html>bad gateway</html>`, ErrIdPUnavailable},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(c.status)
				_, _ = w.Write([]byte(c.body))
			}))
			t.Cleanup(srv.Close)
			p := newPasswordGrant(t, PasswordGrantConfig{TokenEndpoint: srv.URL})
			if _, err := p.Login(context.Background(), "alice", "pw"); !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
	t.Run("expires_in as a string", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(`{"access_token":"a","refresh_token":"r","expires_in":"3600","token_type":"bearer"}`))
		}))
		t.Cleanup(srv.Close)
		tok, err := newPasswordGrant(t, PasswordGrantConfig{TokenEndpoint: srv.URL}).Login(context.Background(), "alice", "pw")
		if err != nil || tok != (Tokens{AccessToken: "a", RefreshToken: "r", ExpiresIn: 3600}) {
			t.Fatalf("tokens %+v, err %v", tok, err)
		}
	})
}

func TestPasswordGrantDiscoveryIssuerMismatch(t *testing.T) {
	iss := oidctest.New(t)
	iss.AddUser("alice", "pw", nil, nil)
	// A trailing slash reaches the same discovery document, which names the issuer without it.
	p := newPasswordGrant(t, PasswordGrantConfig{Issuer: iss.URL() + "/"})
	if _, err := p.Login(context.Background(), "alice", "pw"); !errors.Is(err, ErrIdPUnavailable) {
		t.Fatalf("err = %v, want ErrIdPUnavailable", err)
	}
}

func TestPasswordGrantConfigErrors(t *testing.T) {
	for name, cfg := range map[string]PasswordGrantConfig{
		"no client id":     {Issuer: "http://127.0.0.1:1/realms/x"},
		"no issuer":        {ClientID: "switchboard"},
		"issuer not a URL": {ClientID: "switchboard", Issuer: "keycloak"},
		"bad endpoint":     {ClientID: "switchboard", TokenEndpoint: "ftp://x/token"},
	} {
		t.Run(name, func(t *testing.T) {
			p := NewPasswordGrant(cfg)
			_, err := p.Login(context.Background(), "alice", "pw")
			if err == nil || errors.Is(err, ErrBadCredentials) || errors.Is(err, ErrIdPUnavailable) {
				t.Fatalf("err = %v, want a configuration error", err)
			}
		})
	}
}

// Concurrent first logins share one discovery fetch.
func TestPasswordGrantConcurrentDiscovery(t *testing.T) {
	iss := oidctest.New(t)
	iss.AddUser("alice", "correct horse", nil, nil)
	rec := newRecorder(t)
	p := newPasswordGrant(t, PasswordGrantConfig{Issuer: iss.URL(), HTTPClient: &http.Client{Transport: rec}})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := p.Login(context.Background(), "alice", "correct horse")
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := rec.count("/.well-known/openid-configuration"); n != 1 {
		t.Fatalf("discovery fetched %d times, want 1", n)
	}
}
