package actors

import (
	"encoding/json"
	"slices"
	"time"
)

// Status is the status_code of a response (docs/protocol.md §1.3).
type Status int

// Status codes of docs/protocol.md §1.3.
const (
	StatusOK               Status = 0
	StatusError            Status = 1
	StatusInvalidData      Status = 2
	StatusPermissionDenied Status = 3
)

// User is the verified identity behind a connection or an HTTP call.
type User struct {
	ID        string // the token's sub
	Name      string // preferred_username
	Roles     []string
	ExpiresAt time.Time
}

// HasRole reports whether u holds role.
func (u *User) HasRole(role string) bool {
	return u != nil && slices.Contains(u.Roles, role)
}

// Request is one call of a pkg_id, from a WebSocket frame or an HTTP route. It is immutable
// once sent.
type Request struct {
	PkgID     int
	ReqID     string
	Data      json.RawMessage // always a JSON object; "{}" when the frame had none
	User      *User
	Transport string // "ws" or "http"
	Remote    string // client address, for limits and audit
	UserAgent string
	// Admitted is when the server took the request in: the connection actor when the read side
	// hands it a frame, the façade's route once the call is read. The request's deadline is
	// Admitted plus the handler timeout (Pipeline.Deadline), however long it then waits: one
	// whose deadline passes before a handler takes it is answered and never runs. Zero means
	// "now" (a caller that calls Pipeline.Handle directly).
	Admitted time.Time
}

// JSONAppender is answer data that appends its own JSON encoding, the bytes json.Marshal would
// give, so the edge encodes it without reflection.
type JSONAppender interface {
	AppendJSON(b []byte) []byte
}

// Response answers one Request. Data and Meta are encoded by the edge; Kind is the sentinel
// error behind a failure (nil on success) so each edge maps it to its own status (HTTP 404, 409…).
type Response struct {
	PkgID  int
	ReqID  string
	Status Status
	Data   any
	Meta   any
	Msg    string // empty encodes as null
	Kind   error
	// RetryAfter is set on rate-limit answers: how long until a slot frees.
	RetryAfter time.Duration
	// Refreshed is the connection's new identity after a successful REFRESH_TOKEN; the
	// connection actor adopts it. Never encoded.
	Refreshed *User
	// Effect is what a successful answer asks of the connection actor besides sending it
	// (*SubscribeIntent, *UnsubscribeIntent). Never encoded.
	Effect any
	// Decoded is the request's data as schema validation decoded it (objects as map[string]any,
	// numbers as json.Number), on the answers to HTTP requests, so the façade's audit record
	// redacts it instead of decoding the data again (audit.Entry.RequestValue); nil when the
	// data was not decoded. It belongs to the receiver of the answer. Never encoded.
	Decoded any
	// For is the request this answers: set on every answer of the pipeline, nil on the answers
	// the read side makes without a handler (bad envelopes). The connection actor tells the two
	// apart by it. Never encoded.
	For *Request
}

// FieldError is one problem found in a request's data: a JSON pointer and a message.
type FieldError struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

// InvalidData is the data of a status-2 validation answer.
type InvalidData struct {
	Errors []FieldError `json:"errors"`
}
