//! The store: every SQL statement the relay issues lives behind this module.
//!
//! - [`migrate`]: the embedded `sql/*.sql` migrations.
//! - [`dead`]: dead-letter listing, statistics and operator retries (CLI and HTTP API).
//! - [`checks`]: preflight checks that turn a misconfigured server into one clear error.
//! - [`status`]: the batched status writer, the only writer of outcomes of streamed events.
//! - [`widths`]: the declared widths of the text columns the relay writes, and the rule
//!   that fits every text it writes into them.
//! - [`sweep`]: the sweeper's claims (row leases), the outcomes of claimed rows, and the
//!   backlog lookups of per-aggregate ordering.
//! - [`Store`]: heartbeats and replication-slot helpers over a connection pool.
//!
//! The store never decides *what* to write (the dispatcher does) and never reports LSNs to
//! the server (replication::progress owns that); it only executes and classifies failures
//! as transient or definite ([`StoreError::is_transient`]).

pub mod archive;
pub mod checks;
pub mod dead;
mod error;
pub mod migrate;
mod names;
pub mod report;
pub mod stats;
pub mod status;
pub mod sweep;
pub mod widths;

pub use error::StoreError;
pub use migrate::MigrationReport;
pub use names::{Identifier, NameError, Names, TableName, DEFAULT_SCHEMA, MAX_IDENTIFIER_BYTES};

use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::PgLsn;

use crate::replication::lsn::Lsn;

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
pub const PLANNER_SETTINGS: &str =
    "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off";

/// Prefix of the logical messages written by [`Store::emit_heartbeat`].
pub const HEARTBEAT_PREFIX: &str = "dispatchbox.heartbeat";

/// Handle to the outbox database: a connection pool and the configured outbox table.
/// Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    table: TableName,
    widths: widths::TextWidths,
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

/// State of a replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Output plugin (`pgoutput` for slots the relay created); `None` for physical slots.
    pub plugin: Option<String>,
    /// Database the slot decodes; `None` for physical slots.
    pub database: Option<String>,
    /// True while a walsender streams from the slot.
    pub active: bool,
    /// Backend process streaming from the slot, when active.
    pub active_pid: Option<i32>,
    /// Position the consumer confirmed; `None` for physical slots.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// Oldest WAL the slot still needs.
    pub restart_lsn: Option<Lsn>,
    /// Whether the WAL the slot needs is still available.
    pub wal_status: SlotWalStatus,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn` in bytes: how far the relay is behind.
    pub lag_bytes: Option<i64>,
}

/// `pg_replication_slots.wal_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotWalStatus {
    /// Within `max_wal_size`.
    Reserved,
    /// Beyond `max_wal_size` but still retained.
    Extended,
    /// Will be removed at the next checkpoint unless the slot catches up.
    Unreserved,
    /// Required WAL is gone: the slot is unusable and must be recreated.
    Lost,
    /// Null or a value this version does not know.
    Unknown,
}

impl SlotWalStatus {
    fn parse(value: Option<&str>) -> Self {
        match value {
            Some("reserved") => Self::Reserved,
            Some("extended") => Self::Extended,
            Some("unreserved") => Self::Unreserved,
            Some("lost") => Self::Lost,
            _ => Self::Unknown,
        }
    }

    /// The value as PostgreSQL spells it (`unknown` for [`SlotWalStatus::Unknown`]); a
    /// small closed set, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Extended => "extended",
            Self::Unreserved => "unreserved",
            Self::Lost => "lost",
            Self::Unknown => "unknown",
        }
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
            table,
            widths: widths::TextWidths::default(),
        }
    }

    /// The same store, cutting every text it writes to `widths` (learnt by the preflight
    /// checks: [`checks::ServerFacts::text_widths`]).
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
        let client = self.client(context).await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| StoreError::db(context, e))?;
        client
            .query(&statement, params)
            .await
            .map_err(|e| StoreError::db(context, e))
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

    /// Runs the preflight checks, the slot `slot` included (see [`checks::preflight`]).
    pub async fn preflight(
        &self,
        names: &Names,
        slot: &Identifier,
    ) -> Result<checks::ServerFacts, checks::CheckError> {
        let client = self.client("preflight checks").await?;
        checks::preflight(&client, names, slot).await
    }

    /// Judges the slot of that name (see [`checks::judge_slot`]): missing, the relay's
    /// (usable or invalidated), or someone else's (`Err`, to stop on).
    pub async fn slot_use(&self, name: &Identifier) -> Result<checks::SlotUse, checks::CheckError> {
        let client = self.client("replication slot check").await?;
        checks::slot_use(&client, name).await
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

    /// The slot's state, or `None` when no slot has that name.
    pub async fn slot_info(&self, name: &Identifier) -> Result<Option<SlotInfo>, StoreError> {
        const CONTEXT: &str = "replication slot lookup";
        let client = self.client(CONTEXT).await?;
        let row = client
            .query_opt(
                "SELECT plugin::text, database::text, active, active_pid,
                        confirmed_flush_lsn, restart_lsn, wal_status,
                        pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
                   FROM pg_catalog.pg_replication_slots
                  WHERE slot_name = $1",
                &[&name.as_str()],
            )
            .await
            .map_err(|e| StoreError::db(CONTEXT, e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(SlotInfo {
            plugin: row.get(0),
            database: row.get(1),
            active: row.get(2),
            active_pid: row.get(3),
            confirmed_flush_lsn: lsn_column(&row, 4),
            restart_lsn: lsn_column(&row, 5),
            wal_status: SlotWalStatus::parse(row.get::<_, Option<&str>>(6)),
            lag_bytes: row.get(7),
        }))
    }

    /// Creates a logical slot with `pgoutput` (no exported snapshot) and returns its
    /// consistent point: streaming from the slot yields every transaction committing after it.
    ///
    /// Fails with SQLSTATE 42710 when the slot already exists. The call waits for
    /// transactions running at that moment to finish.
    pub async fn create_slot(&self, name: &Identifier) -> Result<Lsn, StoreError> {
        const CONTEXT: &str = "replication slot creation";
        let client = self.client(CONTEXT).await?;
        let row = client
            .query_one(
                "SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&name.as_str()],
            )
            .await
            .map_err(|e| StoreError::db(CONTEXT, e))?;
        lsn_column(&row, 0).ok_or_else(|| StoreError::Unexpected {
            context: CONTEXT.into(),
            detail: "pg_create_logical_replication_slot returned no LSN".into(),
        })
    }

    /// Drops the slot if it is the relay's (the facts of [`checks::judge_slot`], checked
    /// in the same statement). Returns false when no such slot exists. Fails with SQLSTATE
    /// 55006 while another process streams from it.
    pub async fn drop_slot(&self, name: &Identifier) -> Result<bool, StoreError> {
        self.drop_owned_slot(name, "TRUE").await
    }

    /// Drops the slot only if it is the relay's **and** invalidated (`wal_status` lost,
    /// or an `invalidation_reason` on PostgreSQL 17+), judged in the same statement, so a
    /// slot recreated meanwhile by another relay or another tool survives. Returns false
    /// when nothing matched.
    pub async fn drop_invalidated_slot(&self, name: &Identifier) -> Result<bool, StoreError> {
        self.drop_owned_slot(
            name,
            "(s.wal_status = 'lost' OR to_jsonb(s) ->> 'invalidation_reason' IS NOT NULL)",
        )
        .await
    }

    /// `pg_drop_replication_slot` of the relay's own slot `name` when `condition` (SQL over
    /// `pg_replication_slots s`, a constant of this module) also holds.
    async fn drop_owned_slot(
        &self,
        name: &Identifier,
        condition: &'static str,
    ) -> Result<bool, StoreError> {
        const CONTEXT: &str = "replication slot drop";
        let client = self.client(CONTEXT).await?;
        // The ownership facts of checks::judge_slot, so that nothing else is ever dropped
        // even if it appeared under the name since it was judged.
        let query = format!(
            "SELECT pg_drop_replication_slot(s.slot_name)
               FROM pg_catalog.pg_replication_slots s
              WHERE s.slot_name = $1 AND s.slot_type = 'logical' AND s.plugin = 'pgoutput'
                AND s.database = current_database() AND NOT s.temporary AND NOT s.two_phase
                AND {condition}"
        );
        let rows = client
            .query(&query, &[&name.as_str()])
            .await
            .map_err(|e| StoreError::db(CONTEXT, e))?;
        Ok(!rows.is_empty())
    }
}
