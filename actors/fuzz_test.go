package actors

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"path"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"switchboard/store/bus"
)

// The seed corpora of these targets are in testdata/fuzz/<FuzzName>/ (nasty documents: deep
// nesting, NULs, huge numbers, invalid UTF-8, surrogate escapes); f.Add gives the plain ones.

// FuzzParsePolicy: any RBAC file is refused with an error or gives a policy that holds what
// ParsePolicy promises (valid patterns, history in range, non-nil role lists), that its
// methods can use without panicking, and that reads back the same after writing it out.
func FuzzParsePolicy(f *testing.F) {
	f.Add(defaultPolicy)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"pkg_ids":{"1":["get-authors"],"20":["admin","x"]},"routes":{"POST /api/broadcast":["broadcast"]}}`))
	f.Add([]byte(`{"topics":[{"pattern":"dashboards.*","subscribe":[],"publish":["broadcast"],"history":100}]}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		p, err := ParsePolicy(doc)
		if err != nil {
			if p != nil {
				t.Fatalf("error %v with a policy", err)
			}
			return
		}
		for id, roles := range p.PkgIDs {
			if roles == nil {
				t.Fatalf("pkg_id %d: nil roles", id)
			}
		}
		for k, roles := range p.Routes {
			if roles == nil {
				t.Fatalf("route %q: nil roles", k)
			}
		}
		for i, r := range p.Topics {
			if _, err := path.Match(r.Pattern, "x"); err != nil || r.Pattern == "" {
				t.Fatalf("topics[%d]: pattern %q kept", i, r.Pattern)
			}
			if r.History < 0 || r.History > bus.MaxHistory || r.Subscribe == nil {
				t.Fatalf("topics[%d]: %+v", i, r)
			}
		}
		u := &User{ID: "u", Roles: []string{"admin", "broadcast", "get-authors"}}
		for _, topic := range []string{"authors", "dashboards.x", "", "[", strings.Repeat("a.", 100)} {
			p.Topic(topic)
			p.PublishDenied(topic, u)
			p.PublishDenied(topic, nil)
			p.HistoryOf(topic)
		}
		p.PkgMissing(1, u)
		p.PkgMissing(1, nil)
		p.RouteMissing("POST /api/broadcast", nil)
		again, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		p2, err := ParsePolicy(again)
		if err != nil {
			t.Fatalf("written policy %s does not read back: %v", again, err)
		}
		if !reflect.DeepEqual(p, p2) {
			t.Fatalf("round trip changed the policy:\n%+v\n%+v", p, p2)
		}
	})
}

// FuzzValidate runs any data through the schema of any built-in pkg_id. It never panics, and
// whatever passes holds what the handlers rely on: UTF-8, at most MaxDepth deep, no NUL in any
// string or member name, and (pkg_ids 3 and 4) a name with a visible character and no control
// character. Every error has a JSON pointer.
func FuzzValidate(f *testing.F) {
	for _, s := range []struct {
		pkg  byte
		data string
	}{
		{PkgGetAuthors, `{"filters":{"name":"John","id":3}}`},
		{PkgGetPaginatedAuthors, `{"page":2,"per_page":50,"cursor":"djE6NQ"}`},
		{PkgCreateAuthor, `{"name":"Jöhn"}`},
		{PkgUpdateAuthor, `{"id":1,"name":"\u00a0"}`},
		{PkgDeleteAuthor, `{"id":9223372036854775807}`},
		{PkgSubscribe, `{"topic":"dashboards.a","since":3}`},
		{PkgRefreshToken, `{"token":"a.b.c"}`},
		{PkgGetAuditLogs, `{"filters":{"user_id":"u","since":"2026-01-01T00:00:00Z"}}`},
	} {
		f.Add(s.pkg, []byte(s.data))
	}
	reg := builtinRegistry(f)
	ids := reg.PkgIDs()
	f.Fuzz(func(t *testing.T, pick byte, data []byte) {
		pkg := ids[int(pick)%len(ids)]
		errs := reg.Validate(pkg, data)
		for _, e := range errs {
			if !strings.HasPrefix(e.Path, "/") || e.Message == "" {
				t.Fatalf("error %+v", e)
			}
		}
		if errs != nil {
			return
		}
		if !utf8.Valid(data) || DepthExceeds(data, MaxDepth) {
			t.Fatalf("pkg %d accepted %q", pkg, data)
		}
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatalf("pkg %d accepted %q, which is not JSON: %v", pkg, data, err)
		}
		if nul := nulErrors(v); nul != nil {
			t.Fatalf("pkg %d accepted NULs: %+v", pkg, nul)
		}
		if pkg == PkgCreateAuthor || pkg == PkgUpdateAuthor {
			name, _ := v.(map[string]any)["name"].(string)
			if err := checkName(name); err != nil || name == "" {
				t.Fatalf("pkg %d accepted the name %q: %v", pkg, name, err)
			}
		}
	})
}

// FuzzJSONText checks the byte-level scans against encoding/json on the documents it accepts:
// DepthExceeds agrees with the nesting the decoder sees, and scanEscapes finds a NUL exactly
// when a decoded string or member name holds one.
func FuzzJSONText(f *testing.F) {
	for _, s := range []string{`{}`, `[[[]]]`, `{"a":"[{\"","b":[{}]}`, `"\\u0000"`, `{"\u0000":"\ud83d\ude00"}`,
		`["\\\"[", "\ud800"]`, `{"a":1e999999,"b":-0.0e-5,"c":[true,false,null]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		depth, nul, ok := decodedShape(doc)
		if !ok {
			return // not one JSON value: the scans make no promise beyond not panicking
		}
		for _, max := range []int{0, 1, 2, 3, 8, MaxDepth} {
			if got := DepthExceeds(doc, max); got != (depth > max) {
				t.Fatalf("DepthExceeds(%q, %d) = %v, nesting is %d", doc, max, got, depth)
			}
		}
		if gotNUL, _ := scanEscapes(doc); gotNUL != nul {
			t.Fatalf("scanEscapes(%q) nul = %v, decoded %v", doc, gotNUL, nul)
		}
	})
}

// decodedShape reads doc with encoding/json's token stream (no recursion): its nesting depth,
// whether a string or member name holds NUL, and whether doc is exactly one JSON value.
func decodedShape(doc []byte) (depth int, nul, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	cur := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, false, false
		}
		switch v := tok.(type) {
		case json.Delim:
			if v == '{' || v == '[' {
				cur++
				depth = max(depth, cur)
			} else {
				cur--
			}
		case string:
			nul = nul || strings.IndexByte(v, 0) >= 0
		}
		if cur == 0 && dec.More() {
			return 0, false, false // a second value
		}
	}
	// Token accepts "1 2" as two values at the top level; one value only.
	var one json.RawMessage
	if json.Unmarshal(doc, &one) != nil {
		return 0, false, false
	}
	return depth, nul, true
}
