// Package outbox is the transactional outbox's table access: producers insert event rows into
// switchboard_outbox in their own transactions (Insert, or plain SQL), and the relay (package
// relay) reads the committed rows in id order (Pending), deletes those it published (Delete),
// moves the ones it refuses to switchboard_outbox_dead with the reason (DeadLetter), and
// reports how old the oldest waiting row is (OldestAge).
//
// Leadership: one relay at a time across every node sharing the database. On PostgreSQL, Lead
// takes a session-level advisory lock on a connection of its own and keeps it until Release,
// or until that connection dies (a node killed, its network cut): PostgreSQL then frees the lock
// and the next Lead of another node gets it. On SQLite (one process) Lead always succeeds.
// Listen delivers PostgreSQL's NOTIFY for the table; SQLite has none, and the relay polls.
//
// Concurrency: Outbox and its methods are safe for concurrent use. A Lease is used by one
// goroutine; its Release may be called from another. A Listener's Close ends its goroutine and
// waits for it.
package outbox
