package main

// Tests of the token and config commands and of the development users' first start through
// the real command line (run), against real servers on 127.0.0.1.

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"switchboard/config"
	"switchboard/store/redistest"
	"switchboard/store/storetest"
	"switchboard/transport/auth"
	"switchboard/transport/auth/oidctest"
)

func TestTokenCommand(t *testing.T) {
	s := startServer(t, nil)
	addr := strings.TrimPrefix(s.base, "http://")

	t.Run("the server's data directory", func(t *testing.T) {
		r := runCLI(t, map[string]string{"SWITCHBOARD_ADDR": addr, "SWITCHBOARD_DATA_DIR": s.cfg.DataDir},
			"token", "--user", "alice", "--roles", "get-authors, create-author", "--ttl", "10m")
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		c := s.connect(t, strings.TrimSpace(r.stdout))
		if e := c.call(3, map[string]any{"name": "by token " + limRandomHex(4)}); e.status() != 0 {
			t.Fatalf("CREATE_AUTHOR with the command's token: %d %q", e.status(), e.msg())
		}
	})
	t.Run("--data-dir beats the environment", func(t *testing.T) {
		r := runCLI(t, map[string]string{"SWITCHBOARD_ADDR": addr, "SWITCHBOARD_DATA_DIR": t.TempDir()},
			"token", "--user", "alice", "--data-dir", s.cfg.DataDir)
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		s.connect(t, strings.TrimSpace(r.stdout))
	})
	t.Run("no key: refused, nothing created", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		r := runCLI(t, map[string]string{"SWITCHBOARD_ADDR": addr, "SWITCHBOARD_DATA_DIR": dir}, "token", "--user", "alice")
		expectFailure(t, r, 1, "token: no development key in "+dir+" (SWITCHBOARD_DATA_DIR)", "--data-dir")
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("token created %s", dir)
		}
		if r.stdout != "" {
			t.Fatalf("printed a token: %q", r.stdout)
		}
	})
	t.Run("another server's key: refused", func(t *testing.T) {
		other := t.TempDir()
		if _, err := auth.OpenDevIssuer(other); err != nil {
			t.Fatal(err)
		}
		r := runCLI(t, map[string]string{"SWITCHBOARD_ADDR": addr, "SWITCHBOARD_DATA_DIR": other}, "token", "--user", "alice")
		expectFailure(t, r, 1, "token: the server at "+s.base+" signs with another key than "+filepath.Join(other, auth.DevKeyFile))
		// Without a server on the address, the key is taken on trust.
		r = runCLI(t, map[string]string{"SWITCHBOARD_ADDR": closedPort(t), "SWITCHBOARD_DATA_DIR": other}, "token", "--user", "alice")
		if r.code != 0 || strings.Count(r.stdout, ".") != 2 {
			t.Fatalf("no server: exit %d %s", r.code, r.stderr)
		}
	})
	t.Run("external issuer: refused", func(t *testing.T) {
		r := runCLI(t, map[string]string{"SWITCHBOARD_DATA_DIR": s.cfg.DataDir, "SWITCHBOARD_OIDC_ISSUER": "https://id.example/realms/x"},
			"token", "--user", "alice")
		expectFailure(t, r, 1, "SWITCHBOARD_OIDC_ISSUER is set")
	})
}

func TestConfigCommand(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{
		"SWITCHBOARD_DATABASE_URL":       "postgres://app:hunter2@db.example:5432/sb",
		"SWITCHBOARD_REDIS_URL":          "redis://:redispw@cache.example:6379/0",
		"SWITCHBOARD_OIDC_CLIENT_SECRET": "s3cret",
		"SWITCHBOARD_ALLOWED_ORIGINS":    "example.com",
		"SWITCHBOARD_ADRR":               "127.0.0.1:1",
		"SWITCHBOARD_DATA_DIR":           dir,
	}
	r := runCLI(t, env, "config", "--addr", "127.0.0.1:9999")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{
		"SWITCHBOARD_ADDR=127.0.0.1:9999", "# flag",
		"SWITCHBOARD_DATABASE_URL=postgres://app:xxxxx@db.example:5432/sb", "# environment",
		"SWITCHBOARD_REDIS_URL=redis://:xxxxx@cache.example:6379/0",
		"SWITCHBOARD_OIDC_CLIENT_SECRET=" + config.Redacted,
		"SWITCHBOARD_LOG_LEVEL=info", "# default",
		"SWITCHBOARD_DATA_DIR=" + dir,
		"# identity: built-in development issuer",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	for _, secret := range []string{"hunter2", "redispw", "s3cret"} {
		if strings.Contains(r.stdout+r.stderr, secret) {
			t.Errorf("output shows %q", secret)
		}
	}
	for _, want := range []string{
		"switchboard: warning: SWITCHBOARD_ADRR is not a Switchboard setting and is ignored; did you mean SWITCHBOARD_ADDR?",
		`switchboard: warning: SWITCHBOARD_ALLOWED_ORIGINS: "example.com" has no scheme`,
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("config wrote %d files in the data directory", len(entries))
	}

	// An invalid configuration is still shown, then refused.
	r = runCLI(t, map[string]string{"SWITCHBOARD_LOG_LEVEL": "loud", "SWITCHBOARD_DATA_DIR": dir}, "config")
	expectFailure(t, r, 1, "configuration: SWITCHBOARD_LOG_LEVEL")
	if !strings.Contains(r.stdout, "SWITCHBOARD_ADDR=127.0.0.1:8000") {
		t.Errorf("the settings were not printed:\n%s", r.stdout)
	}
	// So is one that serve would refuse before opening anything.
	r = runCLI(t, map[string]string{"SWITCHBOARD_RBAC_FILE": "/nonexistent.json", "SWITCHBOARD_DATA_DIR": dir}, "config")
	expectFailure(t, r, 1, "SWITCHBOARD_RBAC_FILE: ")
}

// config --check reaches every dependency and names each that fails.
func TestConfigCheckFailures(t *testing.T) {
	env := baseEnv(t,
		"SWITCHBOARD_DATABASE_URL", "postgres://postgres@"+closedPort(t)+"/x?sslmode=disable",
		"SWITCHBOARD_REDIS_URL", "redis://"+closedPort(t)+"/0",
		"SWITCHBOARD_OIDC_ISSUER", "http://"+closedPort(t)+"/realms/x",
	)
	r := runCLI(t, env, "config", "--check", "--timeout", "1s")
	expectFailure(t, r, 1, "configuration check failed: database, redis, identity")
	for _, want := range []string{
		"FAILED  database  SWITCHBOARD_DATABASE_URL: database unavailable",
		"FAILED  redis     SWITCHBOARD_REDIS_URL: 127.0.0.1:",
		"FAILED  identity  SWITCHBOARD_OIDC_ISSUER: http://127.0.0.1:",
		"ok      files",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, r.stdout)
		}
	}

	// A Redis URL that does not parse is one failure, under redis.
	r = runCLI(t, baseEnv(t, "SWITCHBOARD_REDIS_URL", "redis://127.0.0.1:99999/0"), "config", "--check")
	expectFailure(t, r, 1, "configuration check failed: redis")
	if n := strings.Count(r.stdout, "invalid port"); n != 1 || !strings.Contains(r.stdout, "FAILED  redis     SWITCHBOARD_REDIS_URL: invalid Redis URL") {
		t.Errorf("the bad URL is reported %d times, want once under redis:\n%s", n, r.stdout)
	}
}

// A fresh embedded default passes the check without creating anything.
func TestConfigCheckEmbeddedDefault(t *testing.T) {
	env := baseEnv(t)
	r := runCLI(t, env, "config", "--check")
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"ok  database  sqlite://", "(not created yet: serve creates it)", "ok  redis     not configured",
		"ok  identity  development issuer: no key yet"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, r.stdout)
		}
	}
	if entries, _ := os.ReadDir(env["SWITCHBOARD_DATA_DIR"]); len(entries) != 0 {
		t.Errorf("config --check wrote %d files in the data directory", len(entries))
	}
}

// With PostgreSQL, Redis and an OIDC issuer that answer, the check passes.
func TestConfigCheckReachesDependencies(t *testing.T) {
	pg := storetest.PostgresURL(t)
	rd := redistest.URL(t)
	iss := oidctest.New(t)
	r := runCLI(t, baseEnv(t, "SWITCHBOARD_DATABASE_URL", pg, "SWITCHBOARD_REDIS_URL", rd,
		"SWITCHBOARD_OIDC_ISSUER", iss.URL(), "SWITCHBOARD_ADDR", "0.0.0.0:0"), "config", "--check")
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"ok  database", "ok  redis", "ok  identity  " + iss.URL()} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, r.stdout)
		}
	}
}

// serveCLI starts `switchboard serve` through run with env, waits until it listens and returns
// its address, its stderr and a stop function that waits for run to return.
func serveCLI(t *testing.T, env map[string]string) (addr string, stderr *logBuffer, stop func() error) {
	t.Helper()
	stderr = &logBuffer{}
	environ := make([]string, 0, len(env))
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, environ, &logBuffer{}, stderr) }()
	listening := regexp.MustCompile(`msg="switchboard listening" addr=(\S+)`)
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("serve did not stop within 30s")
		}
	}
	t.Cleanup(func() { _ = stop() })
	eventually(t, 30*time.Second, "the server to listen", func() bool {
		if m := listening.FindStringSubmatch(stderr.String()); m != nil {
			addr = m[1]
			return true
		}
		select {
		case err := <-done:
			t.Fatalf("serve ended before listening: %v\n%s", err, stderr.String())
		default:
		}
		return false
	})
	return addr, stderr, stop
}

// On first start without a terminal, the demo users' passwords go to a 0600 file beside the
// users file, never to the log; they log in. The next start creates nothing.
func TestServeDemoPasswordsNeverLogged(t *testing.T) {
	env := baseEnv(t)
	dir := env["SWITCHBOARD_DATA_DIR"]
	addr, stderr, stop := serveCLI(t, env)
	path := filepath.Join(dir, devPasswordsFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("no passwords file: %v\n%s", err, stderr.String())
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("passwords file mode %04o, want 0600", perm)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^  admin +([A-Z2-7]{26}) `).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no admin password in the file:\n%s", b)
	}
	password := string(m[1])
	if strings.Contains(stderr.String(), password) {
		t.Fatalf("the log holds the admin password:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "their passwords are in "+path) {
		t.Fatalf("the log does not say where the passwords are:\n%s", stderr.String())
	}
	s := &testServer{base: "http://" + addr}
	resp, body := postLogin(t, s, loginBody("admin", password), nil)
	expectLogin(t, resp, body)
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, stderr, stop = serveCLI(t, env)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) || strings.Contains(stderr.String(), "DEVELOPMENT USERS created") {
		t.Fatalf("the second start created users again (%v):\n%s", err, stderr.String())
	}
}

// On a terminal the passwords are printed there, once, and the log only says so.
func TestAnnounceDemoUsersOnTerminal(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	created := []auth.DemoUser{{Username: "admin", Password: "PASSWORDADMIN", Roles: []string{"admin"}},
		{Username: "reader", Password: "PASSWORDREADER", Roles: []string{"get-authors"}}}
	var term, logs logBuffer
	if err := announceDemoUsers(cfg, created, &term, true, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"PASSWORDADMIN", "PASSWORDREADER", "get-authors", "/login", "delete " + filepath.Join(cfg.DataDir, auth.DevUsersFile)} {
		if !strings.Contains(term.String(), want) {
			t.Errorf("terminal output lacks %q:\n%s", want, term.String())
		}
	}
	if strings.Contains(logs.String(), "PASSWORD") || !strings.Contains(logs.String(), "shown above on the terminal") {
		t.Errorf("log:\n%s", logs.String())
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, devPasswordsFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a passwords file was written as well: %v", err)
	}
}

// When the passwords cannot be saved, the users file goes too: the next start makes new users
// whose passwords can be learnt.
func TestAnnounceDemoUsersCannotSave(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	users := filepath.Join(cfg.DataDir, auth.DevUsersFile)
	if err := os.WriteFile(users, []byte("[]"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory where the file should go: the rename fails.
	if err := os.Mkdir(filepath.Join(cfg.DataDir, devPasswordsFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.DataDir, devPasswordsFile, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := announceDemoUsers(cfg, []auth.DemoUser{{Username: "admin", Password: "P"}}, &logBuffer{}, false, slog.New(slog.DiscardHandler))
	if err == nil || !strings.HasPrefix(err.Error(), "SWITCHBOARD_DATA_DIR: cannot save the new development users' passwords") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(users); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the users file stayed: %v", err)
	}
}

// serve starts despite likely mistakes, and says what they are.
func TestServeWarnsAboutLikelyMistakes(t *testing.T) {
	env := baseEnv(t, "SWITCHBOARD_ADRR", "127.0.0.1:1", "SWITCHBOARD_ALLOWED_ORIGINS", "example.com,https://ok.example")
	_, stderr, stop := serveCLI(t, env)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"SWITCHBOARD_ADRR is not a Switchboard setting and is ignored; did you mean SWITCHBOARD_ADDR?",
		`SWITCHBOARD_ALLOWED_ORIGINS: \"example.com\" has no scheme`,
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, stderr.String())
		}
	}
}
