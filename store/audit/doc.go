// Package audit is Switchboard's audit log: the user_actions table, a Writer that records
// entries asynchronously in batches, and a Repo that reads them back newest first.
// Request data is passed through Redact inside Writer.Record, so no unredacted password, token,
// secret or authorization value can reach the table whatever the caller hands in.
//
// The Writer outlives database outages: a batch that fails for a reason that can pass is
// written again with a growing pause until it succeeds, while new entries wait in the bounded
// queue; on PostgreSQL each batch takes its ids before its first try, so a try whose answer was
// lost cannot leave the rows twice. A row the database refuses is split out of its batch and
// dropped alone. Every entry ends up written or dropped, and every drop is counted and logged.
//
// Concurrency contract: Writer.Record is safe for any number of goroutines and never blocks on
// the database (a full queue drops the entry and counts it); one goroutine owned by the Writer
// does every insert and is stopped and waited for by Close (within Close's context). Redact is
// a pure function. A Repo is stateless and safe for concurrent use.
package audit
