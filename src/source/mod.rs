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

/// Whether an event may have been delivered before the stream (re)connected. The slot
/// resends everything after its confirmed position, so events committed before the
/// connection was made may have been delivered, and even settled, by an earlier holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Committed after the connection was made: never handed out before.
    No,
    /// Committed before, on the first connection of a relay process that found the slot
    /// free: the previous holder's walsender had exited, so nobody is streaming from it.
    /// The dispatcher skips it if its row is settled, and delivers it otherwise.
    Restart,
    /// Committed before, and the previous holder of the slot may still be delivering it:
    /// this relay stood by while another held the slot, or this is a later connection of
    /// this process, whose earlier connection's deliveries may still be out. Skipped if its row is settled; otherwise
    /// parked in its row until the previous holder's deliveries must have ended, so a
    /// second delivery can neither duplicate it nor overtake that holder's retry of an
    /// earlier event of its aggregate.
    Takeover,
}

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
        /// Whether it may have been handed out before this connection (see [`Replay`]).
        replay: Replay,
    },
    /// A row that cannot become an event (e.g. a malformed `headers` value): it is marked
    /// `dead` with `reason` and never delivered.
    Unusable { id: i64, reason: String, ack: Ack },
}
