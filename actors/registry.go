package actors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// HandlerFunc runs one request whose data has passed the route's schema. It returns the
// response data and meta, or an error: a *Failure for an answer the client should see as is,
// anything else becomes 1/"Internal error" (or 1/"Database error occurred" when it wraps
// ErrDatabase).
type HandlerFunc func(ctx context.Context, req *Request) (data, meta any, err error)

// Route registers one pkg_id: its name (for logs and metric labels), the JSON schema of its data,
// its handler and the lane of handler actors it runs in. Roles are not here: they come from the
// Policy, which is data.
type Route struct {
	PkgID    int
	Name     string
	Resource string // what the pkg_id acts on, for the audit log ("authors", "topics", …)
	Schema   string // a JSON Schema document for `data`; empty = any object
	Handler  HandlerFunc
	// Lane is the bulkhead the handler runs in. The zero value, LaneDatabase, is the safe
	// default: a handler that may wait on the database must never hold an actor that requests
	// without a database call need.
	Lane Lane
}

// Lane names a bulkhead of handler actors (see HandlerPool). Requests of one lane never wait for
// the actors of the other, so a stalled database leaves the control lane free.
type Lane uint8

const (
	// LaneDatabase runs handlers that may wait on the database (SWITCHBOARD_HANDLER_POOL_SIZE
	// actors).
	LaneDatabase Lane = iota
	// LaneControl runs handlers that never touch the database: SUBSCRIBE, UNSUBSCRIBE,
	// REFRESH_TOKEN, and the answer to an unknown pkg_id (SWITCHBOARD_CONTROL_POOL_SIZE actors).
	LaneControl
	laneCount
)

func (l Lane) String() string {
	if l == LaneControl {
		return "control"
	}
	return "database"
}

// InLane returns routes with their Lane set to lane, for routes whose handlers are declared
// elsewhere.
func InLane(lane Lane, routes ...Route) []Route {
	out := make([]Route, len(routes))
	for i, rt := range routes {
		rt.Lane = lane
		out[i] = rt
	}
	return out
}

type route struct {
	Route
	schema *jsonschema.Schema
}

// Registry maps pkg_ids to routes. Fill it before the actors start; it is read-only afterwards.
type Registry struct {
	routes map[int]*route
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{routes: make(map[int]*route)} }

// Register adds a route, compiling its schema. Adding a message type is one call of this.
func (r *Registry) Register(rt Route) error {
	if rt.Handler == nil || rt.Name == "" {
		return fmt.Errorf("register pkg_id %d: name and handler are required", rt.PkgID)
	}
	if rt.Lane >= laneCount {
		return fmt.Errorf("register pkg_id %d: unknown lane %d", rt.PkgID, rt.Lane)
	}
	if _, dup := r.routes[rt.PkgID]; dup {
		return fmt.Errorf("register pkg_id %d: already registered", rt.PkgID)
	}
	doc := rt.Schema
	if doc == "" {
		doc = `{"type":"object"}`
	}
	sch, err := compileSchema(strconv.Itoa(rt.PkgID), doc)
	if err != nil {
		return fmt.Errorf("register pkg_id %d (%s): %w", rt.PkgID, rt.Name, err)
	}
	r.routes[rt.PkgID] = &route{Route: rt, schema: sch}
	return nil
}

// MustRegister is Register for built-in routes, whose schemas are part of the program.
func (r *Registry) MustRegister(rts ...Route) {
	for _, rt := range rts {
		if err := r.Register(rt); err != nil {
			panic(err)
		}
	}
}

func (r *Registry) lookup(pkgID int) (*route, bool) {
	rt, ok := r.routes[pkgID]
	return rt, ok
}

// Lane returns the lane pkgID runs in; an unknown pkg_id is answered at once, in the control lane.
func (r *Registry) Lane(pkgID int) Lane {
	if rt, ok := r.routes[pkgID]; ok {
		return rt.Lane
	}
	return LaneControl
}

// Resource returns what pkgID acts on, or "unknown".
func (r *Registry) Resource(pkgID int) string {
	if rt, ok := r.routes[pkgID]; ok && rt.Resource != "" {
		return rt.Resource
	}
	return "unknown"
}

// Name returns the registered name of pkgID, or "unknown".
func (r *Registry) Name(pkgID int) string {
	if rt, ok := r.routes[pkgID]; ok {
		return rt.Name
	}
	return "unknown"
}

// PkgIDs returns the registered pkg_ids in ascending order.
func (r *Registry) PkgIDs() []int {
	ids := make([]int, 0, len(r.routes))
	for id := range r.routes {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	return ids
}

// Validate checks data against the schema of pkgID. It is exported so the HTTP façade can
// validate query parameters that it turns into data.
func (r *Registry) Validate(pkgID int, data json.RawMessage) []FieldError {
	rt, ok := r.routes[pkgID]
	if !ok {
		return []FieldError{{Path: "/", Message: "unknown pkg_id"}}
	}
	return validate(rt.schema, data)
}

func compileSchema(name, doc string) (*jsonschema.Schema, error) {
	parsed, err := jsonschema.UnmarshalJSON(strings.NewReader(doc))
	if err != nil {
		return nil, fmt.Errorf("schema is not JSON: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	// Formats are assertions here (draft 2020-12 makes them annotations by default): a schema
	// names a format to have it checked.
	c.AssertFormat()
	c.RegisterFormat(&jsonschema.Format{Name: nameFormat, Validate: checkName})
	c.UseRegexpEngine(compilePattern)
	url := "switchboard:///pkg/" + name + ".json"
	if err := c.AddResource(url, parsed); err != nil {
		return nil, err
	}
	return c.Compile(url)
}

// validate returns the leaf errors of a validation, as JSON pointers into data.
func validate(sch *jsonschema.Schema, data json.RawMessage) []FieldError {
	_, errs := validateDecoded(sch, data)
	return errs
}

// validateDecoded validates data and also returns it decoded (objects as map[string]any,
// numbers as json.Number), for a caller that needs the document again: the audit log redacts
// that value instead of decoding the bytes a second time.
//
// Before the schema come the rules every document obeys, whatever its pkg_id or route: UTF-8,
// at most MaxDepth levels deep (checked on the bytes, before any recursive decoding), no lone
// surrogate escape, and no NUL in any string or member name (each one reported at its path).
// A document nested too deep is not decoded at all (nil).
func validateDecoded(sch *jsonschema.Schema, data json.RawMessage) (any, []FieldError) {
	inst, errs := validateAll(sch, data)
	return inst, boundErrors(errs)
}

// validateAll is validateDecoded without the bound on the errors.
func validateAll(sch *jsonschema.Schema, data json.RawMessage) (any, []FieldError) {
	problem, nul := checkText(data)
	if problem == textNotUTF8 || problem == textTooDeep {
		return nil, []FieldError{{Path: "/", Message: problem.message()}}
	}
	inst, overflow, err := decodeDocumentRange(data) // jsonschema.UnmarshalJSON's result, decoded directly
	if err != nil {
		return nil, []FieldError{{Path: "/", Message: "not valid JSON"}}
	}
	if problem != textOK {
		return inst, []FieldError{{Path: "/", Message: problem.message()}}
	}
	if overflow {
		return inst, rangeErrors(inst)
	}
	if nul {
		if errs := nulErrors(inst); len(errs) > 0 {
			return inst, errs
		}
	}
	err = sch.Validate(inst)
	if err == nil {
		return inst, nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return inst, []FieldError{{Path: "/", Message: err.Error()}}
	}
	var out []FieldError
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			out = append(out, FieldError{Path: pointer(e.InstanceLocation), Message: leafMessage(e.ErrorKind)})
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	return inst, out
}

// Bounds on what a refusal carries. A 64 KiB frame can hold thousands of bad strings, and the
// library's messages quote what they refuse (every unknown member name, a value that does not
// match a pattern): unbounded, the answer would be many times the request.
const (
	maxFieldErrors       = 20
	maxFieldMessageBytes = 300
)

// boundErrors keeps the first maxFieldErrors errors, says how many more there were, and cuts
// long messages (on a character boundary).
func boundErrors(errs []FieldError) []FieldError {
	if len(errs) > maxFieldErrors {
		more := len(errs) - (maxFieldErrors - 1)
		errs = append(errs[:maxFieldErrors-1:maxFieldErrors-1],
			FieldError{Path: "/", Message: strconv.Itoa(more) + " more problems not listed"})
	}
	for i, e := range errs {
		errs[i].Message, errs[i].Path = cutText(e.Message, maxFieldMessageBytes), cutText(e.Path, maxFieldMessageBytes)
	}
	return errs
}

// cutText returns s, or its first n bytes or fewer (a whole number of characters) and "…".
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// leafMessage is the message of one schema error. The server's own formats say what is wrong
// in words written for the client; the library's wording would quote the value first.
func leafMessage(k jsonschema.ErrorKind) string {
	if f, ok := k.(*kind.Format); ok && f.Want == nameFormat && f.Err != nil {
		return f.Err.Error()
	}
	return k.LocalizedString(printer)
}

func pointer(tokens []string) string {
	if len(tokens) == 0 {
		return "/"
	}
	var b strings.Builder
	for _, t := range tokens {
		b.WriteByte('/')
		b.WriteString(strings.NewReplacer("~", "~0", "/", "~1").Replace(t))
	}
	return b.String()
}

// Schema is a compiled JSON Schema for data that is not a pkg_id's (HTTP bodies, broadcasts).
type Schema struct{ s *jsonschema.Schema }

// NewSchema compiles doc; name only labels errors.
func NewSchema(name, doc string) (*Schema, error) {
	s, err := compileSchema(name, doc)
	if err != nil {
		return nil, err
	}
	return &Schema{s: s}, nil
}

// Validate returns the problems found in data, or nil.
func (s *Schema) Validate(data json.RawMessage) []FieldError { return validate(s.s, data) }

// ValidateDecoded is Validate that also returns data decoded (see audit.Entry.RequestValue).
func (s *Schema) ValidateDecoded(data json.RawMessage) (any, []FieldError) {
	return validateDecoded(s.s, data)
}
