//! Dispatch: decides what happens to each event (deliver now, park in its row, or mark it
//! dead), hands deliveries to the routed sinks, and turns results into outcomes for the
//! status writer. It never sees LSNs (the stream's [`Ack`] travels through untouched) and
//! issues no SQL of its own: it asks the database two questions through [`DispatchStore`]
//! (which replayed events are settled already, has a blocked aggregate drained?).
//!
//! - **Concurrency** is bounded by `max_in_flight` (deliveries started plus events queued
//!   behind them): at the limit the dispatcher stops reading, which backs up the bounded
//!   channel to the replication reader.
//! - **Ordering** (default): at most one event per aggregate is in delivery at a time, the
//!   next ones wait in memory behind it, in commit order. When one fails and goes to
//!   `retry`, the aggregate is blocked: its queued and later events are parked in their rows
//!   (`retry`, due now) and the sweeper delivers the backlog head first; other aggregates
//!   keep flowing. See [`crate::flow::ordering`].
//! - **Scheduled events** (`next_run_at` in the future) are parked until due; with ordering
//!   on they block their aggregate like a failure does.
//! - **Retry policy**: [`RetryPolicy`] maps a delivery result to `done`, `retry` (capped
//!   exponential backoff with full jitter, at least `Retry-After`) or `dead`.

#[cfg(test)]
mod memory;
pub mod route;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dispatch::route::Router;
use crate::event::OutboxEvent;
use crate::event::Outcome;
use crate::flow::budget::BytesHeld;
use crate::flow::ordering::{key_of, AggregateKey, BlockedAggregates};
use crate::retry::Backoff;
use crate::sink::{DeliveryError, Sink};
use crate::source::progress::Ack;
pub use crate::source::Work;
use crate::status::Settlement;
use crate::store::sweep::SettledRows;
use crate::store::{Store, StoreError};
use crate::telemetry::events::{DeliveryAttempted, Emit, EventDead, ReplaySkipped};
use crate::telemetry::metrics;
use crate::telemetry::traces::{self, SendSpan};

/// Scheduled times closer than this to now are treated as due (tolerates clock skew
/// between the database and the relay).
const SCHEDULE_TOLERANCE: chrono::Duration = chrono::Duration::milliseconds(1000);

/// How a delivery result becomes an outcome.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts before an event is `dead`.
    pub max_attempts: u32,
    /// Delay before the next attempt.
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// True when attempt number `attempt` failing with `error` makes the event `dead`.
    pub fn gives_up(&self, attempt: u32, error: &DeliveryError) -> bool {
        error.is_permanent() || attempt >= self.max_attempts
    }

    /// The outcome of attempt number `attempt` (1-based) that ended with `result` now.
    pub fn outcome(&self, attempt: u32, result: Result<(), DeliveryError>) -> Outcome {
        self.outcome_at(attempt, result, Utc::now(), &mut rand::thread_rng())
    }

    /// [`RetryPolicy::outcome`] at time `now` with the randomness of `rng`.
    pub fn outcome_at(
        &self,
        attempt: u32,
        result: Result<(), DeliveryError>,
        now: DateTime<Utc>,
        rng: &mut impl rand::Rng,
    ) -> Outcome {
        match result {
            Ok(()) => Outcome::Done,
            Err(DeliveryError::Permanent { reason }) => Outcome::Dead { error: reason },
            Err(error @ DeliveryError::Retryable { .. }) if self.gives_up(attempt, &error) => {
                Outcome::Dead {
                    error: format!("{} (gave up after {attempt} attempts)", error.reason()),
                }
            }
            Err(DeliveryError::Retryable {
                reason,
                retry_after,
            }) => Outcome::Retry {
                error: reason,
                next_run_at: self.backoff.retry_at(
                    attempt,
                    retry_after.unwrap_or_default(),
                    now,
                    rng,
                ),
            },
        }
    }
}

/// Routes and delivers events; shared by the dispatcher and the sweeper.
#[derive(Debug, Clone)]
pub struct Deliverer {
    sinks: Arc<[Sink]>,
    /// The sinks' names, shared by the delivery futures that log and count under them.
    names: Arc<[Arc<str>]>,
    router: Arc<Router>,
    /// The retry policy applied to results.
    pub policy: RetryPolicy,
}

impl Deliverer {
    pub fn new(sinks: Arc<[Sink]>, router: Router, policy: RetryPolicy) -> Self {
        Self {
            names: sinks.iter().map(|sink| Arc::from(sink.name())).collect(),
            sinks,
            router: Arc::new(router),
            policy,
        }
    }

    /// Starts delivery attempt number `attempt` (1-based) of `event` to its routed sinks
    /// now (hand-off in call order) and returns the combined result: Ok only when every
    /// routed sink accepted it; a permanent failure on any sink wins over a retryable one.
    /// No matching route is permanent.
    ///
    /// Logs each sink's result (DEBUG `delivered`, WARN `delivery failed`) and records it
    /// in the delivery metrics.
    pub fn deliver(
        &self,
        event: Arc<OutboxEvent>,
        attempt: u32,
    ) -> impl std::future::Future<Output = Result<(), DeliveryError>> + Send + 'static {
        let in_flight = metrics::in_flight();
        let policy = self.policy;
        let since = std::time::Instant::now();
        // Spans need wall-clock times and destinations; without trace export neither is
        // taken.
        let traced = traces::enabled().then(std::time::SystemTime::now);
        // Hand-offs happen now, in route order; the futures only learn the outcomes.
        let routes = self.router.route(&event.event_type);
        let routed = routes.is_some();
        let mut started: Vec<_> = routes
            .unwrap_or_default()
            .iter()
            .filter_map(|&i| Some((self.names.get(i)?.clone(), self.sinks.get(i)?)))
            .map(|(name, sink)| {
                let sink_id = SinkId {
                    name,
                    destination: traced.and_then(|_| sink.destination(&event)),
                };
                (sink_id, sink.deliver(event.clone()))
            })
            .collect();
        async move {
            let _in_flight = in_flight;
            if !routed {
                return Err(DeliveryError::Permanent {
                    reason: format!(
                        "no route: no DISPATCHBOX_ROUTES rule matches event type {:?}",
                        event.event_type
                    ),
                });
            }
            let mut combined = Ok(());
            let mut record = |sink: SinkId, took, result: Result<(), DeliveryError>| {
                if let Some(started) = traced {
                    traces::record_send(SendSpan {
                        event: &event,
                        // The kind (`webhook`), not a named endpoint (`webhook:billing`).
                        sink: sink.name.split(':').next().unwrap_or_default(),
                        destination: sink.destination.as_deref(),
                        attempt,
                        started,
                        ended: started + took,
                        failed: result
                            .as_ref()
                            .err()
                            .map(|error| (error.reason(), error.is_permanent())),
                    });
                }
                let sink = sink.name;
                let attempted = |failed| DeliveryAttempted {
                    event_id: event.id,
                    event_type: &event.event_type,
                    sink: &sink,
                    attempt,
                    took,
                    failed,
                };
                let error = match result {
                    Ok(()) => {
                        attempted(None).emit();
                        return;
                    }
                    Err(error) => error,
                };
                attempted(Some((&error, policy.gives_up(attempt, &error)))).emit();
                if !matches!(combined, Err(DeliveryError::Permanent { .. })) {
                    combined = Err(error);
                }
            };
            // One routed sink (the common case) needs no join.
            if started.len() == 1 {
                if let Some((sink, delivery)) = started.pop() {
                    let result = delivery.await;
                    record(sink, since.elapsed(), result);
                }
            } else {
                let timed = started.into_iter().map(|(sink, delivery)| async move {
                    let result = delivery.await;
                    (sink, since.elapsed(), result)
                });
                for (sink, took, result) in futures_util::future::join_all(timed).await {
                    record(sink, took, result);
                }
            }
            combined
        }
    }

    /// The outcome of attempt number `attempt` of `event` (see [`RetryPolicy::outcome`]);
    /// a `dead` outcome is logged and counted.
    pub fn outcome(
        &self,
        event: &OutboxEvent,
        attempt: u32,
        result: Result<(), DeliveryError>,
    ) -> Outcome {
        let outcome = self.policy.outcome(attempt, result);
        if let Outcome::Dead { error } = &outcome {
            EventDead::Delivery {
                event_id: event.id,
                event_type: &event.event_type,
                attempt,
                error,
            }
            .emit();
        }
        outcome
    }
}

/// A routed sink as one attempt's records name it.
struct SinkId {
    name: Arc<str>,
    /// For the trace span, when trace export is on.
    destination: Option<String>,
}

/// Logs and counts a row that cannot become an event; returns its `dead` outcome (written
/// without an attempt).
pub fn unusable_row(id: i64, reason: String) -> Outcome {
    EventDead::Unusable {
        event_id: id,
        reason: &reason,
    }
    .emit();
    Outcome::Dead { error: reason }
}

/// Most replayed events looked up in one query.
const REPLAY_BATCH: usize = 1000;

/// What the dispatcher asks the database. [`Store`] is the real one; the unit tests use an
/// in-memory outbox, so the dispatcher's decisions (skip, park, deliver, unblock) are
/// tested without a server.
///
/// # Contract
///
/// - **Read-only.** Neither method writes or locks a row: the dispatcher's writes all go
///   through the status writer.
/// - **Snapshots.** Each answer is true of one moment; rows may change right after. The
///   dispatcher's decisions stay safe under that (see each method).
/// - **Errors** mean "unknown", whatever their class: the dispatcher then takes the safe
///   side (a replayed event is treated as pending, a blocked aggregate stays parked) and
///   asks again with the next event. It never retries a call itself, so a method may fail
///   fast.
/// - **Concurrency.** Calls come from one task, one at a time; `&self` and `Sync` because
///   the dispatcher's state is shared across awaits.
pub trait DispatchStore: Send + Sync + 'static {
    /// Of the rows `ids` (distinct, at most [`REPLAY_BATCH`]), those no longer `pending`:
    /// settled by an earlier run (`done`, `dead`) or the sweeper's now (`retry`,
    /// `processing`, also listed in [`SettledRows::waiting`]). Rows that do not exist are
    /// not among them.
    ///
    /// The dispatcher does not deliver a replayed event whose id is returned and settles
    /// its ack at once, so an id may be returned only when its row has durably left
    /// `pending`; leaving one out costs at most a redundant park. It blocks the aggregate
    /// of every `waiting` row, so an id must be there whenever its row is in `retry` or
    /// `processing`.
    fn settled_among(
        &self,
        ids: &[i64],
    ) -> impl Future<Output = Result<SettledRows, StoreError>> + Send;

    /// Whether the aggregate `(aggregate_type, aggregate_id)` has rows in `retry` or
    /// `processing` (`pending` rows do not count: the stream is delivering them).
    ///
    /// `Ok(false)` unblocks the aggregate and its next event is delivered at once, so it
    /// may be answered only when no such row is committed; `Ok(true)` keeps parking its
    /// events in their rows.
    fn aggregate_has_backlog(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

impl DispatchStore for Store {
    async fn settled_among(&self, ids: &[i64]) -> Result<SettledRows, StoreError> {
        Store::settled_among(self, ids).await
    }

    async fn aggregate_has_backlog(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<bool, StoreError> {
        Store::aggregate_has_backlog(self, aggregate_type, aggregate_id).await
    }
}

/// Dispatcher settings.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Deliveries started plus events queued behind them, at most.
    pub max_in_flight: usize,
    /// Per-aggregate ordering on (`DISPATCHBOX_ORDERING=aggregate`).
    pub ordering: bool,
    /// After shutdown begins, how long outstanding deliveries may still finish.
    pub shutdown_timeout: Duration,
    /// How long a replayed event still `pending` waits in its row before the sweeper
    /// delivers it: long enough for the relay that held the slot before to finish a
    /// delivery it had started and write its outcome (the longest sink timeout, plus a
    /// margin).
    pub replay_grace: Duration,
}

type Delivered = (Arc<OutboxEvent>, Ack, Result<(), DeliveryError>);
/// A streamed event waiting behind its aggregate: the event, its ack, its commit time, its
/// share of the byte budget.
type Streamed = (Arc<OutboxEvent>, Ack, Option<DateTime<Utc>>, BytesHeld);
type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = Delivered> + Send>>;

/// Runs until `input` closes (then drains) or `shutdown` is cancelled (then stops intake at
/// once and lets outstanding deliveries finish up to `shutdown_timeout`). Events still
/// outstanding at the deadline, and events left in the channel, stay unsettled: the flush
/// position does not pass them, so they are streamed again after a restart.
pub async fn run<S: DispatchStore>(
    input: mpsc::Receiver<Work>,
    deliverer: Deliverer,
    store: S,
    blocked: BlockedAggregates,
    settlements: mpsc::Sender<Settlement>,
    config: DispatchConfig,
    shutdown: CancellationToken,
) {
    let mut dispatcher = Dispatcher {
        shared: Shared {
            deliverer,
            store,
            blocked,
            settlements,
            config,
        },
        in_flight: FuturesUnordered::new(),
        queued: HashMap::new(),
        queued_len: 0,
    };
    dispatcher.run(input, shutdown).await;
}

/// The dispatcher's state that is shared across awaits (must be `Sync`).
struct Shared<S> {
    deliverer: Deliverer,
    store: S,
    blocked: BlockedAggregates,
    settlements: mpsc::Sender<Settlement>,
    config: DispatchConfig,
}

struct Dispatcher<S> {
    shared: Shared<S>,
    in_flight: FuturesUnordered<InFlight>,
    /// Aggregates with a delivery in flight → events waiting behind it (ordering only).
    queued: HashMap<AggregateKey, VecDeque<Streamed>>,
    queued_len: usize,
}

/// The dispatcher gave up because the status writer is gone.
struct WriterGone;

impl<S: DispatchStore> Shared<S> {
    async fn settle(
        &self,
        id: i64,
        outcome: Outcome,
        ack: Ack,
        written: Option<Arc<()>>,
    ) -> Result<(), WriterGone> {
        let settlement = Settlement {
            id,
            outcome,
            ack: Some(ack),
            written,
        };
        self.settlements
            .send(settlement)
            .await
            .map_err(|_| WriterGone)
    }

    /// Asks the database (rate-limited) whether a blocked aggregate has drained, and
    /// unblocks it if so.
    /// `in_delivery`: an event of the aggregate is being delivered or queued in memory.
    async fn drained(&self, key: &AggregateKey, in_delivery: bool) -> bool {
        if in_delivery {
            return false;
        }
        let Some((aggregate_type, aggregate_id)) = self.blocked.should_recheck(key) else {
            return false;
        };
        match self
            .store
            .aggregate_has_backlog(&aggregate_type, &aggregate_id)
            .await
        {
            Ok(false) => self.blocked.unblock(key),
            Ok(true) => false,
            Err(error) => {
                tracing::warn!(error = %error, "cannot check an aggregate's backlog; keeping it parked");
                false
            }
        }
    }

    /// Settles a finished delivery (attempt 1 of a streamed event).
    async fn settle_delivered(
        &self,
        (event, ack, result): Delivered,
    ) -> Result<Arc<OutboxEvent>, WriterGone> {
        let outcome = self.deliverer.outcome(&event, 1, result);
        let guard = self
            .config
            .ordering
            .then(|| self.blocked.retry_guard(&event, &outcome))
            .flatten();
        self.settle(event.id, outcome, ack, guard).await?;
        Ok(event)
    }

    async fn park(
        &self,
        event: Arc<OutboxEvent>,
        ack: Ack,
        at: DateTime<Utc>,
        guard: Option<Arc<()>>,
    ) -> Result<(), WriterGone> {
        tracing::debug!(event_id = event.id, next_run_at = %at, "parking event in its row");
        self.settle(event.id, Outcome::Deferred { next_run_at: at }, ack, guard)
            .await
    }
}

impl<S: DispatchStore> Dispatcher<S> {
    fn outstanding(&self) -> usize {
        self.in_flight.len() + self.queued_len
    }

    async fn run(&mut self, mut input: mpsc::Receiver<Work>, shutdown: CancellationToken) {
        let mut input_open = true;
        // One waiter for the whole run, not one registered and dropped per event.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        while input_open || !self.in_flight.is_empty() {
            let can_take = input_open && self.outstanding() < self.shared.config.max_in_flight;
            let step = tokio::select! {
                biased;
                _ = &mut cancelled => break,
                Some(delivered) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.finished(delivered).await
                }
                work = input.recv(), if can_take => match work {
                    Some(work) => self.take(work, &mut input).await,
                    None => {
                        input_open = false;
                        Ok(())
                    }
                },
            };
            if step.is_err() {
                return;
            }
        }
        if self.in_flight.is_empty() {
            return;
        }
        tracing::info!(
            outstanding = self.in_flight.len(),
            timeout = ?self.shared.config.shutdown_timeout,
            "waiting for in-flight deliveries"
        );
        let timeout = self.shared.config.shutdown_timeout;
        let drain = async {
            while let Some(delivered) = self.in_flight.next().await {
                if self.shared.settle_delivered(delivered).await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(timeout, drain).await.is_err() {
            tracing::warn!(
                "shutdown timeout reached with deliveries outstanding; they will be delivered again after restart"
            );
        }
    }

    /// Handles one piece of work from the stream (with the replayed events queued right
    /// behind a replayed one, see [`Dispatcher::replay`]).
    async fn take(
        &mut self,
        work: Work,
        input: &mut mpsc::Receiver<Work>,
    ) -> Result<(), WriterGone> {
        match work {
            Work::Deliver {
                event,
                ack,
                committed_at,
                held,
                replayed: true,
            } => {
                let after = self.replay((event, ack, committed_at, held), input).await?;
                match after {
                    Some(work) => Box::pin(self.take(work, input)).await,
                    None => Ok(()),
                }
            }
            Work::Deliver {
                event,
                ack,
                committed_at,
                held,
                replayed: false,
            } => self.admit((event, ack, committed_at, held)).await,
            Work::Unusable { id, reason, ack } => {
                let outcome = unusable_row(id, reason);
                self.shared.settle(id, outcome, ack, None).await
            }
        }
    }

    /// Replayed events (committed before the stream connected): `first` and those queued
    /// right behind it, up to [`REPLAY_BATCH`] and the in-flight limit, are looked up in
    /// one query. Rows no longer `pending` were settled by an earlier run (`done`,
    /// `dead`) or belong to the sweeper now (`retry`, `processing`): their events are not
    /// delivered again, and their acks settle at once (the row is already written). The
    /// rest are parked for the sweeper after `replay_grace` (see below). Returns the first
    /// queued work that was not part of the batch.
    async fn replay(
        &mut self,
        first: Streamed,
        input: &mut mpsc::Receiver<Work>,
    ) -> Result<Option<Work>, WriterGone> {
        let room = self
            .shared
            .config
            .max_in_flight
            .saturating_sub(self.outstanding())
            .clamp(1, REPLAY_BATCH);
        let mut batch = vec![first];
        let mut after = None;
        while batch.len() < room {
            match input.try_recv() {
                Ok(Work::Deliver {
                    event,
                    ack,
                    committed_at,
                    held,
                    replayed: true,
                }) => batch.push((event, ack, committed_at, held)),
                Ok(other) => {
                    after = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let ids: Vec<i64> = batch.iter().map(|(event, ..)| event.id).collect();
        let SettledRows { settled, waiting } = match self.shared.store.settled_among(&ids).await {
            Ok(rows) => rows,
            Err(error) => {
                // Not knowing is not a reason to stop: deliver them (at least once).
                tracing::warn!(error = %error, events = ids.len(), "cannot check replayed events against their rows; delivering them");
                SettledRows::default()
            }
        };
        ReplaySkipped {
            skipped: settled.len(),
            of: ids.len(),
        }
        .emit();
        let grace = self.shared.config.replay_grace;
        let due = Utc::now() + chrono::Duration::from_std(grace).unwrap_or_default();
        for (event, ack, _committed_at, held) in batch {
            if settled.contains(&event.id) {
                if waiting.contains(&event.id) && self.shared.config.ordering {
                    // The sweeper's now (another relay failed or parked it, possibly
                    // after this one loaded its blocked aggregates at connect): later
                    // events of its aggregate must wait behind it, until the database
                    // shows its aggregate drained.
                    self.shared
                        .blocked
                        .block(&event.aggregate_type, &event.aggregate_id);
                }
                ack.settle();
                continue;
            }
            if !ack.is_live() {
                continue;
            }
            // Still pending: maybe never delivered, maybe delivered a moment ago by the
            // relay that held the slot before, which may be alive and about to write it
            // (it lost its connection, not its deliveries). Delivering it now could
            // duplicate it and overtake that relay's retry of an earlier event of its
            // aggregate. It is parked in its row instead, due after the grace
            // (`replay_grace`); the sweeper then delivers it in order, unless the other
            // relay settled it meanwhile. Its aggregate is blocked until then.
            drop(held);
            let guard = self
                .shared
                .config
                .ordering
                .then(|| self.shared.blocked.park_guard(&event));
            self.shared.park(event, ack, due, guard).await?;
        }
        Ok(after)
    }

    /// Decides what to do with a streamed event: deliver, queue behind its aggregate, or
    /// park in its row.
    async fn admit(&mut self, streamed: Streamed) -> Result<(), WriterGone> {
        let key = self.shared.config.ordering.then(|| key_of(&streamed.0));
        self.admit_keyed(streamed, key.as_ref()).await
    }

    /// [`Dispatcher::admit`] with the event's aggregate key computed by the caller (`None`
    /// when ordering is off).
    async fn admit_keyed(
        &mut self,
        (event, ack, committed_at, held): Streamed,
        key: Option<&AggregateKey>,
    ) -> Result<(), WriterGone> {
        if !ack.is_live() {
            // The stream broke after this event was received: it is sent again (here or
            // to the relay that took the slot), and this copy is not delivered.
            return Ok(());
        }
        // A row due when it was created (the default) needs no look at the clock.
        let scheduled = event.next_run_at.filter(|&at| {
            at > event.created_at + SCHEDULE_TOLERANCE && at > Utc::now() + SCHEDULE_TOLERANCE
        });
        let Some(key) = key else {
            if let Some(at) = scheduled {
                drop(held);
                return self.shared.park(event, ack, at, None).await;
            }
            self.start((event, ack, committed_at, held));
            return Ok(());
        };

        if self.shared.blocked.contains(key) {
            let drained = self
                .shared
                .drained(key, self.queued.contains_key(key))
                .await;
            if !ack.is_live() {
                // The stream broke while the database answered (a restart is when it
                // answers late): the event is sent again on the next stream, which parks
                // or delivers it in order; this copy must not race it.
                return Ok(());
            }
            if !drained {
                drop(held);
                let guard = self.shared.blocked.park_guard(&event);
                let at = scheduled.unwrap_or_else(Utc::now);
                return self.shared.park(event, ack, at, Some(guard)).await;
            }
        }
        if let Some(at) = scheduled {
            // Later events of the aggregate wait behind the scheduled one.
            drop(held);
            let guard = self.shared.blocked.park_guard(&event);
            return self.shared.park(event, ack, at, Some(guard)).await;
        }
        if let Some(waiting) = self.queued.get_mut(key) {
            waiting.push_back((event, ack, committed_at, held));
            self.queued_len += 1;
            return Ok(());
        }
        self.queued.insert(*key, VecDeque::new());
        self.start((event, ack, committed_at, held));
        Ok(())
    }

    fn start(&mut self, (event, ack, committed_at, held): Streamed) {
        // Streamed events are on their first attempt as far as the dispatcher knows.
        let delivery = self.shared.deliverer.deliver(event.clone(), 1);
        self.in_flight.push(Box::pin(async move {
            let result = delivery.await;
            drop(held);
            if let (Ok(()), Some(at)) = (&result, committed_at) {
                metrics::commit_to_ack(at);
            }
            (event, ack, result)
        }));
    }

    /// A delivery finished: settle it, then release (or park) the events queued behind it.
    async fn finished(&mut self, delivered: Delivered) -> Result<(), WriterGone> {
        let event = self.shared.settle_delivered(delivered).await?;
        if !self.shared.config.ordering {
            return Ok(());
        }
        let key = key_of(&event);
        let Some(waiting) = self.queued.remove(&key) else {
            return Ok(());
        };
        self.queued_len -= waiting.len();
        // Re-admit in commit order: after a failure they are parked (the aggregate is
        // blocked); after a success the first starts and the rest queue behind it.
        for streamed in waiting {
            self.admit_keyed(streamed, Some(&key)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl Deliverer {
    /// For unit tests: every event to one memory sink, 5 attempts, backoff 1 s to 10 s.
    pub(crate) fn to_memory(sink: &crate::sink::memory::MemorySink) -> Self {
        Self::new(
            Arc::from(vec![Sink::Memory(sink.clone())]),
            Router::parse(None, &["memory"]).unwrap_or_else(|e| panic!("{e}")),
            RetryPolicy {
                max_attempts: 5,
                backoff: Backoff {
                    base: Duration::from_secs(1),
                    max: Duration::from_secs(10),
                },
            },
        )
    }
}

#[cfg(test)]
mod tests;
