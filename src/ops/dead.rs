//! Dead-letter queries: listing, counting, showing and retrying `dead` outbox rows. The
//! CLI (`dispatchbox dead …`) and the admin HTTP API (`/api/dead-events`) both go through
//! here, so they select exactly the same rows for the same filter.
//!
//! Every operation is one statement (one round trip): a page of a listing, the statistics
//! (one `GROUPING SETS` query), a retry (one `UPDATE … RETURNING id`). Listings page by id
//! (keyset: `id > after_id ORDER BY id`), which stays correct and cheap however deep the
//! page, and never skips or repeats a row that stays dead between pages.
//!
//! **A retry returns the row to `pending`** with `attempts = 0`, `next_run_at = now()` and
//! no claim; `last_error` and `last_error_at` are kept as history until the next attempt
//! overwrites them. The publication streams INSERTs only, so the stream never sees this
//! UPDATE: the sweeper delivers the row. A `pending` row that carries a `last_error_at` has
//! been attempted before (an application inserts rows without one), so the sweeper takes it
//! at its next sweep instead of leaving it to the stream for `DISPATCHBOX_SWEEP_GRACE`
//! (see `store::sweep`); the running relay delivers it within `DISPATCHBOX_SWEEP_INTERVAL`,
//! with the full `DISPATCHBOX_MAX_ATTEMPTS` budget again.
//!
//! Ordering: a dead row never holds its aggregate back, so a retried event arrives after
//! the later events of its aggregate delivered meanwhile, and events streamed between the
//! retry and the sweep may overtake it as well.
//!
//! This module decides nothing about delivery and never changes rows that are not `dead`
//! ([`Store::show_event`] reads a row of any status, for the console's detail view).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::store::{Store, StoreError};

/// Rows per page when the caller does not say.
pub const DEFAULT_PAGE_LIMIT: i64 = 50;
/// Most rows one page may hold.
pub const MAX_PAGE_LIMIT: i64 = 1000;
/// Most distinct last errors [`DeadStats::by_last_error`] lists.
pub const TOP_ERRORS: usize = 10;

/// Which dead events an operation applies to. Every set field narrows the selection; an
/// empty filter ([`DeadFilter::is_empty`]) matches every dead event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadFilter {
    /// Only events of this `aggregate_type` (exact match).
    pub aggregate_type: Option<String>,
    /// Only events of this `event_type` (exact match).
    pub event_type: Option<String>,
    /// Only events that failed at or after this instant (`last_error_at`, or `created_at`
    /// for rows without it).
    pub since: Option<DateTime<Utc>>,
    /// Only events that failed before this instant (exclusive; same column as `since`).
    pub until: Option<DateTime<Utc>>,
    /// Only these ids.
    pub ids: Option<Vec<i64>>,
    /// Only events whose `last_error` contains this text (ignoring case).
    #[serde(default)]
    pub error: Option<String>,
}

impl DeadFilter {
    /// True when no field is set: the filter matches every dead event.
    pub fn is_empty(&self) -> bool {
        self.aggregate_type.is_none()
            && self.event_type.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.ids.is_none()
            && self.error.is_none()
    }
}

/// A page size outside `1..=MAX_PAGE_LIMIT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("page limit {0} is out of range; use a whole number from 1 to {MAX_PAGE_LIMIT}")]
pub struct InvalidLimit(pub i64);

/// One page request of a listing: at most `limit` events with ids above `after_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    limit: i64,
    after_id: Option<i64>,
}

impl Default for Page {
    /// The first page of [`DEFAULT_PAGE_LIMIT`] events.
    fn default() -> Self {
        Self {
            limit: DEFAULT_PAGE_LIMIT,
            after_id: None,
        }
    }
}

impl Page {
    /// A page of `limit` (1 to [`MAX_PAGE_LIMIT`]) events with ids above `after_id` (the
    /// previous page's [`DeadPage::next_after_id`]; `None` for the first page).
    pub fn new(limit: i64, after_id: Option<i64>) -> Result<Self, InvalidLimit> {
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            return Err(InvalidLimit(limit));
        }
        Ok(Self { limit, after_id })
    }

    /// Most events on the page.
    pub fn limit(&self) -> i64 {
        self.limit
    }
}

/// How much of each row a listing reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Everything but `payload` and `headers` (cheap: payloads can be large).
    Summary,
    /// Everything, `payload` and `headers` included.
    Full,
}

/// One dead outbox row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadEvent {
    /// The row id (the idempotency key).
    pub id: i64,
    /// `aggregate_type`.
    pub aggregate_type: String,
    /// `aggregate_id`.
    pub aggregate_id: String,
    /// `event_type`.
    pub event_type: String,
    /// Delivery attempts made before the row became dead.
    pub attempts: i32,
    /// Why the last attempt failed (`None` on rows dead-lettered by other tools).
    pub last_error: Option<String>,
    /// When the last attempt failed.
    pub last_error_at: Option<DateTime<Utc>>,
    /// When the row was inserted (`None` only when it cannot be read, see `unreadable`).
    pub created_at: Option<DateTime<Utc>>,
    /// The payload exactly as stored (`jsonb` text); absent in [`Detail::Summary`] listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// The `headers` column as stored (JSON `null` when the row has none); absent in
    /// [`Detail::Summary`] listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<RawValue>>,
    /// Set when columns of the row cannot be read as the event contract needs (NULL, a
    /// timestamp of `infinity`, an unexpected type): which and why, never the values. The
    /// unreadable fields are empty (`""`, `0`, `null`). The row is still listed, so one bad
    /// row never hides the others or fails the listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// One event of any status ([`Store::show_event`]).
#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    /// `pending`, `processing`, `retry`, `done` or `dead`.
    pub status: String,
    /// When the relay may attempt it next (pending and retry rows).
    pub next_run_at: Option<DateTime<Utc>>,
    /// Its columns, as a dead event's.
    #[serde(flatten)]
    pub event: DeadEvent,
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadPage {
    /// The events, in id order.
    pub events: Vec<DeadEvent>,
    /// Pass as `after_id` to read the next page; `None` when this was the last page.
    pub next_after_id: Option<i64>,
}

/// How many dead events one value of a column has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCount {
    /// The column's value (an event type, an aggregate type or a last error; a row without
    /// a last error counts under the empty text).
    pub name: String,
    /// Dead events with that value.
    pub count: i64,
}

/// Counts of the dead events a filter matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadStats {
    /// Dead events matched.
    pub total: i64,
    /// Per `event_type`, largest first.
    pub by_event_type: Vec<GroupCount>,
    /// Per `aggregate_type`, largest first.
    pub by_aggregate_type: Vec<GroupCount>,
    /// Per `last_error`, largest first: the [`TOP_ERRORS`] most frequent causes only (the
    /// rest add up to `total` minus their sum).
    #[serde(default)]
    pub by_last_error: Vec<GroupCount>,
    /// Earliest failure (`last_error_at`, or `created_at` without it); `None` when none.
    pub oldest_failed_at: Option<DateTime<Utc>>,
    /// Latest failure (same column).
    pub newest_failed_at: Option<DateTime<Utc>>,
}

/// Which dead events a retry applies to. There is no implicit "everything": an empty
/// filter or id list is refused, and retrying every dead event takes [`RetrySelection::All`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrySelection {
    /// These ids (those that are dead; others are ignored).
    Ids(Vec<i64>),
    /// Every dead event the filter matches; the filter must not be empty.
    Matching(DeadFilter),
    /// Every dead event.
    All,
}

/// A failed retry.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// The selection was empty or would silently mean "everything".
    #[error(
        "no dead events selected: give event ids, a non-empty filter, or ask for all dead \
         events explicitly"
    )]
    NothingSelected,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// When an event failed: the column the time filters and statistics use.
const FAILED_AT: &str = "coalesce(last_error_at, created_at)";
const SUMMARY_COLUMNS: &str =
    "id, aggregate_type, aggregate_id, event_type, attempts, last_error, last_error_at, created_at";

/// Builds `status = 'dead' AND …` with numbered parameters for the set filter fields, so
/// each statement carries only the predicates it needs (and the planner sees real values).
struct Predicates<'a> {
    sql: String,
    params: Vec<&'a (dyn ToSql + Sync)>,
}

impl<'a> Predicates<'a> {
    fn dead(filter: &'a DeadFilter) -> Self {
        let mut p = Self {
            sql: "status = 'dead'".to_owned(),
            params: Vec::new(),
        };
        if let Some(v) = &filter.aggregate_type {
            p.push("aggregate_type = ", v, "");
        }
        if let Some(v) = &filter.event_type {
            p.push("event_type = ", v, "");
        }
        if let Some(v) = &filter.since {
            p.push(&format!("{FAILED_AT} >= "), v, "");
        }
        if let Some(v) = &filter.until {
            p.push(&format!("{FAILED_AT} < "), v, "");
        }
        if let Some(v) = &filter.ids {
            p.push("id = ANY(", v, ")");
        }
        if let Some(v) = &filter.error {
            // strpos, not LIKE: the text is matched as written, `%` and `_` included.
            p.push("strpos(lower(last_error), lower(", v, ")) > 0");
        }
        p
    }

    /// Appends `AND {before}$n{after}` with `value` as parameter n.
    fn push(&mut self, before: &str, value: &'a (dyn ToSql + Sync), after: &str) {
        self.params.push(value);
        // Writing to a String cannot fail.
        let _ = write!(self.sql, " AND {before}${}{after}", self.params.len());
    }

    /// Adds a parameter without a predicate and returns its placeholder (`$n`).
    fn param(&mut self, value: &'a (dyn ToSql + Sync)) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }
}

fn raw_json(context: &'static str, text: Option<String>) -> Result<Box<RawValue>, StoreError> {
    let text = text.unwrap_or_else(|| "null".to_owned());
    RawValue::from_string(text).map_err(|e| StoreError::Unexpected {
        context: context.into(),
        detail: format!("a jsonb column is not valid JSON text: {e}"),
    })
}

/// Maps a listed row. Only the id must be readable (the primary key); a column that is
/// not is left empty and named in [`DeadEvent::unreadable`].
pub(crate) fn dead_event(
    context: &'static str,
    row: &Row,
    detail: Detail,
) -> Result<DeadEvent, StoreError> {
    let id: i64 = row.try_get(0).map_err(|e| StoreError::db(context, e))?;
    let mut unreadable: Vec<String> = Vec::new();
    let mut read = |index: usize, name: &str| -> Option<String> {
        match row.try_get::<_, Option<String>>(index) {
            Ok(Some(value)) => Some(value),
            Ok(None) => {
                unreadable.push(format!("column \"{name}\" is NULL"));
                None
            }
            Err(_) => {
                unreadable.push(format!("column \"{name}\" cannot be read as text"));
                None
            }
        }
    };
    let aggregate_type = read(1, "aggregate_type").unwrap_or_default();
    let aggregate_id = read(2, "aggregate_id").unwrap_or_default();
    let event_type = read(3, "event_type").unwrap_or_default();
    let attempts = match row.try_get::<_, Option<i32>>(4) {
        Ok(Some(attempts)) => attempts,
        Ok(None) => {
            unreadable.push("column \"attempts\" is NULL".to_owned());
            0
        }
        Err(_) => {
            unreadable.push("column \"attempts\" cannot be read as an integer".to_owned());
            0
        }
    };
    let last_error = row.try_get::<_, Option<String>>(5).unwrap_or_else(|_| {
        unreadable.push("column \"last_error\" cannot be read as text".to_owned());
        None
    });
    let mut time = |index: usize, name: &str, required: bool| -> Option<DateTime<Utc>> {
        match row.try_get::<_, Option<DateTime<Utc>>>(index) {
            Ok(None) if required => {
                unreadable.push(format!("column \"{name}\" is NULL"));
                None
            }
            Ok(time) => time,
            Err(_) => {
                unreadable.push(format!(
                    "column \"{name}\" cannot be read as a time (e.g. infinity)"
                ));
                None
            }
        }
    };
    let last_error_at = time(6, "last_error_at", false);
    let created_at = time(7, "created_at", true);
    let (payload, headers) = match detail {
        Detail::Summary => (None, None),
        Detail::Full => (
            Some(raw_json(
                context,
                row.try_get(8).map_err(|e| StoreError::db(context, e))?,
            )?),
            Some(raw_json(
                context,
                row.try_get(9).map_err(|e| StoreError::db(context, e))?,
            )?),
        ),
    };
    Ok(DeadEvent {
        id,
        aggregate_type,
        aggregate_id,
        event_type,
        attempts,
        last_error,
        last_error_at,
        created_at,
        payload,
        headers,
        unreadable: (!unreadable.is_empty()).then(|| unreadable.join("; ")),
    })
}

pub(crate) fn columns(detail: Detail) -> String {
    match detail {
        Detail::Summary => SUMMARY_COLUMNS.to_owned(),
        // `::text` is jsonb's output function: the payload exactly as the sinks got it.
        Detail::Full => format!("{SUMMARY_COLUMNS}, payload::text, headers::text"),
    }
}

impl Store {
    /// One page of the dead events `filter` matches, in id order. Reads one row more than
    /// the page holds to learn whether another page follows.
    pub async fn list_dead(
        &self,
        filter: &DeadFilter,
        page: &Page,
        detail: Detail,
    ) -> Result<DeadPage, StoreError> {
        const CONTEXT: &str = "dead event listing";
        let mut p = Predicates::dead(filter);
        if let Some(after) = &page.after_id {
            p.push("id > ", after, "");
        }
        let fetch = page.limit.saturating_add(1);
        let limit = p.param(&fetch);
        let sql = format!(
            "SELECT {} FROM {} WHERE {} ORDER BY id LIMIT {limit}",
            columns(detail),
            self.table().quoted(),
            p.sql
        );
        let rows = self.query(CONTEXT, &sql, &p.params).await?;
        let mut events = rows
            .iter()
            .map(|row| dead_event(CONTEXT, row, detail))
            .collect::<Result<Vec<_>, _>>()?;
        let more = i64::try_from(events.len()).unwrap_or(i64::MAX) > page.limit;
        let page_len = usize::try_from(page.limit).unwrap_or(usize::MAX);
        events.truncate(page_len);
        let next_after_id = if more {
            events.last().map(|e| e.id)
        } else {
            None
        };
        Ok(DeadPage {
            events,
            next_after_id,
        })
    }

    /// Counts of the dead events `filter` matches, per event type and aggregate type, with
    /// the oldest and newest failure time (one statement).
    pub async fn dead_stats(&self, filter: &DeadFilter) -> Result<DeadStats, StoreError> {
        const CONTEXT: &str = "dead event statistics";
        let p = Predicates::dead(filter);
        // grouping() sets a bit per column left out of the row's grouping set: 7 for the
        // grand total, 3 for per-event-type rows, 5 per aggregate type, 6 per last error.
        let sql = format!(
            "SELECT grouping(event_type, aggregate_type, coalesce(last_error, '')),
                    event_type, aggregate_type, coalesce(last_error, ''),
                    count(*), min({FAILED_AT}), max({FAILED_AT})
               FROM {} WHERE {}
              GROUP BY GROUPING SETS ((), (event_type), (aggregate_type),
                                      (coalesce(last_error, '')))
              ORDER BY 1, 5 DESC, 2, 3, 4",
            self.table().quoted(),
            p.sql
        );
        let rows = self.query(CONTEXT, &sql, &p.params).await?;
        let mut stats = DeadStats {
            total: 0,
            by_event_type: Vec::new(),
            by_aggregate_type: Vec::new(),
            by_last_error: Vec::new(),
            oldest_failed_at: None,
            newest_failed_at: None,
        };
        let db = |e| StoreError::db(CONTEXT, e);
        for row in &rows {
            let set: i32 = row.try_get(0).map_err(db)?;
            let count: i64 = row.try_get(4).map_err(db)?;
            let group = |column: usize| -> Result<GroupCount, StoreError> {
                Ok(GroupCount {
                    name: row.try_get(column).map_err(db)?,
                    count,
                })
            };
            match set {
                7 => {
                    stats.total = count;
                    stats.oldest_failed_at = row.try_get(5).map_err(db)?;
                    stats.newest_failed_at = row.try_get(6).map_err(db)?;
                }
                3 => stats.by_event_type.push(group(1)?),
                5 => stats.by_aggregate_type.push(group(2)?),
                6 if stats.by_last_error.len() < TOP_ERRORS => stats.by_last_error.push(group(3)?),
                6 => {}
                other => {
                    return Err(StoreError::Unexpected {
                        context: CONTEXT.into(),
                        detail: format!("unknown grouping set {other}"),
                    })
                }
            }
        }
        Ok(stats)
    }

    /// The dead event `id` with its payload and headers; `None` when no row has that id or
    /// the row is not dead.
    pub async fn show_dead(&self, id: i64) -> Result<Option<DeadEvent>, StoreError> {
        const CONTEXT: &str = "dead event lookup";
        let sql = format!(
            "SELECT {} FROM {} WHERE status = 'dead' AND id = $1",
            columns(Detail::Full),
            self.table().quoted()
        );
        let rows = self.query(CONTEXT, &sql, &[&id]).await?;
        rows.first()
            .map(|row| dead_event(CONTEXT, row, Detail::Full))
            .transpose()
    }

    /// The event `id` in whatever status it is, with its payload, headers, status and
    /// next run time (the console's detail view, which also shows `done` events to replay
    /// and follows retried ones); `None` when no row has that id.
    pub async fn show_event(&self, id: i64) -> Result<Option<EventDetail>, StoreError> {
        const CONTEXT: &str = "event lookup";
        let sql = format!(
            "SELECT {}, status::text, next_run_at FROM {} WHERE id = $1",
            columns(Detail::Full),
            self.table().quoted()
        );
        let rows = self.query(CONTEXT, &sql, &[&id]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let event = dead_event(CONTEXT, row, Detail::Full)?;
        Ok(Some(EventDetail {
            status: row.try_get(10).map_err(|e| StoreError::db(CONTEXT, e))?,
            // A next run time of infinity is shown as none rather than failing the lookup.
            next_run_at: row.try_get(11).ok().flatten(),
            event,
        }))
    }

    /// Makes the selected dead events due for delivery now and returns their ids (in id
    /// order). Only rows that are `dead` when the statement runs are changed: `status =
    /// 'pending'`, `attempts = 0`, `next_run_at = now()`, `claim_token = NULL`; `last_error`
    /// and `last_error_at` are kept. The running relay's sweeper delivers them within its
    /// interval (see the module doc). Concurrent retries of the same rows
    /// change each row once: the second finds it no longer dead.
    ///
    /// With `dry_run` nothing changes: the ids that would be retried are returned.
    pub async fn retry_dead(
        &self,
        selection: &RetrySelection,
        dry_run: bool,
    ) -> Result<Vec<i64>, RetryError> {
        const CONTEXT: &str = "dead event retry";
        let filter = match selection {
            RetrySelection::Ids(ids) if ids.is_empty() => return Err(RetryError::NothingSelected),
            RetrySelection::Ids(ids) => DeadFilter {
                ids: Some(ids.clone()),
                ..DeadFilter::default()
            },
            RetrySelection::Matching(filter) if filter.is_empty() => {
                return Err(RetryError::NothingSelected)
            }
            RetrySelection::Matching(filter) => filter.clone(),
            RetrySelection::All => DeadFilter::default(),
        };
        let p = Predicates::dead(&filter);
        let table = self.table().quoted();
        let sql = if dry_run {
            format!("SELECT id FROM {table} WHERE {} ORDER BY id", p.sql)
        } else {
            format!(
                "UPDATE {table}
                    SET status = 'pending', attempts = 0, next_run_at = now(), claim_token = NULL
                  WHERE {}
              RETURNING id",
                p.sql
            )
        };
        let rows = self.query(CONTEXT, &sql, &p.params).await?;
        let mut ids = rows
            .iter()
            .map(|r| r.try_get::<_, i64>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::db(CONTEXT, e))?;
        ids.sort_unstable();
        Ok(ids)
    }
}

/// A `since`/`until` value that is neither a time nor a relative age.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a time; use RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01, midnight \
     UTC) or an age such as 30m, 24h, 7d (that long before now)"
)]
pub struct InvalidTime(pub String);

/// Parses a filter time: RFC 3339, a plain date (midnight UTC), or an age like `24h` /
/// `7d` meaning `now` minus that.
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, InvalidTime> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if let Some(t) = date.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    humantime::parse_duration(text)
        .ok()
        .and_then(|age| chrono::Duration::from_std(age).ok())
        .and_then(|age| now.checked_sub_signed(age))
        .ok_or_else(|| InvalidTime(text.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_dates_or_ages() {
        let now = DateTime::parse_from_rfc3339("2024-05-10T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let t = |s| parse_time(s, now).unwrap().to_rfc3339();
        assert_eq!(t("2024-05-01T10:00:00+02:00"), "2024-05-01T08:00:00+00:00");
        assert_eq!(t("2024-05-01"), "2024-05-01T00:00:00+00:00");
        assert_eq!(t("24h"), "2024-05-09T12:00:00+00:00");
        assert_eq!(t("7d"), "2024-05-03T12:00:00+00:00");
        assert_eq!(t(" 30m "), "2024-05-10T11:30:00+00:00");
        for bad in ["", "yesterday", "2024-13-01", "-5m"] {
            let err = parse_time(bad, now).unwrap_err().to_string();
            assert!(err.contains("RFC 3339"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn page_limits_are_bounded() {
        assert_eq!(Page::default().limit(), DEFAULT_PAGE_LIMIT);
        assert!(Page::new(1, None).is_ok());
        assert!(Page::new(MAX_PAGE_LIMIT, Some(7)).is_ok());
        assert_eq!(Page::new(0, None), Err(InvalidLimit(0)));
        let err = Page::new(1001, None).unwrap_err().to_string();
        assert!(err.contains("1 to 1000"), "{err}");
    }

    #[test]
    fn predicates_number_only_the_set_fields() {
        let filter = DeadFilter {
            event_type: Some("order.placed".into()),
            ids: Some(vec![1, 2]),
            ..DeadFilter::default()
        };
        let mut p = Predicates::dead(&filter);
        assert_eq!(
            p.sql,
            "status = 'dead' AND event_type = $1 AND id = ANY($2)"
        );
        assert_eq!(p.param(&5_i64), "$3");
        assert_eq!(p.params.len(), 3);
        assert!(!filter.is_empty());
        assert!(DeadFilter::default().is_empty());
    }
}
