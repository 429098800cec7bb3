package main

// End-to-end tests of the WebSocket protocol (docs/protocol.md §1.2–1.4): every author pkg_id and
// every status code, over a real dial, against SQLite and PostgreSQL.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lxzan/gws"

	"switchboard/config"
	"switchboard/store/storetest"
)

const (
	zeroReqID = "00000000-0000-0000-0000-000000000000"
	e2eWait   = 10 * time.Second
)

// allAuthorRoles are the roles of pkg_ids 1–5.
var allAuthorRoles = []string{"get-authors", "create-author", "update-author", "delete-author"}

// forEachBackend starts one server per backend (fresh database each) and runs fn against it.
func forEachBackend(t *testing.T, edit func(*config.Config), fn func(t *testing.T, s *testServer)) {
	t.Helper()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		s := startServer(t, func(c *config.Config) {
			c.DatabaseURL = url
			if edit != nil {
				edit(c)
			}
		})
		fn(t, s)
	})
}

type authorRow struct {
	ID   int64  `json:"id"`
	Name string `json:"name"`
}

type wireFieldError struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

type wirePageMeta struct {
	Page       int     `json:"page"`
	PerPage    int     `json:"per_page"`
	Total      int     `json:"total"`
	Pages      int     `json:"pages"`
	NextCursor *string `json:"next_cursor"`
	HasMore    bool    `json:"has_more"`
}

// expectStatus fails unless e has the status code and msg ("" = null msg).
func expectStatus(t testing.TB, e envelope, status int, msg string) {
	t.Helper()
	if e.status() != status || e.msg() != msg || (msg == "" && e.Msg != nil) {
		t.Fatalf("want status %d msg %q, got status %d msg %v data %s", status, msg, e.status(), e.Msg, e.Data)
	}
}

// expectFieldErrors fails unless e is 2/"Invalid data" with a non-empty data.errors list of
// {path, message}; it returns the list. When paths are given, each must appear.
func expectFieldErrors(t testing.TB, e envelope, paths ...string) []wireFieldError {
	t.Helper()
	expectStatus(t, e, 2, "Invalid data")
	var d struct {
		Errors []wireFieldError `json:"errors"`
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(e.Data, &keys); err != nil {
		t.Fatalf("data of an invalid-data answer is not an object: %s", e.Data)
	}
	decodeData(t, e, &d)
	if len(d.Errors) == 0 {
		t.Fatalf("data.errors is empty: %s", e.Data)
	}
	for _, raw := range bytesOfErrors(t, keys["errors"]) {
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		if _, ok := m["path"].(string); !ok {
			t.Fatalf("error without a string path: %s", raw)
		}
		if msg, ok := m["message"].(string); !ok || msg == "" {
			t.Fatalf("error without a message: %s", raw)
		}
	}
	for _, p := range paths {
		if !slices.ContainsFunc(d.Errors, func(fe wireFieldError) bool { return fe.Path == p }) {
			t.Fatalf("no error at path %q in %s", p, e.Data)
		}
	}
	return d.Errors
}

func bytesOfErrors(t testing.TB, raw json.RawMessage) []json.RawMessage {
	t.Helper()
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatalf("data.errors is not a list: %s", raw)
	}
	return list
}

func decodeAuthors(t testing.TB, e envelope) []authorRow {
	t.Helper()
	var out []authorRow
	decodeData(t, e, &out)
	if out == nil {
		t.Fatalf("data is not a list: %s", e.Data)
	}
	return out
}

func decodeMeta(t testing.TB, e envelope) (wirePageMeta, map[string]any) {
	t.Helper()
	var m wirePageMeta
	var raw map[string]any
	if err := json.Unmarshal(e.Meta, &m); err != nil {
		t.Fatalf("meta %s: %v", e.Meta, err)
	}
	if err := json.Unmarshal(e.Meta, &raw); err != nil || raw == nil {
		t.Fatalf("meta is not an object: %s", e.Meta)
	}
	return m, raw
}

// expectMeta compares meta key by key, including that next_cursor is present (null or a string).
func expectMeta(t testing.TB, e envelope, want map[string]any) {
	t.Helper()
	_, raw := decodeMeta(t, e)
	if !reflect.DeepEqual(raw, want) {
		t.Fatalf("meta\n got %s\nwant %v", e.Meta, want)
	}
}

func offsetMeta(page, perPage, total, pages int, hasMore bool) map[string]any {
	return map[string]any{
		"page": float64(page), "per_page": float64(perPage), "total": float64(total), "pages": float64(pages),
		"next_cursor": nil, "has_more": hasMore,
	}
}

// mustCreate creates authors through pkg 3 and returns them in order.
// caller sends a request and returns its answer: testClient (the Go client) or, where a test
// also writes raw frames on the same connection, wsClient.
type caller interface {
	call(pkgID int, data any) envelope
}

func mustCreate(t testing.TB, c caller, names ...string) []authorRow {
	t.Helper()
	out := make([]authorRow, 0, len(names))
	for _, n := range names {
		r := c.call(3, map[string]any{"name": n})
		expectStatus(t, r, 0, "")
		var a authorRow
		decodeData(t, r, &a)
		if a.ID <= 0 || a.Name != n {
			t.Fatalf("create %q answered %s", n, r.Data)
		}
		out = append(out, a)
	}
	return out
}

// sendFrame writes one raw text frame and returns the next frame from the server; use it only
// while nothing else is in flight on c.
func sendFrame(t testing.TB, c *wsClient, frame string) envelope {
	t.Helper()
	c.sendText(frame)
	return c.next(e2eWait)
}

// nextRaw returns the next frame's bytes.
func nextRaw(t testing.TB, c *wsClient) []byte {
	t.Helper()
	select {
	case b := <-c.msgs:
		return b
	case <-time.After(e2eWait):
		t.Fatalf("no frame within %s", e2eWait)
		return nil
	}
}

func authorIDs(as []authorRow) []int64 {
	out := make([]int64, len(as))
	for i, a := range as {
		out[i] = a.ID
	}
	return out
}

func TestProtocolGetAuthors(t *testing.T) {
	forEachBackend(t, nil, func(t *testing.T, s *testServer) {
		c := s.dial(t, s.token(t, "writer", allAuthorRoles...))

		// Empty table: an empty list, never null; the whole response envelope as specified (on
		// the wire: a raw socket, as the other tests here that write frames themselves).
		id := uuid.NewString()
		c.sendText(`{"pkg_id":1,"req_id":"` + id + `","data":{}}`)
		var resp map[string]json.RawMessage
		if err := json.Unmarshal(nextRaw(t, c), &resp); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"pkg_id": "1", "req_id": `"` + id + `"`, "status_code": "0", "data": "[]", "meta": "null", "msg": "null"}
		if len(resp) != len(want) {
			t.Fatalf("response keys: %v", resp)
		}
		for k, v := range want {
			if string(resp[k]) != v {
				t.Fatalf("response %s = %s, want %s", k, resp[k], v)
			}
		}

		names := []string{"Alice Walker", "alicia keys", "Bob_Smith", "Bob Smith", "BobXSmith", "100% Pure", "100 Pure", `back\slash`, "Zora"}
		created := mustCreate(t, c, names...)
		byName := map[string]authorRow{}
		for _, a := range created {
			byName[a.Name] = a
		}
		pick := func(ns ...string) []authorRow {
			out := []authorRow{}
			for _, n := range ns {
				out = append(out, byName[n])
			}
			slices.SortFunc(out, func(a, b authorRow) int { return int(a.ID - b.ID) })
			return out
		}

		// A reader with only get-authors.
		r := s.connect(t, s.token(t, "reader", "get-authors"))
		for _, tc := range []struct {
			name string
			data any
			want []authorRow
		}{
			{"no data", nil, pick(names...)},
			{"empty filters", map[string]any{"filters": map[string]any{}}, pick(names...)},
			{"id", map[string]any{"filters": map[string]any{"id": byName["Zora"].ID}}, pick("Zora")},
			{"missing id", map[string]any{"filters": map[string]any{"id": 999999}}, []authorRow{}},
			{"name case-insensitive substring", map[string]any{"filters": map[string]any{"name": "ALI"}}, pick("Alice Walker", "alicia keys")},
			{"name lower", map[string]any{"filters": map[string]any{"name": "smith"}}, pick("Bob_Smith", "Bob Smith", "BobXSmith")},
			{"underscore is literal", map[string]any{"filters": map[string]any{"name": "b_s"}}, pick("Bob_Smith")},
			{"percent is literal", map[string]any{"filters": map[string]any{"name": "0%"}}, pick("100% Pure")},
			{"lone percent", map[string]any{"filters": map[string]any{"name": "%"}}, pick("100% Pure")},
			{"lone underscore", map[string]any{"filters": map[string]any{"name": "_"}}, pick("Bob_Smith")},
			{"backslash is literal", map[string]any{"filters": map[string]any{"name": `k\s`}}, pick(`back\slash`)},
			{"no match", map[string]any{"filters": map[string]any{"name": "nobody"}}, []authorRow{}},
			{"id and name", map[string]any{"filters": map[string]any{"id": byName["Zora"].ID, "name": "zo"}}, pick("Zora")},
			{"id and other name", map[string]any{"filters": map[string]any{"id": byName["Zora"].ID, "name": "alice"}}, []authorRow{}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				e := r.call(1, tc.data)
				expectStatus(t, e, 0, "")
				if string(e.Meta) != "null" {
					t.Fatalf("meta of pkg 1 = %s, want null", e.Meta)
				}
				got := decodeAuthors(t, e)
				if !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			})
		}

		// Filters failing the schema are 2 with field errors.
		for _, tc := range []struct {
			name string
			data any
			path string
		}{
			{"id not integer", map[string]any{"filters": map[string]any{"id": "1"}}, "/filters/id"},
			{"id zero", map[string]any{"filters": map[string]any{"id": 0}}, "/filters/id"},
			{"name not string", map[string]any{"filters": map[string]any{"name": 5}}, "/filters/name"},
			{"unknown filter", map[string]any{"filters": map[string]any{"nme": "x"}}, ""},
			{"filters not object", map[string]any{"filters": []int{1}}, "/filters"},
		} {
			t.Run("invalid "+tc.name, func(t *testing.T) {
				e := r.call(1, tc.data)
				if tc.path == "" {
					expectFieldErrors(t, e)
				} else {
					expectFieldErrors(t, e, tc.path)
				}
			})
		}
	})
}

func TestProtocolPagination(t *testing.T) {
	forEachBackend(t, nil, func(t *testing.T, s *testServer) {
		c := s.connect(t, s.token(t, "writer", allAuthorRoles...))
		all := mustCreate(t, c, "a1", "b2", "a3", "b4", "a5", "b6", "a7")

		t.Run("offset defaults", func(t *testing.T) {
			e := c.call(2, nil)
			expectStatus(t, e, 0, "")
			if got := decodeAuthors(t, e); !reflect.DeepEqual(got, all) {
				t.Fatalf("got %v", got)
			}
			expectMeta(t, e, offsetMeta(1, 20, 7, 1, false))
		})
		t.Run("offset pages", func(t *testing.T) {
			for _, tc := range []struct {
				page    int
				want    []authorRow
				hasMore bool
			}{
				{1, all[0:3], true},
				{2, all[3:6], true},
				{3, all[6:7], false},
				{4, []authorRow{}, false},
				{1000, []authorRow{}, false},
			} {
				e := c.call(2, map[string]any{"page": tc.page, "per_page": 3})
				expectStatus(t, e, 0, "")
				if got := decodeAuthors(t, e); !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("page %d: got %v want %v", tc.page, got, tc.want)
				}
				expectMeta(t, e, offsetMeta(tc.page, 3, 7, 3, tc.hasMore))
			}
		})
		t.Run("offset exact multiple", func(t *testing.T) {
			e := c.call(2, map[string]any{"page": 1, "per_page": 7})
			expectStatus(t, e, 0, "")
			expectMeta(t, e, offsetMeta(1, 7, 7, 1, false))
			e = c.call(2, map[string]any{"page": 1, "per_page": 1000})
			expectMeta(t, e, offsetMeta(1, 1000, 7, 1, false))
		})
		t.Run("offset with filters", func(t *testing.T) {
			e := c.call(2, map[string]any{"page": 2, "per_page": 2, "filters": map[string]any{"name": "A"}})
			expectStatus(t, e, 0, "")
			if got := decodeAuthors(t, e); !reflect.DeepEqual(got, []authorRow{all[4], all[6]}) {
				t.Fatalf("got %v", got)
			}
			expectMeta(t, e, offsetMeta(2, 2, 4, 2, false))
			e = c.call(2, map[string]any{"filters": map[string]any{"name": "zzz"}})
			if got := decodeAuthors(t, e); len(got) != 0 {
				t.Fatalf("got %v", got)
			}
			expectMeta(t, e, offsetMeta(1, 20, 0, 0, false))
		})

		// walk follows next_cursor from "" and returns every item seen.
		walk := func(t *testing.T, perPage int, filters map[string]any) []authorRow {
			t.Helper()
			var seen []authorRow
			cursor := ""
			for pages := 0; ; pages++ {
				if pages > 20 {
					t.Fatal("cursor walk does not end")
				}
				data := map[string]any{"cursor": cursor, "per_page": perPage}
				if filters != nil {
					data["filters"] = filters
				}
				e := c.call(2, data)
				expectStatus(t, e, 0, "")
				items := decodeAuthors(t, e)
				m, raw := decodeMeta(t, e)
				if _, ok := raw["next_cursor"]; !ok {
					t.Fatalf("meta without next_cursor: %s", e.Meta)
				}
				if m.Page != 1 || m.PerPage != perPage || m.Total != 0 || m.Pages != 0 {
					t.Fatalf("cursor meta %s", e.Meta)
				}
				if len(items) > perPage {
					t.Fatalf("%d items on a page of %d", len(items), perPage)
				}
				seen = append(seen, items...)
				if !m.HasMore {
					if m.NextCursor != nil {
						t.Fatalf("has_more false with next_cursor %q", *m.NextCursor)
					}
					return seen
				}
				if m.NextCursor == nil || *m.NextCursor == "" || len(items) != perPage {
					t.Fatalf("has_more true: meta %s with %d items", e.Meta, len(items))
				}
				cursor = *m.NextCursor
			}
		}
		t.Run("cursor walk", func(t *testing.T) {
			for _, perPage := range []int{1, 2, 3, 7, 20} {
				got := walk(t, perPage, nil)
				if !reflect.DeepEqual(got, all) {
					t.Fatalf("per_page %d: walked %v, want %v (no overlap, no gap)", perPage, authorIDs(got), authorIDs(all))
				}
			}
			got := walk(t, 2, map[string]any{"name": "b"})
			if !reflect.DeepEqual(got, []authorRow{all[1], all[3], all[5]}) {
				t.Fatalf("filtered walk: %v", got)
			}
		})
		t.Run("cursor default per_page", func(t *testing.T) {
			e := c.call(2, map[string]any{"cursor": ""})
			expectStatus(t, e, 0, "")
			if got := decodeAuthors(t, e); !reflect.DeepEqual(got, all) {
				t.Fatalf("got %v", got)
			}
			expectMeta(t, e, map[string]any{"page": 1.0, "per_page": 20.0, "total": 0.0, "pages": 0.0, "next_cursor": nil, "has_more": false})
		})
		t.Run("cursor survives a delete", func(t *testing.T) {
			e := c.call(2, map[string]any{"cursor": "", "per_page": 2})
			m, _ := decodeMeta(t, e)
			if m.NextCursor == nil {
				t.Fatalf("meta %s", e.Meta)
			}
			// Delete the last item of the first page: the next page still starts after it.
			expectStatus(t, c.call(5, map[string]any{"id": all[1].ID}), 0, "")
			e = c.call(2, map[string]any{"cursor": *m.NextCursor, "per_page": 2})
			expectStatus(t, e, 0, "")
			if got := decodeAuthors(t, e); !reflect.DeepEqual(got, all[2:4]) {
				t.Fatalf("got %v, want %v", got, all[2:4])
			}
		})
		t.Run("invalid cursor", func(t *testing.T) {
			for _, cur := range []string{
				"not a cursor",
				"!!!!",
				base64.RawURLEncoding.EncodeToString([]byte("v1:abc")),
				base64.RawURLEncoding.EncodeToString([]byte("v9:3")),
				base64.RawURLEncoding.EncodeToString([]byte("v1:-1")),
				strings.Repeat("A", 600),
			} {
				e := c.call(2, map[string]any{"cursor": cur})
				expectFieldErrors(t, e)
			}
		})
		t.Run("invalid paging", func(t *testing.T) {
			for _, data := range []map[string]any{
				{"page": 0},
				{"page": -1},
				{"page": "1"},
				{"per_page": 0},
				{"per_page": 1001},
				{"per_page": 2.5},
				{"cursor": 5},
			} {
				e := c.call(2, data)
				expectFieldErrors(t, e)
			}
		})
	})
}

func TestProtocolCreateUpdateDelete(t *testing.T) {
	forEachBackend(t, nil, func(t *testing.T, s *testServer) {
		c := s.connect(t, s.token(t, "writer", allAuthorRoles...))

		t.Run("create", func(t *testing.T) {
			e := c.call(3, map[string]any{"name": "Ursula K. Le Guin"})
			expectStatus(t, e, 0, "")
			var a authorRow
			decodeData(t, e, &a)
			if a.ID <= 0 || a.Name != "Ursula K. Le Guin" {
				t.Fatalf("create answered %s", e.Data)
			}
			var keys map[string]any
			decodeData(t, e, &keys)
			if len(keys) != 2 {
				t.Fatalf("create data has extra keys: %s", e.Data)
			}
			got := decodeAuthors(t, c.call(1, map[string]any{"filters": map[string]any{"id": a.ID}}))
			if !reflect.DeepEqual(got, []authorRow{a}) {
				t.Fatalf("after create: %v", got)
			}
			// Names keep what was sent: unicode and the longest allowed name.
			mustCreate(t, c, "Gabriel García Márquez", strings.Repeat("n", 255), "O'Brien")
		})
		t.Run("create duplicate", func(t *testing.T) {
			for _, n := range []string{"Ursula K. Le Guin", "O'Brien"} {
				e := c.call(3, map[string]any{"name": n})
				expectStatus(t, e, 2, fmt.Sprintf("Author with name '%s' already exists", n))
			}
		})
		t.Run("create invalid", func(t *testing.T) {
			for _, tc := range []struct {
				name string
				data any
				path string
			}{
				{"empty name", map[string]any{"name": ""}, "/name"},
				{"blank name", map[string]any{"name": "   "}, "/name"},
				{"too long", map[string]any{"name": strings.Repeat("n", 256)}, "/name"},
				{"not a string", map[string]any{"name": 42}, "/name"},
				{"null", map[string]any{"name": nil}, "/name"},
				{"missing", map[string]any{}, ""},
				{"data absent", nil, ""},
			} {
				t.Run(tc.name, func(t *testing.T) {
					e := c.call(3, tc.data)
					if tc.path == "" {
						expectFieldErrors(t, e)
					} else {
						expectFieldErrors(t, e, tc.path)
					}
				})
			}
			// Nothing was written.
			for _, a := range decodeAuthors(t, c.call(1, nil)) {
				if strings.TrimSpace(a.Name) == "" || len(a.Name) > 255 {
					t.Fatalf("invalid authorRow stored: %+v", a)
				}
			}
		})

		t.Run("update", func(t *testing.T) {
			as := mustCreate(t, c, "Old Name", "Taken Name")
			e := c.call(4, map[string]any{"id": as[0].ID, "name": "New Name"})
			expectStatus(t, e, 0, "")
			var a authorRow
			decodeData(t, e, &a)
			if a != (authorRow{ID: as[0].ID, Name: "New Name"}) {
				t.Fatalf("update answered %s", e.Data)
			}
			got := decodeAuthors(t, c.call(1, map[string]any{"filters": map[string]any{"id": as[0].ID}}))
			if !reflect.DeepEqual(got, []authorRow{a}) {
				t.Fatalf("after update: %v", got)
			}
			// Renaming to its own name is no conflict.
			expectStatus(t, c.call(4, map[string]any{"id": as[0].ID, "name": "New Name"}), 0, "")
			// Renaming to another author's name is a conflict.
			expectStatus(t, c.call(4, map[string]any{"id": as[0].ID, "name": "Taken Name"}), 2, "Author with name 'Taken Name' already exists")
			// A missing id.
			expectStatus(t, c.call(4, map[string]any{"id": 987654, "name": "Whoever"}), 1, "Author with ID 987654 not found")
			for _, data := range []map[string]any{
				{"name": "no id"},
				{"id": as[0].ID},
				{"id": 0, "name": "x"},
				{"id": "1", "name": "x"},
				{"id": as[0].ID, "name": ""},
				{"id": as[0].ID, "name": strings.Repeat("n", 256)},
			} {
				expectFieldErrors(t, c.call(4, data))
			}
		})

		t.Run("delete", func(t *testing.T) {
			as := mustCreate(t, c, "Short Lived")
			e := c.call(5, map[string]any{"id": as[0].ID})
			expectStatus(t, e, 0, "")
			if string(e.Data) != fmt.Sprintf(`{"id":%d}`, as[0].ID) {
				t.Fatalf("delete answered %s", e.Data)
			}
			if got := decodeAuthors(t, c.call(1, map[string]any{"filters": map[string]any{"id": as[0].ID}})); len(got) != 0 {
				t.Fatalf("deleted authorRow still listed: %v", got)
			}
			expectStatus(t, c.call(5, map[string]any{"id": as[0].ID}), 1, fmt.Sprintf("Author with ID %d not found", as[0].ID))
			expectStatus(t, c.call(5, map[string]any{"id": 987654}), 1, "Author with ID 987654 not found")
			expectStatus(t, c.call(4, map[string]any{"id": as[0].ID, "name": "Back"}), 1, fmt.Sprintf("Author with ID %d not found", as[0].ID))
			// The name is free again.
			mustCreate(t, c, "Short Lived")
			for _, data := range []map[string]any{{}, {"id": 0}, {"id": "x"}, {"id": 1.5}} {
				expectFieldErrors(t, c.call(5, data))
			}
		})
	})
}

func TestProtocolPermissionsAndUnknownPkg(t *testing.T) {
	forEachBackend(t, nil, func(t *testing.T, s *testServer) {
		admin := s.connect(t, s.token(t, "writer", allAuthorRoles...))
		existing := mustCreate(t, admin, "Existing")[0]
		nobody := s.connect(t, s.token(t, "nobody"))
		reader := s.connect(t, s.token(t, "reader", "get-authors"))
		// A role of the right name for another pkg does not stand in.
		creator := s.connect(t, s.token(t, "creator", "create-author"))

		valid := map[int]any{
			1: nil,
			2: map[string]any{"page": 1},
			3: map[string]any{"name": "Denied"},
			4: map[string]any{"id": existing.ID, "name": "Denied"},
			5: map[string]any{"id": existing.ID},
		}
		for pkg := 1; pkg <= 5; pkg++ {
			expectStatus(t, nobody.call(pkg, valid[pkg]), 3, "Permission denied")
			// RBAC comes before the schema: invalid data from a user without the role is 3.
			expectStatus(t, nobody.call(pkg, map[string]any{"bogus": true, "page": -5, "id": "x"}), 3, "Permission denied")
		}
		for _, pkg := range []int{3, 4, 5} {
			expectStatus(t, reader.call(pkg, valid[pkg]), 3, "Permission denied")
		}
		for _, pkg := range []int{1, 2, 4, 5} {
			expectStatus(t, creator.call(pkg, valid[pkg]), 3, "Permission denied")
		}
		expectStatus(t, reader.call(1, nil), 0, "")
		expectStatus(t, reader.call(2, nil), 0, "")
		// Nothing the denied calls asked for happened.
		got := decodeAuthors(t, admin.call(1, nil))
		if !reflect.DeepEqual(got, []authorRow{existing}) {
			t.Fatalf("after denied writes: %v", got)
		}

		// An unknown pkg_id is 1, whoever asks (lookup comes before RBAC).
		for _, c := range []*testClient{admin, nobody, reader} {
			for _, pkg := range []int{99, 0, -1, 6, 1 << 30} {
				e := c.call(pkg, map[string]any{"anything": 1})
				expectStatus(t, e, 1, fmt.Sprintf("Unknown pkg_id %d", pkg))
				if e.PkgID != pkg {
					t.Fatalf("unknown pkg_id answered with pkg_id %d", e.PkgID)
				}
			}
		}
	})
}

func TestProtocolEnvelopes(t *testing.T) {
	forEachBackend(t, nil, func(t *testing.T, s *testServer) {
		// Raw socket: the test writes malformed envelopes itself.
		c := s.dial(t, s.token(t, "writer", allAuthorRoles...))
		mustCreate(t, c, "Someone")
		stillOpen := func(t *testing.T) {
			t.Helper()
			e := c.call(1, nil)
			expectStatus(t, e, 0, "")
			if len(decodeAuthors(t, e)) != 1 {
				t.Fatalf("get after a bad frame: %s", e.Data)
			}
		}
		id := uuid.NewString()

		for _, tc := range []struct {
			name      string
			frame     string
			wantReqID string
		}{
			{"not JSON", `hello`, zeroReqID},
			{"truncated JSON", `{"pkg_id":1,"req_id":"` + id + `"`, zeroReqID},
			{"JSON array", `[1,2,3]`, zeroReqID},
			{"JSON string", `"x"`, zeroReqID},
			{"empty object", `{}`, zeroReqID},
			{"missing req_id", `{"pkg_id":1,"data":{}}`, zeroReqID},
			{"null req_id", `{"pkg_id":1,"req_id":null}`, zeroReqID},
			{"numeric req_id", `{"pkg_id":1,"req_id":12345}`, zeroReqID},
			{"object req_id", `{"pkg_id":1,"req_id":{"id":"` + id + `"}}`, zeroReqID},
			{"non-UUID string req_id", `{"pkg_id":1,"req_id":"not-a-uuid"}`, "not-a-uuid"},
			{"almost UUID req_id", `{"pkg_id":1,"req_id":"` + id[:35] + `"}`, id[:35]},
			{"empty string req_id", `{"pkg_id":1,"req_id":""}`, ""},
			{"missing pkg_id", `{"req_id":"` + id + `"}`, id},
			{"string pkg_id", `{"pkg_id":"1","req_id":"` + id + `"}`, id},
			{"fractional pkg_id", `{"pkg_id":1.5,"req_id":"` + id + `"}`, id},
			{"data not an object", `{"pkg_id":1,"req_id":"` + id + `","data":[1]}`, id},
			{"data a string", `{"pkg_id":1,"req_id":"` + id + `","data":"{}"}`, id},
		} {
			t.Run(tc.name, func(t *testing.T) {
				e := sendFrame(t, c, tc.frame)
				expectFieldErrors(t, e)
				if e.ReqID != tc.wantReqID {
					t.Fatalf("req_id %q, want %q", e.ReqID, tc.wantReqID)
				}
				stillOpen(t)
			})
		}

		t.Run("data absent is {}", func(t *testing.T) {
			e := sendFrame(t, c, `{"pkg_id":1,"req_id":"`+id+`"}`)
			expectStatus(t, e, 0, "")
			if e.ReqID != id || e.PkgID != 1 || len(decodeAuthors(t, e)) != 1 {
				t.Fatalf("answer %+v %s", e, e.Data)
			}
			// ...so a pkg_id that requires fields answers with their absence.
			e = sendFrame(t, c, `{"pkg_id":3,"req_id":"`+id+`"}`)
			expectFieldErrors(t, e)
			if e.ReqID != id || e.PkgID != 3 {
				t.Fatalf("answer %+v", e)
			}
		})
		t.Run("unknown top-level keys ignored", func(t *testing.T) {
			e := sendFrame(t, c, `{"extra":{"deep":[1,2]},"pkg_id":1,"status_code":3,"meta":"x","msg":"hi","req_id":"`+id+`","data":{"filters":{"name":"some"}},"topic":"t"}`)
			expectStatus(t, e, 0, "")
			if e.ReqID != id || len(decodeAuthors(t, e)) != 1 {
				t.Fatalf("answer %+v %s", e, e.Data)
			}
		})
		t.Run("req_id echoed exactly", func(t *testing.T) {
			upper := strings.ToUpper(uuid.NewString())
			e := sendFrame(t, c, `{"pkg_id":1,"req_id":"`+upper+`"}`)
			expectStatus(t, e, 0, "")
			if e.ReqID != upper {
				t.Fatalf("req_id %q, want %q", e.ReqID, upper)
			}
		})
		t.Run("bad frames do not disturb other connections", func(t *testing.T) {
			other := s.dial(t, s.token(t, "other", "get-authors"))
			expectFieldErrors(t, sendFrame(t, c, `garbage`))
			expectStatus(t, other.call(1, nil), 0, "")
			stillOpen(t)
		})
	})
}

// chunkReader hands out its data at most n bytes per Read, so gws's WriteFile sends one
// WebSocket fragment per chunk (a text frame, then continuation frames).
type chunkReader struct {
	data []byte
	n    int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := min(r.n, len(p), len(r.data))
	copy(p, r.data[:k])
	r.data = r.data[k:]
	if len(r.data) == 0 {
		return k, io.EOF
	}
	return k, nil
}

// paddedRequest is a GET_AUTHORS request of exactly size bytes.
func paddedRequest(t testing.TB, reqID string, size int) []byte {
	t.Helper()
	head := `{"pkg_id":1,"req_id":"` + reqID + `","pad":"`
	n := size - len(head) - len(`"}`)
	if n < 0 {
		t.Fatalf("size %d too small", size)
	}
	b := []byte(head + strings.Repeat("x", n) + `"}`)
	if len(b) != size || !json.Valid(b) {
		t.Fatalf("padded request of %d bytes", len(b))
	}
	return b
}

func TestProtocolFrameLimitsAndOpcodes(t *testing.T) {
	const limit = 1024
	forEachBackend(t, func(c *config.Config) { c.WSMaxMessageBytes = limit }, func(t *testing.T, s *testServer) {
		tok := s.token(t, "reader", "get-authors")
		// Raw sockets: frames the Go client would never send, and the exact close codes.

		t.Run("binary frame closes 1003", func(t *testing.T) {
			c := s.dial(t, tok)
			expectStatus(t, c.call(1, nil), 0, "")
			if err := c.conn.WriteMessage(gws.OpcodeBinary, []byte(`{"pkg_id":1,"req_id":"`+uuid.NewString()+`"}`)); err != nil {
				t.Fatal(err)
			}
			if code, _ := c.closeStatus(e2eWait); code != 1003 {
				t.Fatalf("close code %d, want 1003", code)
			}
		})
		t.Run("message at the limit is served", func(t *testing.T) {
			c := s.dial(t, tok)
			id := uuid.NewString()
			if err := c.conn.WriteMessage(gws.OpcodeText, paddedRequest(t, id, limit)); err != nil {
				t.Fatal(err)
			}
			e := c.next(e2eWait)
			expectStatus(t, e, 0, "")
			if e.ReqID != id {
				t.Fatalf("answer to %q", e.ReqID)
			}
		})
		t.Run("single frame over the limit closes 1009", func(t *testing.T) {
			c := s.dial(t, tok)
			if err := c.conn.WriteMessage(gws.OpcodeText, paddedRequest(t, uuid.NewString(), limit+1)); err != nil {
				t.Fatal(err)
			}
			if code, _ := c.closeStatus(e2eWait); code != 1009 {
				t.Fatalf("close code %d, want 1009", code)
			}
		})
		t.Run("fragmented message under the limit is served", func(t *testing.T) {
			c := s.dial(t, tok)
			id := uuid.NewString()
			if err := c.conn.WriteFile(gws.OpcodeText, &chunkReader{data: paddedRequest(t, id, limit), n: 100}); err != nil {
				t.Fatal(err)
			}
			e := c.next(e2eWait)
			expectStatus(t, e, 0, "")
			if e.ReqID != id {
				t.Fatalf("answer to %q", e.ReqID)
			}
			expectStatus(t, c.call(1, nil), 0, "")
		})
		t.Run("fragmented message over the limit closes 1009", func(t *testing.T) {
			c := s.dial(t, tok)
			// Eleven fragments of at most 100 bytes: each far below the limit, the message one
			// byte over it; the last fragment is the one that crosses, so the server has read
			// everything when it closes.
			if err := c.conn.WriteFile(gws.OpcodeText, &chunkReader{data: paddedRequest(t, uuid.NewString(), limit+1), n: 100}); err != nil {
				t.Fatal(err)
			}
			if code, _ := c.closeStatus(e2eWait); code != 1009 {
				t.Fatalf("close code %d, want 1009", code)
			}
		})
		t.Run("server still serves new connections", func(t *testing.T) {
			c := s.dial(t, tok)
			expectStatus(t, c.call(1, nil), 0, "")
		})
	})
}

func TestProtocolDatabaseError(t *testing.T) {
	forEachBackend(t, nil, func(t *testing.T, s *testServer) {
		// Raw socket: it also sends a frame that is not JSON on the same connection.
		c := s.dial(t, s.token(t, "writer", allAuthorRoles...))
		a := mustCreate(t, c, "Before The Drop")[0]

		ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
		defer cancel()
		if _, err := s.app.db.Bun.ExecContext(ctx, "DROP TABLE authors"); err != nil {
			t.Fatalf("drop table: %v", err)
		}

		for _, tc := range []struct {
			pkg  int
			data any
		}{
			{1, nil},
			{1, map[string]any{"filters": map[string]any{"name": "x"}}},
			{2, nil},
			{2, map[string]any{"cursor": ""}},
			{3, map[string]any{"name": "After The Drop"}},
			{4, map[string]any{"id": a.ID, "name": "Renamed"}},
			{5, map[string]any{"id": a.ID}},
		} {
			e := c.call(tc.pkg, tc.data)
			expectStatus(t, e, 1, "Database error occurred")
			if e.PkgID != tc.pkg {
				t.Fatalf("pkg_id %d answered as %d", tc.pkg, e.PkgID)
			}
			if strings.Contains(string(e.Data), "authors") {
				t.Fatalf("database details leak to the client: %s", e.Data)
			}
		}

		// The connection keeps working for every other kind of frame.
		expectStatus(t, c.call(99, nil), 1, "Unknown pkg_id 99")
		expectFieldErrors(t, sendFrame(t, c, `not json`))
		expectFieldErrors(t, c.call(3, map[string]any{"name": ""}))
		expectStatus(t, c.call(1, nil), 1, "Database error occurred")

		// And so does the server: a new connection is accepted and answered.
		d := s.connect(t, s.token(t, "reader", "get-authors"))
		expectStatus(t, d.call(1, nil), 1, "Database error occurred")
		expectStatus(t, d.call(3, map[string]any{"name": "x"}), 3, "Permission denied")
	})
}
