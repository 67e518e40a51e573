//! Preflight checks for `dispatchbox run` and `dispatchbox check`: read the server's
//! settings, the role, the outbox table and the publication in a few catalog queries, then
//! judge them with pure functions so every misconfiguration becomes one error that says
//! what is wrong and how to fix it.
//!
//! Checks only read catalogs; they never change the server (that is `migrate`'s job).

use tokio_postgres::Client;

use super::names::Names;
use super::StoreError;

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
/// [`CheckError::Database`] is definite: retrying will not help, an operator must act.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The checks could not run.
    #[error(transparent)]
    Database(#[from] StoreError),
    /// The server is older than [`MIN_SERVER_VERSION_NUM`].
    #[error(
        "PostgreSQL {version} is too old: dispatchbox needs PostgreSQL 15 or newer \
         (publication row filters and current pgoutput); upgrade the server"
    )]
    ServerTooOld {
        /// `server_version` as the server reports it.
        version: String,
    },
    /// `wal_level` is not `logical`.
    #[error(
        "wal_level is {current:?} but logical decoding needs \"logical\"; run \
         ALTER SYSTEM SET wal_level = logical and restart PostgreSQL (on a managed service \
         enable its logical replication parameter, e.g. rds.logical_replication = 1)"
    )]
    WalLevel {
        /// The current setting.
        current: String,
    },
    /// The role can neither stream from a slot nor is it a superuser.
    #[error(
        "role \"{role}\" lacks the REPLICATION attribute needed to stream from a replication \
         slot; as a superuser run ALTER ROLE \"{role}\" REPLICATION"
    )]
    NoReplicationPrivilege {
        /// The connected role.
        role: String,
    },
    /// The outbox table does not exist.
    #[error(
        "outbox table {table} does not exist; run `dispatchbox migrate` to create it, or set \
         DISPATCHBOX_TABLE to the existing outbox table"
    )]
    MissingTable {
        /// `schema.name`.
        table: String,
    },
    /// A column every outbox event needs is missing.
    #[error(
        "outbox table {table} has no column \"{column}\"; the relay needs id, aggregate_type, \
         aggregate_id, event_type, payload (json or jsonb) and created_at, as in the Python \
         Dispatchbox schema; add the column or point DISPATCHBOX_TABLE at an outbox table"
    )]
    MissingEventColumn {
        /// `schema.name`.
        table: String,
        /// The missing column.
        column: &'static str,
    },
    /// A column the status writer needs is missing: the table predates migration 2.
    #[error(
        "outbox table {table} has no column \"{column}\", which the relay writes delivery \
         status into; run `dispatchbox migrate` to add it"
    )]
    MissingStatusColumn {
        /// `schema.name`.
        table: String,
        /// The missing column.
        column: &'static str,
    },
    /// A column has a type the relay cannot use.
    #[error("column \"{column}\" of outbox table {table} has type {found}; it must be {expected}")]
    WrongColumnType {
        /// `schema.name`.
        table: String,
        /// The column.
        column: &'static str,
        /// Its type as `format_type` prints it.
        found: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The publication does not exist.
    #[error(
        "publication \"{publication}\" does not exist; run `dispatchbox migrate`, or create it \
         with CREATE PUBLICATION \"{publication}\" FOR TABLE {table} WITH (publish = 'insert')"
    )]
    MissingPublication {
        /// The configured publication.
        publication: String,
        /// `schema.name` of the outbox table.
        table: String,
    },
    /// The publication exists but does not include the outbox table.
    #[error(
        "publication \"{publication}\" does not include outbox table {table}; run \
         ALTER PUBLICATION \"{publication}\" ADD TABLE {table}"
    )]
    TableNotPublished {
        /// The configured publication.
        publication: String,
        /// `schema.name` of the outbox table.
        table: String,
    },
    /// The publication publishes something other than exactly `insert`.
    #[error(
        "publication \"{publication}\" publishes {publishes}, but it must publish only insert: \
         the relay writes delivery status back onto the outbox rows, and published updates \
         would stream those writes back to it as events; run \
         ALTER PUBLICATION \"{publication}\" SET (publish = 'insert')"
    )]
    PublicationNotInsertOnly {
        /// The configured publication.
        publication: String,
        /// The published operations, comma separated (`insert, update`), or `nothing`.
        publishes: String,
    },
}

impl CheckError {
    /// True only when the checks could not run for a transient reason.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Database(e) if e.is_transient())
    }
}

/// Something that works but an operator should know about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckWarning {
    /// Slots may retain WAL without limit.
    #[error(
        "max_slot_wal_keep_size is -1 (unlimited): a stopped relay makes its slot retain WAL \
         until the disk fills; set a limit (e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'); \
         a slot that exceeds it is invalidated, and the relay recreates it and sweeps"
    )]
    UnlimitedSlotWal,
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
    /// The outbox table's columns and types (`format_type`), or `None` if it does not exist.
    pub columns: Option<Vec<(String, String)>>,
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
                    r.rolname::text, r.rolsuper, r.rolreplication
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
    let columns = if exists {
        let rows = client
            .query(
                "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
                   FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&table],
            )
            .await
            .map_err(db)?;
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
        columns,
        publication,
    })
}

impl ServerFacts {
    /// Every problem, in the order an operator should fix them (server, role, table,
    /// publication). Empty when the relay can run.
    pub fn problems(&self, names: &Names) -> Vec<CheckError> {
        let table = names.table().to_string();
        let publication = names.publication().to_string();
        let mut problems = Vec::new();
        if self.server_version_num < MIN_SERVER_VERSION_NUM {
            problems.push(CheckError::ServerTooOld {
                version: self.server_version.clone(),
            });
        }
        if self.wal_level != "logical" {
            problems.push(CheckError::WalLevel {
                current: self.wal_level.clone(),
            });
        }
        if !self.replication && !self.superuser {
            problems.push(CheckError::NoReplicationPrivilege {
                role: self.role.clone(),
            });
        }
        match &self.columns {
            None => problems.push(CheckError::MissingTable {
                table: table.clone(),
            }),
            Some(columns) => problems.extend(column_problems(&table, columns)),
        }
        match &self.publication {
            None => problems.push(CheckError::MissingPublication { publication, table }),
            Some(p) => {
                if !p.contains_table {
                    problems.push(CheckError::TableNotPublished {
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
                    problems.push(CheckError::PublicationNotInsertOnly {
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
        problems
    }

    /// Settings that work but deserve an operator's attention.
    pub fn warnings(&self) -> Vec<CheckWarning> {
        let mut warnings = Vec::new();
        if self.max_slot_wal_keep_size.as_deref() == Some("-1") {
            warnings.push(CheckWarning::UnlimitedSlotWal);
        }
        warnings
    }
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
    let typed: [(&'static str, &[&str], &'static str); 2] = [
        (
            "id",
            &["bigint", "integer", "smallint"],
            "bigint (or another integer type)",
        ),
        ("payload", &["json", "jsonb"], "json or jsonb"),
    ];
    for (column, accepted, expected) in typed {
        if let Some(found) = type_of(column) {
            if !accepted.contains(&found) {
                problems.push(CheckError::WrongColumnType {
                    table: table.to_owned(),
                    column,
                    found: found.to_owned(),
                    expected,
                });
            }
        }
    }
    problems
}

/// Runs every check and returns the first problem (fail fast at `dispatchbox run`), or
/// the facts when the relay can run.
pub async fn preflight(client: &Client, names: &Names) -> Result<ServerFacts, CheckError> {
    let facts = gather(client, names).await?;
    match facts.problems(names).into_iter().next() {
        Some(problem) => Err(problem),
        None => Ok(facts),
    }
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
            columns: Some(columns),
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
        assert!(healthy().warnings().is_empty());
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
        assert_eq!(facts.warnings(), vec![CheckWarning::UnlimitedSlotWal]);
    }
}
