//! Retention: moves old `done` rows (and, when asked, old `dead` rows) from the outbox
//! table into its archive table, in small batches so no statement holds locks for long.
//!
//! Each batch is one statement and so one transaction: it locks up to `batch_size`
//! qualifying rows (`FOR UPDATE SKIP LOCKED`, so rows another session holds are left for
//! the next run), deletes them and inserts what was deleted into the archive. A row is
//! therefore either still in the outbox or already in the archive, never lost in between
//! and never in both. Rows that are `pending`, `retry` or `processing` are never touched.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::names::Names;
use crate::store::StoreError;

/// Default rows per batch (one transaction each).
pub const DEFAULT_BATCH_SIZE: i64 = 1000;

/// Every column the archive table keeps (migrations 1 and 2), in one order for both the
/// `RETURNING` of the delete and the column list of the insert.
const ARCHIVED_COLUMNS: &str = "id, aggregate_type, aggregate_id, event_type, payload, status, \
     attempts, next_run_at, created_at, headers, last_error, last_error_at, delivered_at";

/// What to archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// Rows older than this are archived: `done` rows by `delivered_at` (`created_at` for
    /// rows delivered before the relay recorded it), `dead` rows by `last_error_at` (or
    /// `created_at`).
    pub older_than: Duration,
    /// Archive old `dead` rows too.
    pub include_dead: bool,
    /// Rows moved per transaction, at least 1.
    pub batch_size: i64,
}

/// Rows moved (or, for a dry run, that would be moved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveCounts {
    /// `done` rows.
    pub done: u64,
    /// `dead` rows.
    pub dead: u64,
    /// Transactions used (zero for a dry run).
    pub batches: u64,
}

impl ArchiveCounts {
    /// All rows.
    pub fn total(&self) -> u64 {
        self.done + self.dead
    }
}

/// Why archiving could not run.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A statement failed; batches committed before it stay archived.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The archive table is missing or lacks the columns migration 2 adds.
    #[error(
        "archive table {archive_table} is missing or incomplete (it needs the columns \
         {ARCHIVED_COLUMNS}); run `dispatchbox migrate`"
    )]
    ArchiveTableNotReady {
        /// `schema.name` of the archive table.
        archive_table: String,
    },
    /// The age does not fit PostgreSQL's interval.
    #[error("age {age:?} is too large; use at most a few thousand years")]
    AgeTooLarge {
        /// The age asked for.
        age: Duration,
    },
}

/// The predicate selecting archivable rows; `$1` is the cutoff, `$2` whether dead rows count.
///
/// A row with NULL in a column the archive table declares NOT NULL (possible only in an
/// adopted table without those constraints; `dispatchbox check` reports it) is not
/// archivable: moving it would fail the whole batch, and every batch after it.
const ARCHIVABLE: &str = "((status = 'done' AND COALESCE(delivered_at, created_at) < $1)
        OR ($2 AND status = 'dead' AND COALESCE(last_error_at, created_at) < $1))
        AND aggregate_type IS NOT NULL AND aggregate_id IS NOT NULL
        AND event_type IS NOT NULL AND payload IS NOT NULL AND attempts IS NOT NULL
        AND next_run_at IS NOT NULL AND created_at IS NOT NULL";

fn archive_table(names: &Names) -> String {
    format!(
        "\"{}\".\"{}\"",
        names.table().schema(),
        names.archive_table()
    )
}

/// The cutoff time on the server's clock: fixed once per run, so the batches agree on
/// which rows qualify and a run always ends.
async fn cutoff(client: &Client, options: &ArchiveOptions) -> Result<DateTime<Utc>, ArchiveError> {
    let seconds = options.older_than.as_secs_f64();
    // An interval holds ±178 million years; keep well inside it.
    if seconds > 100_000.0 * 365.0 * 86_400.0 {
        return Err(ArchiveError::AgeTooLarge {
            age: options.older_than,
        });
    }
    let row = client
        .query_one("SELECT now() - make_interval(secs => $1)", &[&seconds])
        .await
        .map_err(|e| StoreError::db("archive cutoff", e))?;
    Ok(row.get(0))
}

/// Counts the rows [`archive`] would move, without changing anything.
pub async fn count(
    client: &Client,
    names: &Names,
    options: &ArchiveOptions,
) -> Result<ArchiveCounts, ArchiveError> {
    let cutoff = cutoff(client, options).await?;
    let sql = format!(
        "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'dead')
           FROM {table} WHERE {ARCHIVABLE}",
        table = names.table().quoted()
    );
    let row = client
        .query_one(&sql, &[&cutoff, &options.include_dead])
        .await
        .map_err(|e| StoreError::db("archive count", e))?;
    Ok(ArchiveCounts {
        done: row.get::<_, i64>(0).unsigned_abs(),
        dead: row.get::<_, i64>(1).unsigned_abs(),
        batches: 0,
    })
}

/// Moves every qualifying row into the archive table, `batch_size` rows per transaction,
/// until a batch finds nothing more. `on_batch` sees the running totals after each batch.
///
/// On an error the batches already committed stay archived; running again continues.
pub async fn archive(
    client: &Client,
    names: &Names,
    options: &ArchiveOptions,
    mut on_batch: impl FnMut(&ArchiveCounts),
) -> Result<ArchiveCounts, ArchiveError> {
    let archive_table = archive_table(names);
    check_archive_table(client, &archive_table).await?;
    let cutoff = cutoff(client, options).await?;
    let table = names.table().quoted();
    // The status is re-checked by the row lock: a row whose status changed since the
    // statement's snapshot (e.g. a dead row retried by an operator) is skipped.
    let sql = format!(
        "WITH moved AS (
             DELETE FROM {table}
              WHERE id IN (SELECT id FROM {table}
                            WHERE {ARCHIVABLE}
                            LIMIT $3
                            FOR UPDATE SKIP LOCKED)
             RETURNING {ARCHIVED_COLUMNS}
         ), archived AS (
             INSERT INTO {archive_table} ({ARCHIVED_COLUMNS})
             SELECT {ARCHIVED_COLUMNS} FROM moved
             RETURNING status
         )
         SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'dead')
           FROM archived"
    );
    let statement = client
        .prepare(&sql)
        .await
        .map_err(|e| StoreError::db("archive batch", e))?;
    let batch_size = options.batch_size.max(1);
    let mut totals = ArchiveCounts::default();
    loop {
        let row = client
            .query_one(&statement, &[&cutoff, &options.include_dead, &batch_size])
            .await
            .map_err(|e| StoreError::db("archive batch", e))?;
        let done = row.get::<_, i64>(0).unsigned_abs();
        let dead = row.get::<_, i64>(1).unsigned_abs();
        if done + dead == 0 {
            return Ok(totals);
        }
        totals.done += done;
        totals.dead += dead;
        totals.batches += 1;
        on_batch(&totals);
    }
}

/// The archive table must exist with every column the batch inserts.
async fn check_archive_table(client: &Client, archive_table: &str) -> Result<(), ArchiveError> {
    let columns: Vec<&str> = ARCHIVED_COLUMNS.split(", ").collect();
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_attribute
              WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
                AND attname = ANY($2::text[])",
            &[&archive_table, &columns],
        )
        .await
        .map_err(|e| StoreError::db("archive table lookup", e))?;
    let found: i64 = row.get(0);
    if usize::try_from(found).ok() == Some(columns.len()) {
        Ok(())
    } else {
        Err(ArchiveError::ArchiveTableNotReady {
            archive_table: archive_table.replace('"', ""),
        })
    }
}
