//! The status writer: the only code that writes the outcomes of streamed events onto
//! outbox rows, and the only caller of [`Ack::settle`]. (Rows a sweeper claimed are written
//! by [`Store::write_claimed_outcomes`] with the same UPDATE, guarded by the claim token.)
//!
//! Settlements arrive on a bounded channel. The writer takes whatever is queued, waits up
//! to `linger` for more while the batch is not full (`DISPATCHBOX_STATUS_LINGER`: at low
//! rates this turns one status transaction per event into one per few dozen events, and
//! every status transaction costs the database a commit and the walsender a decoded
//! transaction), and writes the batch with one prepared statement: `UPDATE … WHERE id =
//! ANY($1)` when every row is simply `done` (the common case), else the general
//! `UPDATE … FROM unnest(…)`. Both return the ids written. An ack is settled only after the
//! statement that wrote its row has committed; that is what lets the flush LSN move past
//! the event. The status is not on the delivery path: lingering delays only the row's
//! status and the flush position, never a delivery.
//!
//! Two things can keep a row from being written, and neither may lose it:
//! - **The row is not visible yet.** The WAL can reach the relay a moment before the
//!   inserting transaction is visible to other sessions, so the UPDATE finds nothing. Such
//!   ids wait and are retried with a growing delay (other batches keep flowing); after
//!   `missing_row_deadline` the row is taken to be gone (deleted, or rolled back with a
//!   savepoint) and its acks are settled with a warning.
//! - **The database fails.** The batch is kept and retried with capped backoff; acks stay
//!   unsettled, and the bounded channel pushes back on the dispatcher meanwhile.
//!
//! Shutdown: when every sender is dropped the writer writes everything still queued, gives
//! rows that are not visible yet one more second, and returns. Aborting the task is always
//! safe: unsettled acks only hold the flush position back, and
//! the events are streamed again after a restart.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::event::Outcome;
use crate::retry::{Backoff, Retry};
use crate::source::progress::Ack;
use crate::store::{Store, StoreError};
use crate::telemetry::events::{Emit, StatusRowRejected, StatusWriterStall};
use crate::telemetry::health::Health;
use crate::telemetry::metrics;

#[cfg(test)]
mod memory;

/// Most rows written by one statement (`DISPATCHBOX_STATUS_BATCH_SIZE`).
pub const DEFAULT_MAX_BATCH: usize = 1000;
/// How long a batch that is not full waits for more settlements
/// (`DISPATCHBOX_STATUS_LINGER`).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(100);
/// Settlements queued before senders wait.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 10_000;
/// How long an id whose row cannot be found is retried before it is settled without a write.
pub const DEFAULT_MISSING_ROW_DEADLINE: Duration = Duration::from_secs(60);
/// First retry delay for an id whose row was not found.
pub const DEFAULT_MISSING_ROW_RETRY_MIN: Duration = Duration::from_millis(20);
/// Cap of the retry delay for an id whose row was not found.
pub const DEFAULT_MISSING_ROW_RETRY_MAX: Duration = Duration::from_secs(1);
/// First retry delay after a failed statement.
pub const DEFAULT_ERROR_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Cap of the retry delay after failed statements.
pub const DEFAULT_ERROR_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most ids waiting for their row to appear before the writer stops taking new settlements.
pub const DEFAULT_MAX_WAITING: usize = 100_000;

/// After the channel closed, how long a row that is not visible yet is still retried.
const SHUTDOWN_MISSING_ROW_GRACE: Duration = Duration::from_secs(1);

/// How long the writer may fail to write anything before `/ready` turns 503
/// (`DISPATCHBOX_STATUS_STALL_TIMEOUT`).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The `/ready` component name of the writer's problems.
const HEALTH_COMPONENT: &str = "status writer";

/// One delivery attempt's outcome (or a deferral) for outbox row `id`.
#[derive(Debug)]
pub struct Settlement {
    /// The outbox row.
    pub id: i64,
    /// What happened.
    pub outcome: Outcome,
    /// Settled once the outcome is committed; `None` for rows that did not come from the
    /// stream (the sweeper).
    pub ack: Option<Ack>,
    /// Dropped by the writer once the statement that wrote this row committed, or once the
    /// write was given up (row never appeared, writer stopped). Holders of clones can tell
    /// from [`Arc::strong_count`] whether writes they handed over are still in flight
    /// (e.g. parks of one aggregate).
    pub written: Option<Arc<()>>,
}

/// Tuning of the status writer; see the `DEFAULT_*` constants for defaults.
#[derive(Debug, Clone)]
pub struct StatusWriterConfig {
    /// Most rows per statement.
    pub max_batch: usize,
    /// How long a batch that is not full waits for more settlements (zero: write at once).
    pub linger: Duration,
    /// Capacity of the settlement channel.
    pub channel_capacity: usize,
    /// How long a row that cannot be found is retried before its acks are settled anyway.
    pub missing_row_deadline: Duration,
    /// First retry delay for a row that was not found; doubles up to `missing_row_retry_max`.
    pub missing_row_retry_min: Duration,
    /// Cap of the retry delay for a row that was not found.
    pub missing_row_retry_max: Duration,
    /// First retry delay after a failed statement; doubles up to `error_backoff_max`.
    pub error_backoff_min: Duration,
    /// Cap of the retry delay after failed statements.
    pub error_backoff_max: Duration,
    /// Most ids waiting for their row before new settlements are no longer taken.
    pub max_waiting: usize,
    /// How long statements may keep failing (with errors that are not about one row)
    /// before the writer reports itself stuck: `/ready` 503 with the reason, and
    /// `dispatchbox_status_writer_stalled` 1.
    pub stall_timeout: Duration,
    /// Where the writer reports being stuck.
    pub health: Health,
}

impl Default for StatusWriterConfig {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            linger: DEFAULT_LINGER,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            missing_row_deadline: DEFAULT_MISSING_ROW_DEADLINE,
            missing_row_retry_min: DEFAULT_MISSING_ROW_RETRY_MIN,
            missing_row_retry_max: DEFAULT_MISSING_ROW_RETRY_MAX,
            error_backoff_min: DEFAULT_ERROR_BACKOFF_MIN,
            error_backoff_max: DEFAULT_ERROR_BACKOFF_MAX,
            max_waiting: DEFAULT_MAX_WAITING,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            health: Health::default(),
        }
    }
}

/// Counters of a running status writer (for metrics and tests).
#[derive(Debug, Default)]
pub struct StatusWriterStats {
    rows_written: AtomicU64,
    batches: AtomicU64,
    last_batch_size: AtomicU64,
    rows_abandoned: AtomicU64,
    write_errors: AtomicU64,
    rows_waiting: AtomicU64,
    rows_rejected: AtomicU64,
}

impl StatusWriterStats {
    /// Rows updated so far.
    pub fn rows_written(&self) -> u64 {
        self.rows_written.load(Ordering::Relaxed)
    }

    /// Statements that committed so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Rows in the most recent committed statement.
    pub fn last_batch_size(&self) -> u64 {
        self.last_batch_size.load(Ordering::Relaxed)
    }

    /// Ids settled without a write because their row never appeared.
    pub fn rows_abandoned(&self) -> u64 {
        self.rows_abandoned.load(Ordering::Relaxed)
    }

    /// Statements that failed (and were retried).
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// Rows whose outcome the database rejected (isolated from their batch), written
    /// `dead` instead where possible.
    pub fn rows_rejected(&self) -> u64 {
        self.rows_rejected.load(Ordering::Relaxed)
    }

    /// Ids currently waiting for their row to become visible.
    pub fn rows_waiting(&self) -> u64 {
        self.rows_waiting.load(Ordering::Relaxed)
    }
}

/// Handle to the running status writer task.
#[derive(Debug)]
pub struct StatusWriter {
    task: JoinHandle<()>,
    stats: Arc<StatusWriterStats>,
}

impl StatusWriter {
    /// Starts the writer for `store`'s table. Settlements go into the returned sender; drop
    /// every clone of it to shut the writer down, then [`StatusWriter::join`]: it writes
    /// everything still queued before it returns.
    pub fn spawn(
        store: impl StatusStore,
        config: StatusWriterConfig,
    ) -> (mpsc::Sender<Settlement>, Self) {
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let stats = Arc::new(StatusWriterStats::default());
        let writer = Writer {
            store,
            config,
            stats: stats.clone(),
            stall: Arc::default(),
        };
        let task = tokio::spawn(writer.run(rx));
        (tx, Self { task, stats })
    }

    /// The writer's counters.
    pub fn stats(&self) -> Arc<StatusWriterStats> {
        self.stats.clone()
    }

    /// Waits until the writer has flushed and stopped (after every sender is dropped).
    pub async fn join(self) -> Result<(), JoinError> {
        self.task.await
    }

    /// Stops the writer now (e.g. when the shutdown timeout expires while the database is
    /// down). Safe: unsettled acks hold the flush position back.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// All settlements of one id that are written together; the newest outcome wins.
#[derive(Debug)]
struct Row {
    id: i64,
    outcome: Outcome,
    acks: Vec<Ack>,
    /// Dropped after the write (see [`Settlement::written`]).
    guards: Vec<Arc<()>>,
    /// Delivery attempts this write accounts for.
    attempts: i32,
    /// Set once the row was not found: when that first happened and how often since.
    missing: Option<(Instant, u32)>,
}

impl Row {
    fn new(settlement: Settlement) -> Self {
        Self {
            id: settlement.id,
            attempts: settlement.outcome.attempts(),
            outcome: settlement.outcome,
            acks: settlement.ack.into_iter().collect(),
            guards: settlement.written.into_iter().collect(),
            missing: None,
        }
    }

    fn merge(&mut self, newer: Settlement) {
        self.attempts = self.attempts.saturating_add(newer.outcome.attempts());
        self.outcome = newer.outcome;
        self.acks.extend(newer.ack);
        self.guards.extend(newer.written);
    }

    /// Settles the acks; the write guards go with `self`, after the acks.
    fn settle(self) {
        for ack in self.acks {
            ack.settle();
        }
    }
}

/// A row that was not found, waiting for its next try.
#[derive(Debug)]
struct Waiting {
    row: Row,
    next_try: Instant,
}

/// What became of a batch's rows (see [`Writer::write`]).
#[derive(Debug, Default)]
struct Written {
    /// Rows updated (with their outcome, or `dead` after a rejection).
    ids: HashSet<i64>,
    /// Rows whose outcome and `dead` were both rejected: settled without a write.
    given_up: HashSet<i64>,
}

/// What the status writer needs from the database. [`Store`] is the real one; the unit
/// tests use an in-memory table, so the writer's decisions (batching, splitting a rejected
/// batch, waiting for rows that are not visible yet, backing off) are tested without a
/// server.
///
/// Contract of both methods: an `Err` that [`StoreError::is_about_a_row`] means the
/// database refused the data of some row and nothing was written; any other `Err` means
/// nothing was written and the same call may succeed later.
pub trait StatusStore: Send + Sync + 'static {
    /// Writes each `(id, outcome, attempts)` (distinct ids) in one transaction; returns
    /// the ids written, plus deferred rows that had already moved on. An id not returned
    /// has no visible row.
    fn write_outcomes(
        &self,
        rows: &[(i64, &Outcome, i32)],
    ) -> impl std::future::Future<Output = Result<HashSet<i64>, StoreError>> + Send;

    /// Writes row `id` `dead` with `reason`, adding `attempts`; `Ok(false)` when there is
    /// no such row.
    fn write_dead(
        &self,
        id: i64,
        reason: &str,
        attempts: i32,
    ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send;
}

impl StatusStore for Store {
    async fn write_outcomes(
        &self,
        rows: &[(i64, &Outcome, i32)],
    ) -> Result<HashSet<i64>, StoreError> {
        self.write_stream_outcomes(rows).await
    }

    async fn write_dead(&self, id: i64, reason: &str, attempts: i32) -> Result<bool, StoreError> {
        self.write_rejected_dead(id, reason, attempts).await
    }
}

struct Writer<S> {
    store: S,
    config: StatusWriterConfig,
    stats: Arc<StatusWriterStats>,
    stall: Arc<StallWatch>,
}

impl<S: StatusStore> Writer<S> {
    async fn run(self, rx: mpsc::Receiver<Settlement>) {
        let watchdog = tokio::spawn(watch_for_stalls(
            Arc::downgrade(&self.stall),
            self.config.stall_timeout,
            self.config.health.clone(),
        ));
        self.receive(rx).await;
        watchdog.abort();
        self.stall.idle();
        self.stall
            .check(self.config.stall_timeout, &self.config.health);
    }

    async fn receive(&self, mut rx: mpsc::Receiver<Settlement>) {
        let max_batch = self.config.max_batch.max(1);
        let mut inbox = Vec::with_capacity(max_batch);
        let mut waiting: HashMap<i64, Waiting> = HashMap::new();
        let mut open = true;
        loop {
            let next_try = waiting.values().map(|w| w.next_try).min();
            if open {
                // With nothing waiting there is always room, whatever `max_waiting` says:
                // otherwise no branch could ever wake this loop.
                let accept = waiting.is_empty() || waiting.len() < self.config.max_waiting;
                tokio::select! {
                    biased;
                    n = rx.recv_many(&mut inbox, max_batch), if accept => {
                        if n == 0 {
                            open = false;
                        } else {
                            open = linger(&mut rx, &mut inbox, max_batch, self.config.linger).await;
                        }
                    }
                    () = sleep_until(next_try) => {}
                }
            } else if next_try.is_some() {
                sleep_until(next_try).await;
            }
            let batch = collect(&mut inbox, &mut waiting, Instant::now());
            if batch.is_empty() {
                if open {
                    continue;
                }
                break;
            }
            let written = self.write(&batch).await;
            self.settle(batch, &written, &mut waiting, open);
        }
    }

    /// Writes `batch`: returns the ids whose rows were written (their outcome, or `dead`
    /// when the database rejected the outcome) and those given up (rejected, and not even
    /// `dead` could be written).
    ///
    /// A statement that fails because of the data of a row (see
    /// [`StoreError::is_about_a_row`]) is split in halves until the row is alone; the other
    /// rows are written, and the lone row goes to [`Writer::write_rejected`]: at most about
    /// 2·log2(batch) extra statements. Every other failure (connection lost, table gone,
    /// permission denied …) retries the same rows with capped backoff until it passes;
    /// after `stall_timeout` of that the writer reports itself stuck.
    async fn write(&self, batch: &[Row]) -> Written {
        let mut written = Written::default();
        let mut parts: Vec<&[Row]> = vec![batch];
        let mut retry = Retry::new(Backoff {
            base: self.config.error_backoff_min,
            max: self.config.error_backoff_max,
        });
        self.stall.begin();
        while let Some(part) = parts.pop() {
            let error = match self.execute(part).await {
                Ok(ids) => {
                    written.ids.extend(ids);
                    self.stall.progressed();
                    retry.reset();
                    continue;
                }
                Err(error) => error,
            };
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            self.stall.failed(&error);
            if error.is_about_a_row() {
                match part {
                    [row] => match self.write_rejected(row, &error).await {
                        Ok(Some(true)) => {
                            written.ids.insert(row.id);
                        }
                        // Gone meanwhile: the usual not-found handling.
                        Ok(Some(false)) => {}
                        Ok(None) => {
                            written.given_up.insert(row.id);
                        }
                        Err(failed) => {
                            let delay = retry.next_delay();
                            tracing::warn!(error = %failed, event_id = row.id, retry_in = ?delay, "writing a rejected row as dead failed; retrying");
                            tokio::time::sleep(delay).await;
                            parts.push(part);
                        }
                    },
                    _ => {
                        tracing::warn!(error = %error, rows = part.len(), "status update rejected by the database; splitting the batch to isolate the row it cannot write");
                        let (first, second) = part.split_at(part.len() / 2);
                        parts.push(second);
                        parts.push(first);
                    }
                }
                continue;
            }
            let delay = retry.next_delay();
            if error.is_transient() {
                tracing::warn!(error = %error, rows = part.len(), retry_in = ?delay, "status update failed; retrying");
            } else {
                tracing::error!(
                    error = %error,
                    rows = part.len(),
                    retry_in = ?delay,
                    "status update failed and will keep failing until the database \
                     or the outbox table is fixed; retrying"
                );
            }
            tokio::time::sleep(delay).await;
            parts.push(part);
        }
        self.stall.idle();
        written
    }

    /// One statement for `rows`; returns the ids it wrote.
    async fn execute(&self, rows: &[Row]) -> Result<HashSet<i64>, StoreError> {
        let outcomes: Vec<(i64, &Outcome, i32)> = rows
            .iter()
            .map(|r| (r.id, &r.outcome, r.attempts))
            .collect();
        let ids = self.store.write_outcomes(&outcomes).await?;
        metrics::status_write_batch(rows.len());
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .rows_written
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        self.stats
            .last_batch_size
            .store(rows.len() as u64, Ordering::Relaxed);
        Ok(ids)
    }

    /// The database rejected `row`'s outcome (`cause`): writes the row `dead` with the
    /// reason instead, so that an operator sees it and the flush position moves on.
    /// `Some(true)`: written dead; `Some(false)`: the row does not exist (any more);
    /// `None`: rejected too, given up (the row keeps its status and the sweeper meets it
    /// again, the `dispatchbox_status_rows_rejected_total{written="none"}` counter says
    /// so); `Err`: a failure worth retrying.
    async fn write_rejected(
        &self,
        row: &Row,
        cause: &StoreError,
    ) -> Result<Option<bool>, StoreError> {
        self.stats.rows_rejected.fetch_add(1, Ordering::Relaxed);
        let delivered = match row.outcome {
            Outcome::Done => "it was delivered",
            Outcome::Deferred { .. } => "it was not delivered yet",
            Outcome::Retry { .. } | Outcome::Dead { .. } => "its delivery failed",
        };
        let reason = format!(
            "dispatchbox could not write this row's status ({}; {delivered}): {cause}",
            row.outcome.status()
        );
        let result = self.store.write_dead(row.id, &reason, row.attempts).await;
        match result {
            Ok(found) => {
                self.stall.progressed();
                if found {
                    StatusRowRejected {
                        event_id: row.id,
                        status: row.outcome.status(),
                        cause,
                        dead_refused: None,
                    }
                    .emit();
                }
                Ok(Some(found))
            }
            Err(error) if error.is_about_a_row() => {
                StatusRowRejected {
                    event_id: row.id,
                    status: row.outcome.status(),
                    cause,
                    dead_refused: Some(&error),
                }
                .emit();
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Settles written rows; parks the others for another try, or settles them once they
    /// are past the deadline.
    fn settle(
        &self,
        batch: Vec<Row>,
        written: &Written,
        waiting: &mut HashMap<i64, Waiting>,
        open: bool,
    ) {
        let now = Instant::now();
        for mut row in batch {
            if written.ids.contains(&row.id) || written.given_up.contains(&row.id) {
                row.settle();
                continue;
            }
            let (first_missed, misses) = row.missing.unwrap_or((now, 0));
            if now.duration_since(first_missed) >= self.config.missing_row_deadline {
                tracing::warn!(
                    event_id = row.id,
                    status = row.outcome.status(),
                    waited = ?now.duration_since(first_missed),
                    "outbox row no longer exists; settling the event without a status write"
                );
                self.stats.rows_abandoned.fetch_add(1, Ordering::Relaxed);
                row.settle();
                continue;
            }
            if !open && now.duration_since(first_missed) >= SHUTDOWN_MISSING_ROW_GRACE {
                // Shutting down and still invisible: leave it unsettled (dropping an ack is
                // safe); the event is streamed again after a restart.
                tracing::warn!(
                    event_id = row.id,
                    "status writer stopped before the outbox row became visible; the event \
                     stays unconfirmed and is delivered again after a restart"
                );
                continue;
            }
            let misses = misses.saturating_add(1);
            // No jitter: the row becomes visible at one moment for everyone.
            let delay = Backoff {
                base: self.config.missing_row_retry_min,
                max: self.config.missing_row_retry_max,
            }
            .ceiling(misses);
            row.missing = Some((first_missed, misses));
            tracing::debug!(event_id = row.id, retry_in = ?delay, "outbox row not visible yet");
            waiting.insert(
                row.id,
                Waiting {
                    row,
                    next_try: now + delay,
                },
            );
        }
        self.stats
            .rows_waiting
            .store(waiting.len() as u64, Ordering::Relaxed);
    }
}

/// Whether the writer makes progress: it has rows to write and since when it committed
/// nothing. Updated by the writer, judged by [`watch_for_stalls`], so that a statement
/// that blocks (a lock held by another session) is noticed as well as one that fails.
#[derive(Debug, Default)]
struct StallWatch {
    state: std::sync::Mutex<StallState>,
}

#[derive(Debug, Default)]
struct StallState {
    /// Since when rows have been waiting for a statement that commits.
    waiting_since: Option<Instant>,
    /// The latest failure meanwhile.
    last_error: Option<String>,
    /// Whether the stall is reported (`/ready`, the gauge).
    reported: bool,
}

impl StallWatch {
    fn state(&self) -> std::sync::MutexGuard<'_, StallState> {
        // A poisoned lock only means a panic mid-update; the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer has rows to write.
    fn begin(&self) {
        self.state().waiting_since.get_or_insert_with(Instant::now);
    }

    /// A statement committed.
    fn progressed(&self) {
        let mut state = self.state();
        state.waiting_since = Some(Instant::now());
        state.last_error = None;
    }

    fn failed(&self, error: &StoreError) {
        self.state().last_error = Some(error.to_string());
    }

    /// Nothing left to write.
    fn idle(&self) {
        let mut state = self.state();
        state.waiting_since = None;
        state.last_error = None;
    }

    /// Reports a stall longer than `timeout`, or clears a reported one.
    fn check(&self, timeout: Duration, health: &Health) {
        let mut state = self.state();
        let stalled_for = state
            .waiting_since
            .map(|since| since.elapsed())
            .filter(|waited| *waited >= timeout);
        match stalled_for {
            Some(waited) => {
                let reason = format!(
                    "nothing written for {}s: {}",
                    waited.as_secs(),
                    state.last_error.as_deref().unwrap_or(
                        "a status UPDATE has not returned (waiting for a lock held by another \
                         session?)"
                    )
                );
                if !state.reported {
                    StatusWriterStall::Stuck { reason: &reason }.emit();
                    state.reported = true;
                }
                health.set_problem(HEALTH_COMPONENT, Some(reason));
            }
            None if state.reported => {
                StatusWriterStall::Writing.emit();
                health.set_problem(HEALTH_COMPONENT, None);
                state.reported = false;
            }
            None => {}
        }
    }
}

/// Checks the writer's progress a few times per `timeout` until the writer is gone.
async fn watch_for_stalls(watch: std::sync::Weak<StallWatch>, timeout: Duration, health: Health) {
    let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let Some(watch) = watch.upgrade() else {
            return;
        };
        watch.check(timeout, &health);
    }
}

/// Builds the next batch: queued settlements (merged per id, newest outcome last) plus
/// waiting rows that are due.
fn collect(
    inbox: &mut Vec<Settlement>,
    waiting: &mut HashMap<i64, Waiting>,
    now: Instant,
) -> Vec<Row> {
    let mut batch: Vec<Row> = Vec::with_capacity(inbox.len());
    let mut index: HashMap<i64, usize> = HashMap::with_capacity(inbox.len());
    for settlement in inbox.drain(..) {
        if let Some(&i) = index.get(&settlement.id) {
            if let Some(row) = batch.get_mut(i) {
                row.merge(settlement);
            }
            continue;
        }
        // A newer settlement for a waiting id joins it, so the older outcome can never be
        // written after the newer one.
        let row = match waiting.remove(&settlement.id) {
            Some(mut w) => {
                w.row.merge(settlement);
                w.row
            }
            None => Row::new(settlement),
        };
        index.insert(row.id, batch.len());
        batch.push(row);
    }
    let due: Vec<i64> = waiting
        .iter()
        .filter(|(_, w)| w.next_try <= now)
        .map(|(&id, _)| id)
        .collect();
    for id in due {
        if let Some(w) = waiting.remove(&id) {
            batch.push(w.row);
        }
    }
    batch
}

/// After the first settlements of a batch arrived: waits up to `linger` for more, until
/// `inbox` holds `max_batch`. Returns false when the channel closed meanwhile (every
/// sender dropped: shutdown, so the batch is written at once).
async fn linger(
    rx: &mut mpsc::Receiver<Settlement>,
    inbox: &mut Vec<Settlement>,
    max_batch: usize,
    linger: Duration,
) -> bool {
    if linger.is_zero() {
        return true;
    }
    let deadline = Instant::now() + linger;
    while inbox.len() < max_batch {
        tokio::select! {
            biased;
            n = rx.recv_many(inbox, max_batch - inbox.len()) => {
                if n == 0 {
                    return false;
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    true
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
