package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"switchboard/config"
	"switchboard/store"
	"switchboard/store/redisconn"
	"switchboard/transport/auth"
)

// configCommand prints the configuration in effect and, with --check, reaches what it names:
// the `nats-server -t` / `caddy validate` habit, so a deployment is checked before it serves.
func configCommand(ctx context.Context, c command, args []string, env environment, stdout, stderr io.Writer) error {
	var f cliFlags
	fs := newFlagSet(c.name)
	check := fs.Bool("check", false, "also reach PostgreSQL, Redis and the identity provider; exit 1 naming what failed")
	timeout := fs.Duration("timeout", 5*time.Second, "how long (a `DURATION`) --check waits for each dependency")
	addAddrFlag(fs, &f)
	addDataDirFlag(fs, &f)
	if err := parseFlags(c, fs, args, stdout); err != nil {
		return err
	}
	if *timeout <= 0 {
		return usageError{msg: fmt.Sprintf("config: --timeout must be positive, got %s", *timeout), cmd: c.name}
	}
	cfg, settings, cfgErr := env.resolve(f.overrides())
	writeSettings(stdout, cfg, settings)
	env.warn(cfg, stderr)
	if cfgErr != nil {
		return cfgErr
	}
	if !*check {
		return preflight(cfg)
	}
	// go-redis reports failed dials through its global logger; the check reports them itself.
	redis.SetLogger(redisLog{slog.New(slog.DiscardHandler)})
	return runChecks(ctx, cfg, *timeout, stdout)
}

// writeSettings prints NAME=value lines (secrets redacted) with where each value came from,
// headed by what they add up to.
func writeSettings(w io.Writer, cfg config.Config, settings []config.Setting) {
	fmt.Fprintln(w, "# Switchboard configuration in effect (secrets redacted)")
	fmt.Fprintln(w, "# database:", config.RedactURL(cfg.Database()))
	if cfg.DevIssuer() {
		fmt.Fprintf(w, "# identity: built-in development issuer (key %s)\n", filepath.Join(cfg.DataDir, auth.DevKeyFile))
	} else {
		fmt.Fprintln(w, "# identity: OIDC issuer", cfg.OIDCIssuer)
	}
	if cfg.RedisURL == "" {
		fmt.Fprintln(w, "# limits and broadcasts: in-process (single node)")
	} else {
		fmt.Fprintln(w, "# limits and broadcasts: Redis", config.RedactURL(cfg.RedisURL))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, s := range settings {
		fmt.Fprintf(tw, "%s=%s\t# %s\n", s.Name, shellQuote(s.Value), s.Source)
	}
	_ = tw.Flush()
}

// shellQuote leaves plain values alone and single-quotes the rest, so a line pastes into a shell.
func shellQuote(v string) string {
	if v == "" || strings.IndexFunc(v, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./_-[]", r))
	}) < 0 {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}

// checkResult is one line of --check's report.
type checkResult struct {
	name   string // what was checked
	detail string // what it found, or why it failed (naming the variable)
	err    error
}

// runChecks reaches every dependency, each bounded by timeout, reports one line each and fails
// naming those that failed.
func runChecks(ctx context.Context, cfg config.Config, timeout time.Duration, w io.Writer) error {
	results := []checkResult{
		checkFiles(cfg),
		checkDatabase(ctx, cfg, timeout),
		checkRedis(ctx, cfg, timeout),
		checkIdentity(ctx, cfg, timeout),
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	var failed []string
	for _, r := range results {
		status := "ok"
		detail := r.detail
		if r.err != nil {
			status, detail = "FAILED", strings.ReplaceAll(r.err.Error(), "\n", "; ")
			failed = append(failed, r.name)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", status, r.name, detail)
	}
	_ = tw.Flush()
	if len(failed) > 0 {
		return fmt.Errorf("%w: %s", errCheckFailed, strings.Join(failed, ", "))
	}
	return nil
}

// checkFiles runs the static checks serve runs first: directories, Redis URL, RBAC file.
func checkFiles(cfg config.Config) checkResult {
	r := checkResult{name: "files", detail: "data directory and RBAC policy usable"}
	r.err = preflightChecks(cfg, false)
	return r
}

// checkDatabase reaches PostgreSQL (one attempt window of timeout), or opens the SQLite file
// when it exists (a missing one is created by serve; its directory was checked by checkFiles).
func checkDatabase(ctx context.Context, cfg config.Config, timeout time.Duration) checkResult {
	r := checkResult{name: "database", detail: config.RedactURL(cfg.Database())}
	if path, ok := strings.CutPrefix(cfg.Database(), "sqlite://"); ok {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			r.detail += " (not created yet: serve creates it)"
			return r
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	db, err := store.Open(ctx, cfg.Database(), timeout)
	if err == nil {
		err = db.Ping(ctx)
		_ = db.Close()
	}
	if err != nil {
		r.err = fmt.Errorf("%s: %w", databaseVar(cfg), err)
	}
	return r
}

// checkRedis pings Redis once.
func checkRedis(ctx context.Context, cfg config.Config, timeout time.Duration) checkResult {
	r := checkResult{name: "redis", detail: "not configured (in-process limits, single node)"}
	if cfg.RedisURL == "" {
		return r
	}
	r.detail = config.RedactURL(cfg.RedisURL)
	target, err := redisconn.Parse(cfg.RedisURL)
	if err != nil {
		r.err = redisURLError(err)
		return r
	}
	client := target.NewClient(redisconn.Settings{DialTimeout: timeout, MaxRetries: -1})
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := redisconn.Ping(ctx, client); errors.Is(err, redisconn.ErrClusterNode) {
		r.err = fmt.Errorf("SWITCHBOARD_REDIS_URL: %s: %w", target, err)
	} else if err != nil {
		r.err = fmt.Errorf("SWITCHBOARD_REDIS_URL: %s does not answer: %w", target, err)
	}
	return r
}

// checkIdentity loads the external issuer's discovery document and keys, or the development
// issuer's key and users file (which serve creates when missing).
func checkIdentity(ctx context.Context, cfg config.Config, timeout time.Duration) checkResult {
	r := checkResult{name: "identity"}
	if !cfg.DevIssuer() {
		r.detail = cfg.OIDCIssuer + ": discovery and signing keys load"
		v, err := auth.NewVerifier(ctx, auth.Config{Issuer: cfg.OIDCIssuer, ClientID: cfg.OIDCClientID,
			Leeway: cfg.JWTLeeway, RoleClaimPaths: cfg.OIDCRoleClaims})
		if err != nil {
			r.err = fmt.Errorf("SWITCHBOARD_OIDC_ISSUER: %w", err)
			return r
		}
		defer v.Close()
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := v.Ready(ctx); err != nil {
			r.err = fmt.Errorf("SWITCHBOARD_OIDC_ISSUER: %s: %w", cfg.OIDCIssuer, err)
		}
		return r
	}
	dev, err := auth.LoadDevIssuer(cfg.DataDir)
	switch {
	case errors.Is(err, auth.ErrNoDevKey):
		r.detail = "development issuer: no key yet in " + absPath(cfg.DataDir) + " (serve creates it)"
		return r
	case err != nil:
		r.err = fmt.Errorf("SWITCHBOARD_DATA_DIR: %w", err)
		return r
	}
	r.detail = "development issuer: key " + dev.KeyPath()
	if _, err := os.Stat(filepath.Join(cfg.DataDir, auth.DevUsersFile)); err == nil {
		// The file exists, so this only reads it.
		users, _, err := auth.OpenDevUsers(cfg.DataDir)
		if err != nil {
			r.err = fmt.Errorf("SWITCHBOARD_DATA_DIR: %w", err)
			return r
		}
		r.detail += fmt.Sprintf(", %d users in %s", users.Len(), users.Path())
	}
	return r
}
