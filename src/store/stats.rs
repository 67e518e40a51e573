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
}
