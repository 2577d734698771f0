-- Every append updates its conversation's row (the three heads, the chain's last hash,
-- `last_activity_at`). While indexes keyed `last_activity_at`, no such update could be
-- heap-only: each left a dead row and a new entry in five indexes, and a busy
-- conversation's row filled pages with dead versions until a vacuum. The indexes now key
-- on `activity_bucket`, the latest activity's ten-second slot, computed by PostgreSQL
-- from `last_activity_at` (the same slot as SQLite's `ACTIVITY_BUCKET_MICROS`), and lists
-- break ties within a slot by `last_activity_at`: the same order, exactly. An append
-- whose slot is its conversation's last one changes no indexed column, so it is
-- heap-only and its old version is pruned without a vacuum. A customer's list orders by
-- public activity and a contact holds few conversations: its index needs no time.

-- Room on each page for the next version of its rows, so that the first update of a
-- freshly written row can be heap-only too (set first: adding the column rewrites the
-- table, and the rewrite leaves that room).
ALTER TABLE conversations SET (fillfactor = 80);
ALTER TABLE conversations
    ADD COLUMN activity_bucket BIGINT GENERATED ALWAYS AS (last_activity_at / 10000000) STORED;

DROP INDEX conversations_inbox;
CREATE INDEX conversations_inbox ON conversations (inbox_id, activity_bucket);
DROP INDEX conversations_contact;
CREATE INDEX conversations_contact ON conversations (contact_id);
DROP INDEX conversations_assignee;
CREATE INDEX conversations_assignee ON conversations (assignee_id, activity_bucket);
DROP INDEX conversations_activity;
CREATE INDEX conversations_activity ON conversations (activity_bucket);
