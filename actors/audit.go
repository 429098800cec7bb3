package actors

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"switchboard/store"
	"switchboard/store/audit"
)

// AuditReader is what GET_AUDIT_LOGS needs from the store (audit.Repo implements it).
type AuditReader interface {
	List(ctx context.Context, f audit.Filter, page, perPage int) ([]audit.Entry, store.PageMeta, error)
	Get(ctx context.Context, id int64) (audit.Entry, error)
}

// PkgGetAuditLogs is GET_AUDIT_LOGS (docs/protocol.md §1.4).
const PkgGetAuditLogs = 20

// auditSchema is the data of pkg_id 20. since/until are checked by the handler rather than
// with "format": "date-time", for a message of ours that names the field and shows an example.
// "id" (an addition to docs/protocol.md §1.4, for the façade's GET /audit-logs/{id}) asks for one
// row and must come alone (checked by the handler, for a clearer message than the schema's).
const auditSchema = `{"type":"object","properties":{
	"id":{"type":"integer","minimum":1,"maximum":9223372036854775807},
	"page":{"type":"integer","minimum":1,"maximum":1000000000},
	"per_page":{"type":"integer","minimum":1,"maximum":100},
	"filters":{"type":"object","additionalProperties":false,"properties":{
		"user_id":{"type":"string","maxLength":255},
		"action_type":{"type":"string","maxLength":255},
		"outcome":{"enum":["success","error","permission_denied"]},
		"since":{"type":"string","maxLength":64},
		"until":{"type":"string","maxLength":64}}}}}`

// AuditRoutes returns the route of pkg_id 20 over r.
//
// Data {"page"?, "per_page"? (1..100, default 20), "filters"?: {"user_id"?, "action_type"?,
// "outcome"?, "since"?, "until"?}} answers a page of audit rows, newest first, with the
// pagination meta. since and until are RFC 3339 date-times (e.g. 2026-03-01T12:00:00Z) and
// bound a half-open range: since <= timestamp < until. Data {"id"} answers that one row, or
// status 1 "Audit log entry <id> not found" (kind ErrNotFound, HTTP 404).
func AuditRoutes(r AuditReader) []Route {
	h := auditHandlers{r: r}
	return []Route{
		{PkgID: PkgGetAuditLogs, Name: "GET_AUDIT_LOGS", Resource: "audit_logs", Schema: auditSchema, Handler: h.list},
	}
}

type auditHandlers struct{ r AuditReader }

type auditFilters struct {
	UserID     string  `json:"user_id"`
	ActionType string  `json:"action_type"`
	Outcome    string  `json:"outcome"`
	Since      *string `json:"since"`
	Until      *string `json:"until"`
}

func (h auditHandlers) list(ctx context.Context, req *Request) (any, any, error) {
	var in struct {
		ID      *int64        `json:"id"`
		Page    int           `json:"page"`
		PerPage int           `json:"per_page"`
		Filters *auditFilters `json:"filters"`
	}
	if err := decode(req, &in); err != nil {
		return nil, nil, err
	}
	if in.ID != nil {
		if in.Page != 0 || in.PerPage != 0 || in.Filters != nil {
			return nil, nil, Invalid(FieldError{Path: "/id", Message: "id cannot be combined with page, per_page or filters"})
		}
		e, err := h.r.Get(ctx, *in.ID)
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil, NotFound(fmt.Sprintf("Audit log entry with ID %d not found", *in.ID))
		}
		if err != nil {
			return nil, nil, storeErr(err)
		}
		return e, nil, nil
	}
	f, err := in.Filters.filter()
	if err != nil {
		return nil, nil, err
	}
	entries, meta, err := h.r.List(ctx, f, in.Page, in.PerPage)
	if err != nil {
		return nil, nil, storeErr(err)
	}
	if entries == nil {
		entries = []audit.Entry{}
	}
	return entries, meta, nil
}

// filter checks and converts the wire filters; a bad time is a status-2 answer naming its field.
func (f *auditFilters) filter() (audit.Filter, error) {
	if f == nil {
		return audit.Filter{}, nil
	}
	out := audit.Filter{UserID: f.UserID, ActionType: f.ActionType, Outcome: f.Outcome}
	var errs []FieldError
	parse := func(field string, s *string) *time.Time {
		if s == nil {
			return nil
		}
		t, err := parseDateTime(*s)
		if err != nil {
			errs = append(errs, FieldError{Path: "/filters/" + field,
				Message: "must be an RFC 3339 date-time such as 2026-03-01T12:00:00Z"})
			return nil
		}
		return &t
	}
	out.Since = parse("since", f.Since)
	out.Until = parse("until", f.Until)
	if out.Since != nil && out.Until != nil && out.Until.Before(*out.Since) {
		errs = append(errs, FieldError{Path: "/filters/until", Message: "must not be before since"})
	}
	if len(errs) > 0 {
		return audit.Filter{}, Invalid(errs...)
	}
	return out, nil
}

// parseDateTime accepts RFC 3339 date-times, fractional seconds included. RFC 3339 allows a
// lower-case "t" and "z"; Go's parser wants them upper-case.
func parseDateTime(s string) (time.Time, error) {
	return time.Parse(time.RFC3339, strings.ToUpper(s))
}
