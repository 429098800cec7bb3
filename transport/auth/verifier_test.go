package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"go.uber.org/goleak"

	"switchboard/transport/auth/oidctest"
)

var sentinels = []error{
	ErrMissingToken, ErrTokenExpired, ErrTokenNotYetValid, ErrInvalidSignature,
	ErrInvalidIssuer, ErrInvalidAudience, ErrMalformedToken, ErrKeysUnavailable,
}

func newVerifier(t *testing.T, cfg Config) *Verifier {
	t.Helper()
	if cfg.ClientID == "" {
		cfg.ClientID = oidctest.DefaultClientID
	}
	v, err := NewVerifier(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

// checkErr asserts err wraps want and exactly one sentinel, and does not leak the token.
func checkErr(t *testing.T, err, want error, token string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	n := 0
	for _, s := range sentinels {
		if errors.Is(err, s) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("err %q wraps %d sentinels, want 1", err, n)
	}
	for _, part := range strings.Split(token, ".") {
		if len(part) > 8 && strings.Contains(err.Error(), part) {
			t.Fatalf("error text %q contains part of the token", err)
		}
	}
}

func TestVerifyTable(t *testing.T) {
	iss := oidctest.New(t)
	other := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL(), Leeway: 5 * time.Second})
	now := time.Now()
	valid := iss.Token(t, oidctest.TokenClaims{})
	segs := strings.Split(valid, ".")
	forgedPayload := base64.RawURLEncoding.EncodeToString(
		[]byte(fmt.Sprintf(`{"sub":"admin","iss":%q,"aud":"switchboard","exp":%d,"realm_access":{"roles":["admin"]}}`, iss.URL(), now.Add(time.Hour).Unix())))
	// Change one character of the signature to another valid base64url character, so the token
	// stays well-formed and only the signature is wrong (flipping a bit could yield a character
	// outside the alphabet, which is a malformed token instead).
	sig := []byte(segs[2])
	if sig[10] == 'A' {
		sig[10] = 'B'
	} else {
		sig[10] = 'A'
	}

	cases := []struct {
		name   string
		claims *oidctest.TokenClaims
		token  string // used when claims is nil
		want   error
		check  func(t *testing.T, c *Claims)
	}{
		{name: "valid", claims: &oidctest.TokenClaims{Subject: "u-1", Username: "alice", RealmRoles: []string{"get-authors"}},
			check: func(t *testing.T, c *Claims) {
				if c.Subject != "u-1" || c.Username != "alice" || !slices.Equal(c.Roles, []string{"get-authors"}) {
					t.Fatalf("claims = %+v", c)
				}
				if d := time.Until(c.ExpiresAt); d < 4*time.Minute || d > 6*time.Minute {
					t.Fatalf("ExpiresAt in %s", d)
				}
			}},
		{name: "username falls back to sub", claims: &oidctest.TokenClaims{Subject: "u-2"},
			check: func(t *testing.T, c *Claims) {
				if c.Username != "u-2" || c.Roles == nil || len(c.Roles) != 0 {
					t.Fatalf("claims = %+v", c)
				}
			}},
		{name: "expired", claims: &oidctest.TokenClaims{ExpiresAt: now.Add(-time.Minute)}, want: ErrTokenExpired},
		{name: "expired within leeway", claims: &oidctest.TokenClaims{ExpiresAt: now.Add(-2 * time.Second)}},
		{name: "no exp", claims: &oidctest.TokenClaims{NoExpiry: true}, want: ErrMalformedToken},
		{name: "exp zero", claims: &oidctest.TokenClaims{Extra: map[string]any{"exp": 0}}, want: ErrMalformedToken},
		{name: "not yet valid", claims: &oidctest.TokenClaims{NotBefore: now.Add(time.Minute)}, want: ErrTokenNotYetValid},
		{name: "nbf within leeway", claims: &oidctest.TokenClaims{NotBefore: now.Add(2 * time.Second)}},
		{name: "issued in the future", claims: &oidctest.TokenClaims{IssuedAt: now.Add(time.Minute)}, want: ErrTokenNotYetValid},
		{name: "wrong issuer", claims: &oidctest.TokenClaims{Issuer: iss.URL() + "-other"}, want: ErrInvalidIssuer},
		{name: "audience of another client", claims: &oidctest.TokenClaims{Audience: []string{"other-client"}}, want: ErrInvalidAudience},
		{name: "azp of another client", claims: &oidctest.TokenClaims{Audience: []string{"account"}, AZP: "other-client"}, want: ErrInvalidAudience},
		{name: "azp only (Keycloak default aud account)", claims: &oidctest.TokenClaims{Audience: []string{"account"}, AZP: "switchboard"}},
		{name: "no aud, azp", claims: &oidctest.TokenClaims{Audience: []string{}, AZP: "switchboard"}},
		{name: "aud among several", claims: &oidctest.TokenClaims{Audience: []string{"account", "switchboard"}}},
		{name: "ID token is not an access token", claims: &oidctest.TokenClaims{Extra: map[string]any{"typ": "ID"}}, want: ErrMalformedToken},
		{name: "no subject", claims: &oidctest.TokenClaims{Extra: map[string]any{"sub": ""}}, want: ErrMalformedToken},
		{name: "alg none", claims: &oidctest.TokenClaims{Alg: "none"}, want: ErrInvalidSignature},
		{name: "alg none without kid", claims: &oidctest.TokenClaims{Alg: "none", NoKeyID: true}, want: ErrInvalidSignature},
		{name: "HS256 keyed with the RSA public key", claims: &oidctest.TokenClaims{Alg: "HS256"}, want: ErrInvalidSignature},
		{name: "HS256 keyed with the RSA public key, no kid", claims: &oidctest.TokenClaims{Alg: "HS256", NoKeyID: true}, want: ErrInvalidSignature},
		{name: "RS512 with an RS256 key", claims: &oidctest.TokenClaims{Alg: "RS512"}, want: ErrInvalidSignature},
		{name: "no kid, single key in set", claims: &oidctest.TokenClaims{NoKeyID: true}},
		{name: "other client's role does not count", claims: &oidctest.TokenClaims{ClientRoles: map[string][]string{"other-client": {"admin"}}},
			check: func(t *testing.T, c *Claims) {
				if len(c.Roles) != 0 {
					t.Fatalf("roles = %v, want none", c.Roles)
				}
			}},
		{name: "realm and own client roles merged", claims: &oidctest.TokenClaims{
			RealmRoles:  []string{"get-authors", "broadcast"},
			ClientRoles: map[string][]string{"switchboard": {"create-author", "get-authors"}, "other-client": {"admin"}}},
			check: func(t *testing.T, c *Claims) {
				if want := []string{"broadcast", "create-author", "get-authors"}; !slices.Equal(c.Roles, want) {
					t.Fatalf("roles = %v, want %v", c.Roles, want)
				}
			}},
		{name: "roles of wrong type ignored", claims: &oidctest.TokenClaims{Extra: map[string]any{"realm_access": map[string]any{"roles": []any{"ok", 7, nil}}}},
			check: func(t *testing.T, c *Claims) {
				if !slices.Equal(c.Roles, []string{"ok"}) {
					t.Fatalf("roles = %v", c.Roles)
				}
			}},
		{name: "signed by another issuer's key under our kid", token: other.Token(t, oidctest.TokenClaims{Issuer: iss.URL(), KeyID: iss.KeyID()}), want: ErrInvalidSignature},
		{name: "tampered payload", token: segs[0] + "." + forgedPayload + "." + segs[2], want: ErrInvalidSignature},
		{name: "bad signature", token: segs[0] + "." + segs[1] + "." + string(sig), want: ErrInvalidSignature},
		{name: "missing", token: "", want: ErrMissingToken},
		{name: "garbage", token: "not-a-jwt", want: ErrMalformedToken},
		{name: "three garbage segments", token: "a.b.c", want: ErrMalformedToken},
		{name: "JWE-shaped", token: "a.b.c.d.e", want: ErrMalformedToken},
		{name: "oversized", token: segs[0] + "." + strings.Repeat("A", maxTokenBytes) + "." + segs[2], want: ErrMalformedToken},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.token
			if tc.claims != nil {
				tok = iss.Token(t, *tc.claims)
			}
			c, err := v.Verify(context.Background(), tok)
			if tc.want != nil {
				checkErr(t, err, tc.want, tok)
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
	if got := iss.JWKSFetches(); got != 1 {
		t.Errorf("JWKS fetched %d times for the whole table, want 1", got)
	}
}

func TestKeysWithoutAlgAreInferred(t *testing.T) {
	iss := oidctest.New(t, oidctest.WithoutKeyAlg())
	v := newVerifier(t, Config{Issuer: iss.URL()})
	if _, err := v.Verify(context.Background(), iss.Token(t, oidctest.TokenClaims{})); err != nil {
		t.Fatalf("RS256 with an alg-less RSA key: %v", err)
	}
	for _, alg := range []string{"HS256", "RS384", "none"} {
		tok := iss.Token(t, oidctest.TokenClaims{Alg: alg})
		_, err := v.Verify(context.Background(), tok)
		checkErr(t, err, ErrInvalidSignature, tok)
	}
}

func TestTokenWithoutKidNeedsSingleKey(t *testing.T) {
	iss := oidctest.New(t)
	iss.RotateKey()
	v := newVerifier(t, Config{Issuer: iss.URL()})
	tok := iss.Token(t, oidctest.TokenClaims{NoKeyID: true})
	_, err := v.Verify(context.Background(), tok)
	checkErr(t, err, ErrInvalidSignature, tok)
}

func TestKeyRotation(t *testing.T) {
	iss := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL(), MinRefreshInterval: time.Nanosecond})
	ctx := context.Background()
	kid1 := iss.KeyID()
	tok1 := iss.Token(t, oidctest.TokenClaims{})
	if _, err := v.Verify(ctx, tok1); err != nil {
		t.Fatalf("key 1: %v", err)
	}

	iss.RotateKey()
	tok2 := iss.Token(t, oidctest.TokenClaims{})
	if _, err := v.Verify(ctx, tok2); err != nil {
		t.Fatalf("key 2 after rotation (unknown kid must refresh): %v", err)
	}
	if _, err := v.Verify(ctx, tok1); err != nil {
		t.Fatalf("key 1 while still published: %v", err)
	}

	iss.RemoveKey(kid1)
	iss.RotateKey() // a token with a new kid makes the verifier refresh
	if _, err := v.Verify(ctx, iss.Token(t, oidctest.TokenClaims{})); err != nil {
		t.Fatalf("key 3: %v", err)
	}
	_, err := v.Verify(ctx, tok1)
	checkErr(t, err, ErrInvalidSignature, tok1)
	if _, err := v.Verify(ctx, tok2); err != nil {
		t.Fatalf("key 2 still published: %v", err)
	}
}

func TestUnknownKidFloodIsThrottled(t *testing.T) {
	iss := oidctest.New(t)
	const interval = time.Second
	v := newVerifier(t, Config{Issuer: iss.URL(), MinRefreshInterval: interval})
	ctx := context.Background()
	forged := make([]string, 200)
	for i := range forged {
		forged[i] = iss.Token(t, oidctest.TokenClaims{KeyID: fmt.Sprintf("forged-%d-%d", i, time.Now().UnixNano())})
	}
	flood := func() {
		var wg sync.WaitGroup
		for _, tok := range forged {
			wg.Go(func() {
				_, err := v.Verify(ctx, tok)
				if !errors.Is(err, ErrInvalidSignature) {
					t.Errorf("forged kid: err = %v, want ErrInvalidSignature", err)
				}
			})
		}
		wg.Wait()
	}

	start := time.Now()
	flood() // cold verifier: the first load is shared, every unknown kid then throttled
	if n := iss.JWKSFetches(); n < 1 || n > 2 {
		t.Fatalf("first flood: %d JWKS fetches, want 1 (at most 2)", n)
	}
	before := iss.JWKSFetches()
	waitFor(t, "the refresh interval to pass", func() bool { return time.Since(start) > interval+100*time.Millisecond })
	flood()
	if n := iss.JWKSFetches() - before; n < 1 || n > 2 {
		t.Fatalf("second flood: %d JWKS fetches, want 1 (at most 2)", n)
	}
	if _, err := v.Verify(ctx, iss.Token(t, oidctest.TokenClaims{})); err != nil {
		t.Fatalf("a genuine token after the flood: %v", err)
	}
}

func TestIssuerDownAtStart(t *testing.T) {
	iss := oidctest.New(t)
	iss.SetDown(true)
	v := newVerifier(t, Config{Issuer: iss.URL(), MinRefreshInterval: 50 * time.Millisecond})
	ctx := context.Background()
	tok := iss.Token(t, oidctest.TokenClaims{})
	_, err := v.Verify(ctx, tok)
	checkErr(t, err, ErrKeysUnavailable, tok)
	if err := v.Ready(ctx); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("Ready while down = %v, want ErrKeysUnavailable", err)
	}

	iss.SetDown(false)
	waitFor(t, "verification to recover", func() bool {
		_, err := v.Verify(ctx, tok)
		return err == nil
	})
	if err := v.Ready(ctx); err != nil {
		t.Fatalf("Ready after recovery: %v", err)
	}

	// Down again: loaded keys keep working; an unknown kid cannot be resolved.
	iss.SetDown(true)
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("cached keys while issuer down: %v", err)
	}
	iss.RotateKey()
	waitFor(t, "the refresh interval to pass", func() bool {
		_, err := v.Verify(ctx, iss.Token(t, oidctest.TokenClaims{}))
		return errors.Is(err, ErrKeysUnavailable)
	})
}

func TestDiscoveryIssuerMismatch(t *testing.T) {
	iss := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL() + "/"}) // discovery says URL() without "/"
	if err := v.Ready(context.Background()); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("Ready = %v, want ErrKeysUnavailable", err)
	}
}

func TestConcurrentVerify(t *testing.T) {
	iss := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL()})
	tok := iss.Token(t, oidctest.TokenClaims{RealmRoles: []string{"r"}})
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if _, err := v.Verify(context.Background(), tok); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
	wg.Wait()
	if n := iss.JWKSFetches(); n != 1 {
		t.Fatalf("%d JWKS fetches for 50 concurrent cold verifications, want 1", n)
	}
}

func TestCustomRoleClaimPaths(t *testing.T) {
	iss := oidctest.New(t, oidctest.WithClientID("my.client"))
	v := newVerifier(t, Config{Issuer: iss.URL(), ClientID: "my.client",
		RoleClaimPaths: []string{"groups", "resource_access.{client_id}.roles"}})
	c, err := v.Verify(context.Background(), iss.Token(t, oidctest.TokenClaims{
		RealmRoles:  []string{"realm-role-ignored"},
		ClientRoles: map[string][]string{"my.client": {"b"}},
		Extra:       map[string]any{"groups": []string{"a", "b"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Roles, []string{"a", "b"}) {
		t.Fatalf("roles = %v", c.Roles)
	}
}

func TestConfigValidation(t *testing.T) {
	d, err := OpenDevIssuer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]Config{
		"no issuer":               {ClientID: "c"},
		"no client":               {Issuer: "https://idp.example/realms/x"},
		"issuer not a URL":        {Issuer: "idp.example", ClientID: "c"},
		"leeway over 30s":         {Issuer: "https://idp.example", ClientID: "c", Leeway: 31 * time.Second},
		"negative leeway":         {Issuer: "https://idp.example", ClientID: "c", Leeway: -time.Second},
		"negative refresh":        {Issuer: "https://idp.example", ClientID: "c", MinRefreshInterval: -time.Second},
		"empty role path segment": {Issuer: "https://idp.example", ClientID: "c", RoleClaimPaths: []string{"a..b"}},
	}
	for name, cfg := range cases {
		if _, err := NewVerifier(context.Background(), cfg); err == nil {
			t.Errorf("%s: NewVerifier succeeded", name)
		}
	}
	// A public JWKS never legitimately holds an HMAC secret: symmetric keys are dropped.
	oct, err := jwk.FromRaw([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	octSet := jwk.NewSet()
	_ = octSet.AddKey(oct)
	if _, err := NewVerifier(context.Background(), Config{Issuer: DevIssuerID, ClientID: "c", KeySet: octSet}); err == nil {
		t.Error("a key set with only a symmetric key was accepted")
	}
	// A URN issuer is fine with a static key set.
	v, err := NewVerifier(context.Background(), Config{Issuer: DevIssuerID, ClientID: "c", KeySet: d.PublicKeySet()})
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	v.Close() // idempotent
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	iss := oidctest.New(t)
	tok := iss.Token(t, oidctest.TokenClaims{})
	opts := goleak.IgnoreCurrent()
	v, err := NewVerifier(context.Background(), Config{Issuer: iss.URL(), ClientID: oidctest.DefaultClientID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	v.Close()
	goleak.VerifyNone(t, opts)
	// Keys already loaded keep verifying after Close; nothing is fetched any more.
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("Verify after Close: %v", err)
	}
}
