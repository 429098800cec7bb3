package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Sentinel errors. Errors returned by the client wrap one of these (or are an *Error,
// *CloseError or *HandshakeError), so callers test them with errors.Is and errors.As.
var (
	// ErrClosed: the client was closed (Close) or gave up for good (see Client.Err).
	ErrClosed = errors.New("client: closed")
	// ErrConnectionLost: the connection ended after the request was written and before its
	// answer came; the server may or may not have run it. The error also wraps the cause (a
	// *CloseError when the server closed with a code).
	ErrConnectionLost = errors.New("client: connection lost before the answer")
	// ErrTimeout: no answer within the request's timeout (the error also wraps
	// context.DeadlineExceeded).
	ErrTimeout = errors.New("client: request timed out")
	// ErrUnauthorized: the handshake was refused with 401 and there is no GetToken to get another
	// token from.
	ErrUnauthorized = errors.New("client: token refused and no GetToken to get another")
	// ErrTokenExpired: the static token has expired (the server closed with 4001, or its exp has
	// passed) and there is no GetToken to get another.
	ErrTokenExpired = errors.New("client: token expired and no GetToken to get another")
	// ErrRejected: the server kept closing the connection for frames it could not accept
	// (1002, 1003, 1007, 1009) and the client stopped reconnecting. Wraps the last *CloseError.
	ErrRejected = errors.New("client: the server keeps refusing what this client sends")
	// ErrTooLarge: the request's frame is longer than Config.MaxMessageBytes; it was not sent.
	ErrTooLarge = errors.New("client: request larger than MaxMessageBytes")
	// ErrAlreadySubscribed: the client already has a subscription to that topic.
	ErrAlreadySubscribed = errors.New("client: already subscribed to this topic")
	// ErrUnsubscribed: the subscription ended through Unsubscribe.
	ErrUnsubscribed = errors.New("client: unsubscribed")
	// ErrInboundOverflow: the callbacks fell so far behind that the inbound queue filled; the
	// client closed the connection to resubscribe with since once they caught up (see doc.go).
	ErrInboundOverflow = errors.New("client: inbound queue full")
	// ErrBadFrame: the server sent a frame the client could not decode.
	ErrBadFrame = errors.New("client: undecodable frame from the server")
)

// Status codes of answers (docs/protocol.md §1.3).
const (
	StatusOK               = 0
	StatusError            = 1
	StatusInvalidData      = 2
	StatusPermissionDenied = 3
)

// FieldError is one validation problem: a JSON pointer into the request's data and a message.
type FieldError struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

// Error is a refusal by the server: an answer with a status_code other than 0 (Status set), or an
// HTTP error of the façade (HTTPStatus set; Status is then derived from it where one matches).
type Error struct {
	PkgID      int
	ReqID      string
	Status     int    // status_code of the answer (1, 2, 3)
	HTTPStatus int    // for errors of HTTP calls (Publish); 0 for WebSocket answers
	Msg        string // msg of the answer, or detail of an HTTP error
	// Errors are data.errors of a status 2 answer (or errors of a 422).
	Errors []FieldError
	// Data is the answer's data as it came (for example {"missing_roles": [...]}).
	Data json.RawMessage
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.HTTPStatus != 0 {
		fmt.Fprintf(&b, "switchboard: HTTP %d", e.HTTPStatus)
	} else {
		fmt.Fprintf(&b, "switchboard: pkg_id %d: status %d", e.PkgID, e.Status)
	}
	if e.Msg != "" {
		b.WriteString(": ")
		b.WriteString(e.Msg)
	}
	for i, fe := range e.Errors {
		if i == 3 {
			fmt.Fprintf(&b, " (+%d more)", len(e.Errors)-i)
			break
		}
		fmt.Fprintf(&b, "; %s: %s", fe.Path, fe.Message)
	}
	return b.String()
}

// IsPermissionDenied reports whether err is a refusal for missing roles (status 3, HTTP 403).
func IsPermissionDenied(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Status == StatusPermissionDenied || e.HTTPStatus == http.StatusForbidden)
}

// IsInvalidData reports whether err is a refusal of the request's data (status 2, HTTP 422, or
// a conflict: HTTP 409).
func IsInvalidData(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Status == StatusInvalidData ||
		e.HTTPStatus == http.StatusUnprocessableEntity || e.HTTPStatus == http.StatusConflict)
}

// IsRateLimited reports whether err is a rate-limit refusal (status 1 "Rate limit exceeded",
// HTTP 429).
func IsRateLimited(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.HTTPStatus == http.StatusTooManyRequests ||
		e.HTTPStatus == 0 && e.Status == StatusError && e.Msg == "Rate limit exceeded")
}

// CloseError is the close frame a connection ended with: the server's code and reason.
type CloseError struct {
	Code   uint16
	Reason string
}

func (e *CloseError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("websocket closed %d", e.Code)
	}
	return fmt.Sprintf("websocket closed %d %s", e.Code, e.Reason)
}

// HandshakeError is an upgrade the server answered with an HTTP status instead of 101.
type HandshakeError struct {
	StatusCode int
	Detail     string // the body's "detail", or the start of the body
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("websocket handshake: HTTP %d %s", e.StatusCode, e.Detail)
}

// errorFromAnswer builds the *Error of an answer whose status is not 0.
func errorFromAnswer(f *frame) *Error {
	e := &Error{PkgID: f.PkgID, ReqID: f.ReqID, Status: f.Status, Msg: f.Msg, Data: f.Data}
	var d struct {
		Errors []FieldError `json:"errors"`
	}
	if len(f.Data) > 0 && f.Data[0] == '{' && json.Unmarshal(f.Data, &d) == nil {
		e.Errors = d.Errors
	}
	return e
}
