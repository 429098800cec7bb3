package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
	"golang.org/x/crypto/bcrypt"

	"switchboard/transport/auth/oidctest"
)

// Both logins refresh.
var (
	_ interface {
		Refresh(context.Context, string) (Tokens, error)
	} = (*PasswordGrant)(nil)
	_ interface {
		Refresh(context.Context, string) (Tokens, error)
	} = DevLogin{}
)

func TestPasswordGrantRefresh(t *testing.T) {
	iss := oidctest.New(t, oidctest.WithClientSecret("s3cret"))
	iss.AddUser("alice", "correct horse", []string{"get-authors"}, nil)
	log, logs := debugLogger()
	p := newPasswordGrant(t, PasswordGrantConfig{Issuer: iss.URL(), ClientSecret: "s3cret", Logger: log})
	v := newVerifier(t, Config{Issuer: iss.URL(), ClientID: oidctest.DefaultClientID})
	ctx := context.Background()

	first, err := p.Login(ctx, "alice", "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := p.Refresh(ctx, first.RefreshToken)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if renewed.AccessToken == "" || renewed.AccessToken == first.AccessToken || renewed.RefreshToken == "" ||
		renewed.RefreshToken == first.RefreshToken || renewed.ExpiresIn != 300 {
		t.Fatalf("refreshed tokens: %+v", renewed)
	}
	c, err := v.Verify(ctx, renewed.AccessToken)
	if err != nil || c.Username != "alice" || !slices.Equal(c.Roles, []string{"get-authors"}) {
		t.Fatalf("refreshed access token: %+v %v", c, err)
	}
	if iss.Grants("refresh_token") != 1 {
		t.Fatalf("refresh grants at the issuer: %d", iss.Grants("refresh_token"))
	}

	for name, tok := range map[string]string{
		"empty":            "",
		"garbage":          "not-a-refresh-token",
		"an access token":  renewed.AccessToken,
		"a long token":     strings.Repeat("x", 100_000),
		"with form syntax": first.RefreshToken + "&grant_type=password&username=alice",
	} {
		if _, err := p.Refresh(ctx, tok); !errors.Is(err, ErrInvalidRefreshToken) {
			t.Errorf("%s: err = %v, want ErrInvalidRefreshToken", name, err)
		}
	}

	// Another client's refresh token is not this client's.
	other := newPasswordGrant(t, PasswordGrantConfig{Issuer: iss.URL(), ClientID: "another", ClientSecret: "s3cret"})
	if _, err := other.Refresh(ctx, renewed.RefreshToken); !errors.Is(err, ErrIdPUnavailable) {
		// The issuer rejects the unknown client itself (invalid_client): a configuration error.
		t.Errorf("unknown client: err = %v, want ErrIdPUnavailable", err)
	}

	iss.SetDown(true)
	if _, err := p.Refresh(ctx, renewed.RefreshToken); !errors.Is(err, ErrIdPUnavailable) {
		t.Errorf("issuer down: err = %v, want ErrIdPUnavailable", err)
	}
	iss.SetDown(false)

	iss.RevokeRefreshTokens()
	if _, err := p.Refresh(ctx, renewed.RefreshToken); !errors.Is(err, ErrInvalidRefreshToken) {
		t.Errorf("revoked: err = %v, want ErrInvalidRefreshToken", err)
	}
	assertNoSecrets(t, logs.String(), first.RefreshToken, renewed.RefreshToken, renewed.AccessToken, "s3cret", "correct horse")
}

func TestPasswordGrantRefreshExpires(t *testing.T) {
	iss := oidctest.New(t, oidctest.WithRefreshTTL(time.Second))
	iss.AddUser("alice", "pw", nil, nil)
	p := newPasswordGrant(t, PasswordGrantConfig{Issuer: iss.URL()})
	tok, err := p.Login(context.Background(), "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the refresh token to expire", func() bool {
		_, err := p.Refresh(context.Background(), tok.RefreshToken)
		return errors.Is(err, ErrInvalidRefreshToken)
	})
}

// devLoginFixture is a development issuer with a users file of two users.
type devLoginFixture struct {
	dir    string
	issuer *DevIssuer
	login  DevLogin
	v      *Verifier
}

func newDevLoginFixture(t *testing.T) devLoginFixture {
	t.Helper()
	dir := t.TempDir()
	d, err := OpenDevIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	writeUsers(t, dir, map[string][]string{"alice": {"get-authors"}, "bob": {"get-authors", "create-author"}})
	u, _, err := OpenDevUsers(dir)
	if err != nil {
		t.Fatal(err)
	}
	return devLoginFixture{dir: dir, issuer: d, v: devVerifier(t, d),
		login: DevLogin{Users: u, Issuer: d, ClientID: "switchboard", TTL: 10 * time.Minute}}
}

// writeUsers writes a users file whose every password is "pw".
func writeUsers(t *testing.T, dir string, roles map[string][]string) {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	var list []DevUser
	for name, r := range roles {
		list = append(list, DevUser{Username: name, PasswordHash: string(hash), Roles: r})
	}
	b, _ := json.Marshal(list)
	if err := os.WriteFile(filepath.Join(dir, DevUsersFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// signRefresh signs claims with the issuer's key, as mintRefresh would, for tokens mintRefresh
// refuses to make.
func signRefresh(t *testing.T, d *DevIssuer, claims map[string]any) string {
	t.Helper()
	payload, _ := json.Marshal(claims)
	tok, err := jws.Sign(payload, jws.WithKey(jwa.RS256, d.priv))
	if err != nil {
		t.Fatal(err)
	}
	return string(tok)
}

func refreshClaimsFor(sub string, iat, exp time.Time) map[string]any {
	return map[string]any{"iss": DevIssuerID, "aud": []string{DevIssuerID}, "sub": sub, "typ": "Refresh",
		"client_id": "switchboard", "iat": iat.Unix(), "nbf": iat.Unix(), "exp": exp.Unix(),
		"auth_time": iat.Unix(), "jti": "x"}
}

func TestDevLoginRefresh(t *testing.T) {
	f := newDevLoginFixture(t)
	ctx := context.Background()
	first, err := f.login.Login(ctx, "bob", "pw")
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := f.login.Refresh(ctx, first.RefreshToken)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if renewed.ExpiresIn != 600 || renewed.RefreshToken == "" || renewed.RefreshToken == first.RefreshToken {
		t.Fatalf("refreshed tokens: %+v", renewed)
	}
	c, err := f.v.Verify(ctx, renewed.AccessToken)
	if err != nil || c.Subject != "bob" || !slices.Equal(c.Roles, []string{"create-author", "get-authors"}) {
		t.Fatalf("refreshed access token: %+v %v", c, err)
	}
	// A refreshed refresh token refreshes again.
	if _, err := f.login.Refresh(ctx, renewed.RefreshToken); err != nil {
		t.Fatalf("second refresh: %v", err)
	}
	// The refresh token is no access token, and the access token no refresh token.
	if _, err := f.v.Verify(ctx, renewed.RefreshToken); err == nil {
		t.Fatal("a refresh token passes as an access token")
	}
	if _, err := f.login.Refresh(ctx, renewed.AccessToken); !errors.Is(err, ErrInvalidRefreshToken) {
		t.Fatalf("an access token as refresh token: err = %v", err)
	}
}

// Every refresh token that is not one of ours, for this client, alive, is refused alike.
func TestDevLoginRefreshRefuses(t *testing.T) {
	f := newDevLoginFixture(t)
	ctx := context.Background()
	good, err := f.login.Login(ctx, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	otherKey, err := OpenDevIssuer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(good.RefreshToken, ".")
	enc := base64.RawURLEncoding
	tamper := func(edit func(map[string]any)) string {
		payload, _ := enc.DecodeString(parts[1])
		var m map[string]any
		_ = json.Unmarshal(payload, &m)
		edit(m)
		b, _ := json.Marshal(m)
		return parts[0] + "." + enc.EncodeToString(b) + "." + parts[2]
	}
	hs256, err := jws.Sign([]byte(`{"sub":"alice"}`), jws.WithKey(jwa.HS256, []byte("secret")))
	if err != nil {
		t.Fatal(err)
	}
	unsigned := enc.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + "."
	cases := map[string]string{
		"empty":              "",
		"garbage":            "a.b.c",
		"oversized":          strings.Repeat("a", maxTokenBytes) + ".b.c",
		"tampered subject":   tamper(func(m map[string]any) { m["sub"] = "bob" }),
		"another key":        signRefresh(t, otherKey, refreshClaimsFor("alice", now, now.Add(time.Hour))),
		"HS256":              string(hs256),
		"alg none":           unsigned,
		"expired":            signRefresh(t, f.issuer, refreshClaimsFor("alice", now.Add(-2*time.Hour), now.Add(-time.Second))),
		"not yet valid":      signRefresh(t, f.issuer, refreshClaimsFor("alice", now.Add(time.Hour), now.Add(2*time.Hour))),
		"typ Bearer":         signRefresh(t, f.issuer, with(refreshClaimsFor("alice", now, now.Add(time.Hour)), "typ", "Bearer")),
		"other client":       signRefresh(t, f.issuer, with(refreshClaimsFor("alice", now, now.Add(time.Hour)), "client_id", "other")),
		"other issuer":       signRefresh(t, f.issuer, with(refreshClaimsFor("alice", now, now.Add(time.Hour)), "iss", "https://evil")),
		"audience client":    signRefresh(t, f.issuer, with(refreshClaimsFor("alice", now, now.Add(time.Hour)), "aud", []string{"switchboard"})),
		"no expiry":          signRefresh(t, f.issuer, with(refreshClaimsFor("alice", now, now.Add(time.Hour)), "exp", nil)),
		"exp of wrong type":  signRefresh(t, f.issuer, with(refreshClaimsFor("alice", now, now.Add(time.Hour)), "exp", "tomorrow")),
		"unknown user":       signRefresh(t, f.issuer, refreshClaimsFor("mallory", now, now.Add(time.Hour))),
		"no subject":         signRefresh(t, f.issuer, with(refreshClaimsFor("", now, now.Add(time.Hour)), "sub", "")),
		"payload not object": signRefresh(t, f.issuer, nil),
	}
	for name, tok := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := f.login.Refresh(ctx, tok)
			if !errors.Is(err, ErrInvalidRefreshToken) {
				t.Fatalf("err = %v, want ErrInvalidRefreshToken", err)
			}
			if err.Error() != ErrInvalidRefreshToken.Error() {
				t.Fatalf("the error says which check failed: %q", err)
			}
		})
	}
	if _, err := f.login.Refresh(ctx, good.RefreshToken); err != nil {
		t.Fatalf("the untouched token: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.login.Refresh(cctx, good.RefreshToken); !errors.Is(err, ErrIdPUnavailable) {
		t.Fatalf("cancelled: err = %v", err)
	}
}

func with(m map[string]any, k string, v any) map[string]any {
	if v == nil {
		delete(m, k)
	} else {
		m[k] = v
	}
	return m
}

// A refresh reads the users file as it is now: changed roles apply, a removed user is out.
func TestDevLoginRefreshFollowsUsersFile(t *testing.T) {
	f := newDevLoginFixture(t)
	ctx := context.Background()
	tok, err := f.login.Login(ctx, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	writeUsers(t, f.dir, map[string][]string{"alice": {"admin"}})
	u, _, err := OpenDevUsers(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	f.login.Users = u
	renewed, err := f.login.Refresh(ctx, tok.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := f.v.Verify(ctx, renewed.AccessToken); err != nil || !slices.Equal(c.Roles, []string{"admin"}) {
		t.Fatalf("roles after the file changed: %+v %v", c, err)
	}
	writeUsers(t, f.dir, map[string][]string{"bob": nil})
	if f.login.Users, _, err = OpenDevUsers(f.dir); err != nil {
		t.Fatal(err)
	}
	if _, err := f.login.Refresh(ctx, renewed.RefreshToken); !errors.Is(err, ErrInvalidRefreshToken) {
		t.Fatalf("removed user: err = %v", err)
	}
}

// Refreshing keeps a login alive at most SessionMax after the password check.
func TestDevLoginRefreshSessionMax(t *testing.T) {
	f := newDevLoginFixture(t)
	f.login.SessionMax = time.Hour
	now := time.Now()
	// A refresh token of a login 59 minutes ago: the next one lives one more minute at most.
	old := signRefresh(t, f.issuer, refreshClaimsFor("alice", now.Add(-59*time.Minute), now.Add(time.Hour)))
	renewed, err := f.login.Refresh(context.Background(), old)
	if err != nil {
		t.Fatal(err)
	}
	c, err := f.issuer.verifyRefresh(renewed.RefreshToken, "switchboard", now)
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(time.Unix(c.NotAfter, 0)); left > time.Minute+time.Second {
		t.Fatalf("the new refresh token outlives the session by %s", left-time.Minute)
	}
	if c.AuthTime != now.Add(-59*time.Minute).Unix() {
		t.Fatalf("auth_time not carried over: %d", c.AuthTime)
	}
	// A login whose session is over cannot refresh, even with a token that has not expired.
	ended := signRefresh(t, f.issuer, refreshClaimsFor("alice", now.Add(-2*time.Hour), now.Add(time.Hour)))
	if _, err := f.login.Refresh(context.Background(), ended); !errors.Is(err, ErrInvalidRefreshToken) {
		t.Fatalf("ended session: err = %v", err)
	}
}

func TestLoadDevIssuerNeverCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if _, err := LoadDevIssuer(dir); !errors.Is(err, ErrNoDevKey) {
		t.Fatalf("missing directory: err = %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadDevIssuer created %s", dir)
	}
	created, err := OpenDevIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadDevIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.KeyID() != created.KeyID() || loaded.KeyID() == "" {
		t.Fatalf("key ids %q and %q", loaded.KeyID(), created.KeyID())
	}
	if err := os.WriteFile(filepath.Join(dir, DevKeyFile), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadDevIssuer(dir); err == nil || errors.Is(err, ErrNoDevKey) {
		t.Fatalf("a broken key: err = %v", err)
	}
}
