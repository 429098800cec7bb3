package auth

import (
	"crypto/sha256"
	"sync"
	"time"
	"unsafe"
)

const (
	// tokenCacheTTL bounds how long a verified token is answered from the cache; its own
	// expiry (without leeway) bounds it further.
	tokenCacheTTL = time.Minute
	// The cache holds at most this many tokens, and at most this many bytes of entries as
	// counted by entrySize (a few hundred bytes for a token with a handful of roles, so the
	// byte bound only matters for tokens carrying many roles).
	tokenCacheMaxEntries = 4096
	tokenCacheMaxBytes   = 4 << 20
)

// tokenKey identifies a token in the cache: the SHA-256 digest of its exact text. A hit
// skips the signature check, so the key must be collision resistant: two different tokens
// never share an entry.
type tokenKey [sha256.Size]byte

// tokenKeyOf returns token's key. The token is hashed through a buffer on the stack, so the
// hit path does not copy it to the heap.
func tokenKeyOf(token string) tokenKey {
	var buf [512]byte
	h := sha256.New()
	for len(token) > 0 {
		n := copy(buf[:], token)
		h.Write(buf[:n])
		token = token[n:]
	}
	var k tokenKey
	h.Sum(k[:0])
	return k
}

// tokenCache remembers tokens that passed every check, keyed by the digest of the exact
// token text, so a client presenting the same token again (reconnects, several connections,
// the HTTP API) costs a hash and a map lookup instead of a parse, an RSA operation and a
// JSON decode. It keeps only what Verify returns (the Claims) and the time claims it checks
// again, never the token or its other claims. Each keyring snapshot has its own, so a
// change of the key set (a removed key above all) empties it: an entry only ever answers
// for the keys it was verified with. Entries live at most tokenCacheTTL and never past the
// token's exp; the time claims are checked again on every hit, as Verify would. Only
// successes are cached.
type tokenCache struct {
	mu    sync.Mutex
	m     map[tokenKey]*cachedToken
	bytes int // sum of entrySize
}

type cachedToken struct {
	claims Claims // handed out as copies; Roles is shared
	times  timeClaims
	until  time.Time // carries a monotonic reading: immune to wall clock steps
}

// entryOverhead approximates the fixed cost of an entry: its map slot (key and pointer,
// with the table's spare room) and the cachedToken.
const entryOverhead = 2*(sha256.Size+8) + int(unsafe.Sizeof(cachedToken{}))

// entrySize is the memory an entry holds, approximately: the fixed part and the strings and
// role slice of its Claims (Username may share Subject's bytes; it is counted anyway).
func entrySize(c *Claims) int {
	n := entryOverhead + len(c.Subject) + len(c.Username) + cap(c.Roles)*int(unsafe.Sizeof(""))
	for _, r := range c.Roles {
		n += len(r)
	}
	return n
}

func newTokenCache() *tokenCache {
	return &tokenCache{m: map[tokenKey]*cachedToken{}}
}

// get returns the entry of the token with key k if it is still valid at now (nil if not).
// Entries are never modified: read its claims, hand out copies.
func (c *tokenCache) get(k tokenKey, now time.Time, leeway time.Duration) *cachedToken {
	c.mu.Lock()
	e, ok := c.m[k]
	if ok && !e.valid(now, leeway) {
		c.remove(k, e)
		e = nil
	}
	c.mu.Unlock()
	return e
}

// valid reports whether the entry may still answer for its token at now.
func (e *cachedToken) valid(now time.Time, leeway time.Duration) bool {
	return now.Before(e.until) && e.times.check(now, leeway) == nil
}

// put caches claims for the token with key k, verified at now, unless its exp is already
// past (a token accepted within the leeway is verified afresh every time); it returns the
// entry, or nil when it cached nothing.
func (c *tokenCache) put(k tokenKey, claims Claims, times timeClaims, now time.Time) *cachedToken {
	ttl := min(tokenCacheTTL, time.Unix(times.exp, 0).Sub(now))
	size := entrySize(&claims)
	if ttl <= 0 || size > tokenCacheMaxBytes/64 {
		return nil
	}
	e := &cachedToken{claims: claims, times: times, until: now.Add(ttl)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[k]; ok {
		c.remove(k, old)
	}
	if len(c.m) >= tokenCacheMaxEntries || c.bytes+size > tokenCacheMaxBytes {
		c.evict(now, size)
	}
	c.m[k] = e
	c.bytes += size
	return e
}

// evict makes room for an entry of n bytes: first by dropping the entries past their time,
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

func (c *tokenCache) remove(k tokenKey, e *cachedToken) {
	if c.m[k] == e {
		delete(c.m, k)
		c.bytes -= entrySize(&e.claims)
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
