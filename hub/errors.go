package hub

import "errors"

// Errors of Broadcast.
var (
	ErrStopped     = errors.New("hub stopped")
	ErrInvalidData = errors.New("broadcast data is not valid JSON")
)
