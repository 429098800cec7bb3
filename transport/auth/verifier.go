package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// maxTokenBytes bounds the work an unauthenticated caller can cause; real access tokens
// are a few KiB, Keycloak's with hundreds of groups a few tens.
const maxTokenBytes = 64 << 10

// Claims is the verified identity carried by an access token. Verify returns a fresh Claims
// each time, but results for the same token share Roles and Raw (the verified-token cache,
// see the package doc): treat them as read-only. Roles has no spare capacity, so an append
// copies.
type Claims struct {
	Subject   string    // sub
	Username  string    // preferred_username, or sub when absent
	Roles     []string  // from the configured claim paths, deduplicated and sorted
	ExpiresAt time.Time // exp
	Raw       map[string]any
}

// Verifier checks access tokens against an issuer's keys. See the package doc for its
// concurrency contract.
type Verifier struct {
	cfg        Config
	rolePaths  [][]string
	log        *slog.Logger
	keys       atomic.Pointer[keyring] // immutable snapshots; nil until first loaded
	ctx        context.Context         // lifetime of the cache and of fetches; cancelled by Close
	cancel     context.CancelFunc
	fetch      *fetcher
	cache      *jwk.Cache // nil with a static KeySet
	ownedTrans *http.Transport

	mu        sync.Mutex
	closed    bool
	inflight  *flight
	lastStart time.Time // start of the last fetch, for the MinRefreshInterval throttle
	wg        sync.WaitGroup

	// Owned by the single running fetch goroutine (fetches never overlap, and each starts
	// under mu after the previous one has finished under mu).
	jwksURL      string
	cacheStarted bool
}

// NewVerifier validates cfg and returns a Verifier. It does no network I/O: discovery and
// JWKS are fetched on first use (call Ready to warm up) and retried while the issuer is
// down, so it fails only for an invalid configuration.
func NewVerifier(ctx context.Context, cfg Config) (*Verifier, error) {
	_ = ctx // no I/O here; the Verifier's lifetime is bounded by Close, not by ctx
	cfg, paths, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	v := &Verifier{cfg: cfg, rolePaths: paths, log: cfg.Logger}
	v.ctx, v.cancel = context.WithCancel(context.Background())
	if cfg.KeySet != nil {
		kr, err := newKeyring(cfg.KeySet)
		if err != nil {
			v.cancel()
			return nil, fmt.Errorf("auth: KeySet: %w", err)
		}
		v.keys.Store(kr)
		return v, nil
	}
	client := cfg.HTTPClient
	if client == nil {
		v.ownedTrans = http.DefaultTransport.(*http.Transport).Clone()
		v.ownedTrans.DisableKeepAlives = true // a fetch every few minutes: no idle connections to leak
		client = &http.Client{Transport: v.ownedTrans, Timeout: fetchTimeout}
	}
	v.fetch = &fetcher{ctx: v.ctx, client: client}
	v.cache = jwk.NewCache(v.ctx, jwk.WithRefreshWindow(cacheRefreshWindow), jwk.WithErrSink(errSink{v.ctx, v.log}))
	return v, nil
}

// Close stops the key cache and waits for any fetch the Verifier started. Verify keeps
// working with the keys already loaded but never fetches again.
func (v *Verifier) Close() {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return
	}
	v.closed = true
	v.mu.Unlock()
	v.cancel()
	v.wg.Wait()
	if v.ownedTrans != nil {
		v.ownedTrans.CloseIdleConnections()
	}
}

// Ready reports whether signing keys are loaded, loading them if needed (subject to
// MinRefreshInterval). The error wraps ErrKeysUnavailable.
func (v *Verifier) Ready(ctx context.Context) error {
	_, err := v.currentKeys(ctx)
	return err
}

// Verify checks token's signature, times, issuer and audience, and returns its claims.
// Errors wrap exactly one of the package's Err* sentinels and never contain the token.
// The returned Claims may share Roles and Raw with earlier results for the same token (see
// Claims): read them, never modify them.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	if token == "" {
		return nil, fail(ErrMissingToken, "")
	}
	if len(token) > maxTokenBytes || strings.Count(token, ".") != 2 {
		return nil, fail(ErrMalformedToken, "not a compact JWS")
	}
	if kr := v.keys.Load(); kr != nil {
		if c, ok := kr.tokens.get(token, time.Now(), v.cfg.Leeway); ok {
			return c, nil
		}
	}
	buf := []byte(token)
	msg, err := jws.Parse(buf, jws.WithCompact())
	if err != nil || len(msg.Signatures()) != 1 {
		return nil, fail(ErrMalformedToken, "undecodable token")
	}
	sig := msg.Signatures()[0]
	hdr := sig.ProtectedHeaders()
	alg := hdr.Algorithm()
	if alg == "" || alg == jwa.NoSignature {
		return nil, fail(ErrInvalidSignature, "unsigned tokens are not accepted")
	}
	keys, kr, err := v.keysFor(ctx, hdr.KeyID(), alg)
	if err != nil {
		return nil, err
	}
	// The token was parsed once: the signature is checked over its signing input as sent
	// (the exact bytes before the last dot, which the issuer signed), with the algorithm of
	// the JWK (equal to the header's, checked in keysFor; the header alone never selects
	// it, so HS256-with-the-public-key cannot verify).
	input := buf[:strings.LastIndexByte(token, '.')]
	verified := false
	for _, k := range keys {
		if k.verifier.Verify(input, sig.Signature(), k.raw) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, fail(ErrInvalidSignature, "")
	}
	now := time.Now()
	c, times, err := v.claims(msg.Payload(), now)
	if err != nil {
		return nil, err
	}
	kr.tokens.put(token, c, times, now)
	out := *c // the cached Claims itself is never handed out
	return &out, nil
}

// claims validates the verified payload, decoded once: times first (so a client can tell
// it must refresh), then issuer and audience. The registered claims are read as the jwx
// jwt package read them (wrong types are malformed), except that a NumericDate must be a
// JSON number, as RFC 7519 says (jwx also took numeric and RFC 3339 strings).
func (v *Verifier) claims(payload []byte, now time.Time) (*Claims, timeClaims, error) {
	var raw map[string]any
	if err := json.Unmarshal(payload, &raw); err != nil || raw == nil {
		return nil, timeClaims{}, fail(ErrMalformedToken, "claims are not a JSON object")
	}
	iss, okIss := stringClaim(raw, "iss")
	sub, okSub := stringClaim(raw, "sub")
	_, okJTI := stringClaim(raw, "jti")
	inAud, okAud := audienceContains(raw, v.cfg.ClientID)
	var times timeClaims
	var okExp, okNbf, okIat bool
	times.exp, okExp = numericDate(raw, "exp")
	times.nbf, okNbf = numericDate(raw, "nbf")
	times.iat, okIat = numericDate(raw, "iat")
	if !okIss || !okSub || !okJTI || !okAud || !okExp || !okNbf || !okIat {
		return nil, timeClaims{}, fail(ErrMalformedToken, "invalid registered claims")
	}
	if times.exp.Unix() <= 0 {
		return nil, timeClaims{}, fail(ErrMalformedToken, "token has no expiry")
	}
	if err := times.check(now, v.cfg.Leeway); err != nil {
		return nil, timeClaims{}, err
	}
	if iss != v.cfg.Issuer {
		return nil, timeClaims{}, fail(ErrInvalidIssuer, "")
	}
	azp, _ := raw["azp"].(string)
	if !inAud && azp != v.cfg.ClientID {
		return nil, timeClaims{}, fail(ErrInvalidAudience, "")
	}
	// Keycloak marks its ID tokens "ID" and access tokens "Bearer": an ID token (same aud and
	// signature) must not pass as an access token. Issuers without "typ" are unaffected.
	if typ, ok := raw["typ"].(string); ok && !strings.EqualFold(typ, "Bearer") {
		return nil, timeClaims{}, fail(ErrMalformedToken, "not an access token")
	}
	if sub == "" {
		return nil, timeClaims{}, fail(ErrMalformedToken, "token has no subject")
	}
	username, _ := raw["preferred_username"].(string)
	if username == "" {
		username = sub
	}
	return &Claims{
		Subject:   sub,
		Username:  username,
		Roles:     rolesAt(raw, v.rolePaths),
		ExpiresAt: times.exp,
		Raw:       raw,
	}, times, nil
}

// timeClaims are a token's exp, nbf and iat; the zero time stands for an absent claim.
type timeClaims struct {
	exp, nbf, iat time.Time
}

// check applies exp, nbf and iat at now with the given leeway, exactly as jwt.Validate with
// jwt.WithAcceptableSkew did: at whole seconds, iat first, a claim at the zero time or the
// Unix epoch counting as absent.
func (tc timeClaims) check(now time.Time, leeway time.Duration) error {
	now = now.Truncate(time.Second)
	present := func(t time.Time) bool { return !t.IsZero() && t.Unix() != 0 }
	switch {
	case present(tc.iat) && now.Before(tc.iat.Add(-leeway)):
		return fail(ErrTokenNotYetValid, "issued in the future")
	case present(tc.exp) && !now.Before(tc.exp.Add(leeway)):
		return fail(ErrTokenExpired, "")
	case present(tc.nbf) && now.Before(tc.nbf.Add(-leeway)):
		return fail(ErrTokenNotYetValid, "")
	}
	return nil
}

// stringClaim reads a string claim; absent and null read as "" (as jwx decoded them), any
// other type is invalid.
func stringClaim(raw map[string]any, name string) (string, bool) {
	switch s := raw[name].(type) {
	case nil:
		return "", true
	case string:
		return s, true
	default:
		return "", false
	}
}

// audienceContains reports whether "aud" (a string or an array of strings; absent is an
// empty audience) names id. Any other type, null included, is invalid.
func audienceContains(raw map[string]any, id string) (found, valid bool) {
	aud, ok := raw["aud"]
	if !ok {
		return false, true
	}
	switch aud := aud.(type) {
	case string:
		return aud == id, true
	case []any:
		for _, e := range aud {
			s, ok := e.(string)
			if !ok {
				return false, false
			}
			found = found || s == id
		}
		return found, true
	default:
		return false, false
	}
}

// numericDate reads a NumericDate claim: absent is the zero time; otherwise it must be a
// JSON number (decoded as float64), read as jwx read it: formatted with %.9f, the part before
// the point parsed as an int64. A negative number (-0 included: its "-" made jwx try RFC 3339)
// or one beyond int64 is invalid.
func numericDate(raw map[string]any, name string) (time.Time, bool) {
	v, ok := raw[name]
	if !ok {
		return time.Time{}, true
	}
	f, ok := v.(float64)
	if !ok {
		return time.Time{}, false
	}
	var buf [48]byte
	var n int64
	for _, d := range strconv.AppendFloat(buf[:0], f, 'f', 9, 64) {
		if d == '.' {
			break
		}
		if d < '0' || d > '9' || n > (math.MaxInt64-int64(d-'0'))/10 {
			return time.Time{}, false
		}
		n = n*10 + int64(d-'0')
	}
	return time.Unix(n, 0).UTC(), true
}

// rolesAt collects the string arrays found at the given paths; anything else is ignored.
func rolesAt(raw map[string]any, paths [][]string) []string {
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
	// Clipped: Claims of a cached token share it, and an append must not write into it.
	return slices.Clip(slices.Compact(roles))
}
