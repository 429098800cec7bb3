// Package relay publishes what background producers left in the database's outbox
// (store/outbox) and in the Redis stream inbox (store/inbox) through the hub, the same publish
// path as POST /api/broadcast, after checking each event by the same rules
// (actors.Broadcasts). An event the rules refuse is dead-lettered with the reason and never
// retried; one the bus cannot take now is retried, with the events behind it waiting (the
// outbox keeps its order). Every event carries its idempotency key to the bus, whose dedup
// window makes a second publish of the same event (a relay that died between publishing and
// marking it) reach no subscriber twice.
//
// Concurrency: StartOutbox and StartInbox each start one goroutine that Stop ends and waits
// for. Wake and Healthy are safe from any goroutine. The outbox relay relays only while it
// holds the outbox's lease (one node of the cluster at a time); every node's inbox relay reads
// the stream through one consumer group, sharing its entries.
package relay
