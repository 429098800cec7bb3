// Package migrations embeds Switchboard's SQL migrations, one directory per dialect
// (postgres/, sqlite/), in the bun/migrate naming scheme <14-digit version>_<name>.<kind>.sql.
//
// Both directories must hold the same versions. PostgreSQL files are "*.tx.up.sql": each runs
// in its own transaction. SQLite files must be plain "*.up.sql": the store runs all pending
// SQLite migrations inside one BEGIN IMMEDIATE transaction of its own, and SQLite cannot nest
// transactions. Applied migrations are never edited; add a new version instead.
//
// The package holds only immutable data and is safe for concurrent use.
package migrations

import (
	"embed"
	"fmt"
	"io/fs"

	"github.com/uptrace/bun/migrate"
)

//go:embed postgres/*.sql sqlite/*.sql
var files embed.FS

// For returns the migrations for dialect ("postgres" or "sqlite").
func For(dialect string) (*migrate.Migrations, error) {
	switch dialect {
	case "postgres", "sqlite":
	default:
		return nil, fmt.Errorf("migrations: unknown dialect %q", dialect)
	}
	sub, err := fs.Sub(files, dialect)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	ms := migrate.NewMigrations()
	if err := ms.Discover(sub); err != nil {
		return nil, fmt.Errorf("migrations: %s: %w", dialect, err)
	}
	return ms, nil
}
