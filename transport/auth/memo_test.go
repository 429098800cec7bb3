package auth

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"switchboard/transport/auth/oidctest"
)

// A memo answers its token again without the cache (a hit leaves the cache alone), hands out
// copies, never answers another token, forgets a token that failed, and rechecks expiry.
func TestMemoAnswersOnlyItsToken(t *testing.T) {
	iss := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL()})
	ctx := context.Background()
	var m Memo
	tok := iss.Token(t, oidctest.TokenClaims{Subject: "u-1", Username: "alice", RealmRoles: []string{"b", "a"}})
	c1, err := v.VerifyMemo(ctx, tok, &m)
	if err != nil {
		t.Fatal(err)
	}
	v.keys.Load().tokens.clear()
	c1.Subject = "mallory"
	c2, err := v.VerifyMemo(ctx, tok, &m)
	if err != nil || c2.Subject != "u-1" || !slices.Equal(c2.Roles, []string{"a", "b"}) {
		t.Fatalf("memo answer %+v, %v", c2, err)
	}
	if n := v.keys.Load().tokens.size(); n != 0 {
		t.Fatalf("a memo hit went to the cache (%d cached tokens)", n)
	}
	// A tampered copy (same length) is verified, fails, and the memo forgets.
	bad := tok[:len(tok)-4] + "AAAA"
	if bad == tok {
		bad = tok[:len(tok)-4] + "BBBB"
	}
	_, err = v.VerifyMemo(ctx, bad, &m)
	checkErr(t, err, ErrInvalidSignature, bad)
	if m.last.Load() != nil {
		t.Fatal("the memo kept a token after a failure")
	}
	// Another user's token replaces the memo.
	other := iss.Token(t, oidctest.TokenClaims{Subject: "u-2"})
	if c, err := v.VerifyMemo(ctx, other, &m); err != nil || c.Subject != "u-2" {
		t.Fatalf("other token: %+v, %v", c, err)
	}
	if c, err := v.VerifyMemo(ctx, tok, &m); err != nil || c.Subject != "u-1" {
		t.Fatalf("first token again: %+v, %v", c, err)
	}

	short := iss.Token(t, oidctest.TokenClaims{ExpiresAt: time.Now().Add(4 * time.Second)})
	for range 2 {
		if _, err := v.VerifyMemo(ctx, short, &m); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := v.VerifyMemo(ctx, short, &m)
		if errors.Is(err, ErrTokenExpired) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the remembered token still verifies 11 s after its expiry (%v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A memo answers only for the key set its token was verified with.
func TestMemoForgetsRemovedKeys(t *testing.T) {
	iss := oidctest.New(t)
	v := newVerifier(t, Config{Issuer: iss.URL(), MinRefreshInterval: time.Nanosecond})
	ctx := context.Background()
	var m Memo
	kid1 := iss.KeyID()
	tok1 := iss.Token(t, oidctest.TokenClaims{})
	for range 3 {
		if _, err := v.VerifyMemo(ctx, tok1, &m); err != nil {
			t.Fatal(err)
		}
	}
	iss.RotateKey()
	iss.RemoveKey(kid1)
	if _, err := v.Verify(ctx, iss.Token(t, oidctest.TokenClaims{})); err != nil { // new kid: reload
		t.Fatal(err)
	}
	_, err := v.VerifyMemo(ctx, tok1, &m)
	checkErr(t, err, ErrInvalidSignature, tok1)
}
