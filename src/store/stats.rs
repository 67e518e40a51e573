//! Cheap questions the admin server and the metrics refresher ask the database: is it
//! reachable, and how many rows are dead. Read-only; never touches a row.

use super::{Store, StoreError};

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
}
