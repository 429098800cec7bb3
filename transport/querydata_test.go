package transport

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"unicode/utf8"
)

// FuzzQueryData: the data a façade route builds from its query string is what json.Marshal
// makes of the parameters in maps (how it was built before), byte for byte, and the same
// parameters are refused.
func FuzzQueryData(f *testing.F) {
	f.Add("page=2&per_page=10&cursor=&id=3&name=le%20guin")
	f.Add("name=%3Cb%3E%26%E2%80%A8%22%5C%01")
	f.Add("id=x&page=1.5&name=%FF")
	f.Add("user_id=u&action_type=GET_AUTHORS&outcome=success&since=2026-01-01T00:00:00Z&until=z")
	f.Add("")
	f.Fuzz(func(t *testing.T, query string) {
		r := httptest.NewRequest(http.MethodGet, "/authors", nil)
		r.URL.RawQuery = query
		build := func(q *queryData) {
			q.int("page", false)
			q.int("per_page", false)
			q.str("cursor", false)
			q.int("id", true)
			q.str("name", true)
			for _, f := range []string{"user_id", "action_type", "outcome", "since", "until"} {
				q.str(f, true)
			}
		}
		w := httptest.NewRecorder()
		q := newQueryData(w, r)
		build(q)
		got, ok := q.done()
		want, wantOK := marshalQuery(q.vals)
		if ok != wantOK || ok && string(got) != string(want) {
			t.Fatalf("%q: got %s %v, want %s %v", query, got, ok, want, wantOK)
		}
	})
}

// marshalQuery is the data of the same parameters put in maps and encoded by json.Marshal.
func marshalQuery(vals url.Values) ([]byte, bool) {
	top, filter := map[string]any{}, map[string]any{}
	ok := true
	num := func(m map[string]any, name string) {
		if vals.Has(name) {
			n, err := strconv.ParseInt(vals.Get(name), 10, 64)
			if err != nil {
				ok = false
				return
			}
			m[name] = n
		}
	}
	str := func(m map[string]any, name string) {
		if vals.Has(name) {
			if !utf8.ValidString(vals.Get(name)) {
				ok = false
				return
			}
			m[name] = vals.Get(name)
		}
	}
	num(top, "page")
	num(top, "per_page")
	str(top, "cursor")
	num(filter, "id")
	str(filter, "name")
	for _, f := range []string{"user_id", "action_type", "outcome", "since", "until"} {
		str(filter, f)
	}
	if len(filter) > 0 {
		top["filters"] = filter
	}
	b, _ := json.Marshal(top)
	return b, ok
}
