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

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use tokio_postgres::types::ToSql;

use super::{Store, StoreError, TableName};
use crate::replication::progress::Ack;

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

/// Longest `last_error` stored; longer messages are cut (at a character boundary).
const MAX_ERROR_BYTES: usize = 4096;

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
    pub(super) fn attempts(&self) -> i32 {
        match self {
            Self::Done | Self::Retry { .. } | Self::Dead { .. } => 1,
            Self::Deferred { .. } => 0,
        }
    }

    fn error(&self) -> Option<String> {
        match self {
            Self::Done | Self::Deferred { .. } => None,
            Self::Retry { error, .. } | Self::Dead { error } => Some(sanitize_error(error)),
        }
    }

    fn next_run_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Retry { next_run_at, .. } | Self::Deferred { next_run_at } => Some(*next_run_at),
            Self::Done | Self::Dead { .. } => None,
        }
    }

    fn is_deferred(&self) -> bool {
        matches!(self, Self::Deferred { .. })
    }
}

/// PostgreSQL text cannot hold NUL, and an unbounded sink error would bloat the row.
fn sanitize_error(error: &str) -> String {
    let mut text: String = error.chars().filter(|&c| c != '\0').collect();
    if text.len() > MAX_ERROR_BYTES {
        let mut cut = MAX_ERROR_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

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
    pub fn spawn(store: Store, config: StatusWriterConfig) -> (mpsc::Sender<Settlement>, Self) {
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let stats = Arc::new(StatusWriterStats::default());
        let writer = Writer {
            sql: outcome_update_sql(store.table(), UpdateGuard::Stream),
            done_sql: done_update_sql(store.table()),
            store,
            config,
            stats: stats.clone(),
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

/// Which rows an outcome UPDATE may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpdateGuard {
    /// Outcomes of streamed events (the status writer): any existing row, except that a
    /// deferral applies only to a row still `pending`. Returns the updated ids plus the ids
    /// of deferred rows that exist but are no longer pending (nothing to write: settled).
    Stream,
    /// Outcomes of rows a sweeper claimed: only rows still `processing` under the claim
    /// token in `$7`, so a sweeper whose lease expired and was reclaimed by another cannot
    /// overwrite the newer claim. Returns the updated ids.
    Claimed,
}

/// The one outcome UPDATE, shared by the status writer and the sweeper. Parameters are the
/// [`OutcomeColumns`] arrays, plus the claim token for [`UpdateGuard::Claimed`].
///
/// `attempts` is added, not set, so a deferral (0) leaves the count alone and merged
/// settlements count every attempt. `last_error`/`last_error_at` change only with an
/// error, `delivered_at` only on `done`; `claim_token` is always released.
pub(super) fn outcome_update_sql(table: &TableName, guard: UpdateGuard) -> String {
    let table = table.quoted();
    let (condition, not_pending_deferrals) = match guard {
        // A deferral must never pull back a row that moved on; the second SELECT reports
        // such rows as handled. It reads the statement's snapshot: a row that was pending
        // there but changed concurrently is in neither list and is simply retried.
        UpdateGuard::Stream => (
            "(NOT u.deferred OR t.status = 'pending')",
            format!(
                "
          UNION ALL
         SELECT t.id FROM {table} AS t JOIN u ON t.id = u.id
          WHERE u.deferred AND t.status <> 'pending'"
            ),
        ),
        UpdateGuard::Claimed => (
            "t.claim_token = $7 AND t.status = 'processing'",
            String::new(),
        ),
    };
    format!(
        "WITH u AS (
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[],
                                  $5::int[], $6::bool[])
                 AS u(id, status, error, next_run_at, attempts, deferred)
         ), written AS (
             UPDATE {table} AS t
                SET status = u.status,
                    attempts = t.attempts + u.attempts,
                    delivered_at = CASE WHEN u.status = 'done' THEN now() ELSE t.delivered_at END,
                    last_error = COALESCE(u.error, t.last_error),
                    last_error_at = CASE WHEN u.error IS NULL THEN t.last_error_at ELSE now() END,
                    next_run_at = COALESCE(u.next_run_at, t.next_run_at),
                    claim_token = NULL
               FROM u
              WHERE t.id = u.id AND {condition}
          RETURNING t.id
         )
         SELECT id FROM written{not_pending_deferrals}"
    )
}

/// The fast path of the status writer for a batch whose every row is `done` after one
/// attempt: the same effect as [`outcome_update_sql`] with [`UpdateGuard::Stream`] for such
/// rows, as one index lookup per id (no join, no parameter arrays to unnest). `$1` holds
/// the ids.
pub(super) fn done_update_sql(table: &TableName) -> String {
    format!(
        "UPDATE {} SET status = 'done', attempts = attempts + 1, delivered_at = now(),
                claim_token = NULL
          WHERE id = ANY($1::bigint[])
      RETURNING id",
        table.quoted()
    )
}

/// The parameter arrays of [`outcome_update_sql`], one entry per row, sorted by id: a
/// stable lock order makes deadlocks with other writers of the same rows rarer.
#[derive(Debug, Default)]
pub(super) struct OutcomeColumns {
    ids: Vec<i64>,
    statuses: Vec<&'static str>,
    errors: Vec<Option<String>>,
    next_run_ats: Vec<Option<DateTime<Utc>>>,
    attempts: Vec<i32>,
    deferred: Vec<bool>,
}

impl OutcomeColumns {
    /// Columns for `(id, outcome, attempts)` rows; ids must be distinct.
    pub(super) fn new<'a>(rows: impl IntoIterator<Item = (i64, &'a Outcome, i32)>) -> Self {
        let mut rows: Vec<_> = rows.into_iter().collect();
        rows.sort_unstable_by_key(|&(id, _, _)| id);
        let mut columns = Self::default();
        for (id, outcome, attempts) in rows {
            columns.ids.push(id);
            columns.statuses.push(outcome.status());
            columns.errors.push(outcome.error());
            columns.next_run_ats.push(outcome.next_run_at());
            columns.attempts.push(attempts);
            columns.deferred.push(outcome.is_deferred());
        }
        columns
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// `$1`..`$6`.
    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.ids,
            &self.statuses,
            &self.errors,
            &self.next_run_ats,
            &self.attempts,
            &self.deferred,
        ]
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
    /// Set once the row was not found: when that first happened and the current delay.
    missing: Option<(Instant, Duration)>,
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

#[derive(Debug)]
struct Writer {
    store: Store,
    /// The general outcome UPDATE.
    sql: String,
    /// The fast path when every row is `done` after one attempt.
    done_sql: String,
    config: StatusWriterConfig,
    stats: Arc<StatusWriterStats>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Settlement>) {
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

    /// Writes `batch` and returns the ids the statement updated. Retries failed statements
    /// until one commits.
    async fn write(&self, batch: &[Row]) -> HashSet<i64> {
        // `collect` merged settlements per id, so ids are distinct.
        let columns = OutcomeColumns::new(batch.iter().map(|r| (r.id, &r.outcome, r.attempts)));
        let only_done = batch
            .iter()
            .all(|r| r.outcome == Outcome::Done && r.attempts == 1);

        let mut backoff = self.config.error_backoff_min;
        loop {
            let result: Result<HashSet<i64>, StoreError> = async {
                let client = self.store.client("status update").await?;
                let sql = if only_done { &self.done_sql } else { &self.sql };
                let statement = client
                    .prepare_cached(sql)
                    .await
                    .map_err(|e| StoreError::db("status update", e))?;
                let params = columns.params();
                let params = if only_done { &params[..1] } else { &params[..] };
                let updated = client
                    .query(&statement, params)
                    .await
                    .map_err(|e| StoreError::db("status update", e))?;
                updated
                    .iter()
                    .map(|r| r.try_get::<_, i64>(0))
                    .collect::<Result<_, _>>()
                    .map_err(|e| StoreError::db("status update", e))
            }
            .await;
            match result {
                Ok(written) => {
                    crate::telemetry::metrics::status_write_batch(columns.len());
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .rows_written
                        .fetch_add(written.len() as u64, Ordering::Relaxed);
                    self.stats
                        .last_batch_size
                        .store(columns.len() as u64, Ordering::Relaxed);
                    return written;
                }
                Err(err) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    if err.is_transient() {
                        tracing::warn!(error = %err, rows = columns.len(), retry_in = ?backoff, "status update failed; retrying");
                    } else {
                        tracing::error!(
                            error = %err,
                            rows = columns.len(),
                            retry_in = ?backoff,
                            "status update failed and will keep failing until the database \
                             or the outbox table is fixed; retrying"
                        );
                    }
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(self.config.error_backoff_max);
                }
            }
        }
    }

    /// Settles written rows; parks the others for another try, or settles them once they
    /// are past the deadline.
    fn settle(
        &self,
        batch: Vec<Row>,
        written: &HashSet<i64>,
        waiting: &mut HashMap<i64, Waiting>,
        open: bool,
    ) {
        let now = Instant::now();
        for mut row in batch {
            if written.contains(&row.id) {
                row.settle();
                continue;
            }
            let (first_missed, delay) = row
                .missing
                .unwrap_or((now, self.config.missing_row_retry_min));
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
            let next_delay = (delay * 2).min(self.config.missing_row_retry_max);
            row.missing = Some((first_missed, next_delay));
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

/// Half fixed, half random: spreads reconnect attempts of several writers apart.
fn jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::replication::lsn::Lsn;
    use crate::replication::progress::Progress;

    fn settlement(id: i64, outcome: Outcome, ack: Option<Ack>) -> Settlement {
        Settlement {
            id,
            outcome,
            ack,
            written: None,
        }
    }

    #[test]
    fn duplicates_merge_newest_outcome_and_keep_every_ack() {
        let progress = Progress::new(Lsn(0));
        let t = progress.begin(Lsn(1)).unwrap();
        let a1 = progress.event(t);
        let a2 = progress.event(t);
        progress.commit(t, Lsn(2));
        let mut inbox = vec![
            settlement(7, Outcome::Dead { error: "x".into() }, Some(a1)),
            settlement(8, Outcome::Done, None),
            settlement(7, Outcome::Done, Some(a2)),
        ];
        let mut waiting = HashMap::new();
        let batch = collect(&mut inbox, &mut waiting, Instant::now());
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].outcome, Outcome::Done);
        assert_eq!(batch[0].attempts, 2);
        for row in batch {
            row.settle();
        }
        assert_eq!(progress.feedback().flush, Lsn(2));
    }

    #[test]
    fn new_settlement_joins_a_waiting_row() {
        let now = Instant::now();
        let mut waiting = HashMap::new();
        let mut row = Row::new(settlement(
            5,
            Outcome::Dead {
                error: "old".into(),
            },
            None,
        ));
        row.missing = Some((now, Duration::from_millis(20)));
        waiting.insert(
            5,
            Waiting {
                row,
                next_try: now + Duration::from_secs(10),
            },
        );
        let mut inbox = vec![settlement(5, Outcome::Done, None)];
        let batch = collect(&mut inbox, &mut waiting, now);
        assert!(waiting.is_empty());
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].outcome, Outcome::Done);
        assert!(batch[0].missing.is_some(), "keeps its deadline");
    }

    #[test]
    fn deferrals_count_no_attempt_and_guards_live_until_settled() {
        let guard = Arc::new(());
        let deferred = || Outcome::Deferred {
            next_run_at: Utc::now(),
        };
        let mut inbox = vec![
            Settlement {
                id: 1,
                outcome: deferred(),
                ack: None,
                written: Some(guard.clone()),
            },
            Settlement {
                id: 2,
                outcome: deferred(),
                ack: None,
                written: Some(guard.clone()),
            },
            settlement(
                2,
                Outcome::Retry {
                    error: "x".into(),
                    next_run_at: Utc::now(),
                },
                None,
            ),
        ];
        let batch = collect(&mut inbox, &mut HashMap::new(), Instant::now());
        assert_eq!(batch[0].attempts, 0);
        assert_eq!(batch[1].attempts, 1);
        assert_eq!(Arc::strong_count(&guard), 3);
        let columns = OutcomeColumns::new(batch.iter().map(|r| (r.id, &r.outcome, r.attempts)));
        assert_eq!(columns.deferred, vec![true, false]);
        assert_eq!(columns.statuses, vec!["retry", "retry"]);
        for row in batch {
            row.settle();
        }
        assert_eq!(Arc::strong_count(&guard), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn linger_waits_for_more_until_the_batch_is_full_or_the_time_is_up() {
        let (tx, mut rx) = mpsc::channel(100);
        let sender = tokio::spawn(async move {
            for id in 0..10 {
                tx.send(settlement(id, Outcome::Done, None)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut inbox = Vec::new();
        assert_eq!(rx.recv_many(&mut inbox, 100).await, 1);

        // Full (five rows) after 40 ms: written before the 100 ms are up.
        let started = Instant::now();
        assert!(linger(&mut rx, &mut inbox, 5, Duration::from_millis(100)).await);
        assert_eq!(inbox.len(), 5);
        assert_eq!(started.elapsed(), Duration::from_millis(40));

        // Not full: written when the linger is up, with what arrived meanwhile.
        inbox.clear();
        let started = Instant::now();
        assert!(linger(&mut rx, &mut inbox, 100, Duration::from_millis(25)).await);
        assert_eq!(started.elapsed(), Duration::from_millis(25));
        assert_eq!(inbox.len(), 2, "rows 5 and 6 arrived within the 25 ms");

        // No linger: at once.
        inbox.clear();
        let started = Instant::now();
        assert!(linger(&mut rx, &mut inbox, 100, Duration::ZERO).await);
        assert_eq!(started.elapsed(), Duration::ZERO);

        // Every sender gone: the batch goes out at once and the writer learns it.
        sender.await.unwrap();
        let started = Instant::now();
        assert!(!linger(&mut rx, &mut inbox, 100, Duration::from_secs(1)).await);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn errors_are_storable_text() {
        assert_eq!(sanitize_error("a\0b"), "ab");
        let long = "é".repeat(MAX_ERROR_BYTES);
        let cut = sanitize_error(&long);
        assert!(cut.len() <= MAX_ERROR_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
