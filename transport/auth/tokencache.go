package auth

import (
	"strings"
	"sync"
	"time"
)

const (
	// tokenCacheTTL bounds how long a verified token is answered from the cache; its own
	// expiry (without leeway) bounds it further.
	tokenCacheTTL = time.Minute
	// The cache holds at most this many tokens and this much token text (the decoded claims
	// are of the same order of size).
	tokenCacheMaxEntries = 4096
	tokenCacheMaxBytes   = 8 << 20
)

// tokenCache remembers tokens that passed every check, keyed by the exact token string, so
// a client presenting the same token again (reconnects, several connections, the HTTP API)
// costs a map lookup instead of a parse, an RSA operation and a JSON decode. Each keyring
// snapshot has its own, so a change of the key set (a removed key above all) empties it: an
// entry only ever answers for the keys it was verified with. Entries live at most
// tokenCacheTTL and never past the token's exp; the time claims are checked again on every
// hit, as Verify would. Only successes are cached.
type tokenCache struct {
	mu    sync.Mutex
	m     map[string]*cachedToken
	bytes int // sum of len(key)
}

type cachedToken struct {
	claims *Claims // shared: handed out as shallow copies only
	times  timeClaims
	until  time.Time // carries a monotonic reading: immune to wall clock steps
}

func newTokenCache() *tokenCache {
	return &tokenCache{m: map[string]*cachedToken{}}
}

// get returns a copy of the cached claims of token if it is still valid at now.
func (c *tokenCache) get(token string, now time.Time, leeway time.Duration) (*Claims, bool) {
	c.mu.Lock()
	e, ok := c.m[token]
	if ok && (!now.Before(e.until) || e.times.check(now, leeway) != nil) {
		c.remove(token, e)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		return nil, false
	}
	claims := *e.claims
	return &claims, true
}

// put caches claims for token, verified at now, unless its exp is already past (a token
// accepted within the leeway is verified afresh every time).
func (c *tokenCache) put(token string, claims *Claims, times timeClaims, now time.Time) {
	ttl := min(tokenCacheTTL, times.exp.Sub(now))
	if ttl <= 0 || len(token) > tokenCacheMaxBytes/64 {
		return
	}
	e := &cachedToken{claims: claims, times: times, until: now.Add(ttl)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[token]; ok {
		c.remove(token, old)
	}
	if len(c.m) >= tokenCacheMaxEntries || c.bytes+len(token) > tokenCacheMaxBytes {
		c.evict(now, len(token))
	}
	// A private copy: the caller's token may be a slice of a much larger string.
	c.m[strings.Clone(token)] = e
	c.bytes += len(token)
}

// evict makes room for a token of n bytes: first by dropping the entries past their time,
// then arbitrary ones down to 3/4 of the limits, so that a full cache of live tokens is
// swept once per quarter of its size, not on every insertion.
func (c *tokenCache) evict(now time.Time, n int) {
	for k, e := range c.m {
		if !now.Before(e.until) {
			c.remove(k, e)
		}
	}
	for k, e := range c.m { // map order: arbitrary
		if len(c.m) < tokenCacheMaxEntries*3/4 && c.bytes+n <= tokenCacheMaxBytes*3/4 {
			break
		}
		c.remove(k, e)
	}
}

func (c *tokenCache) remove(k string, e *cachedToken) {
	if c.m[k] == e {
		delete(c.m, k)
		c.bytes -= len(k)
	}
}

// clear empties the cache.
func (c *tokenCache) clear() {
	c.mu.Lock()
	clear(c.m)
	c.bytes = 0
	c.mu.Unlock()
}

// size is the number of cached tokens.
func (c *tokenCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
