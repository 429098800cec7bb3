// Package actors holds Switchboard's protoactor actors: the connection actor (one per socket)
// and the stateless handler actors that run every request through rate limit → RBAC → JSON
// schema → handler. The pkg_id registry and the RBAC policy live here too.
//
// Concurrency contract: actors are only reached through messages (messages.go); their state is
// touched by their own Receive alone and no Receive blocks on another actor. Registry and Policy
// are built before the actors start and are read-only afterwards, so they are safe to share.
// Pipeline.Handle is safe for concurrent use: the handler pool and the HTTP façade both call it.
package actors
