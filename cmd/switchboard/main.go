// Command switchboard runs the Switchboard real-time hub and its maintenance subcommands.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"

	"switchboard/config"
	"switchboard/store"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	smallStacks()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode prints err and returns the process's exit status: 0 on success (and after a
// --help), 2 for a command line it does not understand (with a hint), 1 for anything else.
// Every error is one line (a configuration with several problems, one line each).
func exitCode(err error, stderr io.Writer) int {
	var usage usageError
	switch {
	case err == nil, errors.Is(err, errHelpShown):
		return 0
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "switchboard: %s\n%s\n", usage.msg, usage.hint())
		return 2
	default:
		fmt.Fprintln(stderr, "switchboard:", err)
		return 1
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

// run executes one command line; ctx ends on SIGINT/SIGTERM. environ is os.Environ's
// "NAME=value" list. A first argument that starts with "-" is a flag of serve.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	name := "serve"
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help":
			writeUsage(stdout)
			return nil
		case "-version", "--version":
			fmt.Fprintln(stdout, versionLine())
			return nil
		}
		if !strings.HasPrefix(args[0], "-") {
			name, args = args[0], args[1:]
		}
	}
	c, ok := lookupCommand(name)
	if !ok {
		return usageError{msg: fmt.Sprintf("unknown command %q", name)}
	}
	env := newEnvironment(environ)
	switch c.name {
	case "help":
		return help(args, stdout)
	case "version":
		if err := parseFlags(c, newFlagSet(c.name), args, stdout); err != nil {
			return err
		}
		fmt.Fprintln(stdout, versionLine())
		return nil
	case "serve":
		var f cliFlags
		if err := parseFlags(c, serveFlags(&f), args, stdout); err != nil {
			return err
		}
		cfg, _, err := env.resolve(f.overrides())
		if err != nil {
			return err
		}
		return serve(ctx, cfg, env, stderr)
	case "migrate":
		var f cliFlags
		fs := newFlagSet(c.name)
		addDataDirFlag(fs, &f)
		if err := parseFlags(c, fs, args, stdout); err != nil {
			return err
		}
		cfg, _, err := env.resolve(f.overrides())
		if err != nil {
			return err
		}
		env.warn(cfg, stderr)
		return migrate(ctx, cfg, stdout)
	case "token":
		return tokenCommand(ctx, c, args, env, stdout, stderr)
	case "config":
		return configCommand(ctx, c, args, env, stdout, stderr)
	}
	return usageError{msg: fmt.Sprintf("unknown command %q", name)}
}

// help prints the program's usage, or one command's.
func help(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		writeUsage(stdout)
		return nil
	}
	c, ok := lookupCommand(args[0])
	if !ok || len(args) > 1 {
		return usageError{msg: fmt.Sprintf("help: unknown command %q", strings.Join(args, " "))}
	}
	var f cliFlags
	switch c.name {
	case "serve":
		writeCommandUsage(stdout, c, serveFlags(&f))
	default:
		// Each command prints its own usage for --help, flags included.
		return run(context.Background(), []string{c.name, "--help"}, nil, stdout, io.Discard)
	}
	return nil
}

// environment is the process's environment: its variables by name, and the names themselves
// (for the warning about unknown SWITCHBOARD_* variables).
type environment struct {
	vars    map[string]string
	environ []string
}

func newEnvironment(environ []string) environment {
	e := environment{vars: make(map[string]string, len(environ)), environ: environ}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			e.vars[k] = v
		}
	}
	return e
}

func (e environment) getenv(name string) string { return e.vars[name] }

// resolve loads the configuration with the command line's overrides. Its error names every
// variable that is wrong, one per line.
func (e environment) resolve(overrides map[string]string) (config.Config, []config.Setting, error) {
	cfg, settings, err := config.Resolve(e.getenv, overrides)
	if err != nil {
		return cfg, settings, configError(err)
	}
	return cfg, settings, nil
}

// configError says "configuration" once, then the problem, or the problems one per line.
func configError(err error) error {
	lines := strings.Split(err.Error(), "\n")
	if len(lines) == 1 {
		return fmt.Errorf("configuration: %w", err)
	}
	return fmt.Errorf("configuration has %d problems:\n  %s", len(lines), strings.Join(lines, "\n  "))
}

// warn prints the configuration's likely mistakes (config.Warnings) to w.
func (e environment) warn(cfg config.Config, w io.Writer) {
	for _, msg := range cfg.Warnings(e.environ) {
		fmt.Fprintln(w, "switchboard: warning:", msg)
	}
}

func serve(ctx context.Context, cfg config.Config, env environment, stderr io.Writer) error {
	log := newLogger(cfg, stderr)
	for _, msg := range cfg.Warnings(env.environ) {
		log.Warn("configuration: " + msg)
	}
	// go-redis logs every failed dial through its own global logger; during a Redis outage
	// that is a line per attempt. The limiters and the bus already warn at most every 10 s.
	redis.SetLogger(redisLog{log})
	if err := preflight(cfg); err != nil {
		return err
	}
	// Listen first: a port in use is reported before migrations run and keys are made.
	ln, err := listen(cfg.Addr)
	if err != nil {
		return fmt.Errorf("SWITCHBOARD_ADDR: %w", err)
	}
	a, err := newApp(ctx, cfg, log)
	if err != nil {
		_ = ln.Close()
		return err
	}
	if len(a.demoUsers) > 0 {
		if err := announceDemoUsers(cfg, a.demoUsers, stderr, isTerminal(stderr), log); err != nil {
			_ = ln.Close()
			return errors.Join(err, a.close(context.Background()))
		}
	}
	return a.serve(ctx, ln)
}

func migrate(ctx context.Context, cfg config.Config, stdout io.Writer) error {
	if err := checkDatabaseDir(cfg); err != nil {
		return err
	}
	db, err := store.Open(ctx, cfg.Database(), cfg.DBConnectTimeout)
	if err != nil {
		return fmt.Errorf("%s: %w", databaseVar(cfg), err)
	}
	defer db.Close()
	if err := db.Migrate(ctx); err != nil {
		return fmt.Errorf("%s: %w", databaseVar(cfg), err)
	}
	fmt.Fprintf(stdout, "migrations applied (%s)\n", db.Dialect)
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

// buildVersion is the version for logs: the -ldflags one, else the module's (a tagged
// `go install`), else "dev".
func buildVersion() string {
	bi, _ := debug.ReadBuildInfo()
	return moduleVersion(bi)
}

func moduleVersion(bi *debug.BuildInfo) string {
	if version != "dev" {
		return version
	}
	if bi != nil && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

// versionLine is what `switchboard version` prints.
func versionLine() string {
	bi, _ := debug.ReadBuildInfo()
	return formatVersion(bi)
}

// formatVersion: the version, then the VCS revision, its time and "modified" when the build
// recorded them (go build does inside a git checkout unless -buildvcs=false), then the Go
// version.
func formatVersion(bi *debug.BuildInfo) string {
	var details []string
	goVersion := runtime.Version()
	if bi != nil {
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		if rev := settings["vcs.revision"]; rev != "" {
			details = append(details, "revision "+rev)
		}
		if t := settings["vcs.time"]; t != "" {
			details = append(details, t)
		}
		if settings["vcs.modified"] == "true" {
			details = append(details, "modified")
		}
		if bi.GoVersion != "" {
			goVersion = bi.GoVersion
		}
	}
	line := "switchboard " + moduleVersion(bi)
	if len(details) > 0 {
		line += " (" + strings.Join(details, ", ") + ")"
	}
	return line + " " + goVersion
}
