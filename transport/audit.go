package transport

import (
	"encoding/json"
	"net/http"
	"time"

	"switchboard/actors"
	"switchboard/store/audit"
)

// auditRecord collects what the audit log needs about one HTTP call while it runs.
type auditRecord struct {
	start time.Time
	route routeAudit
	data  json.RawMessage
	value any // data decoded while validating it, or nil
	msg   string
}

// auditOf is the audit record of the call (api.authed), or nil.
func auditOf(r *http.Request) *auditRecord {
	if info := infoOf(r); info != nil {
		return info.audit
	}
	return nil
}

// noteData records the request data of the call (redacted by the writer).
func noteData(r *http.Request, data json.RawMessage) { noteDecoded(r, data, nil) }

// noteDecoded records the request data together with its decoded form (from validation), which
// the writer redacts instead of decoding data again.
func noteDecoded(r *http.Request, data json.RawMessage, value any) {
	if rec := auditOf(r); rec != nil {
		rec.data, rec.value = data, value
	}
}

// noteMsg records the answer's message (errors only).
func noteMsg(r *http.Request, msg string) {
	if rec := auditOf(r); rec != nil {
		rec.msg = msg
	}
}

// record writes the audit entry of a finished HTTP call; it never blocks.
func (a *api) record(r *http.Request, u *actors.User, rec *auditRecord, sw *statusWriter) {
	if a.cfg.Auditor == nil {
		return
	}
	status := sw.status
	if status == 0 {
		status = http.StatusOK
	}
	outcome := audit.OutcomeSuccess
	switch {
	case status == http.StatusForbidden:
		outcome = audit.OutcomeDenied
	case status >= 400:
		outcome = audit.OutcomeError
	}
	e := audit.Entry{
		Timestamp: rec.start, UserID: u.ID, Username: u.Name, UserRoles: u.Roles,
		ActionType: rec.route.action, Resource: rec.route.resource, Outcome: outcome,
		IPAddress: clientIP(r), UserAgent: headerGet(r.Header, hdrUserAgent), RequestID: headerGet(r.Header, hdrCorrelationID),
		RequestData: rec.data, RequestValue: rec.value, ResponseStatus: status,
		DurationMS: float64(time.Since(rec.start).Microseconds()) / 1000,
	}
	if status >= 400 {
		msg := rec.msg
		if msg == "" {
			msg = http.StatusText(status)
		}
		e.ErrorMessage = &msg
	}
	a.cfg.Auditor.Record(e)
}
