package oidctest_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"switchboard/transport/auth"
	"switchboard/transport/auth/oidctest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresIn    int    `json:"expires_in"`
	TokenType    string `json:"token_type"`
	Error        string `json:"error"`
}

func postToken(t *testing.T, iss *oidctest.Issuer, form url.Values) (int, tokenResponse) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := client.PostForm(iss.URL()+"/protocol/openid-connect/token", form)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var tr tokenResponse
	if err := json.NewDecoder(res.Body).Decode(&tr); err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, tr
}

func TestPasswordGrantTokensVerify(t *testing.T) {
	iss := oidctest.New(t, oidctest.WithClientSecret("s3cret"))
	iss.AddUser("alice", "pw", []string{"get-authors"}, map[string][]string{
		oidctest.DefaultClientID: {"create-author"},
		"other-client":           {"admin"},
	})
	v, err := auth.NewVerifier(context.Background(), auth.Config{Issuer: iss.URL(), ClientID: oidctest.DefaultClientID})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()

	form := url.Values{"grant_type": {"password"}, "client_id": {oidctest.DefaultClientID}, "client_secret": {"s3cret"},
		"username": {"alice"}, "password": {"pw"}}
	code, tr := postToken(t, iss, form)
	if code != http.StatusOK || tr.TokenType != "Bearer" || tr.ExpiresIn != 300 || tr.RefreshToken == "" {
		t.Fatalf("password grant: %d %+v", code, tr)
	}
	c, err := v.Verify(context.Background(), tr.AccessToken)
	if err != nil {
		t.Fatalf("Verify (aud account, azp client): %v", err)
	}
	if c.Username != "alice" || c.Subject != oidctest.UserID("alice") || !slices.Equal(c.Roles, []string{"create-author", "get-authors"}) {
		t.Fatalf("claims %+v", c)
	}

	code, tr = postToken(t, iss, url.Values{"grant_type": {"refresh_token"}, "client_id": {oidctest.DefaultClientID},
		"client_secret": {"s3cret"}, "refresh_token": {tr.RefreshToken}})
	if code != http.StatusOK {
		t.Fatalf("refresh grant: %d %+v", code, tr)
	}
	if _, err := v.Verify(context.Background(), tr.AccessToken); err != nil {
		t.Fatalf("refreshed token: %v", err)
	}

	bad := url.Values{}
	for k, vs := range form {
		bad[k] = vs
	}
	bad.Set("password", "wrong")
	if code, tr := postToken(t, iss, bad); code != http.StatusUnauthorized || tr.Error != "invalid_grant" {
		t.Fatalf("bad password: %d %+v", code, tr)
	}
	bad.Set("password", "pw")
	bad.Set("client_secret", "nope")
	if code, tr := postToken(t, iss, bad); code != http.StatusUnauthorized || tr.Error != "invalid_client" {
		t.Fatalf("bad secret: %d %+v", code, tr)
	}
}

func TestDownAndFetchCounting(t *testing.T) {
	iss := oidctest.New(t)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(path string) int {
		res, err := client.Get(iss.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if code := get("/.well-known/openid-configuration"); code != http.StatusOK {
		t.Fatalf("discovery: %d", code)
	}
	iss.SetDown(true)
	if code := get("/protocol/openid-connect/certs"); code != http.StatusServiceUnavailable {
		t.Fatalf("certs while down: %d", code)
	}
	iss.SetDown(false)
	if code := get("/protocol/openid-connect/certs"); code != http.StatusOK {
		t.Fatalf("certs: %d", code)
	}
	if n := iss.JWKSFetches(); n != 2 {
		t.Fatalf("JWKSFetches = %d, want 2", n)
	}
	kid := iss.KeyID()
	iss.RotateKey()
	if iss.KeyID() == kid || !strings.Contains(iss.Token(t, oidctest.TokenClaims{}), ".") {
		t.Fatal("rotation did not change the current key")
	}
	iss.RemoveKey(iss.KeyID())
	if iss.KeyID() != kid {
		t.Fatal("removing the current key should fall back to the previous one")
	}
}
