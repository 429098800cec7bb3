DROP TABLE IF EXISTS switchboard_outbox_dead;
--bun:split
DROP TABLE IF EXISTS switchboard_outbox;
--bun:split
DROP FUNCTION IF EXISTS switchboard_outbox_notify();
