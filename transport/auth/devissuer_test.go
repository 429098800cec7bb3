package auth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

func devVerifier(t *testing.T, d *DevIssuer) *Verifier {
	t.Helper()
	return newVerifier(t, Config{Issuer: DevIssuerID, ClientID: "switchboard", KeySet: d.PublicKeySet()})
}

func TestDevIssuerMintVerifyRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "data")
	d, err := OpenDevIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, DevKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", perm)
	}
	if d.KeyPath() != filepath.Join(dir, DevKeyFile) {
		t.Fatalf("KeyPath = %q", d.KeyPath())
	}
	set := d.PublicKeySet()
	k, ok := set.Key(0)
	if set.Len() != 1 || !ok || k.KeyID() == "" || k.Algorithm().String() != "RS256" || k.KeyUsage() != "sig" {
		t.Fatalf("public set: len %d, key %v", set.Len(), k)
	}
	if priv, _ := jwk.IsPrivateKey(k); priv {
		t.Fatal("PublicKeySet leaks the private key")
	}

	v := devVerifier(t, d)
	tok, exp, err := d.Mint(MintParams{Subject: "alice", ClientID: "switchboard", Roles: []string{"get-authors", "admin"}, TTL: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatalf("Verify minted token: %v", err)
	}
	if c.Subject != "alice" || c.Username != "alice" || !slices.Equal(c.Roles, []string{"admin", "get-authors"}) || !c.ExpiresAt.Equal(exp) {
		t.Fatalf("claims = %+v, exp %v", c, exp)
	}
	if d := time.Until(exp); d < 9*time.Minute || d > 10*time.Minute {
		t.Fatalf("expiry in %s", d)
	}

	// Another client's token does not pass this client's verifier.
	other, _, err := d.Mint(MintParams{Subject: "alice", ClientID: "other", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), other); !errors.Is(err, ErrInvalidAudience) {
		t.Fatalf("other client's token: %v", err)
	}
	// Defaults: TTL one hour, username = subject.
	tok, exp, err = d.Mint(MintParams{Subject: "bob", Username: "Bob", ClientID: "switchboard"})
	if err != nil {
		t.Fatal(err)
	}
	if c, err = v.Verify(context.Background(), tok); err != nil || c.Username != "Bob" || len(c.Roles) != 0 {
		t.Fatalf("claims %+v, err %v", c, err)
	}
	if d := time.Until(exp); d < DefaultDevTokenTTL-time.Minute || d > DefaultDevTokenTTL {
		t.Fatalf("default expiry in %s", d)
	}
	for name, p := range map[string]MintParams{
		"no subject":   {ClientID: "switchboard"},
		"no client":    {Subject: "x"},
		"negative ttl": {Subject: "x", ClientID: "switchboard", TTL: -time.Second},
	} {
		if _, _, err := d.Mint(p); err == nil {
			t.Errorf("%s: Mint succeeded", name)
		}
	}
}

func TestDevIssuerKeyPersists(t *testing.T) {
	dir := t.TempDir()
	d1, err := OpenDevIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := d1.Mint(MintParams{Subject: "alice", ClientID: "switchboard"})
	if err != nil {
		t.Fatal(err)
	}
	d2, err := OpenDevIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := d1.PublicKeySet().Key(0)
	k2, _ := d2.PublicKeySet().Key(0)
	if k1.KeyID() != k2.KeyID() {
		t.Fatalf("kid changed on reload: %s != %s", k1.KeyID(), k2.KeyID())
	}
	if _, err := devVerifier(t, d2).Verify(context.Background(), tok); err != nil {
		t.Fatalf("token from before the reload: %v", err)
	}
	// A different data dir is a different key: the old token fails its signature.
	d3, err := OpenDevIssuer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devVerifier(t, d3).Verify(context.Background(), tok); !errors.Is(err, ErrInvalidSignature) {
		t.Fatalf("token under another key: %v", err)
	}
}

func TestDevIssuerConcurrentCreate(t *testing.T) {
	dir := t.TempDir()
	kids := make([]string, 6)
	var wg sync.WaitGroup
	for i := range kids {
		wg.Go(func() {
			d, err := OpenDevIssuer(dir)
			if err != nil {
				t.Errorf("OpenDevIssuer: %v", err)
				return
			}
			k, _ := d.PublicKeySet().Key(0)
			kids[i] = k.KeyID()
		})
	}
	wg.Wait()
	for _, kid := range kids[1:] {
		if kid != kids[0] {
			t.Fatalf("concurrent opens disagree on the key: %v", kids)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != DevKeyFile {
		t.Fatalf("data dir holds %v, want only %s", entries, DevKeyFile)
	}
}

func TestDevIssuerRejectsBadKeyFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenDevIssuer(dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, DevKeyFile)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDevIssuer(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key: err = %v", err)
	}
	if err := os.WriteFile(path, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDevIssuer(dir); err == nil {
		t.Fatal("garbage key file accepted")
	}
	if _, err := OpenDevIssuer(""); err == nil {
		t.Fatal("empty data dir accepted")
	}
}

func TestDevIssuerHandlers(t *testing.T) {
	d, err := OpenDevIssuer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(DevJWKSPath, d.JWKSHandler())
	mux.Handle("/.well-known/openid-configuration", d.DiscoveryHandler("http://127.0.0.1:8000/"))

	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, DevJWKSPath, nil))
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("JWKS: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	set, err := jwk.Parse(rec.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	k, _ := set.Key(0)
	want, _ := d.PublicKeySet().Key(0)
	if set.Len() != 1 || k.KeyID() != want.KeyID() {
		t.Fatalf("served set %v", set)
	}
	if priv, _ := jwk.IsPrivateKey(k); priv {
		t.Fatal("JWKS serves the private key")
	}
	// The served set verifies minted tokens just like PublicKeySet.
	v := newVerifier(t, Config{Issuer: DevIssuerID, ClientID: "switchboard", KeySet: set})
	tok, _, _ := d.Mint(MintParams{Subject: "alice", ClientID: "switchboard"})
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}

	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, DevJWKSPath, nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST JWKS: %d", rec.Code)
	}

	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/.well-known/openid-configuration", nil))
	var doc map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["issuer"] != DevIssuerID || doc["jwks_uri"] != "http://127.0.0.1:8000"+DevJWKSPath {
		t.Fatalf("discovery = %v", doc)
	}
}
