package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// FuzzVerify drives the whole of Verify, the entry point every bearer token of the handshake,
// the façade and REFRESH_TOKEN goes through, with tokens built from an arbitrary header,
// payload and signature, signed with the verifier's own key or not, and with arbitrary
// strings as they are. It never panics; every error wraps exactly one sentinel and quotes no
// part of the token; only a token this test signed is ever accepted, and then its claims
// are in time. (FuzzParseCompactMatchesJWSParse and FuzzClaimsMatchMapDecode compare the
// parts with the library code they replaced; this one checks the assembly.) Seeds: below
// and testdata/fuzz/FuzzVerify.
func FuzzVerify(f *testing.F) {
	now := time.Now().Unix()
	claims := fmt.Sprintf(`{"iss":%q,"aud":"switchboard","sub":"u","exp":%d,"realm_access":{"roles":["admin"]}}`, DevIssuerID, now+3600)
	f.Add(`{"alg":"EdDSA","kid":"k"}`, claims, []byte("sig"), true, "e30.e30.AA")
	f.Add(`{"alg":"EdDSA","kid":"k"}`, claims, []byte("sig"), false, "")
	f.Add(`{"alg":"none"}`, claims, []byte{}, false, "..")
	f.Add(`{"alg":"HS256","kid":"k"}`, claims, []byte("sig"), true, "a.b.c.d")
	f.Add(`{"alg":"EdDSA","kid":"other"}`, `{"exp":1e999}`, []byte{0}, true, "\x00.\xff.\n")

	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	pub, err := jwk.FromRaw(priv.Public())
	if err != nil {
		f.Fatal(err)
	}
	_ = pub.Set(jwk.KeyIDKey, "k")
	_ = pub.Set(jwk.AlgorithmKey, jwa.EdDSA)
	set := jwk.NewSet()
	_ = set.AddKey(pub)
	v, err := NewVerifier(context.Background(), Config{Issuer: DevIssuerID, ClientID: "switchboard", KeySet: set})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(v.Close)

	enc := base64.RawURLEncoding.EncodeToString
	f.Fuzz(func(t *testing.T, header, payload string, sig []byte, sign bool, raw string) {
		input := enc([]byte(header)) + "." + enc([]byte(payload))
		if sign {
			sig = ed25519.Sign(priv, []byte(input))
		}
		built := input + "." + enc(sig)
		for _, tok := range []string{built, raw} {
			c, err := v.Verify(context.Background(), tok)
			if err != nil {
				checkErr(t, err, err, tok)
				continue
			}
			if !sign || tok != built {
				t.Fatalf("accepted a token it did not sign: %q", tok)
			}
			if c.ExpiresAt.Before(time.Now().Add(-v.cfg.Leeway - time.Second)) {
				t.Fatalf("accepted %q with claims %+v", payload, c)
			}
		}
	})
}
