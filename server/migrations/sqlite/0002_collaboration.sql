-- Team collaboration: projections of the event log (kept in the append transaction),
-- definitions managed by admins, notifications and note search.

ALTER TABLE users ADD COLUMN inboxes TEXT NOT NULL DEFAULT '[]';
CREATE TABLE teams (
    id    TEXT PRIMARY KEY,
    name  TEXT NOT NULL
);

ALTER TABLE conversations ADD COLUMN team_id TEXT;
CREATE INDEX conversations_assignee ON conversations (assignee_id, last_activity_at);

CREATE TABLE tags (
    name         TEXT PRIMARY KEY,
    color        TEXT,
    description  TEXT
);
CREATE TABLE conversation_tags (
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    tag              TEXT NOT NULL,
    PRIMARY KEY (conversation_id, tag)
);
CREATE INDEX conversation_tags_tag ON conversation_tags (tag);

CREATE TABLE field_definitions (
    key         TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    applies_to  TEXT NOT NULL,
    label       TEXT NOT NULL,
    required    INTEGER NOT NULL,
    options     TEXT NOT NULL DEFAULT '[]'
);
-- Values are JSON text.
CREATE TABLE field_values (
    target     TEXT NOT NULL,
    target_id  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (target, target_id, key)
);
CREATE INDEX field_values_lookup ON field_values (target, key, value);

-- Each note with its current text and pin state.
CREATE TABLE notes (
    id               TEXT PRIMARY KEY,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    contact_id       TEXT,
    author_id        TEXT NOT NULL,
    author_role      TEXT NOT NULL,
    author_name      TEXT,
    note_type        TEXT NOT NULL,
    audience         TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    pinned           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX notes_conversation ON notes (conversation_id, pinned);
CREATE INDEX notes_contact ON notes (contact_id, pinned);
-- Full-text index of notes' current text; rowid = notes.rowid.
CREATE VIRTUAL TABLE note_search USING fts5 (body, tokenize = 'unicode61');

CREATE TABLE notifications (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id          TEXT NOT NULL,
    kind             TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    from_id          TEXT NOT NULL,
    from_role        TEXT NOT NULL,
    from_name        TEXT,
    created_at       INTEGER NOT NULL,
    read_at          INTEGER
);
CREATE INDEX notifications_user ON notifications (user_id, read_at, id);
