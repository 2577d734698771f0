-- The idempotency index was keyed by author first, so every note wrote its entry among
-- its author's earlier ones: on a busy floor each append dirtied a page of its own, which
-- the commit wrote to the WAL, synced, and a checkpoint copied back (docs/benchmarks.md,
-- section 1: 120 of a commit's 325 pages in `durable`). Keyed by `client_id` first, the
-- same uniqueness holds, and a time-ordered `client_id` (the JavaScript client's UUIDv7)
-- lands at the index's right edge, where one page takes a whole commit's entries. A
-- random `client_id` costs what it did: a page somewhere in the index.
DROP INDEX events_idempotency;
CREATE UNIQUE INDEX events_idempotency ON events (client_id, actor_id)
    WHERE client_id IS NOT NULL;
