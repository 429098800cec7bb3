package oidctest

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// TokenClaims describes a token for Issuer.Token. The zero value is a valid access token
// for the issuer's client: sub "test-user", aud [client id], iat now, exp in 5 minutes,
// typ Bearer, RS256 with the current key and its kid.
type TokenClaims struct {
	Subject  string   // default "test-user"
	Username string   // preferred_username; omitted when empty
	Audience []string // nil: [client id]; empty non-nil: no "aud" claim
	AZP      string   // omitted when empty
	Issuer   string   // default URL()

	ExpiresAt time.Time // default now + 5 minutes
	NoExpiry  bool      // omit "exp"
	NotBefore time.Time // omitted when zero
	IssuedAt  time.Time // default now

	RealmRoles  []string            // realm_access.roles
	ClientRoles map[string][]string // resource_access.<client>.roles

	KeyID   string // header kid; default the current key's
	NoKeyID bool   // omit the header kid
	// Alg: "" or any RS*/PS* signs with the current key; "none" yields an unsigned token;
	// HS256/HS384/HS512 use the PEM of the current public key as the HMAC secret (the
	// classic key-confusion attack).
	Alg string

	Extra map[string]any // merged last, overriding the above
}

// Token signs c with the current key (see TokenClaims for defaults).
func (i *Issuer) Token(t testing.TB, c TokenClaims) string {
	t.Helper()
	tok, err := i.sign(c)
	if err != nil {
		t.Fatalf("oidctest: token: %v", err)
	}
	return tok
}

func (i *Issuer) sign(c TokenClaims) (string, error) {
	i.mu.Lock()
	if len(i.keys) == 0 {
		i.mu.Unlock()
		return "", errors.New("no signing key left")
	}
	key := i.keys[len(i.keys)-1]
	i.mu.Unlock()

	now := time.Now()
	claims := map[string]any{
		"sub": orDefault(c.Subject, "test-user"),
		"iss": orDefault(c.Issuer, i.URL()),
		"typ": "Bearer",
		"jti": randomHex(16),
	}
	switch {
	case c.Audience == nil:
		claims["aud"] = []string{i.clientID}
	case len(c.Audience) > 0:
		claims["aud"] = c.Audience
	}
	if c.AZP != "" {
		claims["azp"] = c.AZP
	}
	if c.Username != "" {
		claims["preferred_username"] = c.Username
	}
	claims["iat"] = unixOr(c.IssuedAt, now)
	if !c.NoExpiry {
		claims["exp"] = unixOr(c.ExpiresAt, now.Add(5*time.Minute))
	}
	if !c.NotBefore.IsZero() {
		claims["nbf"] = c.NotBefore.Unix()
	}
	if c.RealmRoles != nil {
		claims["realm_access"] = map[string]any{"roles": c.RealmRoles}
	}
	if len(c.ClientRoles) > 0 {
		ra := map[string]any{}
		for client, roles := range c.ClientRoles {
			ra[client] = map[string]any{"roles": roles}
		}
		claims["resource_access"] = ra
	}
	maps.Copy(claims, c.Extra)
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}

	kid := key.kid
	if c.KeyID != "" {
		kid = c.KeyID
	}
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.TypeKey, "JWT")
	if !c.NoKeyID {
		_ = hdr.Set(jws.KeyIDKey, kid)
	}
	alg := jwa.SignatureAlgorithm(orDefault(c.Alg, "RS256"))
	switch alg {
	case jwa.NoSignature:
		h := map[string]any{"alg": "none", "typ": "JWT"}
		if !c.NoKeyID {
			h["kid"] = kid
		}
		hb, _ := json.Marshal(h)
		enc := base64.RawURLEncoding
		return enc.EncodeToString(hb) + "." + enc.EncodeToString(payload) + ".", nil
	case jwa.HS256, jwa.HS384, jwa.HS512:
		der, err := x509.MarshalPKIXPublicKey(&key.priv.PublicKey)
		if err != nil {
			return "", err
		}
		secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
		tok, err := jws.Sign(payload, jws.WithKey(alg, secret, jws.WithProtectedHeaders(hdr)))
		return string(tok), err
	}
	if !strings.HasPrefix(string(alg), "RS") && !strings.HasPrefix(string(alg), "PS") {
		return "", fmt.Errorf("unsupported alg %q", alg)
	}
	// The raw key (not a JWK) so that the kid header is exactly what we set.
	tok, err := jws.Sign(payload, jws.WithKey(alg, key.priv, jws.WithProtectedHeaders(hdr)))
	return string(tok), err
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func unixOr(t, def time.Time) int64 {
	if t.IsZero() {
		return def.Unix()
	}
	return t.Unix()
}
