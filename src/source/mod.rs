//! The WAL side of the relay: connect to the slot, decode pgoutput, map outbox INSERTs to
//! events, and report progress. Never issues UPDATEs (that is the store's job).

pub mod client;
pub mod failover;
pub mod pgoutput;
pub mod progress;
pub mod relation;
pub mod slot;
pub mod stream;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::event::OutboxEvent;
use crate::flow::budget::BytesHeld;
use progress::Ack;

/// What the source hands to the dispatcher, in stream order.
#[derive(Debug)]
pub enum Work {
    /// Deliver this event; settle `ack` once its outcome is durable. `committed_at` is
    /// the commit time of its transaction (for the commit-to-ack latency metric); `held`
    /// its share of the byte budget, returned when its delivery ends (or it is parked).
    Deliver {
        event: Arc<OutboxEvent>,
        ack: Ack,
        committed_at: Option<DateTime<Utc>>,
        held: BytesHeld,
        /// Committed before the stream (re)connected: an earlier run may have delivered
        /// and settled it already. The dispatcher checks such events against their rows,
        /// a batch per query, and delivers only those still `pending`.
        replayed: bool,
    },
    /// A row that cannot become an event (e.g. a malformed `headers` value): it is marked
    /// `dead` with `reason` and never delivered.
    Unusable { id: i64, reason: String, ack: Ack },
}
