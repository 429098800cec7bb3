package audit_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"switchboard/store"
	"switchboard/store/audit"
	"switchboard/store/storetest"
)

var t0 = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

// seed writes entries through a Writer (closed before returning, so all are in the table).
func seed(t *testing.T, db *store.DB, entries ...audit.Entry) {
	t.Helper()
	w := audit.NewWriter(db, audit.WriterConfig{BatchSize: 1, FlushInterval: time.Hour})
	for _, e := range entries {
		w.Record(e) // BatchSize 1: inserted one by one, in this order, so ids follow it
	}
	closeWriter(t, w)
}

func at(user, action, outcome string, ts time.Time) audit.Entry {
	e := entry(user)
	e.ActionType, e.Outcome, e.Timestamp, e.RequestID = action, outcome, ts, ts.Format(time.RFC3339Nano)
	return e
}

func ids(es []audit.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.RequestID
	}
	return out
}

func TestRepoNewestFirstAndFilters(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		ctx := context.Background()
		// Timestamps of different text lengths (whole seconds, .5, .123456) and one tie, inserted
		// out of time order: the order must be by time, not by insertion or text length.
		ts := []time.Time{
			t0.Add(2 * time.Second),           // [0]
			t0,                                // [1]
			t0.Add(500 * time.Millisecond),    // [2]
			t0.Add(123456 * time.Microsecond), // [3]
			t0.Add(2 * time.Second),           // [4] ties [0]; larger id comes first
			t0.Add(time.Second + 999999*time.Microsecond),   // [5]
			t0.Add(-time.Hour),                              // [6]
			t0.Add(24*time.Hour + 7*time.Microsecond + 999), // [7] sub-microsecond part dropped
		}
		seed(t, db,
			at("alice", "GET_AUTHORS", audit.OutcomeSuccess, ts[0]),
			at("bob", "CREATE_AUTHOR", audit.OutcomeError, ts[1]),
			at("alice", "CREATE_AUTHOR", audit.OutcomeDenied, ts[2]),
			at("carol", "GET_AUTHORS", audit.OutcomeSuccess, ts[3]),
			at("bob", "GET_AUDIT_LOGS", audit.OutcomeDenied, ts[4]),
			at("alice", "GET_AUTHORS", audit.OutcomeError, ts[5]),
			at("carol", "LOGIN", audit.OutcomeSuccess, ts[6]),
			at("alice", "LOGIN", audit.OutcomeSuccess, ts[7]),
		)
		name := func(i int) string { return ts[i].Format(time.RFC3339Nano) }
		r := audit.NewRepo(db)
		list := func(f audit.Filter) []string {
			t.Helper()
			got, meta, err := r.List(ctx, f, 1, 100)
			if err != nil {
				t.Fatal(err)
			}
			if meta.Total != len(got) {
				t.Fatalf("meta.Total %d for %d rows", meta.Total, len(got))
			}
			return ids(got)
		}
		want := func(idx ...int) []string {
			out := make([]string, len(idx))
			for i, j := range idx {
				out[i] = name(j)
			}
			return out
		}
		since, until := t0.Add(123456*time.Microsecond), t0.Add(2*time.Second)
		cases := []struct {
			name string
			f    audit.Filter
			want []string
		}{
			{"all, newest first", audit.Filter{}, want(7, 4, 0, 5, 2, 3, 1, 6)},
			{"user", audit.Filter{UserID: "alice"}, want(7, 0, 5, 2)},
			{"action", audit.Filter{ActionType: "GET_AUTHORS"}, want(0, 5, 3)},
			{"outcome", audit.Filter{Outcome: audit.OutcomeDenied}, want(4, 2)},
			{"user and outcome", audit.Filter{UserID: "alice", Outcome: audit.OutcomeSuccess}, want(7, 0)},
			{"since is inclusive", audit.Filter{Since: &since}, want(7, 4, 0, 5, 2, 3)},
			{"until is exclusive", audit.Filter{Until: &until}, want(5, 2, 3, 1, 6)},
			{"range", audit.Filter{Since: &since, Until: &until}, want(5, 2, 3)},
			{"range in another zone", audit.Filter{Since: ptr(since.In(time.FixedZone("X", -5*3600)))}, want(7, 4, 0, 5, 2, 3)},
			{"empty range", audit.Filter{Since: &until, Until: &since}, want()},
			{"no match", audit.Filter{UserID: "nobody"}, want()},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				got := list(tc.f)
				if fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Fatalf("got  %v\nwant %v", got, tc.want)
				}
			})
		}
		// The tie is broken by id, newest (largest) first.
		all, _, _ := r.List(ctx, audit.Filter{}, 1, 100)
		if all[1].ID <= all[2].ID {
			t.Fatalf("tie not ordered by id desc: %d then %d", all[1].ID, all[2].ID)
		}
		// A sub-microsecond part is dropped when recorded, and a filter at the stored instant matches.
		if stored := all[0].Timestamp; !stored.Equal(ts[7].Truncate(time.Microsecond)) {
			t.Fatalf("stored %v for %v", stored, ts[7])
		}
		exact := ts[7].Truncate(time.Microsecond)
		if got := list(audit.Filter{Since: &exact}); len(got) != 1 {
			t.Fatalf("since = stored instant: %v", got)
		}
	})
}

func ptr[T any](v T) *T { return &v }

func TestRepoPagination(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		ctx := context.Background()
		var es []audit.Entry
		for i := range 5 {
			es = append(es, at("u", "A", audit.OutcomeSuccess, t0.Add(time.Duration(i)*time.Minute)))
		}
		seed(t, db, es...)
		r := audit.NewRepo(db)
		cases := []struct {
			page, perPage int
			meta          store.PageMeta
			first         int // index into es of the first row, -1 for none
			rows          int
		}{
			{1, 2, store.PageMeta{Page: 1, PerPage: 2, Total: 5, Pages: 3, HasMore: true}, 4, 2},
			{2, 2, store.PageMeta{Page: 2, PerPage: 2, Total: 5, Pages: 3, HasMore: true}, 2, 2},
			{3, 2, store.PageMeta{Page: 3, PerPage: 2, Total: 5, Pages: 3, HasMore: false}, 0, 1},
			{4, 2, store.PageMeta{Page: 4, PerPage: 2, Total: 5, Pages: 3, HasMore: false}, -1, 0},
			{1_000_000_000, 100, store.PageMeta{Page: 1_000_000_000, PerPage: 100, Total: 5, Pages: 1}, -1, 0},
			{0, 0, store.PageMeta{Page: 1, PerPage: 20, Total: 5, Pages: 1}, 4, 5},
			{-3, 5, store.PageMeta{Page: 1, PerPage: 5, Total: 5, Pages: 1}, 4, 5},
			{1, 1000, store.PageMeta{Page: 1, PerPage: 100, Total: 5, Pages: 1}, 4, 5},
		}
		for _, tc := range cases {
			got, meta, err := r.List(ctx, audit.Filter{}, tc.page, tc.perPage)
			if err != nil {
				t.Fatal(err)
			}
			if meta.NextCursor != nil || meta != tc.meta {
				t.Errorf("page %d/%d: meta %+v, want %+v", tc.page, tc.perPage, meta, tc.meta)
			}
			if got == nil || len(got) != tc.rows {
				t.Errorf("page %d/%d: %d rows (nil %v), want %d", tc.page, tc.perPage, len(got), got == nil, tc.rows)
				continue
			}
			if tc.first >= 0 && !got[0].Timestamp.Equal(es[tc.first].Timestamp) {
				t.Errorf("page %d/%d starts at %v, want %v", tc.page, tc.perPage, got[0].Timestamp, es[tc.first].Timestamp)
			}
		}
		// An empty table: zero pages, an empty (non-nil) list.
		got, meta, err := r.List(ctx, audit.Filter{UserID: "none"}, 1, 10)
		if err != nil || got == nil || len(got) != 0 || meta != (store.PageMeta{Page: 1, PerPage: 10}) {
			t.Fatalf("empty: %v %+v %v", got, meta, err)
		}
	})
}

func TestRepoGet(t *testing.T) {
	t.Parallel()
	storetest.ForEachBackend(t, func(t *testing.T, url string) {
		db := storetest.NewDB(t, url)
		ctx := context.Background()
		seed(t, db, at("alice", "LOGIN", audit.OutcomeSuccess, t0))
		r := audit.NewRepo(db)
		all, _, err := r.List(ctx, audit.Filter{}, 1, 1)
		if err != nil || len(all) != 1 {
			t.Fatalf("List: %v %v", all, err)
		}
		e, err := r.Get(ctx, all[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		if e.ID != all[0].ID || e.UserID != "alice" || !e.Timestamp.Equal(t0) || e.Timestamp.Location() != time.UTC {
			t.Fatalf("Get = %+v", e)
		}
		if _, err := r.Get(ctx, all[0].ID+1000); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get missing: %v, want ErrNotFound", err)
		}
		_ = db.Close()
		if _, err := r.Get(ctx, 1); !errors.Is(err, store.ErrDatabase) {
			t.Fatalf("Get on a closed database: %v, want ErrDatabase", err)
		}
		if _, _, err := r.List(ctx, audit.Filter{}, 1, 10); !errors.Is(err, store.ErrDatabase) {
			t.Fatalf("List on a closed database: %v, want ErrDatabase", err)
		}
	})
}
