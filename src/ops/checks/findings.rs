//! What the preflight checks report: the problems that stop `run` ([`CheckError`]), the
//! warnings `check` adds ([`CheckWarning`]), each with its help text (what is wrong, and
//! the statement or setting that fixes it), and the [`Finding`] both become in `check`'s
//! report. Pure text; the judgements that produce them are in the parent module.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::conninfo::SqlConnectError;
use crate::ops::report::human_bytes;
use crate::source::slot::NotOurs;
use crate::store::widths;
use crate::store::StoreError;

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
    /// The server is older than [`super::MIN_SERVER_VERSION_NUM`].
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
    /// [`crate::source::slot::judge`]): the relay neither streams from it nor drops or recreates it.
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

/// The statement that makes a text column unbounded (from `varchar(n)` this changes only
/// the catalog: no table rewrite).
pub(super) fn widen(table: &str, column: &str) -> String {
    format!("run ALTER TABLE {table} ALTER COLUMN \"{column}\" TYPE text")
}

/// `"a", "b" and "c"`.
pub(super) fn quoted_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}
