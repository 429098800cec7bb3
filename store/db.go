package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	"github.com/uptrace/bun/driver/pgdriver"
	"github.com/uptrace/bun/driver/sqliteshim"
)

// Dialect names carried in DB.Dialect.
const (
	DialectPostgres = "postgres"
	DialectSQLite   = "sqlite"
)

// sqliteBusyTimeout is how long an SQLite statement waits for another writer before giving up
// with "database is locked". Writes are short, so this only matters under heavy contention.
const sqliteBusyTimeout = 10 * time.Second

// DB is an open database handle shared by all repositories of the process.
type DB struct {
	Bun     *bun.DB
	Dialect string // DialectPostgres or DialectSQLite

	sqliteDSN    string // driver DSN; Migrate opens a dedicated connection with it
	sqliteMemory bool   // ":memory:": a single connection is the whole database
	migrateMu    sync.Mutex
}

// Open connects to the database named by rawURL:
//
//   - postgres://user:pass@host:port/db?sslmode=disable (or postgresql://): PostgreSQL through
//     pgdriver. An unreachable server is retried with backoff until connectTimeout has elapsed
//     (or ctx ends); then Open returns an error wrapping ErrUnavailable that names host:port.
//   - sqlite://data/x.db (relative to the working directory) or sqlite:///abs/x.db: an SQLite
//     file, its parent directory created if missing, in WAL mode with a busy timeout and foreign
//     keys on. sqlite://:memory: is for tests only: the database lives in one connection, so
//     all queries are serialised and it disappears on Close.
//
// Error messages never contain the password of the URL.
func Open(ctx context.Context, rawURL string, connectTimeout time.Duration) (*DB, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql":
		if ok {
			return openPostgres(ctx, rawURL, connectTimeout)
		}
	case "sqlite":
		if ok {
			return openSQLite(ctx, rest)
		}
	}
	if !ok {
		scheme = "(none)"
	}
	return nil, fmt.Errorf("store: unsupported database URL scheme %q: use postgres://... or sqlite://<path>", scheme)
}

// Ping checks that the database answers.
func (d *DB) Ping(ctx context.Context) error {
	return databaseError("ping", d.Bun.PingContext(ctx))
}

// Close closes every pooled connection. Queries after Close fail with ErrDatabase.
func (d *DB) Close() error {
	return databaseError("close", d.Bun.Close())
}

func openPostgres(ctx context.Context, rawURL string, connectTimeout time.Duration) (*DB, error) {
	if _, err := url.Parse(rawURL); err != nil {
		// *url.Error repeats the whole URL, password included; keep only the reason.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("store: invalid PostgreSQL URL: %w", err)
	}
	connector, err := pgConnector(rawURL)
	if err != nil {
		return nil, err
	}
	addr := connector.Config().Addr

	sqldb := sql.OpenDB(connector)
	// bun's recommendation for pgdriver: a pool of about 4 connections per CPU.
	conns := max(4*runtime.GOMAXPROCS(0), 8)
	sqldb.SetMaxOpenConns(conns)
	sqldb.SetMaxIdleConns(conns)
	sqldb.SetConnMaxIdleTime(5 * time.Minute)

	if err := waitForPostgres(ctx, sqldb, addr, connectTimeout); err != nil {
		_ = sqldb.Close()
		return nil, err
	}
	return &DB{Bun: bun.NewDB(sqldb, pgdialect.New()), Dialect: DialectPostgres}, nil
}

// pgConnector builds the pgdriver connector; pgdriver.WithDSN panics on a DSN it cannot parse,
// and that must not take the process down.
func pgConnector(rawURL string) (c *pgdriver.Connector, err error) {
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("store: invalid PostgreSQL URL: %v", r)
		}
	}()
	return pgdriver.NewConnector(pgdriver.WithDSN(rawURL)), nil
}

// waitForPostgres pings until the server answers, connectTimeout elapses or ctx ends.
func waitForPostgres(ctx context.Context, sqldb *sql.DB, addr string, connectTimeout time.Duration) error {
	start := time.Now()
	deadline := start.Add(connectTimeout)
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		attemptTimeout := min(max(time.Until(deadline), 250*time.Millisecond), 5*time.Second)
		attemptCtx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := sqldb.PingContext(attemptCtx)
		cancel()
		if err == nil {
			return nil
		}
		if isPermanentPGError(err) {
			return fmt.Errorf("%w: PostgreSQL at %s rejected the connection: %w", ErrUnavailable, addr, err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w: PostgreSQL at %s not reachable (%d attempts, last error: %v): %w",
				ErrUnavailable, addr, attempt, err, ctx.Err())
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return fmt.Errorf("%w: PostgreSQL at %s not reachable after %s (%d attempts): %w",
				ErrUnavailable, addr, time.Since(start).Round(time.Millisecond), attempt, err)
		}
		timer := time.NewTimer(min(backoff, remaining))
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%w: PostgreSQL at %s not reachable (%d attempts, last error: %v): %w",
				ErrUnavailable, addr, attempt, err, ctx.Err())
		case <-timer.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// isPermanentPGError: the server answered, but retrying cannot help (bad credentials or a
// database that does not exist).
func isPermanentPGError(err error) bool {
	var pgErr pgdriver.Error
	if !errors.As(err, &pgErr) {
		return false
	}
	code := pgErr.Field('C')
	return strings.HasPrefix(code, "28") || code == "3D000"
}

func openSQLite(ctx context.Context, path string) (*DB, error) {
	if strings.ContainsAny(path, "?#") {
		return nil, errors.New("store: sqlite URL: query parameters are not supported; use sqlite://<path>")
	}
	if path == "" {
		return nil, errors.New("store: sqlite URL has no path; use sqlite://data/switchboard.db or sqlite:///abs/path.db")
	}
	memory := path == ":memory:"
	if !memory {
		if dir := filepath.Dir(path); dir != "." {
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return nil, fmt.Errorf("%w: SQLite at %s: create directory: %w", ErrUnavailable, path, err)
			}
		}
	}
	dsn := sqliteDSN(path)
	sqldb, err := sql.Open(sqliteshim.ShimName, dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: SQLite at %s: %w", ErrUnavailable, path, err)
	}
	if memory {
		// Every connection to ":memory:" is a separate, empty database: keep exactly one, forever.
		sqldb.SetMaxOpenConns(1)
		sqldb.SetMaxIdleConns(1)
		sqldb.SetConnMaxLifetime(0)
		sqldb.SetConnMaxIdleTime(0)
	} else {
		// WAL lets readers run beside the single writer; writers queue on busy_timeout.
		conns := max(runtime.GOMAXPROCS(0), 4)
		sqldb.SetMaxOpenConns(conns)
		sqldb.SetMaxIdleConns(conns)
	}
	db := &DB{
		Bun:          bun.NewDB(sqldb, sqlitedialect.New()),
		Dialect:      DialectSQLite,
		sqliteDSN:    dsn,
		sqliteMemory: memory,
	}
	if err := sqldb.PingContext(ctx); err != nil {
		_ = sqldb.Close()
		return nil, fmt.Errorf("%w: SQLite at %s: %w", ErrUnavailable, path, err)
	}
	if !memory {
		// WAL is a property of the file, so it is set once here rather than by every new
		// connection (switching modes needs the write lock). A file system without shared
		// memory support keeps its rollback journal; that is slower but still correct.
		var mode string
		if err := db.Bun.QueryRowContext(ctx, "PRAGMA journal_mode=WAL").Scan(&mode); err != nil {
			_ = sqldb.Close()
			return nil, fmt.Errorf("%w: SQLite at %s: enable WAL: %w", ErrUnavailable, path, err)
		}
	}
	return db, nil
}

// sqliteDSN turns a file path into a DSN for whichever driver sqliteshim picked: modernc.org/sqlite
// ("sqlite") on the common platforms, mattn/go-sqlite3 ("sqlite3") with cgo elsewhere. The two
// spell connection pragmas differently. journal_mode is set once by openSQLite, not here.
// _txlock=immediate makes BEGIN take the write lock at once, so a transaction never fails
// half-way upgrading from reader to writer.
func sqliteDSN(path string) string {
	ms := sqliteBusyTimeout.Milliseconds()
	// SQLite URIs decode %XX; '?' and '#' were rejected by the caller.
	name := "file:" + strings.ReplaceAll(filepath.ToSlash(path), "%", "%25")
	if sqliteshim.DriverName() == "sqlite3" {
		return fmt.Sprintf("%s?_busy_timeout=%d&_foreign_keys=1&_synchronous=NORMAL&_txlock=immediate", name, ms)
	}
	return fmt.Sprintf("%s?_pragma=busy_timeout(%d)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate", name, ms)
}
