//! An in-memory [`StatusStore`] for the status writer's unit tests: an outbox table (id →
//! status, attempts, last error) plus knobs for what a real database does to the writer
//! (rows that become visible late, data it rejects, statements that fail or block), and a
//! log of every call with its (tokio) time, so tests with paused time can assert what was
//! tried when.
//!
//! It keeps [`StatusStore`]'s contract: a failed call writes nothing; an error about a row
//! is one for which [`StoreError::is_about_a_row`] is true; ids not returned have no
//! visible row.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::time::Instant;

use super::StatusStore;
use crate::event::Outcome;
use crate::store::StoreError;

/// SQLSTATE of the transient failures: connection failure.
const TRANSIENT: &str = "08006";
/// SQLSTATE of a rejected row: check violation.
const REJECTED: &str = "23514";

/// One row of the in-memory outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MemoryRow {
    /// `pending`, `done`, `retry` or `dead`.
    pub status: &'static str,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// Which method was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    WriteOutcomes,
    WriteDead,
}

/// One call of the writer, as it arrived.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub method: Method,
    pub at: Instant,
    pub ids: Vec<i64>,
    /// Whether it returned `Ok`.
    pub ok: bool,
}

#[derive(Debug, Default)]
struct Table {
    rows: HashMap<i64, MemoryRow>,
    /// Rows inserted by a transaction that becomes visible at this time.
    visible_from: HashMap<i64, Instant>,
    /// Rows whose outcome the database refuses (a trigger, a constraint).
    rejected: HashSet<i64>,
    /// Rows that cannot even be written `dead`.
    dead_rejected: HashSet<i64>,
    /// Calls that fail transiently before the next one passes.
    transient_failures: u32,
    /// Every call fails transiently while set.
    failing: bool,
    calls: Vec<Call>,
}

impl Table {
    fn visible(&self, id: i64, now: Instant) -> Option<&MemoryRow> {
        let visible = self.visible_from.get(&id).is_none_or(|&from| from <= now);
        self.rows.get(&id).filter(|_| visible)
    }

    /// A transient failure, if one is due now.
    fn transient_failure(&mut self) -> Option<StoreError> {
        if self.failing || self.transient_failures > 0 {
            self.transient_failures = self.transient_failures.saturating_sub(1);
            return Some(StoreError::simulated("status update", TRANSIENT));
        }
        None
    }
}

/// The in-memory outbox. Cheap to clone; clones share the table.
#[derive(Debug, Clone)]
pub(super) struct MemoryStatusStore {
    table: Arc<Mutex<Table>>,
    /// `true` while every call waits (a lock held by another session).
    blocked: Arc<watch::Sender<bool>>,
}

impl MemoryStatusStore {
    /// A table with visible `pending` rows `ids`.
    pub fn with_rows(ids: impl IntoIterator<Item = i64>) -> Self {
        let store = Self {
            table: Arc::default(),
            blocked: Arc::new(watch::Sender::new(false)),
        };
        for id in ids {
            store.insert(id);
        }
        store
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, id: i64) {
        self.table().rows.insert(
            id,
            MemoryRow {
                status: "pending",
                attempts: 0,
                last_error: None,
            },
        );
    }

    /// Row `id` exists, but other sessions see it only from `at` on.
    pub fn appear_at(&self, id: i64, at: Instant) {
        self.insert(id);
        self.table().visible_from.insert(id, at);
    }

    /// Statements that would write row `id`'s outcome fail, because of that row.
    pub fn reject_outcome(&self, id: i64) {
        self.table().rejected.insert(id);
    }

    /// Writing row `id` `dead` fails too, because of that row.
    pub fn reject_dead(&self, id: i64) {
        self.table().dead_rejected.insert(id);
    }

    /// The next `n` calls fail transiently.
    pub fn fail_transiently(&self, n: u32) {
        self.table().transient_failures = n;
    }

    /// Every call fails transiently from now on (`true`) or no longer (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.table().failing = failing;
    }

    /// Every call waits from now on (`true`), or the waiting calls go on (`false`).
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.send_replace(blocked);
    }

    /// Row `id` as it is now (visible or not).
    pub fn row(&self, id: i64) -> Option<MemoryRow> {
        self.table().rows.get(&id).cloned()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.table().calls.clone()
    }

    /// When `write_outcomes` calls that included row `id` arrived.
    pub fn outcome_tries(&self, id: i64) -> Vec<Instant> {
        self.table()
            .calls
            .iter()
            .filter(|c| c.method == Method::WriteOutcomes && c.ids.contains(&id))
            .map(|c| c.at)
            .collect()
    }

    async fn unblocked(&self) {
        let mut blocked = self.blocked.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = blocked.wait_for(|blocked| !blocked).await;
    }

    fn record(&self, method: Method, at: Instant, ids: Vec<i64>, ok: bool) {
        self.table().calls.push(Call {
            method,
            at,
            ids,
            ok,
        });
    }
}

impl StatusStore for MemoryStatusStore {
    async fn write_outcomes(
        &self,
        rows: &[(i64, &Outcome, i32)],
    ) -> Result<HashSet<i64>, StoreError> {
        let at = Instant::now();
        self.unblocked().await;
        let ids: Vec<i64> = rows.iter().map(|(id, ..)| *id).collect();
        let result = {
            let mut table = self.table();
            let now = Instant::now();
            if let Some(error) = table.transient_failure() {
                Err(error)
            } else if rows
                .iter()
                .any(|(id, ..)| table.rejected.contains(id) && table.visible(*id, now).is_some())
            {
                Err(StoreError::simulated("status update", REJECTED))
            } else {
                let mut written = HashSet::new();
                for &(id, outcome, attempts) in rows {
                    let Some(current) = table.visible(id, now).cloned() else {
                        continue;
                    };
                    written.insert(id);
                    // A deferral applies only to a row still pending (see `Outcome`).
                    if outcome.is_deferred() && current.status != "pending" {
                        continue;
                    }
                    table.rows.insert(
                        id,
                        MemoryRow {
                            status: outcome.status(),
                            attempts: current.attempts + attempts,
                            last_error: outcome.error().map(str::to_owned).or(current.last_error),
                        },
                    );
                }
                Ok(written)
            }
        };
        self.record(Method::WriteOutcomes, at, ids, result.is_ok());
        result
    }

    async fn write_dead(&self, id: i64, reason: &str, attempts: i32) -> Result<bool, StoreError> {
        let at = Instant::now();
        self.unblocked().await;
        let result = {
            let mut table = self.table();
            let now = Instant::now();
            if let Some(error) = table.transient_failure() {
                Err(error)
            } else if table.dead_rejected.contains(&id) {
                Err(StoreError::simulated("status update", REJECTED))
            } else {
                match table.visible(id, now).cloned() {
                    Some(current) => {
                        table.rows.insert(
                            id,
                            MemoryRow {
                                status: "dead",
                                attempts: current.attempts + attempts,
                                last_error: Some(reason.to_owned()),
                            },
                        );
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
        };
        self.record(Method::WriteDead, at, vec![id], result.is_ok());
        result
    }
}
