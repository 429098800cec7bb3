package auth

import (
	"errors"
	"fmt"
)

// Verification failures. Verify wraps exactly one of them (with %w); the text of every error
// it returns is safe to show to a client: it never contains the token or library internals.
var (
	ErrMissingToken      = errors.New("missing token")
	ErrTokenExpired      = errors.New("token expired")
	ErrTokenNotYetValid  = errors.New("token not yet valid")
	ErrInvalidSignature  = errors.New("invalid token signature")
	ErrInvalidIssuer     = errors.New("invalid token issuer")
	ErrInvalidAudience   = errors.New("invalid token audience")
	ErrMalformedToken    = errors.New("malformed token")
	ErrKeysUnavailable   = errors.New("token signing keys unavailable")
	errVerifierClosed    = errors.New("verifier closed")
	errRefreshThrottled  = errors.New("key refresh throttled")
	errNoUsableKeys      = errors.New("key set has no usable signature keys")
	errDiscoveryMismatch = errors.New("discovery document issuer does not match the configured issuer")
)

// Login failures (see Login). Like the verification errors, their text is safe to show to
// a client; the details (the IdP's error, the network failure) are logged, never wrapped.
// The edge maps ErrBadCredentials to 401 and ErrIdPUnavailable to 503.
var (
	// ErrBadCredentials: unknown user, wrong password, or an account the IdP refuses
	// (disabled, required actions pending): the IdP's invalid_grant.
	ErrBadCredentials = errors.New("invalid username or password")
	// ErrIdPUnavailable: the identity provider could not be asked or did not answer
	// usably (network error, timeout, 5xx, a malformed answer, or a rejected client
	// configuration, which is logged at error level for the operator).
	ErrIdPUnavailable = errors.New("identity provider unavailable")
	// ErrInvalidRefreshToken: a refresh token that is not one (an access token, garbage, one
	// signed by another key or issued to another client), has expired or was revoked, or
	// whose user no longer exists: the IdP's invalid_grant on a refresh. The edge answers 401.
	ErrInvalidRefreshToken = errors.New("invalid or expired refresh token")
)

// ErrNoDevKey: LoadDevIssuer found no development key in the data directory.
var ErrNoDevKey = errors.New("no development issuer key")

// fail builds a client-safe error: the sentinel, optionally followed by a fixed reason.
// Library errors (which may quote token fragments) are logged by the caller, never wrapped.
func fail(kind error, reason string) error {
	if reason == "" {
		return fmt.Errorf("%w", kind)
	}
	return fmt.Errorf("%w: %s", kind, reason)
}
