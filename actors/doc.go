// Package actors holds Switchboard's protoactor actors: the connection actor (one per socket)
// and the stateless handler actors that run every request through rate limit → RBAC → JSON
// schema → handler, in two lanes (database, control) behind one pool PID. The pkg_id registry
// and the RBAC policy live here too.
//
// Concurrency contract: actors are only reached through messages (messages.go); their state is
// touched by their own Receive alone and no Receive blocks on another actor. A connection actor
// has at most one request at the pool at a time, so its connection's answers keep their order.
// The pool's address (poolFront) is not an actor: it routes on the sender's goroutine into a
// lane, whose queue and idle list are shared by senders, the lane's handler actors and its
// sweeper goroutine under the lane's mutex; HandlerPool.Stop stops the sweepers and waits for
// them and for the actors. Registry and Policy are built before the actors start and are
// read-only afterwards, so they are safe to share. Pipeline.Handle is safe for concurrent use.
package actors
