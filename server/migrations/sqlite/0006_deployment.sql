-- One row: a random id for this data directory (PostgreSQL's twin names a deployment's
-- Redis channels; kept here too so both stores answer the same question).
CREATE TABLE deployment (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    id         TEXT NOT NULL
);
INSERT INTO deployment (singleton, id) VALUES (1, lower(hex(randomblob(16))));
