//! Runs one [`Case`] the way the replication source would (CopyData → replication message →
//! stateful pgoutput decoder → relation cache and outbox mapping, plus the oversized-message
//! path) and checks, on every item, what the decoder and the mapping promise:
//!
//! - nothing panics (the caller catches panics; an invariant below that fails panics too);
//! - a message that decodes re-encodes to exactly its bytes, its tag is its first byte, every
//!   strict prefix of it is an error (all prefixes of short messages, a sample of field
//!   boundaries and other cut points of long ones) and one extra byte is a
//!   `TrailingBytes { count: 1 }` error (README "How it works", STYLE "Decoders");
//! - the stateful `Decoder` agrees with the pure `decode` except for the two stream-block
//!   errors, and opens/closes the block exactly on Stream Start/Stop;
//! - a decoded Insert read as an oversized prefix (`decode_insert_prefix`) yields its header
//!   and exactly the columns complete in the prefix, and `map_oversized_insert` agrees with
//!   `map_insert` (same errors, same row id) on the whole message and on every prefix;
//! - only the outbox table can fail validation; an event's payload is UTF-8;
//! - error texts render, decoder and mapping errors in lower case.
//!
//! Each outcome is recorded as a [`Label`] in a [`Trace`]: the fuzzer's histogram and its
//! test for new behaviour. Deterministic: no randomness, no clock, no I/O.

use bytes::Bytes;
use dispatchbox::source::client::{
    parse_copy_data, parse_oversized_copy_data, ProtocolError, ReplicationMessage,
    XLOG_DATA_HEADER_LEN,
};
use dispatchbox::source::pgoutput::{
    decode, decode_insert_prefix, Column, DecodeContext, DecodeError, Decoder, Insert,
    PgOutputMessage,
};
use dispatchbox::source::relation::{
    InsertOutcome, OutboxMapper, OversizedInsert, RelationError, SchemaError,
};

use super::case::{Case, Item};
use super::encode::encode_with_layout;

/// One kind of outcome: a stage and up to three static details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label(
    pub &'static str,
    pub &'static str,
    pub &'static str,
    pub &'static str,
);

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [self.0, self.1, self.2, self.3];
        let parts: Vec<&str> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        f.write_str(&parts.join(" / "))
    }
}

/// The outcomes of one run, in order (reused between runs to save allocations).
#[derive(Debug, Default)]
pub struct Trace {
    pub labels: Vec<Label>,
}

impl Trace {
    fn push(&mut self, label: Label) {
        self.labels.push(label);
    }
}

/// Longest message whose every strict prefix is decoded; longer ones get a sample.
const ALL_PREFIXES_UP_TO: usize = 64;
/// Field boundaries tried as cut points of a longer message, at most.
const BOUNDARY_SAMPLES: usize = 12;

/// Runs `case` from a fresh decoder and mapper, recording outcomes in `trace`. Panics when
/// an invariant does not hold, with a message naming the item and the invariant.
pub fn run(case: &Case, trace: &mut Trace) {
    let mut state = State {
        decoder: Decoder::new(case.protocol_version, case.streaming_parallel),
        mapper: OutboxMapper::new(case.table.clone()),
        case,
        trace,
    };
    for (at, item) in case.items.iter().enumerate() {
        match item {
            Item::Message(data) => state.message(at, data.clone()),
            Item::CopyData(payload) => state.copy_data(at, payload.clone()),
            Item::Oversized { len, prefix } => state.oversized(at, *len, prefix.clone()),
        }
    }
}

struct State<'a> {
    decoder: Decoder,
    mapper: OutboxMapper,
    case: &'a Case,
    trace: &'a mut Trace,
}

impl State<'_> {
    fn copy_data(&mut self, at: usize, payload: Bytes) {
        match parse_copy_data(payload.clone()) {
            Ok(ReplicationMessage::XLogData(x)) => {
                self.trace.push(Label("copy", "xlogdata", "", ""));
                assert!(
                    payload.len() >= XLOG_DATA_HEADER_LEN && payload.first() == Some(&b'w'),
                    "item {at}: XLogData accepted from a payload without its 25-byte header"
                );
                assert_eq!(
                    x.data,
                    payload.slice(XLOG_DATA_HEADER_LEN..),
                    "item {at}: XLogData data is not the payload after its header"
                );
                assert_eq!(
                    x.wal_start.0,
                    be_u64(&payload[1..9]),
                    "item {at}: XLogData wal_start"
                );
                self.message(at, x.data);
            }
            Ok(ReplicationMessage::PrimaryKeepalive(_)) => {
                self.trace.push(Label("copy", "keepalive", "", ""));
                assert_eq!(payload.len(), 18, "item {at}: keepalive of the wrong size");
            }
            Ok(ReplicationMessage::OversizedXLogData(_)) => {
                panic!("item {at}: parse_copy_data returned an OversizedXLogData")
            }
            Err(e) => self.protocol_error("copy-err", &e),
        }
    }

    fn oversized(&mut self, at: usize, len: usize, prefix: Bytes) {
        let x = match parse_oversized_copy_data(len, prefix.clone()) {
            Ok(ReplicationMessage::OversizedXLogData(x)) => x,
            Ok(_) => panic!("item {at}: parse_oversized_copy_data returned a whole message"),
            Err(e) => return self.protocol_error("oversized-err", &e),
        };
        assert_eq!(
            x.len,
            len.saturating_sub(XLOG_DATA_HEADER_LEN),
            "item {at}: oversized XLogData length"
        );
        assert_eq!(
            x.prefix,
            prefix.slice(XLOG_DATA_HEADER_LEN..),
            "item {at}: oversized XLogData prefix"
        );
        // What the source does (source.rs, handle_oversized): only an Insert is read.
        if x.prefix.first() != Some(&b'I') {
            self.trace.push(Label("oversized", "not an insert", "", ""));
            return;
        }
        let ctx = *self.decoder.context();
        let insert = match decode_insert_prefix(x.prefix.clone(), &ctx) {
            Ok(insert) => insert,
            Err(e) => {
                self.trace
                    .push(decode_error_label("oversized-decode-err", &e));
                check_error_text(at, &e.to_string());
                return;
            }
        };
        assert!(
            insert.columns.len() <= insert.column_count,
            "item {at}: oversized Insert has more columns than it declares"
        );
        let label = match self.mapper.map_oversized_insert(&insert) {
            Ok(OversizedInsert::Ignored) => Label("oversized", "ignored", "", ""),
            Ok(OversizedInsert::Outbox { .. }) => Label("oversized", "outbox row", "", ""),
            Ok(OversizedInsert::UnknownId { reason }) => {
                check_error_text(at, &reason);
                Label("oversized", "unknown id", "", "")
            }
            Err(e) => {
                check_error_text(at, &e.to_string());
                relation_error_label("oversized-map-err", &e)
            }
        };
        self.trace.push(label);
    }

    fn message(&mut self, at: usize, data: Bytes) {
        let ctx = *self.decoder.context();
        let pure = decode(data.clone(), &ctx);
        let stateful = self.decoder.decode(data.clone());
        self.check_decoder_state(at, &ctx, &pure, &stateful);
        match &pure {
            Ok(msg) => {
                self.trace.push(Label(
                    "decode",
                    message_name(msg),
                    if ctx.in_stream { "in stream" } else { "" },
                    "",
                ));
                check_valid_message(at, &data, &ctx, msg);
            }
            Err(e) => {
                self.trace.push(decode_error_label("decode-err", e));
                check_error_text(at, &e.to_string());
            }
        }
        match stateful {
            Ok(PgOutputMessage::Relation(relation)) => {
                let renames = self.mapper.renames_outbox(&relation);
                let ours = self.case.table.matches(&relation);
                let result = self.mapper.on_relation(relation);
                let label = match &result {
                    Ok(()) if renames => Label("relation", "renames the outbox", "", ""),
                    Ok(()) if ours => Label("relation", "outbox", "ok", ""),
                    Ok(()) => Label("relation", "other table", "", ""),
                    Err(e) => {
                        check_error_text(at, &e.to_string());
                        schema_error_label("relation", e)
                    }
                };
                assert!(
                    ours || result.is_ok(),
                    "item {at}: a relation that is not the outbox table failed validation"
                );
                self.trace.push(label);
            }
            Ok(PgOutputMessage::Insert(insert)) => {
                for c in &insert.new.0 {
                    self.trace
                        .push(Label("insert column", column_kind(c), "", ""));
                }
                self.insert(at, &data, &ctx, &insert);
            }
            _ => {}
        }
    }

    /// The stateful decoder is the pure one plus the stream block.
    fn check_decoder_state(
        &mut self,
        at: usize,
        before: &DecodeContext,
        pure: &Result<PgOutputMessage, DecodeError>,
        stateful: &Result<PgOutputMessage, DecodeError>,
    ) {
        let after = *self.decoder.context();
        let expected_in_stream = match pure {
            Ok(PgOutputMessage::StreamStart(start)) if before.in_stream => {
                assert_eq!(
                    stateful,
                    &Err(DecodeError::NestedStreamStart { xid: start.xid }),
                    "item {at}: nested Stream Start"
                );
                self.trace
                    .push(Label("stream block", "nested start", "", ""));
                true
            }
            Ok(PgOutputMessage::StreamStop) if !before.in_stream => {
                assert_eq!(
                    stateful,
                    &Err(DecodeError::StreamStopOutsideStream),
                    "item {at}: Stream Stop outside a stream block"
                );
                self.trace
                    .push(Label("stream block", "stop outside", "", ""));
                false
            }
            Ok(PgOutputMessage::StreamStart(_)) => true,
            Ok(PgOutputMessage::StreamStop) => false,
            _ => before.in_stream,
        };
        if !matches!(
            (pure, stateful),
            (Ok(PgOutputMessage::StreamStart(_)), Err(_))
                | (Ok(PgOutputMessage::StreamStop), Err(_))
        ) {
            assert_eq!(pure, stateful, "item {at}: Decoder and decode disagree");
        }
        assert_eq!(
            after.in_stream, expected_in_stream,
            "item {at}: stream block state after {pure:?}"
        );
        assert_eq!(
            (after.protocol_version, after.streaming_parallel),
            (before.protocol_version, before.streaming_parallel),
            "item {at}: the decoder changed its negotiated options"
        );
    }

    fn insert(&mut self, at: usize, data: &Bytes, ctx: &DecodeContext, insert: &Insert) {
        let outcome = self.mapper.map_insert(insert);
        let label = match &outcome {
            Ok(InsertOutcome::Event(event)) => {
                assert!(
                    std::str::from_utf8(&event.payload).is_ok(),
                    "item {at}: event payload is not UTF-8"
                );
                assert!(event.held_bytes() >= event.payload.len());
                assert!(event.created_at_rfc3339().ends_with('Z'));
                Label("map", "event", "", "")
            }
            Ok(InsertOutcome::Dead(row)) => {
                check_error_text(at, &row.to_string());
                assert!(
                    !row.reason.is_empty(),
                    "item {at}: dead row without a reason"
                );
                Label("map", "dead", dead_reason(&row.reason), "")
            }
            Ok(InsertOutcome::Ignored) => Label("map", "ignored", "", ""),
            Err(e) => {
                check_error_text(at, &e.to_string());
                relation_error_label("map-err", e)
            }
        };
        self.trace.push(label);
        // The id the whole row maps to, when it can be read: what any prefix must agree with.
        let full_id = match &outcome {
            Ok(InsertOutcome::Event(event)) => Some(event.id),
            Ok(InsertOutcome::Dead(row)) => row.id,
            _ => None,
        };

        // The oversized path on the whole message sees the same row.
        let whole = decode_insert_prefix(data.clone(), ctx).unwrap_or_else(|e| {
            panic!("item {at}: a valid Insert fails decode_insert_prefix: {e}")
        });
        assert_eq!(
            (
                whole.xid,
                whole.relation_oid,
                whole.column_count,
                &whole.columns
            ),
            (
                insert.xid,
                insert.relation_oid,
                insert.new.0.len(),
                &insert.new.0
            ),
            "item {at}: decode_insert_prefix of a whole Insert"
        );
        let oversized = self.mapper.map_oversized_insert(&whole);
        match (&outcome, &oversized) {
            (Err(a), Err(b)) => assert_eq!(a, b, "item {at}: mapping errors differ"),
            (Ok(InsertOutcome::Ignored), Ok(OversizedInsert::Ignored)) => {}
            (Ok(_), Ok(OversizedInsert::Outbox { id })) => assert_eq!(
                full_id,
                Some(*id),
                "item {at}: the oversized path reads another id"
            ),
            (Ok(InsertOutcome::Dead(row)), Ok(OversizedInsert::UnknownId { .. })) => assert_eq!(
                row.id, None,
                "item {at}: the oversized path cannot read an id the row has"
            ),
            (a, b) => panic!("item {at}: map_insert gave {a:?} but map_oversized_insert {b:?}"),
        }

        // Every cut of the message: its header and the columns complete in it.
        let header = 1 + if ctx.in_stream { 4 } else { 0 } + 4 + 1 + 2;
        for cut in cut_points(data, insert) {
            let prefix = data.slice(..cut);
            let got = decode_insert_prefix(prefix, ctx);
            if cut < header {
                assert!(
                    matches!(got, Err(DecodeError::UnexpectedEnd { .. })),
                    "item {at}: Insert prefix of {cut} bytes (inside the header): {got:?}"
                );
                continue;
            }
            let got = got
                .unwrap_or_else(|e| panic!("item {at}: Insert prefix of {cut} bytes fails: {e}"));
            let complete = complete_columns(&insert.new.0, cut - header);
            assert_eq!(
                (got.column_count, got.columns.as_slice()),
                (insert.new.0.len(), &insert.new.0[..complete]),
                "item {at}: Insert prefix of {cut} bytes"
            );
            match self.mapper.map_oversized_insert(&got) {
                Ok(OversizedInsert::Outbox { id }) => assert_eq!(
                    full_id,
                    Some(id),
                    "item {at}: Insert prefix of {cut} bytes maps to another id"
                ),
                Ok(OversizedInsert::UnknownId { .. }) => {}
                other => assert_eq!(
                    other, oversized,
                    "item {at}: Insert prefix of {cut} bytes maps differently"
                ),
            }
        }
    }

    fn protocol_error(&mut self, stage: &'static str, e: &ProtocolError) {
        let _ = e.to_string();
        self.trace
            .push(Label(stage, protocol_error_name(e), "", ""));
    }
}

/// Round trip, prefixes and a trailing byte of a message that decoded.
fn check_valid_message(at: usize, data: &Bytes, ctx: &DecodeContext, msg: &PgOutputMessage) {
    assert_eq!(
        data.first(),
        Some(&msg.tag()),
        "item {at}: the tag of {msg:?} is not its first byte"
    );
    let (bytes, layout) = encode_with_layout(msg);
    assert!(
        bytes == data[..],
        "item {at}: {msg:?} re-encodes to other bytes ({} instead of {})",
        super::case::hex(&bytes),
        super::case::hex(data)
    );
    let cuts: Vec<usize> = if data.len() <= ALL_PREFIXES_UP_TO {
        (0..data.len()).collect()
    } else {
        let step = layout.len().div_ceil(BOUNDARY_SAMPLES).max(1);
        let mut cuts: Vec<usize> = layout
            .iter()
            .step_by(step)
            .flat_map(|f| [f.offset, f.offset + f.width.saturating_sub(1)])
            .chain(spread(data.len()))
            .filter(|&c| c < data.len())
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    };
    for cut in cuts {
        let got = decode(data.slice(..cut), ctx);
        assert!(
            got.is_err(),
            "item {at}: the strict prefix of {cut} of {} bytes decodes: {got:?}",
            data.len()
        );
    }
    let mut longer = data.to_vec();
    longer.push(0);
    let got = decode(Bytes::from(longer), ctx);
    assert!(
        matches!(got, Err(DecodeError::TrailingBytes { count: 1, .. })),
        "item {at}: one byte more is not a trailing byte: {got:?}"
    );
}

/// A few cut points spread over a message of `len` bytes, the first and last included.
fn spread(len: usize) -> impl Iterator<Item = usize> {
    [
        0,
        1,
        len / 3,
        len / 2,
        len * 2 / 3,
        len.saturating_sub(2),
        len.saturating_sub(1),
    ]
    .into_iter()
}

/// Cut points of an Insert: every column start (at most a sample), plus a spread.
fn cut_points(data: &Bytes, insert: &Insert) -> Vec<usize> {
    if data.len() <= ALL_PREFIXES_UP_TO {
        return (0..data.len()).collect();
    }
    let (_, layout) = encode_with_layout(&PgOutputMessage::Insert(insert.clone()));
    let step = layout.len().div_ceil(BOUNDARY_SAMPLES).max(1);
    let mut cuts: Vec<usize> = layout
        .iter()
        .step_by(step)
        .flat_map(|f| [f.offset, f.offset + 1])
        .chain(spread(data.len()))
        .filter(|&c| c < data.len())
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// How many leading columns are complete within `len` bytes of tuple after the header.
fn complete_columns(columns: &[Column], len: usize) -> usize {
    let mut used = 0usize;
    for (i, c) in columns.iter().enumerate() {
        used += match c {
            Column::Null | Column::UnchangedToast => 1,
            Column::Text(b) | Column::Binary(b) => 5 + b.len(),
        };
        if used > len {
            return i;
        }
    }
    columns.len()
}

/// Decoder and mapping errors are rendered in lower case (STYLE "Errors").
fn check_error_text(at: usize, text: &str) {
    assert!(
        text.chars().next().is_some_and(|c| !c.is_uppercase()),
        "item {at}: error text is empty or capitalised: {text:?}"
    );
}

fn be_u64(b: &[u8]) -> u64 {
    b.iter().fold(0, |n, &x| (n << 8) | u64::from(x))
}

fn column_kind(c: &Column) -> &'static str {
    match c {
        Column::Null => "n",
        Column::UnchangedToast => "u",
        Column::Text(_) => "t",
        Column::Binary(_) => "b",
    }
}

fn message_name(msg: &PgOutputMessage) -> &'static str {
    match msg {
        PgOutputMessage::Begin(_) => "Begin",
        PgOutputMessage::Commit(_) => "Commit",
        PgOutputMessage::Origin(_) => "Origin",
        PgOutputMessage::Relation(_) => "Relation",
        PgOutputMessage::Type(_) => "Type",
        PgOutputMessage::Insert(_) => "Insert",
        PgOutputMessage::Update(_) => "Update",
        PgOutputMessage::Delete(_) => "Delete",
        PgOutputMessage::Truncate(_) => "Truncate",
        PgOutputMessage::Message(_) => "Message",
        PgOutputMessage::StreamStart(_) => "Stream Start",
        PgOutputMessage::StreamStop => "Stream Stop",
        PgOutputMessage::StreamCommit(_) => "Stream Commit",
        PgOutputMessage::StreamAbort(a) if a.abort.is_some() => "Stream Abort (parallel)",
        PgOutputMessage::StreamAbort(_) => "Stream Abort",
        PgOutputMessage::BeginPrepare(_) => "Begin Prepare",
        PgOutputMessage::Prepare(_) => "Prepare",
        PgOutputMessage::CommitPrepared(_) => "Commit Prepared",
        PgOutputMessage::RollbackPrepared(_) => "Rollback Prepared",
        PgOutputMessage::StreamPrepare(_) => "Stream Prepare",
    }
}

/// The error variant and the message and field it names: one label per place the decoder
/// can refuse its input.
pub fn decode_error_label(stage: &'static str, e: &DecodeError) -> Label {
    match *e {
        DecodeError::Empty => Label(stage, "Empty", "", ""),
        DecodeError::UnknownTag { .. } => Label(stage, "UnknownTag", "", ""),
        DecodeError::UnsupportedProtocolVersion { .. } => {
            Label(stage, "UnsupportedProtocolVersion", "", "")
        }
        DecodeError::RequiresProtocolVersion { message, .. } => {
            Label(stage, "RequiresProtocolVersion", message, "")
        }
        DecodeError::UnexpectedEnd { message, field, .. } => {
            Label(stage, "UnexpectedEnd", message, field)
        }
        DecodeError::NegativeLength { message, field, .. } => {
            Label(stage, "NegativeLength", message, field)
        }
        DecodeError::OversizedLength { message, field, .. } => {
            Label(stage, "OversizedLength", message, field)
        }
        DecodeError::MissingNul { message, field } => Label(stage, "MissingNul", message, field),
        DecodeError::InvalidUtf8 { message, field } => Label(stage, "InvalidUtf8", message, field),
        DecodeError::InvalidColumnKind { message, .. } => {
            Label(stage, "InvalidColumnKind", message, "")
        }
        DecodeError::InvalidByte { message, field, .. } => {
            Label(stage, "InvalidByte", message, field)
        }
        DecodeError::TrailingBytes { message, .. } => Label(stage, "TrailingBytes", message, ""),
        DecodeError::NestedStreamStart { .. } => Label(stage, "NestedStreamStart", "", ""),
        DecodeError::StreamStopOutsideStream => Label(stage, "StreamStopOutsideStream", "", ""),
    }
}

fn schema_error_label(stage: &'static str, e: &SchemaError) -> Label {
    match e {
        SchemaError::MissingColumn { column, .. } => Label(stage, "MissingColumn", column, ""),
        SchemaError::WrongType { column, .. } => Label(stage, "WrongType", column, ""),
    }
}

fn relation_error_label(stage: &'static str, e: &RelationError) -> Label {
    match e {
        RelationError::UnknownRelation { .. } => Label(stage, "UnknownRelation", "", ""),
        RelationError::ColumnCountMismatch { .. } => Label(stage, "ColumnCountMismatch", "", ""),
        RelationError::Schema(e) => schema_error_label(stage, e),
    }
}

fn protocol_error_name(e: &ProtocolError) -> &'static str {
    match e {
        ProtocolError::EmptyCopyData => "EmptyCopyData",
        ProtocolError::UnknownReplicationMessage { .. } => "UnknownReplicationMessage",
        ProtocolError::Length { what, .. } => what,
        ProtocolError::ReplyFlag { .. } => "ReplyFlag",
        _ => "other",
    }
}

/// A dead row's reason, by the column it names and what is wrong with it.
fn dead_reason(reason: &str) -> &'static str {
    const KINDS: &[(&str, &str)] = &[
        ("\"id\" is NULL", "id NULL"),
        ("\"id\" is not an integer", "id not an integer"),
        ("\"id\" has", "id binary width"),
        ("unchanged-TOAST", "unchanged TOAST"),
        ("is missing from the tuple", "column missing"),
        ("not valid UTF-8", "not UTF-8"),
        ("jsonb binary version", "jsonb version"),
        ("empty jsonb", "jsonb empty"),
        ("\"headers\" is not a JSON object", "headers not an object"),
        ("\"headers\" is not valid JSON", "headers not JSON"),
        ("is infinite", "timestamp infinite"),
        ("BC date", "timestamp BC"),
        ("not an ISO timestamp", "timestamp not ISO"),
        ("binary byte(s), expected 8", "timestamp binary width"),
        ("out of range", "timestamp out of range"),
        ("is NULL", "required NULL"),
    ];
    KINDS
        .iter()
        .find(|(needle, _)| reason.contains(needle))
        .map_or("other", |(_, kind)| kind)
}
