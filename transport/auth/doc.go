// Package auth verifies the OIDC access tokens (JWTs) that authenticate WebSocket and HTTP
// callers against an issuer's JWKS, found by discovery and kept in a jwk.Cache. It also
// provides the built-in development issuer, whose tokens go through the same Verifier.
//
// Concurrency: a Verifier is safe for concurrent use. Verify reads an immutable snapshot of
// the keys and never waits for a background refresh; only a token with an unknown kid (or a
// Verifier with no keys yet) waits for a fetch, of which at most one runs at a time and at
// most one starts per Config.MinRefreshInterval. Close cancels the jwk.Cache's context and
// waits for the fetches the Verifier started; call it once the Verifier is no longer used
// (again is a no-op). A DevIssuer is immutable after OpenDevIssuer and safe for concurrent use.
//
// Login (POST /login) has two implementations: PasswordGrant, the OIDC password grant
// against the issuer's token endpoint, and DevLogin, the development users file with the
// DevIssuer. A PasswordGrant is safe for concurrent use; each Login is bounded by its
// Timeout, and Close releases its idle connections. DevUsers is immutable after
// OpenDevUsers and safe for concurrent use; it runs at most GOMAXPROCS bcrypt comparisons
// at once, and a Login waiting for one ends with its context.
package auth
