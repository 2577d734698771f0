-- The agents' stream is read through the supervisors' index (UNIQUE (conversation_id,
-- supervisor_seq)), which orders it the same way: an index of its own cost every append
-- one more page scattered by conversation, a full-page write to the WAL after each checkpoint. Its seqs
-- are allocated from the conversation's counter inside the append transaction, as every
-- stream's are; the supervisors' unique index still guards the log's order.
DROP INDEX events_agent_stream;
