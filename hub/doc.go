// Package hub is the supervising hub actor: it keeps the registry of live connections and
// delivers broadcasts by taking a snapshot of its targets, encoding each frame once per codec and
// queueing the same bytes on every target's bounded writer. Targets that are over budget or fail
// are disconnected and removed without slowing the others.
//
// Topics: a subscriber gets the SUBSCRIBE answer, then (with since and the epoch it belongs to)
// the kept messages after since, then the live ones, with no gap and no duplicate at the seam.
// On a topic with history (a sequence per message, within a stream named by its epoch), a
// subscriber gets every message of the topic exactly once and in sequence order for as long as it
// stays subscribed, including the messages this node missed on the bus while its subscription
// was down: a sequence gap, or the bus reporting that it resubscribed (Resubscriber), makes the
// hub read the missed messages back from the history (gap.go). When they are no longer there
// (trimmed, the stream restarted under a new epoch) or the history cannot be read, the hub never
// leaves a silent hole: it closes the topic's subscribed connections with CloseMissedMessages
// (1013, "missed topic messages"), logs a warning and counts it; the client reconnects and
// SUBSCRIBEs with since and epoch, whose answer says whether it recovered. Topics without
// history, and broadcasts to every connection, carry no sequence and get no such guarantee: a
// message published while the node's bus subscription is down does not reach this node.
//
// Bounds: live messages held for a subscription whose history loads, and for a topic reading
// missed messages back, are capped (Options.MaxPending); history reads for SUBSCRIBEs run at
// most Options.MaxLoads at once, each serving every SUBSCRIBE of its topic waiting when it
// starts (the rest wait in a queue of one entry per subscription request), and fills of missed
// messages at most 8. The actor's mailbox runs on one long-lived goroutine of the hub. Every
// SubscribeRequest gets exactly one Ack (unless its connection is gone or the hub stops) and one
// Done.
//
// Concurrency contract: the registry is owned by the hub actor's Receive alone. Hub's methods
// only send messages to it and are safe for concurrent use; they never wait on a socket. Conn
// implementations must make Enqueue, Ping and Close non-blocking and safe to call from the hub.
package hub
