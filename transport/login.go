package transport

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"switchboard/transport/auth"
)

// SessionStore keeps a record of each login (Redis `session:<sub>`, TTL = token lifetime).
type SessionStore interface {
	Save(ctx context.Context, sub string, session any, ttl time.Duration) error
}

// Session is what a login records.
type Session struct {
	Subject   string    `json:"sub"`
	Username  string    `json:"username"`
	Roles     []string  `json:"roles"`
	LoginAt   time.Time `json:"login_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Remote    string    `json:"ip_address"`
}

const loginSchema = `{"type":"object","required":["username","password"],"properties":{
	"username":{"type":"string","minLength":1,"maxLength":255},
	"password":{"type":"string","minLength":1,"maxLength":1024}}}`

// refreshSchema bounds the token like the verifier bounds access tokens (64 KiB).
const refreshSchema = `{"type":"object","required":["refresh_token"],"properties":{
	"refresh_token":{"type":"string","minLength":1,"maxLength":65536}}}`

// TokenRefresher renews the tokens a login answered (auth.PasswordGrant, auth.DevLogin).
// Errors wrap auth.ErrInvalidRefreshToken (401) or auth.ErrIdPUnavailable (503).
type TokenRefresher interface {
	Refresh(ctx context.Context, refreshToken string) (auth.Tokens, error)
}

// login answers POST /login like Keycloak's password grant (docs/protocol.md §2): attempts are
// limited per client IP and per username before the identity provider is asked.
func (a *api) login(w http.ResponseWriter, r *http.Request) {
	if a.cfg.Login == nil {
		writeDetail(w, http.StatusNotFound, "Not found")
		return
	}
	ip := clientIP(r)
	if !a.limit(w, r, "login_ip", ip, a.cfg.LoginRateLimit) {
		return
	}
	body, ok := a.readBody(w, r, a.loginSchema)
	if !ok {
		return
	}
	var in struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	_ = json.Unmarshal(body, &in)
	// Identity providers compare user names case-insensitively; so does the limit.
	if !a.limit(w, r, "login_user", strings.ToLower(in.Username), a.cfg.LoginRateLimit) {
		return
	}
	tokens, err := a.cfg.Login.Login(r.Context(), in.Username, in.Password)
	switch {
	case errors.Is(err, auth.ErrBadCredentials):
		writeDetail(w, http.StatusUnauthorized, "Invalid username or password")
		return
	case errors.Is(err, auth.ErrIdPUnavailable):
		writeDetail(w, http.StatusServiceUnavailable, "Identity provider unavailable")
		return
	case err != nil:
		a.cfg.Logger.Error("login failed", "err", err)
		writeDetail(w, http.StatusInternalServerError, "Internal error")
		return
	}
	if a.cfg.Sessions != nil {
		a.saveSession(r, tokens, ip)
	}
	writeJSON(w, http.StatusOK, tokens)
}

// refresh answers POST /refresh {"refresh_token"} with new tokens, the same answer as /login
// (docs/protocol.md §2): the issuer's refresh grant, or the development issuer's own refresh
// tokens. Calls are limited per client IP with the login limit, before the issuer is asked.
func (a *api) refresh(w http.ResponseWriter, r *http.Request) {
	if a.cfg.Refresh == nil {
		writeDetail(w, http.StatusNotFound, "Not found")
		return
	}
	ip := clientIP(r)
	if !a.limit(w, r, "refresh_ip", ip, a.cfg.LoginRateLimit) {
		return
	}
	body, ok := a.readBody(w, r, a.refreshSchema)
	if !ok {
		return
	}
	var in struct {
		RefreshToken string `json:"refresh_token"`
	}
	_ = json.Unmarshal(body, &in)
	tokens, err := a.cfg.Refresh.Refresh(r.Context(), in.RefreshToken)
	switch {
	case errors.Is(err, auth.ErrInvalidRefreshToken):
		writeDetail(w, http.StatusUnauthorized, "Invalid or expired refresh token")
		return
	case errors.Is(err, auth.ErrIdPUnavailable):
		writeDetail(w, http.StatusServiceUnavailable, "Identity provider unavailable")
		return
	case err != nil:
		a.cfg.Logger.Error("refresh failed", "err", err)
		writeDetail(w, http.StatusInternalServerError, "Internal error")
		return
	}
	if a.cfg.Sessions != nil {
		a.saveSession(r, tokens, ip)
	}
	writeJSON(w, http.StatusOK, tokens)
}

// saveSession records the login (or refresh); a failure is logged, never shown (the tokens are valid).
func (a *api) saveSession(r *http.Request, tokens auth.Tokens, ip string) {
	claims, err := a.cfg.Verifier.Verify(r.Context(), tokens.AccessToken)
	if err != nil {
		a.cfg.Logger.Warn("login: the issued access token does not verify; no session saved", "err", err)
		return
	}
	ttl := time.Duration(tokens.ExpiresIn) * time.Second
	if ttl <= 0 {
		ttl = time.Until(claims.ExpiresAt)
	}
	s := Session{Subject: claims.Subject, Username: claims.Username, Roles: claims.Roles,
		LoginAt: time.Now().UTC(), ExpiresAt: claims.ExpiresAt.UTC(), Remote: ip}
	if err := a.cfg.Sessions.Save(r.Context(), s.Subject, s, ttl); err != nil {
		a.cfg.Logger.Warn("login: could not save the session", "sub", s.Subject, "err", err)
	}
}
