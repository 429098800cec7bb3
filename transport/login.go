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

// login answers POST /login like Keycloak's password grant (PROTOCOL.md §2): attempts are
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

// saveSession records the login; a failure is logged, never shown (the tokens are valid).
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
