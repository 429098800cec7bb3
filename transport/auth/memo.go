package auth

import (
	"context"
	"sync/atomic"
	"time"
)

// Memo remembers the last token verified through VerifyMemo, for a caller that presents one
// token again and again on one connection (an HTTP keep-alive client): a hit compares the exact
// token text instead of hashing it for the verified-token cache (SHA-256 was about 7 % of a
// GET /authors). It answers only as the cache entry it keeps would: for the key set snapshot
// the token was verified with, before the entry's end, and after checking the time claims
// again. The zero Memo is empty and ready; it is safe for concurrent use.
type Memo struct{ last atomic.Pointer[memoEntry] }

type memoEntry struct {
	token string
	kr    *keyring
	e     *cachedToken // never modified
}

// VerifyMemo is Verify, answered from m when token is the one m remembers and still valid; a
// token verified afresh (or from the cache) replaces what m remembers. A nil m is Verify.
func (v *Verifier) VerifyMemo(ctx context.Context, token string, m *Memo) (*Claims, error) {
	if m == nil {
		return v.Verify(ctx, token)
	}
	if last := m.last.Load(); last != nil && last.token == token && last.kr == v.keys.Load() &&
		last.e.valid(time.Now(), v.cfg.Leeway) {
		c := last.e.claims
		return &c, nil
	}
	c, kr, e, err := v.verify(ctx, token)
	if err != nil || e == nil {
		m.last.Store(nil)
		return c, err
	}
	m.last.Store(&memoEntry{token: token, kr: kr, e: e})
	return c, nil
}
