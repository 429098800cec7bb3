package outbox

import "errors"

var (
	// ErrInvalidEvent: Insert refused an event (no pkg_id range, data not JSON...).
	ErrInvalidEvent = errors.New("outbox: invalid event")
	// ErrDatabase wraps (with %w) every failure of the database or its driver.
	ErrDatabase = errors.New("outbox: database error")
	// ErrLeaseLost: the connection holding the relay's lock failed; another node may lead now.
	ErrLeaseLost = errors.New("outbox: relay lease lost")
)
