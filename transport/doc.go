// Package transport is Switchboard's edge: the gws WebSocket endpoint (handshake auth, read
// loop, bounded writer), the HTTP façade and its middleware, and the wire codecs.
//
// Concurrency contract: each socket has one read goroutine (gws ReadLoop) and at most one drain
// goroutine at a time writing to it; everything else (hub, connection actor) only queues frames
// on the writer, which never blocks. The WSServer tracks every read goroutine and Shutdown waits
// for them. HTTP handlers are safe for concurrent use. The Edge wraps the listener: its
// per-address counts are safe for concurrent use, and the only goroutines it starts are the
// bounded refusals of its listener, which the listener's Close ends and waits for.
package transport
