package hub

import "errors"

// Errors of Broadcast and of subscriptions.
var (
	ErrStopped        = errors.New("hub stopped")
	ErrInvalidData    = errors.New("broadcast data is not valid JSON")
	ErrBusUnavailable = errors.New("broadcast bus unavailable")
	ErrTooManyTopics  = errors.New("too many topics on this connection")
	ErrHistory        = errors.New("topic history unavailable")
	// ErrUnsubscribed answers a SUBSCRIBE whose history still loaded when the connection
	// unsubscribed from the topic.
	ErrUnsubscribed = errors.New("unsubscribed before the subscription completed")
)
