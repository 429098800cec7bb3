package limits

import "errors"

var (
	// ErrInvalidArgument: a limit or window that is not positive, or an empty key part. It is a
	// programming error and is returned even when failing open.
	ErrInvalidArgument = errors.New("limits: invalid argument")
	// ErrUnavailable wraps (with %w) every Redis failure or timeout, when not failing open.
	ErrUnavailable = errors.New("limits: redis unavailable")
)
