//! The sweeper: the safety net next to the stream. Every `DISPATCHBOX_SWEEP_INTERVAL` (and
//! sooner when a retry falls due) it claims due rows with a lease and delivers them:
//!
//! - `retry` rows whose `next_run_at` has come (failed attempts, parked and scheduled events);
//! - `processing` rows whose lease expired (a relay died while delivering them);
//! - `pending` rows the stream missed: older than `DISPATCHBOX_SWEEP_GRACE`, or, right after
//!   a replication slot was created or recreated, every pending row created before that
//!   moment (no grace: the new slot will never stream them);
//! - `pending` rows attempted before (with a `last_error_at`): dead events an operator
//!   retried, which the insert-only stream never sees again (no grace either).
//!
//! Safe on every replica at once: rows are claimed with `FOR UPDATE SKIP LOCKED`, marked
//! `processing` with this sweeper's `claim_token` and a lease, and outcomes are written only
//! while the token still holds the row. It does not race a healthy stream: fresh `pending`
//! rows belong to the stream until the grace period has passed, and the slot-creation
//! cut-off only covers rows that committed before the slot existed (slot creation waits
//! for every transaction running when it starts). No id or time watermark is kept.
//! With ordering on, only the head of each aggregate's backlog is claimed, and claiming
//! repeats until nothing is due, so a parked aggregate drains in id order.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::dispatch::ordering::{key_of, BlockedAggregates};
use crate::dispatch::{self, Deliverer};
use crate::store::status::Outcome;
use crate::store::sweep::{ClaimSettings, ClaimedEvent};
use crate::store::{Store, StoreError};
use crate::telemetry::metrics;

/// Sweeper settings.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// `DISPATCHBOX_SWEEP_INTERVAL`: how often to look for due rows, at least.
    pub interval: Duration,
    /// `DISPATCHBOX_SWEEP_GRACE`: a `pending` row younger than this belongs to the stream.
    pub grace: Duration,
    /// `DISPATCHBOX_SWEEP_BATCH`: rows claimed per statement.
    pub batch: i64,
    /// `DISPATCHBOX_SWEEP_LEASE`: how long a claim holds a row.
    pub lease: Duration,
    /// Per-aggregate ordering on.
    pub ordering: bool,
}

/// A lease holder name unique to this process.
pub fn claim_token() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".to_owned());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Runs until `shutdown`. `catch_up` carries the cut-off after a slot was (re)created.
pub async fn run(
    store: Store,
    deliverer: Deliverer,
    blocked: BlockedAggregates,
    config: SweepConfig,
    mut catch_up: watch::Receiver<Option<DateTime<Utc>>>,
    shutdown: CancellationToken,
) {
    let token = claim_token();
    let mut cutoff: Option<DateTime<Utc>> = None;
    let mut wake = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
            changed = catch_up.changed() => {
                if changed.is_err() {
                    // The source is gone; keep sweeping on the timer.
                    catch_up = watch::channel(None).1;
                }
                cutoff = *catch_up.borrow_and_update();
            }
        }
        match sweep(
            &store, &deliverer, &blocked, &config, &token, cutoff, &shutdown,
        )
        .await
        {
            Ok(()) => {
                if let Some(at) = cutoff.take() {
                    tracing::info!(created_before = %at, "caught up on rows the replication slot cannot stream");
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "sweep failed; retrying at the next interval")
            }
        }
        wake = next_wake(&store, config.interval).await;
    }
}

/// When to sweep next: at the interval, or sooner when a retry falls due.
async fn next_wake(store: &Store, interval: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let due = match store.next_due().await {
        Ok(Some(at)) => (at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(interval),
        _ => interval,
    };
    // Never spin: at least a few milliseconds between sweeps.
    now + due.max(Duration::from_millis(20))
}

/// Claims and delivers until nothing is due.
async fn sweep(
    store: &Store,
    deliverer: &Deliverer,
    blocked: &BlockedAggregates,
    config: &SweepConfig,
    token: &str,
    cutoff: Option<DateTime<Utc>>,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    let settings = ClaimSettings {
        batch: config.batch,
        lease: config.lease,
        grace: config.grace,
        ordering: config.ordering,
        pending_created_before: cutoff,
    };
    while !shutdown.is_cancelled() {
        let claimed = store.claim_due(token, &settings).await?;
        if claimed.is_empty() {
            return Ok(());
        }
        tracing::debug!(rows = claimed.len(), "sweeper claimed rows");
        deliver_claimed(store, deliverer, blocked, config.ordering, token, claimed).await?;
    }
    Ok(())
}

async fn deliver_claimed(
    store: &Store,
    deliverer: &Deliverer,
    blocked: &BlockedAggregates,
    ordering: bool,
    token: &str,
    claimed: Vec<ClaimedEvent>,
) -> Result<(), StoreError> {
    let mut outcomes = Vec::with_capacity(claimed.len());
    let mut deliveries = Vec::new();
    for row in claimed {
        let attempt = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
        metrics::sweeper_reclaim(row.reason.as_str());
        match row.event {
            Ok(event) => {
                let event = Arc::new(event);
                tracing::debug!(
                    event_id = event.id,
                    attempt,
                    reason = row.reason.as_str(),
                    "sweeper delivering"
                );
                let delivery = deliverer.deliver(event.clone(), attempt);
                deliveries.push(async move { (event, attempt, delivery.await) });
            }
            Err(error) => {
                dispatch::unusable_row(row.id, &error.reason);
                outcomes.push((
                    row.id,
                    Outcome::Dead {
                        error: error.reason,
                    },
                ));
            }
        }
    }
    // Guards keep failed aggregates blocked for the stream until their rows are written.
    let mut guards = Vec::new();
    for (event, attempt, result) in join_all(deliveries).await {
        let outcome = deliverer.outcome(&event, attempt, result);
        if ordering && matches!(outcome, Outcome::Retry { .. }) {
            guards.push(blocked.park_guard(&key_of(&event)));
        }
        outcomes.push((event.id, outcome));
    }
    let written = store.write_claimed_outcomes(token, &outcomes).await?;
    if written.len() < outcomes.len() {
        tracing::warn!(
            lost = outcomes.len() - written.len(),
            "sweeper leases expired before outcomes were written; another sweeper owns those rows now"
        );
    }
    drop(guards);
    Ok(())
}
