package actors

import (
	"strings"
	"testing"
)

func TestBroadcastsCheck(t *testing.T) {
	b, err := NewBroadcasts(DefaultPolicy(), 1024)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		body   string
		p      Producer
		reason string // "" = accepted
	}{
		{`{"pkg_id": 3, "topic": "authors", "data": {"event": "created"}}`, ProducerServer, ""},
		{`{"pkg_id": 3, "topic": "authors", "data": {}}`, ProducerExternal, "only the server publishes"},
		{`{"pkg_id": 7, "topic": "dashboards.x", "data": {"n": 1}}`, ProducerExternal, ""},
		{`{"pkg_id": 7, "data": {"n": 1}}`, ProducerExternal, ""},
		{`{"pkg_id": 7, "topic": "secret", "data": {}}`, ProducerServer, "not allowed by the RBAC policy"},
		{`{"pkg_id": 7, "topic": "bad topic", "data": {}}`, ProducerServer, "/topic"},
		{`{"pkg_id": -1, "data": {}}`, ProducerServer, "/pkg_id"},
		{`{"pkg_id": 1, "data": [1]}`, ProducerServer, "/data"},
		{`{"pkg_id": 1, "data": {"s": "a\u0000b"}}`, ProducerServer, "invalid data"},
		{`{"pkg_id": 1, "data": `, ProducerServer, "not valid JSON"},
		{`{"pkg_id": 1, "data": {"s": "` + strings.Repeat("x", 1024) + `"}}`, ProducerServer, "larger than SWITCHBOARD_MAX_REQUEST_BYTES"},
	} {
		msg, reason := b.Check([]byte(c.body), c.p)
		switch {
		case c.reason == "" && (reason != "" || msg == nil):
			t.Errorf("%.60s: refused: %s", c.body, reason)
		case c.reason != "" && !strings.Contains(reason, c.reason):
			t.Errorf("%.60s: reason %q, want it to contain %q", c.body, reason, c.reason)
		}
	}
}
