package transport

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"switchboard/actors"
)

// TestWriteFailureRefusedRequests: a request the pool refused without running it (its deadline
// passed while it waited, or the pool is stopping) is 503 with Retry-After, so a client knows a
// retry is safe; a database error (a handler that ran out of time included) stays 500.
func TestWriteFailureRefusedRequests(t *testing.T) {
	cases := []struct {
		resp       *actors.Response
		status     int
		detail     string
		retryAfter string
	}{
		{&actors.Response{Status: actors.StatusError, Msg: "Request timed out", Kind: actors.ErrDeadline}, http.StatusServiceUnavailable, "Request timed out", "1"},
		{&actors.Response{Status: actors.StatusError, Msg: "Server is shutting down", Kind: actors.ErrStopping}, http.StatusServiceUnavailable, "Server is shutting down", "1"},
		{&actors.Response{Status: actors.StatusError, Msg: "Database error occurred", Kind: actors.ErrDatabase}, http.StatusInternalServerError, "Database error occurred", ""},
	}
	for _, tc := range cases {
		w := httptest.NewRecorder()
		writeFailure(w, tc.resp)
		if w.Code != tc.status || !strings.Contains(w.Body.String(), `"detail":"`+tc.detail+`"`) || w.Header().Get("Retry-After") != tc.retryAfter {
			t.Errorf("%s: %d %s Retry-After %q", tc.detail, w.Code, w.Body.String(), w.Header().Get("Retry-After"))
		}
	}
}
