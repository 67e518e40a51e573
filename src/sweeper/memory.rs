//! An in-memory [`SweepStore`] for the sweeper's unit tests: an outbox whose rows carry a
//! status, a due time, attempts, a claim token and an aggregate, claimed and written by
//! the rules of [`SweepStore`]'s contract (leases, token guards, heads of aggregates),
//! plus knobs (failing outcome writes, rows locked by another claimer, rows that cannot
//! form an event) and a log of every call with its time.
//!
//! Due times are tokio instants, so paused time moves them; towards the sweeper they are
//! wall-clock times relative to `Utc::now()` (what the sweeper compares them with), a
//! future one [`WAKE_MARGIN`] late (see there).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::SweepStore;
use crate::event::mapping::RowError;
use crate::event::{ClaimReason, OutboxEvent, Outcome};
use crate::lsn::Lsn;
use crate::store::sweep::{ClaimSettings, ClaimedEvent, ClaimedRow, PendingSighting};
use crate::store::StoreError;

/// One row of the in-memory outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MemoryRow {
    /// `pending`, `retry`, `processing`, `done` or `dead`.
    pub status: &'static str,
    /// `next_run_at`: when it is due, or when its lease expires.
    pub due: Instant,
    pub attempts: i32,
    pub claim_token: Option<String>,
    pub aggregate_id: String,
    pub last_error: Option<String>,
}

/// Which method was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    SightPending,
    AggregatesOf,
    ClaimRows,
    LoadClaimed,
    RenewClaims,
    WriteClaimedOutcomes,
    DrainedAggregates,
    NextDue,
}

/// One call, when it arrived and the ids it named (claims: the ids claimed).
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub method: Method,
    pub at: Instant,
    pub ids: Vec<i64>,
}

#[derive(Debug, Default)]
struct Table {
    rows: BTreeMap<i64, MemoryRow>,
    /// Rows another claimer holds a lock on: claims skip them (`SKIP LOCKED`).
    locked: HashSet<i64>,
    /// Rows whose columns cannot form an event.
    broken: HashSet<i64>,
    /// How many outcome writes still fail, and with which SQLSTATE.
    failing_writes: (u32, &'static str),
    calls: Vec<Call>,
}

impl Table {
    fn outstanding(row: &MemoryRow) -> bool {
        matches!(row.status, "pending" | "retry" | "processing")
    }

    /// No lower id of `row`'s aggregate is outstanding.
    fn heads(&self, id: i64, row: &MemoryRow) -> bool {
        !self
            .rows
            .range(..id)
            .any(|(_, r)| r.aggregate_id == row.aggregate_id && Self::outstanding(r))
    }

    fn record(&mut self, method: Method, ids: Vec<i64>) {
        self.calls.push(Call {
            method,
            at: Instant::now(),
            ids,
        });
    }
}

/// The in-memory outbox; clones share it.
#[derive(Debug, Clone, Default)]
pub(super) struct MemorySweepStore {
    table: Arc<Mutex<Table>>,
}

/// Added to a future due time reported to the sweeper. The sweeper subtracts its own
/// `Utc::now()`, read a moment after ours while paused time stands still: without the
/// margin it would wake a few microseconds before the row is due in tokio time.
const WAKE_MARGIN: Duration = Duration::from_millis(50);

/// `at` as the wall-clock time the sweeper sees.
fn wall_clock(at: Instant) -> DateTime<Utc> {
    let now = Instant::now();
    let offset = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    if at > now {
        Utc::now() + offset(at - now + WAKE_MARGIN)
    } else {
        Utc::now() - offset(now - at)
    }
}

/// A wall-clock time from the sweeper as an instant (the past as now).
fn instant(at: DateTime<Utc>) -> Instant {
    Instant::now() + (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

impl MemorySweepStore {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds row `id` of aggregate `("order", aggregate_id)` with `status`, due at `due`,
    /// attempted `attempts` times.
    pub fn insert(&self, id: i64, aggregate_id: &str, status: &'static str, due: Instant) {
        let attempts = i32::from(status != "pending");
        self.table().rows.insert(
            id,
            MemoryRow {
                status,
                due,
                attempts,
                claim_token: None,
                aggregate_id: aggregate_id.to_owned(),
                last_error: None,
            },
        );
    }

    /// Another claimer holds row `id` locked: claims pass it over.
    pub fn lock(&self, id: i64) {
        self.table().locked.insert(id);
    }

    /// Row `id`'s columns cannot form an event.
    pub fn break_row(&self, id: i64) {
        self.table().broken.insert(id);
    }

    /// The next `times` outcome writes fail with SQLSTATE `code`.
    pub fn fail_writes(&self, times: u32, code: &'static str) {
        self.table().failing_writes = (times, code);
    }

    pub fn row(&self, id: i64) -> MemoryRow {
        self.table().rows[&id].clone()
    }

    /// Every call of `method` so far.
    pub fn calls(&self, method: Method) -> Vec<Call> {
        self.table()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    fn claimed_by(row: &MemoryRow, token: &str) -> bool {
        row.status == "processing" && row.claim_token.as_deref() == Some(token)
    }
}

impl SweepStore for MemorySweepStore {
    fn fit_claim_token(&self, token: &str) -> String {
        token.to_owned()
    }

    async fn sight_pending(&self, _slot: &str, limit: i64) -> Result<PendingSighting, StoreError> {
        let mut table = self.table();
        let now = Instant::now();
        let mut due: Vec<(&i64, &MemoryRow)> = table
            .rows
            .iter()
            .filter(|(_, r)| r.status == "pending" && r.due <= now)
            .collect();
        due.sort_by_key(|(_, r)| r.due);
        due.truncate(usize::try_from(limit).unwrap_or(0));
        let (requeued, ids): (Vec<_>, Vec<_>) =
            due.iter().partition(|(_, r)| r.last_error.is_some());
        let ids: Vec<i64> = ids.iter().map(|(&id, _)| id).collect();
        let requeued: Vec<i64> = requeued.iter().map(|(&id, _)| id).collect();
        table.record(Method::SightPending, ids.clone());
        // The stream never settles past these rows here: the tests that claim missed rows
        // name them through the grace period.
        Ok(PendingSighting {
            ids,
            requeued,
            wal_position: Lsn(100),
            stream_settled: None,
        })
    }

    async fn aggregates_of(&self, ids: &[i64]) -> Result<Vec<(String, String)>, StoreError> {
        let mut table = self.table();
        table.record(Method::AggregatesOf, ids.to_vec());
        let mut aggregates: Vec<(String, String)> = ids
            .iter()
            .filter_map(|id| table.rows.get(id))
            .map(|r| ("order".to_owned(), r.aggregate_id.clone()))
            .collect();
        aggregates.sort();
        aggregates.dedup();
        Ok(aggregates)
    }

    async fn claim_rows(
        &self,
        token: &str,
        settings: &ClaimSettings,
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        let mut table = self.table();
        let now = Instant::now();
        let claimable: Vec<(i64, ClaimReason)> = table
            .rows
            .iter()
            .filter(|(id, _)| !table.locked.contains(id))
            .filter(|(_, r)| r.due <= now)
            .filter_map(|(&id, r)| {
                let reason = match r.status {
                    "retry" => ClaimReason::DueRetry,
                    "processing" => ClaimReason::ExpiredLease,
                    "pending" if settings.missed_pending.contains(&id) => {
                        if r.last_error.is_some() {
                            ClaimReason::Requeued
                        } else {
                            ClaimReason::Missed
                        }
                    }
                    _ => return None,
                };
                (!settings.ordering || table.heads(id, r)).then_some((id, reason))
            })
            .take(usize::try_from(settings.batch).unwrap_or(0))
            .collect();
        let mut claimed = Vec::with_capacity(claimable.len());
        for (id, reason) in claimable {
            let Some(row) = table.rows.get_mut(&id) else {
                continue;
            };
            claimed.push(ClaimedRow {
                id,
                reason,
                attempts: row.attempts,
                due_at: Some(wall_clock(row.due)),
                bytes: 100,
            });
            row.status = "processing";
            row.claim_token = Some(token.to_owned());
            row.due = now + settings.lease;
        }
        table.record(Method::ClaimRows, claimed.iter().map(|c| c.id).collect());
        Ok(claimed)
    }

    async fn load_claimed(
        &self,
        token: &str,
        rows: &[ClaimedRow],
    ) -> Result<Vec<ClaimedEvent>, StoreError> {
        let mut table = self.table();
        table.record(Method::LoadClaimed, rows.iter().map(|r| r.id).collect());
        let mut events = Vec::new();
        for claimed in rows {
            let Some(row) = table.rows.get(&claimed.id) else {
                continue;
            };
            if !Self::claimed_by(row, token) {
                continue;
            }
            let event = if table.broken.contains(&claimed.id) {
                Err(RowError {
                    id: Some(claimed.id),
                    reason: "column \"headers\" is not a JSON object".into(),
                })
            } else {
                Ok(OutboxEvent {
                    id: claimed.id,
                    aggregate_type: "order".to_owned(),
                    aggregate_id: row.aggregate_id.clone(),
                    event_type: "order.placed".to_owned(),
                    payload: bytes::Bytes::from_static(b"{}"),
                    headers: Vec::new(),
                    created_at: Utc::now(),
                    next_run_at: claimed.due_at,
                })
            };
            events.push(ClaimedEvent {
                id: claimed.id,
                event,
                attempts: claimed.attempts,
                reason: claimed.reason,
            });
        }
        Ok(events)
    }

    async fn renew_claims(
        &self,
        token: &str,
        ids: &[i64],
        lease: Duration,
    ) -> Result<u64, StoreError> {
        let mut table = self.table();
        table.record(Method::RenewClaims, ids.to_vec());
        let due = Instant::now() + lease;
        let mut renewed = 0;
        for id in ids {
            if let Some(row) = table.rows.get_mut(id) {
                if Self::claimed_by(row, token) {
                    row.due = due;
                    renewed += 1;
                }
            }
        }
        Ok(renewed)
    }

    async fn write_claimed_outcomes(
        &self,
        token: &str,
        outcomes: &[(i64, Outcome)],
    ) -> Result<Vec<i64>, StoreError> {
        let mut table = self.table();
        table.record(
            Method::WriteClaimedOutcomes,
            outcomes.iter().map(|(id, _)| *id).collect(),
        );
        if let (times @ 1.., code) = table.failing_writes {
            table.failing_writes = (times - 1, code);
            return Err(StoreError::simulated("sweeper outcome update", code));
        }
        let latest: BTreeMap<i64, &Outcome> = outcomes.iter().map(|(id, o)| (*id, o)).collect();
        let mut written = Vec::new();
        for (id, outcome) in latest {
            let Some(row) = table.rows.get_mut(&id) else {
                continue;
            };
            if !Self::claimed_by(row, token) {
                continue;
            }
            row.status = outcome.status();
            row.attempts += outcome.attempts();
            row.claim_token = None;
            if let Some(error) = outcome.error() {
                row.last_error = Some(error.to_owned());
            }
            if let Some(at) = outcome.next_run_at() {
                row.due = instant(at);
            }
            written.push(id);
        }
        Ok(written)
    }

    async fn drained_aggregates(
        &self,
        aggregates: &[(String, String)],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut table = self.table();
        table.record(Method::DrainedAggregates, Vec::new());
        Ok(aggregates
            .iter()
            .filter(|(_, aggregate_id)| {
                !table.rows.values().any(|r| {
                    &r.aggregate_id == aggregate_id && matches!(r.status, "retry" | "processing")
                })
            })
            .cloned()
            .collect())
    }

    async fn next_due(&self, ordering: bool) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut table = self.table();
        table.record(Method::NextDue, Vec::new());
        let next = table
            .rows
            .iter()
            .filter(|(_, r)| matches!(r.status, "retry" | "processing"))
            .filter(|(&id, r)| !ordering || table.heads(id, r))
            .map(|(_, r)| r.due)
            .min();
        Ok(next.map(wall_clock))
    }
}
