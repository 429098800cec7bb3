package auth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jws"

	"switchboard/transport/auth/oidctest"
)

// mapClaims is the claim validation Verify had before it read only the claims it uses:
// json.Unmarshal of the whole payload into a map[string]any, then the same checks. It is
// the reference claims must agree with on any payload, to the error text.
func mapClaims(v *Verifier, payload []byte, now time.Time) (Claims, timeClaims, error) {
	var raw map[string]any
	if err := json.Unmarshal(payload, &raw); err != nil || raw == nil {
		return Claims{}, timeClaims{}, fail(ErrMalformedToken, "claims are not a JSON object")
	}
	stringClaim := func(name string) (string, bool) {
		switch s := raw[name].(type) {
		case nil:
			return "", true
		case string:
			return s, true
		default:
			return "", false
		}
	}
	numericDate := func(name string) (int64, bool) {
		v, ok := raw[name]
		if !ok {
			return 0, true
		}
		f, ok := v.(float64)
		if !ok {
			return 0, false
		}
		var n int64
		for _, d := range strconv.AppendFloat(nil, f, 'f', 9, 64) {
			if d == '.' {
				break
			}
			if d < '0' || d > '9' || n > (math.MaxInt64-int64(d-'0'))/10 {
				return 0, false
			}
			n = n*10 + int64(d-'0')
		}
		return n, true
	}
	iss, okIss := stringClaim("iss")
	sub, okSub := stringClaim("sub")
	_, okJTI := stringClaim("jti")
	inAud, okAud := false, true
	switch aud := raw["aud"].(type) {
	case nil:
		_, present := raw["aud"]
		okAud = !present
	case string:
		inAud = aud == v.cfg.ClientID
	case []any:
		for _, e := range aud {
			s, ok := e.(string)
			if !ok {
				inAud, okAud = false, false
				break
			}
			inAud = inAud || s == v.cfg.ClientID
		}
	default:
		okAud = false
	}
	var times timeClaims
	var okExp, okNbf, okIat bool
	times.exp, okExp = numericDate("exp")
	times.nbf, okNbf = numericDate("nbf")
	times.iat, okIat = numericDate("iat")
	if !okIss || !okSub || !okJTI || !okAud || !okExp || !okNbf || !okIat {
		return Claims{}, timeClaims{}, fail(ErrMalformedToken, "invalid registered claims")
	}
	if times.exp <= 0 {
		return Claims{}, timeClaims{}, fail(ErrMalformedToken, "token has no expiry")
	}
	if err := times.check(now, v.cfg.Leeway); err != nil {
		return Claims{}, timeClaims{}, err
	}
	if iss != v.cfg.Issuer {
		return Claims{}, timeClaims{}, fail(ErrInvalidIssuer, "")
	}
	azp, _ := raw["azp"].(string)
	if !inAud && azp != v.cfg.ClientID {
		return Claims{}, timeClaims{}, fail(ErrInvalidAudience, "")
	}
	if typ, ok := raw["typ"].(string); ok && !strings.EqualFold(typ, "Bearer") {
		return Claims{}, timeClaims{}, fail(ErrMalformedToken, "not an access token")
	}
	if sub == "" {
		return Claims{}, timeClaims{}, fail(ErrMalformedToken, "token has no subject")
	}
	username, _ := raw["preferred_username"].(string)
	if username == "" {
		username = sub
	}
	return Claims{Subject: sub, Username: username, Roles: legacyRolesAt(raw, v.rolePaths),
		ExpiresAt: time.Unix(times.exp, 0).UTC()}, times, nil
}

// claimsPathsVerifier is claimsVerifier with role paths that also lead through registered
// claims and nested objects.
func claimsPathsVerifier(t testing.TB) *Verifier {
	t.Helper()
	cfg, paths, err := Config{Issuer: "https://idp.example/realms/x", ClientID: "switchboard",
		RoleClaimPaths: []string{"realm_access.roles", "resource_access.{client_id}.roles", "groups", "aud", "a.b.c.d"}}.normalized()
	if err != nil {
		t.Fatal(err)
	}
	return &Verifier{cfg: cfg, rolePaths: paths}
}

func compareWithMapClaims(t *testing.T, v *Verifier, payload []byte, now time.Time) {
	t.Helper()
	want, wantTimes, wantErr := mapClaims(v, payload, now)
	got, gotTimes, gotErr := v.claims(payload, now)
	if (wantErr == nil) != (gotErr == nil) || wantErr != nil && wantErr.Error() != gotErr.Error() {
		t.Fatalf("%q:\ngot  %v\nwant %v", payload, gotErr, wantErr)
	}
	if wantErr != nil {
		return
	}
	if got.Subject != want.Subject || got.Username != want.Username || !slices.Equal(got.Roles, want.Roles) ||
		got.Roles == nil || cap(got.Roles) != len(got.Roles) || !got.ExpiresAt.Equal(want.ExpiresAt) ||
		got.ExpiresAt.Location() != want.ExpiresAt.Location() || gotTimes != wantTimes {
		t.Fatalf("%q:\ngot  %+v %+v\nwant %+v %+v", payload, got, gotTimes, want, wantTimes)
	}
}

// claimsSeeds are payloads for the comparison with mapClaims: the shapes of real tokens,
// and the corners of JSON (escapes, invalid UTF-8, repeated names, numbers beyond float64,
// nesting, whitespace) in the places claims reads and in those it skips.
func claimsSeeds(now time.Time) []string {
	exp := fmt.Sprint(now.Unix() + 300)
	iat := fmt.Sprint(now.Unix())
	base := `"iss":"https://idp.example/realms/x","sub":"u-1","exp":` + exp + `,"iat":` + iat + `,"aud":"switchboard"`
	return []string{
		`{` + base + `}`,
		`{` + base + `,"typ":"Bearer","azp":"switchboard","preferred_username":"alice","realm_access":{"roles":["b","a","b",""]},` +
			`"resource_access":{"switchboard":{"roles":["c"]},"other":{"roles":["x"]}},"scope":"openid email","email_verified":true,` +
			`"sid":"0b5c","allowed-origins":["*"],"acr":"1","session_state":null,"name":"Alice A."}`,
		` { ` + base + ` , "groups" : [ "g1" , 7 , null , "g2" ] } `,
		"{\n\t" + base + ",\r\n\"groups\":[\"g\"]}\n",
		`{` + base + `,"sub":"u-2"}`,
		`{"sub":"u-0",` + base + `}`,
		`{` + base + `,"s\u0075b":"escaped-name"}`,
		`{` + base + `,"sub":"\u00e9\ud83d\ude00\n\"\\\/"}`,
		`{` + base + `,"sub":"lone \ud800 surrogate"}`,
		"{" + base + ",\"sub\":\"bad \xff utf8\",\"preferred_username\":\"\xc3\x28\"}",
		"{" + base + ",\"s\xffb\":\"x\",\"groups\":[\"\xfe\"]}",
		`{` + base + `,"preferred_username":""}`,
		`{` + base + `,"preferred_username":7}`,
		`{` + base + `,"typ":"BEARER"}`,
		`{` + base + `,"typ":"ID"}`,
		`{` + base + `,"typ":null}`,
		`{` + base + `,"typ":"Be\u0061rer"}`,
		`{` + base + `,"aud":["account","switchboard"]}`,
		`{` + base + `,"aud":["account"],"azp":"switchboard"}`,
		`{` + base + `,"aud":["switchboard",null]}`,
		`{` + base + `,"aud":null}`,
		`{` + base + `,"aud":{"switchboard":1}}`,
		`{` + base + `,"aud":"switch\u0062oard"}`,
		`{` + base + `,"unused":1e400}`,
		`{` + base + `,"unused":[{"deep":[-1E+999]}]}`,
		`{` + base + `,"unused":1e-400,"also":-0.0e0}`,
		`{` + base + `,"unused":` + strings.Repeat("9", 310) + `}`,
		`{` + base + `,"unused":` + strings.Repeat("9", 300) + `}`,
		`{` + base + `,"unused":"1e400"}`,
		`{` + base + `,"exp":1e400,"exp":` + exp + `}`,
		`{` + base + `,"exp":` + exp + `.5}`,
		`{` + base + `,"exp":` + exp + `e0}`,
		`{` + base + `,"exp":"` + exp + `"}`,
		`{` + base + `,"exp":9007199254740993}`,
		`{` + base + `,"exp":123456789012345}`,
		`{` + base + `,"exp":1234567890123456}`,
		`{` + base + `,"exp":-0}`,
		`{` + base + `,"exp":0}`,
		`{` + base + `,"nbf":null}`,
		`{` + base + `,"iat":true}`,
		`{` + base + `,"jti":["j"]}`,
		`{` + base + `,"a":{"b":{"c":{"d":["deep"]}}}}`,
		`{` + base + `,"a":{"b":{"c":{"d":["first"],"d":["last"]}}}}`,
		`{` + base + `,"a":{"b":[{"c":{"d":["in array"]}}]}}`,
		`{` + base + `,"a":{"b":{"c":"not an object"}}}`,
		`{` + base + `,"realm_access":{"roles":["r1"]},"realm_access":{"roles":["r2"]}}`,
		`{` + base + `,"realm_access":{"roles":"r"}}`,
		`{` + base + `,"realm_access":{"rol\u0065s":["escaped"]}}`,
		`{` + base + `,"realm_access":["roles"]}`,
		`{` + base + `,"groups":[["nested"],{"x":"y"},"ok"]}`,
		`{` + base + `,"groups":[]}`,
		`{` + base + `,"groups":{}}`,
		`{` + base + `,"x":"a \" quote , : { [ and } ] inside"}`,
		`{` + base + `,"x":"\\","y":"\\\"","groups":["after escapes"]}`,
		`{}`, `null`, `[]`, `7`, `"x"`, `true`, `{`, `{} x`, ``, `{"a":1,}`, `{"a" 1}`, `{'a':1}`,
		`{"exp":` + exp + `}`,
	}
}

// TestClaimsMatchMapDecode compares claims with the whole-payload map decoding it replaced.
func TestClaimsMatchMapDecode(t *testing.T) {
	now := time.Now()
	for _, leeway := range []time.Duration{0, 5 * time.Second} {
		for _, v := range []*Verifier{claimsVerifier(t, leeway), claimsPathsVerifier(t)} {
			for _, p := range claimsSeeds(now) {
				compareWithMapClaims(t, v, []byte(p), now)
			}
		}
	}
}

// FuzzClaimsMatchMapDecode extends TestClaimsMatchMapDecode to arbitrary payloads.
func FuzzClaimsMatchMapDecode(f *testing.F) {
	now := time.Now()
	for _, p := range claimsSeeds(now) {
		f.Add([]byte(p))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		compareWithMapClaims(t, claimsPathsVerifier(t), payload, now)
	})
}

// legacyParse is what Verify read from a token with jws.Parse.
func legacyParse(token string) (alg, kid string, input, payload, sig []byte, err error) {
	msg, err := jws.Parse([]byte(token), jws.WithCompact())
	if err != nil || len(msg.Signatures()) != 1 {
		return "", "", nil, nil, nil, errors.New("undecodable")
	}
	s := msg.Signatures()[0]
	return s.ProtectedHeaders().Algorithm().String(), s.ProtectedHeaders().KeyID(),
		[]byte(token[:strings.LastIndexByte(token, '.')]), msg.Payload(), s.Signature(), nil
}

// compareWithJWSParse checks parseCompact against jws.Parse. parseCompact refuses two
// things jws.Parse took: segments in another base64 spelling than RFC 7515's, and a "b64"
// header other than true.
func compareWithJWSParse(t *testing.T, token string) {
	t.Helper()
	if strings.Count(token, ".") != 2 {
		return // Verify rejects it before parsing
	}
	alg, kid, input, payload, sig, wantErr := legacyParse(token)
	got, gotErr := parseCompact(token)
	switch {
	case wantErr != nil && gotErr != nil:
	case wantErr != nil:
		t.Fatalf("%q: parseCompact took what jws.Parse refused: %+v", token, got)
	case gotErr != nil:
		if strings.ContainsAny(token, "=+/") {
			return // another base64 spelling
		}
		hdr, err := base64.RawURLEncoding.DecodeString(token[:strings.IndexByte(token, '.')])
		if err == nil && bytes.Contains(hdr, []byte("b64")) {
			return // possibly "b64", under its name or escaped
		}
		t.Fatalf("%q: parseCompact refused what jws.Parse took: %v", token, gotErr)
	default:
		if string(got.alg) != alg || got.kid != kid || !bytes.Equal(got.input, input) ||
			!bytes.Equal(got.payload, payload) || !bytes.Equal(got.signature, sig) {
			t.Fatalf("%q:\ngot  %q %q %q %q %q\nwant %q %q %q %q %q", token,
				got.alg, got.kid, got.input, got.payload, got.signature, alg, kid, input, payload, sig)
		}
	}
}

// headerSeeds are protected headers for the comparison with jws.Parse.
var headerSeeds = []string{
	`{"alg":"RS256","typ":"JWT","kid":"k1"}`,
	`{"alg":"RS256"}`, `{}`, `{"kid":"k"}`,
	`{"alg":"none"}`, `{"alg":""}`, `{"alg":null}`, `{"alg":7}`, `{"alg":"XX999"}`, `{"alg":["RS256"]}`,
	`{"alg":"RS256","alg":"none"}`, `{"alg":"none","alg":"RS256"}`, `{"ALG":"none","alg":"RS256"}`,
	`{"alg":"RS256","kid":null}`, `{"alg":"RS256","kid":7}`, `{"alg":"RS256","kid":7,"kid":"k"}`,
	`{"alg":"RS256","k\u0069d":"escaped name"}`, `{"\u0061lg":"RS256"}`, `{"alg":"RS\u0032\u0035\u0036"}`,
	`{"alg":"RS256","kid":"\u00e9\n"}`, "{\"alg\":\"RS256\",\"kid\":\"\xff\"}",
	`{"alg":"RS256","typ":null}`, `{"alg":"RS256","typ":1}`, `{"alg":"RS256","cty":{}}`,
	`{"alg":"RS256","jku":"https://x"}`, `{"alg":"RS256","x5u":true}`, `{"alg":"RS256","x5t":"t"}`,
	`{"alg":"RS256","x5t#S256":[]}`,
	`{"alg":"RS256","crit":["exp"]}`, `{"alg":"RS256","crit":"exp"}`, `{"alg":"RS256","crit":[7]}`,
	`{"alg":"RS256","crit":[null]}`, `{"alg":"RS256","crit":null}`,
	`{"alg":"RS256","x5c":["MIIB"]}`, `{"alg":"RS256","x5c":[1]}`, `{"alg":"RS256","x5c":null}`, `{"alg":"RS256","x5c":"c"}`,
	`{"alg":"RS256","jwk":{"kty":"oct","k":"AAAA"}}`, `{"alg":"RS256","jwk":{"kty":"nope"}}`, `{"alg":"RS256","jwk":null}`,
	`{"alg":"RS256","jwk":"x"}`,
	`{"alg":"RS256","b64":true}`, `{"alg":"RS256","b64":false}`, `{"alg":"RS256","b64":"no"}`,
	`{"alg":"RS256","nonce":"n","x-custom":{"a":[1,2,{"b":null}]}}`, `{"alg":"RS256","x":1e400}`,
	`{"alg":"RS256","x":[1E999]}`, `{"alg":"RS256","x":1e-999}`,
	` {"alg" : "RS256" } `, `{"alg":"RS256"} x`, `{"alg":"RS256",}`, `null`, `[]`, `"alg"`, `7`, ``, `{`,
}

func TestParseCompactMatchesJWSParse(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	payloads := []string{`{"sub":"u"}`, ``, `not json`, "\x00\xff"}
	for _, h := range headerSeeds {
		for _, p := range payloads {
			compareWithJWSParse(t, enc([]byte(h))+"."+enc([]byte(p))+"."+enc([]byte("signature")))
		}
	}
	for _, tok := range []string{
		"..", "a.b.c", "e30.e30.", "e30.e30.AA", "e30.e30.A", "e30.e30.AAA=", "e30=.e30.AA", "e30.e30=.AA",
		"e30.e3+.AA", "e30.e30.A/", "e30.e30.A-_", "e30.\ne30.AA", "e30.e30.AA\r\n", "e30.e 30.AA",
		enc([]byte(`{"alg":"RS256"}`)) + ".." + enc([]byte("s")),
	} {
		compareWithJWSParse(t, tok)
	}
}

// FuzzParseCompactMatchesJWSParse extends TestParseCompactMatchesJWSParse to arbitrary
// headers (encoded) and tokens (as they are).
func FuzzParseCompactMatchesJWSParse(f *testing.F) {
	for _, h := range headerSeeds {
		f.Add(h, "e30.e30.AA")
	}
	f.Add(`{"alg":"RS256"}`, "e30=.e30.AA")
	f.Fuzz(func(t *testing.T, header, token string) {
		enc := base64.RawURLEncoding.EncodeToString
		compareWithJWSParse(t, enc([]byte(header))+".e30."+enc([]byte(token)))
		compareWithJWSParse(t, token)
	})
}

// A token is base64url without padding, as RFC 7515 spells it: the other spellings jws.Parse
// guessed at are malformed, as is a header asking for an unencoded payload (RFC 7797).
func TestVerifyRefusesOtherEncodings(t *testing.T) {
	iss := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL()})
	ctx := context.Background()
	tok := iss.Token(t, oidctest.TokenClaims{Extra: map[string]any{"x": "~~~~~~~~~~~~"}}) // "~~~" is "fn5-"
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	segs := strings.Split(tok, ".")
	std := strings.NewReplacer("-", "+", "_", "/").Replace(segs[1])
	if std == segs[1] {
		t.Fatalf("payload %q has no character of its own in base64url", segs[1])
	}
	hdr, _ := base64.RawURLEncoding.DecodeString(segs[0])
	var h map[string]any
	_ = json.Unmarshal(hdr, &h)
	h["b64"] = false
	b64Hdr, _ := json.Marshal(h)
	for name, bad := range map[string]string{
		"padded header":           segs[0] + "=." + segs[1] + "." + segs[2],
		"padded signature":        segs[0] + "." + segs[1] + "." + segs[2] + "=",
		"standard alphabet":       segs[0] + "." + std + "." + segs[2],
		"unencoded payload (b64)": base64.RawURLEncoding.EncodeToString(b64Hdr) + "." + segs[1] + "." + segs[2],
	} {
		_, err := v.Verify(ctx, bad)
		checkErr(t, err, ErrMalformedToken, bad)
		if !strings.Contains(err.Error(), "undecodable token") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// keycloakLikeClaims makes a token of the size and shape of a Keycloak access token (about
// 1.3 KB): most of its claims are never read by Verify.
func keycloakLikeClaims(i int) oidctest.TokenClaims {
	return oidctest.TokenClaims{
		Subject:     fmt.Sprintf("3f1c2d4e-5a6b-4c7d-8e9f-%012d", i),
		Username:    fmt.Sprintf("user-%d", i),
		AZP:         "switchboard",
		Audience:    []string{"switchboard", "account"},
		RealmRoles:  []string{"offline_access", "uma_authorization", "default-roles-switchboard", "get-authors"},
		ClientRoles: map[string][]string{"switchboard": {"create-author", "broadcast"}, "account": {"manage-account", "manage-account-links", "view-profile"}},
		Extra: map[string]any{
			"auth_time": 1700000000, "session_state": "9b1f0c3e-3c1a-4f6e-9d2b-5a7c8e9f0a1b", "acr": "1",
			"sid": "9b1f0c3e-3c1a-4f6e-9d2b-5a7c8e9f0a1b", "scope": "openid profile email",
			"allowed-origins": []string{"https://switchboard.example"}, "email_verified": true,
			"name": "Some User", "given_name": "Some", "family_name": "User",
			"email": fmt.Sprintf("user-%d@example.com", i),
		},
	}
}

// A cached token holds its Claims and little else: neither the token nor its other claims.
func TestTokenCacheEntryMemory(t *testing.T) {
	const n = 256
	iss := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL()})
	ctx := context.Background()
	toks := make([]string, n)
	for i := range toks {
		toks[i] = iss.Token(t, keycloakLikeClaims(i))
	}
	perEntry := func() float64 {
		if _, err := v.Verify(ctx, toks[0]); err != nil { // keys loaded, map allocated
			t.Fatal(err)
		}
		v.keys.Load().tokens.clear()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for _, tok := range toks {
			if _, err := v.Verify(ctx, tok); err != nil {
				t.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if got := v.keys.Load().tokens.size(); got != n {
			t.Fatalf("%d cached tokens, want %d", got, n)
		}
		return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
	}
	per := min(perEntry(), perEntry()) // the least disturbed by other goroutines' garbage
	t.Logf("%.0f bytes per cached token of %d bytes", per, len(toks[0]))
	// About 400 bytes here (4.5 KB more before the cache kept only the Claims): the bound
	// leaves room for the garbage of other goroutines.
	if per > 1024 {
		t.Errorf("%.0f bytes per cached token, want at most 1024", per)
	}
	runtime.KeepAlive(toks)
}
