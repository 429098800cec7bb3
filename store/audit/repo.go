package audit

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/uptrace/bun"

	"switchboard/store"
)

// Page sizes of List (docs/protocol.md §1.4, pkg_id 20: per_page 1..100, default 20).
const (
	DefaultPerPage = store.DefaultPerPage
	MaxPerPage     = 100
)

// Filter narrows List; zero fields do not filter. UserID, ActionType and Outcome match exactly.
// The time range is half-open: Since <= timestamp < Until, so consecutive ranges never share a
// row.
type Filter struct {
	UserID     string
	ActionType string
	Outcome    string
	Since      *time.Time
	Until      *time.Time
}

// Repo reads the audit log. It is safe for concurrent use.
type Repo struct {
	db *store.DB
}

// NewRepo returns the audit log repository over db.
func NewRepo(db *store.DB) *Repo {
	return &Repo{db: db}
}

// List returns one page of the entries matching f, newest first (timestamp, then id,
// descending), and the offset-mode meta of docs/protocol.md "Pagination meta": Page and PerPage as
// used (page < 1 is 1; perPage < 1 is DefaultPerPage, above MaxPerPage it is MaxPerPage),
// Total = matching rows, Pages = ceil(Total/PerPage), NextCursor nil, HasMore = Page < Pages.
// The slice is empty, never nil, past the last page. Failures wrap store.ErrDatabase.
func (r *Repo) List(ctx context.Context, f Filter, page, perPage int) ([]Entry, store.PageMeta, error) {
	if page < 1 {
		page = 1
	}
	if perPage < 1 {
		perPage = DefaultPerPage
	}
	perPage = min(perPage, MaxPerPage)

	count, err := r.db.Bun.NewSelect().Model((*Entry)(nil)).Apply(f.apply).Count(ctx)
	if err != nil {
		return nil, store.PageMeta{}, dbError("count audit entries", err)
	}
	total := int(count)
	pages := 0
	if total > 0 {
		pages = (total-1)/perPage + 1
	}
	meta := store.PageMeta{Page: page, PerPage: perPage, Total: total, Pages: pages, HasMore: page < pages}

	out := make([]Entry, 0)
	// Past the last page: nothing to read (this also keeps OFFSET below total, so a huge page
	// number cannot overflow it).
	if page > pages {
		return out, meta, nil
	}
	err = r.db.Bun.NewSelect().Model(&out).Apply(f.apply).
		OrderExpr("ua.timestamp DESC, ua.id DESC").
		Limit(int64(perPage)).Offset(int64(page-1) * int64(perPage)).
		Scan(ctx)
	if err != nil {
		return nil, store.PageMeta{}, dbError("list audit entries", err)
	}
	for i := range out {
		normalize(&out[i])
	}
	return out, meta, nil
}

// Get returns entry id; a missing id is store.ErrNotFound.
func (r *Repo) Get(ctx context.Context, id int64) (Entry, error) {
	var e Entry
	err := r.db.Bun.NewSelect().Model(&e).Where("ua.id = ?", id).Limit(1).Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{}, fmt.Errorf("%w: audit entry %d", store.ErrNotFound, id)
	}
	if err != nil {
		return Entry{}, dbError("get audit entry", err)
	}
	normalize(&e)
	return e, nil
}

// apply adds f's conditions to a select over user_actions (alias ua).
func (f Filter) apply(q *bun.SelectQuery) *bun.SelectQuery {
	if f.UserID != "" {
		q = q.Where("ua.user_id = ?", f.UserID)
	}
	if f.ActionType != "" {
		q = q.Where("ua.action_type = ?", f.ActionType)
	}
	if f.Outcome != "" {
		q = q.Where("ua.outcome = ?", f.Outcome)
	}
	// bun writes a time as UTC text in one layout, which on SQLite (a TEXT column in that same
	// layout) compares in time order; PostgreSQL reads it as timestamptz. Truncating to
	// microseconds matches what was stored.
	if f.Since != nil {
		q = q.Where("ua.timestamp >= ?", f.Since.UTC().Truncate(time.Microsecond))
	}
	if f.Until != nil {
		q = q.Where("ua.timestamp < ?", f.Until.UTC().Truncate(time.Microsecond))
	}
	return q
}

// normalize gives read entries one form whatever the backend returned: UTC timestamps and
// non-nil roles.
func normalize(e *Entry) {
	e.Timestamp = e.Timestamp.UTC()
	if e.UserRoles == nil {
		e.UserRoles = []string{}
	}
}

func dbError(op string, err error) error {
	return fmt.Errorf("%w: %s: %w", store.ErrDatabase, op, err)
}
