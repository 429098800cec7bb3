package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jws"
	"golang.org/x/crypto/bcrypt"
)

// bcrypt at the default cost takes about a second under -race; the tests need no strength.
func init() { demoHashCost = bcrypt.MinCost }

var allDemoRoles = []string{"admin", "broadcast", "create-author", "delete-author", "get-authors", "update-author"}

func openDevUsers(t *testing.T, dir string) (*DevUsers, []DemoUser) {
	t.Helper()
	u, created, err := OpenDevUsers(dir)
	if err != nil {
		t.Fatalf("OpenDevUsers: %v", err)
	}
	return u, created
}

func demoPassword(t *testing.T, created []DemoUser, name string) string {
	t.Helper()
	for _, d := range created {
		if d.Username == name {
			return d.Password
		}
	}
	t.Fatalf("no demo user %q in %v", name, created)
	return ""
}

func TestOpenDevUsersCreatesOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	u, created := openDevUsers(t, dir)
	if u.Path() != filepath.Join(dir, DevUsersFile) || u.Len() != 2 || len(created) != 2 {
		t.Fatalf("path %q, %d users, %d created", u.Path(), u.Len(), len(created))
	}
	roles := map[string][]string{}
	for _, d := range created {
		if len(d.Password) < 20 {
			t.Fatalf("demo password for %s is weak: %d chars", d.Username, len(d.Password))
		}
		roles[d.Username] = slices.Sorted(slices.Values(d.Roles))
	}
	if !slices.Equal(roles["admin"], allDemoRoles) || !slices.Equal(roles["reader"], []string{"get-authors"}) {
		t.Fatalf("demo roles = %v", roles)
	}
	if created[0].Password == created[1].Password {
		t.Fatal("demo users share a password")
	}

	fi, err := os.Stat(u.Path())
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("users file mode %04o, want 0600", perm)
	}
	data, err := os.ReadFile(u.Path())
	if err != nil {
		t.Fatal(err)
	}
	var entries []map[string]any
	if err := json.Unmarshal(data, &entries); err != nil {
		t.Fatalf("users file is not the documented JSON: %v", err)
	}
	for i, e := range entries {
		hash, _ := e["password_hash"].(string)
		if _, err := bcrypt.Cost([]byte(hash)); err != nil || e["username"] == nil || e["roles"] == nil || len(e) != 3 {
			t.Fatalf("entry %d = %v", i, e)
		}
	}
	for _, d := range created {
		if bytes.Contains(data, []byte(d.Password)) {
			t.Fatal("the users file holds a password in clear")
		}
		if _, err := u.Authenticate(context.Background(), d.Username, d.Password); err != nil {
			t.Fatalf("demo user %s: %v", d.Username, err)
		}
	}

	// Reopened: nothing created, the same users and passwords, the file untouched.
	u2, again := openDevUsers(t, dir)
	if again != nil {
		t.Fatalf("reopen created %v", again)
	}
	if after, _ := os.ReadFile(u.Path()); !bytes.Equal(after, data) {
		t.Fatal("reopen rewrote the users file")
	}
	if _, err := u2.Authenticate(context.Background(), "admin", demoPassword(t, created, "admin")); err != nil {
		t.Fatalf("after reopen: %v", err)
	}
}

func TestDevUsersRejects(t *testing.T) {
	u, created := openDevUsers(t, t.TempDir())
	pw := demoPassword(t, created, "admin")
	for _, c := range []struct{ name, user, pass string }{
		{"bad password", "admin", pw + "x"},
		{"another user's password", "reader", pw},
		{"unknown user", "mallory", pw},
		{"empty password", "admin", ""},
		{"empty username", "", pw},
		{"case differs", "Admin", pw},
		// bcrypt would compare only the first 72 bytes: longer passwords are refused.
		{"over 72 bytes", "admin", pw + strings.Repeat("x", 72)},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := u.Authenticate(context.Background(), c.user, c.pass); !errors.Is(err, ErrBadCredentials) {
				t.Fatalf("err = %v, want ErrBadCredentials", err)
			}
		})
	}
}

// An unknown user costs a bcrypt comparison too, so timing does not reveal usernames.
func TestDevUsersUnknownUserTiming(t *testing.T) {
	u, created := openDevUsers(t, t.TempDir())
	want, _ := bcrypt.Cost(u.hash["admin"])
	if got, _ := bcrypt.Cost(u.dummy); got != want {
		t.Fatalf("dummy hash cost %d, want the users' %d", got, want)
	}
	measure := func(user string) time.Duration {
		best := time.Hour
		for range 5 {
			start := time.Now()
			_, _ = u.Authenticate(context.Background(), user, "wrong-"+demoPassword(t, created, "admin"))
			best = min(best, time.Since(start))
		}
		return best
	}
	known, unknown := measure("admin"), measure("nobody")
	// Without the dummy comparison, unknown would be ~1000× faster.
	if unknown < known/4 {
		t.Fatalf("unknown user %s, known user %s: the difference reveals which users exist", unknown, known)
	}
}

func TestDevUsersAuthenticateHonoursContext(t *testing.T) {
	u, created := openDevUsers(t, t.TempDir())
	for range cap(u.slots) { // every comparison slot busy
		u.slots <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := u.Authenticate(ctx, "admin", demoPassword(t, created, "admin"))
	if !errors.Is(err, ErrIdPUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrIdPUnavailable wrapping DeadlineExceeded", err)
	}
}

func TestOpenDevUsersConcurrentCreation(t *testing.T) {
	dir := t.TempDir()
	const n = 4
	var wg sync.WaitGroup
	results := make([][]DemoUser, n)
	users := make([]*DevUsers, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { users[i], results[i], errs[i] = OpenDevUsers(dir) })
	}
	wg.Wait()
	var winner []DemoUser
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("opener %d: %v", i, errs[i])
		}
		if results[i] != nil {
			if winner != nil {
				t.Fatal("two openers report having created the users file")
			}
			winner = results[i]
		}
	}
	if winner == nil {
		t.Fatal("no opener reports having created the users file")
	}
	// The printed passwords are the ones every opener checks against.
	for i := range n {
		if _, err := users[i].Authenticate(context.Background(), "reader", demoPassword(t, winner, "reader")); err != nil {
			t.Fatalf("opener %d: %v", i, err)
		}
	}
}

func TestOpenDevUsersRefusesBadFiles(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	h := string(hash)
	for name, c := range map[string]struct {
		body string
		mode os.FileMode
		want string
	}{
		"readable by others": {`[]`, 0o644, "chmod 600"},
		"clear password":     {`[{"username":"a","password":"pw","roles":[]}]`, 0o600, "password_hash"},
		"not a bcrypt hash":  {`[{"username":"a","password_hash":"pw","roles":[]}]`, 0o600, "not a bcrypt hash"},
		"duplicate user":     {`[{"username":"a","password_hash":"` + h + `"},{"username":"a","password_hash":"` + h + `"}]`, 0o600, "duplicate"},
		"empty username":     {`[{"username":"","password_hash":"` + h + `"}]`, 0o600, "username"},
		"empty role":         {`[{"username":"a","password_hash":"` + h + `","roles":[""]}]`, 0o600, "empty role"},
		"not an array":       {`{"a":"b"}`, 0o600, "expected"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, DevUsersFile)
			if err := os.WriteFile(path, []byte(c.body), c.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, c.mode); err != nil { // umask-proof
				t.Fatal(err)
			}
			_, created, err := OpenDevUsers(dir)
			if err == nil || !strings.Contains(err.Error(), c.want) || created != nil {
				t.Fatalf("err = %v, want one mentioning %q", err, c.want)
			}
			if after, _ := os.ReadFile(path); string(after) != c.body {
				t.Fatal("a bad users file was overwritten")
			}
		})
	}
	t.Run("hand-written file", func(t *testing.T) {
		dir := t.TempDir()
		body := `[{"username":"carol","password_hash":"` + h + `","roles":["get-authors"]}, {"username":"dave","password_hash":"` + h + `"}]`
		if err := os.WriteFile(filepath.Join(dir, DevUsersFile), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		u, created := openDevUsers(t, dir)
		if created != nil || u.Len() != 2 {
			t.Fatalf("created %v, %d users", created, u.Len())
		}
		if got, err := u.Authenticate(context.Background(), "dave", "pw"); err != nil || got.Roles == nil || len(got.Roles) != 0 {
			t.Fatalf("dave: %+v, %v", got, err)
		}
	})
}

func TestDevLoginTokensVerify(t *testing.T) {
	dir := t.TempDir()
	d, err := OpenDevIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	u, created := openDevUsers(t, dir)
	v := devVerifier(t, d)
	login := DevLogin{Users: u, Issuer: d, ClientID: "switchboard", TTL: 10 * time.Minute}
	var _ Login = login

	for _, c := range []struct {
		user  string
		roles []string
	}{{"admin", allDemoRoles}, {"reader", []string{"get-authors"}}} {
		t.Run(c.user, func(t *testing.T) {
			tok, err := login.Login(context.Background(), c.user, demoPassword(t, created, c.user))
			if err != nil {
				t.Fatalf("Login: %v", err)
			}
			if tok.ExpiresIn != 600 || tok.AccessToken == "" || tok.RefreshToken == "" {
				t.Fatalf("tokens: expires_in %d, access %t, refresh %t", tok.ExpiresIn, tok.AccessToken != "", tok.RefreshToken != "")
			}
			claims, err := v.Verify(context.Background(), tok.AccessToken)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if claims.Subject != c.user || claims.Username != c.user || !slices.Equal(claims.Roles, c.roles) {
				t.Fatalf("claims = %+v", claims)
			}
			if left := time.Until(claims.ExpiresAt); left < 9*time.Minute || left > 10*time.Minute {
				t.Fatalf("access token expires in %s", left)
			}

			// The refresh token is the development key's, typ Refresh, and no access token.
			if _, err := v.Verify(context.Background(), tok.RefreshToken); err == nil {
				t.Fatal("the refresh token passes as an access token")
			}
			payload, err := jws.Verify([]byte(tok.RefreshToken), jws.WithKeySet(d.PublicKeySet()))
			if err != nil {
				t.Fatalf("refresh token signature: %v", err)
			}
			var rc map[string]any
			if err := json.Unmarshal(payload, &rc); err != nil {
				t.Fatal(err)
			}
			exp, _ := rc["exp"].(float64)
			if rc["typ"] != "Refresh" || rc["sub"] != c.user || rc["iss"] != DevIssuerID || rc["azp"] != nil ||
				time.Until(time.Unix(int64(exp), 0)) < DefaultDevRefreshTTL-time.Minute {
				t.Fatalf("refresh claims = %v", rc)
			}
		})
	}

	for name, pass := range map[string][2]string{
		"bad password": {"admin", "not-the-password"},
		"unknown user": {"mallory", demoPassword(t, created, "admin")},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := login.Login(context.Background(), pass[0], pass[1]); !errors.Is(err, ErrBadCredentials) {
				t.Fatalf("err = %v, want ErrBadCredentials", err)
			}
		})
	}
	t.Run("default TTL", func(t *testing.T) {
		tok, err := DevLogin{Users: u, Issuer: d, ClientID: "switchboard"}.Login(context.Background(), "reader", demoPassword(t, created, "reader"))
		if err != nil || tok.ExpiresIn != int(DefaultDevTokenTTL/time.Second) {
			t.Fatalf("expires_in %d, err %v", tok.ExpiresIn, err)
		}
	})
	t.Run("misconfigured", func(t *testing.T) {
		_, err := DevLogin{Users: u}.Login(context.Background(), "reader", demoPassword(t, created, "reader"))
		if err == nil || errors.Is(err, ErrBadCredentials) || errors.Is(err, ErrIdPUnavailable) {
			t.Fatalf("err = %v", err)
		}
	})
}
