package audit

import (
	"encoding/json"
	"time"

	"github.com/uptrace/bun"
)

// Outcomes of an audited action (docs/protocol.md, "Audit rows").
const (
	OutcomeSuccess = "success"
	OutcomeError   = "error"
	OutcomeDenied  = "permission_denied"
)

// Entry is a row of user_actions; its JSON form is the wire form of an audit row.
type Entry struct {
	bun.BaseModel `bun:"table:user_actions,alias:ua"`

	ID             int64           `bun:"id,pk,autoincrement" json:"id"`
	Timestamp      time.Time       `bun:"timestamp,notnull" json:"timestamp"`
	UserID         string          `bun:"user_id,notnull" json:"user_id"` // the token's sub
	Username       string          `bun:"username,notnull" json:"username"`
	UserRoles      []string        `bun:"user_roles,notnull" json:"user_roles"` // stored as a JSON array
	ActionType     string          `bun:"action_type,notnull" json:"action_type"`
	Resource       string          `bun:"resource,notnull" json:"resource"`
	Outcome        string          `bun:"outcome,notnull" json:"outcome"` // one of the Outcome constants
	IPAddress      string          `bun:"ip_address,notnull" json:"ip_address"`
	UserAgent      string          `bun:"user_agent,notnull" json:"user_agent"`
	RequestID      string          `bun:"request_id,notnull" json:"request_id"`
	RequestData    json.RawMessage `bun:"request_data,notnull" json:"request_data"` // redacted JSON
	ResponseStatus int             `bun:"response_status,notnull" json:"response_status"`
	ErrorMessage   *string         `bun:"error_message" json:"error_message"`
	DurationMS     float64         `bun:"duration_ms,notnull" json:"duration_ms"`

	// RequestValue is RequestData already decoded (objects as map[string]any, numbers as
	// json.Number), when the caller has it from validating the request: Record then redacts
	// it, in place, instead of decoding RequestData a second time. Never stored.
	RequestValue any `bun:"-" json:"-"`
}

// validOutcome reports whether s is one of the Outcome constants.
func validOutcome(s string) bool {
	switch s {
	case OutcomeSuccess, OutcomeError, OutcomeDenied:
		return true
	}
	return false
}
