// Package storetest gives tests of any package real databases to run against: a fresh
// PostgreSQL database per test (dropped afterwards) and a fresh SQLite file per test. Import it
// only from _test.go files.
//
// Every helper is safe to call from parallel tests; each call returns its own database.
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"

	"switchboard/store"
)

// AdminURLEnv names the environment variable holding the PostgreSQL URL used to create and
// drop test databases (its user needs CREATEDB).
const AdminURLEnv = "SWITCHBOARD_TEST_POSTGRES_URL"

// DefaultAdminURL is used when AdminURLEnv is unset.
const DefaultAdminURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

const adminTimeout = time.Minute

// staleAfter is the age past which a test database is taken to be left over by a run that
// was killed before its cleanup; no test runs that long.
const staleAfter = 2 * time.Hour

// sweepStale drops test databases (sb_test_<unix seconds>_<random>) older than staleAfter.
// Failures are only logged: the sweep is housekeeping.
func sweepStale(ctx context.Context, t testing.TB, admin *sql.DB) {
	rows, err := admin.QueryContext(ctx, "SELECT datname FROM pg_database WHERE datname LIKE 'sb\\_test\\_%'")
	if err != nil {
		t.Logf("storetest: list stale databases: %v", err)
		return
	}
	var stale []string
	for rows.Next() {
		var name string
		if rows.Scan(&name) != nil {
			continue
		}
		parts := strings.Split(name, "_") // sb, test, <unix>, <random>
		if len(parts) != 4 {
			continue
		}
		if sec, err := strconv.ParseInt(parts[2], 10, 64); err == nil && time.Since(time.Unix(sec, 0)) > staleAfter {
			stale = append(stale, name)
		}
	}
	_ = rows.Close()
	for _, name := range stale {
		// Names matched the pattern above ([a-z0-9_]), so splicing them into DDL is safe.
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("storetest: drop stale database %s: %v", name, err)
		}
	}
}

// PostgresURL creates an empty database with a unique name (sb_test_<unix>_<random>), drops it
// (WITH (FORCE)) when the test ends, and returns its postgres:// URL. Without a reachable
// server the test is skipped, or fails when CI=true.
func PostgresURL(t testing.TB) string {
	t.Helper()
	adminURL := os.Getenv(AdminURLEnv)
	if adminURL == "" {
		adminURL = DefaultAdminURL
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		t.Fatalf("storetest: %s is not a URL", AdminURLEnv)
	}

	admin, err := openAdmin(adminURL)
	if err != nil {
		unreachable(t, u, err)
	}
	defer admin.Close()
	pingCtx, cancelPing := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelPing()
	if err := admin.PingContext(pingCtx); err != nil {
		unreachable(t, u, err)
	}
	// CREATE and DROP DATABASE copy files and checkpoint: allow them time on a busy server.
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()

	sweepStale(ctx, t, admin)
	// The creation time in the name lets a later run drop what a killed run left behind.
	name := fmt.Sprintf("sb_test_%d_%s", time.Now().Unix(), randomHex(4))
	// The name is generated here ([a-z0-9_]), so it is safe to splice into DDL.
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("storetest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		admin, err := openAdmin(adminURL)
		if err != nil {
			t.Errorf("storetest: drop database %s: %v", name, err)
			return
		}
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("storetest: drop database %s: %v", name, err)
		}
	})

	dbURL := *u
	dbURL.Path = "/" + name
	return dbURL.String()
}

// SQLiteURL returns sqlite://<t.TempDir()>/test.db; the file does not exist yet.
func SQLiteURL(t testing.TB) string {
	t.Helper()
	return "sqlite://" + filepath.ToSlash(filepath.Join(t.TempDir(), "test.db"))
}

// Backend names a database backend and makes a fresh database URL for a test.
type Backend struct {
	Name string                  // "sqlite" or "postgres"
	URL  func(testing.TB) string // SQLiteURL or PostgresURL
}

// Backends lists both backends. URL is a function so PostgreSQL is only contacted inside the
// subtest that needs it: SQLite still runs when PostgreSQL is absent.
func Backends() []Backend {
	return []Backend{
		{Name: "sqlite", URL: SQLiteURL},
		{Name: "postgres", URL: PostgresURL},
	}
}

// ForEachBackend runs fn as subtests "sqlite" and "postgres", each with the URL of a fresh,
// empty (not migrated) database:
//
//	storetest.ForEachBackend(t, func(t *testing.T, url string) {
//		db := storetest.NewDB(t, url)
//		...
//	})
func ForEachBackend(t *testing.T, fn func(t *testing.T, url string)) {
	t.Helper()
	for _, b := range Backends() {
		t.Run(b.Name, func(t *testing.T) {
			fn(t, b.URL(t))
		})
	}
}

// NewDB opens url, applies the migrations and closes the database when the test ends.
func NewDB(t testing.TB, url string) *store.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := store.Open(ctx, url, 10*time.Second)
	if err != nil {
		t.Fatalf("storetest: open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := db.Migrate(ctx); err != nil {
		t.Fatalf("storetest: migrate: %v", err)
	}
	return db
}

func openAdmin(adminURL string) (db *sql.DB, err error) {
	// pgdriver.WithDSN panics on a DSN it cannot parse.
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, &dsnError{msg: "invalid " + AdminURLEnv}
		}
	}()
	connector := pgdriver.NewConnector(pgdriver.WithDSN(adminURL), pgdriver.WithTimeout(adminTimeout))
	return sql.OpenDB(connector), nil
}

type dsnError struct{ msg string }

func (e *dsnError) Error() string { return e.msg }

func unreachable(t testing.TB, u *url.URL, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("PostgreSQL not reachable at %s: %v", u.Host, err)
	}
	t.Skipf("PostgreSQL not reachable at %s: %v (set %s to use another server)", u.Host, err, AdminURLEnv)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
