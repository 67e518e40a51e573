//! The status writer: the only code that writes delivery outcomes onto outbox rows, and
//! the only caller of [`Ack::settle`].
//!
//! Settlements arrive on a bounded channel. The writer takes whatever is queued (up to
//! `max_batch`, never waiting to fill a batch) and writes it with one prepared
//! `UPDATE … FROM unnest(…) RETURNING id`. An ack is settled only after the statement
//! that wrote its row has committed; that is what lets the flush LSN move past the event.
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

use super::{Store, StoreError};
use crate::replication::progress::Ack;

/// Most rows written by one statement (`DISPATCHBOX_STATUS_BATCH_MAX`).
pub const DEFAULT_MAX_BATCH: usize = 1000;
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

/// The result of delivering one event.
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
}

impl Outcome {
    /// The `status` column value.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Retry { .. } => "retry",
            Self::Dead { .. } => "dead",
        }
    }

    fn error(&self) -> Option<String> {
        match self {
            Self::Done => None,
            Self::Retry { error, .. } | Self::Dead { error } => Some(sanitize_error(error)),
        }
    }

    fn next_run_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Retry { next_run_at, .. } => Some(*next_run_at),
            Self::Done | Self::Dead { .. } => None,
        }
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

/// One delivery attempt's outcome for outbox row `id`.
#[derive(Debug)]
pub struct Settlement {
    /// The outbox row.
    pub id: i64,
    /// What happened.
    pub outcome: Outcome,
    /// Settled once the outcome is committed; `None` for rows that did not come from the
    /// stream (the sweeper).
    pub ack: Option<Ack>,
}

/// Tuning of the status writer; see the `DEFAULT_*` constants for defaults.
#[derive(Debug, Clone)]
pub struct StatusWriterConfig {
    /// Most rows per statement.
    pub max_batch: usize,
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
            sql: update_statement(&store),
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

fn update_statement(store: &Store) -> String {
    format!(
        "UPDATE {table} AS t
            SET status = u.status,
                attempts = t.attempts + u.attempts,
                delivered_at = CASE WHEN u.status = 'done' THEN now() ELSE t.delivered_at END,
                last_error = COALESCE(u.error, t.last_error),
                last_error_at = CASE WHEN u.error IS NULL THEN t.last_error_at ELSE now() END,
                next_run_at = COALESCE(u.next_run_at, t.next_run_at),
                claim_token = NULL
           FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::int[])
                AS u(id, status, error, next_run_at, attempts)
          WHERE t.id = u.id
      RETURNING t.id",
        table = store.table().quoted()
    )
}

/// All settlements of one id that are written together; the newest outcome wins.
#[derive(Debug)]
struct Row {
    id: i64,
    outcome: Outcome,
    acks: Vec<Ack>,
    /// Delivery attempts this write accounts for.
    attempts: i32,
    /// Set once the row was not found: when that first happened and the current delay.
    missing: Option<(Instant, Duration)>,
}

impl Row {
    fn new(settlement: Settlement) -> Self {
        Self {
            id: settlement.id,
            outcome: settlement.outcome,
            acks: settlement.ack.into_iter().collect(),
            attempts: 1,
            missing: None,
        }
    }

    fn merge(&mut self, newer: Settlement) {
        self.outcome = newer.outcome;
        self.acks.extend(newer.ack);
        self.attempts = self.attempts.saturating_add(1);
    }

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
    sql: String,
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
        let mut rows: Vec<&Row> = batch.iter().collect();
        // A stable lock order makes deadlocks with other writers of the same rows rarer.
        rows.sort_unstable_by_key(|r| r.id);
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let statuses: Vec<&str> = rows.iter().map(|r| r.outcome.status()).collect();
        let errors: Vec<Option<String>> = rows.iter().map(|r| r.outcome.error()).collect();
        let next_run_ats: Vec<Option<DateTime<Utc>>> =
            rows.iter().map(|r| r.outcome.next_run_at()).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();

        let mut backoff = self.config.error_backoff_min;
        loop {
            let result: Result<HashSet<i64>, StoreError> = async {
                let client = self.store.client("status update").await?;
                let statement = client
                    .prepare_cached(&self.sql)
                    .await
                    .map_err(|e| StoreError::db("status update", e))?;
                let updated = client
                    .query(
                        &statement,
                        &[&ids, &statuses, &errors, &next_run_ats, &attempts],
                    )
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
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .rows_written
                        .fetch_add(written.len() as u64, Ordering::Relaxed);
                    self.stats
                        .last_batch_size
                        .store(ids.len() as u64, Ordering::Relaxed);
                    return written;
                }
                Err(err) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    if err.is_transient() {
                        tracing::warn!(error = %err, rows = ids.len(), retry_in = ?backoff, "status update failed; retrying");
                    } else {
                        tracing::error!(
                            error = %err,
                            rows = ids.len(),
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
        Settlement { id, outcome, ack }
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
    fn errors_are_storable_text() {
        assert_eq!(sanitize_error("a\0b"), "ab");
        let long = "é".repeat(MAX_ERROR_BYTES);
        let cut = sanitize_error(&long);
        assert!(cut.len() <= MAX_ERROR_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
