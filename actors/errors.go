package actors

import (
	"errors"
	"fmt"
)

// Kinds of failure. A Response's Kind is one of these (or nil), so the edges map them to their
// own codes in one place.
var (
	ErrUnknownPkg  = errors.New("unknown pkg_id")
	ErrRateLimited = errors.New("rate limit exceeded")
	ErrDenied      = errors.New("permission denied")
	ErrInvalid     = errors.New("invalid data")
	ErrNotFound    = errors.New("not found")
	ErrConflict    = errors.New("conflict")
	ErrDatabase    = errors.New("database error")
	ErrInternal    = errors.New("internal error")
	// ErrDeadline: the request's deadline (admission plus the handler timeout) passed before a
	// handler took it, so it never ran.
	ErrDeadline = errors.New("deadline passed before the request ran")
	// ErrStopping: the handler pool is stopping (shutdown), so the request never ran.
	ErrStopping = errors.New("handler pool stopping")
)

// Failure is what a handler returns for an answer other than success: a status code, the
// message the client sees, the kind, and optional data (for example validation errors).
type Failure struct {
	Status Status
	Msg    string
	Kind   error
	Data   any
	Cause  error // logged, never shown
}

func (f *Failure) Error() string {
	if f.Cause != nil {
		return fmt.Sprintf("%s: %v", f.Msg, f.Cause)
	}
	return f.Msg
}

func (f *Failure) Unwrap() []error { return []error{f.Kind, f.Cause} }

// NotFound is the answer for a missing resource (status 1 per docs/protocol.md §1.4).
func NotFound(msg string) *Failure {
	return &Failure{Status: StatusError, Msg: msg, Kind: ErrNotFound}
}

// Conflict is the answer for a uniqueness conflict (status 2).
func Conflict(msg string) *Failure {
	return &Failure{Status: StatusInvalidData, Msg: msg, Kind: ErrConflict}
}

// Invalid is a status-2 answer with field errors.
func Invalid(errs ...FieldError) *Failure {
	return &Failure{Status: StatusInvalidData, Msg: "Invalid data", Kind: ErrInvalid, Data: InvalidData{Errors: errs}}
}
