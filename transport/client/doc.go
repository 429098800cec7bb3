// Package client is the Go client of Switchboard, the far end of the transport: a WebSocket
// connection that stays up (it reconnects, resubscribes and refreshes its token by itself), with
// requests, topic subscriptions that recover what a reconnect missed, and publishing through
// the HTTP façade. It speaks the wire contract (docs/protocol.md) and imports none of the server's
// packages.
//
//	c, err := client.Dial(ctx, client.Config{URL: "ws://127.0.0.1:8000/web", GetToken: fetchToken})
//	defer c.Close()
//	var authors []Author
//	err = c.Call(ctx, 1, map[string]any{"filters": map[string]any{"name": "le guin"}}, &authors)
//	sub, err := c.Subscribe(ctx, "dashboards.sales", onMessage, client.OnMissed(reload))
//	n, err := c.Publish(ctx, "dashboards.sales", 7, map[string]any{"total": 42})
//
// # Requests
//
// Request and Call send a pkg_id with data and wait for the answer, matched by req_id. A
// refusal is an *Error (Status, Msg, Errors; IsPermissionDenied, IsInvalidData, IsRateLimited).
// Each request is bounded by its context, WithTimeout, or Config.RequestTimeout. While the
// client reconnects, requests wait in the outbound queue (Config.OutboundQueue; a full queue
// blocks the caller until its context ends). A request written on a connection that then ends
// fails with ErrConnectionLost, or, WithRetry, is written again on the next connection — never
// when the server closed for a frame it refused (1002, 1003, 1007, 1009).
//
// # Publishing
//
// Client.Publish and Publisher.Publish broadcast through the HTTP façade (POST /api/broadcast)
// with the token's broadcast role. A producer that never receives needs no WebSocket: a
// Publisher (NewPublisher) holds only a token and an HTTP client.
//
// # Subscriptions and recovery
//
// A Subscription remembers the seq and epoch of the last message it queued for its callback.
// After every reconnect the client sends SUBSCRIBE with since and epoch (docs/protocol.md §1.4);
// the replayed messages come after the answer and before live ones, and messages already
// delivered are dropped by seq, so the callback sees each message once and in order. When the
// answer says recovered: false (or names a stream behind the position asked from, for a server
// that sends no epoch), OnMissed is told, in order with the messages: reload the state.
// A seq that skips ahead, or another epoch, within a connection makes the client resubscribe
// from its position on that connection. A server that sends no epoch is followed with epoch "".
//
// # Reconnecting
//
// The wait between attempts is exponential with jitter (Config.ReconnectMin..ReconnectMax) and
// starts again from the bottom after a connection that received a frame. Close codes:
// 1001 (node shutting down) and 1013 (slow consumer, missed topic messages): reconnect after a
// short pause, to the next of Config.URL and FallbackURLs, and resubscribe with since;
// 1008 (connection limit): wait at least Config.ConnLimitDelay; 4001 (token expired): get a
// fresh token from GetToken, then reconnect (without GetToken the client stops with
// ErrTokenExpired); 1002, 1003, 1007, 1009 (the server refused what the client sent): the
// requests in flight fail, and after Config.MaxClientFaults such closes in a row the client
// stops with ErrRejected rather than loop. A handshake answered 401 gets a fresh token (without
// GetToken: ErrUnauthorized), 400, 403 and 404 stop the client. With GetToken the token is
// refreshed on the live connection (pkg_id 12) Config.RefreshBefore ahead of its exp.
//
// # Callbacks and slow consumers
//
// Subscription callbacks, OnMissed and Config.OnBroadcast run on one goroutine of the client,
// one at a time, in the order the frames arrived. The read loop does not wait for them: it puts
// what it reads in a bounded queue (Config.InboundQueue); when the queue is full it waits at
// most Config.InboundWait (1s) for room, so that a burst such as a replay passes. When a
// callback is so slow that the queue stays full, what can be recovered is recovered and what
// cannot is dropped: the client gives
// the connection up (close 1000; Stats.Overflows), waits until the callbacks have brought the
// queue down to half, reconnects and resubscribes from the last message queued — topics with
// history lose nothing. Broadcasts without a topic or on topics without history that find the
// queue full are dropped and counted (Stats.Dropped). A callback that needs long work should
// hand it to a goroutine of its own. A panicking callback is logged and the client goes on.
//
// # Concurrency contract
//
// A Client is safe for concurrent use. It owns these goroutines: the connection goroutine
// (dials, serves one connection at a time, waits between attempts), the callback goroutine, and
// per live connection gws's read loop and one writer, which is the connection's only writer
// (requests, control frames, pings). Close stops every one of them and waits for them, a
// callback that is running included: do not call Close from a callback. Config.OnConnected and
// OnDisconnect run on the connection goroutine; GetToken may be called from it and from Publish
// at the same time. Every queue is bounded: outbound requests (OutboundQueue), control frames
// per connection, inbound callbacks (InboundQueue); requests in flight are bounded by the
// outbound queue and the server's in-flight cap.
package client
