package auth

import (
	"bytes"
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
)

// maxTokenBytes bounds the work an unauthenticated caller can cause; real access tokens
// are a few KiB, Keycloak's with hundreds of groups a few tens.
const maxTokenBytes = 64 << 10

// Claims is the verified identity carried by an access token. Verify returns a fresh Claims
// each time, but results for the same token share Roles (the verified-token cache, see the
// package doc): treat it as read-only. Roles has no spare capacity, so an append copies.
type Claims struct {
	Subject   string    // sub
	Username  string    // preferred_username, or sub when absent
	Roles     []string  // from the configured claim paths, deduplicated and sorted
	ExpiresAt time.Time // exp
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
// The returned Claims may share Roles with earlier results for the same token (see Claims):
// read it, never modify it.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	c, _, _, err := v.verify(ctx, token)
	return c, err
}

// verify is Verify that also returns the key set snapshot the token was verified with and its
// cache entry (nil when it was not cached).
func (v *Verifier) verify(ctx context.Context, token string) (*Claims, *keyring, *cachedToken, error) {
	if token == "" {
		return nil, nil, nil, fail(ErrMissingToken, "")
	}
	if len(token) > maxTokenBytes || strings.Count(token, ".") != 2 {
		return nil, nil, nil, fail(ErrMalformedToken, "not a compact JWS")
	}
	key := tokenKeyOf(token)
	if kr := v.keys.Load(); kr != nil {
		if e := kr.tokens.get(key, time.Now(), v.cfg.Leeway); e != nil {
			c := e.claims
			return &c, kr, e, nil
		}
	}
	tok, err := parseCompact(token)
	if err != nil {
		return nil, nil, nil, fail(ErrMalformedToken, "undecodable token")
	}
	if tok.alg == "" || tok.alg == jwa.NoSignature {
		return nil, nil, nil, fail(ErrInvalidSignature, "unsigned tokens are not accepted")
	}
	keys, kr, err := v.keysFor(ctx, tok.kid, tok.alg)
	if err != nil {
		return nil, nil, nil, err
	}
	// The token was parsed once: the signature is checked over its signing input as sent
	// (the exact bytes before the last dot, which the issuer signed), with the algorithm of
	// the JWK (equal to the header's, checked in keysFor; the header alone never selects
	// it, so HS256-with-the-public-key cannot verify).
	verified := false
	for _, k := range keys {
		if k.verifier.Verify(tok.input, tok.signature, k.raw) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, nil, nil, fail(ErrInvalidSignature, "")
	}
	now := time.Now()
	c, times, err := v.claims(tok.payload, now)
	if err != nil {
		return nil, nil, nil, err
	}
	e := kr.tokens.put(key, c, times, now)
	return &c, kr, e, nil
}

// claims validates the verified payload, read once: times first (so a client can tell it
// must refresh), then issuer and audience. The registered claims are read as the jwx jwt
// package read them (wrong types are malformed), except that a NumericDate must be a JSON
// number, as RFC 7519 says (jwx also took numeric and RFC 3339 strings). Only the claims
// used here are decoded, each exactly as json.Unmarshal into a map[string]any decoded it,
// and the payload is rejected exactly when that json.Unmarshal failed (see jsonscan.go).
func (v *Verifier) claims(payload []byte, now time.Time) (Claims, timeClaims, error) {
	var raw claimValues
	if !v.readClaims(payload, &raw) {
		return Claims{}, timeClaims{}, fail(ErrMalformedToken, "claims are not a JSON object")
	}
	iss, okIss := stringClaim(raw.reg[claimIss])
	sub, okSub := stringClaim(raw.reg[claimSub])
	_, okJTI := stringClaim(raw.reg[claimJTI])
	inAud, okAud := audienceContains(raw.reg[claimAud], v.cfg.ClientID)
	var times timeClaims
	var okExp, okNbf, okIat bool
	times.exp, okExp = numericDate(raw.reg[claimExp])
	times.nbf, okNbf = numericDate(raw.reg[claimNbf])
	times.iat, okIat = numericDate(raw.reg[claimIat])
	if !okIss || !okSub || !okJTI || !okAud || !okExp || !okNbf || !okIat {
		return Claims{}, timeClaims{}, fail(ErrMalformedToken, "invalid registered claims")
	}
	if times.exp <= 0 {
		return Claims{}, timeClaims{}, fail(ErrMalformedToken, "token has no expiry")
	}
	if err := times.check(now, v.cfg.Leeway); err != nil {
		return Claims{}, timeClaims{}, err
	}
	if string(iss) != v.cfg.Issuer {
		return Claims{}, timeClaims{}, fail(ErrInvalidIssuer, "")
	}
	azp, _ := jsonString(raw.reg[claimAzp])
	if !inAud && string(azp) != v.cfg.ClientID {
		return Claims{}, timeClaims{}, fail(ErrInvalidAudience, "")
	}
	// Keycloak marks its ID tokens "ID" and access tokens "Bearer": an ID token (same aud and
	// signature) must not pass as an access token. Issuers without "typ" are unaffected.
	if typ, ok := jsonString(raw.reg[claimTyp]); ok && !bytes.EqualFold(typ, []byte("Bearer")) {
		return Claims{}, timeClaims{}, fail(ErrMalformedToken, "not an access token")
	}
	if len(sub) == 0 {
		return Claims{}, timeClaims{}, fail(ErrMalformedToken, "token has no subject")
	}
	subject := string(sub) // a copy: nothing kept points into the payload
	username := subject
	if u, _ := jsonString(raw.reg[claimUsername]); len(u) > 0 {
		username = string(u)
	}
	return Claims{
		Subject:   subject,
		Username:  username,
		Roles:     v.roles(&raw),
		ExpiresAt: time.Unix(times.exp, 0).UTC(),
	}, times, nil
}

// The claims read besides the roles, by their index in claimValues.reg.
const (
	claimIss = iota
	claimSub
	claimAud
	claimExp
	claimNbf
	claimIat
	claimJTI
	claimAzp
	claimTyp
	claimUsername
	numClaims
)

// claimIndex returns the index of the claim name, or -1 for one not read (or a role root).
func claimIndex(name []byte) int {
	switch string(name) {
	case "iss":
		return claimIss
	case "sub":
		return claimSub
	case "aud":
		return claimAud
	case "exp":
		return claimExp
	case "nbf":
		return claimNbf
	case "iat":
		return claimIat
	case "jti":
		return claimJTI
	case "azp":
		return claimAzp
	case "typ":
		return claimTyp
	case "preferred_username":
		return claimUsername
	}
	return -1
}

// claimValues holds the values of the claims read, as they stand in the payload: the
// registered ones and, for each role path, the value of its first segment (nil: absent).
type claimValues struct {
	reg   [numClaims][]byte
	roots [][]byte // by role path
	buf   [4][]byte
}

// readClaims finds the values of the claims read in payload (the last one when a name is
// repeated, as json.Unmarshal did); false when payload is not a JSON object, or when
// json.Unmarshal into a map[string]any would have failed on it.
func (v *Verifier) readClaims(payload []byte, raw *claimValues) bool {
	if !json.Valid(payload) {
		return false
	}
	m, ok := openObject(payload)
	if !ok {
		return false
	}
	raw.roots = raw.buf[:0]
	if len(v.rolePaths) > len(raw.buf) {
		raw.roots = make([][]byte, 0, len(v.rolePaths))
	}
	raw.roots = raw.roots[:len(v.rolePaths)]
	for {
		name, val, ok, err := m.next()
		if err != nil {
			return false
		}
		if !ok {
			return true
		}
		if i := claimIndex(name); i >= 0 {
			raw.reg[i] = val
		}
		for i, p := range v.rolePaths {
			if string(name) == p[0] {
				raw.roots[i] = val
			}
		}
	}
}

// roles collects the strings of the arrays found at the role paths (anything else is
// ignored), deduplicated and sorted.
func (v *Verifier) roles(raw *claimValues) []string {
	var buf [16]string
	roles := buf[:0]
	for i, path := range v.rolePaths {
		node := raw.roots[i]
		for _, seg := range path[1:] {
			if node = lastMember(node, seg); node == nil {
				break
			}
		}
		list, ok := openArray(node)
		if !ok {
			continue
		}
		for e, ok := list.next(); ok; e, ok = list.next() {
			if s, ok := jsonString(e); ok && len(s) > 0 {
				roles = append(roles, string(s))
			}
		}
	}
	slices.Sort(roles)
	roles = slices.Compact(roles)
	// Exactly as long as needed (never nil): Claims of a cached token share it, and an
	// append must not write into it.
	out := make([]string, len(roles))
	copy(out, roles)
	return out
}

// timeClaims are a token's exp, nbf and iat in Unix seconds; 0 stands for an absent claim
// (a NumericDate is never negative, and the Unix epoch counts as absent).
type timeClaims struct {
	exp, nbf, iat int64
}

// check applies exp, nbf and iat at now with the given leeway, exactly as jwt.Validate with
// jwt.WithAcceptableSkew did: at whole seconds, iat first, a claim at the zero time or the
// Unix epoch counting as absent.
func (tc timeClaims) check(now time.Time, leeway time.Duration) error {
	now = now.Truncate(time.Second)
	at := func(sec int64) time.Time { return time.Unix(sec, 0) }
	switch {
	case tc.iat != 0 && now.Before(at(tc.iat).Add(-leeway)):
		return fail(ErrTokenNotYetValid, "issued in the future")
	case tc.exp != 0 && !now.Before(at(tc.exp).Add(leeway)):
		return fail(ErrTokenExpired, "")
	case tc.nbf != 0 && now.Before(at(tc.nbf).Add(-leeway)):
		return fail(ErrTokenNotYetValid, "")
	}
	return nil
}

// stringClaim reads a string claim; absent and null read as "" (as jwx decoded them), any
// other type is invalid.
func stringClaim(val []byte) ([]byte, bool) {
	if val == nil || isJSONNull(val) {
		return nil, true
	}
	return jsonString(val)
}

// audienceContains reports whether "aud" (a string or an array of strings; absent is an
// empty audience) names id. Any other type, null included, is invalid.
func audienceContains(aud []byte, id string) (found, valid bool) {
	if aud == nil {
		return false, true
	}
	if s, ok := jsonString(aud); ok {
		return string(s) == id, true
	}
	list, ok := openArray(aud)
	if !ok {
		return false, false
	}
	for e, ok := list.next(); ok; e, ok = list.next() {
		s, ok := jsonString(e)
		if !ok {
			return false, false
		}
		found = found || string(s) == id
	}
	return found, true
}

// numericDate reads a NumericDate claim in Unix seconds: absent is 0; otherwise it must be a
// JSON number (decoded as float64), read as jwx read it: formatted with %.9f, the part before
// the point parsed as an int64. A negative number (-0 included: its "-" made jwx try RFC 3339)
// or one beyond int64 is invalid.
func numericDate(val []byte) (int64, bool) {
	if val == nil {
		return 0, true
	}
	if !isJSONNumber(val) {
		return 0, false
	}
	// An integer of up to 15 digits is exact as a float64, and formats as itself.
	if len(val) <= 15 {
		var n int64
		for _, d := range val {
			if d < '0' || d > '9' {
				n = -1
				break
			}
			n = n*10 + int64(d-'0')
		}
		if n >= 0 {
			return n, true
		}
	}
	f, err := strconv.ParseFloat(string(val), 64)
	if err != nil {
		return 0, false
	}
	var buf [48]byte
	var n int64
	for _, d := range strconv.AppendFloat(buf[:0], f, 'f', 9, 64) {
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
