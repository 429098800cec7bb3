package main

import (
	"encoding/json"
	"log/slog"
	"net/url"
	"strings"
	"testing"

	"github.com/google/uuid"

	"switchboard/config"
	"switchboard/store/storetest"
)

// Input the contract refuses (docs/protocol.md §1.2, §1.3; docs/protocol.md §8 "Input rules"),
// end to end over a real socket and the HTTP façade: every refusal is status 2 (HTTP 422) with
// the field's path, the connection stays open, nothing reaches the database, and nothing is
// logged as an error.

// inputRoles can call every pkg_id the tests below send.
var inputRoles = []string{"get-authors", "create-author", "update-author", "admin"}

// nestedJSON is a JSON object depth levels deep: {"a":[{"a":[…{}…]}]}.
func nestedJSON(depth int) string {
	var open, close strings.Builder
	for i := 1; i < depth; i++ {
		if i%2 == 1 {
			open.WriteString(`{"a":`)
		} else {
			open.WriteString(`[`)
		}
	}
	for i := depth - 1; i >= 1; i-- {
		if i%2 == 1 {
			close.WriteString(`}`)
		} else {
			close.WriteString(`]`)
		}
	}
	return open.String() + `{}` + close.String()
}

// expectInvalidHTTP fails unless the answer is 422 {"detail":"Invalid data","errors":[…]}
// with an error at path whose message contains msg.
func expectInvalidHTTP(t *testing.T, status int, body []byte, path, msg string) {
	t.Helper()
	var b struct {
		Detail string           `json:"detail"`
		Errors []wireFieldError `json:"errors"`
	}
	if err := json.Unmarshal(body, &b); err != nil || status != 422 || b.Detail != "Invalid data" {
		t.Fatalf("want 422 Invalid data, got %d %s", status, body)
	}
	for _, e := range b.Errors {
		if e.Path == path && strings.Contains(e.Message, msg) {
			return
		}
	}
	t.Fatalf("no error at %s saying %q: %s", path, msg, body)
}

// expectFieldError is expectFieldErrors for one path whose message contains msg.
func expectFieldError(t *testing.T, e envelope, path, msg string) {
	t.Helper()
	for _, fe := range expectFieldErrors(t, e, path) {
		if fe.Path == path && strings.Contains(fe.Message, msg) {
			return
		}
	}
	t.Fatalf("no error at %s saying %q: %s", path, msg, e.Data)
}

// A NUL in any string a handler takes is 2 at its path, over WebSocket and HTTP, on both
// databases. PostgreSQL refused it in text and the client got 1/"Database error occurred"
// (and the server an ERROR line) before.
func TestInputNULRefused(t *testing.T) {
	storetest.ForEachBackend(t, func(t *testing.T, dbURL string) {
		var logs logBuffer
		s := startServerLogged(t, func(c *config.Config) {
			c.DatabaseURL = dbURL
			// The audit log is polled below until the batch (flushed every second) is in:
			// room for the polls beside the requests under test.
			c.RateLimitPerMinute, c.WSMessageRateLimit = 10_000, 10_000
		}, slog.New(slog.NewTextHandler(&logs, nil)))
		token := s.token(t, "nul-user", inputRoles...)
		c := s.connect(t, token)
		const nul = "a\x00b"
		for _, tc := range []struct {
			pkg  int
			data map[string]any
			path string
		}{
			{3, map[string]any{"name": nul}, "/name"},
			{3, map[string]any{"name": "\x00"}, "/name"},
			{4, map[string]any{"id": 1, "name": nul}, "/name"},
			{1, map[string]any{"filters": map[string]any{"name": nul}}, "/filters/name"},
			{2, map[string]any{"filters": map[string]any{"name": nul}}, "/filters/name"},
			{2, map[string]any{"cursor": nul}, "/cursor"},
			{10, map[string]any{"topic": nul}, "/topic"},
			{11, map[string]any{"topic": nul}, "/topic"},
			{12, map[string]any{"token": nul}, "/token"},
			{20, map[string]any{"filters": map[string]any{"user_id": nul}}, "/filters/user_id"},
			{20, map[string]any{"filters": map[string]any{"action_type": nul}}, "/filters/action_type"},
			{20, map[string]any{"filters": map[string]any{"since": nul}}, "/filters/since"},
			{1, map[string]any{"x": []any{"ok", nul}}, "/x/1"},
		} {
			expectFieldError(t, c.call(tc.pkg, tc.data), tc.path, "NUL")
		}

		q := url.QueryEscape(nul)
		for _, tc := range []struct{ method, path, body, errPath string }{
			{"POST", "/authors", `{"name":"a\u0000b"}`, "/name"},
			{"PUT", "/authors/1", `{"name":"\u0000"}`, "/name"},
			{"GET", "/authors?name=" + q, "", "/filters/name"},
			{"GET", "/authors/paginated?cursor=" + q, "", "/cursor"},
			{"GET", "/authors/paginated?name=" + q, "", "/filters/name"},
			{"GET", "/audit-logs?user_id=" + q, "", "/filters/user_id"},
			{"GET", "/audit-logs?action_type=" + q, "", "/filters/action_type"},
		} {
			resp, body := s.do(t, tc.method, tc.path, token, tc.body)
			expectInvalidHTTP(t, resp.StatusCode, body, tc.errPath, "NUL")
		}

		// Text that is not UTF-8 is refused too, rather than stored as U+FFFD.
		resp, body := s.do(t, "GET", "/authors?name=%FF", token, "")
		expectInvalidHTTP(t, resp.StatusCode, body, "/filters/name", "UTF-8")
		resp, body = s.do(t, "POST", "/authors", token, "{\"name\":\"\xff\"}")
		expectInvalidHTTP(t, resp.StatusCode, body, "/", "UTF-8")

		// The connection is still open and the database untouched.
		if got := decodeAuthors(t, c.call(1, nil)); len(got) != 0 {
			t.Fatalf("authors after refused writes: %+v", got)
		}
		// The refused requests are in the audit log, NULs and all (13 frames, 9 HTTP calls).
		eventually(t, e2eWait, "the refused requests in the audit log", func() bool {
			e := c.call(20, map[string]any{"filters": map[string]any{"user_id": "nul-user"}, "per_page": 100})
			if e.status() != 0 {
				t.Fatalf("GET_AUDIT_LOGS: %+v", e)
			}
			m, _ := decodeMeta(t, e)
			return m.Total >= 20
		})
		if strings.Contains(logs.String(), "level=ERROR") {
			t.Fatalf("refused input was logged as an error:\n%s", logs.String())
		}
	})
}

// Names made only of Unicode white space or invisible characters are refused like ASCII
// spaces, and so are control characters in a name; other names keep working.
func TestInputUnicodeSpaceNames(t *testing.T) {
	forEachBackend(t, nil, func(t *testing.T, s *testServer) {
		token := s.token(t, "space-user", inputRoles...)
		c := s.connect(t, token)
		for _, name := range []string{" ", "\u00a0", "\u3000", "\u200b", "\u2003\u2009\u202f", "\ufeff", "\u2060",
			"\u3164", "\u2800", "\u180e", " \u00a0\u3000\u200b "} {
			expectFieldError(t, c.call(3, map[string]any{"name": name}), "/name", "visible character")
			body, _ := json.Marshal(map[string]string{"name": name})
			resp, b := s.do(t, "POST", "/authors", token, string(body))
			expectInvalidHTTP(t, resp.StatusCode, b, "/name", "visible character")
		}
		for _, name := range []string{"a\tb", "line\nbreak", "\x1b[31mred"} {
			expectFieldError(t, c.call(3, map[string]any{"name": name}), "/name", "control characters")
		}
		a := mustCreate(t, c, "Zoë\u00a0Ünal", "李 小龍")
		expectFieldError(t, c.call(4, map[string]any{"id": a[0].ID, "name": "\u3000"}), "/name", "visible character")
		resp, b := s.do(t, "PUT", "/authors/"+jsonNumber(a[1].ID), token, `{"name":"\u200b\u200b"}`)
		expectInvalidHTTP(t, resp.StatusCode, b, "/name", "visible character")
		if got := decodeAuthors(t, c.call(1, nil)); len(got) != 2 || got[0] != a[0] || got[1] != a[1] {
			t.Fatalf("authors: %+v, want %+v", got, a)
		}
	})
}

func jsonNumber(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// A req_id that is not a UUID is echoed only when it is at most 64 printable ASCII
// characters; anything else is answered with the zero UUID, in JSON and in protobuf.
func TestInputReqIDEcho(t *testing.T) {
	s := startServer(t, nil)
	token := s.token(t, "reqid-user", inputRoles...)
	cases := []struct{ name, reqID, want string }{
		{"64 printable characters", strings.Repeat("~", 64), strings.Repeat("~", 64)},
		{"printable with spaces", "my request #1", "my request #1"},
		{"65 characters", strings.Repeat("a", 65), zeroReqID},
		{"60 KB", strings.Repeat("x", 60<<10), zeroReqID},
		{"ANSI escapes", "\x1b[2J\x1b[31mred", zeroReqID},
		{"newline", "a\nb", zeroReqID},
		{"NUL", "a\x00", zeroReqID},
		{"not ASCII", "réq", zeroReqID},
	}
	t.Run("json", func(t *testing.T) {
		c := s.dial(t, token) // raw: the req_ids under test are ones the Go client never makes
		for _, tc := range cases {
			frame, _ := json.Marshal(map[string]any{"pkg_id": 1, "req_id": tc.reqID})
			e := sendFrame(t, c, string(frame))
			if e.ReqID != tc.want {
				t.Fatalf("%s: answered with req_id %q", tc.name, e.ReqID)
			}
			expectFieldErrors(t, e, "/req_id")
		}
		if e := c.call(1, nil); e.status() != 0 {
			t.Fatalf("connection unusable after refusals: %+v", e)
		}
	})
	t.Run("protobuf", func(t *testing.T) {
		c := s.dialProtobuf(t, token)
		for _, tc := range cases {
			if tc.name == "60 KB" {
				tc.reqID = tc.reqID[:60<<10-64] // leave room for the envelope under the frame limit
			}
			c.send(pbFrame{PkgID: 1, ReqID: tc.reqID}.marshal())
			r := c.answer(tc.want)
			expectFieldErrors(t, r.envelope(), "/req_id")
		}
	})
}

// data nested deeper than 32 levels is 2 with a message that says so, on both codecs and over
// HTTP; 32 levels pass the decoder.
func TestInputDepthLimit(t *testing.T) {
	s := startServer(t, nil)
	token := s.token(t, "deep-user", inputRoles...)
	id := uuid.NewString()
	c := s.dial(t, token) // raw: the nesting is written into the frame's bytes
	for _, depth := range []int{33, 1000, 9000} {
		e := sendFrame(t, c, `{"pkg_id":1,"req_id":"`+id+`","data":`+nestedJSON(depth)+`}`)
		if e.ReqID != id {
			t.Fatalf("depth %d: req_id %q", depth, e.ReqID)
		}
		expectFieldError(t, e, "/data", "nested deeper than 32 levels")
	}
	// 32 levels (the data object itself is one) are decoded; GET_AUTHORS ignores the member.
	if e := c.call(1, map[string]any{"x": json.RawMessage(nestedJSON(31))}); e.status() != 0 {
		t.Fatalf("32 levels: %+v", e)
	}

	p := s.dialProtobuf(t, token)
	p.send(pbFrame{PkgID: 1, ReqID: id, Data: []byte(nestedJSON(33))}.marshal())
	expectFieldErrors(t, p.answer(id).envelope(), "/data")

	resp, b := s.do(t, "POST", "/authors", token, `{"name":"x","deep":`+nestedJSON(40)+`}`)
	expectInvalidHTTP(t, resp.StatusCode, b, "/", "nested deeper than 32 levels")
	if got := decodeAuthors(t, c.call(1, nil)); len(got) != 0 {
		t.Fatalf("authors: %+v", got)
	}
}

// A protobuf frame without pkg_id is a malformed envelope (2 at /pkg_id), as a JSON frame
// without one is; pkg_id 0 written on the wire is an unknown pkg_id (1).
func TestInputProtobufMissingPkgID(t *testing.T) {
	s := startServer(t, nil)
	p := s.dialProtobuf(t, s.token(t, "pb-pkg", inputRoles...))
	id := uuid.NewString()
	p.send(pbFrame{ReqID: id}.marshal())
	r := p.answer(id)
	expectFieldError(t, r.envelope(), "/pkg_id", "required")

	c := s.dial(t, s.token(t, "json-pkg", inputRoles...)) // raw: a frame without pkg_id
	expectFieldError(t, sendFrame(t, c, `{"req_id":"`+id+`"}`), "/pkg_id", "required")

	id = uuid.NewString()
	p.send(append([]byte{0x08, 0x00}, pbFrame{ReqID: id}.marshal()...))
	expectStatus(t, p.answer(id).envelope(), 1, "Unknown pkg_id 0")
}
