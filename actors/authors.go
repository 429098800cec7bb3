package actors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"switchboard/store"
	"switchboard/store/outbox"
)

// AuthorStore is what the author handlers need from the store (store.Authors implements it).
type AuthorStore interface {
	List(ctx context.Context, f store.AuthorFilter) ([]store.Author, error)
	Page(ctx context.Context, f store.AuthorFilter, p store.PageRequest) ([]store.Author, store.PageMeta, error)
	Create(ctx context.Context, name string) (store.Author, error)
	Update(ctx context.Context, id int64, name string) (store.Author, error)
	Delete(ctx context.Context, id int64) error
}

// AuthorsTopic carries the authors' domain events.
const AuthorsTopic = "authors"

// AuthorEvent is the data of a domain event on AuthorsTopic; the broadcast's pkg_id is the
// operation's (3 created, 4 updated, 5 deleted).
type AuthorEvent struct {
	Event  string `json:"event"` // created | updated | deleted
	Author any    `json:"author"`
}

// AuthorEventRow is the outbox row of an author change (store.AuthorEvents.Event): the store
// writes it in the change's transaction, and the outbox relay publishes it on AuthorsTopic
// once committed, so a crash between the commit and the publish delays the event, never loses
// it. A deleted author's event carries only its id.
func AuthorEventRow(op string, a store.Author) outbox.Event {
	pkgID, author := PkgCreateAuthor, any(a)
	switch op {
	case store.AuthorUpdated:
		pkgID = PkgUpdateAuthor
	case store.AuthorDeleted:
		pkgID, author = PkgDeleteAuthor, idPayload{ID: a.ID}
	}
	data, _ := json.Marshal(AuthorEvent{Event: op, Author: author}) // plain structs always marshal
	return outbox.Event{Topic: AuthorsTopic, PkgID: pkgID, Data: data}
}

// pkg_ids of the author handlers (docs/protocol.md §1.4).
const (
	PkgGetAuthors          = 1
	PkgGetPaginatedAuthors = 2
	PkgCreateAuthor        = 3
	PkgUpdateAuthor        = 4
	PkgDeleteAuthor        = 5
)

const filtersSchema = `{"type":"object","additionalProperties":false,"properties":{
	"id":{"type":"integer","minimum":1,"maximum":9223372036854775807},
	"name":{"type":"string","maxLength":255}}}`

// nameSchema: 1–255 characters, no control character, at least one visible one (names.go).
const nameSchema = `{"type":"string","minLength":1,"maxLength":255,"format":"` + nameFormat + `"}`

// AuthorRoutes returns the routes of pkg_ids 1–5 over s. The writes' domain events on
// AuthorsTopic are the store's to write (store.AuthorEvents, AuthorEventRow).
func AuthorRoutes(s AuthorStore) []Route {
	h := authorHandlers{s: s}
	return []Route{
		{PkgID: PkgGetAuthors, Name: "GET_AUTHORS", Resource: "authors", Handler: h.list,
			Schema: `{"type":"object","properties":{"filters":` + filtersSchema + `}}`},
		{PkgID: PkgGetPaginatedAuthors, Name: "GET_PAGINATED_AUTHORS", Resource: "authors", Handler: h.page,
			Schema: `{"type":"object","properties":{
				"page":{"type":"integer","minimum":1,"maximum":1000000000},
				"per_page":{"type":"integer","minimum":1,"maximum":1000},
				"cursor":{"type":"string","maxLength":512},
				"filters":` + filtersSchema + `}}`},
		{PkgID: PkgCreateAuthor, Name: "CREATE_AUTHOR", Resource: "authors", Handler: h.create,
			Schema: `{"type":"object","required":["name"],"properties":{"name":` + nameSchema + `}}`},
		{PkgID: PkgUpdateAuthor, Name: "UPDATE_AUTHOR", Resource: "authors", Handler: h.update,
			Schema: `{"type":"object","required":["id","name"],"properties":{
				"id":{"type":"integer","minimum":1,"maximum":9223372036854775807},"name":` + nameSchema + `}}`},
		{PkgID: PkgDeleteAuthor, Name: "DELETE_AUTHOR", Resource: "authors", Handler: h.delete,
			Schema: `{"type":"object","required":["id"],"properties":{
				"id":{"type":"integer","minimum":1,"maximum":9223372036854775807}}}`},
	}
}

type authorHandlers struct {
	s AuthorStore
}

type authorFilters struct {
	ID   *int64  `json:"id"`
	Name *string `json:"name"`
}

func (f *authorFilters) store() store.AuthorFilter {
	if f == nil {
		return store.AuthorFilter{}
	}
	return store.AuthorFilter{ID: f.ID, Name: f.Name}
}

// idPayload carries the id of update and delete answers.
type idPayload struct {
	ID int64 `json:"id"`
}

func (h authorHandlers) list(ctx context.Context, req *Request) (any, any, error) {
	f, ok := listFilters(req.Data)
	if !ok {
		var in struct {
			Filters *authorFilters `json:"filters"`
		}
		if err := decode(req, &in); err != nil {
			return nil, nil, err
		}
		f = in.Filters.store()
	}
	authors, err := h.s.List(ctx, f)
	return authors, nil, storeErr(err)
}

// listFilters reads GET_AUTHORS's filters from data in one pass, for the data nearly every
// client sends: member names as the schema spells them, no escapes, whole-number ids. It
// answers only where json.Unmarshal into list's struct gives the same filter (FuzzListFilters),
// and false for anything else (a member name in other case, which encoding/json matches
// case-insensitively; "filters" twice, whose members it merges; escapes; numbers it refuses),
// which then goes through decode as before.
func listFilters(data []byte) (store.AuthorFilter, bool) {
	var f store.AuthorFilter
	s := jsonScan{b: data}
	if !s.expect('{') {
		return f, false
	}
	seen := false
	for first := true; ; first = false {
		if s.expect('}') {
			return f, s.end()
		}
		if !first && !s.expect(',') {
			return f, false
		}
		key, ok := s.plainString()
		if !ok || !s.expect(':') {
			return f, false
		}
		switch {
		case key == "filters":
			if seen || !s.filters(&f) {
				return f, false
			}
			seen = true
		case strings.EqualFold(key, "filters"):
			return f, false
		default:
			if !s.skipValue() {
				return f, false
			}
		}
	}
}

// jsonScan reads JSON text a member at a time; every method reports false where the text is
// not what it expects, and never reads past the end.
type jsonScan struct {
	b []byte
	i int
}

func (s *jsonScan) space() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
}

// expect consumes c after whitespace if it is there.
func (s *jsonScan) expect(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end reports whether nothing but whitespace is left.
func (s *jsonScan) end() bool {
	s.space()
	return s.i == len(s.b)
}

// plainString reads a string without escapes, of valid UTF-8 and no control character.
func (s *jsonScan) plainString() (string, bool) {
	s.space()
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return "", false
	}
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			s.i = j + 1
			v := s.b[start:j]
			if !utf8.Valid(v) {
				return "", false
			}
			return string(v), true
		case c == '\\' || c < 0x20:
			return "", false
		}
	}
	return "", false
}

// filters reads the filters object into f: members "id" (a whole number) and "name" (a
// string), the last of a duplicate winning, as encoding/json sets a field again.
func (s *jsonScan) filters(f *store.AuthorFilter) bool {
	if !s.expect('{') {
		return false
	}
	for first := true; ; first = false {
		if s.expect('}') {
			return true
		}
		if !first && !s.expect(',') {
			return false
		}
		key, ok := s.plainString()
		if !ok || !s.expect(':') {
			return false
		}
		switch key {
		case "id":
			s.space()
			start := s.i
			for s.i < len(s.b) && (s.b[s.i] == '-' || '0' <= s.b[s.i] && s.b[s.i] <= '9') {
				s.i++
			}
			id, err := strconv.ParseInt(string(s.b[start:s.i]), 10, 64)
			if err != nil || s.b[start] == '0' && s.i-start > 1 || s.b[start] == '-' && s.i-start > 1 && s.b[start+1] == '0' {
				return false
			}
			f.ID = &id
		case "name":
			name, ok := s.plainString()
			if !ok {
				return false
			}
			f.Name = &name
		default:
			return false
		}
	}
}

// skipValue steps over one value of any kind.
func (s *jsonScan) skipValue() bool {
	s.space()
	depth := 0
	for s.i < len(s.b) {
		switch c := s.b[s.i]; c {
		case '"':
			s.i++
			for s.i < len(s.b) && s.b[s.i] != '"' {
				if s.b[s.i] == '\\' {
					s.i++
				}
				s.i++
			}
			if s.i >= len(s.b) {
				return false
			}
			s.i++
		case '{', '[':
			depth++
			s.i++
			continue
		case '}', ']':
			if depth == 0 {
				return true // the end of the enclosing object: not this value's
			}
			depth--
			s.i++
		case ',':
			if depth == 0 {
				return true
			}
			s.i++
			continue
		default:
			s.i++
			continue
		}
		if depth == 0 {
			return true
		}
	}
	return false
}

func (h authorHandlers) page(ctx context.Context, req *Request) (any, any, error) {
	var in struct {
		Page    int            `json:"page"`
		PerPage int            `json:"per_page"`
		Cursor  *string        `json:"cursor"`
		Filters *authorFilters `json:"filters"`
	}
	if err := decode(req, &in); err != nil {
		return nil, nil, err
	}
	authors, meta, err := h.s.Page(ctx, in.Filters.store(), store.PageRequest{Page: in.Page, PerPage: in.PerPage, Cursor: in.Cursor})
	if errors.Is(err, store.ErrInvalidCursor) {
		return nil, nil, Invalid(FieldError{Path: "/cursor", Message: "invalid cursor"})
	}
	if err != nil {
		return nil, nil, storeErr(err)
	}
	return authors, meta, nil
}

func (h authorHandlers) create(ctx context.Context, req *Request) (any, any, error) {
	var in struct {
		Name string `json:"name"`
	}
	if err := decode(req, &in); err != nil {
		return nil, nil, err
	}
	a, err := h.s.Create(ctx, in.Name)
	if errors.Is(err, store.ErrConflict) {
		return nil, nil, Conflict(fmt.Sprintf("Author with name '%s' already exists", in.Name))
	}
	if err != nil {
		return nil, nil, storeErr(err)
	}
	return a, nil, nil
}

func (h authorHandlers) update(ctx context.Context, req *Request) (any, any, error) {
	var in struct {
		ID   int64  `json:"id"`
		Name string `json:"name"`
	}
	if err := decode(req, &in); err != nil {
		return nil, nil, err
	}
	a, err := h.s.Update(ctx, in.ID, in.Name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, nil, NotFound(fmt.Sprintf("Author with ID %d not found", in.ID))
	case errors.Is(err, store.ErrConflict):
		return nil, nil, Conflict(fmt.Sprintf("Author with name '%s' already exists", in.Name))
	case err != nil:
		return nil, nil, storeErr(err)
	}
	return a, nil, nil
}

func (h authorHandlers) delete(ctx context.Context, req *Request) (any, any, error) {
	var in idPayload
	if err := decode(req, &in); err != nil {
		return nil, nil, err
	}
	if err := h.s.Delete(ctx, in.ID); errors.Is(err, store.ErrNotFound) {
		return nil, nil, NotFound(fmt.Sprintf("Author with ID %d not found", in.ID))
	} else if err != nil {
		return nil, nil, storeErr(err)
	}
	return idPayload{ID: in.ID}, nil, nil
}

// decode reads data that has passed the route's schema. The schema counts 1.0 and 1e2 as
// integers, which encoding/json will not put in an int64: that is answered Invalid at the
// field, in the server's words (encoding/json's text names Go types and is never shown).
func decode(req *Request, v any) error {
	if err := json.Unmarshal(req.Data, v); err != nil {
		fe := FieldError{Path: "/", Message: "does not match the expected types"}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			if te.Field != "" {
				fe.Path = "/" + strings.ReplaceAll(te.Field, ".", "/")
			}
			if strings.HasPrefix(te.Value, "number") {
				fe.Message = "must be a whole number written without a fraction or an exponent"
			}
		}
		return Invalid(fe)
	}
	return nil
}

// storeErr marks every store failure as a database error so the pipeline answers
// "Database error occurred" and logs the cause.
func storeErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrDatabase, err)
}
