//! Schema migrations: the `sql/*.sql` files, embedded in the binary, rendered for the
//! configured table and publication, applied in order, each in its own transaction, and
//! recorded per table in `<schema>.dispatchbox_migrations`.
//!
//! Migration 1 is the Python Dispatchbox schema with `IF NOT EXISTS` everywhere, so a table
//! that worker created is adopted in place. Every migration is idempotent on its own as
//! well, because a table may have been partly shaped by hand before dispatchbox saw it.
//! Concurrent runs serialise on a transaction-scoped advisory lock. This module never
//! drops or rewrites data.

use tokio_postgres::Client;

use super::StoreError;
use crate::names::Names;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Position in the sequence, starting at 1.
    pub version: i32,
    /// Short description, recorded with the version.
    pub name: &'static str,
    template: &'static str,
}

impl Migration {
    /// The migration's SQL with every placeholder replaced by a validated, quoted name.
    pub fn render(&self, names: &Names) -> String {
        let mut sql = self.template.to_owned();
        for (placeholder, value) in names.template_values() {
            sql = sql.replace(placeholder, &value);
        }
        sql
    }
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "dispatchbox schema",
        template: include_str!("../../sql/0001_dispatchbox_schema.sql"),
    },
    Migration {
        version: 2,
        name: "relay columns and publication",
        template: include_str!("../../sql/0002_relay_columns_and_publication.sql"),
    },
    Migration {
        version: 3,
        name: "aggregate ordering index",
        template: include_str!("../../sql/0003_aggregate_ordering_index.sql"),
    },
    Migration {
        version: 4,
        name: "dead letter index",
        template: include_str!("../../sql/0004_dead_letter_index.sql"),
    },
    Migration {
        version: 5,
        name: "due index by status",
        template: include_str!("../../sql/0005_due_index_by_status.sql"),
    },
];

/// Key of the advisory lock that serialises concurrent `migrate` runs in one database
/// (the bytes of "dbox").
const MIGRATION_LOCK_KEY: i64 = 0x6462_6f78;

/// Longest wait for a table lock during a migration before it fails (SQLSTATE 55P03).
const MIGRATION_LOCK_TIMEOUT: &str = "10s";

/// What a [`migrate`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this run, in order.
    pub applied: Vec<i32>,
    /// Versions found already recorded for this table.
    pub skipped: Vec<i32>,
}

/// Brings the configured outbox table up to the latest migration.
///
/// Each migration runs in its own transaction that first takes an advisory lock, then
/// checks the record table, so two runs at once apply each migration exactly once. A
/// failed migration rolls back completely and stops the run.
pub async fn migrate(client: &mut Client, names: &Names) -> Result<MigrationReport, StoreError> {
    let schema = names.table().schema();
    let schema_exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await
        .map_err(|e| StoreError::db("schema lookup", e))?
        .is_some();
    if !schema_exists {
        return Err(StoreError::MissingSchema {
            schema: schema.to_owned(),
        });
    }

    let record_table = format!("\"{schema}\".dispatchbox_migrations");
    let target = names.table().to_string();
    let mut report = MigrationReport::default();
    for migration in MIGRATIONS {
        let context = || format!("migration {} ({})", migration.version, migration.name);
        let tx = client
            .transaction()
            .await
            .map_err(|e| StoreError::db(context(), e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(|e| StoreError::db(context(), e))?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {record_table} (
                target     text        NOT NULL,
                version    int         NOT NULL,
                name       text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (target, version)
            )"
        ))
        .await
        .map_err(|e| StoreError::db(context(), e))?;
        let recorded = tx
            .query_opt(
                &format!("SELECT 1 FROM {record_table} WHERE target = $1 AND version = $2"),
                &[&target, &migration.version],
            )
            .await
            .map_err(|e| StoreError::db(context(), e))?
            .is_some();
        if recorded {
            report.skipped.push(migration.version);
            continue; // dropping `tx` rolls back and releases the lock
        }
        // A DDL lock queued behind a long transaction would block every insert into the
        // outbox meanwhile; better to fail and let the operator retry at a quieter moment.
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'"
        ))
        .await
        .map_err(|e| StoreError::db(context(), e))?;
        tx.batch_execute(&migration.render(names))
            .await
            .map_err(|e| StoreError::db(context(), e))?;
        tx.execute(
            &format!("INSERT INTO {record_table} (target, version, name) VALUES ($1, $2, $3)"),
            &[&target, &migration.version, &migration.name],
        )
        .await
        .map_err(|e| StoreError::db(context(), e))?;
        tx.commit()
            .await
            .map_err(|e| StoreError::db(context(), e))?;
        tracing::info!(
            table = %target,
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        report.applied.push(migration.version);
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_rendered() {
        let names = Names::new("app.events".parse().unwrap(), "pub_x".parse().unwrap()).unwrap();
        for m in MIGRATIONS {
            let sql = m.render(&names);
            assert!(
                !sql.contains("{{"),
                "migration {} left a placeholder",
                m.version
            );
            let code: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect();
            assert!(
                !code.contains("outbox"),
                "migration {} hard-codes a name",
                m.version
            );
            assert!(sql.contains("\"app\".\"events\""));
        }
    }

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
        }
    }
}
