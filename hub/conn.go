package hub

import "switchboard/store/bus"

// Conn is what the hub needs from one socket (the transport's bounded writer).
type Conn interface {
	ID() uint64
	// Codec is the connection's frame codec; the hub encodes a broadcast once per codec.
	Codec() Codec
	// Enqueue queues a complete frame shared with other connections (read-only) without
	// blocking. False means the connection is over its send budget or closed; the connection
	// has then started closing itself.
	Enqueue(frame []byte) bool
	// Ping queues a keepalive ping.
	Ping()
	// Close starts closing with a close frame; it does not wait.
	Close(code uint16, reason string)
}

// Codec encodes broadcasts for a kind of connection. Implementations are stateless and shared.
type Codec interface {
	EncodeBroadcast(*Message) ([]byte, error)
}

// Message is one broadcast: the bus's message, so it crosses nodes unchanged.
type Message = bus.Message

// Window is what the bus's History read of a topic's stream.
type Window = bus.Window
