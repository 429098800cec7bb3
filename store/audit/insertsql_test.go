package audit

import (
	"database/sql"
	"testing"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	"github.com/uptrace/bun/schema"

	"switchboard/store"
)

// FuzzAppendInsert: where appendInsert writes the batch's INSERT itself, it writes Bun's text
// (NewInsert().Model(&batch).Returning("NULL"), ON CONFLICT when asked) on both dialects.
func FuzzAppendInsert(f *testing.F) {
	f.Add(int64(7), int64(1765090984123456789), "u'1", "näme", "get-authors", "b'\"c<>&\u2028", "GET_AUTHORS", "127.0.0.1",
		"curl/8", "550e8400-e29b-41d4-a716-446655440000", []byte(`{"filters":{"name":"x'y\u0000"}}`), 200, "", false, 0.123)
	f.Add(int64(0), int64(0), "", "", "", "", "", "", "", "", []byte(nil), 0, "it's \"bad\"\n", true, 12.0)
	f.Add(int64(-1), int64(-62135596800123456), "\x00", "\xff", "", "\x00", "", "", "", "", []byte("\x00"), -1, "\xff", true, -1.0)
	f.Add(int64(1), int64(253402300799999999), "a", "b", "c", "d", "e", "f", "g", "h", []byte(" [1e21] "), 500, "x", true, 1e21)
	f.Fuzz(func(t *testing.T, id, unixNano int64, user, name, role1, role2, action, ip, agent, reqID string,
		data []byte, status int, errMsg string, hasErr bool, dur float64) {
		e := Entry{ID: id, Timestamp: time.Unix(0, unixNano), UserID: user, Username: name, UserRoles: []string{role1, role2},
			ActionType: action, Resource: "authors", Outcome: OutcomeSuccess, IPAddress: ip, UserAgent: agent, RequestID: reqID,
			RequestData: data, ResponseStatus: status, DurationMS: dur}
		if hasErr {
			e.ErrorMessage = &errMsg
		}
		e2 := e
		e2.ID, e2.UserRoles, e2.ErrorMessage = 0, []string{}, nil
		for _, batch := range [][]Entry{{e, e2}, {e2, e}} {
			for _, d := range []struct {
				name string
				d    schema.Dialect
			}{{store.DialectPostgres, pgdialect.New()}, {store.DialectSQLite, sqlitedialect.New()}} {
				db := bun.NewDB(&sql.DB{}, d.d)
				for _, onConflict := range []bool{false, true} {
					got, ok := appendInsert([]byte("x"), d.name, batch, onConflict)
					if !ok {
						if string(got) != "x" {
							t.Fatalf("refused, but appended %q", got)
						}
						continue
					}
					q := db.NewInsert().Model(&batch).Returning("NULL")
					if onConflict {
						q = q.On("CONFLICT (id) DO NOTHING")
					}
					want, err := q.AppendQuery(db.QueryGen(), []byte("x"))
					if err != nil {
						t.Fatalf("%s: Bun: %v", d.name, err)
					}
					if string(got) != string(want) {
						t.Fatalf("%s, conflict %v:\n got %q\nwant %q", d.name, onConflict, got, want)
					}
				}
			}
		}
	})
}

// TestAppendInsertWritesCommonEntries: an ordinary entry is written directly, not left to Bun.
func TestAppendInsertWritesCommonEntries(t *testing.T) {
	msg := "Database error occurred"
	batch := []Entry{{ID: 3, Timestamp: time.Now(), UserID: "u", UserRoles: []string{"get-authors"}, ActionType: "GET_AUTHORS",
		Resource: "authors", Outcome: OutcomeError, RequestData: []byte(`{}`), ResponseStatus: 1, ErrorMessage: &msg, DurationMS: 0.5}}
	for _, d := range []string{store.DialectPostgres, store.DialectSQLite} {
		if _, ok := appendInsert(nil, d, batch, false); !ok {
			t.Errorf("%s: left to Bun", d)
		}
	}
}
