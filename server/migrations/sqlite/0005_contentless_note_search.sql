-- The full-text index of notes keeps no copy of their text. It was an ordinary FTS5
-- table, which stores every body it indexes in a table of its own: a note's text was
-- written three times per append (the event's payload, `notes.body`, the index's copy),
-- and the copy was never read (searches join `notes` for every column). A contentless
-- table indexes without storing; `contentless_delete` lets an edit still replace a
-- note's entry by rowid. The index is rebuilt from `notes`, which holds every note's
-- current text.
DROP TABLE note_search;
CREATE VIRTUAL TABLE note_search USING fts5 (
    body,
    tokenize = 'unicode61',
    content = '',
    contentless_delete = 1
);
INSERT INTO note_search (rowid, body) SELECT rowid, body FROM notes;
