-- AUTOINCREMENT: ids are never reused (plain INTEGER PRIMARY KEY may reuse the largest id after
-- a delete), so cursor pagination (id > last) never skips a row.
CREATE TABLE authors (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL
);
--bun:split
CREATE UNIQUE INDEX authors_name_key ON authors (name);
