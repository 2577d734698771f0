-- The event log, conversations with their three stream counters, inboxes and the
-- directory of staff seen in tokens. Times are microseconds since the Unix epoch.

CREATE TABLE inboxes (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- A new installation works with no set-up: one inbox to open conversations in.
INSERT INTO inboxes (id, name, created_at)
VALUES ('support', 'Support', CAST(strftime('%s', 'now') AS INTEGER) * 1000000);

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    name        TEXT,
    handle      TEXT NOT NULL,
    teams       TEXT NOT NULL DEFAULT '[]',
    updated_at  INTEGER NOT NULL
);
CREATE INDEX users_handle ON users (handle);

CREATE TABLE conversations (
    id                TEXT PRIMARY KEY,
    inbox_id          TEXT NOT NULL REFERENCES inboxes (id),
    contact_id        TEXT,
    subject           TEXT,
    status            TEXT NOT NULL DEFAULT 'open',
    assignee_id       TEXT,
    public_seq        INTEGER NOT NULL DEFAULT 0,
    agent_seq         INTEGER NOT NULL DEFAULT 0,
    supervisor_seq    INTEGER NOT NULL DEFAULT 0,
    last_hash         BLOB NOT NULL,
    created_at        INTEGER NOT NULL,
    last_activity_at  INTEGER NOT NULL,
    last_public_at    INTEGER NOT NULL
);
CREATE INDEX conversations_inbox ON conversations (inbox_id, last_activity_at);
CREATE INDEX conversations_contact ON conversations (contact_id, last_activity_at);

-- Append-only: rows are inserted, never updated or deleted.
CREATE TABLE events (
    id               TEXT PRIMARY KEY,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    supervisor_seq   INTEGER NOT NULL,
    agent_seq        INTEGER,
    public_seq       INTEGER,
    kind             TEXT NOT NULL,
    visibility       TEXT NOT NULL CHECK (visibility IN ('public', 'internal', 'supervisors')),
    actor_id         TEXT NOT NULL,
    actor_role       TEXT NOT NULL,
    actor_name       TEXT,
    client_id        TEXT,
    payload          TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    hash             BLOB NOT NULL,
    UNIQUE (conversation_id, supervisor_seq)
);
CREATE UNIQUE INDEX events_agent_stream ON events (conversation_id, agent_seq)
    WHERE agent_seq IS NOT NULL;
CREATE UNIQUE INDEX events_public_stream ON events (conversation_id, public_seq)
    WHERE public_seq IS NOT NULL;
CREATE UNIQUE INDEX events_idempotency ON events (actor_id, client_id)
    WHERE client_id IS NOT NULL;
