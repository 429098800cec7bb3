package transport

import (
	"net/textproto"
	"testing"
)

// The hot path reads and writes header maps directly (headerGet, headerSet): every name it
// uses must be the canonical form Header.Get and Set would look up, or the header would be
// missed or sent under another spelling.
func TestHeaderNamesAreCanonical(t *testing.T) {
	names := []string{hdrCorrelationID, hdrUserAgent, "X-Ratelimit-Limit", "X-Ratelimit-Remaining",
		"X-Ratelimit-Reset", "Content-Type", "Content-Length", "Authorization"}
	for _, sh := range securityHeaders {
		names = append(names, sh.name)
	}
	for _, n := range names {
		if c := textproto.CanonicalMIMEHeaderKey(n); c != n {
			t.Errorf("header name %q is not canonical (%q)", n, c)
		}
	}
}
