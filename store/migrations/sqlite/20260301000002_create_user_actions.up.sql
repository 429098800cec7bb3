-- The audit log (PROTOCOL.md "Audit rows"). Append-only: rows are inserted in batches by
-- store/audit.Writer and never updated.
-- "timestamp" is TEXT as bun writes time.Time: UTC, '2006-01-02 15:04:05.999999+00:00'. One
-- zone and one layout make text order the same as time order, so ORDER BY and range filters
-- work on the column as stored. user_roles and request_data hold JSON text.
-- AUTOINCREMENT: ids are never reused, so id stays a stable tie-breaker and address.
CREATE TABLE user_actions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    "timestamp"     TEXT NOT NULL,
    user_id         TEXT NOT NULL DEFAULT '',
    username        TEXT NOT NULL DEFAULT '',
    user_roles      TEXT NOT NULL DEFAULT '[]',
    action_type     TEXT NOT NULL DEFAULT '',
    resource        TEXT NOT NULL DEFAULT '',
    outcome         TEXT NOT NULL CHECK (outcome IN ('success', 'error', 'permission_denied')),
    ip_address      TEXT NOT NULL DEFAULT '',
    user_agent      TEXT NOT NULL DEFAULT '',
    request_id      TEXT NOT NULL DEFAULT '',
    request_data    TEXT NOT NULL DEFAULT 'null',
    response_status INTEGER NOT NULL DEFAULT 0,
    error_message   TEXT,
    duration_ms     REAL NOT NULL DEFAULT 0
);
--bun:split
-- Listing is newest first with id as the tie-breaker: ORDER BY "timestamp" DESC, id DESC.
CREATE INDEX user_actions_timestamp_idx ON user_actions ("timestamp" DESC, id DESC);
--bun:split
CREATE INDEX user_actions_user_id_timestamp_idx ON user_actions (user_id, "timestamp" DESC, id DESC);
--bun:split
CREATE INDEX user_actions_action_type_idx ON user_actions (action_type);
--bun:split
CREATE INDEX user_actions_outcome_idx ON user_actions (outcome);
