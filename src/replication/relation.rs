//! The relation cache and the mapping from outbox-table INSERTs to [`OutboxEvent`]s.
//!
//! Owns: remembering the latest Relation message per relation OID, checking that the
//! configured outbox table has the columns dispatchbox needs (by column NAME, so extra
//! columns and any column order work), and turning an Insert's new tuple into an event.
//!
//! It keeps the two failure kinds apart, because the relay reacts to them differently:
//! - [`SchemaError`] / [`RelationError`]: the table or the stream is not what we can
//!   process. The stream must stop (no ack) until an operator acts or we reconnect.
//! - [`RowError`]: one row cannot be mapped (NULL in a required column, bad timestamp,
//!   headers not an object). The relay dead-letters that row with the reason and continues.
//!
//! Pure: no I/O, no SQL. Text-mode values are parsed assuming the walsender session runs
//! with `TimeZone=UTC` and `DateStyle=ISO` (the replication client pins both).

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::event::OutboxEvent;
use crate::replication::pgoutput::{
    pg_timestamp_to_datetime, Column, Insert, InsertPrefix, Relation, TupleData,
};

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

/// A DML message referred to a relation we cannot use. The stream is out of sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelationError {
    #[error(
        "pgoutput change for relation oid {oid} arrived before its Relation message; the \
         replication stream is out of sync (reconnecting resends the Relation)"
    )]
    UnknownRelation { oid: u32 },
    #[error(
        "pgoutput Insert into \"{table}\" has {found} column(s) but its Relation message \
         declared {expected}; the replication stream is out of sync"
    )]
    ColumnCountMismatch {
        table: String,
        expected: usize,
        found: usize,
    },
    /// An Insert into the outbox table whose last Relation failed validation: never skip
    /// such a row silently.
    #[error(transparent)]
    Schema(#[from] SchemaError),
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

/// The configured outbox table (`namespace.name`, unquoted, as stored in the catalog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTable {
    pub namespace: String,
    pub name: String,
}

impl OutboxTable {
    /// The table `namespace.name` (catalog spelling: no quotes, exact case).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Whether `relation` is this table.
    pub fn matches(&self, relation: &Relation) -> bool {
        let namespace = if relation.namespace.is_empty() {
            "pg_catalog"
        } else {
            relation.namespace.as_str()
        };
        namespace == self.namespace && relation.name == self.name
    }
}

impl fmt::Display for OutboxTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace, self.name)
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
    /// Resolves the outbox columns of `relation` by name and checks their types.
    ///
    /// Required: `id` (int8/int4), `aggregate_type`, `aggregate_id`, `event_type`
    /// (text/varchar), `payload` (jsonb/json), `created_at` (timestamptz). Optional:
    /// `headers` (jsonb/json), `next_run_at` (timestamptz). Other columns are ignored.
    pub fn from_relation(relation: &Relation) -> Result<Self, SchemaError> {
        let table = relation.qualified_name();
        let find = |spec: &Spec| -> Result<Option<Field>, SchemaError> {
            let Some((index, column)) = relation
                .columns
                .iter()
                .enumerate()
                .find(|(_, c)| c.name == spec.name)
            else {
                return Ok(None);
            };
            if !spec.oids.contains(&column.type_oid) {
                return Err(SchemaError::WrongType {
                    table: table.clone(),
                    column: spec.name,
                    accepted: spec.accepted,
                    found: type_name(column.type_oid),
                });
            }
            Ok(Some(Field {
                index,
                type_oid: column.type_oid,
            }))
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
            column_count: relation.columns.len(),
            table,
        })
    }

    /// Maps an Insert's new tuple (text or binary columns) to an event.
    pub fn map_row(&self, tuple: &TupleData) -> Result<OutboxEvent, RowError> {
        let row = Row {
            columns: &tuple.0,
            id: None,
        };
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

/// What happened to one Insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// An outbox row, ready to dispatch.
    Event(OutboxEvent),
    /// An outbox row that cannot be mapped: dead-letter it with the reason.
    Dead(RowError),
    /// A row of another published table; not ours.
    Ignored,
}

/// What an Insert too large to receive whole is, judged from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OversizedInsert {
    /// A row of another published table; not ours.
    Ignored,
    /// An outbox row whose `id` was read.
    Outbox { id: i64 },
    /// An outbox row whose `id` is not among the columns received, or cannot be read: it
    /// cannot be marked, so it must not be acknowledged either.
    UnknownId { reason: String },
}

/// The relations of this replication connection plus the outbox mapping, as the stream
/// loop uses them: feed every Relation to [`OutboxMapper::on_relation`] and every Insert
/// to [`OutboxMapper::map_insert`]. The server sends Relations per walsender session, so
/// each connection starts with a new mapper.
#[derive(Debug, Clone)]
pub struct OutboxMapper {
    table: OutboxTable,
    /// Every relation OID announced on this connection (a later Relation replaces an
    /// earlier one): `None` for another table, the validated schema for the outbox table
    /// (a failed validation is kept so later Inserts fail loudly).
    relations: HashMap<u32, Option<Result<OutboxSchema, SchemaError>>>,
}

impl OutboxMapper {
    /// A mapper for the configured outbox `table`.
    pub fn new(table: OutboxTable) -> Self {
        Self {
            table,
            relations: HashMap::new(),
        }
    }

    /// Records `relation` (replacing any earlier one) and, if it is the outbox table,
    /// validates its columns. A [`SchemaError`] means the stream must stop.
    pub fn on_relation(&mut self, relation: Relation) -> Result<(), SchemaError> {
        let schema = self
            .table
            .matches(&relation)
            .then(|| OutboxSchema::from_relation(&relation));
        let result = match &schema {
            Some(Err(err)) => Err(err.clone()),
            _ => Ok(()),
        };
        self.relations.insert(relation.oid, schema);
        result
    }

    /// True when `relation` announces, under another name, a relation that was the outbox
    /// table on this connection: the table was renamed or moved, and its inserts would
    /// otherwise be passed over as another table's.
    pub fn renames_outbox(&self, relation: &Relation) -> bool {
        matches!(self.relations.get(&relation.oid), Some(Some(_))) && !self.table.matches(relation)
    }

    /// Maps an Insert. `Err` means the stream is out of sync; `Ok(Dead(..))` means only this
    /// row is bad.
    pub fn map_insert(&self, insert: &Insert) -> Result<InsertOutcome, RelationError> {
        let schema = match self.relations.get(&insert.relation_oid) {
            None => {
                return Err(RelationError::UnknownRelation {
                    oid: insert.relation_oid,
                })
            }
            Some(None) => return Ok(InsertOutcome::Ignored),
            Some(Some(Err(err))) => return Err(err.clone().into()),
            Some(Some(Ok(schema))) => schema,
        };
        if insert.new.0.len() != schema.column_count {
            return Err(RelationError::ColumnCountMismatch {
                table: schema.table.clone(),
                expected: schema.column_count,
                found: insert.new.0.len(),
            });
        }
        Ok(match schema.map_row(&insert.new) {
            Ok(event) => InsertOutcome::Event(event),
            Err(err) => InsertOutcome::Dead(err),
        })
    }
}

impl OutboxMapper {
    /// Reads what an oversized Insert is from its leading columns: another table's row,
    /// or an outbox row and its `id` (the rest of the row is not needed to mark it dead).
    /// `Err` means the stream is out of sync, as for [`OutboxMapper::map_insert`].
    pub fn map_oversized_insert(
        &self,
        insert: &InsertPrefix,
    ) -> Result<OversizedInsert, RelationError> {
        let schema = match self.relations.get(&insert.relation_oid) {
            None => {
                return Err(RelationError::UnknownRelation {
                    oid: insert.relation_oid,
                })
            }
            Some(None) => return Ok(OversizedInsert::Ignored),
            Some(Some(Err(err))) => return Err(err.clone().into()),
            Some(Some(Ok(schema))) => schema,
        };
        if insert.column_count != schema.column_count {
            return Err(RelationError::ColumnCountMismatch {
                table: schema.table.clone(),
                expected: schema.column_count,
                found: insert.column_count,
            });
        }
        if schema.id.index >= insert.columns.len() {
            return Ok(OversizedInsert::UnknownId {
                reason: format!(
                    "column \"id\" (column {} of {}) lies beyond the first {} column(s) \
                     received",
                    schema.id.index + 1,
                    schema.column_count,
                    insert.columns.len()
                ),
            });
        }
        let row = Row {
            columns: &insert.columns,
            id: None,
        };
        Ok(match row.id(schema.id) {
            Ok(id) => OversizedInsert::Outbox { id },
            Err(error) => OversizedInsert::UnknownId {
                reason: error.reason,
            },
        })
    }
}

/// One tuple being mapped; carries the id once known so every error can name the row.
#[derive(Clone, Copy)]
struct Row<'a> {
    columns: &'a [Column],
    id: Option<i64>,
}

/// A non-NULL column value.
enum Value<'a> {
    Text(&'a Bytes),
    Binary(&'a Bytes),
}

impl<'a> Row<'a> {
    fn error(&self, reason: String) -> RowError {
        RowError {
            id: self.id,
            reason,
        }
    }

    fn value(&self, field: Field, name: &str) -> Result<Option<Value<'a>>, RowError> {
        match self.columns.get(field.index) {
            Some(Column::Null) => Ok(None),
            Some(Column::Text(b)) => Ok(Some(Value::Text(b))),
            Some(Column::Binary(b)) => Ok(Some(Value::Binary(b))),
            Some(Column::UnchangedToast) => Err(self.error(format!(
                "column \"{name}\" arrived as an unchanged-TOAST placeholder, which an INSERT \
                 cannot carry"
            ))),
            None => Err(self.error(format!(
                "column \"{name}\" is missing from the tuple ({} column(s))",
                self.columns.len()
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
fn parse_timestamptz(s: &str) -> Result<DateTime<Utc>, &'static str> {
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
fn parse_utc_fast(s: &str) -> Option<DateTime<Utc>> {
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
fn split_offset_seconds(s: &str) -> (&str, i64) {
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
pub(crate) fn header_entries(json: &[u8]) -> Result<Vec<(String, String)>, String> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::{RelationColumn, ReplicaIdentity};

    fn col(name: &str, type_oid: u32) -> RelationColumn {
        RelationColumn {
            flags: u8::from(name == "id"),
            name: name.into(),
            type_oid,
            type_modifier: -1,
        }
    }

    fn relation(columns: Vec<RelationColumn>) -> Relation {
        Relation {
            xid: None,
            oid: 16388,
            namespace: "public".into(),
            name: "outbox_event".into(),
            replica_identity: ReplicaIdentity::Default,
            columns,
        }
    }

    /// The DESIGN.md table in its migration column order.
    fn design_relation() -> Relation {
        use type_oid::*;
        relation(vec![
            col("id", INT8),
            col("aggregate_type", TEXT),
            col("aggregate_id", TEXT),
            col("event_type", TEXT),
            col("payload", JSONB),
            col("status", TEXT),
            col("claim_token", TEXT),
            col("attempts", INT4),
            col("next_run_at", TIMESTAMPTZ),
            col("created_at", TIMESTAMPTZ),
            col("headers", JSONB),
            col("last_error", TEXT),
            col("last_error_at", TIMESTAMPTZ),
            col("delivered_at", TIMESTAMPTZ),
        ])
    }

    fn t(s: &str) -> Column {
        Column::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn design_row(headers: Column, created_at: &str) -> TupleData {
        TupleData(vec![
            t("42"),
            t("order"),
            t("o-1"),
            t("OrderPlaced"),
            t(r#"{"amount": 12.5}"#),
            t("pending"),
            Column::Null,
            t("0"),
            t("2026-11-23 02:33:19+00"),
            t(created_at),
            headers,
            Column::Null,
            Column::Null,
            Column::Null,
        ])
    }

    fn mapper() -> OutboxMapper {
        let mut m = OutboxMapper::new(OutboxTable::new("public", "outbox_event"));
        m.on_relation(design_relation()).unwrap();
        m
    }

    fn insert(new: TupleData) -> Insert {
        Insert {
            xid: None,
            relation_oid: 16388,
            new,
        }
    }

    fn dead(outcome: InsertOutcome) -> RowError {
        match outcome {
            InsertOutcome::Dead(e) => e,
            other => panic!("expected a dead row, got {other:?}"),
        }
    }

    fn prefix(relation_oid: u32, columns: Vec<Column>) -> InsertPrefix {
        InsertPrefix {
            xid: None,
            relation_oid,
            column_count: design_relation().columns.len(),
            columns,
        }
    }

    #[test]
    fn oversized_insert_is_judged_from_its_leading_columns() {
        let m = mapper();
        assert_eq!(
            m.map_oversized_insert(&prefix(16388, vec![t("42"), t("order")]))
                .unwrap(),
            OversizedInsert::Outbox { id: 42 }
        );
        // The id is not among the columns received: never guess.
        assert!(matches!(
            m.map_oversized_insert(&prefix(16388, Vec::new())).unwrap(),
            OversizedInsert::UnknownId { reason } if reason.contains("beyond")
        ));
        assert!(matches!(
            m.map_oversized_insert(&prefix(16388, vec![Column::Null])).unwrap(),
            OversizedInsert::UnknownId { reason } if reason.contains("NULL")
        ));
        // Another table of the publication is not ours; an unknown relation is a stream
        // out of sync, as is a column count the Relation did not declare.
        let mut m = m;
        let mut other = relation(vec![col("id", type_oid::INT8)]);
        other.oid = 7;
        other.name = "orders".into();
        m.on_relation(other).unwrap();
        assert_eq!(
            m.map_oversized_insert(&prefix(7, Vec::new())).unwrap(),
            OversizedInsert::Ignored
        );
        assert!(m.map_oversized_insert(&prefix(8, Vec::new())).is_err());
        let mut short = prefix(16388, vec![t("42")]);
        short.column_count = 3;
        assert!(m.map_oversized_insert(&short).is_err());
    }

    #[test]
    fn maps_design_table_row() {
        let row = design_row(
            t(r#"{"traceparent": "00-ab", "n": 1, "a": "x"}"#),
            "2026-11-23 02:33:19.001946+00",
        );
        let InsertOutcome::Event(e) = mapper().map_insert(&insert(row)).unwrap() else {
            panic!()
        };
        assert_eq!(e.id, 42);
        assert_eq!(e.aggregate_type, "order");
        assert_eq!(e.aggregate_id, "o-1");
        assert_eq!(e.event_type, "OrderPlaced");
        assert_eq!(&e.payload[..], br#"{"amount": 12.5}"#);
        assert_eq!(
            e.headers,
            vec![
                ("traceparent".to_string(), "00-ab".to_string()),
                ("a".to_string(), "x".to_string())
            ]
        );
        assert_eq!(e.created_at_rfc3339(), "2026-11-23T02:33:19.001946Z");
        assert_eq!(
            e.next_run_at.unwrap().to_rfc3339(),
            "2026-11-23T02:33:19+00:00"
        );
    }

    #[test]
    fn reordered_and_minimal_columns_map_by_name() {
        use type_oid::*;
        let rel = relation(vec![
            col("created_at", TIMESTAMPTZ),
            col("extra", 2950),
            col("payload", JSON),
            col("event_type", VARCHAR),
            col("aggregate_id", VARCHAR),
            col("aggregate_type", TEXT),
            col("id", INT4),
        ]);
        let schema = OutboxSchema::from_relation(&rel).unwrap();
        let row = TupleData(vec![
            t("2026-01-02 03:04:05.5+00"),
            t("b6f8c2a4-0000-0000-0000-000000000000"),
            t("[1, 2]"),
            t("E"),
            t("A1"),
            t("A"),
            t("7"),
        ]);
        let e = schema.map_row(&row).unwrap();
        assert_eq!((e.id, e.event_type.as_str()), (7, "E"));
        assert_eq!(&e.payload[..], b"[1, 2]");
        assert!(e.headers.is_empty());
        assert_eq!(e.next_run_at, None);
        assert_eq!(e.created_at_rfc3339(), "2026-01-02T03:04:05.500000Z");
    }

    #[test]
    fn missing_column_error_names_table_column_and_hint() {
        let mut rel = design_relation();
        rel.columns.retain(|c| c.name != "payload");
        let err = OutboxSchema::from_relation(&rel).unwrap_err();
        assert_eq!(
            err.to_string(),
            "outbox table \"public.outbox_event\" has no column \"payload\" (jsonb); run \
             `dispatchbox migrate` or add the column (if the publication has a column list, \
             include it)"
        );
    }

    #[test]
    fn wrong_types_are_schema_errors() {
        for (column, oid, found) in [
            ("payload", type_oid::TEXT, "text"),
            ("id", 2950, "uuid"),
            ("created_at", 1114, "timestamp"),
            ("headers", type_oid::TEXT, "text"),
            ("next_run_at", 99999, "type oid 99999"),
        ] {
            let mut rel = design_relation();
            for c in &mut rel.columns {
                if c.name == column {
                    c.type_oid = oid;
                }
            }
            let err = OutboxSchema::from_relation(&rel).unwrap_err();
            let SchemaError::WrongType {
                column: got,
                found: got_found,
                ..
            } = &err
            else {
                panic!("{err}")
            };
            assert_eq!((*got, got_found.as_str()), (column, found));
            assert!(
                err.to_string().contains("run `dispatchbox migrate`"),
                "{err}"
            );
        }
    }

    #[test]
    fn mapper_surfaces_schema_errors_only_for_the_outbox_table() {
        let mut m = OutboxMapper::new(OutboxTable::new("public", "outbox_event"));
        let mut other = relation(vec![col("x", type_oid::TEXT)]);
        other.oid = 1;
        other.name = "other".into();
        m.on_relation(other).unwrap();
        assert_eq!(
            m.map_insert(&Insert {
                xid: None,
                relation_oid: 1,
                new: TupleData(vec![t("v")])
            }),
            Ok(InsertOutcome::Ignored)
        );
        let mut broken = design_relation();
        broken.columns.retain(|c| c.name != "id");
        assert!(matches!(
            m.on_relation(broken),
            Err(SchemaError::MissingColumn { column: "id", .. })
        ));
        // Inserts into the broken table are errors, never silently ignored.
        assert!(matches!(
            m.map_insert(&insert(TupleData::default())),
            Err(RelationError::Schema(SchemaError::MissingColumn { .. }))
        ));
        // A later fixed Relation replaces the broken one.
        m.on_relation(design_relation()).unwrap();
        assert!(matches!(
            m.map_insert(&insert(design_row(Column::Null, "2026-01-01 00:00:00+00"))),
            Ok(InsertOutcome::Event(_))
        ));
    }

    #[test]
    fn unknown_relation_and_column_count_are_stream_errors() {
        let m = mapper();
        assert_eq!(
            m.map_insert(&Insert {
                xid: None,
                relation_oid: 5,
                new: TupleData::default()
            }),
            Err(RelationError::UnknownRelation { oid: 5 })
        );
        assert!(matches!(
            m.map_insert(&insert(TupleData(vec![t("1")]))),
            Err(RelationError::ColumnCountMismatch {
                expected: 14,
                found: 1,
                ..
            })
        ));
    }

    #[test]
    fn a_newer_relation_replaces_the_earlier_one() {
        let mut m = mapper();
        let mut newer = design_relation();
        newer.columns.push(col("added", type_oid::TEXT));
        m.on_relation(newer).unwrap();
        assert!(matches!(
            m.map_insert(&insert(design_row(Column::Null, "2026-01-01 00:00:00+00"))),
            Err(RelationError::ColumnCountMismatch {
                expected: 15,
                found: 14,
                ..
            })
        ));
    }

    #[test]
    fn nulls_in_required_columns_are_row_errors_with_id() {
        let m = mapper();
        let mut row = design_row(Column::Null, "2026-01-01 00:00:00+00");
        row.0[4] = Column::Null;
        let err = dead(m.map_insert(&insert(row)).unwrap());
        assert_eq!(err.id, Some(42));
        assert_eq!(err.to_string(), "outbox row 42: column \"payload\" is NULL");

        let mut row = design_row(Column::Null, "2026-01-01 00:00:00+00");
        row.0[0] = Column::Null;
        let err = dead(m.map_insert(&insert(row)).unwrap());
        assert_eq!(err.id, None);
        assert_eq!(
            err.to_string(),
            "outbox row with unreadable id: column \"id\" is NULL"
        );

        // NULL next_run_at and NULL headers are fine.
        let mut row = design_row(Column::Null, "2026-01-01 00:00:00+00");
        row.0[8] = Column::Null;
        let InsertOutcome::Event(e) = m.map_insert(&insert(row)).unwrap() else {
            panic!()
        };
        assert_eq!((e.next_run_at, e.headers.len()), (None, 0));

        let mut row = design_row(Column::Null, "2026-01-01 00:00:00+00");
        row.0[1] = Column::UnchangedToast;
        let err = dead(m.map_insert(&insert(row)).unwrap());
        assert!(err.reason.contains("unchanged-TOAST"), "{err}");
    }

    #[test]
    fn headers_variants() {
        let m = mapper();
        let map = |h: Column| m.map_insert(&insert(design_row(h, "2026-01-01 00:00:00+00")));
        let InsertOutcome::Event(e) = map(t("{}")).unwrap() else {
            panic!()
        };
        assert!(e.headers.is_empty());
        let InsertOutcome::Event(e) = map(t(r#"{"b": "2", "a": {"x": 1}, "c": null}"#)).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.headers, vec![("b".to_string(), "2".to_string())]);
        for (bad, says) in [
            (r#"["a"]"#, "is not a JSON object but an array"),
            (r#""s3cr3t""#, "is not a JSON object but a string"),
            ("3", "is not a JSON object but a number"),
            ("null", "is not a JSON object but null"),
            (
                r#"{"token": "s3cr3t""#,
                "is not valid JSON (at line 1 column",
            ),
            (
                r#"{"token": s3cr3t}"#,
                "is not valid JSON (at line 1 column",
            ),
        ] {
            let err = dead(map(t(bad)).unwrap());
            assert_eq!(err.id, Some(42));
            assert!(err.reason.starts_with("column \"headers\" "), "{err}");
            assert!(err.reason.contains(says), "{bad}: {err}");
            assert!(!err.reason.contains("s3cr3t"), "a header value in {err}");
        }
        // jsonb binary: version byte 1, then the text.
        let InsertOutcome::Event(e) =
            map(Column::Binary(Bytes::from_static(b"\x01{\"k\": \"v\"}"))).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.headers, vec![("k".to_string(), "v".to_string())]);
        let err = dead(map(Column::Binary(Bytes::from_static(b"\x02{}"))).unwrap());
        assert!(err.reason.contains("jsonb binary version 2"), "{err}");
    }

    #[test]
    fn timestamp_formats() {
        let ok = |s: &str| parse_timestamptz(s).unwrap().to_rfc3339();
        assert_eq!(
            ok("2026-11-23 02:33:19.001946+00"),
            "2026-11-23T02:33:19.001946+00:00"
        );
        assert_eq!(ok("2026-11-23 02:33:19+00"), "2026-11-23T02:33:19+00:00");
        assert_eq!(ok("2026-11-23 11:33:19+09"), "2026-11-23T02:33:19+00:00");
        assert_eq!(
            ok("2026-11-23 02:33:19.5+00:00"),
            "2026-11-23T02:33:19.500+00:00"
        );
        assert_eq!(ok("2026-11-22 21:03:19-05:30"), "2026-11-23T02:33:19+00:00");
        assert_eq!(
            ok("1883-11-18 11:55:00-04:56:02"),
            "1883-11-18T16:51:02+00:00"
        );
        // The fast path agrees with the general one on the walsender's own shape.
        for s in [
            "2026-11-23 02:33:19+00",
            "2026-11-23 02:33:19.1+00",
            "2026-11-23 02:33:19.000001+00",
            "1999-12-31 23:59:59.999999+00",
            "2024-02-29 00:00:00.5+00",
        ] {
            let base = split_offset_seconds(s).0;
            let general = DateTime::parse_from_str(base, "%Y-%m-%d %H:%M:%S%.f%#z")
                .unwrap()
                .with_timezone(&Utc);
            assert_eq!(parse_utc_fast(s), Some(general), "{s}");
        }
        for other in [
            "2026-11-23 02:33:19.1234567+00",
            "2026-02-30 02:33:19+00",
            "2026-11-23 24:00:00+00",
            "12026-11-23 02:33:19+00",
            "2026-11-23 02:33:19.+00",
            "2026-11-23 02:33:19+09",
        ] {
            assert_eq!(parse_utc_fast(other), None, "{other}");
        }
        for bad in [
            "infinity",
            "-infinity",
            "2026-11-23 02:33:19",
            "2026-11-23T02:33:19Z",
            "0044-03-15 12:00:00+00 BC",
            "",
        ] {
            assert!(parse_timestamptz(bad).is_err(), "{bad} parsed");
        }
        let m = mapper();
        let err = dead(
            m.map_insert(&insert(design_row(Column::Null, "infinity")))
                .unwrap(),
        );
        assert_eq!(
            err.to_string(),
            "outbox row 42: column \"created_at\" is infinite; an outbox timestamp must be \
             finite: \"infinity\""
        );
    }

    /// Seconds in the offset are applied after chrono's parse, which has checked only the
    /// range of the rest: at the edges of that range they are a row error, not a panic.
    #[test]
    fn offset_seconds_past_the_range_are_row_errors() {
        for edge in [
            "+262142-12-31 23:59:59-00:00:59",
            "+262142-12-31 23:59:60.123456-00:00:59",
            "-262143-01-01 00:00:00+00:00:59",
        ] {
            assert_eq!(parse_timestamptz(edge), Err("is out of range"), "{edge}");
        }
        assert!(parse_timestamptz("+262142-12-31 23:59:00-00:00:59").is_ok());
        let m = mapper();
        let err = dead(
            m.map_insert(&insert(design_row(
                Column::Null,
                "+262142-12-31 23:59:59-00:00:59",
            )))
            .unwrap(),
        );
        assert_eq!(
            err.to_string(),
            "outbox row 42: column \"created_at\" is out of range: \
             \"+262142-12-31 23:59:59-00:00:59\""
        );
    }

    #[test]
    fn binary_columns_map() {
        let m = mapper();
        let mut row = design_row(Column::Null, "unused");
        row.0[0] = Column::Binary(Bytes::copy_from_slice(&1206i64.to_be_bytes()));
        row.0[1] = Column::Binary(Bytes::from_static(b"order"));
        row.0[4] = Column::Binary(Bytes::from_static(b"\x01{\"amount\": 12.5}"));
        row.0[9] = Column::Binary(Bytes::copy_from_slice(
            &0x0003_03e7_199d_12f1i64.to_be_bytes(),
        ));
        let InsertOutcome::Event(e) = m.map_insert(&insert(row.clone())).unwrap() else {
            panic!()
        };
        assert_eq!(e.id, 1206);
        assert_eq!(&e.payload[..], br#"{"amount": 12.5}"#);
        assert_eq!(
            e.created_at,
            pg_timestamp_to_datetime(0x0003_03e7_199d_12f1).unwrap()
        );
        row.0[9] = Column::Binary(Bytes::copy_from_slice(&i64::MAX.to_be_bytes()));
        let err = dead(m.map_insert(&insert(row.clone())).unwrap());
        assert!(err.reason.contains("infinite"), "{err}");
        row.0[0] = Column::Binary(Bytes::from_static(&[0, 1]));
        let err = dead(m.map_insert(&insert(row)).unwrap());
        assert_eq!(err.id, None);
        assert!(err.reason.contains("2 binary byte(s), expected 8"), "{err}");
    }

    #[test]
    fn invalid_utf8_and_bad_id_are_row_errors() {
        let m = mapper();
        let mut row = design_row(Column::Null, "2026-01-01 00:00:00+00");
        row.0[4] = Column::Text(Bytes::from_static(b"\"\xff\""));
        let err = dead(m.map_insert(&insert(row)).unwrap());
        assert_eq!(err.reason, "column \"payload\" is not valid UTF-8");
        let mut row = design_row(Column::Null, "2026-01-01 00:00:00+00");
        row.0[0] = t("12a");
        let err = dead(m.map_insert(&insert(row)).unwrap());
        assert_eq!(err.reason, "column \"id\" is not an integer: \"12a\"");
    }
}
