// Package audit is Switchboard's audit log: the user_actions table, a Writer that records
// entries asynchronously in batches, and a Repo that reads them back newest first.
// Request data is passed through Redact inside Writer.Record, so no unredacted password, token,
// secret or authorization value can reach the table whatever the caller hands in.
//
// Concurrency contract: Writer.Record is safe for any number of goroutines and never blocks on
// the database (a full queue drops the entry and counts it); one goroutine owned by the Writer
// does every insert and is stopped and waited for by Close. Redact is a pure function. A Repo
// is stateless and safe for concurrent use.
package audit
