-- The notes' full-text index (GIN) collects new entries in a pending list and merges
-- them into the index once the list reaches `gin_pending_list_limit`, 4 MB by default:
-- about every 24,000 notes one append's statement did that merge, ~100 ms during which
-- its commit, and every append queued behind it, waited (PostgreSQL's log, with
-- `log_min_duration_statement`, showed one such statement every ~5 s at 5,000 notes a
-- second). A 256 kB list is merged sixteen times as often, each merge a sixteenth of
-- the work. Turning the list off (`fastupdate = off`) removed the stalls too but made
-- every commit dearer (mean 1.55 -> 1.6-1.7 ms; with 256 kB, 1.36-1.42).
ALTER INDEX notes_search SET (gin_pending_list_limit = 256);
