package outbox

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect"
)

// Table names, for producers' SQL and the docs.
const (
	Table     = "switchboard_outbox"
	DeadTable = "switchboard_outbox_dead"
	// Channel is the NOTIFY channel the table's trigger signals on PostgreSQL.
	Channel = "switchboard_outbox"
)

// leadLockKey is the pg_advisory_lock key of the relay's leadership ("SwitchOb").
const leadLockKey int64 = 0x5377_6974_6368_4f62

// MaxKeyLen bounds an idempotency key (Insert refuses longer ones; the relay dead-letters them).
const MaxKeyLen = 200

// Event is what a producer writes: a broadcast as POST /api/broadcast takes it, and an optional
// idempotency key (empty: the table's default, a random one).
type Event struct {
	Topic string          // "" = every connection
	PkgID int             // 0..2147483647
	Data  json.RawMessage // a JSON object; nil = {}
	Key   string          // the event's identity in the bus's dedup window; "" = random
	// Quiet inserts without the NOTIFY that wakes the relay (PostgreSQL): for a node that
	// holds the relay's lease and wakes it in process. Commits that notify are serialised by
	// PostgreSQL, so a writer that needs no notification should not send one.
	Quiet bool
}

// Row is a waiting row as the relay reads it. PkgID and Data are the text the database holds:
// the relay validates them, so a row a producer got wrong is refused, never misread. Size is
// the data's length in bytes; Data is left empty when Size is over Pending's maxData.
type Row struct {
	ID    int64  `bun:"id"`
	Topic string `bun:"topic"`
	PkgID string `bun:"pkg_id"`
	Data  string `bun:"data"`
	Key   string `bun:"idempotency_key"`
	Size  int64  `bun:"size"`
}

// Outbox reads and writes the outbox tables of one database.
type Outbox struct {
	db *bun.DB
}

// New returns the outbox over db (store.DB.Bun, migrated: the tables come with the
// migrations).
func New(db *bun.DB) *Outbox { return &Outbox{db: db} }

// Postgres reports whether the database is PostgreSQL (LISTEN/NOTIFY, advisory locks).
func (o *Outbox) Postgres() bool { return o.db.Dialect().Name() == dialect.PG }

// Insert writes e into the outbox through db: a transaction (bun.Tx) makes it part of the
// caller's change, committed or rolled back with it. It checks only what the database itself
// cannot (pkg_id range, data a JSON object, key length); the relay checks the rest (the topic
// against the RBAC policy, the size) and dead-letters what it refuses.
func Insert(ctx context.Context, db bun.IDB, e Event) error {
	q, args, err := InsertQuery(db.Dialect().Name(), e)
	if err != nil {
		return err
	}
	if _, err := db.NewRaw(q, args...).Exec(ctx); err != nil {
		return fmt.Errorf("%w: outbox insert: %w", ErrDatabase, err)
	}
	return nil
}

// InsertQuery returns Insert's statement for a database of dialect d, with its arguments (bun
// placeholders), after Insert's checks: for a caller that sends it together with other
// statements of its transaction in one query string (one round trip).
func InsertQuery(d dialect.Name, e Event) (string, []any, error) {
	if e.PkgID < 0 || e.PkgID > 1<<31-1 {
		return "", nil, fmt.Errorf("%w: pkg_id %d not in 0..2147483647", ErrInvalidEvent, e.PkgID)
	}
	if len(e.Key) > MaxKeyLen {
		return "", nil, fmt.Errorf("%w: idempotency key longer than %d bytes", ErrInvalidEvent, MaxKeyLen)
	}
	data := e.Data
	if len(data) == 0 {
		data = json.RawMessage("{}")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil || obj == nil {
		return "", nil, fmt.Errorf("%w: data is not a JSON object", ErrInvalidEvent)
	}
	var topic any // NULL: every connection
	if e.Topic != "" {
		topic = e.Topic
	}
	cols, vals, args := "topic, pkg_id, data", "?, ?, ?", []any{topic, e.PkgID, string(data)}
	if e.Key != "" {
		cols, vals, args = cols+", idempotency_key", vals+", ?", append(args, e.Key)
	}
	// Quiet: the setting is made in the same statement, before its rows (and so before the
	// statement trigger), and lasts until the transaction ends.
	if e.Quiet && d == dialect.PG {
		return "WITH quiet AS (SELECT set_config('switchboard.outbox_notify', 'off', true)) " +
			"INSERT INTO " + Table + " (" + cols + ") SELECT " + vals + " FROM quiet", args, nil
	}
	return "INSERT INTO " + Table + " (" + cols + ") VALUES (" + vals + ")", args, nil
}

// Pending returns waiting rows with id > after, in id order: at most limit rows, each of them
// starting before budget bytes of data have been read (so at most budget plus one row's data;
// the first row always comes). A row whose data is larger
// than maxData comes with its Size and without its Data, so that no row can make the relay
// hold more than it would publish. Every column is read as text, so no value a producer wrote
// can make the read itself fail (SQLite keeps whatever type it was given).
func (o *Outbox) Pending(ctx context.Context, after int64, limit int, maxData, budget int64) ([]Row, error) {
	size := "octet_length(CAST(data AS TEXT))"
	if !o.Postgres() {
		size = "length(CAST(data AS BLOB))"
	}
	// The window runs over the limited rows only (innermost query), not over the backlog.
	q := "SELECT id, topic, pkg_id, CASE WHEN size > ? THEN '' ELSE data END AS data, idempotency_key, size FROM (" +
		"SELECT r.*, sum(CASE WHEN size > ? THEN 0 ELSE size END) OVER (ORDER BY id) AS run FROM (" +
		"SELECT id, COALESCE(CAST(topic AS TEXT), '') AS topic, COALESCE(CAST(pkg_id AS TEXT), '') AS pkg_id, " +
		"COALESCE(CAST(data AS TEXT), '') AS data, COALESCE(CAST(idempotency_key AS TEXT), '') AS idempotency_key, " +
		"COALESCE(" + size + ", 0) AS size FROM " + Table + " WHERE id > ? ORDER BY id LIMIT ?) r) w " +
		"WHERE run - (CASE WHEN size > ? THEN 0 ELSE size END) < ? ORDER BY id"
	rows := make([]Row, 0, limit)
	err := o.db.NewRaw(q, maxData, maxData, after, limit, maxData, budget).Scan(ctx, &rows)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: outbox read: %w", ErrDatabase, err)
	}
	return rows, nil
}

// Delete removes the rows with the given ids (the relay published them).
func (o *Outbox) Delete(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := o.db.NewRaw("DELETE FROM "+Table+" WHERE id IN (?)", bun.In(ids)).Exec(ctx); err != nil {
		return fmt.Errorf("%w: outbox delete: %w", ErrDatabase, err)
	}
	return nil
}

// DeadLetter moves row id to the dead-letter table with reason, in one transaction.
func (o *Outbox) DeadLetter(ctx context.Context, id int64, reason string) error {
	if len(reason) > 1000 {
		reason = reason[:1000]
	}
	reason = strings.ToValidUTF8(reason, "?")
	err := o.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.NewRaw("INSERT INTO "+DeadTable+" (id, topic, pkg_id, data, idempotency_key, created_at, reason) "+
			"SELECT id, topic, pkg_id, CAST(data AS TEXT), idempotency_key, created_at, ? FROM "+Table+" WHERE id = ? "+
			"ON CONFLICT (id) DO NOTHING", reason, id).Exec(ctx); err != nil {
			return err
		}
		_, err := tx.NewRaw("DELETE FROM "+Table+" WHERE id = ?", id).Exec(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("%w: outbox dead-letter: %w", ErrDatabase, err)
	}
	return nil
}

// OldestAge returns how long the oldest waiting row has waited (0 when none waits), by the
// database's clock, so nodes' clocks do not matter.
func (o *Outbox) OldestAge(ctx context.Context) (time.Duration, error) {
	q := "SELECT EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8 FROM " + Table + " ORDER BY id LIMIT 1"
	if !o.Postgres() {
		q = "SELECT ((julianday('now') - 2440587.5) * 86400000 - created_at) / 1000.0 FROM " + Table + " ORDER BY id LIMIT 1"
	}
	var secs sql.NullFloat64
	err := o.db.QueryRowContext(ctx, q).Scan(&secs)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !secs.Valid) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%w: outbox age: %w", ErrDatabase, err)
	}
	return time.Duration(max(secs.Float64, 0) * float64(time.Second)), nil
}

// DeadRow is a row of the dead-letter table.
type DeadRow struct {
	ID     int64  `bun:"id"`
	Topic  string `bun:"topic"`
	PkgID  string `bun:"pkg_id"`
	Data   string `bun:"data"`
	Key    string `bun:"idempotency_key"`
	Reason string `bun:"reason"`
}

// Dead returns the dead-lettered rows, oldest id first (for tests and operators).
func (o *Outbox) Dead(ctx context.Context) ([]DeadRow, error) {
	var rows []DeadRow
	err := o.db.NewRaw("SELECT id, COALESCE(CAST(topic AS TEXT), '') AS topic, CAST(pkg_id AS TEXT) AS pkg_id, data, "+
		"idempotency_key, reason FROM "+DeadTable+" ORDER BY id").Scan(context.WithoutCancel(ctx), &rows)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: outbox dead rows: %w", ErrDatabase, err)
	}
	return rows, nil
}

// Lease is the relay's leadership, held until Release or until its connection fails.
type Lease struct {
	conn *bun.Conn // PostgreSQL: the session holding the advisory lock; nil on SQLite
}

// Lead tries to become the relay: (lease, nil) when this caller leads now, (nil, nil) when
// another session does. It never waits for the lock.
func (o *Outbox) Lead(ctx context.Context) (*Lease, error) {
	if !o.Postgres() {
		return &Lease{}, nil
	}
	conn, err := o.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: relay lock connection: %w", ErrDatabase, err)
	}
	var ok bool
	if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock(?)", leadLockKey).Scan(&ok); err != nil {
		dropConn(&conn)
		return nil, fmt.Errorf("%w: relay lock: %w", ErrDatabase, err)
	}
	if !ok {
		_ = conn.Close()
		return nil, nil
	}
	return &Lease{conn: &conn}, nil
}

// Check confirms that the lease's session is alive, and so still holds the lock; an error
// (ErrLeaseLost) means another node may be relaying already: stop and Release.
func (l *Lease) Check(ctx context.Context) error {
	if l == nil || l.conn == nil {
		return nil
	}
	if err := l.conn.PingContext(ctx); err != nil {
		return fmt.Errorf("%w: %w", ErrLeaseLost, err)
	}
	return nil
}

// Release gives the leadership up: the lock is released and its session closed (not returned
// to the pool, so no other caller inherits a session that might still hold the lock).
func (l *Lease) Release() {
	if l == nil || l.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, _ = l.conn.ExecContext(ctx, "SELECT pg_advisory_unlock(?)", leadLockKey)
	cancel()
	dropConn(l.conn)
	l.conn = nil
}

// dropConn closes conn and makes the pool discard the underlying connection.
func dropConn(conn *bun.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

// ParsePkgID reads a row's pkg_id text as the relay validates it: a whole number in 0..2^31-1.
func ParsePkgID(s string) (int, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 || n > 1<<31-1 {
		return 0, fmt.Errorf("pkg_id %.40q is not a whole number in 0..2147483647", s)
	}
	return int(n), nil
}
