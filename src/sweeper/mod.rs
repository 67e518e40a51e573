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
use crate::telemetry::metrics;

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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sighting(ids: &[i64], wal_position: u64) -> PendingSighting {
        PendingSighting {
            ids: ids.to_vec(),
            requeued: Vec::new(),
            wal_position: Lsn(wal_position),
            stream_settled: None,
        }
    }

    const GRACE: Duration = Duration::from_secs(300);

    #[test]
    fn a_row_is_missed_once_the_stream_settles_past_its_first_sighting() {
        let t0 = Instant::now();
        let mut sightings = Sightings::default();
        sightings.observe(&sighting(&[1, 2], 100), t0);
        // Seen again later at a higher position: the first sighting counts.
        sightings.observe(&sighting(&[1, 2, 3], 200), t0 + Duration::from_secs(1));
        let now = t0 + Duration::from_secs(2);
        assert!(sightings.missed(None, GRACE, now).is_empty());
        assert!(sightings.missed(Some(Lsn(99)), GRACE, now).is_empty());
        assert_eq!(sightings.missed(Some(Lsn(100)), GRACE, now), vec![1, 2]);
        assert_eq!(sightings.missed(Some(Lsn(250)), GRACE, now), vec![1, 2, 3]);
    }

    #[test]
    fn a_row_is_missed_after_the_grace_period_from_its_first_sighting() {
        let t0 = Instant::now();
        let mut sightings = Sightings::default();
        sightings.observe(&sighting(&[7], 100), t0);
        sightings.observe(&sighting(&[7, 8], 200), t0 + Duration::from_secs(10));
        let missed = |after: u64| sightings.missed(None, GRACE, t0 + Duration::from_secs(after));
        assert!(missed(299).is_empty());
        assert_eq!(missed(300), vec![7]);
        assert_eq!(missed(310), vec![7, 8]);
    }

    #[test]
    fn rows_no_longer_pending_are_forgotten_and_sighted_anew_if_they_return() {
        let t0 = Instant::now();
        let mut sightings = Sightings::default();
        sightings.observe(&sighting(&[1, 2], 100), t0);
        sightings.observe(&sighting(&[2], 200), t0 + Duration::from_secs(1));
        // A zero grace lists every remembered row.
        assert_eq!(sightings.missed(None, Duration::ZERO, t0), vec![2]);
        sightings.observe(&sighting(&[1, 2], 300), t0 + Duration::from_secs(2));
        assert_eq!(sightings.missed(Some(Lsn(200)), GRACE, t0), vec![2]);
        sightings.observe(&sighting(&[], 400), t0 + Duration::from_secs(3));
        assert!(sightings.missed(None, Duration::ZERO, t0).is_empty());
    }

    // The sweeper's decisions against an in-memory outbox (`memory`) and an in-memory
    // sink, with paused time: what it claims, delivers and writes, how long it retries a
    // write, when it renews leases and when it wakes.

    use crate::dispatch::route::Router;
    use crate::dispatch::RetryPolicy;
    use crate::sink::memory::MemorySink;
    use crate::sink::{DeliveryError, Sink};
    use memory::{MemorySweepStore, Method};
    use tokio::task::JoinHandle;

    fn config() -> SweepConfig {
        SweepConfig {
            interval: Duration::from_secs(60),
            grace: GRACE,
            slot: "dispatchbox".to_owned(),
            batch: 100,
            lease: Duration::from_secs(30),
            ordering: false,
            budget: ByteBudget::new(1 << 20),
        }
    }

    /// A sweeper running against `store`, delivering to `sink`.
    struct Running {
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Running {
        fn start(store: &MemorySweepStore, sink: &MemorySink, config: SweepConfig) -> Self {
            let deliverer = Deliverer::new(
                Arc::from(vec![Sink::Memory(sink.clone())]),
                Router::parse(None, &["memory"]).unwrap(),
                RetryPolicy {
                    max_attempts: 5,
                    backoff: Backoff {
                        base: Duration::from_secs(1),
                        max: Duration::from_secs(10),
                    },
                },
            );
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run(
                store.clone(),
                deliverer,
                BlockedAggregates::default(),
                config,
                Arc::new(Notify::new()),
                shutdown.clone(),
            ));
            Self { shutdown, task }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.unwrap();
        }
    }

    /// Waits (in paused time) until `done` holds, failing after `within`.
    async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < deadline, "still waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Sweeps so far (each starts with one look at the pending rows).
    fn sweeps(store: &MemorySweepStore) -> usize {
        store.calls(Method::SightPending).len()
    }

    fn claims(store: &MemorySweepStore) -> Vec<Vec<i64>> {
        store
            .calls(Method::ClaimRows)
            .into_iter()
            .map(|c| c.ids)
            .collect()
    }

    /// Given a due retry, an expired lease, a retry due in an hour, a due row that cannot
    /// form an event, a due row whose delivery fails, and a pending row of the stream's,
    /// when the sweeper runs, then it claims the four due rows (and claims again until
    /// nothing is due), delivers the three events, writes every outcome under its token
    /// and leaves the other rows alone.
    #[tokio::test(start_paused = true)]
    async fn due_rows_are_claimed_delivered_and_their_outcomes_written() {
        let t0 = Instant::now();
        let store = MemorySweepStore::default();
        store.insert(1, "a", "retry", t0);
        store.insert(2, "b", "processing", t0);
        store.insert(3, "c", "retry", t0 + Duration::from_secs(3600));
        store.insert(4, "d", "retry", t0);
        store.break_row(4);
        store.insert(5, "e", "retry", t0);
        store.insert(6, "f", "pending", t0);
        let sink = MemorySink::default();
        sink.fail(
            5,
            DeliveryError::Retryable {
                reason: "broker unavailable".into(),
                retry_after: Some(Duration::from_secs(60)),
            },
        );
        let sweeper = Running::start(&store, &sink, config());
        until("the sweep to end", Duration::from_secs(1), || {
            !store.calls(Method::NextDue).is_empty()
        })
        .await;

        assert_eq!(claims(&store), [vec![1, 2, 4, 5], vec![]]);
        assert_eq!(sink.handed(), [1, 2, 5]);
        for id in [1, 2] {
            let row = store.row(id);
            assert_eq!((row.status, row.attempts), ("done", 2), "row {id}");
            assert_eq!(row.claim_token, None, "row {id}");
        }
        let broken = store.row(4);
        assert_eq!(broken.status, "dead");
        assert!(broken.last_error.unwrap().contains("headers"));
        let failed = store.row(5);
        assert_eq!((failed.status, failed.attempts), ("retry", 2));
        assert_eq!(failed.last_error.as_deref(), Some("broker unavailable"));
        assert!(
            failed.due >= t0 + Duration::from_secs(59),
            "retry-after kept"
        );
        let later = store.row(3);
        assert_eq!((later.status, later.attempts), ("retry", 1));
        assert_eq!(
            store.row(6).status,
            "pending",
            "the stream's until the grace"
        );
        let writes = store.calls(Method::WriteClaimedOutcomes);
        assert_eq!(writes.len(), 1);
        assert_eq!(
            writes[0].ids,
            [4, 1, 2, 5],
            "the dead row first, without delivery"
        );
        sweeper.stop().await;
    }

    /// Given ordering on and a backlog of three due rows of aggregate `a`, when the
    /// sweeper runs, then each claim takes only the head of each aggregate, and it claims
    /// again until nothing is due: `a` drains in id order within one sweep.
    #[tokio::test(start_paused = true)]
    async fn with_ordering_a_backlog_drains_head_first_within_one_sweep() {
        let t0 = Instant::now();
        let store = MemorySweepStore::default();
        for id in 1..=3 {
            store.insert(id, "a", "retry", t0);
        }
        store.insert(4, "b", "retry", t0);
        let sink = MemorySink::default();
        let sweeper = Running::start(
            &store,
            &sink,
            SweepConfig {
                ordering: true,
                ..config()
            },
        );
        until("the sweep to end", Duration::from_secs(1), || {
            !store.calls(Method::NextDue).is_empty()
        })
        .await;
        assert_eq!(claims(&store), [vec![1, 4], vec![2], vec![3], vec![]]);
        assert_eq!(sink.handed(), [1, 4, 2, 3]);
        assert_eq!(sweeps(&store), 1);
        sweeper.stop().await;
    }

    /// Given a pending row the stream does not settle, when the sweeper first sees it,
    /// then it leaves the row to the stream; once the row has been seen pending for the
    /// grace period it claims it as missed (with ordering: after asking for its aggregate,
    /// which it holds blocked meanwhile) and delivers it.
    #[tokio::test(start_paused = true)]
    async fn a_pending_row_is_the_stream_s_until_the_grace_has_passed() {
        let t0 = Instant::now();
        let store = MemorySweepStore::default();
        store.insert(1, "a", "pending", t0);
        let sink = MemorySink::default();
        let sweeper = Running::start(
            &store,
            &sink,
            SweepConfig {
                interval: Duration::from_secs(10),
                grace: Duration::from_secs(15),
                ordering: true,
                ..config()
            },
        );
        tokio::time::sleep_until(t0 + Duration::from_millis(10_500)).await;
        assert_eq!(sweeps(&store), 2);
        assert_eq!(claims(&store), [Vec::<i64>::new(), Vec::new()]);
        assert!(store.calls(Method::AggregatesOf).is_empty());

        tokio::time::sleep_until(t0 + Duration::from_millis(20_500)).await;
        assert_eq!(sweeps(&store), 3);
        assert_eq!(claims(&store)[2], [1]);
        assert_eq!(store.calls(Method::AggregatesOf)[0].ids, [1]);
        assert_eq!(sink.handed(), [1]);
        assert_eq!(store.row(1).status, "done");
        sweeper.stop().await;
    }

    /// Given a database that fails the outcome write three times transiently, when the
    /// sweeper has delivered a row, then it retries the write (100, 200, 400 ms ceilings,
    /// equal jitter) instead of leaving the row to a lease expiry and a second delivery.
    #[tokio::test(start_paused = true)]
    async fn an_outcome_write_that_fails_transiently_is_retried_within_the_lease() {
        let store = MemorySweepStore::default();
        store.insert(1, "a", "retry", Instant::now());
        store.fail_writes(3, "08006");
        let sink = MemorySink::default();
        let sweeper = Running::start(&store, &sink, config());
        until("the row to be written", Duration::from_secs(5), || {
            store.row(1).status == "done"
        })
        .await;

        let tries: Vec<Instant> = store
            .calls(Method::WriteClaimedOutcomes)
            .iter()
            .map(|c| c.at)
            .collect();
        assert_eq!(tries.len(), 4);
        let ms = Duration::from_millis;
        for (gap, ceiling) in tries.windows(2).map(|w| w[1] - w[0]).zip([100, 200, 400]) {
            assert!(gap >= ms(ceiling) / 2 && gap <= ms(ceiling), "{gap:?}");
        }
        assert_eq!(sink.handed(), [1], "delivered once");
        assert_eq!(store.row(1).attempts, 2);
        sweeper.stop().await;
    }

    /// Given outcome writes that keep failing transiently, when the next retry would
    /// start after the lease ends, then the sweeper gives up before the lease ends (the
    /// row is another sweeper's then). A failure that is not transient is given up at
    /// once. The row stays claimed either way.
    #[tokio::test(start_paused = true)]
    async fn an_outcome_write_is_given_up_when_the_lease_would_not_cover_a_retry() {
        let store = MemorySweepStore::default();
        store.insert(1, "a", "retry", Instant::now());
        let settings = ClaimSettings {
            batch: 10,
            lease: Duration::from_secs(3),
            missed_pending: Vec::new(),
            ordering: false,
        };
        assert_eq!(store.claim_rows("me", &settings).await.unwrap().len(), 1);
        store.fail_writes(u32::MAX, "08006");
        let started = Instant::now();
        let outcomes = [(1, Outcome::Done)];

        let retrying = write_outcomes(&store, "me", &outcomes, settings.lease);
        let error = tokio::time::timeout(settings.lease * 2, retrying)
            .await
            .expect("given up")
            .unwrap_err();
        assert!(error.is_transient());
        let tries = store.calls(Method::WriteClaimedOutcomes);
        assert!(tries.len() >= 4, "{} tries", tries.len());
        assert!(
            started.elapsed() < settings.lease,
            "{:?}",
            started.elapsed()
        );

        store.fail_writes(1, "42501");
        let started = Instant::now();
        let error = write_outcomes(&store, "me", &outcomes, settings.lease)
            .await
            .unwrap_err();
        assert!(!error.is_transient());
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(
            store.calls(Method::WriteClaimedOutcomes).len(),
            tries.len() + 1
        );

        let row = store.row(1);
        assert_eq!(
            (row.status, row.claim_token.as_deref()),
            ("processing", Some("me"))
        );
    }

    /// Given one retry due in 10 s and nothing else, when the sweeper has swept once, then
    /// it sleeps until that row is due (not the 60 s interval, not a poll), sweeps then,
    /// and with nothing left sleeps the whole interval.
    #[tokio::test(start_paused = true)]
    async fn with_nothing_due_the_sweeper_sleeps_until_the_next_due_time() {
        let t0 = Instant::now();
        let store = MemorySweepStore::default();
        store.insert(1, "a", "retry", t0 + Duration::from_secs(10));
        let sink = MemorySink::default();
        let sweeper = Running::start(&store, &sink, config());
        let at = |ms: u64| t0 + Duration::from_millis(ms);

        tokio::time::sleep_until(at(1)).await;
        assert_eq!((sweeps(&store), claims(&store)), (1, vec![vec![]]));
        tokio::time::sleep_until(at(9_900)).await;
        assert_eq!(sweeps(&store), 1, "asleep until the row is due");
        tokio::time::sleep_until(at(10_200)).await;
        assert_eq!(sweeps(&store), 2);
        assert_eq!(store.row(1).status, "done");

        tokio::time::sleep_until(at(69_900)).await;
        assert_eq!(sweeps(&store), 2, "nothing due: asleep for the interval");
        tokio::time::sleep_until(at(70_300)).await;
        assert_eq!(sweeps(&store), 3);
        sweeper.stop().await;
    }

    /// Given a due row another sweeper holds locked, when it cannot be claimed, then the
    /// sweeper looks again after a second, not at once and not after the interval.
    #[tokio::test(start_paused = true)]
    async fn a_due_row_held_by_another_claimer_is_looked_at_again_after_a_second() {
        let store = MemorySweepStore::default();
        store.insert(1, "a", "retry", Instant::now());
        store.lock(1);
        let sink = MemorySink::default();
        let sweeper = Running::start(&store, &sink, config());
        tokio::time::sleep(Duration::from_millis(5_500)).await;
        assert_eq!(sweeps(&store), 6, "at 0, 1, 2, 3, 4 and 5 s");
        assert!(sink.handed().is_empty());
        sweeper.stop().await;
    }

    /// Given a delivery that takes longer than the lease, when it is out, then the
    /// sweeper renews the claim every third of the lease, so no other sweeper takes the
    /// row meanwhile; once the outcome is written it stops renewing.
    #[tokio::test(start_paused = true)]
    async fn a_slow_delivery_keeps_its_lease_renewed() {
        let t0 = Instant::now();
        let store = MemorySweepStore::default();
        store.insert(1, "a", "retry", t0);
        let sink = MemorySink::default();
        let delivery = sink.hold(1);
        let lease = Duration::from_secs(3);
        let sweeper = Running::start(&store, &sink, SweepConfig { lease, ..config() });

        tokio::time::sleep_until(t0 + Duration::from_millis(3_500)).await;
        let renewals = store.calls(Method::RenewClaims);
        let at: Vec<Duration> = renewals.iter().map(|c| c.at - t0).collect();
        let s = Duration::from_secs;
        assert_eq!(at, [s(1), s(2), s(3)]);
        assert!(renewals.iter().all(|c| c.ids == [1]));
        let row = store.row(1);
        assert_eq!(row.status, "processing");
        assert_eq!(row.due, t0 + s(3) + lease, "renewed from the last renewal");

        delivery.send(Ok(())).unwrap();
        until("the row to be written", s(1), || {
            store.row(1).status == "done"
        })
        .await;
        tokio::time::sleep(s(5)).await;
        assert_eq!(store.calls(Method::RenewClaims).len(), 3);
        sweeper.stop().await;
    }
}
