package hub

import (
	"errors"

	"switchboard/store/bus"
)

// Errors of Broadcast and of subscriptions.
var (
	ErrStopped        = errors.New("hub stopped")
	ErrInvalidData    = errors.New("broadcast data is not valid JSON")
	ErrBusUnavailable = errors.New("broadcast bus unavailable")
	// ErrDuplicate: the message's Key was published on its topic within the bus's dedup
	// window; nothing was published this time (the first one was).
	ErrDuplicate     = bus.ErrDuplicate
	ErrTooManyTopics = errors.New("too many topics on this connection")
	ErrHistory       = errors.New("topic history unavailable")
	// ErrUnsubscribed answers a SUBSCRIBE whose history still loaded when the connection
	// unsubscribed from the topic.
	ErrUnsubscribed = errors.New("unsubscribed before the subscription completed")
)
