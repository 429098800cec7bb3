// Package oidctest runs a real HTTP OpenID Connect issuer shaped like a Keycloak realm, for
// tests only: discovery, JWKS, and a password/refresh-token grant, with knobs for key
// rotation, outages and hand-crafted (also hostile) tokens. Import it from _test.go files.
//
// An Issuer is safe for concurrent use; its server is closed by t.Cleanup.
package oidctest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

const (
	// DefaultClientID is the client the issuer serves unless WithClientID says otherwise.
	DefaultClientID = "switchboard"
	// RealmPath is appended to the server URL to form the issuer.
	RealmPath = "/realms/test"

	certsPath = "/protocol/openid-connect/certs"
	tokenPath = "/protocol/openid-connect/token"
)

// Option configures New.
type Option func(*Issuer)

// WithClientID sets the client id the token endpoint accepts and puts in azp.
func WithClientID(id string) Option { return func(i *Issuer) { i.clientID = id } }

// WithClientSecret makes the client confidential: the token endpoint requires the secret.
func WithClientSecret(secret string) Option { return func(i *Issuer) { i.secret = secret } }

// WithTokenTTL sets the lifetime of tokens from the token endpoint (default 5 minutes).
func WithTokenTTL(d time.Duration) Option { return func(i *Issuer) { i.ttl = d } }

// WithRefreshTTL sets the lifetime of refresh tokens (default 6 times the token TTL). An
// expired refresh token is answered like Keycloak's: 400 invalid_grant "Token is not active".
func WithRefreshTTL(d time.Duration) Option { return func(i *Issuer) { i.refreshTTL = d } }

// WithoutKeyAlg publishes JWKs without "alg", so verifiers must infer it from the key type.
func WithoutKeyAlg() Option { return func(i *Issuer) { i.omitAlg = true } }

// Issuer is a running test issuer.
type Issuer struct {
	srv        *httptest.Server
	clientID   string
	secret     string
	ttl        time.Duration
	refreshTTL time.Duration
	omitAlg    bool
	fetches    atomic.Int64
	down       atomic.Bool

	mu      sync.Mutex
	keys    []signingKey // the last one is current
	users   map[string]user
	refresh map[string]refreshGrant // refresh token → what it renews
	grants  map[string]int          // grant_type → successful grants
}

// refreshGrant is what a refresh token stands for.
type refreshGrant struct {
	username string
	clientID string
	expires  time.Time
}

type signingKey struct {
	kid  string
	priv *rsa.PrivateKey
}

type user struct {
	password    string
	realmRoles  []string
	clientRoles map[string][]string
}

// New starts an issuer on 127.0.0.1 with one RSA-2048 signing key.
func New(t testing.TB, opts ...Option) *Issuer {
	t.Helper()
	i := &Issuer{
		clientID: DefaultClientID,
		ttl:      5 * time.Minute,
		users:    map[string]user{},
		refresh:  map[string]refreshGrant{},
		grants:   map[string]int{},
	}
	for _, o := range opts {
		o(i)
	}
	if i.refreshTTL == 0 {
		i.refreshTTL = 6 * i.ttl
	}
	i.addKey(t)
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+RealmPath+"/.well-known/openid-configuration", i.serveDiscovery)
	mux.HandleFunc("GET "+RealmPath+certsPath, i.serveJWKS)
	mux.HandleFunc("POST "+RealmPath+tokenPath, i.serveToken)
	i.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == RealmPath+certsPath {
			i.fetches.Add(1)
		}
		if i.down.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "temporarily_unavailable"})
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(i.srv.Close)
	return i
}

// URL is the issuer identifier: the server URL + RealmPath.
func (i *Issuer) URL() string { return i.srv.URL + RealmPath }

// ClientID is the client the token endpoint serves.
func (i *Issuer) ClientID() string { return i.clientID }

// KeyID is the kid of the current signing key ("" after every key was removed).
func (i *Issuer) KeyID() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	if len(i.keys) == 0 {
		return ""
	}
	return i.keys[len(i.keys)-1].kid
}

// RemoveUser deletes a user: its password grant and refresh tokens stop working.
func (i *Issuer) RemoveUser(username string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	delete(i.users, username)
}

// AddUser registers (or replaces) a user for the password grant. clientRoles maps a
// client id to roles, published under resource_access.
func (i *Issuer) AddUser(username, password string, realmRoles []string, clientRoles map[string][]string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.users[username] = user{password: password, realmRoles: slices.Clone(realmRoles), clientRoles: clientRoles}
}

// RevokeRefreshTokens invalidates every refresh token issued so far (a logout, an ended
// session, an admin's "sign out everywhere"): using one is then invalid_grant.
func (i *Issuer) RevokeRefreshTokens() {
	i.mu.Lock()
	defer i.mu.Unlock()
	clear(i.refresh)
}

// Grants counts the successful token endpoint answers for grantType ("password",
// "refresh_token").
func (i *Issuer) Grants(grantType string) int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.grants[grantType]
}

// RotateKey adds a new signing key and makes it current; the old keys stay in the JWKS.
func (i *Issuer) RotateKey() { i.addKey(nil) }

// RemoveKey drops the key from the JWKS. If it was current, the newest remaining key
// becomes current.
func (i *Issuer) RemoveKey(kid string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.keys = slices.DeleteFunc(i.keys, func(k signingKey) bool { return k.kid == kid })
}

// JWKSFetches counts the GETs of the JWKS endpoint, including those answered 503.
func (i *Issuer) JWKSFetches() int { return int(i.fetches.Load()) }

// SetDown makes the server answer 503 to everything (true) or serve normally (false).
func (i *Issuer) SetDown(down bool) { i.down.Store(down) }

func (i *Issuer) addKey(t testing.TB) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		if t != nil {
			t.Fatalf("oidctest: generate key: %v", err)
		}
		panic(err)
	}
	pub, err := jwk.FromRaw(&priv.PublicKey)
	if err == nil {
		err = jwk.AssignKeyID(pub)
	}
	if err != nil {
		panic(err)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.keys = append(i.keys, signingKey{kid: pub.KeyID(), priv: priv})
}

func (i *Issuer) serveDiscovery(w http.ResponseWriter, _ *http.Request) {
	iss := i.URL()
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                iss,
		"authorization_endpoint":                iss + "/protocol/openid-connect/auth",
		"token_endpoint":                        iss + tokenPath,
		"jwks_uri":                              iss + certsPath,
		"grant_types_supported":                 []string{"password", "refresh_token"},
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
	})
}

func (i *Issuer) serveJWKS(w http.ResponseWriter, _ *http.Request) {
	i.mu.Lock()
	keys := slices.Clone(i.keys)
	i.mu.Unlock()
	set := jwk.NewSet()
	for _, k := range keys {
		pub, err := jwk.FromRaw(&k.priv.PublicKey)
		if err == nil {
			err = pub.Set(jwk.KeyIDKey, k.kid)
		}
		if err == nil {
			err = pub.Set(jwk.KeyUsageKey, jwk.ForSignature)
		}
		if err == nil && !i.omitAlg {
			err = pub.Set(jwk.AlgorithmKey, jwa.RS256)
		}
		if err == nil {
			err = set.AddKey(pub)
		}
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
	}
	// Keycloak sends no-cache; verifiers must not depend on HTTP caching.
	w.Header().Set("Cache-Control", "no-cache")
	writeJSON(w, http.StatusOK, set)
}

func (i *Issuer) serveToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	clientID, secret, basic := r.BasicAuth()
	if !basic {
		clientID, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if clientID != i.clientID || (i.secret != "" && secret != i.secret) {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client", "error_description": "Invalid client or Invalid client credentials"})
		return
	}
	var username string
	grantType := r.PostForm.Get("grant_type")
	switch grantType {
	case "password", "":
		i.mu.Lock()
		u, ok := i.users[r.PostForm.Get("username")]
		i.mu.Unlock()
		if !ok || u.password != r.PostForm.Get("password") {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_grant", "error_description": "Invalid user credentials"})
			return
		}
		username, grantType = r.PostForm.Get("username"), "password"
	case "refresh_token":
		// Like Keycloak (without "revoke refresh token"): a refresh token stays usable until
		// it expires or is revoked, and only by the client it was issued to.
		i.mu.Lock()
		g, ok := i.refresh[r.PostForm.Get("refresh_token")]
		_, userExists := i.users[g.username]
		i.mu.Unlock()
		switch {
		case !ok || g.clientID != clientID:
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "Invalid refresh token"})
			return
		case !time.Now().Before(g.expires):
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "Token is not active"})
			return
		case !userExists:
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "User not found"})
			return
		}
		username = g.username
	default:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type"})
		return
	}
	access, err := i.grantToken(username)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "server_error"})
		return
	}
	refresh := randomHex(32)
	i.mu.Lock()
	i.refresh[refresh] = refreshGrant{username: username, clientID: clientID, expires: time.Now().Add(i.refreshTTL)}
	i.grants[grantType]++
	i.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":       access,
		"expires_in":         int(i.ttl / time.Second),
		"refresh_expires_in": int(i.refreshTTL / time.Second),
		"refresh_token":      refresh,
		"token_type":         "Bearer",
		"not-before-policy":  0,
		"scope":              "profile email",
	})
}

// grantToken issues what Keycloak issues by default: aud "account", azp = the client.
func (i *Issuer) grantToken(username string) (string, error) {
	i.mu.Lock()
	u := i.users[username]
	i.mu.Unlock()
	return i.sign(TokenClaims{
		Subject:     UserID(username),
		Username:    username,
		Audience:    []string{"account"},
		AZP:         i.clientID,
		ExpiresAt:   time.Now().Add(i.ttl),
		RealmRoles:  u.realmRoles,
		ClientRoles: u.clientRoles,
		Extra:       map[string]any{"scope": "profile email"},
	})
}

// UserID is the stable "sub" the token endpoint uses for username (UUID-shaped).
func UserID(username string) string {
	h := sha256.Sum256([]byte("oidctest:" + username))
	s := hex.EncodeToString(h[:16])
	return fmt.Sprintf("%s-%s-%s-%s-%s", s[:8], s[8:12], s[12:16], s[16:20], s[20:])
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
