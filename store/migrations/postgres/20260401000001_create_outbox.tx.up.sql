-- The transactional outbox (docs/producers.md). A producer inserts a row in the same
-- transaction as its own change; Switchboard's relay publishes committed rows on the bus in id
-- order and deletes them. topic NULL or '' = every connection. data is json (not jsonb): the
-- text arrives as written, and a syntax error fails the producer's own INSERT. The idempotency
-- key names the event for the bus's dedup window: a row relayed twice (a relay that died between
-- publishing and deleting it) reaches subscribers once. clock_timestamp(), not now(): the age of
-- a row (relay lag) counts from its INSERT, not from the start of its transaction.
CREATE TABLE switchboard_outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           TEXT,
    pkg_id          BIGINT NOT NULL,
    data            JSON NOT NULL DEFAULT '{}',
    idempotency_key TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
--bun:split
-- Rows the relay refused (topic not allowed, data not an object, too large...), with why.
CREATE TABLE switchboard_outbox_dead (
    id              BIGINT PRIMARY KEY,
    topic           TEXT,
    pkg_id          BIGINT NOT NULL,
    data            TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    dead_at         TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    reason          TEXT NOT NULL
);
--bun:split
-- One notification per inserting statement wakes the relay (a slow poll is the safety net).
-- PostgreSQL delivers it at commit, and never for a transaction that rolled back. A transaction
-- that set switchboard.outbox_notify to 'off' (the relaying node's own writes, which wake their
-- relay in process) sends none: commits that notify are serialised by PostgreSQL.
CREATE FUNCTION switchboard_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('switchboard.outbox_notify', true), '') <> 'off' THEN
        PERFORM pg_notify('switchboard_outbox', '');
    END IF;
    RETURN NULL;
END
$$;
--bun:split
CREATE TRIGGER switchboard_outbox_notify AFTER INSERT ON switchboard_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION switchboard_outbox_notify();
