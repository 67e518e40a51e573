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

use tokio_postgres::Client;

use super::report::human_bytes;
use crate::names::{Identifier, Names};
use crate::source::slot::{self, SlotStatus, SlotUse, SlotWalStatus};
use crate::store::widths::{self, TextWidths};
use crate::store::{Store, StoreError};

mod findings;

pub use findings::{CheckError, CheckWarning, Finding, Severity};

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
mod tests;
