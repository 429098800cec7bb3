package main

// End-to-end tests of the HTTP façade (docs/protocol.md §2, §8), /health, /livez,
// /readyz and /metrics (§7), each against a whole node on 127.0.0.1. The author and audit
// routes run against SQLite and PostgreSQL.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"switchboard/config"
	"switchboard/store/faultproxy"
	"switchboard/store/storetest"
	"switchboard/transport/auth"
)

// fcAuthor is an author as the façade answers it.
type fcAuthor struct {
	ID   int64  `json:"id"`
	Name string `json:"name"`
}

// fcFieldError is one entry of a 422's "errors".
type fcFieldError struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

// fcAuthorRoles are the roles of pkg_ids 1–5.
var fcAuthorRoles = []string{"get-authors", "create-author", "update-author", "delete-author"}

func fcRandHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// fcWait bounds one HTTP call and every wait of these tests (a loaded machine, -race).
const fcWait = 20 * time.Second

// fcHTTP is the client of these tests: every call is bounded.
var fcHTTP = &http.Client{Timeout: fcWait}

// fcResp is one answered request.
type fcResp struct {
	method, path string
	status       int
	header       http.Header
	body         []byte
}

func (r fcResp) String() string {
	return fmt.Sprintf("%s %s → %d %s", r.method, r.path, r.status, bytes.TrimSpace(r.body))
}

// fcReq is one request of the tests.
type fcReq struct {
	method, path, token, body string
	// chunked sends the body with an unknown length (Transfer-Encoding: chunked).
	chunked bool
	header  http.Header
}

// fcClient sends requests to one server and checks, on every answer, the headers every
// response must carry (docs/protocol.md §2): X-Correlation-ID (echoed when sent, which it does on
// every other request; generated and unique otherwise) and the security headers. It counts the
// answers by method, route pattern and status for the metrics test.
type fcClient struct {
	t    testing.TB
	s    *testServer
	base string

	mu        sync.Mutex
	n         int
	generated map[string]bool
	counts    map[fcKey]int
}

type fcKey struct{ method, route, status string }

func newFCClient(t testing.TB, s *testServer) *fcClient {
	return &fcClient{t: t, s: s, base: s.base, generated: map[string]bool{}, counts: map[fcKey]int{}}
}

// fcUnsized hides a reader's length so the body goes out chunked.
type fcUnsized struct{ r io.Reader }

func (u *fcUnsized) Read(p []byte) (int, error) { return u.r.Read(p) }

func (c *fcClient) send(rq fcReq) fcResp {
	c.t.Helper()
	c.mu.Lock()
	c.n++
	n := c.n
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), fcWait)
	defer cancel()
	var body io.Reader
	if rq.body != "" {
		body = strings.NewReader(rq.body)
	}
	req, err := http.NewRequestWithContext(ctx, rq.method, c.base+rq.path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if rq.chunked {
		req.Body = io.NopCloser(&fcUnsized{strings.NewReader(rq.body)})
		req.ContentLength = -1
		req.GetBody = nil
	}
	for k, vs := range rq.header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if rq.token != "" {
		req.Header.Set("Authorization", "Bearer "+rq.token)
	}
	if rq.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	corr := ""
	if req.Header.Get("X-Correlation-ID") != "" {
		corr = req.Header.Get("X-Correlation-ID")
	} else if n%2 == 1 {
		corr = fmt.Sprintf("fc-corr-%d-%s", n, fcRandHex(4))
		req.Header.Set("X-Correlation-ID", corr)
	}
	resp, err := fcHTTP.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", rq.method, rq.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("%s %s: read body: %v", rq.method, rq.path, err)
	}
	r := fcResp{method: rq.method, path: rq.path, status: resp.StatusCode, header: resp.Header, body: b}
	c.checkHeaders(r, corr)
	c.mu.Lock()
	c.counts[fcKey{fcMethodLabel(rq.method), fcRouteOf(rq.method, rq.path, resp.StatusCode), strconv.Itoa(resp.StatusCode)}]++
	c.mu.Unlock()
	return r
}

func (c *fcClient) do(method, path, token, body string) fcResp {
	c.t.Helper()
	return c.send(fcReq{method: method, path: path, token: token, body: body})
}

// checkHeaders fails unless r carries the correlation id and the security headers.
func (c *fcClient) checkHeaders(r fcResp, sent string) {
	c.t.Helper()
	got := r.header.Get("X-Correlation-ID")
	switch {
	case sent != "" && got != sent:
		c.t.Errorf("%s: X-Correlation-ID %q, want the one sent (%q)", r, got, sent)
	case sent == "" && got == "":
		c.t.Errorf("%s: no X-Correlation-ID generated", r)
	case sent == "":
		c.mu.Lock()
		dup := c.generated[got]
		c.generated[got] = true
		c.mu.Unlock()
		if dup {
			c.t.Errorf("%s: generated X-Correlation-ID %q was given before", r, got)
		}
	}
	for name, want := range map[string]string{
		"X-Content-Type-Options":  "nosniff",
		"X-Frame-Options":         "DENY",
		"Referrer-Policy":         "",
		"Content-Security-Policy": "",
	} {
		v := r.header.Get(name)
		if v == "" || (want != "" && !strings.EqualFold(v, want)) {
			c.t.Errorf("%s: header %s = %q, want %q", r, name, v, cmpOr(want, "(any non-empty)"))
		}
	}
	if r.status != http.StatusNoContent && r.status != http.StatusSwitchingProtocols && !strings.HasPrefix(r.path, "/metrics") {
		if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			c.t.Errorf("%s: Content-Type %q, want application/json", r, ct)
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func fcMethodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodHead, http.MethodOptions:
		return m
	}
	return "other"
}

// fcRouteOf is the route pattern a request should be counted under in http_requests_total:
// the pattern it matched, "unmatched" for unknown routes and wrong methods.
func fcRouteOf(method, path string, status int) string {
	p, _, _ := strings.Cut(path, "?")
	segs := strings.Split(strings.Trim(p, "/"), "/")
	var pattern string
	switch {
	case p == "/authors" && (method == "GET" || method == "POST"):
		pattern = method + " /authors"
	case p == "/authors/paginated" && method == "GET":
		pattern = "GET /authors/paginated"
	case len(segs) == 2 && segs[0] == "authors" && segs[1] != "" && (method == "PUT" || method == "DELETE"):
		pattern = method + " /authors/{id}"
	case p == "/audit-logs" && method == "GET":
		pattern = "GET /audit-logs"
	case len(segs) == 2 && segs[0] == "audit-logs" && segs[1] != "" && method == "GET":
		pattern = "GET /audit-logs/{id}"
	case p == "/api/broadcast" && method == "POST":
		pattern = "POST /api/broadcast"
	case (p == "/health" || p == "/readyz" || p == "/livez" || p == "/metrics" || p == "/web") && method == "GET":
		pattern = "GET " + p
	default:
		pattern = "unmatched"
	}
	return pattern
}

// fcDecode unmarshals r's body into v, failing the test when it is not that JSON.
func fcDecode(t testing.TB, r fcResp, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("%s: body is not the JSON expected: %v", r, err)
	}
}

// fcExpectStatus fails unless r has status.
func fcExpectStatus(t testing.TB, r fcResp, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: want status %d", r, status)
	}
}

// fcExpectDetail fails unless r is status with body exactly {"detail": want} ("" = any
// non-empty detail); it returns the detail.
func fcExpectDetail(t testing.TB, r fcResp, status int, want string) string {
	t.Helper()
	fcExpectStatus(t, r, status)
	var m map[string]any
	fcDecode(t, r, &m)
	d, ok := m["detail"].(string)
	if !ok || len(m) != 1 || d == "" || (want != "" && d != want) {
		t.Fatalf("%s: want body {\"detail\": %q}", r, cmpOr(want, "<any>"))
	}
	return d
}

// fcExpectInvalid fails unless r is 422 {"detail": "Invalid data", "errors": [{"path",
// "message"}, ...]} with a non-empty list; each of paths must appear. It returns the errors.
func fcExpectInvalid(t testing.TB, r fcResp, paths ...string) []fcFieldError {
	t.Helper()
	fcExpectStatus(t, r, http.StatusUnprocessableEntity)
	var m map[string]json.RawMessage
	fcDecode(t, r, &m)
	var detail string
	if err := json.Unmarshal(m["detail"], &detail); err != nil || detail != "Invalid data" || len(m) != 2 {
		t.Fatalf("%s: want {\"detail\": \"Invalid data\", \"errors\": [...]}", r)
	}
	var raw []map[string]any
	if err := json.Unmarshal(m["errors"], &raw); err != nil || len(raw) == 0 {
		t.Fatalf("%s: errors is not a non-empty list", r)
	}
	out := make([]fcFieldError, 0, len(raw))
	for _, e := range raw {
		p, ok1 := e["path"].(string)
		msg, ok2 := e["message"].(string)
		if !ok1 || !ok2 || msg == "" || !strings.HasPrefix(p, "/") {
			t.Fatalf("%s: error %v is not {\"path\": \"/...\", \"message\": \"...\"}", r, e)
		}
		out = append(out, fcFieldError{Path: p, Message: msg})
	}
	for _, p := range paths {
		if !slices.ContainsFunc(out, func(fe fcFieldError) bool { return fe.Path == p }) {
			t.Fatalf("%s: no error at path %q", r, p)
		}
	}
	return out
}

// fcExpectRateHeaders fails unless r carries X-RateLimit-Limit = limit (any when limit < 0),
// X-RateLimit-Remaining = remaining (any when < 0) and X-RateLimit-Reset in 0..60.
func fcExpectRateHeaders(t testing.TB, r fcResp, limit, remaining int) {
	t.Helper()
	get := func(name string) int {
		v := r.header.Get(name)
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s: header %s = %q, want an integer", r, name, v)
		}
		return n
	}
	if l := get("X-RateLimit-Limit"); limit >= 0 && l != limit {
		t.Fatalf("%s: X-RateLimit-Limit %d, want %d", r, l, limit)
	}
	if rem := get("X-RateLimit-Remaining"); (remaining >= 0 && rem != remaining) || rem < 0 {
		t.Fatalf("%s: X-RateLimit-Remaining %d, want %d", r, rem, remaining)
	}
	if reset := get("X-RateLimit-Reset"); reset < 0 || reset > 60 {
		t.Fatalf("%s: X-RateLimit-Reset %d, want 0..60", r, reset)
	}
}

// fcAuthors decodes a list of authors (never null).
func fcAuthors(t testing.TB, r fcResp) []fcAuthor {
	t.Helper()
	fcExpectStatus(t, r, http.StatusOK)
	var out []fcAuthor
	fcDecode(t, r, &out)
	if out == nil {
		t.Fatalf("%s: want a JSON list", r)
	}
	if !slices.IsSortedFunc(out, func(a, b fcAuthor) int { return int(a.ID - b.ID) }) {
		t.Fatalf("%s: not ordered by id", r)
	}
	return out
}

// fcPage decodes {"items": [...], "meta": {...}}; meta comes back raw for exact comparison.
func fcPage(t testing.TB, r fcResp) ([]fcAuthor, map[string]any) {
	t.Helper()
	fcExpectStatus(t, r, http.StatusOK)
	var top map[string]json.RawMessage
	fcDecode(t, r, &top)
	if len(top) != 2 || top["items"] == nil || top["meta"] == nil {
		t.Fatalf("%s: want exactly {\"items\", \"meta\"}", r)
	}
	var items []fcAuthor
	var meta map[string]any
	if err := json.Unmarshal(top["items"], &items); err != nil || items == nil {
		t.Fatalf("%s: items is not a list", r)
	}
	if err := json.Unmarshal(top["meta"], &meta); err != nil || meta == nil {
		t.Fatalf("%s: meta is not an object", r)
	}
	return items, meta
}

func fcOffsetMeta(page, perPage, total, pages int, hasMore bool) map[string]any {
	return map[string]any{"page": float64(page), "per_page": float64(perPage), "total": float64(total),
		"pages": float64(pages), "next_cursor": nil, "has_more": hasMore}
}

func fcExpectMeta(t testing.TB, r fcResp, got, want map[string]any) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: meta\n got %v\nwant %v", r, got, want)
	}
}

// fcCreate creates an author through POST /authors and returns it.
func (c *fcClient) create(token, name string) fcAuthor {
	c.t.Helper()
	b, _ := json.Marshal(map[string]string{"name": name})
	r := c.do("POST", "/authors", token, string(b))
	fcExpectStatus(c.t, r, http.StatusOK)
	var m map[string]any
	fcDecode(c.t, r, &m)
	var a fcAuthor
	fcDecode(c.t, r, &a)
	if len(m) != 2 || a.ID <= 0 || a.Name != name {
		c.t.Fatalf("%s: want {\"id\": n, \"name\": %q}", r, name)
	}
	return a
}

func fcNameBody(name string) string {
	b, _ := json.Marshal(map[string]string{"name": name})
	return string(b)
}

// fcPadded is a JSON object body of exactly size bytes: {"name": name, "pad": "xxx…"}.
func fcPadded(t testing.TB, name string, size int) string {
	t.Helper()
	head := `{"name":` + strconv.Quote(name) + `,"pad":"`
	n := size - len(head) - 2
	if n < 0 {
		t.Fatalf("size %d too small", size)
	}
	b := head + strings.Repeat("x", n) + `"}`
	if len(b) != size {
		t.Fatalf("padded body is %d bytes, want %d", len(b), size)
	}
	return b
}

// fcStartBackend starts a node on the database url with a 2 KiB body limit and an HTTP rate
// limit high enough never to interfere.
func fcStartBackend(t *testing.T, url string) *testServer {
	t.Helper()
	return startServer(t, func(c *config.Config) {
		c.DatabaseURL = url
		c.RateLimitPerMinute = 1_000_000
		c.MaxRequestBytes = 2048
	})
}

// TestFacadeAuthorsRoutes covers GET/POST /authors, GET /authors/paginated, PUT and DELETE
// /authors/{id}: success shapes, filters, pagination meta, 401, 403, 404, 409, 413 and 422.
func TestFacadeAuthorsRoutes(t *testing.T) {
	storetest.ForEachBackend(t, func(t *testing.T, dbURL string) {
		s := fcStartBackend(t, dbURL)
		all := s.token(t, "fc-writer", fcAuthorRoles...)
		reader := s.token(t, "fc-reader", "get-authors")

		t.Run("GET /authors", func(t *testing.T) {
			c := newFCClient(t, s)
			alpha := c.create(all, "FcList Alpha")
			alphabet := c.create(all, "fclist ALPHABET soup")
			pct := c.create(all, "FcList 100% Zeta")
			under := c.create(all, "FcList under_score")
			mine := []fcAuthor{alpha, alphabet, pct, under}

			list := fcAuthors(t, c.do("GET", "/authors", reader, ""))
			for _, a := range mine {
				if !slices.Contains(list, a) {
					t.Fatalf("GET /authors misses %+v: %v", a, list)
				}
			}
			// Case-insensitive substring.
			got := fcAuthors(t, c.do("GET", "/authors?name="+url.QueryEscape("aLpHa"), reader, ""))
			if !slices.Equal(got, []fcAuthor{alpha, alphabet}) {
				t.Fatalf("name=aLpHa: %v, want %v", got, []fcAuthor{alpha, alphabet})
			}
			// % and _ are literal.
			if got := fcAuthors(t, c.do("GET", "/authors?name="+url.QueryEscape("%"), reader, "")); !slices.Equal(got, []fcAuthor{pct}) {
				t.Fatalf("name=%%: %v, want only %v", got, pct)
			}
			if got := fcAuthors(t, c.do("GET", "/authors?name=_", reader, "")); !slices.Equal(got, []fcAuthor{under}) {
				t.Fatalf("name=_: %v, want only %v", got, under)
			}
			if got := fcAuthors(t, c.do("GET", fmt.Sprintf("/authors?id=%d", pct.ID), reader, "")); !slices.Equal(got, []fcAuthor{pct}) {
				t.Fatalf("id=%d: %v", pct.ID, got)
			}
			if got := fcAuthors(t, c.do("GET", fmt.Sprintf("/authors?id=%d&name=alpha", alphabet.ID), reader, "")); !slices.Equal(got, []fcAuthor{alphabet}) {
				t.Fatalf("id and name: %v", got)
			}
			if got := fcAuthors(t, c.do("GET", fmt.Sprintf("/authors?id=%d&name=zeta", alphabet.ID), reader, "")); len(got) != 0 {
				t.Fatalf("id and a name it does not have: %v, want []", got)
			}
			if got := fcAuthors(t, c.do("GET", "/authors?id=999999999", reader, "")); len(got) != 0 {
				t.Fatalf("missing id: %v, want []", got)
			}
			// A bad id is 422 with errors.
			for _, q := range []string{"id=abc", "id=1.5", "id=0", "id=-3", "id=99999999999999999999"} {
				fcExpectInvalid(t, c.do("GET", "/authors?"+q, reader, ""))
			}
			fcExpectInvalid(t, c.do("GET", "/authors?name="+strings.Repeat("n", 256), reader, ""), "/filters/name")
		})

		t.Run("GET /authors/paginated", func(t *testing.T) {
			c := newFCClient(t, s)
			var mine []fcAuthor
			for i := range 5 {
				mine = append(mine, c.create(all, fmt.Sprintf("FcPage %d", i)))
			}
			q := "name=fcpage"
			// Offset mode: meta exact.
			items, meta := fcPage(t, c.do("GET", "/authors/paginated?"+q+"&page=1&per_page=2", reader, ""))
			fcExpectMeta(t, fcResp{path: "page 1"}, meta, fcOffsetMeta(1, 2, 5, 3, true))
			if !slices.Equal(items, mine[:2]) {
				t.Fatalf("page 1: %v, want %v", items, mine[:2])
			}
			items, meta = fcPage(t, c.do("GET", "/authors/paginated?"+q+"&page=3&per_page=2", reader, ""))
			fcExpectMeta(t, fcResp{path: "page 3"}, meta, fcOffsetMeta(3, 2, 5, 3, false))
			if !slices.Equal(items, mine[4:]) {
				t.Fatalf("page 3: %v, want %v", items, mine[4:])
			}
			items, meta = fcPage(t, c.do("GET", "/authors/paginated?"+q+"&page=4&per_page=2", reader, ""))
			fcExpectMeta(t, fcResp{path: "page 4"}, meta, fcOffsetMeta(4, 2, 5, 3, false))
			if len(items) != 0 {
				t.Fatalf("page past the end: %v", items)
			}
			// Defaults: page 1, per_page 20.
			items, meta = fcPage(t, c.do("GET", "/authors/paginated?"+q, reader, ""))
			fcExpectMeta(t, fcResp{path: "defaults"}, meta, fcOffsetMeta(1, 20, 5, 1, false))
			if !slices.Equal(items, mine) {
				t.Fatalf("defaults: %v", items)
			}
			items, meta = fcPage(t, c.do("GET", fmt.Sprintf("/authors/paginated?%s&id=%d", q, mine[3].ID), reader, ""))
			fcExpectMeta(t, fcResp{path: "id filter"}, meta, fcOffsetMeta(1, 20, 1, 1, false))
			if !slices.Equal(items, mine[3:4]) {
				t.Fatalf("id filter: %v", items)
			}
			items, meta = fcPage(t, c.do("GET", "/authors/paginated?name=no-such-author-fc", reader, ""))
			fcExpectMeta(t, fcResp{path: "nothing"}, meta, fcOffsetMeta(1, 20, 0, 0, false))
			if len(items) != 0 {
				t.Fatalf("no match: %v", items)
			}

			// Cursor mode when cursor is present, even empty (and even without "=").
			for _, start := range []string{"cursor=", "cursor"} {
				var seen []fcAuthor
				path := "/authors/paginated?" + q + "&per_page=2&page=7&" + start
				for round := 0; ; round++ {
					if round > 5 {
						t.Fatalf("%s: cursor pages never end", start)
					}
					r := c.do("GET", path, reader, "")
					items, meta := fcPage(t, r)
					seen = append(seen, items...)
					next, _ := meta["next_cursor"].(string)
					more := len(seen) < len(mine)
					want := map[string]any{"page": float64(1), "per_page": float64(2), "total": float64(0), "pages": float64(0),
						"next_cursor": nil, "has_more": more}
					if more {
						if next == "" {
							t.Fatalf("%s: has more but no next_cursor: %v", r, meta)
						}
						want["next_cursor"] = next
					}
					fcExpectMeta(t, r, meta, want)
					if !more {
						break
					}
					path = "/authors/paginated?" + q + "&per_page=2&cursor=" + url.QueryEscape(next)
				}
				if !slices.Equal(seen, mine) {
					t.Fatalf("%s: cursor pages %v, want %v", start, seen, mine)
				}
			}
			// Invalid cursors and parameters are 422.
			fcExpectInvalid(t, c.do("GET", "/authors/paginated?cursor=not-a-cursor", reader, ""), "/cursor")
			fcExpectInvalid(t, c.do("GET", "/authors/paginated?cursor="+url.QueryEscape("djE6LTE"), reader, ""), "/cursor") // "v1:-1"
			fcExpectInvalid(t, c.do("GET", "/authors/paginated?cursor="+strings.Repeat("A", 600), reader, ""))
			for _, bad := range []string{"page=0", "page=abc", "per_page=0", "per_page=1001", "per_page=x", "id=abc", "id=0"} {
				fcExpectInvalid(t, c.do("GET", "/authors/paginated?"+bad, reader, ""))
			}
		})

		t.Run("POST /authors", func(t *testing.T) {
			c := newFCClient(t, s)
			a := c.create(all, "FcCreate Émile 東京")
			got := fcAuthors(t, c.do("GET", fmt.Sprintf("/authors?id=%d", a.ID), reader, ""))
			if !slices.Equal(got, []fcAuthor{a}) {
				t.Fatalf("created author reads back as %v", got)
			}
			fcExpectDetail(t, c.do("POST", "/authors", all, fcNameBody(a.Name)), http.StatusConflict,
				"Author with name 'FcCreate Émile 東京' already exists")
			// Names are unique as stored: another case is another name.
			c.create(all, "fccreate émile 東京")
			// Unknown keys are ignored.
			fcExpectStatus(t, c.do("POST", "/authors", all, `{"name":"FcCreate extra","extra":true}`), http.StatusOK)
			for _, tc := range []struct{ body, path string }{
				{`{}`, ""},
				{`{"name":""}`, "/name"},
				{`{"name":"   "}`, "/name"},
				{`{"name":42}`, "/name"},
				{fcNameBody(strings.Repeat("n", 256)), "/name"},
				{`{"name":"FcCreate broken"`, ""},
				{`{"name":`, ""},
				{`not json`, ""},
				{`[{"name":"FcCreate array"}]`, ""},
				{`"FcCreate string"`, ""},
				{`null`, ""},
				{``, ""},
			} {
				r := c.do("POST", "/authors", all, tc.body)
				if tc.path != "" {
					fcExpectInvalid(t, r, tc.path)
				} else {
					fcExpectInvalid(t, r)
				}
			}
			// 255 characters (not bytes) is the longest name.
			c.create(all, strings.Repeat("é", 255))
		})

		t.Run("PUT /authors/{id}", func(t *testing.T) {
			c := newFCClient(t, s)
			a := c.create(all, "FcUpdate before")
			other := c.create(all, "FcUpdate other")
			r := c.do("PUT", fmt.Sprintf("/authors/%d", a.ID), all, fcNameBody("FcUpdate after"))
			fcExpectStatus(t, r, http.StatusOK)
			var m map[string]any
			fcDecode(t, r, &m)
			if len(m) != 2 || m["id"] != float64(a.ID) || m["name"] != "FcUpdate after" {
				t.Fatalf("%s: want {\"id\": %d, \"name\": \"FcUpdate after\"}", r, a.ID)
			}
			if got := fcAuthors(t, c.do("GET", fmt.Sprintf("/authors?id=%d", a.ID), reader, "")); got[0].Name != "FcUpdate after" {
				t.Fatalf("update not stored: %v", got)
			}
			// The path's id wins over one in the body.
			r = c.do("PUT", fmt.Sprintf("/authors/%d", a.ID), all, fmt.Sprintf(`{"id":%d,"name":"FcUpdate path wins"}`, other.ID))
			fcExpectStatus(t, r, http.StatusOK)
			if got := fcAuthors(t, c.do("GET", fmt.Sprintf("/authors?id=%d", other.ID), reader, "")); got[0].Name != "FcUpdate other" {
				t.Fatalf("PUT /authors/%d changed author %d: %v", a.ID, other.ID, got)
			}
			fcExpectDetail(t, c.do("PUT", "/authors/987654321", all, fcNameBody("FcUpdate ghost")), http.StatusNotFound,
				"Author with ID 987654321 not found")
			fcExpectDetail(t, c.do("PUT", fmt.Sprintf("/authors/%d", a.ID), all, fcNameBody("FcUpdate other")), http.StatusConflict,
				"Author with name 'FcUpdate other' already exists")
			for _, id := range []string{"abc", "0", "-1", "1.5", "99999999999999999999", "paginated"} {
				fcExpectInvalid(t, c.do("PUT", "/authors/"+id, all, fcNameBody("FcUpdate bad id")), "/id")
			}
			for _, body := range []string{`{}`, `{"name":""}`, `{"name":null}`, `{"name":"x"`, `[]`, ``, `null`} {
				fcExpectInvalid(t, c.do("PUT", fmt.Sprintf("/authors/%d", a.ID), all, body))
			}
		})

		t.Run("DELETE /authors/{id}", func(t *testing.T) {
			c := newFCClient(t, s)
			a := c.create(all, "FcDelete me")
			r := c.do("DELETE", fmt.Sprintf("/authors/%d", a.ID), all, "")
			fcExpectStatus(t, r, http.StatusNoContent)
			if len(r.body) != 0 {
				t.Fatalf("%s: 204 with a body", r)
			}
			if got := fcAuthors(t, c.do("GET", fmt.Sprintf("/authors?id=%d", a.ID), reader, "")); len(got) != 0 {
				t.Fatalf("deleted author still listed: %v", got)
			}
			fcExpectDetail(t, c.do("DELETE", fmt.Sprintf("/authors/%d", a.ID), all, ""), http.StatusNotFound,
				fmt.Sprintf("Author with ID %d not found", a.ID))
			for _, id := range []string{"abc", "0", "-5", "99999999999999999999"} {
				fcExpectInvalid(t, c.do("DELETE", "/authors/"+id, all, ""), "/id")
			}
		})

		t.Run("401", func(t *testing.T) {
			c := newFCClient(t, s)
			foreign, err := auth.OpenDevIssuer(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			foreignTok, _, err := foreign.Mint(auth.MintParams{Subject: "fc-writer", Username: "fc-writer",
				ClientID: s.cfg.OIDCClientID, Roles: fcAuthorRoles, TTL: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			sig := strings.LastIndexByte(all, '.')
			tampered := all[:sig+1] + strings.Repeat("A", len(all)-sig-1)
			for _, route := range []struct{ method, path, body string }{
				{"GET", "/authors", ""},
				{"GET", "/authors/paginated?cursor=", ""},
				{"POST", "/authors", fcNameBody("FcUnauth")},
				{"PUT", "/authors/1", fcNameBody("FcUnauth")},
				{"DELETE", "/authors/1", ""},
			} {
				r := c.do(route.method, route.path, "", route.body)
				fcExpectDetail(t, r, http.StatusUnauthorized, "")
				if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("%s: WWW-Authenticate %q", r, r.header.Get("WWW-Authenticate"))
				}
				fcExpectRateHeaders(t, r, 1_000_000, -1)
				for _, bad := range []string{"not-a-jwt", tampered, foreignTok} {
					r := c.do(route.method, route.path, bad, route.body)
					fcExpectDetail(t, r, http.StatusUnauthorized, "")
					fcExpectRateHeaders(t, r, 1_000_000, -1)
				}
				// Not a bearer token.
				r = c.send(fcReq{method: route.method, path: route.path, body: route.body,
					header: http.Header{"Authorization": {"Basic Zm9vOmJhcg=="}}})
				fcExpectDetail(t, r, http.StatusUnauthorized, "")
			}
			// Nothing was written by the refused calls.
			if got := fcAuthors(t, c.do("GET", "/authors?name=FcUnauth", reader, "")); len(got) != 0 {
				t.Fatalf("an unauthenticated call wrote: %v", got)
			}
		})

		t.Run("403", func(t *testing.T) {
			c := newFCClient(t, s)
			none := s.token(t, "fc-nobody")
			a := c.create(all, "FcForbidden target")
			for _, tc := range []struct {
				method, path, body, token, missing string
			}{
				{"GET", "/authors", "", none, "get-authors"},
				{"GET", "/authors/paginated?cursor=", "", none, "get-authors"},
				{"POST", "/authors", fcNameBody("FcForbidden new"), reader, "create-author"},
				{"PUT", fmt.Sprintf("/authors/%d", a.ID), fcNameBody("FcForbidden renamed"), reader, "update-author"},
				{"DELETE", fmt.Sprintf("/authors/%d", a.ID), "", reader, "delete-author"},
				{"GET", "/audit-logs", "", all, "admin"},
				{"GET", "/audit-logs/1", "", all, "admin"},
			} {
				r := c.do(tc.method, tc.path, tc.token, tc.body)
				fcExpectDetail(t, r, http.StatusForbidden, "Missing required roles: "+tc.missing)
				fcExpectRateHeaders(t, r, 1_000_000, -1)
			}
			if got := fcAuthors(t, c.do("GET", fmt.Sprintf("/authors?id=%d", a.ID), reader, "")); !slices.Equal(got, []fcAuthor{a}) {
				t.Fatalf("a forbidden call changed the author: %v", got)
			}
			if got := fcAuthors(t, c.do("GET", "/authors?name=FcForbidden+new", reader, "")); len(got) != 0 {
				t.Fatalf("a forbidden create wrote: %v", got)
			}
		})

		t.Run("403 before validation", func(t *testing.T) {
			// RBAC runs before the schema (docs/protocol.md §1.3; auth → rate limit → RBAC →
			// handler): a caller without the role gets 403 (and an audit row "permission_denied")
			// whatever the query or path holds, as {"id": "abc"} over WebSocket gets status 3.
			c := newFCClient(t, s)
			none := s.token(t, "fc-nobody")
			for _, tc := range []struct{ method, path, body, token, missing string }{
				{"GET", "/authors?id=abc", "", none, "get-authors"},
				{"GET", "/authors/paginated?per_page=x", "", none, "get-authors"},
				{"POST", "/authors", `{"name":""}`, reader, "create-author"},
				{"PUT", "/authors/abc", fcNameBody("x"), reader, "update-author"},
				{"DELETE", "/authors/abc", "", reader, "delete-author"},
				{"GET", "/audit-logs?outcome=maybe", "", reader, "admin"},
				{"GET", "/audit-logs?page=x", "", reader, "admin"},
				{"GET", "/audit-logs/abc", "", reader, "admin"},
			} {
				r := c.do(tc.method, tc.path, tc.token, tc.body)
				if r.status != http.StatusForbidden {
					t.Errorf("%s: want 403 Missing required roles: %s (RBAC before validation)", r, tc.missing)
				}
			}
		})

		t.Run("422 paths point into data", func(t *testing.T) {
			// docs/protocol.md §8: error paths are JSON pointers into the request's data; the
			// query's id and name are data.filters.id and data.filters.name, whichever check fails.
			c := newFCClient(t, s)
			for _, q := range []string{"/authors?id=abc", "/authors?id=0", "/authors/paginated?id=abc", "/authors/paginated?id=0"} {
				r := c.do("GET", q, reader, "")
				errs := fcExpectInvalid(t, r)
				if !slices.ContainsFunc(errs, func(e fcFieldError) bool { return e.Path == "/filters/id" }) {
					t.Errorf("%s: want the error at /filters/id", r)
				}
			}
		})

		t.Run("413", func(t *testing.T) {
			c := newFCClient(t, s)
			max := int(s.cfg.MaxRequestBytes)
			target := c.create(all, "FcLimit target")
			put := fmt.Sprintf("/authors/%d", target.ID)
			for _, chunked := range []bool{false, true} {
				name := fmt.Sprintf("FcLimit at limit chunked=%v", chunked)
				// Exactly at the limit is accepted.
				r := c.send(fcReq{method: "POST", path: "/authors", token: all, body: fcPadded(t, name, max), chunked: chunked})
				fcExpectStatus(t, r, http.StatusOK)
				r = c.send(fcReq{method: "PUT", path: put, token: all, body: fcPadded(t, name+" renamed", max), chunked: chunked})
				fcExpectStatus(t, r, http.StatusOK)
				// One byte over, and far over, is 413.
				for _, size := range []int{max + 1, 4 * max} {
					over := fmt.Sprintf("FcLimit over %d chunked=%v", size, chunked)
					r := c.send(fcReq{method: "POST", path: "/authors", token: all, body: fcPadded(t, over, size), chunked: chunked})
					fcExpectDetail(t, r, http.StatusRequestEntityTooLarge, "")
					r = c.send(fcReq{method: "PUT", path: put, token: all, body: fcPadded(t, over, size), chunked: chunked})
					fcExpectDetail(t, r, http.StatusRequestEntityTooLarge, "")
					if got := fcAuthors(t, c.do("GET", "/authors?name="+url.QueryEscape(over), reader, "")); len(got) != 0 {
						t.Fatalf("a body over the limit was written: %v", got)
					}
				}
			}
			// The declared length alone is enough, whoever asks and on every route.
			r := c.send(fcReq{method: "POST", path: "/authors", body: fcPadded(t, "FcLimit anon", max+1)})
			fcExpectDetail(t, r, http.StatusRequestEntityTooLarge, "")
			for _, m := range []string{"GET", "DELETE"} {
				r := c.send(fcReq{method: m, path: put, token: all, body: fcPadded(t, "FcLimit", max+1)})
				if m == "GET" {
					r = c.send(fcReq{method: m, path: "/authors", token: all, body: fcPadded(t, "FcLimit", max+1)})
				}
				fcExpectDetail(t, r, http.StatusRequestEntityTooLarge, "")
			}
			if got := fcAuthors(t, c.do("GET", fmt.Sprintf("/authors?id=%d", target.ID), reader, "")); len(got) != 1 {
				t.Fatalf("DELETE with a body over the limit deleted the author")
			}
		})
	})
}

// fcAuditRow is one row of GET /audit-logs.
type fcAuditRow struct {
	ID             int64           `json:"id"`
	Timestamp      string          `json:"timestamp"`
	UserID         string          `json:"user_id"`
	Username       string          `json:"username"`
	UserRoles      []string        `json:"user_roles"`
	ActionType     string          `json:"action_type"`
	Resource       string          `json:"resource"`
	Outcome        string          `json:"outcome"`
	IPAddress      *string         `json:"ip_address"`
	UserAgent      *string         `json:"user_agent"`
	RequestID      *string         `json:"request_id"`
	RequestData    json.RawMessage `json:"request_data"`
	ResponseStatus int             `json:"response_status"`
	ErrorMessage   *string         `json:"error_message"`
	DurationMS     *float64        `json:"duration_ms"`
}

var fcAuditKeys = []string{"id", "timestamp", "user_id", "username", "user_roles", "action_type", "resource", "outcome",
	"ip_address", "user_agent", "request_id", "request_data", "response_status", "error_message", "duration_ms"}

// fcAuditPage reads GET /audit-logs?query and returns its rows and meta.
func fcAuditPage(t testing.TB, c *fcClient, admin, query string) ([]fcAuditRow, map[string]any) {
	t.Helper()
	r := c.do("GET", "/audit-logs?"+query, admin, "")
	fcExpectStatus(t, r, http.StatusOK)
	var top map[string]json.RawMessage
	fcDecode(t, r, &top)
	var rows []fcAuditRow
	var raw []map[string]any
	var meta map[string]any
	if len(top) != 2 || json.Unmarshal(top["items"], &rows) != nil || json.Unmarshal(top["items"], &raw) != nil ||
		rows == nil || json.Unmarshal(top["meta"], &meta) != nil || meta == nil {
		t.Fatalf("%s: want {\"items\": [...], \"meta\": {...}}", r)
	}
	for _, m := range raw {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		want := slices.Clone(fcAuditKeys)
		sort.Strings(want)
		if !slices.Equal(keys, want) {
			t.Fatalf("%s: audit row keys %v, want %v", r, keys, want)
		}
	}
	if !slices.IsSortedFunc(rows, func(a, b fcAuditRow) int { return int(b.ID - a.ID) }) {
		t.Fatalf("%s: rows not newest first", r)
	}
	return rows, meta
}

// TestFacadeAuditLogs covers GET /audit-logs (admin; filters; meta; 401/403/422) and GET
// /audit-logs/{id} (200, 404, 422), and that the façade's calls are recorded with the
// correlation id, the HTTP status and redacted data.
func TestFacadeAuditLogs(t *testing.T) {
	storetest.ForEachBackend(t, func(t *testing.T, dbURL string) {
		s := fcStartBackend(t, dbURL)
		c := newFCClient(t, s)
		admin := s.token(t, "fc-admin", "admin")
		alice := s.token(t, "fc-alice", "get-authors", "create-author")
		bob := s.token(t, "fc-bob", "get-authors")
		start := time.Now().Add(-2 * time.Second).UTC().Truncate(time.Second)

		r := c.send(fcReq{method: "POST", path: "/authors", token: alice, body: `{"name":"FcAudit One","password":"hunter2"}`,
			header: http.Header{"X-Correlation-ID": {"fc-audit-create"}}})
		fcExpectStatus(t, r, http.StatusOK)
		fcExpectStatus(t, c.do("POST", "/authors", alice, fcNameBody("FcAudit One")), http.StatusConflict)
		fcExpectStatus(t, c.do("POST", "/authors", bob, fcNameBody("FcAudit Two")), http.StatusForbidden)
		fcExpectStatus(t, c.do("GET", "/authors", bob, ""), http.StatusOK)

		var aliceRows, bobRows []fcAuditRow
		eventually(t, fcWait, "the audit rows of fc-alice and fc-bob", func() bool {
			aliceRows, _ = fcAuditPage(t, c, admin, "user_id=fc-alice")
			bobRows, _ = fcAuditPage(t, c, admin, "user_id=fc-bob")
			return len(aliceRows) >= 2 && len(bobRows) >= 2
		})
		if len(aliceRows) != 2 || len(bobRows) != 2 {
			t.Fatalf("want 2 rows each, got alice %+v bob %+v", aliceRows, bobRows)
		}
		created, conflict := aliceRows[1], aliceRows[0]
		if created.ActionType != "CREATE_AUTHOR" || created.Outcome != "success" || created.ResponseStatus != 200 ||
			created.Resource != "authors" || created.ErrorMessage != nil || created.Username != "fc-alice" ||
			created.RequestID == nil || *created.RequestID != "fc-audit-create" || !slices.Contains(created.UserRoles, "create-author") {
			t.Errorf("create row: %+v", created)
		}
		if strings.Contains(string(created.RequestData), "hunter2") || !strings.Contains(string(created.RequestData), "[REDACTED]") {
			t.Errorf("password not redacted: %s", created.RequestData)
		}
		if conflict.Outcome != "error" || conflict.ResponseStatus != 409 || conflict.ErrorMessage == nil ||
			*conflict.ErrorMessage != "Author with name 'FcAudit One' already exists" {
			t.Errorf("conflict row: %+v", conflict)
		}
		denied, listed := bobRows[1], bobRows[0]
		if denied.ActionType != "CREATE_AUTHOR" || denied.Outcome != "permission_denied" || denied.ResponseStatus != 403 {
			t.Errorf("denied row: %+v", denied)
		}
		if listed.ActionType != "GET_AUTHORS" || listed.Outcome != "success" || listed.ResponseStatus != 200 {
			t.Errorf("list row: %+v", listed)
		}

		// Filters.
		rows, _ := fcAuditPage(t, c, admin, "user_id=fc-bob&outcome=permission_denied")
		if len(rows) != 1 || rows[0].ID != denied.ID {
			t.Errorf("user_id+outcome: %+v", rows)
		}
		rows, _ = fcAuditPage(t, c, admin, "action_type=CREATE_AUTHOR")
		if len(rows) != 3 {
			t.Errorf("action_type=CREATE_AUTHOR: %d rows, want 3: %+v", len(rows), rows)
		}
		rows, _ = fcAuditPage(t, c, admin, "outcome=error&action_type=CREATE_AUTHOR")
		if len(rows) != 1 || rows[0].ID != conflict.ID {
			t.Errorf("outcome=error: %+v", rows)
		}
		rows, _ = fcAuditPage(t, c, admin, "user_id=fc-alice&since="+url.QueryEscape(start.Format(time.RFC3339)))
		if len(rows) != 2 {
			t.Errorf("since the start: %+v", rows)
		}
		rows, _ = fcAuditPage(t, c, admin, "user_id=fc-alice&since="+url.QueryEscape(time.Now().Add(time.Hour).UTC().Format(time.RFC3339)))
		if len(rows) != 0 {
			t.Errorf("since the future: %+v", rows)
		}
		rows, _ = fcAuditPage(t, c, admin, "user_id=fc-alice&until="+url.QueryEscape(start.Format(time.RFC3339)))
		if len(rows) != 0 {
			t.Errorf("until the start: %+v", rows)
		}
		rows, _ = fcAuditPage(t, c, admin, "user_id=fc-alice&until="+url.QueryEscape(time.Now().Add(time.Hour).Format(time.RFC3339)))
		if len(rows) != 2 {
			t.Errorf("until in an hour (with an offset): %+v", rows)
		}
		// Pagination meta.
		rows, meta := fcAuditPage(t, c, admin, "action_type=CREATE_AUTHOR&per_page=2&page=2")
		fcExpectMeta(t, fcResp{path: "audit page 2"}, meta, fcOffsetMeta(2, 2, 3, 2, false))
		if len(rows) != 1 || rows[0].ID != created.ID {
			t.Errorf("page 2: %+v", rows)
		}

		// One row by id.
		r = c.do("GET", fmt.Sprintf("/audit-logs/%d", denied.ID), admin, "")
		fcExpectStatus(t, r, http.StatusOK)
		var one fcAuditRow
		fcDecode(t, r, &one)
		if one.ID != denied.ID || one.UserID != "fc-bob" || one.Outcome != "permission_denied" {
			t.Errorf("%s: want row %d", r, denied.ID)
		}
		fcExpectDetail(t, c.do("GET", "/audit-logs/987654321", admin, ""), http.StatusNotFound, "Audit log entry with ID 987654321 not found")
		for _, id := range []string{"abc", "0", "-1", "1e3"} {
			fcExpectInvalid(t, c.do("GET", "/audit-logs/"+id, admin, ""), "/id")
		}

		// 422.
		fcExpectInvalid(t, c.do("GET", "/audit-logs?outcome=maybe", admin, ""))
		fcExpectInvalid(t, c.do("GET", "/audit-logs?since=yesterday", admin, ""), "/filters/since")
		fcExpectInvalid(t, c.do("GET", "/audit-logs?until=2026-13-01T00:00:00Z", admin, ""), "/filters/until")
		fcExpectInvalid(t, c.do("GET", "/audit-logs?since=2026-03-02T00:00:00Z&until=2026-03-01T00:00:00Z", admin, ""), "/filters/until")
		for _, bad := range []string{"per_page=101", "per_page=0", "page=0", "page=x"} {
			fcExpectInvalid(t, c.do("GET", "/audit-logs?"+bad, admin, ""))
		}
		// 401 and 403.
		fcExpectDetail(t, c.do("GET", "/audit-logs", "", ""), http.StatusUnauthorized, "")
		fcExpectDetail(t, c.do("GET", "/audit-logs/1", "not-a-jwt", ""), http.StatusUnauthorized, "")
		fcExpectDetail(t, c.do("GET", "/audit-logs", bob, ""), http.StatusForbidden, "Missing required roles: admin")
		fcExpectDetail(t, c.do("GET", fmt.Sprintf("/audit-logs/%d", denied.ID), alice, ""), http.StatusForbidden, "Missing required roles: admin")
	})
}

// TestFacadeBroadcast covers POST /api/broadcast: 202 and delivery, 401, 403, 422 and 413.
func TestFacadeBroadcast(t *testing.T) {
	s := startServer(t, func(c *config.Config) {
		c.MaxRequestBytes = 2048
		c.RateLimitPerMinute = 1_000_000
	})
	c := newFCClient(t, s)
	listener := s.connect(t, s.token(t, "fc-listener"))
	eventually(t, fcWait, "the listener registered", func() bool { return s.app.hub.Active() == 1 })
	producer := s.token(t, "fc-producer", "broadcast")
	reader := s.token(t, "fc-reader", "get-authors")

	r := c.do("POST", "/api/broadcast", producer, `{"pkg_id":42,"data":{"hello":"fc"}}`)
	fcExpectStatus(t, r, http.StatusAccepted)
	fcExpectRateHeaders(t, r, 1_000_000, -1)
	var m map[string]any
	fcDecode(t, r, &m)
	if len(m) != 1 || m["delivered_to_nodes"] != float64(1) {
		t.Fatalf("%s: want {\"delivered_to_nodes\": 1}", r)
	}
	e := listener.next(fcWait)
	if e.PkgID != 42 || e.Topic != "" || string(e.Data) != `{"hello":"fc"}` {
		t.Fatalf("broadcast frame %+v data %s", e, e.Data)
	}

	fcExpectDetail(t, c.do("POST", "/api/broadcast", "", `{"pkg_id":1}`), http.StatusUnauthorized, "Missing token")
	fcExpectDetail(t, c.do("POST", "/api/broadcast", "not-a-jwt", `{"pkg_id":1}`), http.StatusUnauthorized, "")
	fcExpectDetail(t, c.do("POST", "/api/broadcast", reader, `{"pkg_id":1}`), http.StatusForbidden, "Missing required roles: broadcast")
	// Topics: only the server publishes on "authors"; unknown topics are denied.
	fcExpectDetail(t, c.do("POST", "/api/broadcast", producer, `{"pkg_id":1,"topic":"authors"}`), http.StatusForbidden, "")
	fcExpectDetail(t, c.do("POST", "/api/broadcast", producer, `{"pkg_id":1,"topic":"fc-unlisted"}`), http.StatusForbidden, "")
	fcExpectStatus(t, c.do("POST", "/api/broadcast", producer, `{"pkg_id":1,"topic":"dashboards.fc"}`), http.StatusAccepted)
	for _, body := range []string{`{"pkg_id":1,`, `{"data":{}}`, `{"pkg_id":"1"}`, `{"pkg_id":1.5}`, `{"pkg_id":-1}`,
		`{"pkg_id":1,"data":[]}`, `{"pkg_id":1,"topic":"bad topic!"}`, `[]`, `null`, ``} {
		r := c.do("POST", "/api/broadcast", producer, body)
		errs := fcExpectInvalid(t, r)
		if body == `{"pkg_id":1,` && !slices.ContainsFunc(errs, func(e fcFieldError) bool { return e.Path == "/" }) {
			t.Errorf("%s: malformed JSON not reported at path /", r)
		}
	}
	max := int(s.cfg.MaxRequestBytes)
	pad := func(size int) string {
		head := `{"pkg_id":43,"data":{"pad":"`
		return head + strings.Repeat("p", size-len(head)-3) + `"}}`
	}
	for _, chunked := range []bool{false, true} {
		fcExpectStatus(t, c.send(fcReq{method: "POST", path: "/api/broadcast", token: producer, body: pad(max), chunked: chunked}), http.StatusAccepted)
		if e := listener.next(fcWait); e.PkgID != 43 {
			t.Fatalf("broadcast at the limit: frame %+v", e)
		}
		for _, size := range []int{max + 1, 8 * max} {
			r := c.send(fcReq{method: "POST", path: "/api/broadcast", token: producer, body: pad(size), chunked: chunked})
			fcExpectDetail(t, r, http.StatusRequestEntityTooLarge, "")
		}
	}
	// None of the refused requests reached the listener.
	fcExpectStatus(t, c.do("POST", "/api/broadcast", producer, `{"pkg_id":44}`), http.StatusAccepted)
	if e := listener.next(fcWait); e.PkgID != 44 || string(e.Data) != `{}` {
		t.Fatalf("after the refusals: frame %+v data %s, want pkg_id 44 with {}", e, e.Data)
	}
}

// TestFacadeMissingRolesListsAll: with a policy that requires two roles, 403 names exactly the
// roles the caller lacks, comma and space separated, in the policy's order.
func TestFacadeMissingRolesListsAll(t *testing.T) {
	policy := `{
  "pkg_ids": {"1": ["get-authors", "fc-auditor"], "2": ["get-authors"], "3": ["create-author", "fc-editor"],
    "4": ["update-author"], "5": ["delete-author"], "10": [], "11": [], "12": [], "20": ["admin", "fc-auditor"]},
  "routes": {"POST /api/broadcast": ["broadcast", "fc-ops"]},
  "topics": []
}`
	file := filepath.Join(t.TempDir(), "rbac.json")
	if err := os.WriteFile(file, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, func(c *config.Config) { c.RBACFile = file; c.RateLimitPerMinute = 1_000_000 })
	c := newFCClient(t, s)
	none := s.token(t, "fc-none")
	some := s.token(t, "fc-some", "create-author", "broadcast", "fc-auditor")
	for _, tc := range []struct {
		method, path, body, token, want string
	}{
		{"GET", "/authors", "", none, "get-authors, fc-auditor"},
		{"GET", "/authors", "", some, "get-authors"},
		{"POST", "/authors", fcNameBody("FcRoles"), none, "create-author, fc-editor"},
		{"POST", "/authors", fcNameBody("FcRoles"), some, "fc-editor"},
		{"GET", "/audit-logs", "", none, "admin, fc-auditor"},
		{"GET", "/audit-logs/1", "", some, "admin"},
		{"POST", "/api/broadcast", `{"pkg_id":1}`, none, "broadcast, fc-ops"},
		{"POST", "/api/broadcast", `{"pkg_id":1}`, some, "fc-ops"},
	} {
		fcExpectDetail(t, c.do(tc.method, tc.path, tc.token, tc.body), http.StatusForbidden, "Missing required roles: "+tc.want)
	}
	full := s.token(t, "fc-full", "create-author", "fc-editor", "get-authors", "fc-auditor")
	c.create(full, "FcRoles")
}

// TestFacadeRateLimits: every façade route answers X-RateLimit-Limit/Remaining/Reset, and past
// SWITCHBOARD_RATE_LIMIT_PER_MINUTE per user a 429 with Retry-After; per client IP before
// authentication; never on /health, /livez, /readyz, /metrics.
func TestFacadeRateLimits(t *testing.T) {
	const limit = 3
	s := startServer(t, func(c *config.Config) { c.RateLimitPerMinute = limit })
	c := newFCClient(t, s)
	routes := []struct{ method, path, body string }{
		{"GET", "/authors", ""},
		{"GET", "/authors/paginated?cursor=", ""},
		{"POST", "/authors", `{"name":""}`},
		{"PUT", "/authors/987654", fcNameBody("FcRate")},
		{"DELETE", "/authors/987654", ""},
		{"GET", "/audit-logs", ""},
		{"GET", "/audit-logs/987654", ""},
		{"POST", "/api/broadcast", `{"pkg_id":1}`},
	}
	roles := append(slices.Clone(fcAuthorRoles), "admin", "broadcast")
	for i, rt := range routes {
		tok := s.token(t, fmt.Sprintf("fc-rate-%d", i), roles...)
		for n := 1; n <= limit; n++ {
			r := c.do(rt.method, rt.path, tok, rt.body)
			if r.status == http.StatusTooManyRequests || r.status >= 500 {
				t.Fatalf("%s: request %d of %d", r, n, limit)
			}
			fcExpectRateHeaders(t, r, limit, limit-n)
		}
		r := c.do(rt.method, rt.path, tok, rt.body)
		fcExpectDetail(t, r, http.StatusTooManyRequests, "Rate limit exceeded")
		fcExpectRateHeaders(t, r, limit, 0)
		if reset, _ := strconv.Atoi(r.header.Get("X-RateLimit-Reset")); reset < 1 {
			t.Errorf("%s: X-RateLimit-Reset %d on a 429, want 1..60", r, reset)
		}
		if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
			t.Errorf("%s: Retry-After %q, want 1..60", r, r.header.Get("Retry-After"))
		}
		// The limit is per user, over all routes.
		other := routes[(i+1)%len(routes)]
		fcExpectStatus(t, c.do(other.method, other.path, tok, other.body), http.StatusTooManyRequests)
	}
	// Another user still has the whole budget.
	r := c.do("GET", "/authors", s.token(t, "fc-rate-fresh", "get-authors"), "")
	fcExpectStatus(t, r, http.StatusOK)
	fcExpectRateHeaders(t, r, limit, limit-1)

	// Unlimited routes.
	for _, p := range []string{"/health", "/livez", "/readyz", "/metrics"} {
		for range limit + 2 {
			r := c.do("GET", p, "", "")
			fcExpectStatus(t, r, http.StatusOK)
			if v := r.header.Get("X-RateLimit-Limit"); v != "" {
				t.Fatalf("%s: X-RateLimit-Limit %q on an unlimited route", r, v)
			}
		}
	}

	// Before authentication the client IP is limited: no token and bad tokens share its budget.
	for n := 1; n <= limit; n++ {
		tok := ""
		if n%2 == 0 {
			tok = "not-a-jwt"
		}
		r := c.do("GET", "/authors", tok, "")
		fcExpectDetail(t, r, http.StatusUnauthorized, "")
		fcExpectRateHeaders(t, r, limit, limit-n)
	}
	r = c.do("POST", "/authors", "", fcNameBody("FcRate anon"))
	fcExpectDetail(t, r, http.StatusTooManyRequests, "Rate limit exceeded")
	fcExpectRateHeaders(t, r, limit, 0)
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
		t.Errorf("%s: Retry-After %q", r, r.header.Get("Retry-After"))
	}
}

// TestFacadeNotFoundAndMethods: unknown routes are 404 and wrong methods 405 (with Allow), both
// JSON with the usual headers.
func TestFacadeNotFoundAndMethods(t *testing.T) {
	s := startServer(t, nil)
	c := newFCClient(t, s)
	tok := s.token(t, "fc-any", fcAuthorRoles...)
	for _, p := range []string{"/nope", "/authors/1/books", "/api", "/api/broadcast/x", "/audit-logs/1/x", "/authorsx", "/index.html"} { // "/" is the dashboard
		for _, token := range []string{"", tok} {
			fcExpectDetail(t, c.do("GET", p, token, ""), http.StatusNotFound, "")
		}
	}
	for _, tc := range []struct {
		method, path string
		allow        []string
	}{
		{"PATCH", "/authors", []string{"GET", "POST"}},
		{"DELETE", "/authors", []string{"GET", "POST"}},
		{"GET", "/authors/5", []string{"PUT", "DELETE"}},
		{"POST", "/authors/paginated", []string{"GET"}},
		{"GET", "/api/broadcast", []string{"POST"}},
		{"POST", "/health", []string{"GET"}},
		{"DELETE", "/metrics", []string{"GET"}},
		{"PUT", "/audit-logs/3", []string{"GET"}},
	} {
		r := c.do(tc.method, tc.path, tok, "")
		fcExpectDetail(t, r, http.StatusMethodNotAllowed, "")
		allow := r.header.Get("Allow")
		for _, m := range tc.allow {
			if !slices.Contains(strings.Split(strings.ReplaceAll(allow, " ", ""), ","), m) {
				t.Errorf("%s: Allow %q lacks %s", r, allow, m)
			}
		}
	}
	// The correlation id is echoed on errors too.
	r := c.send(fcReq{method: "GET", path: "/nope", header: http.Header{"X-Correlation-ID": {"fc-echo-404"}}})
	if r.header.Get("X-Correlation-ID") != "fc-echo-404" {
		t.Fatalf("%s: correlation id not echoed", r)
	}
}

// fcHealth calls GET path and returns its status, body and how long it took.
func fcHealth(t testing.TB, c *fcClient, path string) (int, map[string]string, time.Duration) {
	t.Helper()
	start := time.Now()
	r := c.do("GET", path, "", "")
	took := time.Since(start)
	var body map[string]string
	fcDecode(t, r, &body)
	return r.status, body, took
}

func fcHealthy() map[string]string {
	return map[string]string{"status": "healthy", "database": "healthy", "redis": "disabled", "pubsub": "disabled", "identity": "disabled", "relay": "healthy"}
}

func fcSameBody(a, b map[string]string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// TestFacadeHealthSQLite: a healthy node answers /health and /readyz 200 with every check
// named, /livez 200.
func TestFacadeHealthSQLite(t *testing.T) {
	s := startServer(t, nil)
	c := newFCClient(t, s)
	for _, p := range []string{"/health", "/readyz"} {
		status, body, _ := fcHealth(t, c, p)
		if status != http.StatusOK || !fcSameBody(body, fcHealthy()) {
			t.Fatalf("%s: %d %v, want 200 %v", p, status, body, fcHealthy())
		}
	}
	status, body, _ := fcHealth(t, c, "/livez")
	if status != http.StatusOK {
		t.Fatalf("/livez: %d %v", status, body)
	}
}

// TestFacadeHealthPostgresUnreachable: /health reports the database unhealthy (503) when
// PostgreSQL hangs (bounded by the 1 s check timeout) and when it refuses connections, /livez
// stays 200, /readyz equals /health, and all is 200 again once PostgreSQL is back.
func TestFacadeHealthPostgresUnreachable(t *testing.T) {
	direct := storetest.PostgresURL(t)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	proxy := faultproxy.Start(t, u.Host)
	u.Host = proxy.Addr()
	s := startServer(t, func(c *config.Config) {
		c.DatabaseURL = u.String()
		c.RateLimitPerMinute = 1_000_000
	})
	c := newFCClient(t, s)
	tok := s.token(t, "fc-health", fcAuthorRoles...)
	a := c.create(tok, "FcHealth before")

	expectHealthy := func(phase string) {
		t.Helper()
		began := time.Now()
		defer func() { t.Logf("%s: healthy again after %s", phase, time.Since(began).Round(time.Millisecond)) }()
		eventually(t, fcWait, phase+": /health and /readyz 200", func() bool {
			h, hb, _ := fcHealth(t, c, "/health")
			r, rb, _ := fcHealth(t, c, "/readyz")
			return h == http.StatusOK && r == http.StatusOK && fcSameBody(hb, fcHealthy()) && fcSameBody(rb, fcHealthy())
		})
		// Real queries work again, on every pooled connection.
		for range 12 {
			if got := fcAuthors(t, c.do("GET", fmt.Sprintf("/authors?id=%d", a.ID), tok, "")); !slices.Equal(got, []fcAuthor{a}) {
				t.Fatalf("%s: GET /authors?id=%d = %v", phase, a.ID, got)
			}
		}
	}
	unhealthy := map[string]string{"status": "unhealthy", "database": "unhealthy", "redis": "disabled", "pubsub": "disabled", "identity": "disabled", "relay": "unhealthy"}
	expectUnhealthy := func(phase string, minTook time.Duration) {
		t.Helper()
		for _, p := range []string{"/health", "/readyz"} {
			status, body, took := fcHealth(t, c, p)
			if status != http.StatusServiceUnavailable || !fcSameBody(body, unhealthy) {
				t.Fatalf("%s: %s %d %v, want 503 %v", phase, p, status, body, unhealthy)
			}
			// Each check is bounded by 1 s; the upper bound here only catches one that is not
			// (a stuck database connection would hold /health for the driver's own timeouts).
			if took > 6*time.Second || took < minTook {
				t.Fatalf("%s: %s took %s, want %s..6s (each check is bounded by 1 s)", phase, p, took.Round(time.Millisecond), minTook)
			}
			t.Logf("%s: %s answered 503 in %s", phase, p, took.Round(time.Millisecond))
		}
		status, _, took := fcHealth(t, c, "/livez")
		if status != http.StatusOK || took > 5*time.Second {
			t.Fatalf("%s: /livez %d in %s, want 200 at once", phase, status, took)
		}
	}

	expectHealthy("at start")

	// (a) PostgreSQL hangs: the check times out after 1 s.
	proxy.Freeze()
	expectUnhealthy("hanging", 900*time.Millisecond)
	proxy.Resume()
	expectHealthy("after the hang")

	// (b) PostgreSQL refuses connections: the check fails at once.
	proxy.Refuse()
	expectUnhealthy("refused", 0)
	if err := proxy.Listen(); err != nil {
		t.Fatal(err)
	}
	expectHealthy("after the refusal")
	c.create(tok, "FcHealth after")
}

// fcSample is one sample of a scrape.
type fcSample struct {
	name   string
	labels map[string]string
	value  float64
}

// fcScrape GETs base/metrics, parses it as Prometheus text and returns every sample, histogram
// and summary families expanded into their _bucket/_sum/_count samples.
func fcScrape(t testing.TB, c *fcClient, base string) []fcSample {
	t.Helper()
	saved := c.base
	c.base = base
	r := c.do("GET", "/metrics", "", "")
	c.base = saved
	fcExpectStatus(t, r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/metrics Content-Type %q, want text/plain", ct)
	}
	var parser expfmt.TextParser
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(r.body))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v\n%s", err, r.body)
	}
	var out []fcSample
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			with := func(k, v string) map[string]string {
				l := make(map[string]string, len(labels)+1)
				for a, b := range labels {
					l[a] = b
				}
				l[k] = v
				return l
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out = append(out, fcSample{name, labels, m.GetCounter().GetValue()})
			case dto.MetricType_GAUGE:
				out = append(out, fcSample{name, labels, m.GetGauge().GetValue()})
			case dto.MetricType_UNTYPED:
				out = append(out, fcSample{name, labels, m.GetUntyped().GetValue()})
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					out = append(out, fcSample{name + "_bucket", with("le", fcLe(b.GetUpperBound())), float64(b.GetCumulativeCount())})
				}
				out = append(out, fcSample{name + "_sum", labels, h.GetSampleSum()}, fcSample{name + "_count", labels, float64(h.GetSampleCount())})
			case dto.MetricType_SUMMARY:
				sm := m.GetSummary()
				for _, q := range sm.GetQuantile() {
					out = append(out, fcSample{name, with("quantile", strconv.FormatFloat(q.GetQuantile(), 'g', -1, 64)), q.GetValue()})
				}
				out = append(out, fcSample{name + "_sum", labels, sm.GetSampleSum()}, fcSample{name + "_count", labels, float64(sm.GetSampleCount())})
			}
		}
	}
	return out
}

func fcLe(f float64) string {
	if math.IsInf(f, 1) {
		return "+Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// fcFind returns the samples called name whose labels include want.
func fcFind(samples []fcSample, name string, want map[string]string) []fcSample {
	var out []fcSample
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range want {
			if s.labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

func fcSum(samples []fcSample) float64 {
	var t float64
	for _, s := range samples {
		t += s.value
	}
	return t
}

var fcKnownRoutes = []string{"GET /web", "POST /api/broadcast", "GET /authors", "GET /authors/paginated", "POST /authors",
	"PUT /authors/{id}", "DELETE /authors/{id}", "GET /audit-logs", "GET /audit-logs/{id}", "POST /login", "GET /health",
	"GET /readyz", "GET /livez", "GET /metrics", "GET /.well-known/jwks.json", "GET /.well-known/openid-configuration", "unmatched"}

// fcRequestCounts compares http_requests_total with the requests the client made (all but
// GET /metrics, which the scrapes themselves move) and returns the differences.
func fcRequestCounts(samples []fcSample, want map[fcKey]int) []string {
	got := map[fcKey]float64{}
	var problems []string
	for _, s := range fcFind(samples, "http_requests_total", nil) {
		if len(s.labels) != 3 || s.labels["method"] == "" || s.labels["route"] == "" || s.labels["status"] == "" {
			problems = append(problems, fmt.Sprintf("http_requests_total with labels %v, want method, route, status", s.labels))
			continue
		}
		if !slices.Contains(fcKnownRoutes, s.labels["route"]) {
			problems = append(problems, fmt.Sprintf("http_requests_total route label %q is not a route pattern", s.labels["route"]))
		}
		got[fcKey{s.labels["method"], s.labels["route"], s.labels["status"]}] += s.value
	}
	keys := map[fcKey]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	for k := range keys {
		if k.route == "GET /metrics" {
			continue
		}
		if got[k] != float64(want[k]) {
			problems = append(problems, fmt.Sprintf("http_requests_total{method=%q,route=%q,status=%q} = %v, want %d",
				k.method, k.route, k.status, got[k], want[k]))
		}
	}
	sort.Strings(problems)
	return problems
}

// TestFacadeMetrics: /metrics parses as Prometheus text, counts every request the test made by
// method, route pattern and status, has the duration histograms, and has the names of
// docs/protocol.md §7 that the test exercised.
func TestFacadeMetrics(t *testing.T) {
	s := startServer(t, func(cfg *config.Config) {
		cfg.MaxRequestBytes = 2048
		cfg.RateLimitPerMinute = 1_000_000
	})
	c := newFCClient(t, s)
	all := s.token(t, "fc-metrics", append(slices.Clone(fcAuthorRoles), "broadcast", "admin")...)
	reader := s.token(t, "fc-metrics-reader", "get-authors")

	// A WebSocket client: one accepted connection, a request, a broadcast it receives.
	ws := s.connect(t, all)
	c.mu.Lock()
	c.counts[fcKey{"GET", "GET /web", "101"}]++
	c.mu.Unlock()
	eventually(t, fcWait, "the WebSocket registered", func() bool { return s.app.hub.Active() == 1 })
	if e := ws.call(1, nil); e.status() != 0 {
		t.Fatalf("pkg 1 over WebSocket: %+v", e)
	}

	// Every route, with successes and errors.
	a := c.create(all, "FcMetrics One")
	c.create(all, "FcMetrics Two")
	fcExpectStatus(t, c.do("POST", "/authors", all, fcNameBody("FcMetrics One")), http.StatusConflict)
	fcExpectStatus(t, c.do("POST", "/authors", reader, fcNameBody("FcMetrics Three")), http.StatusForbidden)
	fcExpectStatus(t, c.do("POST", "/authors", "", fcNameBody("FcMetrics Three")), http.StatusUnauthorized)
	fcExpectStatus(t, c.do("GET", "/authors", reader, ""), http.StatusOK)
	fcExpectStatus(t, c.do("GET", "/authors?id=x", reader, ""), http.StatusUnprocessableEntity)
	fcExpectStatus(t, c.do("GET", "/authors/paginated?per_page=1", reader, ""), http.StatusOK)
	fcExpectStatus(t, c.do("GET", "/authors/paginated?cursor=", reader, ""), http.StatusOK)
	for range 3 {
		fcExpectStatus(t, c.do("PUT", fmt.Sprintf("/authors/%d", a.ID), all, fcNameBody("FcMetrics Renamed")), http.StatusOK)
	}
	fcExpectStatus(t, c.do("PUT", "/authors/987654", all, fcNameBody("FcMetrics Ghost")), http.StatusNotFound)
	fcExpectStatus(t, c.do("PUT", "/authors/abc", all, fcNameBody("FcMetrics Ghost")), http.StatusUnprocessableEntity)
	fcExpectStatus(t, c.send(fcReq{method: "PUT", path: fmt.Sprintf("/authors/%d", a.ID), token: all, body: fcPadded(t, "FcMetrics big", 4096), chunked: true}), http.StatusRequestEntityTooLarge)
	// A declared Content-Length over the limit is answered before the mux runs; it is still a
	// request on POST /authors.
	fcExpectStatus(t, c.send(fcReq{method: "POST", path: "/authors", token: all, body: fcPadded(t, "FcMetrics big", 4096)}), http.StatusRequestEntityTooLarge)
	fcExpectStatus(t, c.do("DELETE", fmt.Sprintf("/authors/%d", a.ID), all, ""), http.StatusNoContent)
	fcExpectStatus(t, c.do("DELETE", fmt.Sprintf("/authors/%d", a.ID), all, ""), http.StatusNotFound)
	fcExpectStatus(t, c.do("GET", "/audit-logs", all, ""), http.StatusOK)
	fcExpectStatus(t, c.do("GET", "/audit-logs/987654", all, ""), http.StatusNotFound)
	fcExpectStatus(t, c.do("POST", "/api/broadcast", all, `{"pkg_id":9,"data":{"fc":1}}`), http.StatusAccepted)
	fcExpectStatus(t, c.do("POST", "/api/broadcast", all, `{"pkg_id":`), http.StatusUnprocessableEntity)
	for _, p := range []string{"/health", "/readyz", "/livez", "/livez"} {
		fcExpectStatus(t, c.do("GET", p, "", ""), http.StatusOK)
	}
	fcExpectStatus(t, c.do("GET", "/no-such-route", "", ""), http.StatusNotFound)
	fcExpectStatus(t, c.do("PATCH", "/authors", all, ""), http.StatusMethodNotAllowed)
	if e := ws.next(fcWait); e.PkgID != 9 {
		t.Fatalf("broadcast frame %+v", e)
	}

	// Counted exactly, by route pattern (never the raw path).
	var samples []fcSample
	var problems []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		samples = fcScrape(t, c, s.base)
		problems = fcRequestCounts(samples, c.counts)
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range problems {
		t.Error(p)
	}
	// A scrape is counted once it is answered: the next scrape shows the previous ones.
	samples = fcScrape(t, c, s.base)
	if n := fcSum(fcFind(samples, "http_requests_total", map[string]string{"route": "GET /metrics"})); n < 1 {
		t.Errorf("the scrapes are not counted under GET /metrics")
	}

	// The duration histogram per method and route: buckets with le, _count equal to the requests.
	perRoute := map[[2]string]int{}
	for k, n := range c.counts {
		perRoute[[2]string{k.method, k.route}] += n
	}
	for mr, n := range perRoute {
		if mr[1] == "GET /metrics" {
			continue
		}
		labels := map[string]string{"method": mr[0], "route": mr[1]}
		buckets := fcFind(samples, "http_request_duration_seconds_bucket", labels)
		if len(buckets) < 2 {
			t.Errorf("http_request_duration_seconds%v: %d buckets", labels, len(buckets))
			continue
		}
		inf := fcFind(buckets, "http_request_duration_seconds_bucket", map[string]string{"le": "+Inf"})
		count := fcFind(samples, "http_request_duration_seconds_count", labels)
		if len(inf) != 1 || inf[0].value != float64(n) || len(count) != 1 || count[0].value != float64(n) {
			t.Errorf("http_request_duration_seconds%v: +Inf bucket %v, _count %v, want %d", labels, inf, count, n)
		}
		for _, b := range buckets {
			if _, err := strconv.ParseFloat(b.labels["le"], 64); err != nil && b.labels["le"] != "+Inf" {
				t.Errorf("bucket with le %q", b.labels["le"])
			}
		}
	}

	// The names of docs/protocol.md §7 this test exercised.
	eventually(t, fcWait, "audit_logs_written_total > 0", func() bool {
		return fcSum(fcFind(fcScrape(t, c, s.base), "audit_logs_written_total", nil)) > 0
	})
	samples = fcScrape(t, c, s.base)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"ws_connections_active", nil, 1},
		{"ws_connections_total", map[string]string{"status": "accepted"}, 1},
		{"ws_messages_received_total", nil, 1},
		{"ws_messages_sent_total", nil, 2},
		{"ws_message_processing_duration_seconds_bucket", map[string]string{"pkg_id": "1", "le": "+Inf"}, 1},
		{"ws_message_processing_duration_seconds_count", map[string]string{"pkg_id": "1"}, 1},
		{"ws_broadcasts_total", nil, 1},
		{"ws_broadcast_duration_seconds_count", nil, 1},
		{"ws_broadcast_duration_seconds_bucket", map[string]string{"le": "+Inf"}, 1},
		{"db_query_duration_seconds_count", map[string]string{"operation": "select"}, 1},
		{"db_query_duration_seconds_count", map[string]string{"operation": "insert"}, 1},
		{"db_query_duration_seconds_bucket", map[string]string{"operation": "insert", "le": "+Inf"}, 1},
		{"audit_logs_written_total", nil, 1},
		{"go_goroutines", nil, 1},
		{"process_resident_memory_bytes", nil, 1},
	} {
		found := fcFind(samples, tc.name, tc.labels)
		if len(found) == 0 {
			t.Errorf("no %s%v in /metrics", tc.name, tc.labels)
			continue
		}
		if v := fcSum(found); v < tc.min {
			t.Errorf("%s%v = %v, want at least %v", tc.name, tc.labels, v, tc.min)
		}
	}
	if v := fcSum(fcFind(samples, "ws_connections_active", nil)); v != 1 {
		t.Errorf("ws_connections_active = %v, want 1", v)
	}
	if v := fcSum(fcFind(samples, "ws_connections_total", map[string]string{"status": "accepted"})); v != 1 {
		t.Errorf("ws_connections_total{status=\"accepted\"} = %v, want 1", v)
	}
	// Every pkg_id label comes from the registry.
	for _, smp := range fcFind(samples, "ws_message_processing_duration_seconds_count", nil) {
		if _, err := strconv.Atoi(smp.labels["pkg_id"]); err != nil && smp.labels["pkg_id"] != "unknown" {
			t.Errorf("ws_message_processing_duration_seconds with pkg_id %q", smp.labels["pkg_id"])
		}
	}
}

// TestFacadeMetricsAddr: with SWITCHBOARD_METRICS_ADDR a second listener serves /metrics and
// nothing else; the main listener keeps serving /metrics too.
func TestFacadeMetricsAddr(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	s := startServer(t, func(c *config.Config) { c.MetricsAddr = addr })
	c := newFCClient(t, s)
	base := "http://" + addr
	eventually(t, fcWait, "the metrics listener on "+addr, func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = conn.Close()
		}
		return err == nil
	})
	fcExpectStatus(t, c.do("GET", "/authors", "", ""), http.StatusUnauthorized)
	samples := fcScrape(t, c, base)
	if len(fcFind(samples, "go_goroutines", nil)) == 0 || len(fcFind(samples, "http_requests_total", map[string]string{"route": "GET /authors", "status": "401"})) == 0 {
		t.Fatalf("metrics listener: no go_goroutines or no count of the request to the main listener")
	}
	fcScrape(t, c, s.base) // the main listener serves it too

	for _, tc := range []struct{ method, path string }{
		{"GET", "/health"}, {"GET", "/readyz"}, {"GET", "/livez"}, {"GET", "/authors"}, {"POST", "/api/broadcast"},
		{"GET", "/web"}, {"GET", "/.well-known/jwks.json"}, {"GET", "/"},
	} {
		req, err := http.NewRequest(tc.method, base+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := fcHTTP.Do(req)
		if err != nil {
			t.Fatalf("%s %s on the metrics listener: %v", tc.method, tc.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s %s on the metrics listener: %d %s, want 404", tc.method, tc.path, resp.StatusCode, b)
		}
	}
}
