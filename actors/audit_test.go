package actors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"switchboard/store"
	"switchboard/store/audit"
	"switchboard/store/storetest"
)

// auditPipeline serves pkg_id 20 over a real database with the built-in policy.
func auditPipeline(t *testing.T, db *store.DB) *Pipeline {
	t.Helper()
	reg := NewRegistry()
	reg.MustRegister(AuditRoutes(audit.NewRepo(db))...)
	p, err := NewPipeline(PipelineConfig{Registry: reg, Policy: DefaultPolicy(), Timeout: 10 * time.Second,
		Logger: quietLogger(), Metrics: metrics.NewSet()})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func auditReq(data string, roles ...string) *Request {
	return &Request{PkgID: PkgGetAuditLogs, ReqID: "r1", Data: json.RawMessage(data), Transport: "ws",
		User: &User{ID: "admin-sub", Name: "root", Roles: roles}}
}

// wire encodes v as the edges do.
func wire(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestGetAuditLogs(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		ctx := context.Background()
		base := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
		w := audit.NewWriter(db, audit.WriterConfig{BatchSize: 1, FlushInterval: time.Hour})
		users := []string{"alice", "bob", "alice", "carol", "alice"}
		outcomes := []string{audit.OutcomeSuccess, audit.OutcomeDenied, audit.OutcomeError, audit.OutcomeSuccess, audit.OutcomeSuccess}
		for i, u := range users {
			w.Record(audit.Entry{Timestamp: base.Add(time.Duration(i) * time.Minute), UserID: u, Username: u,
				UserRoles: []string{"get-authors"}, ActionType: fmt.Sprint("ACTION_", i%2), Resource: "pkg:1",
				Outcome: outcomes[i], RequestID: fmt.Sprint("req-", i), RequestData: []byte(`{"password":"hunter2","n":1}`)})
		}
		if err := w.Close(ctx); err != nil {
			t.Fatal(err)
		}
		p := auditPipeline(t, db)

		t.Run("admin gets newest first with meta", func(t *testing.T) {
			r := p.Handle(ctx, auditReq(`{"page":1,"per_page":2}`, "admin"))
			if r.Status != StatusOK {
				t.Fatalf("%+v", r)
			}
			rows := r.Data.([]audit.Entry)
			if len(rows) != 2 || rows[0].RequestID != "req-4" || rows[1].RequestID != "req-3" {
				t.Fatalf("rows %+v", rows)
			}
			if got := wire(t, r.Meta); got != `{"page":1,"per_page":2,"total":5,"pages":3,"next_cursor":null,"has_more":true}` {
				t.Fatalf("meta %s", got)
			}
			// The wire row has exactly the keys of docs/protocol.md "Audit rows", secrets redacted.
			var row map[string]json.RawMessage
			if err := json.Unmarshal([]byte(wire(t, rows[0])), &row); err != nil {
				t.Fatal(err)
			}
			keys := make([]string, 0, len(row))
			for k := range row {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			want := []string{"action_type", "duration_ms", "error_message", "id", "ip_address", "outcome", "request_data",
				"request_id", "resource", "response_status", "timestamp", "user_agent", "user_id", "user_roles", "username"}
			if !reflect.DeepEqual(keys, want) {
				t.Fatalf("row keys %v", keys)
			}
			if string(row["request_data"]) != `{"n":1,"password":"[REDACTED]"}` || string(row["timestamp"]) != `"2026-03-01T10:04:00Z"` ||
				string(row["error_message"]) != "null" || string(row["user_roles"]) != `["get-authors"]` {
				t.Fatalf("row %s", wire(t, rows[0]))
			}
		})

		t.Run("defaults", func(t *testing.T) {
			r := p.Handle(ctx, auditReq(`{}`, "admin"))
			if r.Status != StatusOK || len(r.Data.([]audit.Entry)) != 5 ||
				wire(t, r.Meta) != `{"page":1,"per_page":20,"total":5,"pages":1,"next_cursor":null,"has_more":false}` {
				t.Fatalf("%+v %s", r, wire(t, r.Meta))
			}
		})

		t.Run("filters", func(t *testing.T) {
			cases := []struct {
				filters string
				want    []string
			}{
				{`{"user_id":"alice"}`, []string{"req-4", "req-2", "req-0"}},
				{`{"action_type":"ACTION_1"}`, []string{"req-3", "req-1"}},
				{`{"outcome":"permission_denied"}`, []string{"req-1"}},
				{`{"user_id":"alice","outcome":"success"}`, []string{"req-4", "req-0"}},
				{`{"since":"2026-03-01T10:01:00Z","until":"2026-03-01T10:03:00Z"}`, []string{"req-2", "req-1"}},
				{`{"since":"2026-03-01t11:02:00+01:00"}`, []string{"req-4", "req-3", "req-2"}},
				{`{"until":"2026-03-01T10:00:00.000001Z"}`, []string{"req-0"}},
				{`{"user_id":"nobody"}`, []string{}},
			}
			for _, tc := range cases {
				r := p.Handle(ctx, auditReq(`{"filters":`+tc.filters+`}`, "admin"))
				if r.Status != StatusOK {
					t.Fatalf("%s: %+v", tc.filters, r)
				}
				rows := r.Data.([]audit.Entry)
				got := make([]string, 0, len(rows))
				for _, e := range rows {
					got = append(got, e.RequestID)
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("%s: got %v, want %v", tc.filters, got, tc.want)
				}
				if len(rows) == 0 && wire(t, r.Data) != "[]" {
					t.Errorf("%s: empty data encodes as %s", tc.filters, wire(t, r.Data))
				}
			}
		})

		t.Run("one row by id", func(t *testing.T) {
			list := p.Handle(ctx, auditReq(`{"per_page":1}`, "admin")).Data.([]audit.Entry)
			r := p.Handle(ctx, auditReq(fmt.Sprintf(`{"id":%d}`, list[0].ID), "admin"))
			if r.Status != StatusOK || r.Data.(audit.Entry).RequestID != "req-4" || r.Meta != nil {
				t.Fatalf("%+v", r)
			}
			r = p.Handle(ctx, auditReq(`{"id":999999}`, "admin"))
			if r.Status != StatusError || r.Msg != "Audit log entry with ID 999999 not found" || !errors.Is(r.Kind, ErrNotFound) {
				t.Fatalf("missing id: %+v", r)
			}
		})

		t.Run("permission denied without admin", func(t *testing.T) {
			r := p.Handle(ctx, auditReq(`{}`, "get-authors", "create-author"))
			if r.Status != StatusPermissionDenied || r.Msg != "Permission denied" ||
				!reflect.DeepEqual(r.Data, MissingRoles{Missing: []string{"admin"}}) {
				t.Fatalf("%+v", r)
			}
			// RBAC comes before the schema.
			if r := p.Handle(ctx, auditReq(`{"per_page":0}`)); r.Status != StatusPermissionDenied {
				t.Fatalf("%+v", r)
			}
		})

		t.Run("invalid data", func(t *testing.T) {
			cases := []struct{ data, path string }{
				{`{"page":0}`, "/page"},
				{`{"page":"1"}`, "/page"},
				{`{"per_page":0}`, "/per_page"},
				{`{"per_page":101}`, "/per_page"},
				{`{"filters":{"outcome":"ok"}}`, "/filters/outcome"},
				{`{"filters":{"name":"x"}}`, "/filters"},
				{`{"filters":{"user_id":5}}`, "/filters/user_id"},
				{`{"filters":{"since":"yesterday"}}`, "/filters/since"},
				{`{"filters":{"since":"2026-03-01"}}`, "/filters/since"},
				{`{"filters":{"until":"2026-03-01T25:00:00Z"}}`, "/filters/until"},
				{`{"filters":{"since":"2026-03-02T00:00:00Z","until":"2026-03-01T00:00:00Z"}}`, "/filters/until"},
				{`{"id":0}`, "/id"},
				{`{"id":1,"page":2}`, "/id"},
				{`{"id":1,"filters":{}}`, "/id"},
			}
			for _, tc := range cases {
				r := p.Handle(ctx, auditReq(tc.data, "admin"))
				if r.Status != StatusInvalidData || r.Msg != "Invalid data" || !errors.Is(r.Kind, ErrInvalid) {
					t.Errorf("%s: %+v", tc.data, r)
					continue
				}
				errs := r.Data.(InvalidData).Errors
				if len(errs) == 0 || errs[0].Path != tc.path {
					t.Errorf("%s: errors %+v, want path %s", tc.data, errs, tc.path)
				}
			}
		})

		t.Run("database error", func(t *testing.T) {
			closed := storetest.NewDB(t, storetest.SQLiteURL(t))
			_ = closed.Close()
			q := auditPipeline(t, closed)
			for _, data := range []string{`{}`, `{"id":1}`} {
				r := q.Handle(ctx, auditReq(data, "admin"))
				if r.Status != StatusError || r.Msg != "Database error occurred" || !errors.Is(r.Kind, ErrDatabase) {
					t.Fatalf("%s: %+v", data, r)
				}
			}
		})
	})
}
