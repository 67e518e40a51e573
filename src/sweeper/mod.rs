//! The sweeper: the safety net next to the stream. Every `DISPATCHBOX_SWEEP_INTERVAL` (and
//! sooner when a retry falls due) it claims due rows with a lease and delivers them:
//!
//! - `retry` rows whose `next_run_at` has come (failed attempts, parked and scheduled events);
//! - `processing` rows whose lease expired (a relay died while delivering them);
//! - `pending` rows the stream missed: rows seen committed before a WAL position the slot's
//!   confirmed flush position has since passed (the stream went past them without settling
//!   them), rows seen `pending` for longer than `DISPATCHBOX_SWEEP_GRACE` (the stream is
//!   stuck or far behind). This also covers rows committed while no slot existed (a table
//!   adopted by the relay, a slot lost and recreated): the new slot starts past them, so
//!   they are taken as soon as the sweeper has seen them once;
//! - `pending` rows attempted before (with a `last_error_at`): dead events an operator
//!   retried, which the insert-only stream never sees again (no grace either).
//!
//! Safe on every replica at once: rows are claimed with `FOR UPDATE SKIP LOCKED`, marked
//! `processing` with this sweeper's `claim_token` and a lease, and outcomes are written only
//! while the token still holds the row. It does not race a healthy stream: a `pending` row
//! belongs to the stream until the stream has provably passed its commit or the grace
//! period, counted from when the sweeper first saw the row committed (not from
//! `created_at`, so a transaction held open for long is no exception), has passed. No id
//! or time watermark is kept: [`Sightings`] remembers individual rows, a bounded number of
//! them.
//! With ordering on, only the head of each aggregate's backlog is claimed, and claiming
//! repeats until nothing is due, so a parked aggregate drains in id order.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dispatch::{self, Deliverer};
use crate::event::Outcome;
use crate::flow::budget::ByteBudget;
use crate::flow::ordering::BlockedAggregates;
use crate::lsn::Lsn;
use crate::retry::{Backoff, Retry};
use crate::store::sweep::{ClaimSettings, ClaimedEvent, ClaimedRow, PendingSighting};
use crate::store::{Store, StoreError};
use crate::telemetry::events::{Emit, SweeperReclaimed};

#[cfg(test)]
mod memory;

/// What the sweeper needs from the database. [`Store`] is the real one (see
/// [`crate::store::sweep`] for the statements); the unit tests use an in-memory outbox, so
/// the sweeper's decisions (what to claim, when to renew, how long to retry a write, when
/// to wake) are tested without a server.
///
/// # Contract
///
/// - **Claims are leases.** [`SweepStore::claim_rows`] makes rows `processing` under the
///   caller's `token` until [`SweepStore::write_claimed_outcomes`] releases them or the
///   lease expires. Any number of sweepers (one per relay replica) may call at once; a row
///   is never held by two live claims.
/// - **Token-guarded.** Every method that takes a `token` touches only rows still
///   `processing` under it: once a lease expired and another sweeper claimed the row,
///   this sweeper can neither load, renew nor write it. An id missing from an answer lost
///   its claim; that is not an error.
/// - **Lookups write nothing**: [`SweepStore::sight_pending`],
///   [`SweepStore::aggregates_of`], [`SweepStore::drained_aggregates`] and
///   [`SweepStore::next_due`] are snapshots; rows may change right after.
/// - **Errors.** A failed call has written nothing. One that
///   [`StoreError::is_transient`] may pass when repeated: the sweeper retries outcome
///   writes so while the lease holds. Any other error ends the sweep; the next one starts
///   at the interval, and rows left `processing` are claimed again when their lease
///   expires (delivered again: at least once).
/// - **Concurrency.** One sweeper calls from one task, one call at a time, except that
///   [`SweepStore::renew_claims`] may run while the same rows are loaded or written.
pub trait SweepStore: Send + Sync + 'static {
    /// `token` as the `claim_token` column holds it (cut to the column's width, keeping
    /// its unique end): the token every claim of this sweeper is made and checked with.
    fn fit_claim_token(&self, token: &str) -> String;

    /// Up to `limit` due `pending` rows, lowest due first, with the WAL position their
    /// commits precede and how far the stream of `slot` has settled (see
    /// [`PendingSighting`]). Rows never attempted are in `ids`; rows returned from
    /// `dead` in `requeued`.
    fn sight_pending(
        &self,
        slot: &str,
        limit: i64,
    ) -> impl Future<Output = Result<PendingSighting, StoreError>> + Send;

    /// The distinct aggregates of the rows `ids` (rows without one left out).
    fn aggregates_of(
        &self,
        ids: &[i64],
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;

    /// Claims up to `settings.batch` rows under `token` for `settings.lease`, lowest id
    /// first: due `retry` rows, `processing` rows whose lease expired, and due `pending`
    /// rows among `settings.missed_pending` (other `pending` rows are the stream's); with
    /// `settings.ordering`, only rows that head their aggregate's backlog. Rows another
    /// claimer is taking right now are skipped, not waited for. `attempts` is left alone
    /// (the outcome write counts the attempt). Empty: nothing claimable now.
    fn claim_rows(
        &self,
        token: &str,
        settings: &ClaimSettings,
    ) -> impl Future<Output = Result<Vec<ClaimedRow>, StoreError>> + Send;

    /// The events of `rows` still claimed under `token`, in id order; a row that cannot
    /// form an event comes back with its [`crate::event::mapping::RowError`] (the caller
    /// marks it `dead`).
    fn load_claimed(
        &self,
        token: &str,
        rows: &[ClaimedRow],
    ) -> impl Future<Output = Result<Vec<ClaimedEvent>, StoreError>> + Send;

    /// Extends the leases of the rows `ids` still claimed under `token` to `lease` from
    /// now; returns how many it extended. Idempotent.
    fn renew_claims(
        &self,
        token: &str,
        ids: &[i64],
        lease: Duration,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Writes each `(id, outcome)` of a row still claimed under `token` (one attempt each,
    /// none for a deferral; a later duplicate id wins) and releases the claim, in one
    /// transaction. Returns the ids written, in id order: an id left out lost its claim
    /// and its outcome was discarded. Repeating the call after a failure is safe.
    fn write_claimed_outcomes(
        &self,
        token: &str,
        outcomes: &[(i64, Outcome)],
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send;

    /// Of `aggregates`, those without rows in `retry` or `processing`: their backlog
    /// drained.
    fn drained_aggregates(
        &self,
        aggregates: &[(String, String)],
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;

    /// When [`SweepStore::claim_rows`] can next claim a `retry` or `processing` row (a
    /// retry falling due, a lease expiring; with `ordering`, heads of their aggregate
    /// only), or `None` when there is no such row. May be in the past.
    fn next_due(
        &self,
        ordering: bool,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>, StoreError>> + Send;
}

impl SweepStore for Store {
    fn fit_claim_token(&self, token: &str) -> String {
        self.text_widths().fit_claim_token(token)
    }

    async fn sight_pending(&self, slot: &str, limit: i64) -> Result<PendingSighting, StoreError> {
        Store::sight_pending(self, slot, limit).await
    }

    async fn aggregates_of(&self, ids: &[i64]) -> Result<Vec<(String, String)>, StoreError> {
        Store::aggregates_of(self, ids).await
    }

    async fn claim_rows(
        &self,
        token: &str,
        settings: &ClaimSettings,
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        Store::claim_rows(self, token, settings).await
    }

    async fn load_claimed(
        &self,
        token: &str,
        rows: &[ClaimedRow],
    ) -> Result<Vec<ClaimedEvent>, StoreError> {
        Store::load_claimed(self, token, rows).await
    }

    async fn renew_claims(
        &self,
        token: &str,
        ids: &[i64],
        lease: Duration,
    ) -> Result<u64, StoreError> {
        Store::renew_claims(self, token, ids, lease).await
    }

    async fn write_claimed_outcomes(
        &self,
        token: &str,
        outcomes: &[(i64, Outcome)],
    ) -> Result<Vec<i64>, StoreError> {
        Store::write_claimed_outcomes(self, token, outcomes).await
    }

    async fn drained_aggregates(
        &self,
        aggregates: &[(String, String)],
    ) -> Result<Vec<(String, String)>, StoreError> {
        Store::drained_aggregates(self, aggregates).await
    }

    async fn next_due(&self, ordering: bool) -> Result<Option<DateTime<Utc>>, StoreError> {
        Store::next_due(self, ordering).await
    }
}

/// Sweeper settings.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// `DISPATCHBOX_SWEEP_INTERVAL`: how often to look for due rows, at least.
    pub interval: Duration,
    /// `DISPATCHBOX_SWEEP_GRACE`: how long a committed `pending` row is left to the stream
    /// when nothing shows the stream has passed it.
    pub grace: Duration,
    /// The replication slot whose confirmed flush position shows how far the stream got.
    pub slot: String,
    /// `DISPATCHBOX_SWEEP_BATCH`: rows claimed per statement.
    pub batch: i64,
    /// `DISPATCHBOX_SWEEP_LEASE`: how long a claim holds a row.
    pub lease: Duration,
    /// Per-aggregate ordering on.
    pub ordering: bool,
    /// The byte budget shared with the stream (`DISPATCHBOX_MAX_IN_FLIGHT_BYTES`): claimed
    /// rows are loaded and delivered in pieces that fit half of it.
    pub budget: ByteBudget,
}

/// Least time between two sweeps.
const BETWEEN_SWEEPS: Duration = Duration::from_millis(20);
/// Least time before the next sweep after one that claimed nothing although a row was
/// due: the row is held by another replica's claim (or its aggregate's head was settled
/// after the claim's snapshot); polling for it at once would only spin.
const NOTHING_CLAIMED_PAUSE: Duration = Duration::from_secs(1);

/// What loading a claimed row costs beyond the bytes the claim reported (see
/// [`crate::event::OutboxEvent::held_bytes`]).
const ROW_OVERHEAD_BYTES: usize = 256;
/// Blocked aggregates are checked for a drained backlog every this many sweep intervals
/// (every 30 s with the default interval).
const PRUNE_EVERY_INTERVALS: u32 = 6;

/// Most `pending` rows remembered by [`Sightings`] (about 40 bytes each). A larger backlog
/// of missed rows is taken this many at a time.
const SIGHTING_LIMIT: i64 = 10_000;

/// When this sweeper first saw each `pending` row committed, and the WAL position that
/// bounded its commit then. A row is the sweeper's once the stream has settled past that
/// position (it passed the commit without delivering the row) or once it has been seen
/// `pending` for the grace period (the stream is stuck or far behind).
#[derive(Debug, Default)]
pub struct Sightings {
    first_seen: HashMap<i64, (Lsn, Instant)>,
}

impl Sightings {
    /// Records a look at the pending rows: rows seen before keep their first sighting,
    /// new rows are sighted now, rows no longer pending (or beyond the limit) are
    /// forgotten.
    pub fn observe(&mut self, sighting: &PendingSighting, now: Instant) {
        let mut first_seen = HashMap::with_capacity(sighting.ids.len());
        for &id in &sighting.ids {
            let first = self
                .first_seen
                .get(&id)
                .copied()
                .unwrap_or((sighting.wal_position, now));
            first_seen.insert(id, first);
        }
        self.first_seen = first_seen;
    }

    /// The remembered rows the stream has missed, lowest id first: those sighted at or
    /// before `stream_settled`, and those sighted at least `grace` ago.
    pub fn missed(&self, stream_settled: Option<Lsn>, grace: Duration, now: Instant) -> Vec<i64> {
        let mut missed: Vec<i64> = self
            .first_seen
            .iter()
            .filter(|(_, &(position, at))| {
                stream_settled.is_some_and(|settled| position <= settled)
                    || now.saturating_duration_since(at) >= grace
            })
            .map(|(&id, _)| id)
            .collect();
        missed.sort_unstable();
        missed
    }
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

/// Runs until `shutdown`, sweeping at the interval, when a retry falls due, and at once
/// when `sweep_now` is notified (the source does so after it (re)created the slot).
pub async fn run<S: SweepStore>(
    store: S,
    deliverer: Deliverer,
    blocked: BlockedAggregates,
    config: SweepConfig,
    sweep_now: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let token = store.fit_claim_token(&claim_token());
    let mut sightings = Sightings::default();
    let mut wake = tokio::time::Instant::now();
    let mut pruned = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
            _ = sweep_now.notified() => {}
        }
        let sweeper = Sweeper {
            store: &store,
            deliverer: &deliverer,
            blocked: &blocked,
            config: &config,
            token: &token,
        };
        let swept = sweeper.sweep(&mut sightings, &shutdown);
        let claimed = match swept.await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(error = %error, "sweep failed; retrying at the next interval");
                0
            }
        };
        let prune_every = config.interval * PRUNE_EVERY_INTERVALS;
        if config.ordering && pruned.elapsed() >= prune_every && !blocked.is_empty() {
            pruned = Instant::now();
            if let Err(error) = prune_blocked(&store, &blocked).await {
                tracing::warn!(error = %error, "cannot check blocked aggregates for a drained backlog");
            }
        }
        wake = next_wake(&store, &config, claimed).await;
    }
}

/// When to sweep next: at the interval, or sooner when a row becomes claimable (a retry
/// falls due, a lease expires). A row that is claimable already and still was not claimed
/// (another replica holds it) is tried again after a second, not at once.
async fn next_wake(store: &impl SweepStore, config: &SweepConfig, claimed: usize) -> Instant {
    let now = Instant::now();
    let due = match store.next_due(config.ordering).await {
        Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
        _ => config.interval,
    };
    let floor = if claimed == 0 && due.is_zero() {
        NOTHING_CLAIMED_PAUSE
    } else {
        BETWEEN_SWEEPS
    };
    now + due.max(floor).min(config.interval)
}

/// Looks at the pending rows once, then claims and delivers until nothing is due, and
/// returns how many rows it claimed. Rows the
/// stream passes while this sweep runs wait for the next one; ids in `missed_pending` that
/// were claimed or settled meanwhile are ignored by the claim.
/// What every step of one sweep works with.
struct Sweeper<'a, S> {
    store: &'a S,
    deliverer: &'a Deliverer,
    blocked: &'a BlockedAggregates,
    config: &'a SweepConfig,
    /// This process's claim token.
    token: &'a str,
}

impl<S: SweepStore> Sweeper<'_, S> {
    async fn sweep(
        &self,
        sightings: &mut Sightings,
        shutdown: &CancellationToken,
    ) -> Result<usize, StoreError> {
        let Self {
            store,
            blocked,
            config,
            token,
            ..
        } = *self;
        let sighting = store.sight_pending(&config.slot, SIGHTING_LIMIT).await?;
        let now = Instant::now();
        sightings.observe(&sighting, now);
        let missed = sightings.missed(sighting.stream_settled, config.grace, now);
        // The stream went past these rows; until they are delivered, later events of their
        // aggregates must wait in their rows like behind a retry. The holds keep the
        // aggregates blocked until this sweep has written their outcomes, whatever the
        // database says meanwhile (a `pending` row does not count as a backlog).
        let _holds: Vec<Arc<()>> = if config.ordering && !missed.is_empty() {
            store
                .aggregates_of(&missed)
                .await?
                .iter()
                .map(|(aggregate_type, aggregate_id)| blocked.hold(aggregate_type, aggregate_id))
                .collect()
        } else {
            Vec::new()
        };
        let mut missed_pending = missed;
        // Rows returned from `dead` are taken at once: the stream will never deliver them.
        missed_pending.extend_from_slice(&sighting.requeued);
        let settings = ClaimSettings {
            batch: config.batch,
            lease: config.lease,
            missed_pending,
            ordering: config.ordering,
        };
        let mut total = 0;
        while !shutdown.is_cancelled() {
            let claimed = store.claim_rows(token, &settings).await?;
            if claimed.is_empty() {
                break;
            }
            tracing::debug!(rows = claimed.len(), "sweeper claimed rows");
            total += claimed.len();
            self.deliver_renewing(&claimed).await?;
        }
        Ok(total)
    }
}

/// Forgets blocked aggregates whose backlog drained (every [`PRUNE_EVERY_INTERVALS`]
/// sweep intervals): the
/// dispatcher rechecks an aggregate only when a new event of it arrives, so without this
/// the set would keep every aggregate that ever failed once.
async fn prune_blocked(
    store: &impl SweepStore,
    blocked: &BlockedAggregates,
) -> Result<(), StoreError> {
    for chunk in blocked.idle().chunks(1000) {
        let drained = store.drained_aggregates(chunk).await?;
        blocked.forget_drained(&drained);
    }
    Ok(())
}

/// Delivers the claimed `rows` ([`deliver_in_pieces`]), renewing their leases every third
/// of the lease meanwhile, so that a batch that takes long (slow sinks, a byte budget
/// spent by the stream) is never taken over by another sweeper while it is delivered.
impl<S: SweepStore> Sweeper<'_, S> {
    async fn deliver_renewing(&self, rows: &[ClaimedRow]) -> Result<(), StoreError> {
        let Self {
            store,
            config,
            token,
            ..
        } = *self;
        let every = (config.lease / 3).max(Duration::from_millis(100));
        let work = self.deliver_in_pieces(rows);
        tokio::pin!(work);
        let mut renew = tokio::time::interval_at(Instant::now() + every, every);
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = renew.tick() => match store.renew_claims(token, &ids, config.lease).await {
                    Ok(renewed) => tracing::debug!(renewed, "sweeper renewed its leases"),
                    Err(error) => tracing::warn!(error = %error, "cannot renew the sweeper's leases"),
                },
            }
        }
    }

    /// Loads and delivers the claimed `rows` in id order, as many at a time as fit half of
    /// the byte budget (at least one): the other half stays for the stream.
    async fn deliver_in_pieces(&self, rows: &[ClaimedRow]) -> Result<(), StoreError> {
        let Self {
            store,
            config,
            token,
            ..
        } = *self;
        let piece_budget = config.budget.total() / 2;
        let mut rest = rows;
        while !rest.is_empty() {
            let mut bytes = 0;
            let mut take = 0;
            for row in rest {
                let size = row.bytes + ROW_OVERHEAD_BYTES;
                if take > 0 && bytes + size > piece_budget {
                    break;
                }
                bytes += size;
                take += 1;
            }
            let (piece, later) = rest.split_at(take);
            rest = later;
            let held = config.budget.acquire(bytes).await;
            let claimed = store.load_claimed(token, piece).await?;
            self.deliver_claimed(claimed).await?;
            drop(held);
        }
        Ok(())
    }
    async fn deliver_claimed(&self, claimed: Vec<ClaimedEvent>) -> Result<(), StoreError> {
        let Self {
            store,
            deliverer,
            blocked,
            config,
            token,
        } = *self;
        let mut outcomes = Vec::with_capacity(claimed.len());
        let mut deliveries = Vec::new();
        for row in claimed {
            let attempt = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
            SweeperReclaimed {
                event_id: row.id,
                attempt,
                reason: row.reason,
            }
            .emit();
            match row.event {
                Ok(event) => {
                    let event = Arc::new(event);
                    let delivery = deliverer.deliver(event.clone(), attempt);
                    deliveries.push(async move { (event, attempt, delivery.await) });
                }
                Err(error) => {
                    outcomes.push((row.id, dispatch::unusable_row(row.id, error.reason)));
                }
            }
        }
        // Guards keep failed aggregates blocked for the stream until their rows are written.
        let mut guards = Vec::new();
        for (event, attempt, result) in join_all(deliveries).await {
            let outcome = deliverer.outcome(&event, attempt, result);
            if config.ordering {
                guards.extend(blocked.retry_guard(&event, &outcome));
            }
            outcomes.push((event.id, outcome));
        }
        let written = write_outcomes(store, token, &outcomes, config.lease).await?;
        if written.len() < outcomes.len() {
            tracing::warn!(
            lost = outcomes.len() - written.len(),
            "sweeper leases expired before outcomes were written; another sweeper owns those rows now"
        );
        }
        drop(guards);
        Ok(())
    }
}

/// Retries of a failed outcome write: 100 ms doubling to 2 s.
const OUTCOME_WRITE_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(2),
};

/// Writes the outcomes of delivered claimed rows, retrying a failed write (the database
/// restarting, a connection lost) for as long as the lease would have held: giving up at
/// once would leave delivered rows `processing` until the lease expires, and another
/// sweeper would deliver them again. A late write is harmless: it only touches rows still
/// claimed by `token`.
async fn write_outcomes(
    store: &impl SweepStore,
    token: &str,
    outcomes: &[(i64, Outcome)],
    lease: Duration,
) -> Result<Vec<i64>, StoreError> {
    let started = Instant::now();
    let mut retry = Retry::new(OUTCOME_WRITE_BACKOFF);
    loop {
        let error = match store.write_claimed_outcomes(token, outcomes).await {
            Ok(written) => return Ok(written),
            Err(error) => error,
        };
        let delay = retry.next_delay();
        if !error.is_transient() || started.elapsed() + delay >= lease {
            return Err(error);
        }
        tracing::warn!(error = %error, rows = outcomes.len(), retry_in = ?delay, "cannot write the sweeper's outcomes yet; retrying");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests;
