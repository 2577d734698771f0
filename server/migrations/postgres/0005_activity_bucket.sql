-- Every append updates its conversation's row (the three heads, the chain's last hash,
-- `last_activity_at`). While indexes keyed `last_activity_at`, no such update could be
-- heap-only: each left a dead row and a new entry in five indexes, and a busy
-- conversation's row filled pages with dead versions until a vacuum. The indexes now key
-- on `activity_bucket`, the latest activity's ten-second slot (`ACTIVITY_BUCKET_MICROS`
-- in `store/mod.rs`), which the append assigns with the heads, and lists break ties
-- within a slot by `last_activity_at`: the same order, exactly. An append in its
-- conversation's current slot changes no indexed column, so it is heap-only and its old
-- version is pruned without a vacuum. A customer's list orders by public activity and a
-- contact holds few conversations: its index needs no time.

-- Room on each page for the next version of its rows, so that the first update of a
-- freshly written row can be heap-only too (set first: adding the column rewrites the
-- table, and the rewrite leaves that room).
ALTER TABLE conversations SET (fillfactor = 80);
-- Filled in the one rewrite as a generated column, then made a plain one: a generated
-- column's expression is read back and compiled at every statement that writes the
-- table, which costs the append more than the update itself.
ALTER TABLE conversations
    ADD COLUMN activity_bucket BIGINT GENERATED ALWAYS AS (last_activity_at / 10000000) STORED;
ALTER TABLE conversations ALTER COLUMN activity_bucket DROP EXPRESSION;
ALTER TABLE conversations ALTER COLUMN activity_bucket SET NOT NULL;

DROP INDEX conversations_inbox;
CREATE INDEX conversations_inbox ON conversations (inbox_id, activity_bucket);
DROP INDEX conversations_contact;
CREATE INDEX conversations_contact ON conversations (contact_id);
DROP INDEX conversations_assignee;
CREATE INDEX conversations_assignee ON conversations (assignee_id, activity_bucket);
DROP INDEX conversations_activity;
CREATE INDEX conversations_activity ON conversations (activity_bucket);
