package outbox

import "errors"

var (
	// ErrInvalidEvent: Insert refused an event (no pkg_id range, data not JSON...).
	ErrInvalidEvent = errors.New("outbox: invalid event")
	// ErrLeaseLost: the connection holding the relay's lock failed; another node may lead now.
	ErrLeaseLost = errors.New("outbox: relay lease lost")
)
