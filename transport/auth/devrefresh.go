package auth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// refreshTyp marks the development issuer's refresh tokens, as Keycloak marks its own; access
// tokens say "Bearer".
const refreshTyp = "Refresh"

// refreshParams describes a refresh token to mint.
type refreshParams struct {
	subject, clientID string
	ttl               time.Duration
	authTime          time.Time     // when the user's password was checked
	sessionMax        time.Duration // no refresh token outlives authTime + sessionMax
}

// refreshClaims is the payload of a development refresh token.
type refreshClaims struct {
	Issuer   string   `json:"iss"`
	Audience []string `json:"aud"`
	Subject  string   `json:"sub"`
	Typ      string   `json:"typ"`
	ClientID string   `json:"client_id"`
	IssuedAt int64    `json:"iat"`
	NotAfter int64    `json:"exp"`
	NotBef   int64    `json:"nbf"`
	AuthTime int64    `json:"auth_time"`
	JTI      string   `json:"jti"`
}

// mintRefresh signs a refresh token (see DevLogin): aud is the issuer itself, so the Verifier
// never takes it for an access token.
func (d *DevIssuer) mintRefresh(p refreshParams) (string, error) {
	jti := make([]byte, 16)
	_, _ = rand.Read(jti)
	now := time.Now()
	exp := now.Add(p.ttl)
	if end := p.authTime.Add(p.sessionMax); p.sessionMax > 0 && end.Before(exp) {
		exp = end
	}
	if !exp.After(now) {
		return "", fail(ErrInvalidRefreshToken, "session ended")
	}
	payload, err := json.Marshal(refreshClaims{
		Issuer:   DevIssuerID,
		Audience: []string{DevIssuerID},
		Subject:  p.subject,
		Typ:      refreshTyp,
		ClientID: p.clientID,
		IssuedAt: now.Unix(),
		NotBef:   now.Unix(),
		NotAfter: exp.Unix(),
		AuthTime: p.authTime.Unix(),
		JTI:      hex.EncodeToString(jti),
	})
	if err != nil {
		return "", fmt.Errorf("auth: mint refresh token: %w", err)
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, "JWT"); err != nil {
		return "", fmt.Errorf("auth: mint refresh token: %w", err)
	}
	tok, err := jws.Sign(payload, jws.WithKey(jwa.RS256, d.priv, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("auth: mint refresh token: %w", err)
	}
	return string(tok), nil
}

// refreshLeeway is the clock skew allowed on a refresh token's nbf and iat: nodes sharing the
// key may disagree a little about the time. Its exp is strict: an expired refresh token sends
// the user back to /login, which is always possible.
const refreshLeeway = 30 * time.Second

// verifyRefresh checks a development refresh token: RS256 signed by this issuer's key (the
// algorithm is ours, never the header's alone), iss and aud this issuer, typ Refresh, issued to
// clientID, not expired. Every failure is ErrInvalidRefreshToken, whose text says nothing of
// which check failed.
func (d *DevIssuer) verifyRefresh(token, clientID string, now time.Time) (refreshClaims, error) {
	invalid := fail(ErrInvalidRefreshToken, "")
	if len(token) > maxTokenBytes || strings.Count(token, ".") != 2 {
		return refreshClaims{}, invalid
	}
	tok, err := parseCompact(token)
	if err != nil || tok.alg != jwa.RS256 || tok.kid != d.KeyID() {
		return refreshClaims{}, invalid
	}
	verifier, err := jws.NewVerifier(jwa.RS256)
	if err != nil || verifier.Verify(tok.input, tok.signature, d.rsaPub) != nil {
		return refreshClaims{}, invalid
	}
	var c refreshClaims
	if err := json.Unmarshal(tok.payload, &c); err != nil {
		return refreshClaims{}, invalid
	}
	switch {
	case c.Issuer != DevIssuerID, !slices.Contains(c.Audience, DevIssuerID), c.Typ != refreshTyp,
		c.ClientID != clientID, c.Subject == "", c.NotAfter == 0:
		return refreshClaims{}, invalid
	case now.Unix() >= c.NotAfter,
		time.Unix(c.NotBef, 0).After(now.Add(refreshLeeway)),
		time.Unix(c.IssuedAt, 0).After(now.Add(refreshLeeway)):
		return refreshClaims{}, invalid
	}
	if c.AuthTime == 0 { // minted before refresh tokens carried it
		c.AuthTime = c.IssuedAt
	}
	return c, nil
}

// Refresh redeems a refresh token from Login (or an earlier Refresh) for new tokens, like
// Keycloak's refresh grant: a new access token with the user's roles as the users file has them
// now, and a new refresh token. A user no longer in the file cannot refresh. No refresh token
// outlives the password check plus SessionMax.
//
// Refresh tokens are self-contained (nothing is stored), so one stays valid until its exp
// even after it was redeemed: a client should keep only the newest.
func (l DevLogin) Refresh(ctx context.Context, refreshToken string) (Tokens, error) {
	l, err := l.withDefaults()
	if err != nil {
		return Tokens{}, err
	}
	if err := ctx.Err(); err != nil {
		return Tokens{}, fmt.Errorf("%w: %w", ErrIdPUnavailable, err)
	}
	c, err := l.Issuer.verifyRefresh(refreshToken, l.ClientID, time.Now())
	if err != nil {
		return Tokens{}, err
	}
	user, ok := l.Users.Lookup(c.Subject)
	if !ok {
		return Tokens{}, fail(ErrInvalidRefreshToken, "")
	}
	tokens, err := l.issue(user, time.Unix(c.AuthTime, 0))
	if errors.Is(err, ErrInvalidRefreshToken) {
		return Tokens{}, fail(ErrInvalidRefreshToken, "")
	}
	return tokens, err
}
