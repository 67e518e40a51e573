//! What became of an event: the outcome of a delivery attempt (or the decision not to
//! make one yet) that is written onto its row, and why the sweeper claimed a row. Pure
//! data, shared by dispatch, the status writer, the sweeper, the store and telemetry.

use chrono::{DateTime, Utc};

/// The result of delivering one event, or the decision not to deliver it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered: `status = 'done'`, `delivered_at = now()`.
    Done,
    /// Failed, try again at `next_run_at`: `status = 'retry'`.
    Retry {
        /// Why the attempt failed (stored in `last_error`).
        error: String,
        /// When the sweeper should deliver it again.
        next_run_at: DateTime<Utc>,
    },
    /// Failed for good: `status = 'dead'`.
    Dead {
        /// Why (stored in `last_error`).
        error: String,
    },
    /// Not delivered and not an attempt: the event waits behind an earlier event of its
    /// aggregate, or is scheduled for later. `status = 'retry'` with this `next_run_at`;
    /// `attempts`, `last_error`, `last_error_at` and `delivered_at` are left as they are.
    ///
    /// Through the status writer it applies only to a row that is still `pending`: a row
    /// that already moved on (done, dead, claimed by a sweeper, already deferred) is left
    /// alone and the settlement counts as written.
    Deferred {
        /// When the sweeper may deliver it.
        next_run_at: DateTime<Utc>,
    },
}

impl Outcome {
    /// The `status` column value.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Retry { .. } | Self::Deferred { .. } => "retry",
            Self::Dead { .. } => "dead",
        }
    }

    /// Delivery attempts this outcome accounts for.
    pub fn attempts(&self) -> i32 {
        match self {
            Self::Done | Self::Retry { .. } | Self::Dead { .. } => 1,
            Self::Deferred { .. } => 0,
        }
    }

    /// The error to store in `last_error`, if this outcome records one.
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Done | Self::Deferred { .. } => None,
            Self::Retry { error, .. } | Self::Dead { error } => Some(error),
        }
    }

    /// When the sweeper may deliver the row, if this outcome schedules it.
    pub fn next_run_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Retry { next_run_at, .. } | Self::Deferred { next_run_at } => Some(*next_run_at),
            Self::Done | Self::Dead { .. } => None,
        }
    }

    /// Whether this is a deferral (not an attempt).
    pub fn is_deferred(&self) -> bool {
        matches!(self, Self::Deferred { .. })
    }
}

/// Why a row was claimed (what its status was before the claim). A small closed set,
/// usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimReason {
    /// A `retry` row whose `next_run_at` has passed.
    DueRetry,
    /// A `processing` row whose lease expired: its claimer crashed or stalled.
    ExpiredLease,
    /// A `pending` row the stream did not deliver in time.
    Missed,
    /// A `pending` row that was attempted before: returned from `dead` by an operator.
    Requeued,
}

impl ClaimReason {
    /// Every reason, for metric label sets.
    pub const ALL: [Self; 4] = [
        Self::DueRetry,
        Self::ExpiredLease,
        Self::Missed,
        Self::Requeued,
    ];

    /// `due_retry`, `expired_lease`, `missed` or `requeued`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DueRetry => "due_retry",
            Self::ExpiredLease => "expired_lease",
            Self::Missed => "missed",
            Self::Requeued => "requeued",
        }
    }

    /// The inverse of [`ClaimReason::as_str`] (the claim query computes the reason).
    pub fn parse(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == reason)
    }
}
