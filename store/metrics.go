package store

import (
	"context"
	"strings"

	"github.com/VictoriaMetrics/metrics"
	"github.com/uptrace/bun"
)

// Observe records db_query_duration_seconds{operation} for every query on d into set. The
// operation label is the SQL verb from a fixed list (other verbs count as "other"), so the
// label set stays bounded whatever the queries are.
func (d *DB) Observe(set *metrics.Set) {
	d.Bun.AddQueryHook(queryMetrics{set: set})
}

type queryMetrics struct{ set *metrics.Set }

func (queryMetrics) BeforeQuery(ctx context.Context, _ *bun.QueryEvent) context.Context { return ctx }

func (q queryMetrics) AfterQuery(_ context.Context, e *bun.QueryEvent) {
	op := strings.ToLower(operation(e))
	switch op {
	case "select", "insert", "update", "delete", "begin", "commit", "rollback":
	default:
		op = "other"
	}
	q.set.GetOrCreatePrometheusHistogram(`db_query_duration_seconds{operation="` + op + `"}`).UpdateDuration(e.StartTime)
}

// operation is the SQL verb of a query. Bun names every raw query SELECT, so for those the verb
// is read from the text, past the BEGIN that the author writes send along with their statement
// (authors.go: write).
func operation(e *bun.QueryEvent) string {
	if _, raw := e.IQuery.(*bun.RawQuery); !raw {
		return e.Operation()
	}
	q := strings.TrimSpace(e.Query)
	if len(q) > 6 && strings.EqualFold(q[:6], "BEGIN;") {
		q = strings.TrimSpace(q[6:])
	}
	verb, _, _ := strings.Cut(q, " ")
	return verb
}
