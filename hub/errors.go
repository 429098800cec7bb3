package hub

import "errors"

// Errors of Broadcast and of subscriptions.
var (
	ErrStopped        = errors.New("hub stopped")
	ErrInvalidData    = errors.New("broadcast data is not valid JSON")
	ErrBusUnavailable = errors.New("broadcast bus unavailable")
	ErrTooManyTopics  = errors.New("too many topics on this connection")
	ErrHistory        = errors.New("topic history unavailable")
)
