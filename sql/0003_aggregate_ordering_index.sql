-- Migration 3: per-aggregate ordering support for the sweeper.
--
-- The sweeper claims only the head of each aggregate (its lowest-id row still outstanding)
-- and the relay asks whether an aggregate has a backlog; both look up outstanding rows of
-- one (aggregate_type, aggregate_id) ordered by id. Partial, like the due index: done and
-- dead rows (the bulk of an outbox) are not indexed, so the index stays small and cheap to
-- maintain.
--
-- Plain CREATE INDEX (migrations run in a transaction, which rules out CONCURRENTLY): it
-- blocks inserts into the outbox while it scans the table once.
CREATE INDEX IF NOT EXISTS {{aggregate_index}}
  ON {{table}} (aggregate_type, aggregate_id, id)
  WHERE status IN ('pending','retry','processing');
