package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"switchboard/config"
)

type auditRow struct {
	ID             int64           `json:"id"`
	UserID         string          `json:"user_id"`
	ActionType     string          `json:"action_type"`
	Resource       string          `json:"resource"`
	Outcome        string          `json:"outcome"`
	RequestData    json.RawMessage `json:"request_data"`
	ResponseStatus int             `json:"response_status"`
	ErrorMessage   *string         `json:"error_message"`
}

// auditRows reads the newest audit rows through GET /audit-logs.
func auditRows(t *testing.T, s *testServer, admin, query string) []auditRow {
	t.Helper()
	resp, body := s.do(t, "GET", "/audit-logs?per_page=100&"+query, admin, "")
	if resp.StatusCode != 200 {
		t.Fatalf("audit-logs: %d %s", resp.StatusCode, body)
	}
	var page struct {
		Items []auditRow `json:"items"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		t.Fatal(err)
	}
	return page.Items
}

func TestAuditRecordsHTTPAndWebSocket(t *testing.T) {
	// The test polls the audit log: lift the HTTP limit so polling is not refused.
	s := startServer(t, func(c *config.Config) { c.RateLimitPerMinute = 1_000_000 })
	admin := s.token(t, "auditor", "admin")
	alice := s.token(t, "alice", "get-authors", "create-author")

	if resp, body := s.do(t, "POST", "/authors", alice, `{"name":"Audited","password":"hunter2"}`); resp.StatusCode != 200 {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	if resp, _ := s.do(t, "DELETE", "/authors/1", alice, ""); resp.StatusCode != 403 {
		t.Fatalf("delete without role: %d", resp.StatusCode)
	}
	c := s.connect(t, alice)
	c.call(1, nil)
	secret := s.token(t, "alice", "get-authors")
	c.call(12, map[string]any{"token": secret})

	var rows []auditRow
	eventually(t, 5*time.Second, "audit rows for alice", func() bool {
		rows = auditRows(t, s, admin, "user_id=alice")
		return len(rows) >= 4
	})
	seen := map[string]auditRow{}
	for _, r := range rows {
		seen[r.ActionType+"/"+r.Outcome] = r
		if strings.Contains(string(r.RequestData), "hunter2") || strings.Contains(string(r.RequestData), secret) {
			t.Fatalf("secret in audit row: %s", r.RequestData)
		}
	}
	for _, want := range []string{"CREATE_AUTHOR/success", "DELETE_AUTHOR/permission_denied", "GET_AUTHORS/success", "REFRESH_TOKEN/success"} {
		if _, ok := seen[want]; !ok {
			t.Errorf("no %s row in %+v", want, rows)
		}
	}
	if r := seen["DELETE_AUTHOR/permission_denied"]; r.ResponseStatus != 403 || r.Resource != "authors" {
		t.Errorf("denied row: %+v", r)
	}
	if r := seen["REFRESH_TOKEN/success"]; !strings.Contains(string(r.RequestData), "[REDACTED]") {
		t.Errorf("token not redacted: %s", r.RequestData)
	}
	// Newest first, one row by id, and 404 for a missing one.
	if rows[0].ID < rows[len(rows)-1].ID {
		t.Errorf("not newest first: %d … %d", rows[0].ID, rows[len(rows)-1].ID)
	}
	if resp, body := s.do(t, "GET", "/audit-logs/999999", admin, ""); resp.StatusCode != 404 {
		t.Errorf("missing row: %d %s", resp.StatusCode, body)
	}
	if resp, _ := s.do(t, "GET", "/audit-logs", alice, ""); resp.StatusCode != 403 {
		t.Errorf("audit-logs without admin: %d", resp.StatusCode)
	}
	if resp, body := s.do(t, "GET", "/audit-logs?outcome=maybe", admin, ""); resp.StatusCode != 422 {
		t.Errorf("bad outcome: %d %s", resp.StatusCode, body)
	}
	a := s.connect(t, admin)
	if r := a.call(20, map[string]any{"filters": map[string]any{"user_id": "alice", "outcome": "permission_denied"}}); r.status() != 0 {
		t.Fatalf("pkg 20: %+v", r)
	} else {
		var items []auditRow
		decodeData(t, r, &items)
		if len(items) != 1 || items[0].ActionType != "DELETE_AUTHOR" {
			t.Fatalf("pkg 20 items: %+v", items)
		}
	}
}
