package main

// Tests of the command line as a user meets it: run() with arguments and an environment, its
// exit status (exitCode, as main uses it) and what it prints; and main itself in a child
// process for the real exit codes. Startup failures each end with one line that names the
// variable to change, exit status 1 and no panic.

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"switchboard/config"
)

// cliResult is what one command line did.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs args as main would, with exactly env as the environment, bounded by a minute
// (a command that should fail but serves instead ends then, with status 0).
func runCLI(t testing.TB, env map[string]string, args ...string) cliResult {
	t.Helper()
	var stdout, stderr logBuffer
	environ := make([]string, 0, len(env))
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := run(ctx, args, environ, &stdout, &stderr)
	code := exitCode(err, &stderr)
	return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// errorLines are the lines of stderr that report the error (not the logs).
func (r cliResult) errorLines() []string {
	var out []string
	for _, l := range strings.Split(r.stderr, "\n") {
		if strings.HasPrefix(l, "switchboard: ") && !strings.HasPrefix(l, "switchboard: warning: ") {
			out = append(out, l)
		}
	}
	return out
}

// expectFailure checks a failure: exit status code, exactly one error line containing every
// want, and no panic or stack trace anywhere.
func expectFailure(t testing.TB, r cliResult, code int, want ...string) {
	t.Helper()
	lines := r.errorLines()
	if r.code != code || len(lines) != 1 {
		t.Fatalf("exit %d with %d error lines, want %d and one line; stderr:\n%s", r.code, len(lines), code, r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Fatalf("error line %q lacks %q", lines[0], w)
		}
	}
	for _, bad := range []string{"panic", "goroutine ", ".go:", "nil pointer"} {
		if strings.Contains(r.stderr, bad) {
			t.Fatalf("stderr holds %q:\n%s", bad, r.stderr)
		}
	}
}

// baseEnv is a server on a random loopback port with its own data directory.
func baseEnv(t testing.TB, kv ...string) map[string]string {
	env := map[string]string{"SWITCHBOARD_ADDR": "127.0.0.1:0", "SWITCHBOARD_DATA_DIR": t.TempDir()}
	for i := 0; i+1 < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	return env
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// busyPort returns a loopback address that stays taken until the test ends.
func busyPort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln.Addr().String()
}

func TestCLIHelp(t *testing.T) {
	allVars := func(t *testing.T, out string) {
		t.Helper()
		for _, v := range config.Vars() {
			if !strings.Contains(out, v.Name+" (default: "+config.Plain(v.Default)+")") {
				t.Errorf("help lacks %s with its default %s", v.Name, config.Plain(v.Default))
			}
		}
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"-help"}, {"help"}, {"help", "help"}} {
		r := runCLI(t, nil, args...)
		if r.code != 0 || r.stderr != "" || !strings.HasPrefix(r.stdout, "Usage: switchboard [command]") {
			t.Fatalf("%q: exit %d stderr %q stdout %.200q", args, r.code, r.stderr, r.stdout)
		}
		for _, c := range commands {
			if !strings.Contains(r.stdout, "\n  "+c.name+" ") {
				t.Errorf("%q: help lacks command %s", args, c.name)
			}
		}
		for _, flag := range []string{"--addr HOST:PORT", "--data-dir DIR", "--version"} {
			if !strings.Contains(r.stdout, flag) {
				t.Errorf("%q: help lacks %s", args, flag)
			}
		}
		allVars(t, r.stdout)
	}
	for args, want := range map[string][]string{
		"serve --help":   {"Usage: switchboard [serve]", "--addr HOST:PORT", "SWITCHBOARD_WS_PING_INTERVAL"},
		"serve -h":       {"Usage: switchboard [serve]"},
		"migrate --help": {"Usage: switchboard migrate", "--data-dir DIR", "SWITCHBOARD_DATABASE_URL", "SWITCHBOARD_DB_CONNECT_TIMEOUT"},
		"token --help":   {"Usage: switchboard token", "--user NAME", "--roles ROLES", "--ttl DURATION", "never creates a", "SWITCHBOARD_DATA_DIR (default: ./data)"},
		"config --help":  {"Usage: switchboard config", "--check", "--timeout DURATION", "SWITCHBOARD_REDIS_URL"},
		"help token":     {"Usage: switchboard token", "--user NAME"},
		"help serve":     {"Usage: switchboard [serve]"},
		"version --help": {"Usage: switchboard version"},
	} {
		r := runCLI(t, nil, strings.Fields(args)...)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("%s: exit %d stderr %q", args, r.code, r.stderr)
		}
		for _, w := range want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%s: output lacks %q:\n%s", args, w, r.stdout)
			}
		}
	}
	// serve --help lists every variable; migrate's lists only its own.
	allVars(t, runCLI(t, nil, "serve", "--help").stdout)
	if out := runCLI(t, nil, "migrate", "--help").stdout; strings.Contains(out, "SWITCHBOARD_WS_PING_INTERVAL") {
		t.Errorf("migrate --help lists variables migrate does not read")
	}
}

// --help never runs anything: migrate --help migrates nothing, serve --help serves nothing.
func TestCLIHelpHasNoSideEffects(t *testing.T) {
	env := baseEnv(t)
	for _, args := range [][]string{{"migrate", "--help"}, {"serve", "--help"}, {"--help"}, {"token", "--help"}, {"config", "-h"}} {
		if r := runCLI(t, env, args...); r.code != 0 {
			t.Fatalf("%q: exit %d %s", args, r.code, r.stderr)
		}
	}
	if entries, _ := os.ReadDir(env["SWITCHBOARD_DATA_DIR"]); len(entries) != 0 {
		t.Fatalf("--help wrote %d files in the data directory", len(entries))
	}
}

func TestCLIVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		r := runCLI(t, nil, args...)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "switchboard ") || !strings.Contains(r.stdout, runtime.Version()) {
			t.Fatalf("%q: exit %d stdout %q stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
	bi := &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "true"},
	}}
	if got, want := formatVersion(bi), "switchboard v1.2.3 (revision 0123abcd, 2026-01-02T03:04:05Z, modified) go1.99"; got != want {
		t.Errorf("formatVersion = %q, want %q", got, want)
	}
	if got := formatVersion(&debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}); got != "switchboard dev "+runtime.Version() {
		t.Errorf("formatVersion of a plain build = %q", got)
	}
}

// A command line it does not understand: exit 2, one line saying what, and where the help is.
func TestCLIUsageErrors(t *testing.T) {
	env := baseEnv(t)
	for args, want := range map[string]string{
		"frobnicate":              `switchboard: unknown command "frobnicate"`,
		"--bogus":                 "switchboard: serve: unknown flag --bogus",
		"-x":                      "switchboard: serve: unknown flag -x",
		"serve --addr":            "switchboard: serve: flag needs an argument: --addr",
		"serve --bogus=1":         "switchboard: serve: unknown flag --bogus",
		"serve stray":             `switchboard: serve: unexpected argument "stray"`,
		"migrate --addr x:1":      "switchboard: migrate: unknown flag --addr",
		"token":                   "switchboard: token: --user is required",
		"token --user a --ttl 5":  `switchboard: token: invalid value "5" for flag --ttl`,
		"token --user a --ttl 0s": "switchboard: token: --ttl must be between 1s and 720h",
		"config --timeout -1s":    "switchboard: config: --timeout must be positive",
		"help nope":               `switchboard: help: unknown command "nope"`,
		"version extra":           `switchboard: version: unexpected argument "extra"`,
	} {
		r := runCLI(t, env, strings.Fields(args)...)
		lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
		if r.code != 2 || len(lines) != 2 || !strings.HasPrefix(lines[0], want) ||
			!strings.HasPrefix(lines[1], "Run 'switchboard ") || !strings.HasSuffix(lines[1], "--help' for usage.") {
			t.Errorf("%s: exit %d, stderr:\n%s\nwant exit 2 and %q plus the hint", args, r.code, r.stderr, want)
		}
		if r.stdout != "" {
			t.Errorf("%s: printed %q on stdout", args, r.stdout)
		}
	}
	if entries, _ := os.ReadDir(env["SWITCHBOARD_DATA_DIR"]); len(entries) != 0 {
		t.Fatalf("a refused command line wrote %d files in the data directory", len(entries))
	}
}

// Every way the server cannot start ends with exit 1 and one line naming the variable.
func TestServeStartupErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	badPolicy := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(badPolicy, []byte(`{"pkg_ids": {"one": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	unknownKey := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(unknownKey, []byte(`{"pkgids": {}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		env  []string
		want []string
	}{
		{"unreachable PostgreSQL", []string{"SWITCHBOARD_DATABASE_URL", "postgres://postgres:hunter2@" + closedPort(t) + "/x?sslmode=disable",
			"SWITCHBOARD_DB_CONNECT_TIMEOUT", "1s"}, []string{"SWITCHBOARD_DATABASE_URL: database unavailable: PostgreSQL at 127.0.0.1:", "not reachable"}},
		{"PostgreSQL URL that does not parse", []string{"SWITCHBOARD_DATABASE_URL", "postgres://u:hunter2@h:port/x"},
			[]string{"SWITCHBOARD_DATABASE_URL: "}},
		{"Redis URL with a bad path", []string{"SWITCHBOARD_REDIS_URL", "redis://127.0.0.1:6379/1/2"},
			[]string{"SWITCHBOARD_REDIS_URL: invalid Redis URL: redis: invalid URL path"}},
		{"Redis URL with a bad port", []string{"SWITCHBOARD_REDIS_URL", "redis://:hunter2@host:port"},
			[]string{"SWITCHBOARD_REDIS_URL: ", "invalid port"}},
		{"Redis URL with a bad scheme", []string{"SWITCHBOARD_REDIS_URL", "http://127.0.0.1:6379"},
			[]string{"configuration: SWITCHBOARD_REDIS_URL: want redis://"}},
		{"missing RBAC file", []string{"SWITCHBOARD_RBAC_FILE", "/nonexistent/policy.json"},
			[]string{"SWITCHBOARD_RBAC_FILE: ", "no such file or directory"}},
		{"malformed RBAC file", []string{"SWITCHBOARD_RBAC_FILE", badPolicy}, []string{"SWITCHBOARD_RBAC_FILE: ", "not a valid policy"}},
		{"RBAC file with an unknown key", []string{"SWITCHBOARD_RBAC_FILE", unknownKey}, []string{"SWITCHBOARD_RBAC_FILE: ", "pkgids"}},
		{"RBAC file is a directory", []string{"SWITCHBOARD_RBAC_FILE", t.TempDir()}, []string{"SWITCHBOARD_RBAC_FILE: "}},
		{"data directory is a file", []string{"SWITCHBOARD_DATA_DIR", file}, []string{"SWITCHBOARD_DATA_DIR: " + file + " is not a directory"}},
		{"data directory under a file", []string{"SWITCHBOARD_DATA_DIR", filepath.Join(file, "data")},
			[]string{"SWITCHBOARD_DATA_DIR: cannot use " + filepath.Join(file, "data") + " (not a directory)"}},
		{"SQLite file under a file", []string{"SWITCHBOARD_DATABASE_URL", "sqlite://" + filepath.Join(file, "x.db")},
			[]string{"SWITCHBOARD_DATABASE_URL: " + file + " is not a directory"}},
		{"listen address in use", []string{"SWITCHBOARD_ADDR", busyPort(t)}, []string{"SWITCHBOARD_ADDR: listen on 127.0.0.1:", "address already in use"}},
		{"metrics address in use", []string{"SWITCHBOARD_METRICS_ADDR", busyPort(t)}, []string{"SWITCHBOARD_METRICS_ADDR: listen on", "address already in use"}},
		{"public address with the development issuer", []string{"SWITCHBOARD_ADDR", "0.0.0.0:0"},
			[]string{"SWITCHBOARD_ADDR: 0.0.0.0:0 is reachable from other machines", "SWITCHBOARD_DEV_ISSUER_PUBLIC=true"}},
		{"bad value", []string{"SWITCHBOARD_WS_PING_INTERVAL", "5"}, []string{"configuration: SWITCHBOARD_WS_PING_INTERVAL: want a duration"}},
	}
	if dir, ok := unwritableDir(t); ok {
		cases = append(cases,
			struct {
				name string
				env  []string
				want []string
			}{"read-only data directory", []string{"SWITCHBOARD_DATA_DIR", dir}, []string{"SWITCHBOARD_DATA_DIR: cannot write in " + dir}},
			struct {
				name string
				env  []string
				want []string
			}{"data directory in a read-only one", []string{"SWITCHBOARD_DATA_DIR", filepath.Join(dir, "data")},
				[]string{"SWITCHBOARD_DATA_DIR: cannot create " + filepath.Join(dir, "data") + ": cannot write in " + dir}})
	} else {
		t.Log("no unwritable directory on this machine (running as root without /sys): the read-only cases are skipped")
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runCLI(t, baseEnv(t, c.env...))
			expectFailure(t, r, 1, c.want...)
			if strings.Contains(r.stderr, "hunter2") {
				t.Fatalf("stderr shows a password:\n%s", r.stderr)
			}
		})
	}
}

// unwritableDir is a directory this process cannot create files in: a 0500 one, unless running
// as root, which writes anyway; then /sys/kernel, which refuses even root.
func unwritableDir(t *testing.T) (string, bool) {
	if os.Geteuid() != 0 {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
		return dir, true
	}
	const sys = "/sys/kernel"
	if fi, err := os.Stat(sys); err == nil && fi.IsDir() {
		if f, err := os.CreateTemp(sys, "probe"); err != nil {
			return sys, true
		} else {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}
	return "", false
}

// main itself, in a child process: the exit statuses a shell sees, and no panic on the way.
func TestMainExitStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	for _, c := range []struct {
		args []string
		env  []string
		code int
		want string
	}{
		{[]string{"--help"}, nil, 0, ""},
		{[]string{"serve", "--help"}, nil, 0, ""},
		{[]string{"--bogus"}, nil, 2, "switchboard: serve: unknown flag --bogus"},
		{[]string{"frobnicate"}, nil, 2, `switchboard: unknown command "frobnicate"`},
		{nil, []string{"SWITCHBOARD_RBAC_FILE=/nonexistent.json"}, 1, "switchboard: SWITCHBOARD_RBAC_FILE: "},
		{nil, []string{"SWITCHBOARD_REDIS_URL=redis://h/1/2"}, 1, "switchboard: SWITCHBOARD_REDIS_URL: "},
		{nil, []string{"SWITCHBOARD_DATABASE_URL=postgres://postgres@" + closedPort(t) + "/x?sslmode=disable",
			"SWITCHBOARD_DB_CONNECT_TIMEOUT=1s"}, 1, "switchboard: SWITCHBOARD_DATABASE_URL: database unavailable"},
	} {
		args, _ := json.Marshal(c.args)
		cmd := exec.Command(os.Args[0], "-test.run=^TestMainHelper$")
		cmd.Env = append(childEnv(), "SWITCHBOARD_TEST_MAIN_ARGS="+string(args),
			"SWITCHBOARD_ADDR=127.0.0.1:0", "SWITCHBOARD_DATA_DIR="+t.TempDir())
		cmd.Env = append(cmd.Env, c.env...)
		out, _ := cmd.CombinedOutput()
		code := cmd.ProcessState.ExitCode()
		if code != c.code || !strings.Contains(string(out), c.want) || strings.Contains(string(out), "panic") {
			t.Errorf("switchboard %q %q: exit %d, want %d with %q; output:\n%s", c.args, c.env, code, c.code, c.want, out)
		}
	}
}

// childEnv is this process's environment without SWITCHBOARD_* settings.
func childEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "SWITCHBOARD_") && !strings.HasPrefix(kv, "SWITCHBOARD_TEST_")
	})
}

// TestMainHelper is main in a child process started by TestMainExitStatus.
func TestMainHelper(t *testing.T) {
	raw := os.Getenv("SWITCHBOARD_TEST_MAIN_ARGS")
	if raw == "" {
		t.Skip("runs only as TestMainExitStatus's child")
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		t.Fatal(err)
	}
	os.Args = append([]string{"switchboard"}, args...)
	main()
}
