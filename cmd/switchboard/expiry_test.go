package main

import (
	"testing"
	"time"

	"switchboard/config"
	"switchboard/transport/auth"
)

func (s *testServer) tokenTTL(t testing.TB, user string, ttl time.Duration, roles ...string) string {
	t.Helper()
	tok, _, err := s.dev.Mint(auth.MintParams{Subject: user, Username: user, ClientID: s.cfg.OIDCClientID, Roles: roles, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A connection ends with 4001 when its token expires, unless it sent a fresh token first.
func TestTokenExpiryAndRefresh(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.JWTLeeway = 0 })
	ttl := 2 * time.Second
	stale := s.connect(t, s.tokenTTL(t, "alice", ttl, "get-authors"))
	fresh := s.connect(t, s.tokenTTL(t, "alice", ttl, "get-authors"))

	r := fresh.call(12, map[string]any{"token": s.tokenTTL(t, "alice", time.Hour, "get-authors", "create-author")})
	if r.status() != 0 {
		t.Fatalf("refresh: %+v %s", r, r.Data)
	}
	var out struct {
		ExpiresAt time.Time `json:"expires_at"`
	}
	decodeData(t, r, &out)
	if time.Until(out.ExpiresAt) < 50*time.Minute {
		t.Fatalf("expires_at %v", out.ExpiresAt)
	}

	code, reason := stale.closeStatus(15 * time.Second)
	if code != 4001 || reason != "token expired" {
		t.Fatalf("stale connection closed with %d %q", code, reason)
	}
	// The refreshed connection outlived the old token and has the new token's roles.
	if r := fresh.call(3, map[string]any{"name": "After refresh"}); r.status() != 0 {
		t.Fatalf("refreshed connection: %+v %s", r, r.Data)
	}
}

func TestRefreshTokenRefusals(t *testing.T) {
	s := startServer(t, nil)
	c := s.connect(t, s.token(t, "alice", "get-authors"))
	cases := []struct {
		name, token, msg string
	}{
		{"other subject", s.token(t, "mallory", "get-authors", "admin"), "Token subject mismatch"},
		{"garbage", "not-a-jwt", "Invalid token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := c.call(12, map[string]any{"token": tc.token})
			if r.status() != 2 || r.msg() != tc.msg {
				t.Fatalf("got %+v %s", r, r.Data)
			}
		})
	}
	if r := c.call(12, map[string]any{}); r.status() != 2 || r.msg() != "Invalid data" {
		t.Fatalf("missing token: %+v", r)
	}
	// Still the old identity: no create-author role was gained.
	if r := c.call(3, map[string]any{"name": "x"}); r.status() != 3 {
		t.Fatalf("identity changed: %+v", r)
	}
}
