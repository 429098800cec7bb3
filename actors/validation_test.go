package actors

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/store"
)

// builtinRegistry registers every built-in pkg_id; Validate never runs a handler, so the
// stores can be nil.
func builtinRegistry(t testing.TB) *Registry {
	t.Helper()
	reg := NewRegistry()
	reg.MustRegister(AuthorRoutes(nil)...)
	reg.MustRegister(TopicRoutes(DefaultPolicy())...)
	reg.MustRegister(SessionRoutes(nil)...)
	reg.MustRegister(AuditRoutes(nil)...)
	return reg
}

// nested is a JSON object depth levels deep: {"a":[{"a":[…{}…]}]}.
func nested(depth int) string {
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

func onlyError(t *testing.T, errs []FieldError, path, msg string) {
	t.Helper()
	if len(errs) != 1 || errs[0].Path != path || !strings.Contains(errs[0].Message, msg) {
		t.Fatalf("errors = %+v, want one at %s saying %q", errs, path, msg)
	}
}

// A NUL in any string a handler takes is a status-2 answer at the string's path, before any
// handler (and its database) sees it: author names and filters, cursors, topics, tokens and
// audit filters alike.
func TestNULRefusedInEveryString(t *testing.T) {
	reg := builtinRegistry(t)
	const nul = `a\u0000b`
	cases := []struct {
		pkg  int
		data string
		path string
	}{
		{PkgGetAuthors, `{"filters":{"name":"` + nul + `"}}`, "/filters/name"},
		{PkgGetPaginatedAuthors, `{"filters":{"name":"` + nul + `"}}`, "/filters/name"},
		{PkgGetPaginatedAuthors, `{"cursor":"` + nul + `"}`, "/cursor"},
		{PkgCreateAuthor, `{"name":"` + nul + `"}`, "/name"},
		{PkgCreateAuthor, `{"name":"\u0000"}`, "/name"},
		{PkgUpdateAuthor, `{"id":1,"name":"` + nul + `"}`, "/name"},
		{PkgSubscribe, `{"topic":"` + nul + `"}`, "/topic"},
		{PkgUnsubscribe, `{"topic":"` + nul + `"}`, "/topic"},
		{PkgRefreshToken, `{"token":"` + nul + `"}`, "/token"},
		{PkgGetAuditLogs, `{"filters":{"user_id":"` + nul + `"}}`, "/filters/user_id"},
		{PkgGetAuditLogs, `{"filters":{"action_type":"` + nul + `"}}`, "/filters/action_type"},
		{PkgGetAuditLogs, `{"filters":{"since":"` + nul + `"}}`, "/filters/since"},
		// Strings the schema does not know are refused too: nothing with NUL goes further.
		{PkgCreateAuthor, `{"name":"ok","extra":["x","` + nul + `"]}`, "/extra/1"},
		{PkgDeleteAuthor, `{"id":1,"n` + `\u0000":1}`, "/n\x00"},
	}
	for _, tc := range cases {
		errs := reg.Validate(tc.pkg, json.RawMessage(tc.data))
		onlyError(t, errs, tc.path, "NUL")
	}
	// Every NUL is reported, in pointer order; an escaped backslash before "u0000" is text.
	errs := reg.Validate(PkgCreateAuthor, json.RawMessage(`{"name":"`+nul+`","b":{"c":"\u0000"},"a":"\\u0000"}`))
	if len(errs) != 2 || errs[0].Path != "/b/c" || errs[1].Path != "/name" {
		t.Fatalf("errors = %+v", errs)
	}
	if errs := reg.Validate(PkgCreateAuthor, json.RawMessage(`{"name":"\\u0000"}`)); errs != nil {
		t.Fatalf(`a backslash followed by "u0000" is a name: %+v`, errs)
	}
}

// The name rule of CREATE_AUTHOR and UPDATE_AUTHOR: 1–255 characters, no control character,
// and at least one visible one, where Unicode's spaces and invisible characters do not count.
func TestAuthorNames(t *testing.T) {
	reg := builtinRegistry(t)
	ok := []string{"John", "  John  ", "Jöhn Smith", "李小龍", "😀", "a\u00a0b", "O'Brien-Smith", "x\u200by",
		"\u0301", strings.Repeat("é", 255), "\u00a0a\u3000"}
	for _, name := range ok {
		data, _ := json.Marshal(map[string]any{"name": name})
		if errs := reg.Validate(PkgCreateAuthor, data); errs != nil {
			t.Errorf("%q refused: %+v", name, errs)
		}
		data, _ = json.Marshal(map[string]any{"id": 1, "name": name})
		if errs := reg.Validate(PkgUpdateAuthor, data); errs != nil {
			t.Errorf("update %q refused: %+v", name, errs)
		}
	}
	invisibleNames := []string{" ", "   ", "\u00a0", "\u3000", "\u200b", "\u2003\u2009", "\ufeff", "\u2060",
		"\u180e", "\u00ad", "\u3164", "\u115f\u1160", "\uffa0", "\u2800", "\u034f", "\ufe0f", "\u2028", "\u2029",
		"\u205f", "\u1680", "\u202f", "\u200c\u200d", "\u200e\u200f", "\U000e0020", " \u00a0\u3000\u200b "}
	for _, name := range invisibleNames {
		data, _ := json.Marshal(map[string]any{"name": name})
		onlyError(t, reg.Validate(PkgCreateAuthor, data), "/name", "visible")
		data, _ = json.Marshal(map[string]any{"id": 1, "name": name})
		onlyError(t, reg.Validate(PkgUpdateAuthor, data), "/name", "visible")
	}
	for _, name := range []string{"a\tb", "a\nb", "a\rb", "\x1b[31mred", "a\u007fb", "a\u0085b", "a\u009bb"} {
		data, _ := json.Marshal(map[string]any{"name": name})
		onlyError(t, reg.Validate(PkgCreateAuthor, data), "/name", "control characters")
	}
	// The length rules stay.
	onlyError(t, reg.Validate(PkgCreateAuthor, json.RawMessage(`{"name":""}`)), "/name", "minLength")
	onlyError(t, reg.Validate(PkgCreateAuthor, json.RawMessage(`{"name":"`+strings.Repeat("é", 256)+`"}`)), "/name", "maxLength")
	// Filters are substrings to search for, not names: a space is a fine filter.
	if errs := reg.Validate(PkgGetAuthors, json.RawMessage(`{"filters":{"name":"\u00a0"}}`)); errs != nil {
		t.Fatalf("filter refused: %+v", errs)
	}
}

func TestDepthLimit(t *testing.T) {
	reg := builtinRegistry(t)
	// pkg 20's "filters" is an object, so depth shows in any extra member.
	ok := `{"x":` + nested(MaxDepth-1) + `}`
	if errs := reg.Validate(PkgGetAuthors, json.RawMessage(ok)); errs != nil {
		t.Fatalf("%d levels refused: %+v", MaxDepth, errs)
	}
	for _, depth := range []int{MaxDepth + 1, 1000, 10001} {
		errs := reg.Validate(PkgGetAuthors, json.RawMessage(`{"x":`+nested(depth-1)+`}`))
		onlyError(t, errs, "/", DepthMessage)
	}
	if !strings.Contains(DepthMessage, " 32 ") || MaxDepth != 32 {
		t.Fatalf("DepthMessage %q does not state MaxDepth %d", DepthMessage, MaxDepth)
	}
}

func TestDepthExceeds(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		max  int
		want bool
	}{
		{`{}`, 1, false},
		{`{}`, 0, true},
		{`[[[]]]`, 3, false},
		{`[[[]]]`, 2, true},
		{`[[],[],[]]`, 2, false},
		{`{"a":"[[[[["}`, 1, false},
		{`{"a":"\"[[[[["}`, 1, false},
		{`{"a":"\\"}`, 1, false},
		{`{"a":"\\\"[[["}`, 1, false},
		{`{"a":"\\","b":[[]]}`, 2, true},
		{`"unterminated [[[[`, 1, false},
		{`]]]][[`, 1, false}, // not JSON: its decoder refuses it either way
		{``, 0, false},
	} {
		if got := DepthExceeds([]byte(tc.doc), tc.max); got != tc.want {
			t.Errorf("DepthExceeds(%s, %d) = %v", tc.doc, tc.max, got)
		}
	}
}

func TestTextRules(t *testing.T) {
	reg := builtinRegistry(t)
	onlyError(t, reg.Validate(PkgGetAuthors, json.RawMessage("{\"filters\":{\"name\":\"\xff\"}}")), "/", "UTF-8")
	for _, lone := range []string{`\ud800`, `\udc00`, `\uDBFF\u0041`, `x\ud83d`, `\ud83d\ud83d`} {
		onlyError(t, reg.Validate(PkgGetAuthors, json.RawMessage(`{"filters":{"name":"`+lone+`"}}`)), "/", "surrogate")
	}
	for _, fine := range []string{`\ud83d\ude00`, `\uD83D\uDE00`, `\\ud800`, `\u00e9`, `\\\\ud800`} {
		if errs := reg.Validate(PkgGetAuthors, json.RawMessage(`{"filters":{"name":"`+fine+`"}}`)); errs != nil {
			t.Errorf("%s refused: %+v", fine, errs)
		}
	}
}

// authorStoreSpy fails the test when a handler reaches the store.
type authorStoreSpy struct{ calls atomic.Int64 }

func (s *authorStoreSpy) List(context.Context, store.AuthorFilter) ([]store.Author, error) {
	s.calls.Add(1)
	return nil, errors.New("unexpected")
}
func (s *authorStoreSpy) Page(context.Context, store.AuthorFilter, store.PageRequest) ([]store.Author, store.PageMeta, error) {
	s.calls.Add(1)
	return nil, store.PageMeta{}, errors.New("unexpected")
}
func (s *authorStoreSpy) Create(context.Context, string) (store.Author, error) {
	s.calls.Add(1)
	return store.Author{}, errors.New("unexpected")
}
func (s *authorStoreSpy) Update(context.Context, int64, string) (store.Author, error) {
	s.calls.Add(1)
	return store.Author{}, errors.New("unexpected")
}
func (s *authorStoreSpy) Delete(context.Context, int64) error {
	s.calls.Add(1)
	return errors.New("unexpected")
}

// Through the pipeline, a refused string is status 2 with its path, and the store is never
// asked (it was: the database refused the NUL and the client got 1/"Database error occurred").
func TestPipelineRefusesBadStringsBeforeTheStore(t *testing.T) {
	spy := &authorStoreSpy{}
	reg := NewRegistry()
	reg.MustRegister(AuthorRoutes(spy)...)
	p := newTestPipeline(t, reg)
	roles := []string{"get-authors", "create-author", "update-author"}
	for _, tc := range []struct {
		pkg        int
		data, path string
	}{
		{PkgCreateAuthor, `{"name":"x\u0000"}`, "/name"},
		{PkgCreateAuthor, `{"name":"\u00a0\u3000\u200b"}`, "/name"},
		{PkgUpdateAuthor, `{"id":3,"name":"\u2800"}`, "/name"},
		{PkgGetAuthors, `{"filters":{"name":"\u0000"}}`, "/filters/name"},
		{PkgGetPaginatedAuthors, `{"cursor":"\u0000"}`, "/cursor"},
		{PkgGetAuthors, `{"filters":` + nested(MaxDepth) + `}`, "/"},
	} {
		r := p.Handle(context.Background(), req(tc.pkg, tc.data, roles...))
		if r.Status != StatusInvalidData || r.Msg != "Invalid data" || !errors.Is(r.Kind, ErrInvalid) {
			t.Fatalf("%s: %+v", tc.data, r)
		}
		if errs := r.Data.(InvalidData).Errors; len(errs) == 0 || errs[0].Path != tc.path {
			t.Fatalf("%s: errors %+v, want path %s", tc.data, errs, tc.path)
		}
	}
	if n := spy.calls.Load(); n != 0 {
		t.Fatalf("the store was called %d times", n)
	}
}

func newTestPipeline(t testing.TB, reg *Registry) *Pipeline {
	t.Helper()
	p, err := NewPipeline(PipelineConfig{Registry: reg, Policy: DefaultPolicy(), Logger: quietLogger(), Metrics: metrics.NewSet()})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// BenchmarkDepthExceeds measures the depth check on a small request (the fast path) and on
// about 4 KB of nested objects and strings (the exact scan).
func BenchmarkDepthExceeds(b *testing.B) {
	small := []byte(`{"filters":{"name":"John","id":3},"page":2,"per_page":50}`)
	var items []string
	for i := 0; i < 40; i++ {
		items = append(items, `{"id":`+strconv.Itoa(i)+`,"name":"author number `+strconv.Itoa(i)+` with a \"quoted\" word","tags":["a","b",{"c":[1,2,3]}]}`)
	}
	large := []byte(`{"items":[` + strings.Join(items, ",") + `]}`)
	for _, bc := range []struct {
		name string
		doc  []byte
	}{{"small", small}, {"4K", large}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.doc)))
			for b.Loop() {
				if DepthExceeds(bc.doc, MaxDepth) {
					b.Fatal("too deep")
				}
			}
		})
	}
}

// An RBAC file must say one thing only: refused are pkg_id keys in another spelling than the
// canonical one ("01" and "1" would both be pkg_id 1, the winner chosen by map order), null
// role lists for pkg_ids and routes (null reads like "nobody" but [] means "anyone"), and data
// after the document.
func TestPolicyFileRefusals(t *testing.T) {
	for _, bad := range []string{
		`{"pkg_ids":{"01":["a"]}}`, `{"pkg_ids":{"+1":[]}}`, `{"pkg_ids":{" 1":[]}}`, `{"pkg_ids":{"4294967297":[]}}`,
		`{"pkg_ids":{"1":null}}`, `{"routes":{"POST /api/broadcast":null}}`,
		`{"pkg_ids":{"1":[]}} {"pkg_ids":{"1":["admin"]}}`, `{} x`,
	} {
		if p, err := ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("ParsePolicy(%s) accepted: %+v", bad, p)
		}
	}
	p, err := ParsePolicy([]byte(`{"pkg_ids":{"-1":[],"7":["a"]},"routes":{"GET /x":[]}} ` + "\n"))
	if err != nil || len(p.PkgIDs[-1]) != 0 || p.PkgIDs[7][0] != "a" || p.Routes["GET /x"] == nil {
		t.Fatalf("ParsePolicy: %+v, %v", p, err)
	}
}

// A refusal stays small however much bad input a request holds: at most 20 errors (the last
// saying how many more there were) of at most about 300 bytes each.
func TestRefusalsAreBounded(t *testing.T) {
	reg := builtinRegistry(t)
	many := `{"x":[` + strings.Repeat(`"\u0000",`, 5000) + `"\u0000"]}`
	errs := reg.Validate(PkgGetAuthors, json.RawMessage(many))
	if len(errs) != maxFieldErrors || errs[0].Path != "/x/0" || errs[maxFieldErrors-1].Message != "4982 more problems not listed" {
		t.Fatalf("%d errors: first %+v, last %+v", len(errs), errs[0], errs[len(errs)-1])
	}
	var members []string
	for i := 0; i < 3000; i++ {
		members = append(members, `"member`+strconv.Itoa(i)+`":1`)
	}
	errs = reg.Validate(PkgGetAuthors, json.RawMessage(`{"filters":{`+strings.Join(members, ",")+`}}`))
	if len(errs) == 0 {
		t.Fatal("unknown filters accepted")
	}
	for _, e := range errs {
		if len(e.Message) > maxFieldMessageBytes+len("…") || len(e.Path) > maxFieldMessageBytes+len("…") {
			t.Fatalf("error of %d bytes: %.80s…", len(e.Message), e.Message)
		}
	}
	long := strings.Repeat("é", 400)
	if got := cutText(long, 301); len(got) != 300+len("…") || !strings.HasSuffix(got, "…") {
		t.Fatalf("cutText cut inside a character: %d bytes", len(got))
	}
}
