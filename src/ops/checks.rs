//! Preflight checks for `dispatchbox run` and `dispatchbox check`: read the server's
//! settings, the role, the outbox table, the publication and the replication slot in a few
//! catalog queries, then judge them with pure functions so every misconfiguration becomes
//! one error that says what is wrong ([`CheckError::problem`]) and how to fix it
//! ([`CheckError::fix`]).
//!
//! `run` stops at the first problem ([`preflight`]); `check` reports every judgement,
//! passed or not, as a [`Finding`] ([`ServerFacts::findings`]). Both use the same
//! judgements, so they can never disagree.
//!
//! Checks only read catalogs; they never change the server (that is `migrate`'s job).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use super::report::human_bytes;
use crate::conninfo::SqlConnectError;
use crate::names::{Identifier, Names};
use crate::source::slot::{self, NotOurs, SlotStatus, SlotUse, SlotWalStatus};
use crate::store::widths::{self, TextWidths};
use crate::store::{Store, StoreError};

/// Oldest supported server (`server_version_num`): PostgreSQL 15 brings publication row
/// filters, which sharding by several relays relies on.
pub const MIN_SERVER_VERSION_NUM: i32 = 150_000;

/// Columns of the Python Dispatchbox schema the relay reads from every event.
const EVENT_COLUMNS: &[&str] = &[
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
    "created_at",
];

/// Columns every row must have a value in (migration 1 declares them NOT NULL; a table the
/// relay adopts may not).
const NOT_NULL_COLUMNS: &[&str] = &[
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
    "created_at",
    "status",
    "attempts",
    "next_run_at",
];

/// `"a", "b" and "c"`.
fn quoted_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

/// Columns the status writer and the sweeper write; migrations 1 and 2 create them.
const STATUS_COLUMNS: &[&str] = &[
    "status",
    "attempts",
    "next_run_at",
    "claim_token",
    "last_error",
    "last_error_at",
    "delivered_at",
];

/// A configuration problem found by the checks. Every variant except
/// [`CheckError::Database`], [`CheckError::Connect`] and [`CheckError::ConnectTimeout`] is
/// definite: retrying will not help, an operator must act.
///
/// Displays as "problem; fix" (one line for logs); [`CheckError::problem`] and
/// [`CheckError::fix`] give the two parts separately.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The checks could not run.
    Database(#[from] StoreError),
    /// The database could not be reached, or refused the login.
    Connect {
        /// Redacted URL of the database.
        target: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The database did not answer in time.
    ConnectTimeout {
        /// Redacted URL of the database.
        target: String,
        /// How long the check waited.
        timeout: Duration,
    },
    /// The server is older than [`MIN_SERVER_VERSION_NUM`].
    ServerTooOld {
        /// `server_version` as the server reports it.
        version: String,
    },
    /// `wal_level` is not `logical`.
    WalLevel {
        /// The current setting.
        current: String,
    },
    /// The role can neither stream from a slot nor is it a superuser.
    NoReplicationPrivilege {
        /// The connected role.
        role: String,
    },
    /// The outbox table does not exist.
    MissingTable {
        /// `schema.name`.
        table: String,
    },
    /// A column every outbox event needs is missing.
    MissingEventColumn {
        /// `schema.name`.
        table: String,
        /// The missing column.
        column: &'static str,
    },
    /// A column the status writer needs is missing: the table predates migration 2.
    MissingStatusColumn {
        /// `schema.name`.
        table: String,
        /// The missing column.
        column: &'static str,
    },
    /// A column has a type the relay cannot use.
    WrongColumnType {
        /// `schema.name`.
        table: String,
        /// The column.
        column: &'static str,
        /// Its type as `format_type` prints it.
        found: String,
        /// What is accepted.
        expected: &'static str,
        /// The type to convert it to.
        convert_to: &'static str,
    },
    /// A text column is too narrow for the values the relay writes into it.
    ColumnTooNarrow {
        /// `schema.name`.
        table: String,
        /// The column.
        column: &'static str,
        /// Its declared width (characters).
        width: usize,
        /// The narrowest width that works.
        needs: usize,
        /// What the relay writes there.
        holds: &'static str,
    },
    /// The publication does not exist.
    MissingPublication {
        /// The configured publication.
        publication: String,
        /// `schema.name` of the outbox table.
        table: String,
    },
    /// The publication exists but does not include the outbox table.
    TableNotPublished {
        /// The configured publication.
        publication: String,
        /// `schema.name` of the outbox table.
        table: String,
    },
    /// The publication publishes something other than exactly `insert`.
    PublicationNotInsertOnly {
        /// The configured publication.
        publication: String,
        /// The published operations, comma separated (`insert, update`), or `nothing`.
        publishes: String,
    },
    /// The slot's WAL was removed (`wal_status = lost`): it cannot stream any more.
    SlotLost {
        /// The configured slot.
        slot: String,
    },
    /// A slot of the configured name exists but is not this relay's (see
    /// [`slot::judge`]): the relay neither streams from it nor drops or recreates it.
    SlotNotOurs(NotOurs),
}

impl CheckError {
    /// True only when the checks could not run for a transient reason.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) | Self::Connect { source: e, .. } => e.is_transient(),
            Self::ConnectTimeout { .. } => true,
            _ => false,
        }
    }

    /// A failed connection attempt of `dispatchbox check`, with a hint chosen by its cause.
    pub fn from_connect(error: SqlConnectError) -> Self {
        match error {
            SqlConnectError::Connect { target, source } => Self::Connect {
                target,
                source: StoreError::db("connection", source),
            },
            SqlConnectError::Pool { target, source } => Self::Connect {
                target,
                source: StoreError::Unexpected {
                    context: "connection pool setup".into(),
                    detail: source.to_string(),
                },
            },
        }
    }

    /// The stable name of the check that produced this problem (the `check` field of a
    /// [`Finding`]).
    pub fn check(&self) -> &'static str {
        match self {
            Self::Database(_) | Self::Connect { .. } | Self::ConnectTimeout { .. } => "connection",
            Self::ServerTooOld { .. } => "server_version",
            Self::WalLevel { .. } => "wal_level",
            Self::NoReplicationPrivilege { .. } => "replication_privilege",
            Self::MissingTable { .. }
            | Self::MissingEventColumn { .. }
            | Self::MissingStatusColumn { .. }
            | Self::WrongColumnType { .. }
            | Self::ColumnTooNarrow { .. } => "table",
            Self::MissingPublication { .. }
            | Self::TableNotPublished { .. }
            | Self::PublicationNotInsertOnly { .. } => "publication",
            Self::SlotLost { .. } | Self::SlotNotOurs(_) => "slot",
        }
    }

    /// What is wrong, without the fix.
    pub fn problem(&self) -> String {
        match self {
            Self::Database(e) => e.to_string(),
            Self::Connect { target, source } => {
                format!("cannot connect to PostgreSQL at {target}: {source}")
            }
            Self::ConnectTimeout { target, timeout } => format!(
                "PostgreSQL at {target} did not answer within {}",
                humantime::format_duration(*timeout)
            ),
            Self::ServerTooOld { version } => format!(
                "PostgreSQL {version} is too old: dispatchbox needs PostgreSQL 15 or newer \
                 (publication row filters and current pgoutput)"
            ),
            Self::WalLevel { current } => {
                format!("wal_level is {current:?} but logical decoding needs \"logical\"")
            }
            Self::NoReplicationPrivilege { role } => format!(
                "role \"{role}\" lacks the REPLICATION attribute needed to stream from a \
                 replication slot"
            ),
            Self::MissingTable { table } => format!("outbox table {table} does not exist"),
            Self::MissingEventColumn { table, column } => format!(
                "outbox table {table} has no column \"{column}\"; the relay needs id, \
                 aggregate_type, aggregate_id, event_type, payload (json or jsonb) and \
                 created_at, as in the Python Dispatchbox schema"
            ),
            Self::MissingStatusColumn { table, column } => format!(
                "outbox table {table} has no column \"{column}\", which the relay writes \
                 delivery status into"
            ),
            Self::WrongColumnType {
                table,
                column,
                found,
                expected,
                ..
            } => format!(
                "column \"{column}\" of outbox table {table} has type {found}; it must be {expected}"
            ),
            Self::ColumnTooNarrow {
                table,
                column,
                width,
                needs,
                holds,
            } => format!(
                "column \"{column}\" of outbox table {table} holds at most {width} characters; \
                 the relay writes {holds} there and needs at least {needs}"
            ),
            Self::MissingPublication { publication, .. } => {
                format!("publication \"{publication}\" does not exist")
            }
            Self::TableNotPublished { publication, table } => {
                format!("publication \"{publication}\" does not include outbox table {table}")
            }
            Self::PublicationNotInsertOnly {
                publication,
                publishes,
            } => format!(
                "publication \"{publication}\" publishes {publishes}, but it must publish only \
                 insert: the relay writes delivery status back onto the outbox rows, and \
                 published updates would stream those writes back to it as events"
            ),
            Self::SlotLost { slot } => format!(
                "replication slot \"{slot}\" was invalidated (wal_status lost): the WAL it needs \
                 was removed, usually because it exceeded max_slot_wal_keep_size while no relay \
                 was streaming"
            ),
            Self::SlotNotOurs(not_ours) => not_ours.problem(),
        }
    }

    /// The command or setting that fixes the problem, when an operator can act.
    pub fn fix(&self) -> Option<String> {
        let fix = match self {
            Self::Database(_) => return None,
            Self::Connect { source, .. } => connect_fix(source).to_owned(),
            Self::ConnectTimeout { .. } => "check the host and port in DISPATCHBOX_DATABASE_URL \
                 and the network path to it (firewalls, security groups)"
                .to_owned(),
            Self::ServerTooOld { .. } => "upgrade the server".to_owned(),
            Self::WalLevel { .. } => "run ALTER SYSTEM SET wal_level = logical and restart \
                 PostgreSQL (on a managed service enable its logical replication parameter, \
                 e.g. rds.logical_replication = 1)"
                .to_owned(),
            Self::NoReplicationPrivilege { role } => {
                format!("as a superuser run ALTER ROLE \"{role}\" REPLICATION")
            }
            Self::MissingTable { .. } => "run `dispatchbox migrate` to create it, or set \
                 DISPATCHBOX_TABLE to the existing outbox table"
                .to_owned(),
            Self::MissingEventColumn { .. } => {
                "add the column or point DISPATCHBOX_TABLE at an outbox table".to_owned()
            }
            Self::MissingStatusColumn { .. } => "run `dispatchbox migrate` to add it".to_owned(),
            Self::WrongColumnType {
                table,
                column,
                convert_to,
                ..
            } => format!(
                "run ALTER TABLE {table} ALTER COLUMN \"{column}\" TYPE {convert_to} \
                 USING \"{column}\"::{convert_to}"
            ),
            Self::ColumnTooNarrow { table, column, .. } => widen(table, column),
            Self::MissingPublication { publication, table } => format!(
                "run `dispatchbox migrate`, or create it with CREATE PUBLICATION \
                 \"{publication}\" FOR TABLE {table} WITH (publish = 'insert')"
            ),
            Self::TableNotPublished { publication, table } => {
                format!("run ALTER PUBLICATION \"{publication}\" ADD TABLE {table}")
            }
            Self::PublicationNotInsertOnly { publication, .. } => {
                format!("run ALTER PUBLICATION \"{publication}\" SET (publish = 'insert')")
            }
            Self::SlotLost { slot } => format!(
                "start `dispatchbox run`: it drops and recreates the slot, and the sweeper \
                 re-delivers the rows written meanwhile (by hand: \
                 SELECT pg_drop_replication_slot('{slot}'))"
            ),
            Self::SlotNotOurs(not_ours) => not_ours.fix(),
        };
        Some(fix)
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem())?;
        match self.fix() {
            Some(fix) => write!(f, "; {fix}"),
            None => Ok(()),
        }
    }
}

/// The hint for a failed connection, by the server's SQLSTATE (none: network or TLS).
fn connect_fix(source: &StoreError) -> &'static str {
    match source.sqlstate().map(|code| code.code()) {
        Some("28P01") => {
            "check the user name and password in DISPATCHBOX_DATABASE_URL (or in the file \
             DISPATCHBOX_DATABASE_URL_FILE names)"
        }
        Some("28000") => {
            "the server refused this role from this address: add a pg_hba.conf line for it \
             (e.g. host DBNAME ROLE ADDRESS/32 scram-sha-256), reload PostgreSQL, and make sure \
             the role has LOGIN"
        }
        Some("3D000") => {
            "fix the database name in DISPATCHBOX_DATABASE_URL, or create the database"
        }
        Some("53300") => {
            "the server has no free connection slots: raise max_connections or shrink other \
             clients' pools"
        }
        Some("57P03") => {
            "the server is starting, stopping or in recovery; try again once it accepts \
             connections"
        }
        _ => {
            "check that PostgreSQL is running and reachable at the host and port of \
             DISPATCHBOX_DATABASE_URL (listen_addresses, pg_hba.conf, firewalls) and that \
             sslmode matches the server"
        }
    }
}

/// Something that works but an operator should know about.
///
/// Displays as "problem; fix" like [`CheckError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckWarning {
    /// Slots may retain WAL without limit.
    UnlimitedSlotWal,
    /// Columns the relay needs a value in may hold NULL: such rows become `dead` one by
    /// one instead of being delivered.
    NullableColumns {
        /// `schema.name`.
        table: String,
        /// The columns without NOT NULL.
        columns: Vec<String>,
    },
    /// The connection to a server that is not on this host is not encrypted.
    NoTls {
        /// The server's address as it sees the connection.
        address: String,
    },
    /// `last_error` is narrower than the errors the relay stores: longer ones are cut.
    ErrorColumnNarrow {
        /// `schema.name`.
        table: String,
        /// Its declared width (characters).
        width: usize,
    },
    /// The slot does not exist yet; `run` creates it.
    SlotMissing {
        /// The configured slot.
        slot: String,
    },
    /// The slot retains more than `max_wal_size` of WAL.
    SlotExtended {
        /// The configured slot.
        slot: String,
        /// Unconfirmed WAL, when known.
        lag_bytes: Option<i64>,
    },
    /// The slot will be invalidated at the next checkpoint unless it catches up.
    SlotUnreserved {
        /// The configured slot.
        slot: String,
        /// Unconfirmed WAL, when known.
        lag_bytes: Option<i64>,
    },
}

impl CheckWarning {
    /// The stable name of the check that produced this warning.
    pub fn check(&self) -> &'static str {
        match self {
            Self::UnlimitedSlotWal => "max_slot_wal_keep_size",
            Self::ErrorColumnNarrow { .. } | Self::NullableColumns { .. } => "table",
            Self::NoTls { .. } => "tls",
            Self::SlotMissing { .. } | Self::SlotExtended { .. } | Self::SlotUnreserved { .. } => {
                "slot"
            }
        }
    }

    /// What deserves attention, without the advice.
    pub fn problem(&self) -> String {
        let behind = |lag: &Option<i64>| match lag {
            Some(bytes) => format!(", {} behind", human_bytes(*bytes)),
            None => String::new(),
        };
        match self {
            Self::UnlimitedSlotWal => "max_slot_wal_keep_size is -1 (unlimited): a stopped relay \
                 makes its slot retain WAL until the disk fills"
                .to_owned(),
            Self::NullableColumns { table, columns } => format!(
                "outbox table {table} allows NULL in {}: the relay needs a value there, and a \
                 row without one becomes dead instead of being delivered",
                quoted_list(columns)
            ),
            Self::NoTls { address } => format!(
                "the connection to the database at {address} is not encrypted: the password, \
                 the events and their payloads cross the network in clear text"
            ),
            Self::ErrorColumnNarrow { table, width } => format!(
                "column \"last_error\" of outbox table {table} holds at most {width} \
                 characters: longer delivery errors are cut to fit and end with \"{}\"",
                widths::TRUNCATION_MARKER
            ),
            Self::SlotMissing { slot } => {
                format!("replication slot \"{slot}\" does not exist yet")
            }
            Self::SlotExtended { slot, lag_bytes } => format!(
                "replication slot \"{slot}\" retains more WAL than max_wal_size (wal_status \
                 extended{})",
                behind(lag_bytes)
            ),
            Self::SlotUnreserved { slot, lag_bytes } => format!(
                "replication slot \"{slot}\" retains more WAL than max_slot_wal_keep_size allows \
                 (wal_status unreserved{}): it will be invalidated at the next checkpoint unless \
                 it catches up",
                behind(lag_bytes)
            ),
        }
    }

    /// What to do about it.
    pub fn fix(&self) -> String {
        match self {
            Self::UnlimitedSlotWal => "set a limit (e.g. ALTER SYSTEM SET \
                 max_slot_wal_keep_size = '50GB'; then SELECT pg_reload_conf()); a slot that \
                 exceeds it is invalidated, and the relay recreates it and sweeps"
                .to_owned(),
            Self::NullableColumns { table, columns } => format!(
                "after making sure no row holds NULL there, run ALTER TABLE {table} {}",
                columns
                    .iter()
                    .map(|c| format!("ALTER COLUMN \"{c}\" SET NOT NULL"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::NoTls { .. } => "require TLS in DISPATCHBOX_DATABASE_URL: add \
                 sslmode=verify-full and sslrootcert=/path/to/ca.crt (the server's CA), so the \
                 relay also checks whom it talks to; sslmode=require only encrypts"
                .to_owned(),
            Self::ErrorColumnNarrow { table, .. } => widen(table, "last_error"),
            Self::SlotMissing { .. } => "nothing to do: `dispatchbox run` creates it on start, \
                 and its sweeper delivers rows inserted before then"
                .to_owned(),
            Self::SlotExtended { .. } => "make sure a relay is streaming from it and keeping up \
                 (`dispatchbox status` shows the lag)"
                .to_owned(),
            Self::SlotUnreserved { .. } => "start the relay or find why it is stuck \
                 (`dispatchbox status`); raise max_slot_wal_keep_size for more headroom"
                .to_owned(),
        }
    }
}

impl fmt::Display for CheckWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.problem(), self.fix())
    }
}

/// How a [`Finding`] came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The check passed.
    Ok,
    /// Works, but deserves attention.
    Warning,
    /// Blocks running the relay (or means data needs re-delivery).
    Error,
}

/// One judgement of `dispatchbox check`, passed or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable name of the check: `connection`, `server_version`, `wal_level`,
    /// `replication_privilege`, `table`, `publication`, `max_slot_wal_keep_size`, `slot`,
    /// `sink.<name>`. One check may produce several findings.
    pub check: String,
    /// How it came out.
    pub severity: Severity,
    /// What was found.
    pub message: String,
    /// The command or setting that fixes it (`None` when it passed).
    pub fix: Option<String>,
}

impl Finding {
    /// A passed check.
    pub fn ok(check: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            severity: Severity::Ok,
            message: message.into(),
            fix: None,
        }
    }

    /// A failed check with its fix.
    pub fn error(
        check: impl Into<String>,
        message: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Self {
            check: check.into(),
            severity: Severity::Error,
            message: message.into(),
            fix,
        }
    }
}

impl From<&CheckError> for Finding {
    fn from(error: &CheckError) -> Self {
        Finding::error(error.check(), error.problem(), error.fix())
    }
}

impl From<&CheckWarning> for Finding {
    fn from(warning: &CheckWarning) -> Self {
        Self {
            check: warning.check().to_owned(),
            severity: Severity::Warning,
            message: warning.problem(),
            fix: Some(warning.fix()),
        }
    }
}

/// The publication as the catalogs describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationFacts {
    /// `pubinsert`.
    pub insert: bool,
    /// `pubupdate`.
    pub update: bool,
    /// `pubdelete`.
    pub delete: bool,
    /// `pubtruncate`.
    pub truncate: bool,
    /// Whether the outbox table is published by it (directly, by schema or `FOR ALL TABLES`).
    pub contains_table: bool,
}

/// What the checks read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// `server_version_num`, e.g. 150004.
    pub server_version_num: i32,
    /// `server_version`, e.g. `15.4`.
    pub server_version: String,
    /// `wal_level`.
    pub wal_level: String,
    /// `max_slot_wal_keep_size` (`-1` = unlimited).
    pub max_slot_wal_keep_size: Option<String>,
    /// The connected role.
    pub role: String,
    /// Whether the role is a superuser.
    pub superuser: bool,
    /// Whether the role has REPLICATION.
    pub replication: bool,
    /// The connected database.
    pub database: String,
    /// Whether this connection is encrypted (`pg_stat_ssl`).
    pub tls: bool,
    /// The server's address of this connection (`inet_server_addr()`); `None` over a Unix
    /// socket.
    pub server_address: Option<String>,
    /// The outbox table's columns and types (`format_type`), or `None` if it does not exist.
    pub columns: Option<Vec<(String, String)>>,
    /// Its columns without a NOT NULL constraint.
    pub nullable: Vec<String>,
    /// The publication, or `None` if it does not exist.
    pub publication: Option<PublicationFacts>,
}

/// Reads everything the checks judge, in three queries.
pub async fn gather(client: &Client, names: &Names) -> Result<ServerFacts, StoreError> {
    const CONTEXT: &str = "preflight checks";
    let db = |e| StoreError::db(CONTEXT, e);
    let server = client
        .query_one(
            "SELECT current_setting('server_version_num')::int,
                    current_setting('server_version'),
                    current_setting('wal_level'),
                    current_setting('max_slot_wal_keep_size', true),
                    r.rolname::text, r.rolsuper, r.rolreplication, current_database()::text,
                    coalesce((SELECT ssl FROM pg_catalog.pg_stat_ssl
                               WHERE pid = pg_backend_pid()), false),
                    host(inet_server_addr())
               FROM pg_catalog.pg_roles r
              WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(db)?;

    let table = names.table().quoted();
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(db)?
        .get(0);
    let mut nullable = Vec::new();
    let columns = if exists {
        let rows = client
            .query(
                "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod),
                        a.attnotnull
                   FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&table],
            )
            .await
            .map_err(db)?;
        nullable = rows
            .iter()
            .filter(|r| !r.get::<_, bool>(2))
            .map(|r| r.get(0))
            .collect();
        Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    } else {
        None
    };

    let publication = client
        .query_opt(
            "SELECT p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables t
                             WHERE t.pubname = p.pubname
                               AND t.schemaname = $2 AND t.tablename = $3)
               FROM pg_catalog.pg_publication p
              WHERE p.pubname = $1",
            &[
                &names.publication().as_str(),
                &names.table().schema(),
                &names.table().name(),
            ],
        )
        .await
        .map_err(db)?
        .map(|r| PublicationFacts {
            insert: r.get(0),
            update: r.get(1),
            delete: r.get(2),
            truncate: r.get(3),
            contains_table: r.get(4),
        });

    Ok(ServerFacts {
        server_version_num: server.get(0),
        server_version: server.get(1),
        wal_level: server.get(2),
        max_slot_wal_keep_size: server.get(3),
        role: server.get(4),
        superuser: server.get(5),
        replication: server.get(6),
        database: server.get(7),
        tls: server.get(8),
        server_address: server.get(9),
        columns,
        nullable,
        publication,
    })
}

/// One judgement: the check's name, what it reports when it passes, and its problems.
struct Judgement {
    check: &'static str,
    passed: String,
    problems: Vec<CheckError>,
}

impl ServerFacts {
    /// Every problem, in the order an operator should fix them (server, role, table,
    /// publication). Empty when the relay can run.
    pub fn problems(&self, names: &Names) -> Vec<CheckError> {
        self.judgements(names)
            .into_iter()
            .flat_map(|j| j.problems)
            .collect()
    }

    /// Settings that work but deserve an operator's attention.
    pub fn warnings(&self, names: &Names) -> Vec<CheckWarning> {
        let mut warnings = Vec::new();
        if let Some(address) = self.server_address.as_deref() {
            if !self.tls && !is_loopback(address) {
                warnings.push(CheckWarning::NoTls {
                    address: address.to_owned(),
                });
            }
        }
        let nullable: Vec<String> = NOT_NULL_COLUMNS
            .iter()
            .filter(|c| self.nullable.iter().any(|n| n == *c))
            .map(|c| (*c).to_owned())
            .collect();
        if !nullable.is_empty() {
            warnings.push(CheckWarning::NullableColumns {
                table: names.table().to_string(),
                columns: nullable,
            });
        }
        if let Some(width) = self.text_widths().last_error {
            if width < widths::MAX_ERROR_BYTES {
                warnings.push(CheckWarning::ErrorColumnNarrow {
                    table: names.table().to_string(),
                    width,
                });
            }
        }
        if self.max_slot_wal_keep_size.as_deref() == Some("-1") {
            warnings.push(CheckWarning::UnlimitedSlotWal);
        }
        warnings
    }

    /// The widths of the text columns the relay writes (unbounded when the table is
    /// missing).
    pub fn text_widths(&self) -> TextWidths {
        self.columns
            .as_deref()
            .map(TextWidths::from_columns)
            .unwrap_or_default()
    }

    /// Every judgement of `dispatchbox check`, passed or not, in the order an operator
    /// should act on them: the server's problems, `max_slot_wal_keep_size`, then the
    /// replication slot (its problems matter only to `check`: `run` recreates a lost slot).
    pub fn findings(&self, names: &Names, slot: &SlotStatus) -> Vec<Finding> {
        let mut findings = Vec::new();
        for judgement in self.judgements(names) {
            if judgement.problems.is_empty() {
                findings.push(Finding::ok(judgement.check, judgement.passed));
            } else {
                findings.extend(judgement.problems.iter().map(Finding::from));
            }
        }
        let warnings = self.warnings(names);
        findings.extend(
            warnings
                .iter()
                .filter(|w| w.check() != "max_slot_wal_keep_size")
                .map(Finding::from),
        );
        let slot_wal: Vec<&CheckWarning> = warnings
            .iter()
            .filter(|w| w.check() == "max_slot_wal_keep_size")
            .collect();
        match (&self.max_slot_wal_keep_size, slot_wal.is_empty()) {
            (Some(size), true) => findings.push(Finding::ok(
                "max_slot_wal_keep_size",
                format!("max_slot_wal_keep_size is {size}"),
            )),
            _ => findings.extend(slot_wal.into_iter().map(Finding::from)),
        }
        let slot_problems = slot_problems(slot, &self.database);
        let slot_warnings = slot_warnings(slot, &self.database);
        if slot_problems.is_empty() && slot_warnings.is_empty() {
            findings.push(Finding::ok("slot", slot_summary(slot)));
        }
        findings.extend(slot_problems.iter().map(Finding::from));
        findings.extend(slot_warnings.iter().map(Finding::from));
        findings
    }

    fn judgements(&self, names: &Names) -> Vec<Judgement> {
        let table = names.table().to_string();
        let publication = names.publication().to_string();

        let mut version = Judgement {
            check: "server_version",
            passed: format!("server version {}", self.server_version),
            problems: Vec::new(),
        };
        if self.server_version_num < MIN_SERVER_VERSION_NUM {
            version.problems.push(CheckError::ServerTooOld {
                version: self.server_version.clone(),
            });
        }

        let mut wal_level = Judgement {
            check: "wal_level",
            passed: "wal_level is logical".to_owned(),
            problems: Vec::new(),
        };
        if self.wal_level != "logical" {
            wal_level.problems.push(CheckError::WalLevel {
                current: self.wal_level.clone(),
            });
        }

        let mut privilege = Judgement {
            check: "replication_privilege",
            passed: if self.superuser {
                format!("role \"{}\" is a superuser", self.role)
            } else {
                format!("role \"{}\" has REPLICATION", self.role)
            },
            problems: Vec::new(),
        };
        if !self.replication && !self.superuser {
            privilege.problems.push(CheckError::NoReplicationPrivilege {
                role: self.role.clone(),
            });
        }

        let table_judgement = Judgement {
            check: "table",
            passed: format!("outbox table {table} has every column the relay uses"),
            problems: match &self.columns {
                None => vec![CheckError::MissingTable {
                    table: table.clone(),
                }],
                Some(columns) => column_problems(&table, columns),
            },
        };

        let mut publication_judgement = Judgement {
            check: "publication",
            passed: format!("publication \"{publication}\" publishes only the inserts of {table}"),
            problems: Vec::new(),
        };
        match &self.publication {
            None => publication_judgement
                .problems
                .push(CheckError::MissingPublication { publication, table }),
            Some(p) => {
                if !p.contains_table {
                    publication_judgement
                        .problems
                        .push(CheckError::TableNotPublished {
                            publication: publication.clone(),
                            table,
                        });
                }
                if !p.insert || p.update || p.delete || p.truncate {
                    let published: Vec<&str> = [
                        (p.insert, "insert"),
                        (p.update, "update"),
                        (p.delete, "delete"),
                        (p.truncate, "truncate"),
                    ]
                    .into_iter()
                    .filter_map(|(on, op)| on.then_some(op))
                    .collect();
                    publication_judgement
                        .problems
                        .push(CheckError::PublicationNotInsertOnly {
                            publication,
                            publishes: if published.is_empty() {
                                "nothing".to_owned()
                            } else {
                                published.join(", ")
                            },
                        });
                }
            }
        }

        vec![
            version,
            wal_level,
            privilege,
            table_judgement,
            publication_judgement,
        ]
    }
}

/// Problems of the replication slot as `check` reports them: one that is not the relay's,
/// and the relay's own when it was invalidated (which `run` repairs).
fn slot_problems(slot: &SlotStatus, database: &str) -> Vec<CheckError> {
    match slot::judge(slot, database) {
        Err(not_ours) => vec![CheckError::SlotNotOurs(not_ours)],
        Ok(SlotUse::Invalidated) => vec![CheckError::SlotLost {
            slot: slot.name.clone(),
        }],
        Ok(SlotUse::Missing | SlotUse::Usable) => Vec::new(),
    }
}

/// States of the replication slot that work but need watching.
fn slot_warnings(slot: &SlotStatus, database: &str) -> Vec<CheckWarning> {
    let name = slot.name.clone();
    match slot::judge(slot, database) {
        Ok(SlotUse::Missing) => return vec![CheckWarning::SlotMissing { slot: name }],
        Ok(SlotUse::Usable) => {}
        Ok(SlotUse::Invalidated) | Err(_) => return Vec::new(),
    }
    match slot.wal_status {
        Some(SlotWalStatus::Extended) => vec![CheckWarning::SlotExtended {
            slot: name,
            lag_bytes: slot.lag_bytes,
        }],
        Some(SlotWalStatus::Unreserved) => vec![CheckWarning::SlotUnreserved {
            slot: name,
            lag_bytes: slot.lag_bytes,
        }],
        _ => Vec::new(),
    }
}

/// "replication slot "x" exists (wal_status reserved, 1.2 KiB behind, active (pid 42))".
fn slot_summary(slot: &SlotStatus) -> String {
    let wal_status = slot.wal_status.map_or("unknown", SlotWalStatus::as_str);
    let lag = slot.lag_bytes.map_or_else(
        || "lag unknown".to_owned(),
        |b| format!("{} behind", human_bytes(b)),
    );
    let activity = match slot.active_pid {
        Some(pid) if slot.active => format!("streaming to pid {pid}"),
        _ => "inactive".to_owned(),
    };
    format!(
        "replication slot \"{}\" exists (wal_status {wal_status}, {lag}, {activity})",
        slot.name
    )
}

/// Accepted types per column (as `format_type` prints them, without type modifiers), as
/// the decoder and the status writer read them. Optional columns are checked when present.
const COLUMN_TYPES: &[(&str, &[&str], &str, &str)] = &[
    // (column, accepted, described as, convert to)
    (
        "id",
        &["bigint", "integer"],
        "bigint (or integer)",
        "bigint",
    ),
    ("aggregate_type", TEXT_TYPES, "text (or varchar)", "text"),
    ("aggregate_id", TEXT_TYPES, "text (or varchar)", "text"),
    ("event_type", TEXT_TYPES, "text (or varchar)", "text"),
    ("payload", JSON_TYPES, "jsonb (or json)", "jsonb"),
    ("headers", JSON_TYPES, "jsonb (or json)", "jsonb"),
    ("created_at", TIMESTAMPTZ, "timestamptz", "timestamptz"),
    ("next_run_at", TIMESTAMPTZ, "timestamptz", "timestamptz"),
    ("last_error_at", TIMESTAMPTZ, "timestamptz", "timestamptz"),
    ("delivered_at", TIMESTAMPTZ, "timestamptz", "timestamptz"),
    ("status", TEXT_TYPES, "text (or varchar)", "text"),
    ("claim_token", TEXT_TYPES, "text (or varchar)", "text"),
    ("last_error", TEXT_TYPES, "text (or varchar)", "text"),
    (
        "attempts",
        &["integer", "bigint", "smallint"],
        "integer",
        "integer",
    ),
];
const TEXT_TYPES: &[&str] = &["text", "character varying"];
const JSON_TYPES: &[&str] = &["jsonb", "json"];
const TIMESTAMPTZ: &[&str] = &["timestamp with time zone"];

/// `character varying(255)` → `character varying`, `timestamp(3) with time zone` →
/// `timestamp with time zone`.
fn without_typmod(ty: &str) -> String {
    let mut out = String::with_capacity(ty.len());
    let mut depth = 0_u32;
    for c in ty.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn column_problems(table: &str, columns: &[(String, String)]) -> Vec<CheckError> {
    let type_of = |name: &str| {
        columns
            .iter()
            .find(|(column, _)| column == name)
            .map(|(_, ty)| ty.as_str())
    };
    let mut problems = Vec::new();
    for &column in EVENT_COLUMNS {
        if type_of(column).is_none() {
            problems.push(CheckError::MissingEventColumn {
                table: table.to_owned(),
                column,
            });
        }
    }
    for &column in STATUS_COLUMNS {
        if type_of(column).is_none() {
            problems.push(CheckError::MissingStatusColumn {
                table: table.to_owned(),
                column,
            });
        }
    }
    for &(column, accepted, expected, convert_to) in COLUMN_TYPES {
        if let Some(found) = type_of(column) {
            if !accepted.contains(&without_typmod(found).as_str()) {
                problems.push(CheckError::WrongColumnType {
                    table: table.to_owned(),
                    column,
                    found: found.to_owned(),
                    expected,
                    convert_to,
                });
            }
        }
    }
    for (column, needs, holds) in [
        (
            "status",
            widths::STATUS_MIN_WIDTH,
            "the statuses, the longest being 'processing',",
        ),
        (
            "claim_token",
            widths::CLAIM_TOKEN_MIN_WIDTH,
            "the sweeper's claim tokens (host-pid-random)",
        ),
    ] {
        if let Some(width) = type_of(column).and_then(widths::declared_width) {
            if width < needs {
                problems.push(CheckError::ColumnTooNarrow {
                    table: table.to_owned(),
                    column,
                    width,
                    needs,
                    holds,
                });
            }
        }
    }
    problems
}

/// Whether `address` (as `host(inet_server_addr())` prints it) is this host's loopback.
fn is_loopback(address: &str) -> bool {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|ip| ip.is_loopback())
        }
        Err(_) => false,
    }
}

/// The statement that makes a text column unbounded (from `varchar(n)` this changes only
/// the catalog: no table rewrite).
fn widen(table: &str, column: &str) -> String {
    format!("run ALTER TABLE {table} ALTER COLUMN \"{column}\" TYPE text")
}

/// [`preflight`] on a connection of `store`'s pool.
pub async fn preflight_store(
    store: &Store,
    names: &Names,
    slot: &Identifier,
) -> Result<ServerFacts, CheckError> {
    let client = store.client("preflight checks").await?;
    preflight(&client, names, slot).await
}

/// Runs every check and returns the first problem (fail fast at `dispatchbox run`), or
/// the facts when the relay can run. The slot is judged as `check` judges it
/// ([`slot::judge`]), except that an invalidated slot of the relay's is no problem here:
/// `run` recreates it.
pub async fn preflight(
    client: &Client,
    names: &Names,
    slot: &Identifier,
) -> Result<ServerFacts, CheckError> {
    let facts = gather(client, names).await?;
    if let Some(problem) = facts.problems(names).into_iter().next() {
        return Err(problem);
    }
    let status = slot::inspect(client, slot).await?;
    slot::judge(&status, &facts.database).map_err(CheckError::SlotNotOurs)?;
    Ok(facts)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new(
            "public.outbox_event".parse().unwrap(),
            "dispatchbox".parse().unwrap(),
        )
        .unwrap()
    }

    fn healthy() -> ServerFacts {
        let columns = EVENT_COLUMNS
            .iter()
            .chain(STATUS_COLUMNS)
            .map(|c| {
                let ty = match *c {
                    "id" => "bigint",
                    "payload" => "jsonb",
                    "attempts" => "integer",
                    "created_at" | "next_run_at" | "last_error_at" => "timestamp with time zone",
                    "delivered_at" => "timestamp(3) with time zone",
                    "aggregate_id" => "character varying(64)",
                    _ => "text",
                };
                (c.to_string(), ty.to_string())
            })
            .collect();
        ServerFacts {
            server_version_num: 150_004,
            server_version: "15.4".into(),
            wal_level: "logical".into(),
            max_slot_wal_keep_size: Some("1024".into()),
            role: "relay".into(),
            superuser: false,
            replication: true,
            database: "app".into(),
            tls: false,
            server_address: Some("127.0.0.1".into()),
            columns: Some(columns),
            nullable: vec!["headers".into(), "last_error".into()],
            publication: Some(PublicationFacts {
                insert: true,
                update: false,
                delete: false,
                truncate: false,
                contains_table: true,
            }),
        }
    }

    #[test]
    fn healthy_server_has_no_problems() {
        assert!(healthy().problems(&names()).is_empty());
        assert!(healthy().warnings(&names()).is_empty());
    }

    #[test]
    fn each_problem_is_reported_with_its_fix() {
        let mut facts = healthy();
        facts.server_version_num = 140_009;
        facts.server_version = "14.9".into();
        facts.wal_level = "replica".into();
        facts.replication = false;
        facts.publication = Some(PublicationFacts {
            insert: true,
            update: true,
            delete: false,
            truncate: true,
            contains_table: false,
        });
        let text: Vec<String> = facts
            .problems(&names())
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(text.len(), 5, "{text:#?}");
        assert!(text[0].contains("14.9"));
        assert!(text[1].contains("ALTER SYSTEM SET wal_level = logical"));
        assert!(text[2].contains("ALTER ROLE \"relay\" REPLICATION"));
        assert!(text[3].contains("ADD TABLE public.outbox_event"));
        assert!(text[4].contains("publishes insert, update, truncate"));
        assert!(text[4].contains("SET (publish = 'insert')"));
    }

    #[test]
    fn payload_must_be_json() {
        let mut facts = healthy();
        if let Some(columns) = facts.columns.as_mut() {
            for (name, ty) in columns.iter_mut() {
                if name == "payload" {
                    *ty = "text".into();
                }
            }
            columns.retain(|(name, _)| name != "delivered_at");
        }
        let problems = facts.problems(&names());
        assert!(matches!(
            problems.as_slice(),
            [
                CheckError::MissingStatusColumn {
                    column: "delivered_at",
                    ..
                },
                CheckError::WrongColumnType {
                    column: "payload",
                    ..
                }
            ]
        ));
    }

    #[test]
    fn unlimited_slot_wal_is_a_warning() {
        let mut facts = healthy();
        facts.max_slot_wal_keep_size = Some("-1".into());
        assert_eq!(
            facts.warnings(&names()),
            vec![CheckWarning::UnlimitedSlotWal]
        );
    }

    fn slot(wal_status: SlotWalStatus) -> SlotStatus {
        SlotStatus {
            name: "dispatchbox".into(),
            exists: true,
            slot_type: Some("logical".into()),
            plugin: Some("pgoutput".into()),
            temporary: false,
            two_phase: false,
            database: Some("app".into()),
            active: false,
            active_pid: None,
            client_application_name: None,
            client_addr: None,
            client_state: None,
            confirmed_flush_lsn: Some("0/16B3748".into()),
            restart_lsn: Some("0/16B3710".into()),
            lag_bytes: Some(2048),
            wal_status: Some(wal_status),
            safe_wal_size: Some(1 << 30),
            invalidation_reason: None,
        }
    }

    fn severities(findings: &[Finding], check: &str) -> Vec<Severity> {
        findings
            .iter()
            .filter(|f| f.check == check)
            .map(|f| f.severity)
            .collect()
    }

    #[test]
    fn every_check_reports_a_finding_when_healthy() {
        let findings = healthy().findings(&names(), &slot(SlotWalStatus::Reserved));
        let checks: Vec<&str> = findings.iter().map(|f| f.check.as_str()).collect();
        assert_eq!(
            checks,
            [
                "server_version",
                "wal_level",
                "replication_privilege",
                "table",
                "publication",
                "max_slot_wal_keep_size",
                "slot"
            ]
        );
        assert!(findings
            .iter()
            .all(|f| f.severity == Severity::Ok && f.fix.is_none()));
        assert!(
            findings[6].message.contains("2.0 KiB behind"),
            "{findings:#?}"
        );
    }

    #[test]
    fn slot_states_are_judged() {
        let facts = healthy();
        let judge = |slot: SlotStatus| facts.findings(&names(), &slot);

        let lost = judge(slot(SlotWalStatus::Lost));
        assert_eq!(severities(&lost, "slot"), [Severity::Error]);
        let fix = lost
            .iter()
            .find(|f| f.check == "slot")
            .and_then(|f| f.fix.clone());
        assert!(fix.is_some_and(|f| f.contains("recreates the slot") && f.contains("sweeper")));

        for status in [SlotWalStatus::Extended, SlotWalStatus::Unreserved] {
            assert_eq!(
                severities(&judge(slot(status)), "slot"),
                [Severity::Warning],
                "{status:?}"
            );
        }

        let mut missing = slot(SlotWalStatus::Reserved);
        missing.exists = false;
        assert_eq!(severities(&judge(missing), "slot"), [Severity::Warning]);

        let mut physical = slot(SlotWalStatus::Reserved);
        physical.slot_type = Some("physical".into());
        physical.plugin = None;
        physical.database = None;
        let findings = judge(physical);
        assert_eq!(severities(&findings, "slot"), [Severity::Error]);
        assert!(findings.iter().any(|f| f.message.contains("physical slot")));

        // Another database's slot: one error (its WAL status is not the relay's concern).
        let mut elsewhere = slot(SlotWalStatus::Lost);
        elsewhere.database = Some("other".into());
        let findings = judge(elsewhere);
        assert_eq!(
            severities(&findings, "slot"),
            [Severity::Error],
            "{findings:#?}"
        );
        assert!(findings
            .iter()
            .any(|f| f.message.contains("logical slot of database \"other\"")));
    }

    /// Only a logical pgoutput slot of the configured database, not temporary and without
    /// two-phase decoding, is the relay's; anything else is refused with the slot named,
    /// what it is, and both ways out.
    #[test]
    fn only_the_relays_own_slot_is_used() {
        let judge_slot =
            |s: &SlotStatus, db: &str| slot::judge(s, db).map_err(CheckError::SlotNotOurs);
        let ours = slot(SlotWalStatus::Reserved);
        assert_eq!(judge_slot(&ours, "app").unwrap(), SlotUse::Usable);
        let mut missing = ours.clone();
        missing.exists = false;
        assert_eq!(judge_slot(&missing, "app").unwrap(), SlotUse::Missing);
        assert_eq!(
            judge_slot(&slot(SlotWalStatus::Lost), "app").unwrap(),
            SlotUse::Invalidated
        );
        // PostgreSQL 17+ names the reason even when wal_status is not lost.
        let mut conflicting = ours.clone();
        conflicting.invalidation_reason = Some("rows_removed".into());
        assert_eq!(
            judge_slot(&conflicting, "app").unwrap(),
            SlotUse::Invalidated
        );

        let refused = |change: &dyn Fn(&mut SlotStatus), what: &str| {
            let mut other = ours.clone();
            change(&mut other);
            let error = judge_slot(&other, "app").unwrap_err();
            let text = error.to_string();
            assert!(text.contains(what), "{what}: {text}");
            assert!(text.contains("replication slot \"dispatchbox\""), "{text}");
            assert!(text.contains("set DISPATCHBOX_SLOT"), "{text}");
            assert!(
                text.contains("SELECT pg_drop_replication_slot('dispatchbox')"),
                "{text}"
            );
            assert_eq!(error.check(), "slot");
            assert!(!error.is_transient());
            text
        };
        let text = refused(
            &|s| s.database = Some("billing".into()),
            "logical slot of database \"billing\" with output plugin \"pgoutput\"",
        );
        assert!(
            text.contains("while connected to database \"billing\""),
            "{text}"
        );
        refused(
            &|s| s.plugin = Some("test_decoding".into()),
            "output plugin \"test_decoding\"",
        );
        let text = refused(
            &|s| {
                s.slot_type = Some("physical".into());
                s.plugin = None;
                s.database = None;
            },
            "a physical slot",
        );
        assert!(!text.contains("while connected"), "{text}");
        refused(&|s| s.temporary = true, "a temporary logical slot");
        refused(&|s| s.two_phase = true, "two-phase decoding");
        // Even an invalidated slot of another database is left alone.
        refused(
            &|s| {
                s.database = Some("billing".into());
                s.wal_status = Some(SlotWalStatus::Lost);
            },
            "database \"billing\"",
        );
    }

    #[test]
    fn nullable_contract_columns_are_a_warning_with_the_fix() {
        let mut facts = healthy();
        facts.nullable = vec!["headers".into(), "event_type".into(), "created_at".into()];
        let warnings = facts.warnings(&names());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(
            warnings[0].problem(),
            "outbox table public.outbox_event allows NULL in \"event_type\" and \"created_at\": \
             the relay needs a value there, and a row without one becomes dead instead of being \
             delivered"
        );
        assert!(warnings[0].fix().ends_with(
            "ALTER TABLE public.outbox_event ALTER COLUMN \"event_type\" SET NOT NULL, \
             ALTER COLUMN \"created_at\" SET NOT NULL"
        ));
    }

    #[test]
    fn an_unencrypted_connection_to_another_host_is_a_warning() {
        let mut facts = healthy();
        for local in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            facts.server_address = Some(local.into());
            assert!(facts.warnings(&names()).is_empty(), "{local}");
        }
        facts.server_address = None;
        assert!(facts.warnings(&names()).is_empty(), "a Unix socket");
        facts.server_address = Some("10.1.2.3".into());
        let warnings = facts.warnings(&names());
        assert_eq!(
            warnings,
            vec![CheckWarning::NoTls {
                address: "10.1.2.3".into()
            }]
        );
        assert!(warnings[0].fix().contains("sslmode=verify-full"));
        facts.tls = true;
        assert!(facts.warnings(&names()).is_empty(), "encrypted");
    }

    #[test]
    fn narrow_text_columns_are_found_with_the_statement_that_widens_them() {
        let mut facts = healthy();
        if let Some(columns) = facts.columns.as_mut() {
            for (name, ty) in columns.iter_mut() {
                match name.as_str() {
                    "status" => *ty = "character varying(7)".into(),
                    "claim_token" => *ty = "character varying(255)".into(),
                    "last_error" => *ty = "character varying(255)".into(),
                    _ => {}
                }
            }
        }
        let problems = facts.problems(&names());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].problem().contains("\"status\""),
            "{}",
            problems[0]
        );
        assert!(
            problems[0].problem().contains("at least 10"),
            "{}",
            problems[0]
        );
        assert_eq!(
            problems[0].fix().unwrap(),
            "run ALTER TABLE public.outbox_event ALTER COLUMN \"status\" TYPE text"
        );
        let warnings = facts.warnings(&names());
        assert_eq!(
            warnings,
            vec![CheckWarning::ErrorColumnNarrow {
                table: "public.outbox_event".into(),
                width: 255
            }]
        );
        assert!(warnings[0]
            .fix()
            .contains("ALTER COLUMN \"last_error\" TYPE text"));
        assert_eq!(facts.text_widths().last_error, Some(255));
    }

    #[test]
    fn problems_and_findings_agree() {
        let mut facts = healthy();
        facts.wal_level = "minimal".into();
        facts.publication = None;
        let problems = facts.problems(&names());
        let findings = facts.findings(&names(), &slot(SlotWalStatus::Reserved));
        let errors: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        assert_eq!(problems.len(), errors.len());
        for (problem, finding) in problems.iter().zip(errors) {
            assert_eq!(problem.problem(), finding.message);
            assert_eq!(problem.fix(), finding.fix);
            assert_eq!(
                problem.to_string(),
                format!(
                    "{}; {}",
                    finding.message,
                    finding.fix.clone().unwrap_or_default()
                )
            );
        }
    }

    #[test]
    fn column_types_ignore_type_modifiers() {
        assert_eq!(
            without_typmod("character varying(255)"),
            "character varying"
        );
        assert_eq!(
            without_typmod("timestamp(3) with time zone"),
            "timestamp with time zone"
        );
        let mut facts = healthy();
        if let Some(columns) = facts.columns.as_mut() {
            for (name, ty) in columns.iter_mut() {
                if name == "created_at" {
                    *ty = "timestamp without time zone".into();
                }
            }
        }
        let problems = facts.problems(&names());
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0]
            .to_string()
            .contains("ALTER COLUMN \"created_at\" TYPE timestamptz"));
    }

    #[test]
    fn connection_hints_follow_the_cause() {
        let err = CheckError::ConnectTimeout {
            target: "postgres://relay:***@db:5432/app".into(),
            timeout: Duration::from_secs(10),
        };
        assert!(err.problem().contains("did not answer within 10s"));
        assert!(err.is_transient());
        assert_eq!(Finding::from(&err).check, "connection");
    }
}
