//! Read-only reports for operators: the replication slot as the server sees it and the
//! outbox rows counted by status. Backs `dispatchbox status` (and the slot part of
//! `dispatchbox check`).
//!
//! Reports only read catalogs and the outbox table; they never write, never lock rows and
//! never touch the slot (reading `pg_replication_slots` does not acquire it).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::names::{Identifier, Names};
use crate::source::slot::{self, SlotStatus};
use crate::store::StoreError;

/// Everything `dispatchbox status` shows. The JSON field names are a stable interface
/// (documented in README.md, "Status").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// The server's clock when the report was taken (ages are relative to it).
    #[serde(serialize_with = "rfc3339_required")]
    pub taken_at: DateTime<Utc>,
    /// The configured replication slot.
    pub slot: SlotStatus,
    /// The outbox table's rows.
    pub outbox: OutboxStatus,
}

/// Outbox rows by status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxStatus {
    /// `schema.name` of the outbox table.
    pub table: String,
    /// Rows per status.
    pub counts: StatusCounts,
    /// `created_at` of the oldest `pending` row.
    #[serde(serialize_with = "rfc3339")]
    pub oldest_pending_created_at: Option<DateTime<Utc>>,
    /// How long the oldest `pending` row has waited, in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
    /// `next_run_at` of the earliest `retry` row that is due (the sweeper's next work).
    #[serde(serialize_with = "rfc3339")]
    pub oldest_due_retry_at: Option<DateTime<Utc>>,
    /// How long that row has been due, in seconds.
    pub oldest_due_retry_overdue_seconds: Option<f64>,
}

/// Row counts per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    /// Inserted, not yet delivered by the stream.
    pub pending: i64,
    /// Claimed by a sweeper (lease in `next_run_at`).
    pub processing: i64,
    /// Failed at least once (or parked behind a failed event), waiting for the sweeper.
    pub retry: i64,
    /// Delivered.
    pub done: i64,
    /// Given up on; see `dispatchbox dead`.
    pub dead: i64,
    /// Any other status value (written by something else).
    pub other: i64,
}

/// Timestamps serialise as RFC 3339 in UTC with microseconds (PostgreSQL's precision).
fn rfc3339<S: serde::Serializer>(
    value: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(t) => {
            serializer.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        }
        None => serializer.serialize_none(),
    }
}

fn rfc3339_required<S: serde::Serializer>(
    value: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    rfc3339(&Some(*value), serializer)
}

/// Reads the slot and the outbox counts (two statements, each one consistent snapshot).
pub async fn status(
    client: &Client,
    names: &Names,
    slot: &Identifier,
) -> Result<StatusReport, StoreError> {
    let slot_status = slot::inspect(client, slot).await?;
    let (taken_at, outbox) = outbox_status(client, names).await?;
    Ok(StatusReport {
        taken_at,
        slot: slot_status,
        outbox,
    })
}

/// Counts per status and the oldest outstanding rows, in one scan of the outbox table.
async fn outbox_status(
    client: &Client,
    names: &Names,
) -> Result<(DateTime<Utc>, OutboxStatus), StoreError> {
    const CONTEXT: &str = "outbox status";
    let sql = format!(
        "SELECT count(*) FILTER (WHERE status = 'pending'),
                count(*) FILTER (WHERE status = 'processing'),
                count(*) FILTER (WHERE status = 'retry'),
                count(*) FILTER (WHERE status = 'done'),
                count(*) FILTER (WHERE status = 'dead'),
                count(*) FILTER (WHERE status NOT IN ('pending', 'processing', 'retry', 'done', 'dead')),
                min(created_at) FILTER (WHERE status = 'pending'),
                min(next_run_at) FILTER (WHERE status = 'retry' AND next_run_at <= now()),
                now()
           FROM {table}",
        table = names.table().quoted()
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| StoreError::db(CONTEXT, e))?;
    let now: DateTime<Utc> = row.get(8);
    let oldest_pending: Option<DateTime<Utc>> = row.get(6);
    let oldest_due_retry: Option<DateTime<Utc>> = row.get(7);
    let seconds_since = |t: DateTime<Utc>| (now - t).num_milliseconds() as f64 / 1000.0;
    Ok((
        now,
        OutboxStatus {
            table: names.table().to_string(),
            counts: StatusCounts {
                pending: row.get(0),
                processing: row.get(1),
                retry: row.get(2),
                done: row.get(3),
                dead: row.get(4),
                other: row.get(5),
            },
            oldest_pending_created_at: oldest_pending,
            oldest_pending_age_seconds: oldest_pending.map(seconds_since),
            oldest_due_retry_at: oldest_due_retry,
            oldest_due_retry_overdue_seconds: oldest_due_retry.map(seconds_since),
        },
    ))
}

/// `1536` → `1.5 KiB`; whole bytes below 1 KiB. For reports only (JSON carries raw bytes).
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes.abs() < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value.abs() < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_printed_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(human_bytes(-2048), "-2.0 KiB");
    }
}
