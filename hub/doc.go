// Package hub is the supervising hub actor: it keeps the registry of live connections and
// delivers broadcasts by taking a snapshot of its targets, encoding each frame once per codec and
// queueing the same bytes on every target's bounded writer. Targets that are over budget or fail
// are disconnected and removed without slowing the others.
//
// Concurrency contract: the registry is owned by the hub actor's Receive alone. Hub's methods
// only send messages to it and are safe for concurrent use; they never wait on a socket. Conn
// implementations must make Enqueue, Ping and Close non-blocking and safe to call from the hub.
package hub
