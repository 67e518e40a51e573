//! Things operators must hear about, as values: each event's [`Emit::emit`] writes its log
//! line and updates its metrics together, so the two can never drift apart (a counter that
//! moves without a log line to explain it, or the reverse). The stages build the event
//! where it happens and emit it; the wording and the metric names live here.
//!
//! Learnt from Vector's internal events. Metrics that are plain gauges of a state (bytes
//! held, events in flight, the timeline) are set directly through [`super::metrics`].

use std::fmt::Display;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::metrics::{self, DeliveryOutcome};
use crate::event::ClaimReason;

/// An event that logs and counts itself.
pub trait Emit {
    /// Writes the log line and updates the metrics.
    fn emit(self);
}

/// One sink's answer to one delivery attempt.
#[derive(Debug)]
pub struct DeliveryAttempted<'a, E> {
    pub event_id: i64,
    pub event_type: &'a str,
    pub sink: &'a str,
    pub attempt: u32,
    pub took: Duration,
    /// `None` when delivered; else the error and whether the event is given up (`dead`).
    pub failed: Option<(&'a E, bool)>,
}

impl<E: Display> Emit for DeliveryAttempted<'_, E> {
    fn emit(self) {
        let Self {
            event_id,
            event_type,
            sink,
            attempt,
            took,
            failed,
        } = self;
        match failed {
            None => {
                tracing::debug!(event_id, event_type = %event_type, sink, attempt, took = ?took, "delivered");
                metrics::delivery(sink, DeliveryOutcome::Done, took);
            }
            Some((error, gives_up)) => {
                tracing::warn!(event_id, event_type = %event_type, sink, attempt, error = %error, "delivery failed");
                let outcome = if gives_up {
                    DeliveryOutcome::Dead
                } else {
                    DeliveryOutcome::Retry
                };
                metrics::delivery(sink, outcome, took);
            }
        }
    }
}

/// An event given up on: its row becomes `dead`.
#[derive(Debug)]
pub enum EventDead<'a> {
    /// Its delivery failed for good after `attempt` attempts.
    Delivery {
        event_id: i64,
        event_type: &'a str,
        attempt: u32,
        error: &'a str,
    },
    /// The row cannot become an event at all (never attempted).
    Unusable { event_id: i64, reason: &'a str },
}

impl Emit for EventDead<'_> {
    fn emit(self) {
        match self {
            Self::Delivery {
                event_id,
                event_type,
                attempt,
                error,
            } => {
                tracing::warn!(event_id, event_type = %event_type, attempt, error = %error, "event is dead; it will not be retried automatically");
                metrics::dead_event(Some(event_type), attempt);
            }
            Self::Unusable { event_id, reason } => {
                tracing::warn!(event_id, error = %reason, "outbox row cannot be delivered; marking it dead");
                metrics::dead_event(None, 0);
            }
        }
    }
}

/// Replayed events (committed before the stream reconnected) whose rows were settled
/// already, so they are not delivered again.
#[derive(Debug)]
pub struct ReplaySkipped {
    pub skipped: usize,
    pub of: usize,
}

impl Emit for ReplaySkipped {
    fn emit(self) {
        if self.skipped == 0 {
            return;
        }
        tracing::info!(
            skipped = self.skipped,
            of = self.of,
            "replayed events whose rows are settled already are not delivered again"
        );
        metrics::replay_skipped(self.skipped);
    }
}

/// The sweeper took a row to deliver it.
#[derive(Debug)]
pub struct SweeperReclaimed {
    pub event_id: i64,
    pub attempt: u32,
    pub reason: ClaimReason,
}

impl Emit for SweeperReclaimed {
    fn emit(self) {
        tracing::debug!(
            event_id = self.event_id,
            attempt = self.attempt,
            reason = self.reason.as_str(),
            "sweeper delivering"
        );
        metrics::sweeper_reclaim(self.reason.as_str());
    }
}

/// The replication stream broke, or could not be started; the relay tries again after
/// `retry_in`.
#[derive(Debug)]
pub struct StreamInterrupted<'a, E> {
    pub error: &'a E,
    pub retry_in: Duration,
    /// `Some` when a running stream broke (counted as a reconnect): the commit time the
    /// stream is behind since, at the latest. `None` for a failed (re)connect attempt or a
    /// slot another relay holds.
    pub broke: Option<DateTime<Utc>>,
}

impl<E: Display> Emit for StreamInterrupted<'_, E> {
    fn emit(self) {
        tracing::warn!(error = %self.error, retry_in = ?self.retry_in, "replication stream interrupted; reconnecting");
        if let Some(behind_since) = self.broke {
            metrics::stream_broke(behind_since);
        }
    }
}

/// A sink's periodic check: logged when the sink goes down or comes back, counted in
/// `dispatchbox_sink_up` (by [`super::health::Health::set_sink`]) every time.
#[derive(Debug)]
pub struct SinkChecked<'a> {
    pub sink: &'a str,
    /// `None` when the check passed, else why it failed.
    pub failed: Option<&'a str>,
    /// Whether the previous check passed (`None`: the first check).
    pub was_up: Option<bool>,
}

impl Emit for SinkChecked<'_> {
    fn emit(self) {
        match (self.failed, self.was_up) {
            (Some(error), Some(true) | None) => {
                tracing::warn!(sink = %self.sink, error = %error, "sink unavailable; deliveries to it are retried, and /ready stays ready (see dispatchbox_sink_up)")
            }
            (None, Some(false)) => tracing::info!(sink = %self.sink, "sink available again"),
            _ => {}
        }
    }
}

/// The relay created its replication slot (it was missing or invalidated).
#[derive(Debug)]
pub struct SlotCreated<'a, L> {
    pub slot: &'a str,
    pub reason: &'static str,
    pub consistent_point: L,
}

impl<L: Display> Emit for SlotCreated<'_, L> {
    fn emit(self) {
        tracing::info!(slot = %self.slot, reason = self.reason, consistent_point = %self.consistent_point, "created replication slot; the sweeper delivers rows it cannot stream");
        metrics::slot_recreated(self.reason);
    }
}

/// The replication connection reached another server than before (another system or a
/// new timeline): a failover.
#[derive(Debug)]
pub struct FailoverSeen<'a, H, S, C> {
    pub host: &'a H,
    pub system_id: &'a S,
    pub timeline: u32,
    pub slot: &'a str,
    pub change: &'a C,
}

impl<H: Display, S: Display, C: Display> Emit for FailoverSeen<'_, H, S, C> {
    fn emit(self) {
        tracing::error!(
            host = %self.host,
            system_id = %self.system_id,
            timeline = self.timeline,
            slot = %self.slot,
            change = %self.change,
            "failover: the replication connection reached another server than before; not trusting the old position, streaming from this server's slot (created if missing), and the sweeper delivers the rows committed here that were not delivered"
        );
        metrics::failover();
    }
}

/// The database rejected the status of one row (because of its data).
#[derive(Debug)]
pub struct StatusRowRejected<'a, E> {
    pub event_id: i64,
    pub status: &'static str,
    pub cause: &'a E,
    /// `None` when the row was written `dead` with the reason instead; else why even that
    /// was refused (the row is left as it is).
    pub dead_refused: Option<&'a E>,
}

impl<E: Display> Emit for StatusRowRejected<'_, E> {
    fn emit(self) {
        match self.dead_refused {
            None => {
                tracing::error!(event_id = self.event_id, status = self.status, error = %self.cause, "the database rejected this row's status; wrote it dead with the reason");
                metrics::status_row_rejected("dead");
            }
            Some(dead_error) => {
                tracing::error!(event_id = self.event_id, status = self.status, error = %self.cause, dead_error = %dead_error, "the database rejected this row's status, and dead too; leaving the row as it is (the sweeper meets it again)");
                metrics::status_row_rejected("none");
            }
        }
    }
}

/// The status writer stopped or resumed committing (what `/ready` also reports).
#[derive(Debug)]
pub enum StatusWriterStall<'a> {
    Stuck { reason: &'a str },
    Writing,
}

impl Emit for StatusWriterStall<'_> {
    fn emit(self) {
        match self {
            Self::Stuck { reason } => {
                tracing::error!(reason = %reason, "status writer is stuck; /ready reports it until it writes again");
                metrics::status_writer_stalled(true);
            }
            Self::Writing => {
                tracing::info!("status writer is writing again");
                metrics::status_writer_stalled(false);
            }
        }
    }
}
