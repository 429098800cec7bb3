package audit

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"switchboard/store"
)

// appendInsert appends the INSERT of batch as Bun's InsertQuery writes it for the dialect
// (store.DialectPostgres or store.DialectSQLite), with "ON CONFLICT (id) DO NOTHING" when
// onConflict, and reports false, having appended nothing, when an entry holds something it
// leaves to Bun (a NUL, text that is not UTF-8, a duration that is negative or not finite, a
// year outside 0–9999). Bun builds the statement by reflection, field by field: 200 rows of 15
// columns cost about 3.5 million instructions, 17–19k per audited request (callgrind,
// docs/performance.md "Round four"); FuzzAppendInsert compares the two texts.
func appendInsert(b []byte, dialect string, batch []Entry, onConflict bool) ([]byte, bool) {
	if len(batch) == 0 {
		return b, false
	}
	var zero string // what Bun writes for a zero id or a nil error message
	omitID := false // Bun leaves the id column out when the first row's is zero (SQLite)
	switch dialect {
	case store.DialectPostgres:
		zero = "DEFAULT"
	case store.DialectSQLite:
		zero, omitID = "NULL", batch[0].ID == 0
	default:
		return b, false
	}
	start := len(b)
	b = append(b, `INSERT INTO "user_actions" `...)
	if onConflict {
		b = append(b, `AS "ua" `...)
	}
	if omitID {
		b = append(b, '(')
		b = append(b, insertColumns[len(`("id", `):]...)
	} else {
		b = append(b, insertColumns...)
	}
	for i := range batch {
		if i > 0 {
			b = append(b, ", "...)
		}
		var ok bool
		if b, ok = appendEntryValues(b, &batch[i], zero, omitID); !ok {
			return b[:start], false
		}
	}
	if onConflict {
		b = append(b, " ON CONFLICT (id) DO NOTHING"...)
	}
	return b, true
}

const insertColumns = `("id", "timestamp", "user_id", "username", "user_roles", "action_type", "resource", ` +
	`"outcome", "ip_address", "user_agent", "request_id", "request_data", "response_status", "error_message", ` +
	`"duration_ms") VALUES `

// appendEntryValues appends e's parenthesised values.
func appendEntryValues(b []byte, e *Entry, zero string, omitID bool) ([]byte, bool) {
	ok := true
	str := func(s string) {
		if ok {
			b, ok = appendSQLString(b, s)
		}
	}
	b = append(b, '(')
	if !omitID {
		if e.ID == 0 {
			b = append(b, zero...)
		} else {
			b = strconv.AppendInt(b, e.ID, 10)
		}
		b = append(b, ", "...)
	}
	if b, ok = appendSQLTime(b, e); !ok {
		return b, false
	}
	b = append(b, ", "...)
	str(e.UserID)
	b = append(b, ", "...)
	str(e.Username)
	b = append(b, ", "...)
	// user_roles: json.Marshal's text (Bun's JSON appender), quoted.
	roles, err := json.Marshal(e.UserRoles)
	if err != nil || strings.Contains(string(roles), `\u0000`) {
		return b, false
	}
	str(string(roles))
	for _, s := range [...]string{e.ActionType, e.Resource, e.Outcome, e.IPAddress, e.UserAgent, e.RequestID} {
		b = append(b, ", "...)
		str(s)
	}
	b = append(b, ", "...)
	if e.RequestData == nil {
		b = append(b, "NULL"...)
	} else {
		str(string(e.RequestData))
	}
	b = append(b, ", "...)
	b = strconv.AppendInt(b, int64(e.ResponseStatus), 10)
	b = append(b, ", "...)
	if e.ErrorMessage == nil {
		b = append(b, zero...)
	} else {
		str(*e.ErrorMessage)
	}
	b = append(b, ", "...)
	if e.DurationMS < 0 || math.IsNaN(e.DurationMS) || math.IsInf(e.DurationMS, 0) {
		return b, false
	}
	b = strconv.AppendFloat(b, e.DurationMS, 'f', -1, 64)
	return append(b, ')'), ok
}

// appendSQLString appends s as a string literal, its quotes doubled (Bun's AppendString for
// text that is UTF-8 and holds no NUL; anything else is left to Bun).
func appendSQLString(b []byte, s string) ([]byte, bool) {
	if strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
		return b, false
	}
	b = append(b, '\'')
	for {
		i := strings.IndexByte(s, '\'')
		if i < 0 {
			break
		}
		b = append(b, s[:i+1]...)
		b = append(b, '\'')
		s = s[i+1:]
	}
	b = append(b, s...)
	return append(b, '\''), true
}

// appendSQLTime appends e's timestamp as Bun's AppendTime does: UTC, "2006-01-02
// 15:04:05.999999-07:00", quoted.
func appendSQLTime(b []byte, e *Entry) ([]byte, bool) {
	t := e.Timestamp.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return b, false
	}
	hour, min, sec := t.Clock()
	b = append(b, '\'')
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, ' ')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, min, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	if us := t.Nanosecond() / 1000; us > 0 {
		b = append(b, '.')
		n := len(b)
		b = appendDigits(b, us, 6)
		end := len(b)
		for end > n && b[end-1] == '0' {
			end--
		}
		b = b[:end]
	}
	return append(b, "+00:00'"...), true
}

// appendDigits appends n (>= 0) in decimal, zero-padded to width.
func appendDigits(b []byte, n, width int) []byte {
	var buf [20]byte
	i := len(buf)
	for n > 0 || i > len(buf)-width {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
	}
	return append(b, buf[i:]...)
}
