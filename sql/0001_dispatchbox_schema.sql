-- Migration 1: the Python Dispatchbox worker's schema, unchanged, so that a table created
-- by that worker is adopted in place (every statement is IF NOT EXISTS / OR REPLACE).
--
-- Placeholders ({{table}}, {{archive_table}} …) are replaced with validated, quoted names
-- by src/store/migrate.rs. For the default table public.outbox_event the derived names are
-- exactly the Python ones (idx_outbox_due, outbox_event_archive, idx_outbox_archive_date,
-- archive_outbox_events).

CREATE TABLE IF NOT EXISTS {{table}} (
  id             BIGSERIAL PRIMARY KEY,
  aggregate_type TEXT        NOT NULL,
  aggregate_id   TEXT        NOT NULL,
  event_type     TEXT        NOT NULL,
  payload        JSONB       NOT NULL,
  status         TEXT        NOT NULL DEFAULT 'pending',  -- pending | retry | processing | done | dead
  claim_token    TEXT,
  attempts       INT         NOT NULL DEFAULT 0,
  next_run_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
  created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Due work: pending and retry rows by due time, and processing rows by lease expiry.
CREATE INDEX IF NOT EXISTS {{due_index}}
  ON {{table}} (next_run_at ASC)
  WHERE status IN ('pending','retry','processing');

CREATE TABLE IF NOT EXISTS {{archive_table}} (
  id             BIGINT      PRIMARY KEY,
  aggregate_type TEXT        NOT NULL,
  aggregate_id   TEXT        NOT NULL,
  event_type     TEXT        NOT NULL,
  payload        JSONB       NOT NULL,
  status         TEXT        NOT NULL,
  attempts       INT         NOT NULL,
  next_run_at    TIMESTAMPTZ NOT NULL,
  created_at     TIMESTAMPTZ NOT NULL,
  archived_at    TIMESTAMPTZ DEFAULT now()
);

CREATE INDEX IF NOT EXISTS {{archive_index}} ON {{archive_table}} (archived_at);

-- Moves done rows older than retention_days into the archive, 5000 rows per statement so
-- no single statement holds locks for long (scheduled with pg_cron by operators).
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
            RETURNING id, aggregate_type, aggregate_id, event_type, payload, status, attempts, next_run_at, created_at
        )
        INSERT INTO {{archive_table}} (id, aggregate_type, aggregate_id, event_type, payload, status, attempts, next_run_at, created_at)
        SELECT * FROM moved_rows;

        GET DIAGNOSTICS rows_moved = ROW_COUNT;
        EXIT WHEN rows_moved = 0;
    END LOOP;
END;
$$ LANGUAGE plpgsql;
