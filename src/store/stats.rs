//! Cheap questions the admin server and the metrics refresher ask the database: is it
//! reachable, how many rows are dead, how many wait for delivery. Read-only; never touches
//! a row.

use std::time::Duration;

use super::{Store, StoreError};

/// The rows of the outbox waiting for delivery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backlog {
    /// `(status, rows)` for each of `pending` (due now), `retry` and `processing` that has
    /// rows.
    pub by_status: Vec<(String, i64)>,
    /// How long the oldest of them has waited (zero when none does).
    pub oldest_age: Duration,
}

/// How many rows of the outbox have each status.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatusCounts {
    /// `pending` rows (due or scheduled for later).
    pub pending: i64,
    /// `retry` rows.
    pub retry: i64,
    /// `processing` rows (claimed by a sweeper).
    pub processing: i64,
    /// `dead` rows.
    pub dead: i64,
    /// `done` rows, counted up to [`DONE_COUNT_LIMIT`] (counting all would read the whole
    /// table): exact when `done_more` is false.
    pub done: i64,
    /// More than [`DONE_COUNT_LIMIT`] rows are `done`; see `done_estimate`.
    pub done_more: bool,
    /// `done` rows estimated from the planner's row count of the table minus the other
    /// statuses; `None` before the table was first analyzed.
    pub done_estimate: Option<i64>,
}

/// Most `done` rows [`Store::status_counts`] counts exactly.
pub const DONE_COUNT_LIMIT: i64 = 1_000;

impl Store {
    /// `SELECT 1` through the pool: Ok when a connection can be had and answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        const CONTEXT: &str = "database ping";
        let client = self.client(CONTEXT).await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| StoreError::db(CONTEXT, e))?;
        Ok(())
    }

    /// Rows of the outbox table with status `dead` (an index-only count over the partial
    /// dead-letter index of migration 4; callers still ask rarely: every 15 s).
    pub async fn count_dead(&self) -> Result<i64, StoreError> {
        const CONTEXT: &str = "dead row count";
        let client = self.client(CONTEXT).await?;
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE status = 'dead'",
                    self.table().quoted()
                ),
                &[],
            )
            .await
            .map_err(|e| StoreError::db(CONTEXT, e))?;
        row.try_get(0).map_err(|e| StoreError::db(CONTEXT, e))
    }

    /// The rows waiting for delivery: `pending` rows that are due (a row scheduled for
    /// later waits for nothing yet; one that fell due counts from its due time), `retry`
    /// and `processing` rows (from their `created_at`).
    ///
    /// One range scan of the partial due index (`status, next_run_at`) per status: it
    /// reads the backlog's rows and nothing else, never the done and dead bulk of the
    /// table, so its cost is the backlog's size (an empty backlog costs three index
    /// probes). The caller asks rarely, and more rarely still while a backlog is large.
    pub async fn backlog(&self) -> Result<Backlog, StoreError> {
        const CONTEXT: &str = "backlog count";
        let table = self.table().quoted();
        let sql = format!(
            "SELECT status, count(*), extract(epoch FROM now() - min(since))::float8
               FROM (SELECT status, greatest(created_at, next_run_at) AS since FROM {table}
                      WHERE status = 'pending' AND next_run_at <= now()
                     UNION ALL
                     SELECT status, created_at FROM {table}
                      WHERE status IN ('retry', 'processing')) AS waiting
              GROUP BY status"
        );
        let rows = self.query_cached(CONTEXT, &sql, &[]).await?;
        let mut backlog = Backlog::default();
        let mut oldest: f64 = 0.0;
        for row in rows {
            let status: String = row.try_get(0).map_err(|e| StoreError::db(CONTEXT, e))?;
            let count: i64 = row.try_get(1).map_err(|e| StoreError::db(CONTEXT, e))?;
            let age: Option<f64> = row.try_get(2).map_err(|e| StoreError::db(CONTEXT, e))?;
            oldest = oldest.max(age.unwrap_or(0.0));
            backlog.by_status.push((status, count));
        }
        // A row created by a clock ahead of now() (another session's transaction) has a
        // negative age: none.
        backlog.oldest_age = Duration::try_from_secs_f64(oldest).unwrap_or_default();
        Ok(backlog)
    }

    /// The rows per status ([`StatusCounts`]), in one statement that reads the undelivered
    /// rows (the partial due index), the dead ones (the partial dead-letter index) and at
    /// most [`DONE_COUNT_LIMIT`] + 1 `done` rows; beyond that, `done` is the planner's
    /// estimate of the table's rows minus the others.
    pub async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        const CONTEXT: &str = "status counts";
        let table = self.table().quoted();
        let sql = format!(
            "SELECT status::text, count(*) FROM {table}
              WHERE status IN ('pending', 'retry', 'processing') GROUP BY status
             UNION ALL
             SELECT 'dead', count(*) FROM {table} WHERE status = 'dead'
             UNION ALL
             SELECT 'done', count(*) FROM (SELECT FROM {table} WHERE status = 'done'
                                            LIMIT {DONE_COUNT_LIMIT} + 1) AS done
             UNION ALL
             SELECT 'table', reltuples::bigint FROM pg_catalog.pg_class WHERE oid = $1::text::regclass"
        );
        let rows = self.query_cached(CONTEXT, &sql, &[&table]).await?;
        let mut counts = StatusCounts::default();
        let mut table_rows = None;
        for row in rows {
            let status: String = row.try_get(0).map_err(|e| StoreError::db(CONTEXT, e))?;
            let count: i64 = row.try_get(1).map_err(|e| StoreError::db(CONTEXT, e))?;
            match status.as_str() {
                "pending" => counts.pending = count,
                "retry" => counts.retry = count,
                "processing" => counts.processing = count,
                "dead" => counts.dead = count,
                "done" => {
                    counts.done_more = count > DONE_COUNT_LIMIT;
                    counts.done = count.min(DONE_COUNT_LIMIT);
                }
                // -1: never analyzed.
                "table" => table_rows = (count >= 0).then_some(count),
                _ => {}
            }
        }
        let counted = counts.pending + counts.retry + counts.processing + counts.dead;
        counts.done_estimate = if counts.done_more {
            table_rows.map(|rows| rows.saturating_sub(counted).max(DONE_COUNT_LIMIT))
        } else {
            Some(counts.done)
        };
        Ok(counts)
    }

    /// How many of the rows `ids` have each status (`(status, rows)`, ids that match no
    /// row left out): how the console follows a retry or replay as it is delivered. One
    /// primary-key lookup per id.
    pub async fn statuses_of(&self, ids: &[i64]) -> Result<Vec<(String, i64)>, StoreError> {
        const CONTEXT: &str = "event statuses";
        let sql = format!(
            "SELECT status::text, count(*) FROM {} WHERE id = ANY($1) GROUP BY 1 ORDER BY 1",
            self.table().quoted()
        );
        let rows = self.query_cached(CONTEXT, &sql, &[&ids]).await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| StoreError::db(CONTEXT, e))
    }
}
