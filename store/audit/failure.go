package audit

import (
	"errors"
	"strings"

	"github.com/uptrace/bun/driver/pgdriver"
)

// failure is what a failed write means for the batch that was being written.
type failure int

const (
	// failTransient: the database could not be reached, the connection broke or timed out
	// (the statement may have run, its answer lost), or the database gave the statement up for
	// a reason of its own (shutting down, out of resources, a deadlock). Retry.
	failTransient failure = iota
	// failRejected: the database refused the statement for what it holds (a value out of
	// range, a constraint). Retrying the same rows cannot help: split the batch.
	failRejected
	// failClosed: the database handle was closed; nothing will ever be written through it.
	failClosed
)

// SQLite primary result codes (the low byte of an extended code) that a retry can outlive.
const (
	sqliteBusy      = 5
	sqliteLocked    = 6
	sqliteNoMem     = 7
	sqliteInterrupt = 9 // the statement's context ended: it was rolled back
	sqliteIOErr     = 10
	sqliteFull      = 13
	sqliteCantOpen  = 14
	sqliteProtocol  = 15
)

// classify tells what err, from an INSERT of a batch, means for that batch.
func classify(err error) failure {
	if errors.Is(err, errBuild) {
		return failRejected
	}
	// database/sql's "database is closed" error is not exported.
	if strings.Contains(err.Error(), "sql: database is closed") {
		return failClosed
	}
	// The server answered with an error: the statement did not commit.
	var pgErr pgdriver.Error
	if errors.As(err, &pgErr) {
		switch code := pgErr.Field('C'); {
		case len(code) < 2:
			return failTransient
		case pgErr.Field('V') == "FATAL" || pgErr.Field('V') == "PANIC":
			return failTransient // the session ends (e.g. an administrator shut the server down)
		default:
			switch code[:2] {
			case "08", // connection exception
				"40", // transaction rollback: serialization failure, deadlock
				"53", // insufficient resources: disk full, out of memory, too many connections
				"55", // object not in prerequisite state: lock not available
				"57", // operator intervention: query cancelled, shutting down, starting up
				"58": // system error: I/O
				return failTransient
			}
			return failRejected
		}
	}
	// SQLite (modernc.org/sqlite) reports a result code; the statement did not commit.
	var coded interface{ Code() int }
	if errors.As(err, &coded) {
		switch coded.Code() & 0xff {
		case sqliteBusy, sqliteLocked, sqliteNoMem, sqliteInterrupt, sqliteIOErr, sqliteFull, sqliteCantOpen, sqliteProtocol:
			return failTransient
		}
		return failRejected
	}
	// Anything else comes from the connection (refused, broken, timed out): try again.
	return failTransient
}
