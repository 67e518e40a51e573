//! The outcome UPDATEs: how a delivery's [`Outcome`] is written onto its row. One statement
//! shared by the status writer (streamed events) and the sweeper (claimed rows), differing
//! only in which rows it may touch (`UpdateGuard`), plus the status writer's fast path
//! for all-`done` batches and the `dead` write for a row whose outcome was rejected.
//!
//! Only SQL: which outcome to write, batching, retrying and acks belong to the status
//! writer (the `status` module, above this one) and the sweeper.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;

use super::widths::TextWidths;
use super::{Store, StoreError};
use crate::event::Outcome;
use crate::names::TableName;

/// Which rows an outcome UPDATE may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpdateGuard {
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
pub(crate) fn outcome_update_sql(table: &TableName, guard: UpdateGuard) -> String {
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
pub(crate) fn done_update_sql(table: &TableName) -> String {
    format!(
        "UPDATE {} SET status = 'done', attempts = attempts + 1, delivered_at = now(),
                claim_token = NULL
          WHERE id = ANY($1::bigint[])
      RETURNING id",
        table.quoted()
    )
}

/// Writes row `$1` `dead` with reason `$2`, counting `$3` attempts: for a row whose
/// outcome the database rejected. Returns the id when the row exists.
pub(crate) fn rejected_update_sql(table: &TableName) -> String {
    format!(
        "UPDATE {} SET status = 'dead', attempts = attempts + $3, last_error = $2,
                last_error_at = now(), claim_token = NULL
          WHERE id = $1
      RETURNING id",
        table.quoted()
    )
}

/// The parameter arrays of [`outcome_update_sql`], one entry per row, sorted by id: a
/// stable lock order makes deadlocks with other writers of the same rows rarer.
#[derive(Debug, Default)]
pub(crate) struct OutcomeColumns {
    ids: Vec<i64>,
    statuses: Vec<&'static str>,
    errors: Vec<Option<String>>,
    next_run_ats: Vec<Option<DateTime<Utc>>>,
    attempts: Vec<i32>,
    deferred: Vec<bool>,
}

impl OutcomeColumns {
    /// Columns for `(id, outcome, attempts)` rows, error texts fitted to `widths`; ids must
    /// be distinct.
    pub(crate) fn new<'a>(
        rows: impl IntoIterator<Item = (i64, &'a Outcome, i32)>,
        widths: &TextWidths,
    ) -> Self {
        let mut rows: Vec<_> = rows.into_iter().collect();
        rows.sort_unstable_by_key(|&(id, _, _)| id);
        let mut columns = Self::default();
        for (id, outcome, attempts) in rows {
            columns.ids.push(id);
            columns.statuses.push(outcome.status());
            columns
                .errors
                .push(outcome.error().map(|e| widths.fit_error(e)));
            columns.next_run_ats.push(outcome.next_run_at());
            columns.attempts.push(attempts);
            columns.deferred.push(outcome.is_deferred());
        }
        columns
    }

    /// `$1`..`$6`.
    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 6] {
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

/// The outcome UPDATEs of one table, built once per [`Store`].
#[derive(Debug)]
pub(crate) struct OutcomeSql {
    /// [`outcome_update_sql`] with [`UpdateGuard::Stream`].
    stream: String,
    /// [`outcome_update_sql`] with [`UpdateGuard::Claimed`].
    pub(crate) claimed: String,
    /// [`done_update_sql`].
    done: String,
    /// [`rejected_update_sql`].
    rejected: String,
}

impl OutcomeSql {
    pub(crate) fn for_table(table: &TableName) -> Self {
        Self {
            stream: outcome_update_sql(table, UpdateGuard::Stream),
            claimed: outcome_update_sql(table, UpdateGuard::Claimed),
            done: done_update_sql(table),
            rejected: rejected_update_sql(table),
        }
    }
}

impl Store {
    /// Writes the outcomes of streamed events (`(id, outcome, attempts)`, distinct ids) in
    /// one statement; returns the ids written, plus deferred rows that had moved on
    /// (nothing to write). A row not found (not visible yet, or deleted) is not among them.
    /// With `only_done` (every row `done` after one attempt) it uses the fast path.
    pub async fn write_stream_outcomes(
        &self,
        rows: &[(i64, &Outcome, i32)],
    ) -> Result<HashSet<i64>, StoreError> {
        const CONTEXT: &str = "status update";
        let columns = OutcomeColumns::new(rows.iter().copied(), &self.text_widths());
        let only_done = rows
            .iter()
            .all(|&(_, outcome, attempts)| *outcome == Outcome::Done && attempts == 1);
        let sql = if only_done {
            &self.outcome_sql.done
        } else {
            &self.outcome_sql.stream
        };
        let params = columns.params();
        let params = if only_done { &params[..1] } else { &params[..] };
        let updated = self.query_cached(CONTEXT, sql, params).await?;
        updated
            .iter()
            .map(|r| r.try_get::<_, i64>(0))
            .collect::<Result<HashSet<i64>, _>>()
            .map_err(|e| StoreError::db(CONTEXT, e))
    }

    /// Writes row `id` `dead` with `reason` (fitted to the column), counting `attempts`:
    /// for a row whose outcome the database rejected. Returns whether the row exists.
    pub async fn write_rejected_dead(
        &self,
        id: i64,
        reason: &str,
        attempts: i32,
    ) -> Result<bool, StoreError> {
        const CONTEXT: &str = "status update";
        let reason = self.text_widths().fit_error(reason);
        let rows = self
            .query_cached(
                CONTEXT,
                &self.outcome_sql.rejected,
                &[&id, &reason, &attempts],
            )
            .await?;
        Ok(!rows.is_empty())
    }
}
