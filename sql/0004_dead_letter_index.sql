-- Migration 4: dead-letter support.
--
-- `dispatchbox dead …`, /api/dead-events and the dispatchbox_outbox_dead_events gauge select the
-- `dead` rows (ordered and paged by id). Done rows are the bulk of an outbox, so without
-- this partial index every such query scans the table. Partial: only dead rows are indexed,
-- so it stays small and costs nothing on the delivery path.
--
-- Plain CREATE INDEX (migrations run in a transaction): on a large existing table it blocks
-- inserts while it scans the table once.
CREATE INDEX IF NOT EXISTS {{dead_index}}
  ON {{table}} (id)
  WHERE status = 'dead';
