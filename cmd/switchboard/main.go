// Command switchboard runs the Switchboard real-time hub and its maintenance subcommands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"switchboard/config"
	"switchboard/store"
	"switchboard/transport/auth"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `Usage: switchboard [command] [flags]

Commands:
  serve      run the server (default)
  migrate    apply database migrations and exit
  token      print a development token: token --user NAME --roles r1,r2 [--ttl 1h]
  version    print the version

Configuration comes from SWITCHBOARD_* environment variables (see README.md).
`

func main() {
	smallStacks()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "switchboard:", err)
		os.Exit(1)
	}
}

// smallStacks makes new goroutines start with the smallest stack instead of the running
// average (GODEBUG adaptivestackstart=0, unless the environment says otherwise). Most of ours are
// idle WebSocket read loops that need very little, while the average is set by the deep
// request-handling goroutines; a read loop started on an 8 KiB stack keeps it while idle.
// The runtime applies a GODEBUG change made through os.Setenv at once.
func smallStacks() {
	godebug := os.Getenv("GODEBUG")
	if strings.Contains(godebug, "adaptivestackstart=") {
		return
	}
	if godebug != "" {
		godebug += ","
	}
	_ = os.Setenv("GODEBUG", godebug+"adaptivestackstart=0")
}

// run executes one subcommand; ctx ends on SIGINT/SIGTERM.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, "switchboard", buildVersion())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	log := newLogger(cfg, stderr)
	switch cmd {
	case "serve":
		return serve(ctx, cfg, log)
	case "migrate":
		return migrate(ctx, cfg, stdout)
	case "token":
		return token(cfg, args, stdout, stderr)
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}

func serve(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	// go-redis logs every failed dial through its own global logger; during a Redis outage
	// that is a line per attempt. The limiters and the bus already warn at most every 10 s.
	redis.SetLogger(redisLog{log})
	a, err := newApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	ln, err := listen(cfg.Addr)
	if err != nil {
		a.close(context.Background())
		return err
	}
	return a.serve(ctx, ln)
}

func migrate(ctx context.Context, cfg config.Config, stdout io.Writer) error {
	db, err := store.Open(ctx, cfg.Database(), cfg.DBConnectTimeout)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.Migrate(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "migrations applied (%s)\n", db.Dialect)
	return nil
}

func token(cfg config.Config, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	user := fs.String("user", "", "user name (also the token's sub)")
	roles := fs.String("roles", "", "comma-separated roles, e.g. get-authors,create-author")
	ttl := fs.Duration("ttl", time.Hour, "lifetime, e.g. 30m or 24h")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !cfg.DevIssuer() {
		return errors.New("token: SWITCHBOARD_OIDC_ISSUER is set, so tokens come from that issuer; " +
			"this command only signs tokens for the built-in development issuer")
	}
	if *user == "" {
		return errors.New("token: --user is required")
	}
	if *ttl <= 0 || *ttl > 30*24*time.Hour {
		return fmt.Errorf("token: --ttl must be between 1s and 720h, got %s", *ttl)
	}
	dev, err := auth.OpenDevIssuer(cfg.DataDir)
	if err != nil {
		return err
	}
	var rs []string
	for _, r := range strings.Split(*roles, ",") {
		if r = strings.TrimSpace(r); r != "" {
			rs = append(rs, r)
		}
	}
	tok, _, err := dev.Mint(auth.MintParams{Subject: *user, Username: *user, ClientID: cfg.OIDCClientID, Roles: rs, TTL: *ttl})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// redisLog sends go-redis's own messages to slog at debug level.
type redisLog struct{ l *slog.Logger }

func (r redisLog) Printf(ctx context.Context, format string, v ...any) {
	r.l.Debug("redis: " + fmt.Sprintf(format, v...))
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return "dev-" + s.Value
			}
		}
	}
	return version
}
