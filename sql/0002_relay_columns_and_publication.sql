-- Migration 2: what the WAL relay adds to the Python schema.
--
-- claim_token is re-added for tables created by early Python versions that lacked it.
ALTER TABLE {{table}}
  ADD COLUMN IF NOT EXISTS claim_token   TEXT,
  ADD COLUMN IF NOT EXISTS headers       JSONB,
  ADD COLUMN IF NOT EXISTS last_error    TEXT,
  ADD COLUMN IF NOT EXISTS last_error_at TIMESTAMPTZ,
  ADD COLUMN IF NOT EXISTS delivered_at  TIMESTAMPTZ;

-- Archived rows keep the new columns too.
ALTER TABLE {{archive_table}}
  ADD COLUMN IF NOT EXISTS headers       JSONB,
  ADD COLUMN IF NOT EXISTS last_error    TEXT,
  ADD COLUMN IF NOT EXISTS last_error_at TIMESTAMPTZ,
  ADD COLUMN IF NOT EXISTS delivered_at  TIMESTAMPTZ;

CREATE OR REPLACE FUNCTION {{archive_function}}(retention_days INT DEFAULT 7)
RETURNS void AS $$
DECLARE
    rows_moved INT;
BEGIN
    LOOP
        WITH moved_rows AS (
            DELETE FROM {{table}}
            WHERE id IN (
                SELECT id FROM {{table}}
                WHERE status = 'done'
                  AND created_at < NOW() - (retention_days || ' days')::interval
                LIMIT 5000
            )
            RETURNING id, aggregate_type, aggregate_id, event_type, payload, status, attempts,
                      next_run_at, created_at, headers, last_error, last_error_at, delivered_at
        )
        INSERT INTO {{archive_table}} (id, aggregate_type, aggregate_id, event_type, payload, status,
                                       attempts, next_run_at, created_at, headers, last_error,
                                       last_error_at, delivered_at)
        SELECT * FROM moved_rows;

        GET DIAGNOSTICS rows_moved = ROW_COUNT;
        EXIT WHEN rows_moved = 0;
    END LOOP;
END;
$$ LANGUAGE plpgsql;

-- Insert-only: the relay's own status UPDATEs must never be streamed back to it, and the
-- application stays free to use row filters or column lists for its updates.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {{publication_literal}}) THEN
    CREATE PUBLICATION {{publication}} FOR TABLE {{table}} WITH (publish = 'insert');
  END IF;
END
$$;
