package bus

import "errors"

var (
	// ErrInvalidArgument: a topic name outside the allowed set, history without a topic, a
	// negative or too large history, Data that is not JSON, or a nil client or deliver function.
	ErrInvalidArgument = errors.New("bus: invalid argument")
	// ErrUnavailable wraps (with %w) every Redis failure or timeout.
	ErrUnavailable = errors.New("bus: redis unavailable")
	// ErrUnhealthy wraps the reason Healthy gives when the bus is not delivering.
	ErrUnhealthy = errors.New("bus: not delivering")
	// ErrDuplicate: Publish of a Message whose Key was published on its topic within the dedup
	// window; nothing was published.
	ErrDuplicate = errors.New("bus: duplicate message")
	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("bus: closed")
)
