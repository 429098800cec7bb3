package store

import (
	"context"
	"database/sql/driver"
	"fmt"
	"strings"
	"time"

	"github.com/uptrace/bun"

	"switchboard/store/outbox"
)

// Author is a row of the authors table; its JSON form is the wire form of pkg_id 1-5.
type Author struct {
	bun.BaseModel `bun:"table:authors,alias:a"`

	ID   int64  `bun:"id,pk,autoincrement" json:"id"`
	Name string `bun:"name,notnull" json:"name"`
}

// AuthorFilter narrows List and Page; nil fields do not filter. Name matches as a
// case-insensitive substring in which %, _ and \ are literal characters. (On SQLite, case
// folding covers ASCII letters only; PostgreSQL folds per the database's locale.)
type AuthorFilter struct {
	ID   *int64
	Name *string
}

// Authors is the authors repository. It is safe for concurrent use.
type Authors struct {
	db     *DB
	events AuthorEvents
}

// NewAuthors returns the authors repository over d.
func NewAuthors(d *DB) *Authors {
	return &Authors{db: d}
}

// Operations of AuthorEvents.Event.
const (
	AuthorCreated = "created"
	AuthorUpdated = "updated"
	AuthorDeleted = "deleted"
)

// AuthorEvents makes every write also insert its domain event into the outbox
// (store/outbox), in the same transaction: the event exists if and only if the change
// committed.
type AuthorEvents struct {
	// Event returns the event row of a change: op is AuthorCreated, AuthorUpdated or
	// AuthorDeleted; a deleted author carries only its ID.
	Event func(op string, a Author) outbox.Event
	// Committed, when set, is called after a write with its event committed (to wake the
	// relay).
	Committed func()
	// Quiet, when set and true at the write, inserts the event without the NOTIFY (this node
	// relays the outbox and Committed wakes it; see outbox.Event.Quiet).
	Quiet func() bool
}

// WithEvents returns a repository over the same database whose writes insert their events.
func (r *Authors) WithEvents(e AuthorEvents) *Authors {
	return &Authors{db: r.db, events: e}
}

// List returns every author matching f, ordered by id (an empty slice, never nil).
func (r *Authors) List(ctx context.Context, f AuthorFilter) ([]Author, error) {
	out := make([]Author, 0)
	q := r.db.Bun.NewSelect().Model(&out).Apply(r.filter(f)).OrderExpr("a.id ASC")
	if err := q.Scan(ctx); err != nil {
		return nil, databaseError("list authors", err)
	}
	return out, nil
}

// Page returns one page of the authors matching f, ordered by id; see PageRequest and PageMeta
// for the two modes. A cursor this package did not produce is ErrInvalidCursor.
func (r *Authors) Page(ctx context.Context, f AuthorFilter, p PageRequest) ([]Author, PageMeta, error) {
	p = p.normalized()
	if p.Cursor != nil {
		return r.cursorPage(ctx, f, p)
	}
	return r.offsetPage(ctx, f, p)
}

func (r *Authors) offsetPage(ctx context.Context, f AuthorFilter, p PageRequest) ([]Author, PageMeta, error) {
	total, err := r.db.Bun.NewSelect().Model((*Author)(nil)).Apply(r.filter(f)).Count(ctx)
	if err != nil {
		return nil, PageMeta{}, databaseError("count authors", err)
	}
	pages := pageCount(int(total), p.PerPage)
	meta := PageMeta{Page: p.Page, PerPage: p.PerPage, Total: int(total), Pages: pages, HasMore: p.Page < pages}

	out := make([]Author, 0)
	// Pages past the end are empty: skip the query (this also keeps OFFSET below total, so a
	// huge page number cannot overflow it).
	if p.Page > pages {
		return out, meta, nil
	}
	q := r.db.Bun.NewSelect().Model(&out).Apply(r.filter(f)).OrderExpr("a.id ASC").
		Limit(int64(p.PerPage)).Offset(int64(p.Page-1) * int64(p.PerPage))
	if err := q.Scan(ctx); err != nil {
		return nil, PageMeta{}, databaseError("page authors", err)
	}
	return out, meta, nil
}

func (r *Authors) cursorPage(ctx context.Context, f AuthorFilter, p PageRequest) ([]Author, PageMeta, error) {
	var after int64
	if *p.Cursor != "" {
		id, err := decodeCursor(*p.Cursor)
		if err != nil {
			return nil, PageMeta{}, err
		}
		after = id
	}
	out := make([]Author, 0, p.PerPage+1)
	// One extra row tells whether another page exists without counting.
	q := r.db.Bun.NewSelect().Model(&out).Apply(r.filter(f)).Where("a.id > ?", after).
		OrderExpr("a.id ASC").Limit(int64(p.PerPage) + 1)
	if err := q.Scan(ctx); err != nil {
		return nil, PageMeta{}, databaseError("page authors", err)
	}
	meta := PageMeta{Page: 1, PerPage: p.PerPage}
	if len(out) > p.PerPage {
		out = out[:p.PerPage]
		next := encodeCursor(out[len(out)-1].ID)
		meta.NextCursor = &next
		meta.HasMore = true
	}
	return out, meta, nil
}

// Create inserts an author. A name that already exists is ErrConflict: the unique index
// decides, so concurrent creates of one name have exactly one winner.
func (r *Authors) Create(ctx context.Context, name string) (Author, error) {
	var a Author
	if err := r.write(ctx, &a, r.event(AuthorCreated, &a), "INSERT INTO authors (name) VALUES (?) RETURNING id, name", name); err != nil {
		return Author{}, dbError("create author", err)
	}
	return a, nil
}

// Update renames author id. A missing id is ErrNotFound; a name taken by another author is
// ErrConflict.
func (r *Authors) Update(ctx context.Context, id int64, name string) (Author, error) {
	var a Author
	err := r.write(ctx, &a, r.event(AuthorUpdated, &a), "UPDATE authors SET name = ? WHERE id = ? RETURNING id, name", name, id)
	if isNoRows(err) {
		return Author{}, fmt.Errorf("%w: author %d", ErrNotFound, id)
	}
	if err != nil {
		return Author{}, dbError("update author", err)
	}
	return a, nil
}

// Delete removes author id. A missing id is ErrNotFound.
func (r *Authors) Delete(ctx context.Context, id int64) error {
	deleted := Author{ID: id}
	err := r.write(ctx, &deleted.ID, r.event(AuthorDeleted, &deleted), "DELETE FROM authors WHERE id = ? RETURNING id", id)
	if isNoRows(err) {
		return fmt.Errorf("%w: author %d", ErrNotFound, id)
	}
	return databaseError("delete author", err)
}

// write runs one statement that returns a row (scanned into dest; sql.ErrNoRows when it
// returns none) in a transaction, so that it commits only if it finished before ctx ended.
//
// A lone statement would commit on its own: when the caller gives up on it (its deadline passes
// while the statement waits for a lock or a stalled server), the driver drops the connection,
// but the server goes on with the statement and commits it once it gets through, after the
// caller was told it failed. In a transaction the server finds the connection gone when it
// reads the COMMIT that never came, and rolls back; and COMMIT is not sent once ctx has ended.
// Only a COMMIT already sent when the deadline passes can still take effect (with the event's
// INSERT in front of it, when there is one).
//
// On PostgreSQL, BEGIN travels with the statement in one query string (one round trip less than
// database/sql's transactions: every write pays for the transaction); SQLite uses RunInTx.
//
// event, when not nil, is called after the statement succeeded (dest holds its row) and
// returns the outbox row inserted in the same transaction; on PostgreSQL its INSERT and the
// COMMIT go in one query string, so an evented write makes two round trips, as a bare one does.
func (r *Authors) write(ctx context.Context, dest any, event func() outbox.Event, query string, args ...any) error {
	if r.db.Dialect != DialectPostgres {
		err := r.db.Bun.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if err := tx.NewRaw(query, args...).Scan(ctx, dest); err != nil {
				return err
			}
			if event != nil {
				return outbox.Insert(ctx, tx, event())
			}
			return nil
		})
		if err == nil {
			r.committed()
		}
		return err
	}
	conn, err := r.db.Bun.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.NewRaw("BEGIN; "+query, args...).Scan(ctx, dest); err != nil {
		abandon(conn)
		return err
	}
	// The event's INSERT travels with the COMMIT in one query string: a write with its event
	// costs the two round trips of one without. PostgreSQL runs the statements of a query
	// string in order and stops at the first that fails, so a refused event row never commits.
	commit := "COMMIT"
	var commitArgs []any
	if event != nil {
		ev := event()
		ev.Quiet = r.events.Quiet != nil && r.events.Quiet()
		q, args, err := outbox.InsertQuery(r.db.Bun.Dialect().Name(), ev)
		if err != nil {
			abandon(conn)
			return err
		}
		commit, commitArgs = q+"; COMMIT", args
	}
	// database/sql does not send anything once ctx has ended.
	if _, err := conn.NewRaw(commit, commitArgs...).Exec(ctx); err != nil {
		abandon(conn)
		return err
	}
	r.committed()
	return nil
}

// event returns the function write calls for the outbox row of op on *a, or nil without events.
func (r *Authors) event(op string, a *Author) func() outbox.Event {
	if r.events.Event == nil {
		return nil
	}
	return func() outbox.Event { return r.events.Event(op, *a) }
}

// committed tells AuthorEvents.Committed that a write with an event committed.
func (r *Authors) committed() {
	if r.events.Event != nil && r.events.Committed != nil {
		r.events.Committed()
	}
}

// abandon ends a transaction that will not commit on a pinned connection before it goes back to
// the pool: ROLLBACK, or, when that fails, the connection is dropped. (A connection the driver
// found broken — a deadline that passed mid-statement — is dropped anyway.)
func abandon(conn bun.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), abandonTimeout)
	defer cancel()
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	}
}

// abandonTimeout bounds the ROLLBACK of a failed write; a server that does not answer within it
// loses the connection instead.
const abandonTimeout = time.Second

// filter applies f to a select over authors (alias a).
func (r *Authors) filter(f AuthorFilter) func(*bun.SelectQuery) *bun.SelectQuery {
	return func(q *bun.SelectQuery) *bun.SelectQuery {
		if f.ID != nil {
			q = q.Where("a.id = ?", *f.ID)
		}
		if f.Name != nil {
			// SQLite's LIKE is case-insensitive (ASCII); PostgreSQL needs ILIKE.
			op := "LIKE"
			if r.db.Dialect == DialectPostgres {
				op = "ILIKE"
			}
			q = q.Where("a.name "+op+" ? ESCAPE ?", "%"+escapeLike(*f.Name)+"%", `\`)
		}
		return q
	}
}

var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

// escapeLike makes every character of s match itself in a LIKE pattern with ESCAPE '\'.
func escapeLike(s string) string {
	return likeEscaper.Replace(s)
}
