package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"switchboard/actors"
	"switchboard/config"
	"switchboard/store/redisconn"
	"switchboard/transport/auth"
)

// devPasswordsFile receives the new development users' passwords when no terminal shows them.
const devPasswordsFile = "dev-initial-passwords.txt"

// preflight checks, before anything is opened, what would otherwise fail deep inside a library
// with a message that names neither the cause nor the variable (SQLite's "unable to open
// database file: out of memory (14)" for a read-only directory). Each problem is one line that
// starts with the variable to change.
func preflight(cfg config.Config) error { return preflightChecks(cfg, true) }

// preflightChecks is preflight, with the Redis URL's check or without it (config --check
// reports that one under redis).
func preflightChecks(cfg config.Config, redisURL bool) error {
	var errs []error
	dbErr := checkDatabaseDir(cfg)
	errs = append(errs, dbErr)
	if dbErr == nil || databaseVar(cfg) != "SWITCHBOARD_DATA_DIR" { // one line per cause
		errs = append(errs, checkDevDataDir(cfg))
	}
	if redisURL {
		errs = append(errs, checkRedisURL(cfg))
	}
	errs = append(errs, checkRBACFile(cfg))
	return errors.Join(errs...)
}

// databaseVar names the variable that decides where the database is.
func databaseVar(cfg config.Config) string {
	if cfg.DatabaseURL != "" {
		return "SWITCHBOARD_DATABASE_URL"
	}
	return "SWITCHBOARD_DATA_DIR"
}

// checkDatabaseDir checks that an SQLite database's directory can hold it (and its journal).
func checkDatabaseDir(cfg config.Config) error {
	path, ok := strings.CutPrefix(cfg.Database(), "sqlite://")
	if !ok || path == ":memory:" || path == "" {
		return nil
	}
	if err := usableDir(filepath.Dir(path), true); err != nil {
		return fmt.Errorf("%s: %w; the SQLite database %s lives there", databaseVar(cfg), err, path)
	}
	return nil
}

// checkDevDataDir checks that the development issuer can find (or create) its key and users.
func checkDevDataDir(cfg config.Config) error {
	if !cfg.DevIssuer() {
		return nil
	}
	write := false
	for _, name := range []string{auth.DevKeyFile, auth.DevUsersFile} {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, name)); err != nil {
			write = true // to be created
		}
	}
	if err := usableDir(cfg.DataDir, write); err != nil {
		return fmt.Errorf("SWITCHBOARD_DATA_DIR: %w; the development issuer keeps its key and users there", err)
	}
	return nil
}

// usableDir says why dir cannot be used: it, or a parent, is not a directory, or (with write)
// nothing can be created in it, or, while it does not exist, in the nearest existing parent
// where it would be created. It leaves nothing behind.
func usableDir(dir string, write bool) error {
	probe := dir
	for {
		fi, err := os.Stat(probe)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s is not a directory", absPath(probe))
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cannot use %s (%w)", absPath(dir), pathCause(err))
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			return fmt.Errorf("cannot use %s (%w)", absPath(dir), pathCause(err))
		}
		probe, write = parent, true // it has to be created
	}
	if !write {
		return nil
	}
	f, err := os.CreateTemp(probe, ".switchboard-write-check-*")
	if err != nil {
		if probe != dir {
			return fmt.Errorf("cannot create %s: cannot write in %s (%w)", absPath(dir), absPath(probe), pathCause(err))
		}
		return fmt.Errorf("cannot write in %s (%w)", absPath(dir), pathCause(err))
	}
	_ = f.Close()
	_ = os.Remove(f.Name())
	return nil
}

// pathCause drops the path and operation of an *fs.PathError: the message names the path
// itself, and "permission denied" reads better than "open x/.switchboard-…: permission denied".
func pathCause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func absPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

// checkRedisURL parses SWITCHBOARD_REDIS_URL as the server will.
func checkRedisURL(cfg config.Config) error {
	if cfg.RedisURL == "" {
		return nil
	}
	if _, err := redisconn.Parse(cfg.RedisURL); err != nil {
		return redisURLError(err)
	}
	return nil
}

// redisURLError names the variable; redisconn's errors never quote the URL (it may hold a
// password).
func redisURLError(err error) error {
	return fmt.Errorf("SWITCHBOARD_REDIS_URL: %w", err)
}

// checkRBACFile loads the RBAC policy file as the server will.
func checkRBACFile(cfg config.Config) error {
	if cfg.RBACFile == "" {
		return nil
	}
	if _, err := actors.LoadPolicy(cfg.RBACFile); err != nil {
		return fmt.Errorf("SWITCHBOARD_RBAC_FILE: %w", err)
	}
	return nil
}

// announceDemoUsers shows the passwords of the development users newApp just created, once:
// on the terminal when stderr is one, else in a file beside the users file that only this
// account can read. Never in the log, which is kept and shipped elsewhere. When that fails the
// users file is removed, so the next start creates users whose passwords can be learnt.
func announceDemoUsers(cfg config.Config, created []auth.DemoUser, stderr io.Writer, tty bool, log *slog.Logger) error {
	usersPath := filepath.Join(cfg.DataDir, auth.DevUsersFile)
	names := make([]string, len(created))
	for i, u := range created {
		names[i] = u.Username
	}
	if tty {
		writeDemoUsers(stderr, created, usersPath, cfg.Addr)
		log.Warn("DEVELOPMENT USERS created; their passwords are shown above on the terminal, never logged",
			"users", names, "users_file", usersPath)
		return nil
	}
	path := filepath.Join(cfg.DataDir, devPasswordsFile)
	if err := writePasswordsFile(path, created, usersPath, cfg.Addr); err != nil {
		_ = os.Remove(usersPath)
		return fmt.Errorf("SWITCHBOARD_DATA_DIR: cannot save the new development users' passwords: %w", err)
	}
	log.Warn("DEVELOPMENT USERS created; their passwords are in "+path+
		" (readable only by this account): read it, then delete it", "users", names, "users_file", usersPath)
	return nil
}

// writeDemoUsers prints the new users, their passwords and how to log in.
func writeDemoUsers(w io.Writer, created []auth.DemoUser, usersPath, addr string) {
	fmt.Fprintf(w, "\nDEVELOPMENT USERS created in %s (shown once, never logged):\n\n", usersPath)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  username\tpassword\troles")
	for _, u := range created {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", u.Username, u.Password, strings.Join(u.Roles, ","))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nLog in with: curl -s -X POST http://%s/login -d '{\"username\":\"%s\",\"password\":\"…\"}'\n", addr, created[0].Username)
	fmt.Fprintf(w, "Lost them? Stop the server, delete %s and start it again for new ones.\n\n", usersPath)
}

// writePasswordsFile writes the passwords to path (mode 0600), replacing an older file.
func writePasswordsFile(path string, created []auth.DemoUser, usersPath, addr string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".dev-passwords-*.tmp") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	writeDemoUsers(tmp, created, usersPath, addr)
	fmt.Fprintf(tmp, "Delete this file once you have read it: %s\n", path)
	if err := errors.Join(tmp.Sync(), tmp.Close()); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
