//! The outbox event: the unit that flows from the replication stream (or the sweeper)
//! through the dispatcher to the sinks, and what became of it ([`outcome`]). Pure data; no
//! I/O, and no imports from the rest of the crate: every stage speaks these types.

pub mod mapping;
pub mod outcome;

pub use outcome::{ClaimReason, Outcome};

use bytes::Bytes;
use chrono::{DateTime, Utc};

/// One row of the outbox table, as decoded from an INSERT (or read by the sweeper).
///
/// `payload` holds the JSON text exactly as PostgreSQL rendered it (for `jsonb` that is the
/// normalised form); it is valid UTF-8 and valid JSON, and sinks forward it byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Primary key; the idempotency key that travels with every delivery.
    pub id: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    /// JSON text as rendered by PostgreSQL.
    pub payload: Bytes,
    /// String entries of the `headers` column (non-string values are skipped), in column order.
    pub headers: Vec<(String, String)>,
    pub created_at: DateTime<Utc>,
    /// When the row asks to be delivered (`next_run_at`); `None` when the column is absent.
    pub next_run_at: Option<DateTime<Utc>>,
}

impl OutboxEvent {
    /// `created_at` in RFC 3339 with microseconds and a `Z` suffix, as sinks publish it.
    pub fn created_at_rfc3339(&self) -> String {
        self.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    /// About how many bytes holding this event costs: its texts, payload and headers, plus
    /// a fixed overhead for the struct and its hand-offs. What the byte budget
    /// (`DISPATCHBOX_MAX_IN_FLIGHT_BYTES`) counts.
    pub fn held_bytes(&self) -> usize {
        const OVERHEAD: usize = 256;
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum();
        OVERHEAD
            + self.payload.len()
            + headers
            + self.aggregate_type.len()
            + self.aggregate_id.len()
            + self.event_type.len()
    }

    /// The payload as a `&str` (it is valid UTF-8 by construction).
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap_or("null")
    }
}
