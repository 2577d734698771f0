-- The PostgreSQL schema: the same tables as the SQLite store (event log, conversations
-- with their three stream counters, inboxes, the directory, and the projections kept in
-- the append transaction), with PostgreSQL types. Times are microseconds since the Unix
-- epoch (BIGINT), as on SQLite, because the audit hash covers them exactly. Event
-- payloads are TEXT, not JSONB: the hash covers the exact text stored.

CREATE TABLE inboxes (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- A new installation works with no set-up: one inbox to open conversations in.
INSERT INTO inboxes (id, name, created_at)
VALUES ('support', 'Support', (EXTRACT(EPOCH FROM now()) * 1000000)::BIGINT);

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    name        TEXT,
    handle      TEXT NOT NULL,
    -- JSON arrays of strings.
    teams       JSONB NOT NULL DEFAULT '[]',
    inboxes     JSONB NOT NULL DEFAULT '[]',
    updated_at  BIGINT NOT NULL
);
CREATE INDEX users_handle ON users (handle);

CREATE TABLE teams (
    id    TEXT PRIMARY KEY,
    name  TEXT NOT NULL
);

CREATE TABLE conversations (
    id                UUID PRIMARY KEY,
    inbox_id          TEXT NOT NULL REFERENCES inboxes (id),
    contact_id        TEXT,
    subject           TEXT,
    status            TEXT NOT NULL DEFAULT 'open',
    assignee_id       TEXT,
    team_id           TEXT,
    public_seq        BIGINT NOT NULL DEFAULT 0,
    agent_seq         BIGINT NOT NULL DEFAULT 0,
    supervisor_seq    BIGINT NOT NULL DEFAULT 0,
    last_hash         BYTEA NOT NULL,
    created_at        BIGINT NOT NULL,
    last_activity_at  BIGINT NOT NULL,
    last_public_at    BIGINT NOT NULL
);
CREATE INDEX conversations_inbox ON conversations (inbox_id, last_activity_at);
CREATE INDEX conversations_contact ON conversations (contact_id, last_activity_at);
CREATE INDEX conversations_assignee ON conversations (assignee_id, last_activity_at);
CREATE INDEX conversations_activity ON conversations (last_activity_at);

-- Append-only: rows are inserted, never updated or deleted.
CREATE TABLE events (
    id               UUID PRIMARY KEY,
    conversation_id  UUID NOT NULL REFERENCES conversations (id),
    supervisor_seq   BIGINT NOT NULL,
    agent_seq        BIGINT,
    public_seq       BIGINT,
    kind             TEXT NOT NULL,
    visibility       TEXT NOT NULL CHECK (visibility IN ('public', 'internal', 'supervisors')),
    actor_id         TEXT NOT NULL,
    actor_role       TEXT NOT NULL,
    actor_name       TEXT,
    client_id        TEXT,
    payload          TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    hash             BYTEA NOT NULL,
    UNIQUE (conversation_id, supervisor_seq)
);
CREATE UNIQUE INDEX events_agent_stream ON events (conversation_id, agent_seq)
    WHERE agent_seq IS NOT NULL;
CREATE UNIQUE INDEX events_public_stream ON events (conversation_id, public_seq)
    WHERE public_seq IS NOT NULL;
CREATE UNIQUE INDEX events_idempotency ON events (actor_id, client_id)
    WHERE client_id IS NOT NULL;

CREATE TABLE tags (
    name         TEXT PRIMARY KEY,
    color        TEXT,
    description  TEXT
);
CREATE TABLE conversation_tags (
    conversation_id  UUID NOT NULL REFERENCES conversations (id),
    tag              TEXT NOT NULL,
    PRIMARY KEY (conversation_id, tag)
);
CREATE INDEX conversation_tags_tag ON conversation_tags (tag);

CREATE TABLE field_definitions (
    key         TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    applies_to  TEXT NOT NULL,
    label       TEXT NOT NULL,
    required    BOOLEAN NOT NULL,
    -- A JSON array of strings.
    options     TEXT NOT NULL DEFAULT '[]'
);
-- Values are compact JSON text (normalized by the service), compared as text. The lookup
-- index hashes the value: a B-tree entry is limited to about 2.7 kB, and a JSON-escaped
-- text value may be longer.
CREATE TABLE field_values (
    target     TEXT NOT NULL,
    target_id  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (target, target_id, key)
);
CREATE INDEX field_values_lookup ON field_values USING HASH (value);

-- Each note with its current text and pin state; `search` follows the text.
CREATE TABLE notes (
    id               UUID PRIMARY KEY,
    conversation_id  UUID NOT NULL REFERENCES conversations (id),
    contact_id       TEXT,
    author_id        TEXT NOT NULL,
    author_role      TEXT NOT NULL,
    author_name      TEXT,
    note_type        TEXT NOT NULL,
    audience         TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    pinned           BOOLEAN NOT NULL DEFAULT FALSE,
    search           TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, body)) STORED
);
CREATE INDEX notes_conversation ON notes (conversation_id, pinned);
CREATE INDEX notes_contact ON notes (contact_id, pinned);
CREATE INDEX notes_search ON notes USING GIN (search);

CREATE TABLE notifications (
    id               BIGSERIAL PRIMARY KEY,
    user_id          TEXT NOT NULL,
    kind             TEXT NOT NULL,
    conversation_id  UUID NOT NULL,
    event_id         UUID NOT NULL,
    from_id          TEXT NOT NULL,
    from_role        TEXT NOT NULL,
    from_name        TEXT,
    created_at       BIGINT NOT NULL,
    read_at          BIGINT
);
CREATE INDEX notifications_user ON notifications (user_id, read_at, id);
