package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

const (
	fetchTimeout = 10 * time.Second
	maxDocBytes  = 1 << 20
	// The jwk.Cache refreshes the JWKS in the background every max(Cache-Control max-age,
	// backgroundRefresh), checked every cacheRefreshWindow, so a key removed by the issuer
	// stops verifying within minutes even if no unknown kid ever arrives.
	backgroundRefresh  = 5 * time.Minute
	cacheRefreshWindow = time.Minute
)

// keyring is an immutable snapshot of the usable signature keys, with the cache of the
// tokens verified with them (dropped with the snapshot: see tokenCache).
type keyring struct {
	all    []*verifyKey
	byKid  map[string][]*verifyKey
	tokens *tokenCache
}

// verifyKey is a public signature key ready for use: its algorithm (always the JWK's "alg",
// declared or inferred, never a token header's), the jws.Verifier for that algorithm and the
// raw crypto key, both resolved once per key set instead of once per token.
type verifyKey struct {
	alg      jwa.SignatureAlgorithm
	verifier jws.Verifier
	raw      any // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// newKeyring keeps the keys usable for verifying signatures: public copies of RSA, EC and
// OKP keys whose "use"/"key_ops" allow it, each with its algorithm set (taken from the JWK,
// or inferred from the key type: RS256 for RSA, ES256/384/512 by curve, EdDSA). Symmetric
// keys are always dropped: a JWKS is public, so an HMAC key in it would be a forgery
// primitive.
func newKeyring(set jwk.Set) (*keyring, error) {
	kr := &keyring{byKid: map[string][]*verifyKey{}, tokens: newTokenCache()}
	for i := range set.Len() {
		k, _ := set.Key(i)
		if u := k.KeyUsage(); u != "" && u != jwk.ForSignature.String() {
			continue
		}
		if ops := k.KeyOps(); len(ops) > 0 && !slices.Contains(ops, jwk.KeyOpVerify) {
			continue
		}
		pub, err := k.PublicKey() // a copy, so the caller's set is never modified
		if err != nil || pub.KeyType() == jwa.OctetSeq {
			continue
		}
		alg, ok := signatureAlg(pub)
		if !ok || pub.Set(jwk.AlgorithmKey, alg) != nil {
			continue
		}
		var raw any
		if err := pub.Raw(&raw); err != nil {
			continue
		}
		verifier, err := jws.NewVerifier(alg)
		if err != nil {
			continue
		}
		vk := &verifyKey{alg: alg, verifier: verifier, raw: raw}
		kr.all = append(kr.all, vk)
		kr.byKid[pub.KeyID()] = append(kr.byKid[pub.KeyID()], vk)
	}
	if len(kr.all) == 0 {
		return nil, errNoUsableKeys
	}
	return kr, nil
}

// signatureAlg returns the key's declared algorithm if it suits the key type, or the
// inferred one when the JWK has none.
func signatureAlg(k jwk.Key) (jwa.SignatureAlgorithm, bool) {
	var inferred jwa.SignatureAlgorithm
	var allowed []jwa.SignatureAlgorithm
	switch k.KeyType() {
	case jwa.RSA:
		inferred = jwa.RS256
		allowed = []jwa.SignatureAlgorithm{jwa.RS256, jwa.RS384, jwa.RS512, jwa.PS256, jwa.PS384, jwa.PS512}
	case jwa.EC:
		ek, ok := k.(jwk.ECDSAPublicKey)
		if !ok {
			return "", false
		}
		inferred = map[jwa.EllipticCurveAlgorithm]jwa.SignatureAlgorithm{
			jwa.P256: jwa.ES256, jwa.P384: jwa.ES384, jwa.P521: jwa.ES512,
		}[ek.Crv()]
		allowed = []jwa.SignatureAlgorithm{inferred}
	case jwa.OKP:
		ok, isOKP := k.(jwk.OKPPublicKey)
		if !isOKP || ok.Crv() != jwa.Ed25519 {
			return "", false
		}
		inferred = jwa.EdDSA
		allowed = []jwa.SignatureAlgorithm{jwa.EdDSA}
	default:
		return "", false
	}
	declared := k.Algorithm().String()
	if declared == "" {
		return inferred, inferred != ""
	}
	alg := jwa.SignatureAlgorithm(declared)
	return alg, slices.Contains(allowed, alg)
}

// lookup returns the keys for kid; a token without kid is accepted only when the set has
// exactly one usable key.
func (kr *keyring) lookup(kid string) ([]*verifyKey, bool) {
	if kid == "" {
		return kr.all, len(kr.all) == 1
	}
	ks, ok := kr.byKid[kid]
	return ks, ok
}

// keysFor returns the keys that may verify a token with this kid and header alg, and the
// snapshot they belong to, fetching the JWKS again (throttled) when the kid is unknown.
func (v *Verifier) keysFor(ctx context.Context, kid string, alg jwa.SignatureAlgorithm) ([]*verifyKey, *keyring, error) {
	kr, err := v.currentKeys(ctx)
	if err != nil {
		return nil, nil, err
	}
	cands, ok := kr.lookup(kid)
	if !ok && kid != "" && v.cache != nil {
		switch err := v.reload(ctx); {
		case err == nil:
			kr = v.keys.Load()
			cands, ok = kr.lookup(kid)
		case errors.Is(err, errRefreshThrottled):
			// A flood of forged kids ends here: at most one fetch per MinRefreshInterval.
		default:
			return nil, nil, fail(ErrKeysUnavailable, "could not refresh signing keys")
		}
	}
	if !ok {
		if kid == "" {
			return nil, nil, fail(ErrInvalidSignature, "token has no key id")
		}
		return nil, nil, fail(ErrInvalidSignature, "unknown signing key")
	}
	out := cands // read only: no copy when every candidate has the algorithm
	if slices.ContainsFunc(cands, func(k *verifyKey) bool { return k.alg != alg }) {
		out = nil
		for _, k := range cands {
			if k.alg == alg {
				out = append(out, k)
			}
		}
	}
	if len(out) == 0 {
		return nil, nil, fail(ErrInvalidSignature, "token algorithm does not match the signing key")
	}
	return out, kr, nil
}

// currentKeys returns the loaded keys, loading them first if there are none yet.
func (v *Verifier) currentKeys(ctx context.Context) (*keyring, error) {
	if kr := v.keys.Load(); kr != nil {
		return kr, nil
	}
	err := v.reload(ctx)
	if kr := v.keys.Load(); kr != nil {
		return kr, nil
	}
	if err == nil {
		err = errNoUsableKeys
	}
	switch {
	case errors.Is(err, errRefreshThrottled):
		return nil, fail(ErrKeysUnavailable, "issuer unreachable, retrying")
	case ctx.Err() != nil:
		return nil, fail(ErrKeysUnavailable, "timed out waiting for signing keys")
	default:
		return nil, fail(ErrKeysUnavailable, "issuer unreachable")
	}
}

// flight is one fetch; waiters read err after done is closed.
type flight struct {
	done chan struct{}
	err  error
}

// reload fetches the key set once for all concurrent callers. A new fetch starts at most
// once per MinRefreshInterval (errRefreshThrottled otherwise). The fetch runs in a goroutine
// owned by the Verifier, so a caller that gives up (ctx) does not cancel it for the others.
func (v *Verifier) reload(ctx context.Context) error {
	v.mu.Lock()
	if v.closed || v.cache == nil {
		v.mu.Unlock()
		return errVerifierClosed
	}
	f := v.inflight
	if f == nil {
		if !v.lastStart.IsZero() && time.Since(v.lastStart) < v.cfg.MinRefreshInterval {
			v.mu.Unlock()
			return errRefreshThrottled
		}
		v.lastStart = time.Now()
		f = &flight{done: make(chan struct{})}
		v.inflight = f
		v.wg.Add(1)
		go v.runFetch(f)
	}
	v.mu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (v *Verifier) runFetch(f *flight) {
	defer v.wg.Done()
	ctx, cancel := context.WithTimeout(v.ctx, fetchTimeout)
	f.err = v.load(ctx)
	cancel()
	if f.err != nil && v.ctx.Err() == nil {
		v.log.Warn("auth: fetching signing keys failed", "issuer", v.cfg.Issuer, "error", f.err)
	}
	v.mu.Lock()
	v.inflight = nil
	v.mu.Unlock()
	close(f.done)
}

// load discovers the jwks_uri (once) and fetches the JWKS. The first fetch goes through the
// jwk.Cache, which starts its background refresh; later on-demand fetches bypass it because
// every (*jwk.Cache).Refresh in httprc v1 schedules one more perpetual background refresh.
func (v *Verifier) load(ctx context.Context) error {
	if v.jwksURL == "" {
		u, err := v.discover(ctx)
		if err != nil {
			return err
		}
		err = v.cache.Register(u,
			jwk.WithHTTPClient(v.fetch),
			jwk.WithMinRefreshInterval(backgroundRefresh),
			jwk.WithPostFetcher(jwk.PostFetchFunc(v.publish)))
		if err != nil {
			return err
		}
		v.jwksURL = u
	}
	if !v.cacheStarted {
		v.cacheStarted = true
		_, err := v.cache.Refresh(ctx, v.jwksURL)
		return err
	}
	body, err := v.fetch.document(ctx, v.jwksURL)
	if err != nil {
		return err
	}
	set, err := jwk.Parse(body)
	if err != nil {
		return fmt.Errorf("parse JWKS from %s: %w", v.jwksURL, err)
	}
	_, err = v.publish(v.jwksURL, set)
	return err
}

// publish installs a freshly fetched set; it is also the jwk.Cache's PostFetcher, so
// background refreshes land here too. A set without usable keys is rejected (the previous
// snapshot stays).
func (v *Verifier) publish(_ string, set jwk.Set) (jwk.Set, error) {
	kr, err := newKeyring(set)
	if err != nil {
		return nil, err
	}
	v.keys.Store(kr)
	return set, nil
}

func (v *Verifier) discover(ctx context.Context) (string, error) {
	doc, err := discover(ctx, v.fetch, v.cfg.Issuer, v.log)
	if err != nil {
		return "", err
	}
	u, err := url.Parse(doc.JWKSURI)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("discovery document has no usable jwks_uri (%q)", doc.JWKSURI)
	}
	return doc.JWKSURI, nil
}

// discoveryDoc is the part of an issuer's openid-configuration Switchboard reads.
type discoveryDoc struct {
	Issuer        string `json:"issuer"`
	JWKSURI       string `json:"jwks_uri"`
	TokenEndpoint string `json:"token_endpoint"`
}

// discover fetches issuer's discovery document and checks that it names the same issuer.
func discover(ctx context.Context, f *fetcher, issuer string, log *slog.Logger) (discoveryDoc, error) {
	var doc discoveryDoc
	body, err := f.document(ctx, strings.TrimSuffix(issuer, "/")+discoveryPath)
	if err != nil {
		return doc, err
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return doc, fmt.Errorf("decode discovery document: %w", err)
	}
	if doc.Issuer != issuer {
		log.Error("auth: OIDC discovery names another issuer; fix the configured issuer",
			"configured", issuer, "discovered", doc.Issuer)
		return doc, errDiscoveryMismatch
	}
	return doc, nil
}

// fetcher performs every HTTP request of a Verifier. As the jwk.Cache's HTTP client (Get)
// it binds requests to the Verifier's lifetime, and it always reads (bounded) and closes
// the body itself, so no connection or goroutine outlives Close whatever the caller does
// with the response.
type fetcher struct {
	ctx    context.Context
	client *http.Client
}

// Get implements jwk.HTTPClient.
func (f *fetcher) Get(u string) (*http.Response, error) { return f.get(f.ctx, u) }

func (f *fetcher) get(ctx context.Context, u string) (*http.Response, error) {
	// The body is read before returning, so the timeout may end with this call. It also
	// bounds the cache's background fetches when a caller-supplied client has no timeout.
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	res, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, maxDocBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", u, err)
	}
	if len(body) > maxDocBytes {
		return nil, fmt.Errorf("%s: response larger than %d bytes", u, maxDocBytes)
	}
	res.Body = io.NopCloser(bytes.NewReader(body))
	return res, nil
}

// document GETs u and returns its body, requiring 200.
func (f *fetcher) document(ctx context.Context, u string) ([]byte, error) {
	res, err := f.get(ctx, u)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, res.Status)
	}
	return io.ReadAll(res.Body)
}

// errSink logs the jwk.Cache's background refresh failures (it must not block); the
// failures caused by Close cancelling the fetch are not news.
type errSink struct {
	ctx context.Context
	log *slog.Logger
}

func (s errSink) Error(err error) {
	if s.ctx.Err() == nil {
		s.log.Warn("auth: background JWKS refresh failed", "error", err)
	}
}
