//! Replay: returning already delivered (`done`) events to `pending`, for when a consumer
//! lost data downstream. `dispatchbox replay` and `POST /api/replay` both go through
//! [`Store::replay_done`], so they select exactly the same rows for the same filter.
//!
//! A replayed row becomes `pending` with `attempts = 0`, `next_run_at = now()`, no claim,
//! `last_error = 'replayed by <who>'` and `last_error_at = now()`: the publication streams
//! INSERTs only, so the sweeper delivers it, and a `pending` row with a `last_error_at` is
//! taken at the next sweep (as after `dispatchbox dead retry`), lowest id first, so the
//! events of one aggregate go out again in id order. `last_error` is the record on the row
//! of who replayed it; the caller also logs the replay and counts it.
//!
//! Safety: only rows that are `done` when the statement runs change; an empty filter is
//! refused (replaying everything needs [`ReplayFilter::all`]); and a replay that matches
//! more rows than its cap changes nothing and reports how many matched, so a mistyped
//! filter cannot re-send a whole table. A dry run reports the same without changing
//! anything. Each replay is one statement.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;

use crate::ops::dead::{columns, dead_event, DeadEvent, Detail};
use crate::store::{Store, StoreError};

/// Most rows one replay changes when the caller does not say.
pub const DEFAULT_REPLAY_CAP: i64 = 10_000;
/// Largest cap a caller may set.
pub const MAX_REPLAY_CAP: i64 = 1_000_000;
/// Most events a dry run previews ([`Store::replay_preview`]).
pub const MAX_PREVIEW: i64 = 100;

/// Which `done` events a replay applies to. Every set field narrows the selection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFilter {
    /// Lowest id (inclusive).
    pub from_id: Option<i64>,
    /// Highest id (inclusive).
    pub to_id: Option<i64>,
    /// Created at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Created before this instant (exclusive).
    pub until: Option<DateTime<Utc>>,
    /// This `aggregate_type` (exact).
    pub aggregate_type: Option<String>,
    /// This `aggregate_id` (exact).
    pub aggregate_id: Option<String>,
    /// This `event_type` (exact).
    pub event_type: Option<String>,
    /// Replay every `done` event (required when no other field is set).
    #[serde(default)]
    pub all: bool,
}

impl ReplayFilter {
    /// True when no narrowing field is set.
    pub fn is_empty(&self) -> bool {
        self.from_id.is_none()
            && self.to_id.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.aggregate_type.is_none()
            && self.aggregate_id.is_none()
            && self.event_type.is_none()
    }
}

/// What a replay did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayOutcome {
    /// `done` rows the filter matched, counted up to the cap plus one.
    pub matched: i64,
    /// True when `matched` exceeds the cap: nothing was changed.
    pub over_cap: bool,
    /// The ids returned to `pending` (empty in a dry run or over the cap).
    pub replayed: Vec<i64>,
    pub dry_run: bool,
}

/// A refused replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "no events selected: give an id range, a time window, an aggregate or an event type, \
         or ask for all delivered events explicitly"
    )]
    NothingSelected,
    #[error("the cap {0} is out of range; use a whole number from 1 to {MAX_REPLAY_CAP}")]
    Cap(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReplayFilter {
    /// `status = 'done' AND …` with numbered parameters for the set fields; refuses a
    /// filter that selects nothing without [`ReplayFilter::all`].
    fn predicates(&self) -> Result<(String, Vec<&(dyn ToSql + Sync)>), ReplayError> {
        if self.is_empty() && !self.all {
            return Err(ReplayError::NothingSelected);
        }
        let mut sql = "status = 'done'".to_owned();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        let predicates: [(&str, Option<&(dyn ToSql + Sync)>); 7] = [
            ("id >= ", self.from_id.as_ref().map(|v| v as _)),
            ("id <= ", self.to_id.as_ref().map(|v| v as _)),
            ("created_at >= ", self.since.as_ref().map(|v| v as _)),
            ("created_at < ", self.until.as_ref().map(|v| v as _)),
            (
                "aggregate_type = ",
                self.aggregate_type.as_ref().map(|v| v as _),
            ),
            (
                "aggregate_id = ",
                self.aggregate_id.as_ref().map(|v| v as _),
            ),
            ("event_type = ", self.event_type.as_ref().map(|v| v as _)),
        ];
        for (predicate, value) in predicates {
            if let Some(value) = value {
                params.push(value);
                // Writing to a String cannot fail.
                let _ = write!(sql, " AND {predicate}${}", params.len());
            }
        }
        Ok((sql, params))
    }
}

impl Store {
    /// The first `limit` (at most [`MAX_PREVIEW`]) `done` events `filter` matches, in id
    /// order, without payloads: what a replay would send first (the console's preview).
    pub async fn replay_preview(
        &self,
        filter: &ReplayFilter,
        limit: i64,
    ) -> Result<Vec<DeadEvent>, ReplayError> {
        const CONTEXT: &str = "replay preview";
        let limit = limit.clamp(0, MAX_PREVIEW);
        let (sql, mut params) = filter.predicates()?;
        params.push(&limit);
        let statement = format!(
            "SELECT {} FROM {} WHERE {sql} ORDER BY id LIMIT ${}",
            columns(Detail::Summary),
            self.table().quoted(),
            params.len()
        );
        let rows = self.query(CONTEXT, &statement, &params).await?;
        Ok(rows
            .iter()
            .map(|row| dead_event(CONTEXT, row, Detail::Summary))
            .collect::<Result<_, _>>()?)
    }

    /// Returns the `done` events `filter` matches to `pending` (see the module doc), unless
    /// more than `cap` match; `replayed_by` is recorded on each row. With `dry_run` nothing
    /// changes.
    pub async fn replay_done(
        &self,
        filter: &ReplayFilter,
        cap: i64,
        dry_run: bool,
        replayed_by: &str,
    ) -> Result<ReplayOutcome, ReplayError> {
        const CONTEXT: &str = "replay";
        let (sql, mut params) = filter.predicates()?;
        if !(1..=MAX_REPLAY_CAP).contains(&cap) {
            return Err(ReplayError::Cap(cap));
        }
        let limit = cap + 1;
        let reason = format!("replayed by {replayed_by}");
        params.push(&limit);
        let limit_param = params.len();
        let table = self.table().quoted();
        let statement = if dry_run {
            format!(
                "SELECT count(*), ARRAY[]::bigint[]
                   FROM (SELECT id FROM {table} WHERE {sql} ORDER BY id LIMIT ${limit_param}) s"
            )
        } else {
            params.push(&cap);
            let cap_param = params.len();
            params.push(&reason);
            let reason_param = params.len();
            format!(
                "WITH sel AS (SELECT id FROM {table} WHERE {sql} ORDER BY id
                              LIMIT ${limit_param} FOR UPDATE),
                      n AS (SELECT count(*) AS c FROM sel),
                      upd AS (UPDATE {table} t
                                 SET status = 'pending', attempts = 0, next_run_at = now(),
                                     claim_token = NULL, last_error = ${reason_param},
                                     last_error_at = now()
                                FROM sel, n
                               WHERE t.id = sel.id AND n.c <= ${cap_param}
                                 AND t.status = 'done'
                           RETURNING t.id)
                 SELECT (SELECT c FROM n), coalesce(array_agg(id ORDER BY id), '{{}}')
                   FROM upd"
            )
        };
        let rows = self.query(CONTEXT, &statement, &params).await?;
        let row = rows.first().ok_or_else(|| StoreError::Unexpected {
            context: CONTEXT.into(),
            detail: "the replay statement returned no row".into(),
        })?;
        let matched: i64 = row.try_get(0).map_err(|e| StoreError::db(CONTEXT, e))?;
        let replayed: Vec<i64> = row.try_get(1).map_err(|e| StoreError::db(CONTEXT, e))?;
        Ok(ReplayOutcome {
            matched,
            over_cap: matched > cap,
            replayed,
            dry_run,
        })
    }
}
