-- The idempotency index was keyed by author first, so every note wrote its entry among
-- its author's earlier ones, a leaf page of its own per append (and, the first time a
-- page changes after a checkpoint, its whole image in the WAL). Keyed by `client_id`
-- first, the same uniqueness holds (`ON CONFLICT (actor_id, client_id)` infers an index
-- from its columns in any order), and a time-ordered `client_id` (the JavaScript
-- client's UUIDv7) lands at the index's right edge, where one page takes a whole
-- commit's entries. A random `client_id` costs what it did: a page somewhere in the index.
DROP INDEX events_idempotency;
CREATE UNIQUE INDEX events_idempotency ON events (client_id, actor_id)
    WHERE client_id IS NOT NULL;
