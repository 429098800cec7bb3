package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	"github.com/uptrace/bun/driver/sqliteshim"
	"github.com/uptrace/bun/migrate"

	"switchboard/store/migrations"
)

// migrateLockKey is the pg_advisory_lock key that serialises Migrate across processes.
// Advisory locks are per database, so other databases on the same server are not affected.
const migrateLockKey int64 = 0x5377_6974_6368_4d67 // "SwitchMg"

// Migrate applies the embedded migrations that the database has not seen yet. It is idempotent
// and safe to run from several goroutines or processes at once:
//
//   - PostgreSQL: a session-level pg_advisory_lock on a dedicated connection is held around
//     bun/migrate's Init (CREATE TABLE IF NOT EXISTS is not race-free in PostgreSQL) and
//     Migrate; every migration file runs in its own transaction and is marked applied only
//     after it succeeded.
//   - SQLite: everything runs inside one BEGIN IMMEDIATE transaction on a dedicated
//     connection. SQLite allows one writer per file, so a second process waits (busy_timeout,
//     then retries until ctx ends); a crash rolls the whole run back and leaves no stale lock.
//     With sqlite://:memory: the transaction is on the only connection, so run Migrate before
//     sharing the DB.
//
// bun/migrate's own lock table (bun_migration_locks) is created by Init but not used: a lock
// row survives a crash and would block every later start.
func (d *DB) Migrate(ctx context.Context) error {
	d.migrateMu.Lock()
	defer d.migrateMu.Unlock()

	ms, err := migrations.For(d.Dialect)
	if err != nil {
		return err
	}
	// The SQLite path migrates through a connection of its own; refuse on a closed handle all
	// the same.
	if err := d.Bun.PingContext(ctx); err != nil {
		return databaseError("migrate", err)
	}
	switch d.Dialect {
	case DialectPostgres:
		return d.migratePostgres(ctx, ms)
	case DialectSQLite:
		return d.migrateSQLite(ctx, ms)
	default:
		return fmt.Errorf("store: migrate: unknown dialect %q", d.Dialect)
	}
}

func runMigrations(ctx context.Context, db *bun.DB, ms *migrate.Migrations) error {
	m := migrate.NewMigrator(db, ms, migrate.WithMarkAppliedOnSuccess(true))
	if err := m.Init(ctx); err != nil {
		return databaseError("migrate: init", err)
	}
	if _, err := m.Migrate(ctx); err != nil {
		return databaseError("migrate", err)
	}
	return nil
}

func (d *DB) migratePostgres(ctx context.Context, ms *migrate.Migrations) error {
	conn, err := d.Bun.Conn(ctx)
	if err != nil {
		return databaseError("migrate: lock connection", err)
	}
	locked := false
	defer func() {
		// Release with a fresh deadline even if ctx is done. If the unlock cannot be confirmed,
		// discard the connection instead of returning it to the pool still holding the lock.
		unlockCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if locked {
			if _, err := conn.ExecContext(unlockCtx, "SELECT pg_advisory_unlock(?)", migrateLockKey); err != nil {
				_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			}
		}
		_ = conn.Close()
	}()

	// Poll pg_try_advisory_lock instead of blocking in pg_advisory_lock: pgdriver does not
	// cancel a running query when ctx ends, and its read timeout would cut a long wait short.
	backoff := 20 * time.Millisecond
	for {
		if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock(?)", migrateLockKey).Scan(&locked); err != nil {
			return databaseError("migrate: advisory lock", err)
		}
		if locked {
			break
		}
		if err := sleepCtx(ctx, backoff); err != nil {
			return databaseError("migrate: waiting for advisory lock", err)
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
	return runMigrations(ctx, d.Bun, ms)
}

func (d *DB) migrateSQLite(ctx context.Context, ms *migrate.Migrations) error {
	mdb := d.Bun // ":memory:" is a single connection already; migrateMu serialises callers.
	if !d.sqliteMemory {
		// A one-connection pool: every statement of the migrator, including the ones bun/migrate
		// issues through db.Conn, lands on the connection that holds the transaction.
		sqldb, err := sql.Open(sqliteshim.ShimName, d.sqliteDSN)
		if err != nil {
			return databaseError("migrate: open", err)
		}
		sqldb.SetMaxOpenConns(1)
		sqldb.SetMaxIdleConns(1)
		mdb = bun.NewDB(sqldb, sqlitedialect.New())
		defer mdb.Close()
	}

	backoff := 20 * time.Millisecond
	for {
		_, err := mdb.ExecContext(ctx, "BEGIN IMMEDIATE")
		if err == nil {
			break
		}
		if !isSQLiteBusy(err) {
			return databaseError("migrate: begin", err)
		}
		if err := sleepCtx(ctx, backoff); err != nil {
			return databaseError("migrate: waiting for the write lock", err)
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
	committed := false
	defer func() {
		if !committed {
			_, _ = mdb.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()
	if err := runMigrations(ctx, mdb, ms); err != nil {
		return err
	}
	if _, err := mdb.ExecContext(ctx, "COMMIT"); err != nil {
		return databaseError("migrate: commit", err)
	}
	committed = true
	return nil
}

// isSQLiteBusy reports SQLITE_BUSY / SQLITE_LOCKED (any extended variant).
func isSQLiteBusy(err error) bool {
	var coded interface{ Code() int }
	if errors.As(err, &coded) {
		switch coded.Code() & 0xff {
		case 5, 6: // SQLITE_BUSY, SQLITE_LOCKED
			return true
		}
	}
	msg := err.Error()
	return strings.Contains(msg, "database is locked") || strings.Contains(msg, "database table is locked")
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
