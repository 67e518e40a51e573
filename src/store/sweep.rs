//! The sweeper's SQL: claiming due rows under a lease, writing the outcomes of claimed
//! rows, and the backlog questions the relay asks for per-aggregate ordering.
//!
//! Claims are row leases: `status = 'processing'`, `claim_token` = the claimer,
//! `next_run_at` = lease expiry. They are taken with `FOR UPDATE SKIP LOCKED`, so any number
//! of sweepers (one per relay replica) can claim at once without claiming a row twice or
//! waiting on each other. Outcomes of claimed rows are written only under the same token,
//! so a sweeper whose lease expired and was reclaimed cannot overwrite the newer claim.
//!
//! What a sweep covers: due `retry` rows, `processing` rows whose lease expired, and the
//! `pending` rows the caller names: rows it has found the stream missed, and rows that carry
//! a `last_error_at` (returned from `dead` by an operator, `dispatchbox dead retry`, which
//! the insert-only stream never sees again); [`Store::sight_pending`] reports both. It never
//! uses an id or time watermark: ids do not commit in order, so "everything above the last
//! id seen" would skip rows committed late.
//!
//! Every statement here is a range scan of the due index (keyed `(status, next_run_at)`,
//! migration 5) or the aggregate index, or a primary-key lookup: none reads rows of
//! another status, so a backlog of pending rows costs a due-retry lookup nothing.
//!
//! This module decides nothing about delivery: it does not choose outcomes, back off, or
//! talk to sinks.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio_postgres::types::PgLsn;
use tokio_postgres::Row;

use super::outcomes::OutcomeColumns;
use super::{Store, StoreError};
use crate::event::mapping::{OutboxSchema, RowError};
use crate::event::OutboxEvent;
use crate::event::{ClaimReason, Outcome};
use crate::lsn::Lsn;

/// What one [`Store::claim_due`] call may claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSettings {
    /// Most rows claimed by one call; zero or less claims nothing.
    pub batch: i64,
    /// How long a claim holds: a row still `processing` this long after its claim is taken
    /// to be abandoned and may be claimed again (by any sweeper).
    pub lease: Duration,
    /// `pending` rows to take: those the stream has missed, as the caller established from
    /// earlier [`Store::sight_pending`] answers, and those returned from `dead`; other
    /// `pending` rows are left to the stream. Ids no longer `pending` are ignored.
    pub missed_pending: Vec<i64>,
    /// Per-aggregate ordering: claim only the head of each aggregate (its lowest-id row
    /// still `pending`, `retry` or `processing`), so a backlog drains in id order.
    pub ordering: bool,
}

/// One row claimed by [`Store::claim_rows`]; it is `processing` under the caller's token
/// until its outcome is written with [`Store::write_claimed_outcomes`] or the lease expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRow {
    /// The row's id.
    pub id: i64,
    /// Why it was claimed.
    pub reason: ClaimReason,
    /// Delivery attempts recorded before this claim.
    pub attempts: i32,
    /// Its `next_run_at` before the claim (the claim sets the lease there); `None` when
    /// it cannot be read.
    pub due_at: Option<DateTime<Utc>>,
    /// About how many bytes its event takes (texts, payload and headers).
    pub bytes: usize,
}

/// A claimed row loaded as an event ([`Store::load_claimed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedEvent {
    /// The row's id (also inside `event` when that mapped).
    pub id: i64,
    /// The row as the stream would have delivered it, or why it cannot be an event (e.g.
    /// `headers` is not a JSON object): the caller should mark such a row `dead`.
    pub event: Result<OutboxEvent, RowError>,
    /// Delivery attempts recorded before this claim.
    pub attempts: i32,
    /// Why the row was claimed (from its state before this claim).
    pub reason: ClaimReason,
}

/// One look at the `pending` rows the stream has not settled, with the WAL positions that
/// tell whether it still can. See [`Store::sight_pending`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSighting {
    /// Due `pending` rows never attempted (no `last_error_at`), lowest id first.
    pub ids: Vec<i64>,
    /// Due `pending` rows attempted before (with a `last_error_at`): returned from `dead`
    /// by an operator; the stream will never deliver them. Lowest id first.
    pub requeued: Vec<i64>,
    /// The server's WAL insert position, read after the rows' snapshot: the transaction
    /// that inserted each of `ids` committed before this position.
    pub wal_position: Lsn,
    /// The slot's `confirmed_flush_lsn`: the stream has settled every outbox row whose
    /// transaction committed before it. `None` when the slot does not exist (yet).
    pub stream_settled: Option<Lsn>,
}

/// A duration as whole microseconds for `$n::bigint * interval '1 microsecond'`.
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Statuses a row has while it still waits to be delivered; they make an aggregate's later
/// rows wait (dead rows do not: a dead-lettered event must not stall its aggregate forever).
const OUTSTANDING: &str = "('pending', 'retry', 'processing')";

/// With `ordering`, the condition (on the outbox row aliased `t`) that no lower id of its
/// aggregate is still outstanding: the row heads its aggregate's backlog. Its predicate
/// matches the partial aggregate index of migration 3 exactly (one index probe per row).
/// Empty without ordering.
fn head_only(table: &str, ordering: bool) -> String {
    if !ordering {
        return String::new();
    }
    format!(
        "AND NOT EXISTS (
               SELECT 1 FROM {table} AS earlier
                WHERE earlier.aggregate_type = t.aggregate_type
                  AND earlier.aggregate_id = t.aggregate_id
                  AND earlier.id < t.id
                  AND earlier.status IN {OUTSTANDING})"
    )
}

/// Replayed rows that left `pending` ([`Store::settled_among`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettledRows {
    /// Every row asked about that is no longer `pending`.
    pub settled: std::collections::HashSet<i64>,
    /// Those of them in `retry` or `processing`: still to be delivered by the sweeper, so
    /// later events of their aggregates must wait behind them.
    pub waiting: std::collections::HashSet<i64>,
}

impl Store {
    /// Claims up to `settings.batch` due rows for the claimer `token` (unique per claimer)
    /// and returns them in id order.
    ///
    /// Claimed: `retry` rows that are due, `processing` rows whose lease expired, and due
    /// `pending` rows that are in `missed_pending`. Each becomes `processing` with `claim_token = token` and
    /// `next_run_at = now() + lease`; `attempts` is not touched (the outcome write counts
    /// the attempt). Concurrent callers never claim the same row.
    ///
    /// A row whose columns cannot form an event is claimed too and returned with a
    /// [`RowError`], so one bad row cannot block the sweep.
    ///
    /// [`Store::claim_rows`] and then [`Store::load_claimed`] of everything claimed; the
    /// sweeper itself loads in pieces that fit its byte budget.
    pub async fn claim_due(
        &self,
        token: &str,
        settings: &ClaimSettings,
    ) -> Result<Vec<ClaimedEvent>, StoreError> {
        let rows = self.claim_rows(token, settings).await?;
        self.load_claimed(token, &rows).await
    }

    /// Claims like [`Store::claim_due`] but returns only what the claim decided and how
    /// many bytes each row's event will take ([`ClaimedRow`]), in id order: the events are
    /// loaded with [`Store::load_claimed`], as many at a time as memory allows.
    pub async fn claim_rows(
        &self,
        token: &str,
        settings: &ClaimSettings,
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        const CONTEXT: &str = "sweeper claim";
        if settings.batch <= 0 {
            return Ok(Vec::new());
        }
        let table = self.table().quoted();
        // Per-aggregate ordering: a row is claimable only when no lower id of its aggregate
        // is still outstanding (pending rows included: the stream may be delivering them).
        // The subquery's predicate matches the partial aggregate index of migration 3
        // exactly, so it is one index probe per candidate. It reads the statement's
        // snapshot, which errs on the safe side: a lower row settled after the snapshot
        // still blocks, until the next sweep.
        let head_only = head_only(&table, settings.ordering);
        // Candidates, gathered first: due `retry` rows and expired `processing` leases (a
        // range scan of the due index per status: `next_run_at <= now()` doubles as "lease
        // expired") and the named `pending` rows (primary-key lookups). Gathering them in
        // their own materialized step keeps the planner from walking the primary key in id
        // order to satisfy `ORDER BY … LIMIT`, which, when the statistics promise early
        // matches, reads the whole table to claim nothing (tests/plans.rs).
        // SKIP LOCKED passes over rows another sweeper is claiming; a row another sweeper
        // claimed and committed since our snapshot is re-checked on its newest version and
        // fails `next_run_at <= now()` (its lease is in the future), so it is not claimed
        // twice. A `pending` row with a `last_error_at` was attempted before, so it was
        // returned from `dead`. ORDER BY id: oldest first, and a stable lock order.
        let sql = format!(
            "WITH candidate AS MATERIALIZED (
                 SELECT id FROM {table}
                  WHERE status IN ('retry', 'processing') AND next_run_at <= now()
                 UNION
                 SELECT unnest($3::bigint[])
             ), due AS (
                 SELECT t.id,
                        CASE WHEN t.status = 'retry' THEN 'due_retry'
                             WHEN t.status = 'processing' THEN 'expired_lease'
                             WHEN t.last_error_at IS NOT NULL THEN 'requeued'
                             ELSE 'missed' END AS reason,
                        t.next_run_at AS due_at
                   FROM candidate AS c
                   JOIN {table} AS t ON t.id = c.id
                  WHERE ((t.status IN ('retry', 'processing') AND t.next_run_at <= now())
                         OR (t.status = 'pending' AND t.id = ANY($3::bigint[])
                             AND t.next_run_at <= now()))
                    {head_only}
                  ORDER BY c.id
                  LIMIT $1
                    FOR UPDATE OF t SKIP LOCKED
             )
             UPDATE {table} AS t
                SET status = 'processing',
                    claim_token = $2,
                    next_run_at = now() + $4::bigint * interval '1 microsecond'
               FROM due
              WHERE t.id = due.id
          RETURNING t.id, due.reason, t.attempts, due.due_at,
                    (coalesce(octet_length(t.payload::text), 0)
                     + coalesce(octet_length(t.headers::text), 0)
                     + coalesce(octet_length(t.aggregate_type), 0)
                     + coalesce(octet_length(t.aggregate_id), 0)
                     + coalesce(octet_length(t.event_type), 0))::bigint"
        );
        let rows = self
            .query_cached(
                CONTEXT,
                &sql,
                &[
                    &settings.batch,
                    &token,
                    &settings.missed_pending,
                    &micros(settings.lease),
                ],
            )
            .await?;
        let mut claimed = rows
            .iter()
            .map(claimed_row)
            .collect::<Result<Vec<_>, _>>()?;
        claimed.sort_unstable_by_key(|c| c.id);
        Ok(claimed)
    }

    /// The events of `rows`, claimed by `token`, in id order. A row whose claim was lost
    /// meanwhile (its lease expired and another sweeper took it) is left out.
    pub async fn load_claimed(
        &self,
        token: &str,
        rows: &[ClaimedRow],
    ) -> Result<Vec<ClaimedEvent>, StoreError> {
        const CONTEXT: &str = "sweeper load";
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, aggregate_type, aggregate_id, event_type, payload, headers, created_at
               FROM {}
              WHERE id = ANY($1) AND claim_token = $2 AND status = 'processing'
              ORDER BY id",
            self.table().quoted()
        );
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let loaded = self.query_cached(CONTEXT, &sql, &[&ids, &token]).await?;
        let by_id: HashMap<i64, &ClaimedRow> = rows.iter().map(|r| (r.id, r)).collect();
        // The stream's mapping, over the binary values of the row: a column of a type the
        // mapping does not take is the table's problem, reported on each row it affects.
        let schema = loaded.first().map(|row| {
            let columns: Vec<(&str, u32)> = row
                .columns()
                .iter()
                .map(|c| (c.name(), c.type_().oid()))
                .collect();
            OutboxSchema::resolve(self.table().to_string(), &columns)
        });
        let mut events = Vec::with_capacity(loaded.len());
        for row in &loaded {
            let id: i64 = row.try_get(0).map_err(|e| StoreError::db(CONTEXT, e))?;
            let Some(claimed) = by_id.get(&id) else {
                continue;
            };
            let event = match &schema {
                Some(Ok(schema)) => schema
                    .map_row(raw_columns(row).as_slice())
                    .and_then(|event| {
                        let next_run_at = claimed.due_at.ok_or_else(|| RowError {
                            id: Some(id),
                            reason: "column \"next_run_at\" cannot be read".into(),
                        })?;
                        Ok(OutboxEvent {
                            next_run_at: Some(next_run_at),
                            ..event
                        })
                    }),
                Some(Err(_)) | None => Err(RowError {
                    id: Some(id),
                    reason: schema_error_reason(schema.as_ref()),
                }),
            };
            events.push(ClaimedEvent {
                id,
                event,
                attempts: claimed.attempts,
                reason: claimed.reason,
            });
        }
        Ok(events)
    }

    /// Extends the lease of the rows `ids` still claimed by `token` to `lease` from now
    /// (while their delivery takes long); returns how many it extended.
    pub async fn renew_claims(
        &self,
        token: &str,
        ids: &[i64],
        lease: Duration,
    ) -> Result<u64, StoreError> {
        const CONTEXT: &str = "sweeper lease renewal";
        let sql = format!(
            "UPDATE {} SET next_run_at = now() + $3::bigint * interval '1 microsecond'
              WHERE id = ANY($1) AND claim_token = $2 AND status = 'processing'",
            self.table().quoted()
        );
        let client = self.client(CONTEXT).await?;
        let statement = client
            .prepare_cached(&sql)
            .await
            .map_err(|e| StoreError::db(CONTEXT, e))?;
        client
            .execute(&statement, &[&ids, &token, &micros(lease)])
            .await
            .map_err(|e| StoreError::db(CONTEXT, e))
    }

    /// Writes the outcomes of rows claimed under `token` and releases their claims. Only
    /// rows still `processing` under `token` are written: a row whose lease expired and was
    /// claimed again, or that was settled meanwhile, is left alone. Returns the ids written
    /// (in id order); an id missing from it lost its claim and its outcome was discarded.
    ///
    /// Each outcome counts one attempt, except [`Outcome::Deferred`] (back to `retry`
    /// without an attempt). If an id appears twice, the later outcome wins.
    pub async fn write_claimed_outcomes(
        &self,
        token: &str,
        outcomes: &[(i64, Outcome)],
    ) -> Result<Vec<i64>, StoreError> {
        const CONTEXT: &str = "sweeper outcome update";
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let latest: BTreeMap<i64, &Outcome> = outcomes.iter().map(|(id, o)| (*id, o)).collect();
        let columns = OutcomeColumns::new(
            latest.iter().map(|(&id, o)| (id, *o, o.attempts())),
            &self.text_widths(),
        );
        let [p1, p2, p3, p4, p5, p6] = columns.params();
        let rows = self
            .query_cached(
                CONTEXT,
                &self.outcome_sql.claimed,
                &[p1, p2, p3, p4, p5, p6, &token],
            )
            .await?;
        let mut written = rows
            .iter()
            .map(|r| r.try_get::<_, i64>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::db(CONTEXT, e))?;
        written.sort_unstable();
        Ok(written)
    }

    /// Aggregates `(aggregate_type, aggregate_id)` with rows in `retry` or `processing`:
    /// the ones whose later events must wait (read at startup to rebuild that knowledge).
    pub async fn backlogged_aggregates(&self) -> Result<Vec<(String, String)>, StoreError> {
        const CONTEXT: &str = "backlogged aggregates lookup";
        // `status IN ('retry','processing')` implies the aggregate index's predicate, so
        // the planner can read the (small) partial index instead of the table.
        let sql = format!(
            "SELECT DISTINCT aggregate_type, aggregate_id FROM {}
              WHERE status IN ('retry', 'processing')",
            self.table().quoted()
        );
        let client = self.client(CONTEXT).await?;
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| StoreError::db(CONTEXT, e))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| StoreError::db(CONTEXT, e))
    }

    /// Of the rows `ids`, those no longer `pending` (one statement): settled by an earlier
    /// run, or the sweeper's now (also in [`SettledRows::waiting`]). Rows that do not
    /// exist are not among them.
    pub async fn settled_among(&self, ids: &[i64]) -> Result<SettledRows, StoreError> {
        const CONTEXT: &str = "replayed events lookup";
        let sql = format!(
            "SELECT id, status IN ('retry', 'processing') FROM {}
              WHERE id = ANY($1) AND status <> 'pending'",
            self.table().quoted()
        );
        let rows = self.query_cached(CONTEXT, &sql, &[&ids]).await?;
        let mut found = SettledRows::default();
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(|e| StoreError::db(CONTEXT, e))?;
            let waiting: bool = row.try_get(1).map_err(|e| StoreError::db(CONTEXT, e))?;
            found.settled.insert(id);
            if waiting {
                found.waiting.insert(id);
            }
        }
        Ok(found)
    }

    /// Of `aggregates`, those without rows in `retry` or `processing` (one index probe
    /// each, in one statement): the ones whose backlog drained.
    pub async fn drained_aggregates(
        &self,
        aggregates: &[(String, String)],
    ) -> Result<Vec<(String, String)>, StoreError> {
        const CONTEXT: &str = "drained aggregates lookup";
        let sql = format!(
            "SELECT b.t, b.i FROM unnest($1::text[], $2::text[]) AS b(t, i)
              WHERE NOT EXISTS (SELECT 1 FROM {} WHERE aggregate_type = b.t
                                   AND aggregate_id = b.i
                                   AND status IN ('retry', 'processing'))",
            self.table().quoted()
        );
        let (types, ids): (Vec<&str>, Vec<&str>) = aggregates
            .iter()
            .map(|(t, i)| (t.as_str(), i.as_str()))
            .unzip();
        let rows = self.query_cached(CONTEXT, &sql, &[&types, &ids]).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| StoreError::db(CONTEXT, e))
    }

    /// The aggregates of the rows `ids` (distinct; rows with a NULL aggregate are left
    /// out: they cannot be delivered anyway).
    pub async fn aggregates_of(&self, ids: &[i64]) -> Result<Vec<(String, String)>, StoreError> {
        const CONTEXT: &str = "aggregates lookup";
        let sql = format!(
            "SELECT DISTINCT aggregate_type, aggregate_id FROM {}
              WHERE id = ANY($1) AND aggregate_type IS NOT NULL AND aggregate_id IS NOT NULL",
            self.table().quoted()
        );
        let rows = self.query_cached(CONTEXT, &sql, &[&ids]).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| StoreError::db(CONTEXT, e))
    }

    /// Whether the aggregate has rows in `retry` or `processing` (one index probe).
    pub async fn aggregate_has_backlog(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<bool, StoreError> {
        const CONTEXT: &str = "aggregate backlog lookup";
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE aggregate_type = $1 AND aggregate_id = $2
                              AND status IN ('retry', 'processing'))",
            self.table().quoted()
        );
        let rows = self
            .query_cached(CONTEXT, &sql, &[&aggregate_type, &aggregate_id])
            .await?;
        one_value(CONTEXT, &rows)
    }

    /// Looks at up to `limit` due `pending` rows (those due first), and reads, in the same
    /// statement, the server's WAL insert position and the confirmed flush position of the
    /// replication slot `slot`. Rows never attempted are reported in `ids`, rows returned
    /// from `dead` in `requeued`.
    ///
    /// The statement's snapshot is taken before the positions are read, so every row it
    /// sees was committed before `wal_position` (a commit's WAL record is written before
    /// the transaction becomes visible). Once the slot's confirmed flush position reaches
    /// that `wal_position`, the stream has passed those commits and settled every outbox
    /// row in them; a row still `pending` then was never streamed (a publication changed by
    /// hand, a slot created after the row committed, or lost and recreated) and is the
    /// sweeper's. This measures from the commit, not from `created_at` (the start of the
    /// inserting transaction), so a long transaction is never mistaken for a missed one.
    ///
    /// One range scan of the due index over `pending` rows, at most `limit` entries long.
    pub async fn sight_pending(
        &self,
        slot: &str,
        limit: i64,
    ) -> Result<PendingSighting, StoreError> {
        const CONTEXT: &str = "pending rows sighting";
        let sql = format!(
            "SELECT coalesce(array_agg(p.id ORDER BY p.id)
                                 FILTER (WHERE p.last_error_at IS NULL), '{{}}'),
                    coalesce(array_agg(p.id ORDER BY p.id)
                                 FILTER (WHERE p.last_error_at IS NOT NULL), '{{}}'),
                    pg_current_wal_insert_lsn(),
                    (SELECT confirmed_flush_lsn
                       FROM pg_replication_slots
                      WHERE slot_name = $2 AND database = current_database())
               FROM (SELECT id, last_error_at FROM {}
                      WHERE status = 'pending' AND next_run_at <= now()
                      ORDER BY next_run_at
                      LIMIT $1) AS p",
            self.table().quoted()
        );
        let rows = self.query_cached(CONTEXT, &sql, &[&limit, &slot]).await?;
        let row = rows.first().ok_or_else(|| no_row(CONTEXT))?;
        let db = |e| StoreError::db(CONTEXT, e);
        Ok(PendingSighting {
            ids: row.try_get(0).map_err(db)?,
            requeued: row.try_get(1).map_err(db)?,
            wal_position: row.try_get::<_, PgLsn>(2).map_err(db)?.into(),
            stream_settled: row
                .try_get::<_, Option<PgLsn>>(3)
                .map_err(db)?
                .map(Lsn::from),
        })
    }

    /// When the sweeper can next claim something: the earliest `next_run_at` among the
    /// `retry` and `processing` rows it could claim then (a retry falling due, a lease
    /// expiring), or `None` when there are none. Lets a sweeper sleep until then instead of
    /// polling.
    ///
    /// With `ordering`, only heads of their aggregate's backlog count, exactly as
    /// [`Store::claim_due`] claims them: rows parked behind a head that is scheduled
    /// for later are due on paper but not claimable until the head is settled, and
    /// counting them would wake the sweeper at once, again and again, for the head's whole
    /// delay.
    pub async fn next_due(&self, ordering: bool) -> Result<Option<DateTime<Utc>>, StoreError> {
        const CONTEXT: &str = "next due lookup";
        let table = self.table().quoted();
        let head_only = head_only(&table, ordering);
        // Per status, the due index in next_run_at order up to the first claimable row:
        // one probe without ordering; with it, one more probe of the aggregate index per
        // parked row passed over.
        let first = |status: &str| {
            format!(
                "(SELECT t.next_run_at FROM {table} AS t
                   WHERE t.status = '{status}' {head_only}
                   ORDER BY t.next_run_at LIMIT 1)"
            )
        };
        let sql = format!("SELECT LEAST({}, {})", first("retry"), first("processing"));
        let rows = self.query_cached(CONTEXT, &sql, &[]).await?;
        one_value(CONTEXT, &rows)
    }
}

/// The answer of a statement that returns exactly one row: none is a store error.
fn no_row(context: &'static str) -> StoreError {
    StoreError::Unexpected {
        context: context.into(),
        detail: "the statement returned no row".into(),
    }
}

/// The first column of the only row of `rows`.
fn one_value<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    context: &'static str,
    rows: &[Row],
) -> Result<T, StoreError> {
    rows.first()
        .ok_or_else(|| no_row(context))?
        .try_get(0)
        .map_err(|e| StoreError::db(context, e))
}

/// Maps one `RETURNING` row of the claim (columns the statement computes: always readable).
fn claimed_row(row: &Row) -> Result<ClaimedRow, StoreError> {
    const CONTEXT: &str = "sweeper claim";
    let db = |e| StoreError::db(CONTEXT, e);
    let id: i64 = row.try_get(0).map_err(db)?;
    let reason: &str = row.try_get(1).map_err(db)?;
    let reason = ClaimReason::parse(reason).ok_or_else(|| StoreError::Unexpected {
        context: CONTEXT.into(),
        detail: format!("row {id} was claimed for the unknown reason {reason:?}"),
    })?;
    // A due time that cannot be read (infinity) is the row's problem, found when loaded.
    let due_at = row.try_get::<_, Option<DateTime<Utc>>>(3).ok().flatten();
    let bytes: i64 = row.try_get(4).map_err(db)?;
    Ok(ClaimedRow {
        id,
        reason,
        attempts: row.try_get(2).map_err(db)?,
        due_at,
        bytes: usize::try_from(bytes).unwrap_or(0),
    })
}

/// Every column of `row` as sent (binary), NULLs as `None`: what the mapping reads.
fn raw_columns(row: &Row) -> Vec<Option<Bytes>> {
    (0..row.len())
        .map(|i| {
            row.try_get::<_, RawValue>(i)
                .map(|raw| raw.0)
                .unwrap_or(None)
        })
        .collect()
}

/// A column's bytes as the server sent them, whatever its type.
struct RawValue(Option<Bytes>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawValue {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self(Some(Bytes::copy_from_slice(raw))))
    }

    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self(None))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

fn schema_error_reason(
    schema: Option<&Result<OutboxSchema, crate::event::mapping::SchemaError>>,
) -> String {
    match schema {
        Some(Err(error)) => error.to_string(),
        _ => "the row could not be read".to_owned(),
    }
}
