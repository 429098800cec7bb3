package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// maxTokenBytes bounds the work an unauthenticated caller can cause; real access tokens
// are a few KiB, Keycloak's with hundreds of groups a few tens.
const maxTokenBytes = 64 << 10

// Claims is the verified identity carried by an access token.
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
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	if token == "" {
		return nil, fail(ErrMissingToken, "")
	}
	if len(token) > maxTokenBytes || strings.Count(token, ".") != 2 {
		return nil, fail(ErrMalformedToken, "not a compact JWS")
	}
	msg, err := jws.Parse([]byte(token), jws.WithCompact())
	if err != nil || len(msg.Signatures()) != 1 {
		return nil, fail(ErrMalformedToken, "undecodable token")
	}
	hdr := msg.Signatures()[0].ProtectedHeaders()
	alg := hdr.Algorithm()
	if alg == "" || alg == jwa.NoSignature {
		return nil, fail(ErrInvalidSignature, "unsigned tokens are not accepted")
	}
	keys, err := v.keysFor(ctx, hdr.KeyID(), alg)
	if err != nil {
		return nil, err
	}
	var payload []byte
	for _, k := range keys {
		// The algorithm is the JWK's (equal to the header's, checked in keysFor); the
		// header alone never selects it, so HS256-with-the-public-key cannot verify.
		keyAlg := jwa.SignatureAlgorithm(k.Algorithm().String())
		if payload, err = jws.Verify([]byte(token), jws.WithKey(keyAlg, k), jws.WithCompact()); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fail(ErrInvalidSignature, "")
	}
	return v.claims(payload)
}

// claims validates the verified payload: times first (so a client can tell it must
// refresh), then issuer and audience.
func (v *Verifier) claims(payload []byte) (*Claims, error) {
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
	err := jwt.Validate(tok, jwt.WithAcceptableSkew(v.cfg.Leeway))
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
	if tok.Issuer() != v.cfg.Issuer {
		return nil, fail(ErrInvalidIssuer, "")
	}
	azp, _ := raw["azp"].(string)
	if !slices.Contains(tok.Audience(), v.cfg.ClientID) && azp != v.cfg.ClientID {
		return nil, fail(ErrInvalidAudience, "")
	}
	// Keycloak marks its ID tokens "ID" and access tokens "Bearer": an ID token (same aud and
	// signature) must not pass as an access token. Issuers without "typ" are unaffected.
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
	return &Claims{
		Subject:   tok.Subject(),
		Username:  username,
		Roles:     rolesAt(raw, v.rolePaths),
		ExpiresAt: tok.Expiration(),
		Raw:       raw,
	}, nil
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
	return slices.Compact(roles)
}
