//! The one mapping from an outbox row to an [`OutboxEvent`], used by the replication
//! stream (a pgoutput tuple, text or binary columns) and by the sweeper (a row it read,
//! binary columns): both resolve the columns by name into an [`OutboxSchema`] and map each
//! row's [`Cells`] with [`OutboxSchema::map_row`], so a row reads the same whichever way it
//! comes, and fails the same way.
//!
//! Two failure kinds, kept apart because the relay reacts differently:
//! - [`SchemaError`]: the table is not what the relay can process (a column missing or of
//!   another type). The stream stops (no ack) until an operator acts.
//! - [`RowError`]: one row cannot be mapped (NULL in a required column, an infinite
//!   timestamp, headers not an object). The relay dead-letters that row with the reason
//!   and goes on. Reasons name the column and the problem, never a value of `headers`.
//!
//! Pure: no I/O. Text values are parsed as a walsender session with `TimeZone=UTC` and
//! `DateStyle=ISO` renders them (the replication client pins both); binary values as
//! PostgreSQL's send functions write them.

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::OutboxEvent;

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A PostgreSQL timestamp (microseconds since 2000-01-01 UTC, as the binary format and
/// the replication protocol carry it) as a UTC time.
///
/// Returns `None` for `infinity`/`-infinity` (`i64::MAX`/`i64::MIN`) and for values chrono
/// cannot represent.
pub fn pg_timestamp_to_datetime(micros: i64) -> Option<DateTime<Utc>> {
    if micros == i64::MAX || micros == i64::MIN {
        return None;
    }
    let unix = micros.checked_add(PG_EPOCH_OFFSET_MICROS)?;
    DateTime::from_timestamp_micros(unix)
}

/// One column of a row as it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    /// SQL NULL.
    Null,
    /// The type's text output.
    Text(&'a Bytes),
    /// The type's binary send format.
    Binary(&'a Bytes),
    /// pgoutput's placeholder for an unchanged TOASTed value (never valid in an INSERT).
    UnchangedToast,
}

/// A row's columns by position.
pub trait Cells {
    /// How many columns the row has.
    fn count(&self) -> usize;
    /// Column `index`, or `None` past the end.
    fn cell(&self, index: usize) -> Option<Cell<'_>>;
}

/// A row read over SQL: NULL or the binary value of each column.
impl Cells for [Option<Bytes>] {
    fn count(&self) -> usize {
        self.len()
    }

    fn cell(&self, index: usize) -> Option<Cell<'_>> {
        self.get(index)
            .map(|value| value.as_ref().map_or(Cell::Null, Cell::Binary))
    }
}

/// Built-in type OIDs the outbox columns may have (fixed in `pg_type.dat`).
pub mod type_oid {
    /// `integer`
    pub const INT4: u32 = 23;
    /// `bigint`
    pub const INT8: u32 = 20;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `character varying`
    pub const VARCHAR: u32 = 1043;
    /// `json`
    pub const JSON: u32 = 114;
    /// `jsonb`
    pub const JSONB: u32 = 3802;
    /// `timestamp with time zone`
    pub const TIMESTAMPTZ: u32 = 1184;
}

fn type_name(oid: u32) -> String {
    match oid {
        type_oid::INT4 => "int4".into(),
        type_oid::INT8 => "int8".into(),
        type_oid::TEXT => "text".into(),
        type_oid::VARCHAR => "varchar".into(),
        type_oid::JSON => "json".into(),
        type_oid::JSONB => "jsonb".into(),
        type_oid::TIMESTAMPTZ => "timestamptz".into(),
        16 => "bool".into(),
        17 => "bytea".into(),
        1082 => "date".into(),
        1114 => "timestamp".into(),
        2950 => "uuid".into(),
        other => format!("type oid {other}"),
    }
}

/// The outbox table's shape cannot be processed. Stop the stream; an operator must act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "outbox table \"{table}\" has no column \"{column}\" ({wanted}); run `dispatchbox \
         migrate` or add the column (if the publication has a column list, include it)"
    )]
    MissingColumn {
        table: String,
        column: &'static str,
        wanted: &'static str,
    },
    #[error(
        "outbox table \"{table}\" column \"{column}\" has type {found}, expected {accepted}; \
         run `dispatchbox migrate` or alter the column type"
    )]
    WrongType {
        table: String,
        column: &'static str,
        accepted: &'static str,
        found: String,
    },
}

/// One outbox row cannot be turned into an event. The relay marks it `dead` with `reason`
/// and continues with the next row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox row {}: {reason}", RowId(*.id))]
pub struct RowError {
    /// The row's `id`, when it could be read.
    pub id: Option<i64>,
    pub reason: String,
}

struct RowId(Option<i64>);

impl fmt::Display for RowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("with unreadable id"),
        }
    }
}

/// Where one needed column sits in the tuple and which type it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    index: usize,
    type_oid: u32,
}

/// Column positions of the outbox table, resolved by name from a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxSchema {
    table: String,
    column_count: usize,
    id: Field,
    aggregate_type: Field,
    aggregate_id: Field,
    event_type: Field,
    payload: Field,
    created_at: Field,
    headers: Option<Field>,
    next_run_at: Option<Field>,
}

struct Spec {
    name: &'static str,
    wanted: &'static str,
    accepted: &'static str,
    oids: &'static [u32],
}

const ID: Spec = Spec {
    name: "id",
    wanted: "bigint",
    accepted: "int8 or int4",
    oids: &[type_oid::INT8, type_oid::INT4],
};
const TEXT_TYPES: &[u32] = &[type_oid::TEXT, type_oid::VARCHAR];
const JSON_TYPES: &[u32] = &[type_oid::JSONB, type_oid::JSON];
const AGGREGATE_TYPE: Spec = text_spec("aggregate_type");
const AGGREGATE_ID: Spec = text_spec("aggregate_id");
const EVENT_TYPE: Spec = text_spec("event_type");
const PAYLOAD: Spec = Spec {
    name: "payload",
    wanted: "jsonb",
    accepted: "jsonb or json",
    oids: JSON_TYPES,
};
const CREATED_AT: Spec = timestamptz_spec("created_at");
const HEADERS: Spec = Spec {
    name: "headers",
    wanted: "jsonb",
    accepted: "jsonb or json",
    oids: JSON_TYPES,
};
const NEXT_RUN_AT: Spec = timestamptz_spec("next_run_at");

const fn text_spec(name: &'static str) -> Spec {
    Spec {
        name,
        wanted: "text",
        accepted: "text or varchar",
        oids: TEXT_TYPES,
    }
}

const fn timestamptz_spec(name: &'static str) -> Spec {
    Spec {
        name,
        wanted: "timestamptz",
        accepted: "timestamptz",
        oids: &[type_oid::TIMESTAMPTZ],
    }
}

impl OutboxSchema {
    /// Resolves the outbox columns by name among `columns` (`(name, type OID)` in row
    /// order: a pgoutput Relation's, or a SELECT's) and checks their types.
    ///
    /// Required: `id` (int8/int4), `aggregate_type`, `aggregate_id`, `event_type`
    /// (text/varchar), `payload` (jsonb/json), `created_at` (timestamptz). Optional:
    /// `headers` (jsonb/json), `next_run_at` (timestamptz). Other columns are ignored.
    pub fn resolve(table: String, columns: &[(&str, u32)]) -> Result<Self, SchemaError> {
        let find = |spec: &Spec| -> Result<Option<Field>, SchemaError> {
            let Some((index, &(_, type_oid))) = columns
                .iter()
                .enumerate()
                .find(|(_, (name, _))| *name == spec.name)
            else {
                return Ok(None);
            };
            if !spec.oids.contains(&type_oid) {
                return Err(SchemaError::WrongType {
                    table: table.clone(),
                    column: spec.name,
                    accepted: spec.accepted,
                    found: type_name(type_oid),
                });
            }
            Ok(Some(Field { index, type_oid }))
        };
        let required = |spec: &Spec| -> Result<Field, SchemaError> {
            find(spec)?.ok_or_else(|| SchemaError::MissingColumn {
                table: table.clone(),
                column: spec.name,
                wanted: spec.wanted,
            })
        };
        Ok(Self {
            id: required(&ID)?,
            aggregate_type: required(&AGGREGATE_TYPE)?,
            aggregate_id: required(&AGGREGATE_ID)?,
            event_type: required(&EVENT_TYPE)?,
            payload: required(&PAYLOAD)?,
            created_at: required(&CREATED_AT)?,
            headers: find(&HEADERS)?,
            next_run_at: find(&NEXT_RUN_AT)?,
            column_count: columns.len(),
            table,
        })
    }

    /// The table, as named when resolved.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// How many columns a row of this table has.
    pub fn column_count(&self) -> usize {
        self.column_count
    }

    /// The position of `id` among the columns.
    pub fn id_index(&self) -> usize {
        self.id.index
    }

    /// Reads only the row's `id` (e.g. from the leading columns of an oversized row).
    pub fn read_id<C: Cells + ?Sized>(&self, columns: &C) -> Result<i64, RowError> {
        Row { columns, id: None }.id(self.id)
    }

    /// Maps a row (text or binary columns) to an event.
    pub fn map_row<C: Cells + ?Sized>(&self, columns: &C) -> Result<OutboxEvent, RowError> {
        let row = Row { columns, id: None };
        let id = row.id(self.id)?;
        let row = Row {
            id: Some(id),
            ..row
        };
        Ok(OutboxEvent {
            id,
            aggregate_type: row.text(self.aggregate_type, "aggregate_type")?,
            aggregate_id: row.text(self.aggregate_id, "aggregate_id")?,
            event_type: row.text(self.event_type, "event_type")?,
            payload: row.json(self.payload, "payload")?,
            headers: match self.headers {
                Some(field) => row.headers(field)?,
                None => Vec::new(),
            },
            created_at: row.timestamp(self.created_at, "created_at")?,
            next_run_at: match self.next_run_at {
                Some(field) => row.optional_timestamp(field, "next_run_at")?,
                None => None,
            },
        })
    }
}

/// One tuple being mapped; carries the id once known so every error can name the row.
struct Row<'a, C: ?Sized> {
    columns: &'a C,
    id: Option<i64>,
}

impl<C: ?Sized> Clone for Row<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C: ?Sized> Copy for Row<'_, C> {}

/// A non-NULL column value.
enum Value<'a> {
    Text(&'a Bytes),
    Binary(&'a Bytes),
}

impl<'a, C: Cells + ?Sized> Row<'a, C> {
    fn error(&self, reason: String) -> RowError {
        RowError {
            id: self.id,
            reason,
        }
    }

    fn value(&self, field: Field, name: &str) -> Result<Option<Value<'a>>, RowError> {
        match self.columns.cell(field.index) {
            Some(Cell::Null) => Ok(None),
            Some(Cell::Text(b)) => Ok(Some(Value::Text(b))),
            Some(Cell::Binary(b)) => Ok(Some(Value::Binary(b))),
            Some(Cell::UnchangedToast) => Err(self.error(format!(
                "column \"{name}\" arrived as an unchanged-TOAST placeholder, which an INSERT \
                 cannot carry"
            ))),
            None => Err(self.error(format!(
                "column \"{name}\" is missing from the tuple ({} column(s))",
                self.columns.count()
            ))),
        }
    }

    fn required(&self, field: Field, name: &str) -> Result<Value<'a>, RowError> {
        self.value(field, name)?
            .ok_or_else(|| self.error(format!("column \"{name}\" is NULL")))
    }

    fn utf8(&self, bytes: &'a [u8], name: &str) -> Result<&'a str, RowError> {
        std::str::from_utf8(bytes)
            .map_err(|_| self.error(format!("column \"{name}\" is not valid UTF-8")))
    }

    fn id(&self, field: Field) -> Result<i64, RowError> {
        match self.required(field, "id")? {
            Value::Text(b) => {
                let s = self.utf8(b, "id")?;
                s.parse::<i64>()
                    .map_err(|_| self.error(format!("column \"id\" is not an integer: {s:?}")))
            }
            Value::Binary(b) => {
                let id = if field.type_oid == type_oid::INT8 {
                    fixed(b).map(i64::from_be_bytes)
                } else {
                    fixed(b).map(|v| i64::from(i32::from_be_bytes(v)))
                };
                id.ok_or_else(|| {
                    self.error(format!(
                        "column \"id\" has {} binary byte(s), expected {}",
                        b.len(),
                        if field.type_oid == type_oid::INT8 {
                            8
                        } else {
                            4
                        }
                    ))
                })
            }
        }
    }

    fn text(&self, field: Field, name: &str) -> Result<String, RowError> {
        // textsend/varcharsend send the same bytes as the text output.
        let (Value::Text(b) | Value::Binary(b)) = self.required(field, name)?;
        Ok(self.utf8(b, name)?.to_owned())
    }

    /// JSON text, zero-copy: jsonb's binary form is a version byte (1) plus the text.
    fn json_bytes(&self, field: Field, name: &str) -> Result<Option<Bytes>, RowError> {
        let bytes = match self.value(field, name)? {
            None => return Ok(None),
            Some(Value::Text(b)) => b.clone(),
            Some(Value::Binary(b)) if field.type_oid == type_oid::JSONB => match b.first() {
                Some(1) => b.slice(1..),
                Some(v) => {
                    return Err(self.error(format!(
                        "column \"{name}\" has unsupported jsonb binary version {v}"
                    )))
                }
                None => return Err(self.error(format!("column \"{name}\" has empty jsonb binary"))),
            },
            Some(Value::Binary(b)) => b.clone(),
        };
        self.utf8(&bytes, name)?;
        Ok(Some(bytes))
    }

    fn json(&self, field: Field, name: &str) -> Result<Bytes, RowError> {
        self.json_bytes(field, name)?
            .ok_or_else(|| self.error(format!("column \"{name}\" is NULL")))
    }

    fn headers(&self, field: Field) -> Result<Vec<(String, String)>, RowError> {
        let Some(bytes) = self.json_bytes(field, "headers")? else {
            return Ok(Vec::new());
        };
        header_entries(&bytes).map_err(|reason| self.error(reason))
    }

    fn optional_timestamp(
        &self,
        field: Field,
        name: &str,
    ) -> Result<Option<DateTime<Utc>>, RowError> {
        let Some(value) = self.value(field, name)? else {
            return Ok(None);
        };
        match value {
            Value::Text(b) => {
                let s = self.utf8(b, name)?;
                parse_timestamptz(s)
                    .map(Some)
                    .map_err(|why| self.error(format!("column \"{name}\" {why}: {s:?}")))
            }
            Value::Binary(b) => {
                let micros = fixed(b).map(i64::from_be_bytes).ok_or_else(|| {
                    self.error(format!(
                        "column \"{name}\" has {} binary byte(s), expected 8",
                        b.len()
                    ))
                })?;
                pg_timestamp_to_datetime(micros).map(Some).ok_or_else(|| {
                    self.error(format!(
                        "column \"{name}\" is infinite or out of range; an outbox timestamp \
                         must be finite"
                    ))
                })
            }
        }
    }

    fn timestamp(&self, field: Field, name: &str) -> Result<DateTime<Utc>, RowError> {
        self.optional_timestamp(field, name)?
            .ok_or_else(|| self.error(format!("column \"{name}\" is NULL")))
    }
}

fn fixed<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
    <[u8; N]>::try_from(b).ok()
}

/// Parses timestamptz text output under `DateStyle=ISO`: `2026-11-23 02:33:19.001946+00`,
/// with or without fraction, offsets `+HH`, `+HH:MM` or `+HH:MM:SS`.
pub(crate) fn parse_timestamptz(s: &str) -> Result<DateTime<Utc>, &'static str> {
    if let Some(utc) = parse_utc_fast(s) {
        return Ok(utc);
    }
    if s == "infinity" || s == "-infinity" {
        return Err("is infinite; an outbox timestamp must be finite");
    }
    if s.ends_with(" BC") {
        return Err("is a BC date");
    }
    // chrono's %#z does not take seconds in the offset (historic LMT zones print them);
    // fold `+HH:MM:SS` into the parse by splitting it off.
    let (base, extra_secs) = split_offset_seconds(s);
    let parsed = DateTime::parse_from_str(base, "%Y-%m-%d %H:%M:%S%.f%#z")
        .map_err(|_| "is not an ISO timestamp with a UTC offset")?;
    // Checked: at the first or last instant chrono represents, the offset's seconds can
    // carry the time out of range (found by scripts/fuzz).
    parsed
        .with_timezone(&Utc)
        .checked_sub_signed(chrono::Duration::seconds(extra_secs))
        .ok_or("is out of range")
}

/// The shape the walsender renders every timestamp in (the session pins `TimeZone=UTC` and
/// `DateStyle=ISO`): `YYYY-MM-DD HH:MM:SS[.f…]+00`, read without chrono's format machinery
/// (it runs twice per event). `None` for anything else, which takes the general path.
pub(crate) fn parse_utc_fast(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let body = b.strip_suffix(b"+00")?;
    if body.len() < 19 || body[4] != b'-' || body[7] != b'-' || body[10] != b' ' {
        return None;
    }
    if body[13] != b':' || body[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        body.get(range)?.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let micros = match body.get(19..) {
        Some([]) => 0,
        Some([b'.', digits @ ..]) if (1..=6).contains(&digits.len()) => {
            let n = num(20..body.len())?;
            n * 10u32.pow(6 - digits.len() as u32)
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let time =
        chrono::NaiveTime::from_hms_micro_opt(num(11..13)?, num(14..16)?, num(17..19)?, micros)?;
    Some(date.and_time(time).and_utc())
}

/// Splits a trailing `:SS` seconds part off a `±HH:MM:SS` offset; returns the signed
/// seconds to subtract from the result.
pub(crate) fn split_offset_seconds(s: &str) -> (&str, i64) {
    let bytes = s.as_bytes();
    let n = bytes.len();
    // ...±HH:MM:SS: sign at n-9, colons at n-6 and n-3.
    if n >= 9
        && matches!(bytes.get(n - 9), Some(b'+' | b'-'))
        && bytes.get(n - 6) == Some(&b':')
        && bytes.get(n - 3) == Some(&b':')
    {
        if let (Some(base), Ok(secs)) =
            (s.get(..n - 3), s.get(n - 2..).unwrap_or("").parse::<i64>())
        {
            let sign = if bytes.get(n - 9) == Some(&b'-') {
                -1
            } else {
                1
            };
            return (base, sign * secs);
        }
    }
    (s, 0)
}

/// The string entries of a `headers` JSON text, in document order (non-string values are
/// skipped). Shared by the stream mapping and the sweeper so both read a row the same way.
/// Errs with the reason to dead-letter the row when the text is not a JSON object.
pub fn header_entries(json: &[u8]) -> Result<Vec<(String, String)>, String> {
    // serde_json's messages quote the offending value; a reason is stored and logged, and
    // header values may be secrets, so it says only what kind of text it found.
    let entries: OrderedObject = serde_json::from_slice(json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!(
            "column \"headers\" is not a JSON object but {}",
            json_kind(json)
        ),
        _ => format!(
            "column \"headers\" is not valid JSON (at line {} column {})",
            e.line(),
            e.column()
        ),
    })?;
    Ok(entries
        .0
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s)),
            _ => None,
        })
        .collect())
}

/// "an array", "a string" …: the kind of the JSON value `json` starts with.
fn json_kind(json: &[u8]) -> &'static str {
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'{') => "an object with a value of an unexpected kind",
        _ => "a number",
    }
}

/// A JSON object's entries in document order (serde_json's `Map` sorts without the
/// `preserve_order` feature).
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedObject, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(OrderedObject(entries))
            }
        }
        d.deserialize_map(Visitor)
    }
}
