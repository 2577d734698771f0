-- Notes are looked up by conversation or by contact only when pinned (a conversation's
-- pinned notes, a contact's context notes). Indexing only pinned notes keeps every new
-- note out of two indexes whose pages are scattered by conversation: each append dirtied
-- a page of each (a full-page write to the WAL after each checkpoint).
DROP INDEX notes_conversation;
DROP INDEX notes_contact;
CREATE INDEX notes_pinned_conversation ON notes (conversation_id) WHERE pinned;
CREATE INDEX notes_pinned_contact ON notes (contact_id) WHERE pinned;
