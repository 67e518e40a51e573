-- Migration 5: the due index keyed by status first.
--
-- Migration 1's due index (the Python worker's) is keyed by next_run_at alone, over
-- pending, retry and processing rows together. Every question the relay asks of it is
-- about one of those statuses: due retries and expired leases (the sweeper's claims and
-- its next wake-up), pending rows the stream may have missed (the sweeper's sightings).
-- With next_run_at alone, finding the first due retry behind a backlog of pending rows
-- reads every pending row first: a backlog of a million rows made each sweep read a
-- million index entries and heap rows while the stream was draining them. Keyed by
-- (status, next_run_at), each question is a range scan of exactly the rows it wants.
--
-- Same name, same predicate, so the index count is unchanged: an insert still touches
-- the primary key, this index and the aggregate index, a status update to done or dead
-- only the primary key. The Python worker's own query (status IN ('pending','retry') AND
-- next_run_at <= now()) is served by the new key as well.
--
-- Plain CREATE INDEX (migrations run in a transaction): on a large existing table it
-- blocks inserts while it scans the table once.
DROP INDEX IF EXISTS {{schema}}.{{due_index}};
CREATE INDEX {{due_index}}
  ON {{table}} (status, next_run_at)
  WHERE status IN ('pending','retry','processing');
