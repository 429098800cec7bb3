// Package store is Switchboard's persistence layer: bun models and repositories, embedded
// migrations and pagination over PostgreSQL or an embedded SQLite file.
// Every failure leaves the package as one of the sentinel errors in errors.go, so the edges can
// map them to status codes in one place.
//
// Concurrency: a *DB and the repositories built on it (Authors) are safe for concurrent use by
// any number of goroutines; open one *DB per process, share it, and Close it last during
// shutdown. Migrate may run concurrently in several goroutines or processes against the same
// database: it serialises itself with a database lock (see migrate.go).
package store
