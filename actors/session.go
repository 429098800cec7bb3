package actors

import (
	"context"
	"time"
)

// PkgRefreshToken replaces a live connection's token (docs/protocol.md §1.4, §3).
const PkgRefreshToken = 12

// VerifyFunc verifies a bearer token and returns its user.
type VerifyFunc func(ctx context.Context, token string) (*User, error)

// SessionRoutes returns REFRESH_TOKEN: the new token must verify and carry the same subject.
// The answer carries the new identity in Response.Refreshed; the connection actor adopts it
// (new roles, new expiry). Over HTTP the route is not exposed: each call brings its token.
func SessionRoutes(verify VerifyFunc) []Route {
	return []Route{{
		PkgID: PkgRefreshToken, Name: "REFRESH_TOKEN", Resource: "session", Lane: LaneControl,
		Schema: `{"type":"object","required":["token"],"properties":{"token":{"type":"string","minLength":1,"maxLength":65536}}}`,
		Handler: func(ctx context.Context, req *Request) (any, any, error) {
			var in struct {
				Token string `json:"token"`
			}
			if err := decode(req, &in); err != nil {
				return nil, nil, err
			}
			u, err := verify(ctx, in.Token)
			if err != nil {
				f := Invalid(FieldError{Path: "/token", Message: err.Error()})
				f.Msg = "Invalid token"
				return nil, nil, f
			}
			if req.User == nil || u.ID != req.User.ID {
				f := Invalid(FieldError{Path: "/token", Message: "the token's subject differs from the connection's"})
				f.Msg = "Token subject mismatch"
				return nil, nil, f
			}
			return refreshed{ExpiresAt: u.ExpiresAt.UTC().Format(time.RFC3339), user: u}, nil, nil
		},
	}}
}

// refreshed is REFRESH_TOKEN's answer data; the pipeline lifts user into Response.Refreshed.
type refreshed struct {
	ExpiresAt string `json:"expires_at"`
	user      *User
}
