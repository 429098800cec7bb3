package client

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"
)

// tokenExpiry reads the exp claim of a JWT without verifying it: the client only needs to know
// when to refresh; the server verifies. The zero time means unknown (not a JWT, no exp).
func tokenExpiry(tok string) time.Time {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == "" {
		return time.Time{}
	}
	f, err := claims.Exp.Float64()
	if err != nil || f <= 0 || f > 1e11 {
		return time.Time{}
	}
	return time.Unix(int64(f), 0)
}

// refreshIn is how long from now to refresh a token that expires at exp: before seconds ahead
// of exp, but at most half of what is left, so a short-lived token is refreshed in time too.
// ok is false when there is nothing to schedule (exp unknown, refreshing ahead disabled).
func refreshIn(exp, now time.Time, before time.Duration) (d time.Duration, ok bool) {
	if exp.IsZero() || before < 0 {
		return 0, false
	}
	left := exp.Sub(now)
	if left <= 0 {
		return 0, true
	}
	ahead := min(before, left/2)
	return left - ahead, true
}

// needsFresh reports whether a token that expires at exp should be replaced before dialing
// with it: it has expired, or has less than a second left (the handshake would race its end).
func needsFresh(exp, now time.Time) bool {
	return !exp.IsZero() && !now.Before(exp.Add(-time.Second))
}
