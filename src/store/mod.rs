//! The store: the relay pipeline's SQL, and nothing else. It decides nothing: which
//! outcome to write is the dispatcher's and the sweeper's call, batching and acks are the
//! status writer's, LSNs are the source's (`source::progress`). It executes, and classifies
//! failures as transient or definite ([`StoreError::is_transient`]) or about one row's
//! data ([`StoreError::is_about_a_row`]).
//!
//! - [`migrate`]: the embedded `sql/*.sql` migrations.
//! - [`outcomes`]: the outcome UPDATEs, shared by the status writer and the sweeper.
//! - [`sweep`]: the sweeper's claims (row leases), the outcomes of claimed rows, and the
//!   backlog lookups of per-aggregate ordering.
//! - [`stats`]: the cheap questions of the probes and metrics (ping, dead rows).
//! - [`widths`]: the declared widths of the text columns the relay writes, and the rule
//!   that fits every text it writes into them.
//! - [`Store`]: the connection pool, heartbeats and the stream-coverage check.
//!
//! Operator tools with SQL of their own (checks, reports, dead letters, archive) are in
//! `ops`, and the replication slot is `source::slot`'s: both sit above the store and use it.

mod error;
pub mod migrate;
pub mod outcomes;
pub mod stats;
pub mod sweep;
pub mod widths;

pub use error::StoreError;
pub use migrate::MigrationReport;

use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::PgLsn;

use crate::lsn::Lsn;
use crate::names::{Names, TableName};

/// Session settings of the relay's own SQL connections (`dispatchbox run`).
///
/// Every statement the relay repeats is an index lookup or an index range scan by design:
/// the status UPDATE (one primary-key lookup per row), the sweeper's claims and sightings
/// (range scans of the due index per status), backlog checks (the aggregate index), the
/// dead-row gauge (the dead index). Left to the planner, a prepared statement's cached
/// generic plan can still be a sequential scan: planned while the table was empty, it
/// stays a scan as the table grows, until autovacuum happens to analyze it, and each
/// status UPDATE then reads the whole outbox to write one row. With sequential scans and
/// hash and merge joins priced out, the only plans left are the index-driven ones, whatever
/// the statistics say (the settings add a huge cost; they forbid nothing when no other path
/// exists, e.g. for catalog queries). Operator commands (`dispatchbox status`, `archive`)
/// keep the planner's defaults: they scan on purpose.
///
/// `synchronous_commit = on`: the relay's writes are durable when their commit returns,
/// even on a server whose default is `off`. It acts on what it wrote (a `retry` row keeps
/// its aggregate's later events parked; a `done` row is not sent again), and a status write
/// lost in a crash would undo that: a `retry` row back at `pending` lets a later event of
/// its aggregate overtake it (the chaos suite found exactly that on a server with
/// asynchronous commit). The relay batches its writes, so the flush per commit is shared.
pub const SESSION_SETTINGS: &str = "SET enable_seqscan = off; SET enable_hashjoin = off;      SET enable_mergejoin = off; SET synchronous_commit = on";

/// Prefix of the logical messages written by [`Store::emit_heartbeat`].
pub const HEARTBEAT_PREFIX: &str = "dispatchbox.heartbeat";

/// Handle to the outbox database: a connection pool and the configured outbox table.
/// Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    table: TableName,
    widths: widths::TextWidths,
    /// The outcome UPDATEs for `table`, built once (they run for every status batch).
    outcome_sql: std::sync::Arc<outcomes::OutcomeSql>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("table", &self.table)
            .field("widths", &self.widths)
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// Reads a `pg_lsn` column.
fn lsn_column(row: &tokio_postgres::Row, index: usize) -> Option<Lsn> {
    row.get::<_, Option<PgLsn>>(index).map(Lsn::from)
}

impl Store {
    /// A store over `pool` (built by the caller, with its TLS settings) for `table`.
    /// Its text columns count as unbounded until [`Store::with_text_widths`].
    pub fn new(pool: Pool, table: TableName) -> Self {
        Self {
            pool,
            outcome_sql: std::sync::Arc::new(outcomes::OutcomeSql::for_table(&table)),
            table,
            widths: widths::TextWidths::default(),
        }
    }

    /// The same store, cutting every text it writes to `widths` (learnt by the preflight
    /// checks: `ops::checks::ServerFacts::text_widths`).
    pub fn with_text_widths(mut self, widths: widths::TextWidths) -> Self {
        self.widths = widths;
        self
    }

    /// The widths of the text columns it writes.
    pub fn text_widths(&self) -> widths::TextWidths {
        self.widths
    }

    /// The outbox table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Runs `sql` as a cached prepared statement (for statements the relay repeats: one
    /// parse per connection) and returns its rows.
    pub(crate) async fn query_cached(
        &self,
        context: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.run_query(context, sql, params, true).await
    }

    /// Runs `sql` (not prepared for reuse: operator queries built per call) and returns
    /// its rows.
    pub(crate) async fn query(
        &self,
        context: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.run_query(context, sql, params, false).await
    }

    /// One query on a pooled connection; errors carry `context`.
    async fn run_query(
        &self,
        context: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        cached: bool,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client(context).await?;
        let rows = if cached {
            let statement = client
                .prepare_cached(sql)
                .await
                .map_err(|e| StoreError::db(context, e))?;
            client.query(&statement, params).await
        } else {
            client.query(sql, params).await
        };
        rows.map_err(|e| StoreError::db(context, e))
    }

    pub(crate) async fn client(&self, context: &'static str) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::pool(context, e))
    }

    /// Applies pending migrations to `names.table()` (see [`migrate::migrate`]).
    pub async fn migrate(&self, names: &Names) -> Result<MigrationReport, StoreError> {
        let mut client = self.client("migrations").await?;
        migrate::migrate(&mut client, names).await
    }

    /// Whether the stream can see the outbox's inserts: `None` when the table exists and
    /// the publication contains it, else what is wrong (renamed or dropped table, dropped
    /// publication, table no longer published). Read by the relay every few seconds.
    pub async fn stream_coverage(&self, names: &Names) -> Result<Option<String>, StoreError> {
        const CONTEXT: &str = "outbox table check";
        let client = self.client(CONTEXT).await?;
        let row = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL,
                        EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $2),
                        EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables t
                                 WHERE t.pubname = $2 AND t.schemaname = $3
                                   AND t.tablename = $4)",
                &[
                    &names.table().quoted(),
                    &names.publication().as_str(),
                    &names.table().schema(),
                    &names.table().name(),
                ],
            )
            .await
            .map_err(|e| StoreError::db(CONTEXT, e))?;
        let (table, publication) = (names.table(), names.publication());
        Ok(match (row.get(0), row.get(1), row.get(2)) {
            (false, _, _) => Some(format!(
                "outbox table {table} does not exist (renamed or dropped?); the stream \
                 confirms nothing further until it is back"
            )),
            (true, false, _) => Some(format!(
                "publication \"{publication}\" does not exist; run `dispatchbox migrate` to \
                 create it again"
            )),
            (true, true, false) => Some(format!(
                "publication \"{publication}\" no longer contains outbox table {table}; the \
                 stream confirms nothing further until ALTER PUBLICATION \"{publication}\" \
                 ADD TABLE {table}"
            )),
            (true, true, true) => None,
        })
    }

    /// Writes a non-transactional logical message (`dispatchbox.heartbeat`) so an idle
    /// database still produces WAL the slot can confirm. Returns the message's LSN.
    pub async fn emit_heartbeat(&self) -> Result<Lsn, StoreError> {
        const CONTEXT: &str = "heartbeat";
        let client = self.client(CONTEXT).await?;
        let row = client
            .query_one(
                "SELECT pg_logical_emit_message(false, $1, now()::text)",
                &[&HEARTBEAT_PREFIX],
            )
            .await
            .map_err(|e| StoreError::db(CONTEXT, e))?;
        lsn_column(&row, 0).ok_or_else(|| StoreError::Unexpected {
            context: CONTEXT.into(),
            detail: "pg_logical_emit_message returned null".into(),
        })
    }
}
