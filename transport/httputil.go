package transport

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"switchboard/transport/auth"
)

// writeJSON answers with status and v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := marshalData(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"detail":"Internal error"}`)
	}
	h := w.Header()
	h["Content-Type"] = contentTypeJSON
	h["Content-Length"] = []string{strconv.Itoa(len(b) + 1)}
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// Detail is the body of every HTTP error: {"detail": "..."}.
type Detail struct {
	Detail string `json:"detail"`
}

func writeDetail(w http.ResponseWriter, status int, detail string) {
	writeJSON(w, status, Detail{Detail: detail})
}

// quoteShort quotes a client-supplied value for an error message, cut to a sane length.
func quoteShort(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return strconv.Quote(s)
}

// securityHeaders go on every response (docs/protocol.md §2), the server's own error answers too.
// The names are in canonical form and the value slices are shared by every response (see
// headerGet).
var securityHeaders = [...]struct {
	name  string
	value []string
}{
	{"X-Content-Type-Options", []string{"nosniff"}},
	{"X-Frame-Options", []string{"DENY"}},
	{"Referrer-Policy", []string{"no-referrer"}},
	{"Content-Security-Policy", []string{"default-src 'none'; frame-ancestors 'none'"}},
}

var contentTypeJSON = []string{"application/json"}

// headerGet is h.Get(name) for a name already in canonical form (textproto's: "X-Correlation-Id",
// "User-Agent"). http.Header's Get and Set canonicalise the name on every call, byte by byte,
// which cost a request about 1k instructions per call (callgrind, docs/performance.md); the
// hot path reads and writes the map directly under names written canonical. A shared value
// slice (securityHeaders, contentTypeJSON) is never written in place: Header.Set and Add
// replace or reallocate it.
func headerGet(h http.Header, name string) string {
	if v := h[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// headerSet is h.Set(name, value) for a name already in canonical form.
func headerSet(h http.Header, name, value string) { h[name] = []string{value} }

// Canonical header names of the request path.
const (
	hdrCorrelationID = "X-Correlation-Id" // textproto's form of X-Correlation-ID
	hdrUserAgent     = "User-Agent"
)

// newCorrelationID returns a random id for a response whose request brought none.
func newCorrelationID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// rawErrorResponse is a complete HTTP/1.1 answer {"detail": detail} that closes the connection,
// for the places that write to the connection itself instead of through a ResponseWriter.
// extra holds further header lines, each ending in CRLF.
func rawErrorResponse(status int, detail, extra string) []byte {
	body, _ := json.Marshal(Detail{Detail: detail})
	body = append(body, '\n')
	b := make([]byte, 0, 512+len(body))
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\nConnection: close\r\nDate: "...)
	b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
	b = append(b, "\r\nX-Correlation-ID: "...)
	b = append(b, newCorrelationID()...)
	b = append(b, "\r\n"...)
	for _, h := range securityHeaders {
		b = append(b, h.name...)
		b = append(b, ": "...)
		b = append(b, h.value[0]...)
		b = append(b, "\r\n"...)
	}
	b = append(b, extra...)
	b = append(b, "\r\n"...)
	return append(b, body...)
}

// tokenErrors are the verification failures whose text the auth package keeps client-safe (its
// sentinel and a fixed reason).
var tokenErrors = []error{auth.ErrMissingToken, auth.ErrTokenExpired, auth.ErrTokenNotYetValid,
	auth.ErrInvalidSignature, auth.ErrInvalidIssuer, auth.ErrInvalidAudience, auth.ErrMalformedToken,
	auth.ErrKeysUnavailable}

// tokenDetail is the detail of a 401/503 for a token that did not verify: the verifier's own
// client-safe text, or a fixed one for any other error, whose text is logged and never reaches
// a client.
func tokenDetail(err error, log *slog.Logger) string {
	for _, known := range tokenErrors {
		if errors.Is(err, known) {
			return err.Error()
		}
	}
	log.Warn("token verification failed with an unexpected error", "err", err)
	return "Invalid token"
}
