-- The events table's check on `visibility` was `visibility IN ('public', 'internal',
-- 'supervisors')`. SQLite evaluates an IN over more than two constants by building a
-- temporary B-tree of them, and a CHECK is evaluated per row: every append opened a
-- temporary database, created a table in it, inserted the three strings, looked one up
-- and closed it again. Under callgrind that was about a tenth of the append thread's
-- instructions per acknowledged note (docs/benchmarks.md, "What changed"). The same rule
-- written as equalities joined by OR is evaluated in place.
--
-- SQLite cannot alter a CHECK, so the table is rebuilt (its rowids kept), then its
-- indexes. Nothing references `events` by foreign key.
CREATE TABLE events_rebuilt (
    id               TEXT PRIMARY KEY,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    supervisor_seq   INTEGER NOT NULL,
    agent_seq        INTEGER,
    public_seq       INTEGER,
    kind             TEXT NOT NULL,
    visibility       TEXT NOT NULL CHECK (
        visibility = 'public' OR visibility = 'internal' OR visibility = 'supervisors'
    ),
    actor_id         TEXT NOT NULL,
    actor_role       TEXT NOT NULL,
    actor_name       TEXT,
    client_id        TEXT,
    payload          TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    hash             BLOB NOT NULL,
    UNIQUE (conversation_id, supervisor_seq)
);
INSERT INTO events_rebuilt (rowid, id, conversation_id, supervisor_seq, agent_seq,
    public_seq, kind, visibility, actor_id, actor_role, actor_name, client_id, payload,
    created_at, hash)
SELECT rowid, id, conversation_id, supervisor_seq, agent_seq, public_seq, kind,
    visibility, actor_id, actor_role, actor_name, client_id, payload, created_at, hash
FROM events ORDER BY rowid;
DROP TABLE events;
ALTER TABLE events_rebuilt RENAME TO events;
CREATE UNIQUE INDEX events_public_stream ON events (conversation_id, public_seq)
    WHERE public_seq IS NOT NULL;
CREATE UNIQUE INDEX events_idempotency ON events (actor_id, client_id)
    WHERE client_id IS NOT NULL;
