// Package bus carries Switchboard's broadcasts between nodes (Redis sharded pub/sub: topics
// spread over a fixed number of shard channels per deployment prefix, which on a Redis Cluster
// lie on different primaries) and keeps each history topic's sequence numbers and last
// messages, so that every node delivers every broadcast at most once, each topic in the same
// order (exactly once while its subscriptions stay up), and a node or a client can catch up from
// the history after missing some; Memory is the same contract for the single-node embedded
// default.
// Publish assigns a topic's seq, stores the history entry and publishes in one atomic step, so
// delivery order equals seq order on every node. A seq counts within the topic's stream, named by
// its epoch: when the counter has to start again (Redis lost its data, the topic expired, the
// process of the in-process bus restarted) the stream gets a new epoch, created in that same
// atomic step, so (epoch, seq) never names two different messages and a consumer can tell a
// restarted counter from messages it already has.
//
// A message with a Key is published at most once per topic and key within the dedup window
// (WithDedupWindow): the check runs in the same atomic step that assigns the seq, so a
// producer's retry (the outbox relay publishing a row again after a crash) takes no second seq
// and reaches no subscriber twice; Publish returns ErrDuplicate for it.
//
// Concurrency: Publish, History and Healthy are safe for concurrent use by any number of
// goroutines and never call deliver themselves. Each bus owns its goroutines, starts them in its
// constructor and stops them in Close, which waits for them; deliver is never called after Close
// returns. deliver is always called from goroutines owned by the bus, one message at a time,
// in delivery order:
//   - Redis: its receive goroutines (one per subscription: one per shard on a Redis Cluster,
//     one for all shards otherwise), under one lock, each in the order Redis delivered its
//     messages: a topic lives on one shard, so its messages come in seq order; messages of
//     different shards may interleave in any order. While deliver runs nothing more is read
//     from Redis, so deliver must return quickly (hand the message to an actor); a subscriber
//     that falls far behind is disconnected by Redis (client-output-buffer-limit pubsub) and
//     resubscribes. Another goroutine publishes the liveness probes and watches the
//     subscriptions for silence.
//   - Memory: its delivery goroutine, fed by an unbounded FIFO queue in publish order, so a
//     publisher that holds locks deliver also takes cannot deadlock. The queue grows only while
//     deliver is slower than the publishers.
//
// Redis pub/sub keeps nothing for an absent subscriber: whatever is published while a node's
// subscription is down (connection lost, Redis restarting, the watchdog replacing a silent
// connection) is never delivered to that node. The Redis bus does not hide this: after every
// confirmed (re)subscription it calls the functions registered with OnSubscribed, on the receive
// goroutine and before deliver sees any message received through the new subscription, and a
// consumer reads the missed messages of history topics back with History (the hub does; see
// package hub). Messages without history published meanwhile are lost for that node. Memory
// never misses a message and has no OnSubscribed.
//
// A deliver that panics is logged and the message skipped. Messages handed to deliver and
// returned by History are shared and must be treated as read-only.
package bus
