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
// Cost: Verify parses a token once, itself rather than with the generic jws.Parse (the
// signature is checked over the signing input as sent, with the algorithm and the raw public
// key of the JWK, both resolved when the key set is loaded), and of its claims decodes only
// those it uses. A token that passed every check is then remembered, keyed by the SHA-256
// digest of its exact text, for at most a minute and never past its exp; while remembered,
// Verify answers it with a hash, a map lookup and a new check of exp, nbf and iat against
// the clock (with Leeway), so a client reconnecting or holding several connections pays the
// RSA operation about once a minute. The cache keeps only the Claims and the time claims,
// never the token or its other claims (a few hundred bytes a token). It belongs to the key
// set snapshot: any change of the keys (a refresh, a rotation, a removed key) empties it, so
// a token never verifies from the cache with a key the Verifier no longer has. It holds at
// most 4096 tokens and about 4 MiB, dropping arbitrary entries when full; failures are never
// cached. Results for the same token share Claims.Roles, which callers must not modify.
//
// Login (POST /login) and Refresh (POST /refresh) have two implementations: PasswordGrant, the
// OIDC password and refresh grants against the issuer's token endpoint, and DevLogin, the
// development users file with the DevIssuer, whose refresh tokens are self-contained JWTs
// (typ Refresh, aud the issuer) that only DevLogin.Refresh accepts. LoadDevIssuer opens an
// existing development key and, unlike OpenDevIssuer, never creates one. A PasswordGrant is safe for concurrent use; each Login is bounded by its
// Timeout, and Close releases its idle connections. DevUsers is immutable after
// OpenDevUsers and safe for concurrent use; it runs at most GOMAXPROCS bcrypt comparisons
// at once, and a Login waiting for one ends with its context.
package auth
