package store

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/uptrace/bun/driver/pgdriver"
)

var (
	// ErrNotFound: the addressed row does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a unique constraint (e.g. the author name) rejected the write.
	ErrConflict = errors.New("conflict")
	// ErrInvalidCursor: a pagination cursor that this package did not produce.
	ErrInvalidCursor = errors.New("invalid cursor")
	// ErrDatabase wraps (with %w) every other failure reported by the database or its driver.
	ErrDatabase = errors.New("database error")
	// ErrUnavailable: Open could not reach the database before its connect timeout.
	ErrUnavailable = errors.New("database unavailable")
)

// sqliteConstraintUnique and sqliteConstraintPrimaryKey are SQLite extended result codes.
const (
	sqliteConstraintPrimaryKey = 1555
	sqliteConstraintUnique     = 2067
)

// dbError classifies err from a query named op. Unique violations become ErrConflict; anything
// else is wrapped in ErrDatabase (the original error stays reachable through errors.Is/As, so
// context.Canceled, for one, can still be told apart).
func dbError(op string, err error) error {
	if err == nil {
		return nil
	}
	if isUniqueViolation(err) {
		return fmt.Errorf("%w: %s: %w", ErrConflict, op, err)
	}
	return databaseError(op, err)
}

// databaseError wraps err in ErrDatabase without classifying it (for schema work, where a
// unique violation is a failure, not a conflict the caller can act on).
func databaseError(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %s: %w", ErrDatabase, op, err)
}

// isUniqueViolation reports whether err is a unique-constraint violation from either backend.
// It is the only way conflicts are detected: writes never check before inserting.
func isUniqueViolation(err error) bool {
	var pgErr pgdriver.Error
	if errors.As(err, &pgErr) {
		return pgErr.Field('C') == "23505"
	}
	// modernc.org/sqlite exposes the extended result code through Code() int.
	var coded interface{ Code() int }
	if errors.As(err, &coded) {
		switch coded.Code() {
		case sqliteConstraintUnique, sqliteConstraintPrimaryKey:
			return true
		}
	}
	// mattn/go-sqlite3 (the cgo fallback of sqliteshim) keeps the code in a field, not a
	// method; its message is stable, so match that instead of importing the driver.
	return strings.Contains(err.Error(), "UNIQUE constraint failed")
}

// isNoRows reports whether err means "no row matched".
func isNoRows(err error) bool {
	return errors.Is(err, sql.ErrNoRows)
}
