-- Lists order conversations by their latest activity, but every event moves
-- `last_activity_at`, and an index keyed by it has its entry moved by every append:
-- pages of three indexes rewritten per note. The indexes now key on `activity_bucket`,
-- the latest activity's ten-second slot (`last_activity_at / 10000000`; the append
-- writes it only when it changes, `ACTIVITY_BUCKET_MICROS` in `store/mod.rs`), and
-- lists break ties within a slot by `last_activity_at`: the same order, exactly, with an
-- index write per conversation per slot instead of per event. A customer's list orders
-- by public activity and a contact holds few conversations: its index needs no time.
ALTER TABLE conversations ADD COLUMN activity_bucket INTEGER NOT NULL DEFAULT 0;
UPDATE conversations SET activity_bucket = last_activity_at / 10000000;

DROP INDEX conversations_inbox;
CREATE INDEX conversations_inbox ON conversations (inbox_id, activity_bucket);
DROP INDEX conversations_contact;
CREATE INDEX conversations_contact ON conversations (contact_id);
DROP INDEX conversations_assignee;
CREATE INDEX conversations_assignee ON conversations (assignee_id, activity_bucket);
