DROP TABLE IF EXISTS switchboard_outbox_dead;
--bun:split
DROP TABLE IF EXISTS switchboard_outbox;
