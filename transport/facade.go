package transport

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"switchboard/actors"
)

// The façade routes run the same handler actors as their pkg_ids (docs/protocol.md §2): a route
// turns the HTTP call into an actors.Request, asks the handler pool, and maps the Response's
// kind to an HTTP status in one place (writeResponse).

// facadeRoute describes one route: how to build a pkg_id's data from the call, and how a
// success is answered.
type facadeRoute struct {
	pkgID int
	// data builds the request data; it answers the client itself and returns false on failure.
	data func(w http.ResponseWriter, r *http.Request) (json.RawMessage, bool)
	// success writes a successful answer.
	success func(w http.ResponseWriter, resp *actors.Response)
}

// handleFacade registers a façade route: authenticated, rate-limited and audited under the
// pkg_id's name, with RBAC and validation in the pipeline.
func (a *api) handleFacade(mux *http.ServeMux, pattern string, rt facadeRoute) {
	ra := routeAudit{action: a.cfg.Registry.Name(rt.pkgID), resource: a.cfg.Registry.Resource(rt.pkgID)}
	mux.HandleFunc(pattern, a.authed(ra, a.facade(rt)))
}

func (a *api) facade(rt facadeRoute) func(http.ResponseWriter, *http.Request, *actors.User) {
	return func(w http.ResponseWriter, r *http.Request, u *actors.User) {
		// Roles first, as over WebSocket: a caller without them learns nothing from validation.
		// (The pipeline checks them again; this only orders the answers.)
		if missing, listed := a.cfg.Policy.PkgMissing(rt.pkgID, u); !listed || len(missing) > 0 {
			writeFailure(w, &actors.Response{Status: actors.StatusPermissionDenied, Kind: actors.ErrDenied,
				Data: actors.MissingRoles{Missing: missing}})
			return
		}
		data, ok := rt.data(w, r)
		if !ok {
			return
		}
		noteData(r, data)
		// Admission: the call is read; its deadline (this plus the handler timeout) holds
		// however long it waits for a handler, and the pool never starts it afterwards.
		req := &actors.Request{
			PkgID: rt.pkgID, ReqID: headerGet(r.Header, hdrCorrelationID), Data: data, User: u,
			Transport: "http", Remote: clientIP(r), UserAgent: headerGet(r.Header, hdrUserAgent), Admitted: time.Now(),
		}
		// The pool answers by the deadline (a request still waiting then is refused); the grace
		// covers a handler that overruns it, which should not happen.
		wait := time.Until(req.Admitted.Add(a.cfg.HandlerTimeout)) + facadeGrace
		resp, ok := a.replies.ask(a.cfg.Root, a.cfg.Handlers, req, wait)
		if !ok {
			a.cfg.Logger.Error("handler pool did not answer", "pkg_id", rt.pkgID, "waited", wait)
			writeDetail(w, http.StatusGatewayTimeout, "The request timed out")
			return
		}
		if resp.Decoded != nil {
			noteDecoded(r, data, resp.Decoded) // the audit redacts what validation decoded
		}
		noteMsg(r, resp.Msg)
		if resp.Status == actors.StatusOK {
			rt.success(w, resp)
			return
		}
		writeFailure(w, resp)
	}
}

// facadeGrace is how long past a request's deadline the façade waits for the pool's answer
// before it answers 504 itself.
const facadeGrace = time.Second

// writeFailure maps a failed Response to its HTTP status and body.
func writeFailure(w http.ResponseWriter, resp *actors.Response) {
	switch {
	case errors.Is(resp.Kind, actors.ErrInvalid):
		errs := []actors.FieldError{}
		if d, ok := resp.Data.(actors.InvalidData); ok {
			errs = d.Errors
		}
		writeJSON(w, http.StatusUnprocessableEntity, invalidBody{Detail: "Invalid data", Errors: errs})
	case errors.Is(resp.Kind, actors.ErrNotFound):
		writeDetail(w, http.StatusNotFound, resp.Msg)
	case errors.Is(resp.Kind, actors.ErrConflict):
		writeDetail(w, http.StatusConflict, resp.Msg)
	case errors.Is(resp.Kind, actors.ErrDenied):
		detail := "Permission denied"
		if m, ok := resp.Data.(actors.MissingRoles); ok && len(m.Missing) > 0 {
			detail = "Missing required roles: " + actors.MissingRolesText(m.Missing)
		}
		writeDetail(w, http.StatusForbidden, detail)
	case errors.Is(resp.Kind, actors.ErrDeadline), errors.Is(resp.Kind, actors.ErrStopping):
		// The request never ran: the server is overloaded (or stopping); trying again is safe.
		w.Header().Set("Retry-After", "1")
		writeDetail(w, http.StatusServiceUnavailable, resp.Msg)
	case errors.Is(resp.Kind, actors.ErrRateLimited):
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(resp.RetryAfter.Round(time.Second)/time.Second))))
		writeDetail(w, http.StatusTooManyRequests, "Rate limit exceeded")
	default:
		writeDetail(w, http.StatusInternalServerError, resp.Msg)
	}
}

type invalidBody struct {
	Detail string              `json:"detail"`
	Errors []actors.FieldError `json:"errors"`
}

func ok200(w http.ResponseWriter, resp *actors.Response) { writeJSON(w, http.StatusOK, resp.Data) }

func okPage(w http.ResponseWriter, resp *actors.Response) {
	writeJSON(w, http.StatusOK, struct {
		Items any `json:"items"`
		Meta  any `json:"meta"`
	}{resp.Data, resp.Meta})
}

func ok204(w http.ResponseWriter, _ *actors.Response) { w.WriteHeader(http.StatusNoContent) }

// queryData builds data from query parameters: ints are parsed (a bad one answers 422),
// filters go under "filters". present reports which parameters were given at all.
type queryData struct {
	w      http.ResponseWriter
	vals   url.Values // the query, parsed once (URL.Query parses it on every call)
	top    []queryValue
	filter []queryValue
	errs   []actors.FieldError
}

// queryValue is one parameter as it goes into data: an integer or a string.
type queryValue struct {
	name  string
	num   int64
	str   string
	isNum bool
	isObj bool // "filters": the object of q.filter
}

func newQueryData(w http.ResponseWriter, r *http.Request) *queryData {
	return &queryData{w: w, vals: r.URL.Query()}
}

func (q *queryData) has(name string) bool { return q.vals.Has(name) }

func (q *queryData) int(name string, filter bool) {
	if !q.has(name) {
		return
	}
	v := q.vals.Get(name)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		q.errs = append(q.errs, actors.FieldError{Path: q.path(name, filter), Message: "must be an integer, got " + quoteShort(v)})
		return
	}
	q.put(queryValue{name: name, num: n, isNum: true}, filter)
}

// str adds a string parameter. One that is not UTF-8 is refused here: encoding it into data
// would silently turn its bytes into U+FFFD (a JSON body that is not UTF-8 is refused too).
func (q *queryData) str(name string, filter bool) {
	if !q.has(name) {
		return
	}
	v := q.vals.Get(name)
	if !utf8.ValidString(v) {
		q.errs = append(q.errs, actors.FieldError{Path: q.path(name, filter), Message: "not valid UTF-8"})
		return
	}
	q.put(queryValue{name: name, str: v}, filter)
}

// path is the JSON pointer of a parameter in the data the pipeline sees.
func (q *queryData) path(name string, filter bool) string {
	if filter {
		return "/filters/" + name
	}
	return "/" + name
}

func (q *queryData) put(v queryValue, filter bool) {
	if filter {
		q.filter = append(q.filter, v)
	} else {
		q.top = append(q.top, v)
	}
}

// done returns the data, or answers 422 for the query's problems. The data is the JSON object
// json.Marshal would make of the parameters in maps (the members sorted by name, filters as
// an object under "filters" when there are any), written directly: each name is added once.
func (q *queryData) done() (json.RawMessage, bool) {
	if len(q.errs) > 0 {
		writeJSON(q.w, http.StatusUnprocessableEntity, invalidBody{Detail: "Invalid data", Errors: q.errs})
		return nil, false
	}
	top := q.top
	if len(q.filter) > 0 {
		top = append(top, queryValue{name: "filters", isObj: true})
	}
	b := make([]byte, 0, 64)
	return q.appendObject(b, top), true
}

func (q *queryData) appendObject(b []byte, vs []queryValue) []byte {
	slices.SortFunc(vs, func(x, y queryValue) int { return strings.Compare(x.name, y.name) })
	b = append(b, '{')
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, v.name)
		b = append(b, ':')
		switch {
		case v.isObj:
			b = q.appendObject(b, q.filter)
		case v.isNum:
			b = strconv.AppendInt(b, v.num, 10)
		default:
			b = appendJSONString(b, v.str)
		}
	}
	return append(b, '}')
}

func (a *api) authorsQuery(w http.ResponseWriter, r *http.Request) (json.RawMessage, bool) {
	q := newQueryData(w, r)
	q.int("id", true)
	q.str("name", true)
	return q.done()
}

func (a *api) auditQuery(w http.ResponseWriter, r *http.Request) (json.RawMessage, bool) {
	q := newQueryData(w, r)
	q.int("page", false)
	q.int("per_page", false)
	for _, f := range []string{"user_id", "action_type", "outcome", "since", "until"} {
		q.str(f, true)
	}
	return q.done()
}

func (a *api) authorsPageQuery(w http.ResponseWriter, r *http.Request) (json.RawMessage, bool) {
	q := newQueryData(w, r)
	q.int("page", false)
	q.int("per_page", false)
	q.str("cursor", false) // present, even empty, selects cursor mode
	q.int("id", true)
	q.str("name", true)
	return q.done()
}

// bodyWithPathID reads a JSON object body and adds the {id} path value as "id".
func (a *api) bodyWithPathID(w http.ResponseWriter, r *http.Request) (json.RawMessage, bool) {
	id, ok := pathID(w, r)
	if !ok {
		return nil, false
	}
	body, ok := a.readObject(w, r)
	if !ok {
		return nil, false
	}
	var m map[string]json.RawMessage
	_ = json.Unmarshal(body, &m)
	m["id"] = json.RawMessage(strconv.FormatInt(id, 10))
	b, _ := json.Marshal(m)
	return b, true
}

func (a *api) pathIDOnly(w http.ResponseWriter, r *http.Request) (json.RawMessage, bool) {
	id, ok := pathID(w, r)
	if !ok {
		return nil, false
	}
	return json.RawMessage(`{"id":` + strconv.FormatInt(id, 10) + `}`), true
}

func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	v := r.PathValue("id")
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id < 1 {
		writeJSON(w, http.StatusUnprocessableEntity, invalidBody{Detail: "Invalid data",
			Errors: []actors.FieldError{{Path: "/id", Message: "must be a positive integer, got " + quoteShort(v)}}})
		return 0, false
	}
	return id, true
}

// readObject reads a body that must be a JSON object (schemas check the rest in the pipeline).
func (a *api) readObject(w http.ResponseWriter, r *http.Request) (json.RawMessage, bool) {
	return a.readBody(w, r, a.objectSchema)
}

// clientIP is the caller's address (X-Forwarded-For is honoured by the trusted-proxy middleware,
// which rewrites RemoteAddr before this runs).
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
