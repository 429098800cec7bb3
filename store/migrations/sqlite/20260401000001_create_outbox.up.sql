-- The transactional outbox (docs/producers.md), as in the PostgreSQL migration; SQLite has no
-- LISTEN/NOTIFY, so the relay polls (and is woken in-process by the server's own writes).
-- created_at is Unix milliseconds. AUTOINCREMENT: ids are never reused, so id order is
-- insertion order, which on SQLite (one writer at a time) is also commit order.
CREATE TABLE switchboard_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    topic           TEXT,
    pkg_id          INTEGER NOT NULL,
    data            TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT NOT NULL DEFAULT (lower(hex(randomblob(16)))),
    created_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
--bun:split
CREATE TABLE switchboard_outbox_dead (
    id              INTEGER PRIMARY KEY,
    topic           TEXT,
    pkg_id          INTEGER NOT NULL,
    data            TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    dead_at         INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    reason          TEXT NOT NULL
);
