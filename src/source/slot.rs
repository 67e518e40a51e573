//! The replication slot: the one place that inspects, judges, creates and drops it.
//!
//! - [`inspect`] reads `pg_replication_slots` (and `pg_stat_replication` for the process
//!   streaming from it): for `check`, `status`, the lag metrics and the source.
//! - [`judge`] is the one rule deciding whether the slot of the configured name is the
//!   relay's ([`SlotUse`]), or someone else's ([`NotOurs`]: never touched).
//! - [`create`] makes the slot over the replication protocol (the connection that then
//!   streams from it); [`drop_invalidated`] (and [`drop`], for tests and tools) drop only a
//!   slot that passes [`judge`]'s ownership facts in the same statement.
//!
//! Reading `pg_replication_slots` does not acquire the slot.

use serde::Serialize;
use tokio_postgres::Client;

use super::client::{ClientError, CreatedSlot, ReplicationClient};
use crate::names::Identifier;
use crate::store::{Store, StoreError};

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
    pub fn parse(value: Option<&str>) -> Self {
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

/// Serialised as PostgreSQL spells it.
impl Serialize for SlotWalStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The replication slot as `pg_replication_slots` (and `pg_stat_replication` for the
/// process streaming from it) describe it. Every field but `name` and `exists` is `None`
/// when the slot does not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotStatus {
    /// Slot name (`DISPATCHBOX_SLOT`).
    pub name: String,
    /// Whether the slot exists. `dispatchbox run` creates it when it does not.
    pub exists: bool,
    /// `logical` or `physical`.
    pub slot_type: Option<String>,
    /// Output plugin (`pgoutput` for slots the relay created); `None` for physical slots.
    pub plugin: Option<String>,
    /// A temporary slot (dropped when its session ends); the relay never makes one.
    pub temporary: bool,
    /// Decodes prepared transactions at PREPARE; the relay never asks for that.
    pub two_phase: bool,
    /// Database the slot decodes.
    pub database: Option<String>,
    /// True while a process streams from the slot.
    pub active: bool,
    /// The walsender process streaming from the slot.
    pub active_pid: Option<i32>,
    /// `application_name` of the streaming client (the relay sends `dispatchbox` unless
    /// the database URL sets another); `None` when not visible to this role.
    pub client_application_name: Option<String>,
    /// Address of the streaming client; `None` for Unix sockets or when not visible.
    pub client_addr: Option<String>,
    /// Walsender state (`streaming`, `catchup`, `startup`, …).
    pub client_state: Option<String>,
    /// The position the relay confirmed (`X/Y`).
    pub confirmed_flush_lsn: Option<String>,
    /// Oldest WAL position the slot still needs (`X/Y`).
    pub restart_lsn: Option<String>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`: bytes of WAL the relay has not
    /// confirmed yet.
    pub lag_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved`, `lost` (or `unknown`).
    pub wal_status: Option<SlotWalStatus>,
    /// Why the slot was invalidated (`pg_replication_slots.invalidation_reason`,
    /// PostgreSQL 17 and newer: `wal_removed`, `rows_removed`, …); always `None` on
    /// servers without the column.
    pub invalidation_reason: Option<String>,
    /// Bytes of WAL that can still be written before the slot is invalidated by
    /// `max_slot_wal_keep_size`; `None` when unlimited (or the slot is lost).
    pub safe_wal_size: Option<i64>,
}

/// What the relay may do with the slot of its configured name ([`judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotUse {
    /// No slot has the name: `run` creates it.
    Missing,
    /// The relay's slot, able to stream.
    Usable,
    /// The relay's slot, invalidated (`wal_status` lost, or an `invalidation_reason` on
    /// PostgreSQL 17+): it can never stream again; `run` drops and recreates it.
    Invalidated,
}

/// The output plugin of the relay's slots.
const PLUGIN: &str = "pgoutput";

/// The one rule deciding whether the slot of the configured name is this relay's, shared by
/// `check`, `run`'s start-up check and the replication source before it drops or recreates
/// anything: a **logical** slot of the **configured database** with the output plugin
/// **pgoutput**, **not temporary** and **without two-phase decoding** (the relay creates
/// exactly that, with `CREATE_REPLICATION_SLOT … LOGICAL pgoutput`). PostgreSQL 15 keeps no
/// owner or comment on a slot, so these are all the facts there are; a pgoutput slot of
/// another tool in the same database with the same name passes them, which is why
/// `DISPATCHBOX_SLOT` should be a name only the relay uses.
///
/// `Err` names the slot, what it is and the two ways out; the relay must then stop without
/// touching it. `database` is the one the relay is connected to.
pub fn judge(slot: &SlotStatus, database: &str) -> Result<SlotUse, NotOurs> {
    if !slot.exists {
        return Ok(SlotUse::Missing);
    }
    let logical = slot.slot_type.as_deref() == Some("logical");
    let ours = logical
        && slot.plugin.as_deref() == Some(PLUGIN)
        && slot.database.as_deref() == Some(database)
        && !slot.temporary
        && !slot.two_phase;
    if !ours {
        return Err(NotOurs {
            slot: slot.name.clone(),
            found: describe_slot(slot),
            database: database.to_owned(),
            owner_database: slot.database.clone().filter(|_| logical),
        });
    }
    if slot.wal_status == Some(SlotWalStatus::Lost) || slot.invalidation_reason.is_some() {
        return Ok(SlotUse::Invalidated);
    }
    Ok(SlotUse::Usable)
}

/// "a logical slot of database "app" with output plugin pgoutput …": what the relay owns.
pub fn owned_slot(database: &str) -> String {
    format!(
        "a logical slot of database {database:?} with output plugin \"{PLUGIN}\", not \
         temporary and without two-phase decoding"
    )
}

/// What a slot is, in the words of [`owned_slot`].
fn describe_slot(slot: &SlotStatus) -> String {
    let temporary = if slot.temporary { "temporary " } else { "" };
    match slot.slot_type.as_deref() {
        Some("logical") => format!(
            "a {temporary}logical slot of database {:?} with output plugin {:?}{}",
            slot.database.as_deref().unwrap_or("(none)"),
            slot.plugin.as_deref().unwrap_or("(none)"),
            if slot.two_phase {
                " and two-phase decoding"
            } else {
                ""
            }
        ),
        Some("physical") => {
            format!("a {temporary}physical slot (used by a streaming standby or a backup)")
        }
        other => format!("a slot of type {:?}", other.unwrap_or("(unknown)")),
    }
}

/// A slot of the configured name exists but is not this relay's (see [`judge`]): the
/// relay neither streams from it nor drops or recreates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotOurs {
    /// The configured slot.
    pub slot: String,
    /// What the slot is: "a physical slot", "a logical slot of database \"x\" with
    /// output plugin \"test_decoding\"", …
    pub found: String,
    /// The database the relay is configured for.
    pub database: String,
    /// The database to connect to for dropping it (logical slots), when known.
    pub owner_database: Option<String>,
}

impl NotOurs {
    /// What is wrong, for `check` and the error that stops `run`.
    pub fn problem(&self) -> String {
        format!(
            "replication slot \"{}\" is not this relay's: it is {}, and the relay only \
             streams from, drops or recreates {}",
            self.slot,
            self.found,
            owned_slot(&self.database)
        )
    }

    /// The two ways out.
    pub fn fix(&self) -> String {
        format!(
            "set DISPATCHBOX_SLOT to a name no other slot of this cluster uses (slot names \
             are cluster-wide: give each database its own), or, if nothing needs this slot \
             any more, drop it by hand{} with SELECT pg_drop_replication_slot('{}'); and \
             `dispatchbox run` creates its own",
            self.owner_database
                .as_ref()
                .map(|db| format!(" while connected to database {db:?}"))
                .unwrap_or_default(),
            self.slot.replace('\'', "''")
        )
    }
}

impl std::fmt::Display for NotOurs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.problem(), self.fix())
    }
}

impl std::error::Error for NotOurs {}

/// Reads the slot of `name` and the connected database, and judges the slot ([`judge`]):
/// what the replication source checks before it creates, drops or recreates anything.
pub async fn judge_current(store: &Store, name: &Identifier) -> Result<SlotUse, JudgeError> {
    const CONTEXT: &str = "replication slot check";
    let client = store.client(CONTEXT).await?;
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| StoreError::db(CONTEXT, e))?
        .get(0);
    let status = inspect(&client, name).await?;
    Ok(judge(&status, &database)?)
}

/// Why [`judge_current`] gave no verdict the relay may act on.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// The slot is someone else's.
    #[error(transparent)]
    NotOurs(#[from] NotOurs),
    /// The slot could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl JudgeError {
    /// Worth trying again (the database was unreachable); a slot that is not the relay's
    /// never is.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NotOurs(_) => false,
            Self::Store(e) => e.is_transient(),
        }
    }
}

/// [`inspect`] on a connection of `store`'s pool.
pub async fn inspect_with(store: &Store, name: &Identifier) -> Result<SlotStatus, StoreError> {
    let client = store.client("replication slot status").await?;
    inspect(&client, name).await
}

/// Creates the relay's slot (logical, `pgoutput`, no exported snapshot) on `client`'s
/// server and returns its consistent point: streaming from it yields every transaction
/// committing after that point. Fails with SQLSTATE 42710 when the slot already exists.
pub async fn create(
    client: &mut ReplicationClient,
    name: &Identifier,
) -> Result<CreatedSlot, ClientError> {
    client.create_replication_slot(name.as_str()).await
}

/// The replication slot and the client streaming from it.
pub async fn inspect(client: &Client, slot: &Identifier) -> Result<SlotStatus, StoreError> {
    const CONTEXT: &str = "replication slot status";
    let row = client
        .query_opt(
            // invalidation_reason exists from PostgreSQL 17 on; read through to_jsonb so
            // the same statement works (as NULL) on older servers.
            "SELECT s.plugin::text, s.database::text, s.active, s.active_pid,
                    r.application_name, host(r.client_addr), r.state,
                    s.confirmed_flush_lsn::text, s.restart_lsn::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
                    s.wal_status, s.safe_wal_size,
                    s.slot_type, s.temporary, s.two_phase,
                    to_jsonb(s) ->> 'invalidation_reason'
               FROM pg_catalog.pg_replication_slots s
               LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid
              WHERE s.slot_name = $1",
            &[&slot.as_str()],
        )
        .await
        .map_err(|e| StoreError::db(CONTEXT, e))?;
    let Some(row) = row else {
        return Ok(SlotStatus {
            name: slot.to_string(),
            exists: false,
            slot_type: None,
            plugin: None,
            temporary: false,
            two_phase: false,
            database: None,
            active: false,
            active_pid: None,
            client_application_name: None,
            client_addr: None,
            client_state: None,
            confirmed_flush_lsn: None,
            restart_lsn: None,
            lag_bytes: None,
            wal_status: None,
            safe_wal_size: None,
            invalidation_reason: None,
        });
    };
    Ok(SlotStatus {
        name: slot.to_string(),
        exists: true,
        slot_type: row.get(12),
        plugin: row.get(0),
        temporary: row.get(13),
        two_phase: row.get(14),
        database: row.get(1),
        active: row.get(2),
        active_pid: row.get(3),
        client_application_name: row.get(4),
        client_addr: row.get(5),
        client_state: row.get(6),
        confirmed_flush_lsn: row.get(7),
        restart_lsn: row.get(8),
        lag_bytes: row.get(9),
        wal_status: Some(SlotWalStatus::parse(row.get::<_, Option<&str>>(10))),
        safe_wal_size: row.get(11),
        invalidation_reason: row.get(15),
    })
}

/// Drops the slot if it is the relay's (the facts of [`judge`], checked
/// in the same statement). Returns false when no such slot exists. Fails with SQLSTATE
/// 55006 while another process streams from it.
pub async fn drop(store: &Store, name: &Identifier) -> Result<bool, StoreError> {
    drop_owned(store, name, "TRUE").await
}

/// Drops the slot only if it is the relay's **and** invalidated (`wal_status` lost,
/// or an `invalidation_reason` on PostgreSQL 17+), judged in the same statement, so a
/// slot recreated meanwhile by another relay or another tool survives. Returns false
/// when nothing matched.
pub async fn drop_invalidated(store: &Store, name: &Identifier) -> Result<bool, StoreError> {
    drop_owned(
        store,
        name,
        "(s.wal_status = 'lost' OR to_jsonb(s) ->> 'invalidation_reason' IS NOT NULL)",
    )
    .await
}

/// `pg_drop_replication_slot` of the relay's own slot `name` when `condition` (SQL over
/// `pg_replication_slots s`, a constant of this module) also holds.
async fn drop_owned(
    store: &Store,
    name: &Identifier,
    condition: &'static str,
) -> Result<bool, StoreError> {
    const CONTEXT: &str = "replication slot drop";
    let client = store.client(CONTEXT).await?;
    // The ownership facts of judge(), so that nothing else is ever dropped
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
