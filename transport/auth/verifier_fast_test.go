package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"switchboard/transport/auth/oidctest"
)

// legacyClaims is the claim validation Verify had before it decoded the claims once: a map
// for the custom claims, jwt.New() and jwt.Validate for the registered ones. It is the
// reference the single decode must agree with.
func legacyClaims(cfg Config, paths [][]string, payload []byte, now time.Time) (*Claims, error) {
	var raw map[string]any
	if err := json.Unmarshal(payload, &raw); err != nil || raw == nil {
		return nil, fail(ErrMalformedToken, "claims are not a JSON object")
	}
	tok := jwt.New()
	if err := json.Unmarshal(payload, tok); err != nil {
		return nil, fail(ErrMalformedToken, "invalid registered claims")
	}
	if exp := tok.Expiration(); exp.Unix() <= 0 {
		return nil, fail(ErrMalformedToken, "token has no expiry")
	}
	err := jwt.Validate(tok, jwt.WithAcceptableSkew(cfg.Leeway), jwt.WithClock(jwt.ClockFunc(func() time.Time { return now })))
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenExpired()):
		return nil, fail(ErrTokenExpired, "")
	case errors.Is(err, jwt.ErrTokenNotYetValid()):
		return nil, fail(ErrTokenNotYetValid, "")
	case errors.Is(err, jwt.ErrInvalidIssuedAt()):
		return nil, fail(ErrTokenNotYetValid, "issued in the future")
	default:
		return nil, fail(ErrMalformedToken, "invalid time claims")
	}
	if tok.Issuer() != cfg.Issuer {
		return nil, fail(ErrInvalidIssuer, "")
	}
	azp, _ := raw["azp"].(string)
	if !slices.Contains(tok.Audience(), cfg.ClientID) && azp != cfg.ClientID {
		return nil, fail(ErrInvalidAudience, "")
	}
	if typ, ok := raw["typ"].(string); ok && !strings.EqualFold(typ, "Bearer") {
		return nil, fail(ErrMalformedToken, "not an access token")
	}
	if tok.Subject() == "" {
		return nil, fail(ErrMalformedToken, "token has no subject")
	}
	username, _ := raw["preferred_username"].(string)
	if username == "" {
		username = tok.Subject()
	}
	return &Claims{Subject: tok.Subject(), Username: username, Roles: legacyRolesAt(raw, paths),
		ExpiresAt: tok.Expiration()}, nil
}

// legacyRolesAt is the role collection Verify had when it decoded the whole payload into a
// map: the string arrays found at the given paths; anything else is ignored.
func legacyRolesAt(raw map[string]any, paths [][]string) []string {
	roles := []string{}
	for _, path := range paths {
		var node any = raw
		for _, seg := range path {
			m, ok := node.(map[string]any)
			if !ok {
				node = nil
				break
			}
			node = m[seg]
		}
		list, _ := node.([]any)
		for _, r := range list {
			if s, ok := r.(string); ok && s != "" {
				roles = append(roles, s)
			}
		}
	}
	slices.Sort(roles)
	return slices.Compact(roles)
}

// claimsVerifier is enough of a Verifier for its claims method.
func claimsVerifier(t testing.TB, leeway time.Duration) *Verifier {
	t.Helper()
	cfg, paths, err := Config{Issuer: "https://idp.example/realms/x", ClientID: oidctest.DefaultClientID, Leeway: leeway}.normalized()
	if err != nil {
		t.Fatal(err)
	}
	return &Verifier{cfg: cfg, rolePaths: paths}
}

var nowRE = regexp.MustCompile(`%now([+-][0-9.e]+)?`)

// claimFragments are the JSON values (or "" for absent) the differential test combines.
var claimFragments = map[string][]string{
	"exp": {"", "null", "0", "-0", "1", "-5", "0.9999999999", "1.5", "%now+300", "%now+300.75", "%now-1", "%now-3",
		"%now-60", "%now+3e0", "1e300", "9223372036854775807", "-9223372036854775808", `"%now+300"`,
		`"2030-01-01T00:00:00Z"`, "true", "[]", "{}"},
	"nbf": {"", "null", "0", "%now-10", "%now", "%now+2", "%now+3", "%now+60", `"1"`, "false"},
	"iat": {"", "null", "0", "-62135596800", "%now", "%now+2", "%now+4", "%now+60", "%now-7200", `"x"`},
	"iss": {"", "null", `"%iss"`, `"%iss/"`, `""`, "7", `["%iss"]`},
	"aud": {"", "null", `"switchboard"`, `"account"`, `[]`, `["account","switchboard"]`, `["switchboard",7]`, `[null]`, "7", `{"a":1}`},
	"azp": {"", "null", `"switchboard"`, `"other"`, "7"},
	"sub": {"", "null", `""`, `"u-1"`, "7", `["u"]`},
	"jti": {"", "null", `"j"`, "7"},
	"typ": {"", `"Bearer"`, `"bearer"`, `"ID"`, "7"},
}

func buildPayload(now time.Time, iss string, vals map[string]string) []byte {
	var parts []string
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range vals {
			if !yield(k) {
				return
			}
		}
	}) {
		v := vals[name]
		if v == "" {
			continue
		}
		v = strings.ReplaceAll(v, "%iss", iss)
		if i := strings.Index(v, "%now"); i >= 0 {
			rest := v[i+len("%now"):]
			end := strings.IndexAny(rest, `"`)
			if end < 0 {
				end = len(rest)
			}
			var off float64
			if rest[:end] != "" {
				_, _ = fmt.Sscanf(rest[:end], "%g", &off)
			}
			num := fmt.Sprintf("%.2f", float64(now.Unix())+off)
			num = strings.TrimSuffix(strings.TrimSuffix(num, ".00"), "0")
			v = v[:i] + num + rest[end:]
		}
		parts = append(parts, fmt.Sprintf("%q:%s", name, v))
	}
	parts = append(parts, `"preferred_username":"alice"`, `"realm_access":{"roles":["b","a","b"]}`)
	return []byte("{" + strings.Join(parts, ",") + "}")
}

// isStringDate reports whether a time claim is a JSON string: jwx accepted numeric and
// RFC 3339 strings there, the single decode (like RFC 7519) only numbers.
func isStringDate(vals map[string]string) bool {
	for _, k := range []string{"exp", "nbf", "iat"} {
		if strings.HasPrefix(vals[k], `"`) {
			return true
		}
	}
	return false
}

func compareClaims(t *testing.T, v *Verifier, payload []byte, now time.Time, stringDate bool) {
	t.Helper()
	want, wantErr := legacyClaims(v.cfg, v.rolePaths, payload, now)
	got, _, gotErr := v.claims(payload, now)
	switch {
	case wantErr == nil && gotErr == nil:
		if got.Subject != want.Subject || got.Username != want.Username || !slices.Equal(got.Roles, want.Roles) ||
			!got.ExpiresAt.Equal(want.ExpiresAt) || got.ExpiresAt.Location() != want.ExpiresAt.Location() {
			t.Fatalf("%s:\ngot  %+v\nwant %+v", payload, got, want)
		}
	case stringDate:
		if !errors.Is(gotErr, ErrMalformedToken) {
			t.Fatalf("%s: string date: err = %v, want ErrMalformedToken", payload, gotErr)
		}
	case wantErr == nil || gotErr == nil || wantErr.Error() != gotErr.Error():
		t.Fatalf("%s:\ngot  %v\nwant %v", payload, gotErr, wantErr)
	}
}

// TestClaimsMatchJWT checks the single decode against the jwt-package validation it
// replaced, over every combination of the fragments of two claims at a time (the others
// valid), with and without leeway.
func TestClaimsMatchJWT(t *testing.T) {
	now := time.Now()
	valid := map[string]string{"exp": "%now+300", "iat": "%now", "iss": `"%iss"`, "aud": `"switchboard"`, "sub": `"u-1"`}
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range claimFragments {
			if !yield(k) {
				return
			}
		}
	})
	for _, leeway := range []time.Duration{0, 5 * time.Second, 1500 * time.Millisecond} {
		v := claimsVerifier(t, leeway)
		n := 0
		for i, a := range names {
			for _, b := range names[i:] {
				for _, fa := range claimFragments[a] {
					for _, fb := range claimFragments[b] {
						vals := map[string]string{}
						for k, x := range valid {
							vals[k] = x
						}
						vals[a], vals[b] = fa, fb
						if a == b && fa != fb {
							continue
						}
						compareClaims(t, v, buildPayload(now, v.cfg.Issuer, vals), now, isStringDate(vals))
						n++
					}
				}
			}
		}
		for _, p := range []string{`null`, `[]`, `7`, `{`, `{"exp":1e400}`, `{} x`, `{"exp":` + fmt.Sprint(now.Unix()+60) + `}`} {
			compareClaims(t, v, []byte(p), now, false)
		}
		t.Logf("leeway %s: %d payloads agree", leeway, n)
	}
}

// FuzzClaimsMatchJWT extends TestClaimsMatchJWT to arbitrary values of the registered claims.
func FuzzClaimsMatchJWT(f *testing.F) {
	f.Add("%now+300", "", "%now", `"%iss"`, `"switchboard"`, `"u-1"`, "", int64(0))
	f.Add("0.9999999999", "null", "-62135596800", `"%iss"`, `["a","switchboard"]`, `""`, `"j"`, int64(5000))
	f.Add("1e19", "%now+3", "%now-3", "7", "[7]", "null", "7", int64(30000))
	f.Fuzz(func(t *testing.T, exp, nbf, iat, iss, aud, sub, jti string, leewayMS int64) {
		vals := map[string]string{"exp": exp, "nbf": nbf, "iat": iat, "iss": iss, "aud": aud, "sub": sub, "jti": jti}
		for _, x := range vals {
			if x != "" && !json.Valid([]byte(nowRE.ReplaceAllString(strings.ReplaceAll(x, "%iss", "i"), "1"))) {
				t.Skip()
			}
		}
		if leewayMS < 0 || leewayMS > MaxLeeway.Milliseconds() {
			t.Skip()
		}
		v := claimsVerifier(t, time.Duration(leewayMS)*time.Millisecond)
		now := time.Now()
		payload := buildPayload(now, v.cfg.Issuer, vals)
		if !json.Valid(payload) {
			t.Skip()
		}
		compareClaims(t, v, payload, now, isStringDate(vals))
	})
}

// The keys' raw form and verifier are resolved once per key set: EC and OKP keys work too,
// and a token still needs the key's own algorithm.
func TestVerifyECAndEdDSA(t *testing.T) {
	ecPriv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set := jwk.NewSet()
	privs := map[string]jwk.Key{}
	for kid, raw := range map[string]any{"ec": ecPriv, "ed": edPriv} {
		priv, err := jwk.FromRaw(raw)
		if err != nil {
			t.Fatal(err)
		}
		_ = priv.Set(jwk.KeyIDKey, kid)
		pub, err := priv.PublicKey()
		if err != nil {
			t.Fatal(err)
		}
		_ = set.AddKey(pub) // no "alg": inferred (ES256, EdDSA)
		privs[kid] = priv
	}
	v := newVerifier(t, Config{Issuer: DevIssuerID, KeySet: set})
	payload := fmt.Appendf(nil, `{"iss":%q,"aud":"switchboard","sub":"u","exp":%d}`, DevIssuerID, time.Now().Add(time.Hour).Unix())
	sign := func(alg jwa.SignatureAlgorithm, kid string) string {
		t.Helper()
		tok, err := jws.Sign(payload, jws.WithKey(alg, privs[kid]))
		if err != nil {
			t.Fatal(err)
		}
		return string(tok)
	}
	for _, tc := range []struct {
		alg  jwa.SignatureAlgorithm
		kid  string
		want error
	}{
		{jwa.ES256, "ec", nil},
		{jwa.EdDSA, "ed", nil},
		{jwa.ES384, "ec", ErrInvalidSignature}, // a P-256 key is ES256 only
	} {
		if tc.alg == jwa.ES384 {
			// Signing ES384 needs a P-384 key: forge the header instead.
			good := sign(jwa.ES256, "ec")
			segs := strings.Split(good, ".")
			hdr, _ := json.Marshal(map[string]string{"alg": "ES384", "kid": "ec"})
			tok := strings.Join([]string{base64.RawURLEncoding.EncodeToString(hdr), segs[1], segs[2]}, ".")
			_, err := v.Verify(context.Background(), tok)
			checkErr(t, err, tc.want, tok)
			continue
		}
		tok := sign(tc.alg, tc.kid)
		for range 2 { // the second from the cache
			if _, err := v.Verify(context.Background(), tok); err != nil {
				t.Fatalf("%s: %v", tc.alg, err)
			}
		}
	}
}

// The signature covers the token as sent: the same header and claims in another base64
// spelling (padding, the standard alphabet) are not the signed bytes.
func TestSignatureCoversTheTokenAsSent(t *testing.T) {
	iss := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL()})
	tok := iss.Token(t, oidctest.TokenClaims{})
	segs := strings.Split(tok, ".")
	for _, variant := range []string{
		segs[0] + "=." + segs[1] + "." + segs[2],
		segs[0] + "." + segs[1] + "==." + segs[2],
	} {
		_, err := v.Verify(context.Background(), variant)
		if err == nil {
			t.Fatalf("a re-spelt token verified")
		}
		if !errors.Is(err, ErrInvalidSignature) && !errors.Is(err, ErrMalformedToken) {
			t.Fatalf("err = %v", err)
		}
	}
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
}

func TestTokenCacheHits(t *testing.T) {
	iss := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL()})
	ctx := context.Background()
	tok := iss.Token(t, oidctest.TokenClaims{Subject: "u-1", Username: "alice", RealmRoles: []string{"b", "a"}})
	c1, err := v.Verify(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if n := v.keys.Load().tokens.size(); n != 1 {
		t.Fatalf("%d cached tokens, want 1", n)
	}
	// A caller changing its Claims (or appending a role) does not change the next result.
	c1.Subject = "mallory"
	c1.Roles = append(c1.Roles, "admin")
	c2, err := v.Verify(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if c2 == c1 || c2.Subject != "u-1" || c2.Username != "alice" || !slices.Equal(c2.Roles, []string{"a", "b"}) {
		t.Fatalf("cached claims = %+v", c2)
	}
	// Failures are not cached; a tampered copy of a cached token is not a hit.
	bad := tok[:len(tok)-4] + "AAAA"
	if bad == tok {
		bad = tok[:len(tok)-4] + "BBBB"
	}
	for range 2 {
		_, err := v.Verify(ctx, bad)
		checkErr(t, err, ErrInvalidSignature, bad)
	}
	if n := v.keys.Load().tokens.size(); n != 1 {
		t.Fatalf("%d cached tokens, want 1", n)
	}
}

func TestTokenCacheRechecksExpiry(t *testing.T) {
	iss := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL()})
	ctx := context.Background()
	// Four seconds leave room for a busy machine between minting and the first two checks.
	tok := iss.Token(t, oidctest.TokenClaims{ExpiresAt: time.Now().Add(4 * time.Second)})
	for range 2 { // the second check is answered from the cache
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := v.keys.Load().tokens.size(); n != 1 {
		t.Fatalf("%d cached tokens, want 1", n)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := v.Verify(ctx, tok)
		if errors.Is(err, ErrTokenExpired) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cached token still verifies 11 s after its expiry (%v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Within the leeway a token verifies, but afresh each time: it is never cached.
	lv := newVerifier(t, Config{Issuer: iss.URL(), Leeway: 10 * time.Second})
	late := iss.Token(t, oidctest.TokenClaims{ExpiresAt: time.Now().Add(-2 * time.Second)})
	if _, err := lv.Verify(ctx, late); err != nil {
		t.Fatal(err)
	}
	if n := lv.keys.Load().tokens.size(); n != 0 {
		t.Fatalf("%d cached tokens, want 0", n)
	}
}

// A cached token answers only for the key set it was verified with: once the issuer has
// dropped its key and the verifier has loaded the new set, it fails at once.
func TestTokenCacheForgetsRemovedKeys(t *testing.T) {
	iss := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL(), MinRefreshInterval: time.Nanosecond})
	ctx := context.Background()
	kid1 := iss.KeyID()
	tok1 := iss.Token(t, oidctest.TokenClaims{})
	for range 3 {
		if _, err := v.Verify(ctx, tok1); err != nil {
			t.Fatal(err)
		}
	}
	iss.RotateKey()
	iss.RemoveKey(kid1)
	if _, err := v.Verify(ctx, iss.Token(t, oidctest.TokenClaims{})); err != nil { // new kid: reload
		t.Fatal(err)
	}
	_, err := v.Verify(ctx, tok1)
	checkErr(t, err, ErrInvalidSignature, tok1)
}

func TestTokenCacheBounded(t *testing.T) {
	c := newTokenCache()
	now := time.Now()
	times := timeClaims{exp: now.Add(time.Hour).Unix()}
	claims := Claims{Subject: "s"}
	for i := range 3 * tokenCacheMaxEntries {
		c.put(tokenKeyOf(fmt.Sprintf("tok-%d", i)), claims, times, now)
		if n := c.size(); n > tokenCacheMaxEntries {
			t.Fatalf("%d entries after %d insertions", n, i+1)
		}
	}
	// What an entry holds beyond its fixed part are the claims' strings: claims with many
	// roles fill the byte bound long before the entry bound.
	big := Claims{Subject: "s", Roles: make([]string, 200)}
	for i := range big.Roles {
		big.Roles[i] = fmt.Sprintf("%0100d", i)
	}
	if n := entrySize(&big); n < tokenCacheMaxBytes/tokenCacheMaxEntries*4 || n > tokenCacheMaxBytes/64 {
		t.Fatalf("entrySize(big) = %d: the test needs big entries that are still cached", n)
	}
	for i := range 2 * tokenCacheMaxBytes / entrySize(&big) {
		c.put(tokenKeyOf(fmt.Sprint(i, "big")), big, times, now)
		c.mu.Lock()
		b := c.bytes
		c.mu.Unlock()
		if b > tokenCacheMaxBytes {
			t.Fatalf("%d bytes cached", b)
		}
	}
	if c.get(tokenKeyOf("0big"), now.Add(tokenCacheTTL), 0) != nil {
		t.Fatal("an entry outlived tokenCacheTTL")
	}
	// Nothing is cached past exp.
	c.clear()
	c.put(tokenKeyOf("short"), claims, timeClaims{exp: now.Add(10 * time.Second).Unix()}, now)
	if c.get(tokenKeyOf("short"), now.Add(9*time.Second), 0) == nil {
		t.Fatal("miss before exp")
	}
	if c.get(tokenKeyOf("short"), now.Add(10*time.Second), time.Minute) != nil {
		t.Fatal("hit at exp")
	}
}
