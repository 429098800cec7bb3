package auth

import (
	"context"
	"testing"
)

// BenchmarkVerify measures Verify on RS256 tokens of the development issuer (a static key
// set, so no network): "same-token" verifies one token over and over (what a client
// reconnecting, or a pipeline re-checking a session token, costs), "cache-miss" a different
// token each time with the verified-token cache emptied before every call, so each Verify
// parses, checks the RSA signature and decodes the claims.
func BenchmarkVerify(b *testing.B) {
	d, err := OpenDevIssuer(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	v, err := NewVerifier(context.Background(), Config{Issuer: DevIssuerID, ClientID: "switchboard", KeySet: d.PublicKeySet()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(v.Close)
	mint := func() string {
		tok, _, err := d.Mint(MintParams{Subject: "bench-user", Username: "bench", ClientID: "switchboard",
			Roles: []string{"get-authors", "create-author", "broadcast"}})
		if err != nil {
			b.Fatal(err)
		}
		return tok
	}
	ctx := context.Background()

	b.Run("same-token", func(b *testing.B) {
		tok := mint()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := v.Verify(ctx, tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cache-miss", func(b *testing.B) {
		toks := make([]string, 64) // signing is ~30x slower than verifying: mint a pool
		for i := range toks {
			toks[i] = mint()
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			forgetVerifiedTokens(v)
			if _, err := v.Verify(ctx, toks[i%len(toks)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// forgetVerifiedTokens empties v's verified-token cache.
func forgetVerifiedTokens(v *Verifier) { v.keys.Load().tokens.clear() }
