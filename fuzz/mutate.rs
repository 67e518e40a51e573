//! The structure-aware mutator and the seed cases.
//!
//! Seeds are windows of the captured fixture sets (each with the Stream Start and the
//! Relations it depends on) plus synthesized cases for what the fixtures do not show
//! (protocol 4 parallel aborts, other outbox column types, binary values, origins, …).
//!
//! A mutation stacks one to four edits on a copy of a corpus case. Edits work at three
//! levels: the case (protocol options, outbox table), the item sequence (drop, repeat, swap,
//! splice items of another case, insert a synthesized message, wrap a message in an
//! XLogData header or cut it as an oversized message), and one message, either as a
//! structure (decode it, change a field, a column, a tuple value or a column kind, encode it
//! again) or as bytes aimed at the fields a decoder trusts (tags, counts, lengths, column
//! kinds, markers) or anywhere. Every choice comes from one seeded ChaCha8 stream, so a
//! seed names the same inputs on every machine.

use bytes::Bytes;
use dispatchbox::lsn::Lsn;
use dispatchbox::source::pgoutput::{
    decode, AbortInfo, Begin, Column, Commit, DecodeContext, Decoder, Insert, LogicalMessage,
    OldTuple, Origin, PgOutputMessage, Relation, RelationColumn, ReplicaIdentity, StreamAbort,
    StreamStart, Truncate, TupleData, TypeInfo, Update,
};
use dispatchbox::source::relation::{type_oid, OutboxTable};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::harness::case::{Case, Item};
use crate::harness::encode::{encode, encode_with_layout, FieldKind};

/// At most this many items per case: enough for a relation, a transaction and some noise,
/// and cheap to run.
const MAX_ITEMS: usize = 24;
/// Items are cut to this many bytes.
const MAX_ITEM_BYTES: usize = 8 << 10;
/// XLogData header length ('w' + three Int64).
const XLOG_HEADER: usize = 25;

const OUTBOX_COLUMNS: &[&str] = &[
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
    "created_at",
    "headers",
    "next_run_at",
    "status",
    "attempts",
];

const TYPE_OIDS: &[u32] = &[
    type_oid::INT8,
    type_oid::INT4,
    type_oid::TEXT,
    type_oid::VARCHAR,
    type_oid::JSON,
    type_oid::JSONB,
    type_oid::TIMESTAMPTZ,
    16,
    17,
    1114,
    2950,
    0,
    u32::MAX,
];

const TABLES: &[(&str, &str)] = &[
    ("public", "outbox_event"),
    ("public", "dml"),
    ("app", "outbox_event"),
    ("pg_catalog", "outbox_event"),
];

/// Text values worth trying in any column: ids, timestamps, JSON, and near misses.
const TEXT_VALUES: &[&str] = &[
    "1",
    "42",
    "0",
    "-1",
    "+7",
    " 1",
    "1.5",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "",
    "2026-11-23 02:33:19.001946+00",
    "2026-01-02 03:04:05+00",
    "2026-01-02 03:04:05.5+05:30",
    "1850-01-02 03:04:05-00:01:15",
    "2026-01-02 03:04:05.1234567+00",
    "2026-02-30 00:00:00+00",
    "2026-01-02 24:00:00+00",
    "2026-01-02T03:04:05Z",
    "0044-03-15 12:00:00+00 BC",
    "9999-12-31 23:59:59.999999+00",
    "infinity",
    "-infinity",
    "{}",
    "[]",
    "null",
    "\"s\"",
    "{\"traceparent\": \"00-abc-01\", \"n\": 1}",
    "{\"a\": \"b\", \"a\": \"c\"}",
    "{\"a\": {\"b\": [1, 2]}, \"c\": \"d\"}",
    "{\"k\": \"\\ud800\"}",
    "{",
    "{\"a\":",
    "[1, \"two\", null]",
    "order",
    "o-42",
    "ü-7 😀",
];

/// Tokens spliced into text values.
const TOKENS: &[&str] = &[
    "+",
    "-",
    ":",
    ".",
    " ",
    "0",
    "00",
    "59",
    "60",
    "99",
    "9999",
    "10000",
    "262142",
    "262143",
    "+262142",
    "-262143",
    "99999999",
    "+14",
    "-15",
    ":59:59",
    "-00:00:59",
    "+00:00:01",
    " BC",
    "infinity",
    "e400",
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    "null",
    "\\u0000",
    "é",
    "\u{feff}",
];

/// Timestamp text, as the mapping parses it (`DateStyle=ISO`), from parts at the edges of
/// what it accepts: the first and last dates chrono represents, leap days, out-of-range
/// fields, every offset form (`+HH`, `+HH:MM`, `+HH:MM:SS`) and era suffixes.
const TS_DATES: &[&str] = &[
    "2026-01-02",
    "2024-02-29",
    "2023-02-29",
    "0001-01-01",
    "9999-12-31",
    "10000-01-01",
    "+262142-12-31",
    "-262143-01-01",
    "+262143-01-01",
    "2026-13-01",
];
const TS_TIMES: &[&str] = &[
    "03:04:05", "00:00:00", "23:59:59", "23:59:60", "24:00:00", "12:60:00", "3:04:05",
];
const TS_FRACTIONS: &[&str] = &["", ".5", ".000001", ".123456", ".1234567", "."];
const TS_OFFSETS: &[&str] = &[
    "+00",
    "-00",
    "+05:30",
    "-08",
    "+14",
    "-15:59",
    "+00:00:59",
    "-00:00:59",
    "+01:02:03",
    "-09:59:59",
    "+99",
    "Z",
    "",
];
const TS_SUFFIXES: &[&str] = &["", "", "", " BC", " AD"];

/// Deterministic source of every random choice.
pub struct Mutator {
    rng: ChaCha8Rng,
}

impl Mutator {
    /// A mutator whose choices are fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Mutator {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A uniform index below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n)
    }

    /// A new case: one to four edits of `base`, some of which take items from `donor`.
    pub fn mutate(&mut self, base: &Case, donor: &Case) -> Case {
        let mut case = base.clone();
        let edits = 1 + self.rng.gen_range(0..4u32).min(self.rng.gen_range(0..4u32));
        for _ in 0..edits {
            self.edit(&mut case, donor);
        }
        case.items.truncate(MAX_ITEMS);
        for item in &mut case.items {
            match item {
                Item::Message(b) | Item::CopyData(b) | Item::Oversized { prefix: b, .. } => {
                    if b.len() > MAX_ITEM_BYTES {
                        *b = b.slice(..MAX_ITEM_BYTES);
                    }
                }
            }
        }
        case
    }

    fn edit(&mut self, case: &mut Case, donor: &Case) {
        match self.rng.gen_range(0..100u32) {
            0..=34 => self.structured(case),
            35..=54 => self.aimed_bytes(case),
            55..=67 => self.raw_bytes(case),
            68..=87 => self.sequence(case, donor),
            88..=93 => self.framing(case),
            _ => self.options(case),
        }
    }

    // ---- case level -------------------------------------------------------------------

    fn options(&mut self, case: &mut Case) {
        match self.rng.gen_range(0..3u32) {
            0 => {
                case.protocol_version = if self.rng.gen_bool(0.9) {
                    self.rng.gen_range(1..=4)
                } else {
                    *[0, 5, u32::MAX].choose(&mut self.rng).unwrap_or(&0)
                }
            }
            1 => case.streaming_parallel = !case.streaming_parallel,
            _ => {
                let (ns, name) = TABLES[self.below(TABLES.len())];
                case.table = OutboxTable::new(ns, name);
            }
        }
    }

    // ---- item sequence ----------------------------------------------------------------

    fn sequence(&mut self, case: &mut Case, donor: &Case) {
        let n = case.items.len();
        match self.rng.gen_range(0..8u32) {
            0 if n > 0 => {
                case.items.remove(self.below(n));
            }
            1 if n > 0 => {
                let i = self.below(n);
                let item = case.items[i].clone();
                case.items.insert(self.below(n + 1), item);
            }
            2 if n > 1 => {
                let (a, b) = (self.below(n), self.below(n));
                case.items.swap(a, b);
            }
            3 if !donor.items.is_empty() => {
                // Splice a run of the donor's items in.
                let start = self.below(donor.items.len());
                let len = 1 + self.below((donor.items.len() - start).min(6));
                let at = self.below(n + 1);
                let run: Vec<Item> = donor.items[start..start + len].to_vec();
                case.items.splice(at..at, run);
            }
            4 if !donor.items.is_empty() => {
                // Replace the tail with the donor's.
                let cut = self.below(n + 1);
                let from = self.below(donor.items.len());
                case.items.truncate(cut);
                case.items.extend(donor.items[from..].iter().cloned());
            }
            5 if n > 1 => {
                // Move one item elsewhere (a Relation after its Insert, a Commit early).
                let item = case.items.remove(self.below(n));
                case.items.insert(self.below(n), item);
            }
            6 => {
                let in_stream = self.rng.gen_bool(0.3);
                let msg = self.synthesize(case, in_stream);
                let at = self.below(n + 1);
                case.items
                    .insert(at, Item::Message(Bytes::from(encode(&msg))));
            }
            _ if n > 0 => {
                // Keep a prefix of the sequence.
                case.items.truncate(self.below(n) + 1);
            }
            _ => {
                let msg = self.synthesize(case, false);
                case.items.push(Item::Message(Bytes::from(encode(&msg))));
            }
        }
    }

    fn framing(&mut self, case: &mut Case) {
        let Some(i) = self.pick_item(case) else {
            return;
        };
        let item = case.items[i].clone();
        case.items[i] = match item {
            Item::Message(m) => {
                let payload = self.xlog_wrap(&m);
                if self.rng.gen_bool(0.5) {
                    Item::CopyData(payload)
                } else {
                    // Oversized: the declared length is the whole payload or more, the
                    // prefix anything from nothing to all of it.
                    let keep = self.below(payload.len() + 1);
                    let len = payload.len() + self.below(1 << 16);
                    Item::Oversized {
                        len,
                        prefix: payload.slice(..keep),
                    }
                }
            }
            Item::CopyData(p) => match self.rng.gen_range(0..3u32) {
                0 if p.len() >= XLOG_HEADER => Item::Message(p.slice(XLOG_HEADER..)),
                1 => Item::CopyData(self.keepalive()),
                _ => Item::Oversized {
                    len: p.len() + self.below(1 << 20),
                    prefix: p.clone(),
                },
            },
            Item::Oversized { len, prefix } => match self.rng.gen_range(0..3u32) {
                0 => Item::CopyData(prefix),
                1 => Item::Oversized {
                    len: self.interesting_usize(len),
                    prefix,
                },
                _ => Item::Oversized {
                    len,
                    prefix: prefix.slice(..self.below(prefix.len() + 1)),
                },
            },
        };
    }

    fn xlog_wrap(&mut self, message: &[u8]) -> Bytes {
        let mut p = Vec::with_capacity(XLOG_HEADER + message.len());
        p.push(b'w');
        for _ in 0..3 {
            p.extend_from_slice(&self.interesting_u64().to_be_bytes());
        }
        p.extend_from_slice(message);
        Bytes::from(p)
    }

    fn keepalive(&mut self) -> Bytes {
        let mut p = vec![b'k'];
        p.extend_from_slice(&self.interesting_u64().to_be_bytes());
        p.extend_from_slice(&self.interesting_u64().to_be_bytes());
        p.push(*[0u8, 1, 2].choose(&mut self.rng).unwrap_or(&0));
        Bytes::from(p)
    }

    fn pick_item(&mut self, case: &Case) -> Option<usize> {
        (!case.items.is_empty()).then(|| self.below(case.items.len()))
    }

    /// The pgoutput bytes of item `i` and how to put changed bytes back.
    fn message_of(case: &Case, i: usize) -> (Bytes, usize) {
        match &case.items[i] {
            Item::Message(b) => (b.clone(), 0),
            Item::CopyData(b) | Item::Oversized { prefix: b, .. }
                if b.len() >= XLOG_HEADER && b.first() == Some(&b'w') =>
            {
                (b.slice(XLOG_HEADER..), XLOG_HEADER)
            }
            Item::CopyData(b) | Item::Oversized { prefix: b, .. } => (b.clone(), 0),
        }
    }

    fn put_message(case: &mut Case, i: usize, header: usize, bytes: Vec<u8>) {
        let rebuild = |old: &Bytes| {
            let mut v = old.get(..header).unwrap_or_default().to_vec();
            v.extend_from_slice(&bytes);
            Bytes::from(v)
        };
        match &mut case.items[i] {
            Item::Message(b) | Item::CopyData(b) => *b = rebuild(b),
            Item::Oversized { len, prefix } => {
                let new = rebuild(prefix);
                *len = (*len).max(new.len());
                *prefix = new;
            }
        }
    }

    // ---- one message as bytes ---------------------------------------------------------

    fn aimed_bytes(&mut self, case: &mut Case) {
        let Some(i) = self.pick_item(case) else {
            return;
        };
        let (bytes, header) = Self::message_of(case, i);
        let Some((msg, _)) = decode_any(case, &bytes) else {
            return self.raw_bytes_at(case, i);
        };
        let (mut out, layout) = encode_with_layout(&msg);
        let wanted = [
            FieldKind::Count,
            FieldKind::Length,
            FieldKind::ColumnKind,
            FieldKind::Marker,
            FieldKind::Tag,
            FieldKind::Nul,
        ];
        let kind = wanted[self.below(wanted.len())];
        let fields: Vec<_> = layout.iter().filter(|f| f.kind == kind).collect();
        let Some(field) = fields.choose(&mut self.rng).copied() else {
            return self.raw_bytes_at(case, i);
        };
        let (at, width) = (field.offset, field.width);
        match kind {
            FieldKind::Count | FieldKind::Length => {
                let old = out[at..at + width]
                    .iter()
                    .fold(0i64, |n, &b| (n << 8) | i64::from(b));
                let new = match self.rng.gen_range(0..6u32) {
                    0 => old + 1,
                    1 => old - 1,
                    2 => old + self.rng.gen_range(2..64),
                    3 => -1,
                    4 => 0,
                    _ => *[
                        0x7fff,
                        0x8000,
                        0xffff,
                        0x7fff_ffff,
                        0x8000_0000,
                        0xffff_ffff,
                    ]
                    .choose(&mut self.rng)
                    .unwrap_or(&0),
                };
                let be = new.to_be_bytes();
                out[at..at + width].copy_from_slice(&be[8 - width..]);
            }
            FieldKind::ColumnKind => out[at] = *b"nutbx\0N".choose(&mut self.rng).unwrap_or(&b'n'),
            FieldKind::Marker => {
                out[at] = *b"NKOdnfiuxt\0\x01\x02"
                    .choose(&mut self.rng)
                    .unwrap_or(&b'N')
            }
            FieldKind::Tag => {
                out[at] = *b"BCORYIUDTMSEcAbPKrpZw\0"
                    .choose(&mut self.rng)
                    .unwrap_or(&b'B')
            }
            _ => {
                // A NUL: drop it (the string runs on) or make it a byte of text.
                if self.rng.gen_bool(0.5) {
                    out.remove(at);
                } else {
                    out[at] = b'x';
                }
            }
        }
        Self::put_message(case, i, header, out);
    }

    fn raw_bytes(&mut self, case: &mut Case) {
        if let Some(i) = self.pick_item(case) {
            self.raw_bytes_at(case, i);
        }
    }

    fn raw_bytes_at(&mut self, case: &mut Case, i: usize) {
        let (bytes, header) = Self::message_of(case, i);
        let mut b = bytes.to_vec();
        let n = b.len();
        match self.rng.gen_range(0..8u32) {
            0 if n > 0 => {
                let at = self.below(n);
                b[at] ^= 1 << self.below(8);
            }
            1 if n > 0 => {
                let at = self.below(n);
                b[at] = *[0u8, 0xff, 0x7f, 0x80, 1, b'n', b't', b'b', b'N']
                    .choose(&mut self.rng)
                    .unwrap_or(&0);
            }
            2 if n >= 4 => {
                // A big-endian Int16/Int32 anywhere.
                let width = if self.rng.gen_bool(0.5) { 2 } else { 4 };
                let at = self.below(n - width + 1);
                let v = self.interesting_u64().to_be_bytes();
                b[at..at + width].copy_from_slice(&v[8 - width..]);
            }
            3 => {
                let at = self.below(n + 1);
                let len = 1 + self.below(8);
                let fill: Vec<u8> = (0..len).map(|_| self.rng.gen()).collect();
                b.splice(at..at, fill);
            }
            4 if n > 0 => {
                let at = self.below(n);
                let len = 1 + self.below((n - at).min(16));
                b.drain(at..at + len);
            }
            5 if n > 0 => {
                // Repeat a range (a column, a string).
                let at = self.below(n);
                let len = 1 + self.below((n - at).min(32));
                let chunk = b[at..at + len].to_vec();
                let to = self.below(b.len() + 1);
                b.splice(to..to, chunk);
            }
            6 => b.truncate(self.below(n + 1)),
            _ => b.push(self.rng.gen()),
        }
        Self::put_message(case, i, header, b);
    }

    // ---- one message as a structure ---------------------------------------------------

    fn structured(&mut self, case: &mut Case) {
        let Some(i) = self.pick_item(case) else {
            return;
        };
        let (bytes, header) = Self::message_of(case, i);
        let Some((mut msg, _)) = decode_any(case, &bytes) else {
            return self.raw_bytes_at(case, i);
        };
        let oids = relation_oids(case);
        match &mut msg {
            PgOutputMessage::Relation(r) => self.relation(r, &oids),
            PgOutputMessage::Insert(m) => {
                let columns = relation_columns(case, m.relation_oid);
                if !columns.is_empty() && !m.new.0.is_empty() && self.rng.gen_bool(0.4) {
                    // A value for the column's type, where the mapping parses it.
                    let i = self.below(columns.len().min(m.new.0.len()));
                    m.new.0[i] = self.typed_value(columns[i]);
                } else if self.rng.gen_bool(0.15) {
                    m.relation_oid = self.oid(&oids);
                } else if self.rng.gen_bool(0.05) {
                    m.xid = toggle_xid(m.xid);
                } else {
                    self.tuple(&mut m.new);
                }
            }
            PgOutputMessage::Update(m) => match self.rng.gen_range(0..3u32) {
                0 => self.tuple(&mut m.new),
                1 => {
                    m.old = match m.old.take() {
                        None => Some(OldTuple::Key(m.new.clone())),
                        Some(OldTuple::Key(t)) => Some(OldTuple::Full(t)),
                        Some(OldTuple::Full(_)) => None,
                    }
                }
                _ => m.relation_oid = self.oid(&oids),
            },
            PgOutputMessage::Delete(m) => match &mut m.old {
                OldTuple::Key(t) | OldTuple::Full(t) => self.tuple(t),
            },
            PgOutputMessage::Truncate(m) => {
                if self.rng.gen_bool(0.5) && !m.relation_oids.is_empty() {
                    m.relation_oids.pop();
                } else {
                    let oid = self.oid(&oids);
                    m.relation_oids.push(oid);
                }
                m.options = self.rng.gen();
            }
            PgOutputMessage::Message(m) => {
                if self.rng.gen_bool(0.5) {
                    m.content = Bytes::from(self.text_value().into_bytes());
                } else {
                    m.prefix = self.text_value();
                }
                m.flags = self.rng.gen_range(0..3);
            }
            PgOutputMessage::Begin(m) => {
                m.final_lsn = Lsn(self.interesting_u64());
                m.xid = self.interesting_u64() as u32;
            }
            PgOutputMessage::Commit(m) => {
                m.end_lsn = Lsn(self.interesting_u64());
                m.commit_ts = self.interesting_u64() as i64;
            }
            PgOutputMessage::StreamStart(m) => m.first_segment = !m.first_segment,
            PgOutputMessage::StreamAbort(m) => {
                m.abort = match m.abort {
                    Some(_) => None,
                    None => Some(AbortInfo {
                        lsn: Lsn(self.interesting_u64()),
                        ts: self.interesting_u64() as i64,
                    }),
                }
            }
            PgOutputMessage::Origin(m) => m.name = self.text_value(),
            PgOutputMessage::Type(m) => m.name = self.text_value(),
            _ => {
                let in_stream = self.rng.gen_bool(0.3);
                msg = self.synthesize(case, in_stream);
            }
        }
        Self::put_message(case, i, header, encode(&msg));
    }

    fn relation(&mut self, r: &mut Relation, oids: &[u32]) {
        let n = r.columns.len();
        match self.rng.gen_range(0..10u32) {
            0 if n > 0 => {
                r.columns.remove(self.below(n));
            }
            1 if n > 0 => {
                let c = r.columns[self.below(n)].clone();
                r.columns.insert(self.below(n + 1), c);
            }
            2 if n > 1 => {
                let (a, b) = (self.below(n), self.below(n));
                r.columns.swap(a, b);
            }
            3 if n > 0 => {
                let i = self.below(n);
                r.columns[i].name = OUTBOX_COLUMNS[self.below(OUTBOX_COLUMNS.len())].into();
            }
            4 if n > 0 => {
                let i = self.below(n);
                r.columns[i].type_oid = TYPE_OIDS[self.below(TYPE_OIDS.len())];
            }
            5 => {
                let (ns, name) = TABLES[self.below(TABLES.len())];
                if self.rng.gen_bool(0.5) {
                    r.namespace = ns.into();
                } else {
                    r.name = name.into();
                }
                if self.rng.gen_bool(0.2) {
                    r.namespace.clear();
                }
            }
            6 => r.oid = self.oid(oids),
            7 => {
                r.replica_identity = *[
                    ReplicaIdentity::Default,
                    ReplicaIdentity::Nothing,
                    ReplicaIdentity::Full,
                    ReplicaIdentity::Index,
                ]
                .choose(&mut self.rng)
                .unwrap_or(&ReplicaIdentity::Default)
            }
            8 if n > 0 => {
                let i = self.below(n);
                r.columns[i].flags = self.rng.gen();
                r.columns[i].type_modifier = self.interesting_u64() as i32;
            }
            _ => r.columns.push(RelationColumn {
                flags: 0,
                name: OUTBOX_COLUMNS[self.below(OUTBOX_COLUMNS.len())].into(),
                type_oid: TYPE_OIDS[self.below(TYPE_OIDS.len())],
                type_modifier: -1,
            }),
        }
    }

    fn tuple(&mut self, t: &mut TupleData) {
        let n = t.0.len();
        match self.rng.gen_range(0..9u32) {
            0 if n > 0 => {
                t.0.remove(self.below(n));
            }
            1 if n > 0 => {
                let c = t.0[self.below(n)].clone();
                t.0.insert(self.below(n + 1), c);
            }
            2 if n > 1 => {
                let (a, b) = (self.below(n), self.below(n));
                t.0.swap(a, b);
            }
            3 if n > 0 => {
                // Change the column kind, keeping the value where there is one.
                let i = self.below(n);
                let value = match &t.0[i] {
                    Column::Text(b) | Column::Binary(b) => b.clone(),
                    _ => Bytes::from(self.text_value().into_bytes()),
                };
                t.0[i] = match self.below(4) {
                    0 => Column::Null,
                    1 => Column::UnchangedToast,
                    2 => Column::Text(value),
                    _ => Column::Binary(value),
                };
            }
            4 | 5 if n > 0 => {
                let i = self.below(n);
                let value = self.value();
                t.0[i] = value;
            }
            6 | 7 if n > 0 => {
                // Edit the text of a value: splice a token, or cut it.
                let i = self.below(n);
                if let Column::Text(b) | Column::Binary(b) = &t.0[i] {
                    let mut v = b.to_vec();
                    let at = self.below(v.len() + 1);
                    if self.rng.gen_bool(0.7) {
                        let token = TOKENS[self.below(TOKENS.len())];
                        v.splice(at..at, token.bytes());
                    } else {
                        v.truncate(at);
                    }
                    let b = Bytes::from(v);
                    t.0[i] = match &t.0[i] {
                        Column::Text(_) => Column::Text(b),
                        _ => Column::Binary(b),
                    };
                }
            }
            _ => {
                let value = self.value();
                t.0.insert(self.below(n + 1), value);
            }
        }
    }

    /// A column value: a text from the list, or a binary integer, timestamp or jsonb.
    fn value(&mut self) -> Column {
        match self.rng.gen_range(0..10u32) {
            0 => Column::Null,
            1 => Column::UnchangedToast,
            2 => Column::Binary(Bytes::copy_from_slice(
                &(self.interesting_u64() as i64).to_be_bytes(),
            )),
            3 => Column::Binary(Bytes::copy_from_slice(
                &(self.interesting_u64() as i32).to_be_bytes(),
            )),
            4 => {
                let mut v = vec![*[1u8, 1, 1, 2, 0].choose(&mut self.rng).unwrap_or(&1)];
                v.extend_from_slice(self.text_value().as_bytes());
                Column::Binary(Bytes::from(v))
            }
            5 => Column::Text(Bytes::from_static(&[0xff, 0xfe, b'x'])),
            6 => {
                // Deep JSON nesting.
                let depth = self.below(300);
                let v = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                Column::Text(Bytes::from(v.into_bytes()))
            }
            _ => Column::Text(Bytes::from(self.text_value().into_bytes())),
        }
    }

    /// A value a column of type `oid` could hold, in text or binary, often at an edge.
    fn typed_value(&mut self, oid: u32) -> Column {
        let binary = self.rng.gen_bool(0.3);
        let bytes = match oid {
            type_oid::INT8 | type_oid::INT4 if binary => {
                let v = self.interesting_u64();
                if oid == type_oid::INT8 {
                    v.to_be_bytes().to_vec()
                } else {
                    (v as u32).to_be_bytes().to_vec()
                }
            }
            type_oid::INT8 | type_oid::INT4 => (self.interesting_u64() as i64).to_string().into(),
            type_oid::TIMESTAMPTZ if binary => self.interesting_u64().to_be_bytes().to_vec(),
            type_oid::TIMESTAMPTZ => self.timestamp_text().into(),
            type_oid::JSONB if binary => {
                let mut v = vec![1u8];
                v.extend_from_slice(self.text_value().as_bytes());
                v
            }
            _ => self.text_value().into(),
        };
        let bytes = Bytes::from(bytes);
        match self.rng.gen_range(0..20u32) {
            0 => Column::Null,
            _ if binary => Column::Binary(bytes),
            _ => Column::Text(bytes),
        }
    }

    fn timestamp_text(&mut self) -> String {
        let mut pick = |parts: &[&'static str]| parts[self.rng.gen_range(0..parts.len())];
        let (date, time, fraction) = (pick(TS_DATES), pick(TS_TIMES), pick(TS_FRACTIONS));
        let (offset, suffix) = (pick(TS_OFFSETS), pick(TS_SUFFIXES));
        format!("{date} {time}{fraction}{offset}{suffix}")
    }

    fn text_value(&mut self) -> String {
        if self.rng.gen_bool(0.25) {
            return self.timestamp_text();
        }
        let mut s = TEXT_VALUES[self.below(TEXT_VALUES.len())].to_string();
        if self.rng.gen_bool(0.3) {
            let token = TOKENS[self.below(TOKENS.len())];
            let mut at = self.below(s.len() + 1);
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            s.insert_str(at, token);
        }
        s
    }

    fn oid(&mut self, known: &[u32]) -> u32 {
        match known.choose(&mut self.rng) {
            Some(&oid) if self.rng.gen_bool(0.7) => oid,
            _ => self.interesting_u64() as u32,
        }
    }

    fn interesting_u64(&mut self) -> u64 {
        match self.rng.gen_range(0..4u32) {
            0 => *[
                0u64,
                1,
                0x7f,
                0x80,
                0xff,
                0x7fff,
                0x8000,
                0xffff,
                0x7fff_ffff,
                0x8000_0000,
                0xffff_ffff,
                i64::MAX as u64,
                i64::MIN as u64,
                u64::MAX,
                u64::MAX - 1,
            ]
            .choose(&mut self.rng)
            .unwrap_or(&0),
            1 => self.rng.gen_range(0..1000),
            _ => self.rng.gen(),
        }
    }

    fn interesting_usize(&mut self, near: usize) -> usize {
        match self.rng.gen_range(0..4u32) {
            0 => 0,
            1 => near.saturating_sub(self.below(64)),
            2 => near.saturating_add(self.below(1 << 20)),
            _ => *[
                XLOG_HEADER - 1,
                XLOG_HEADER,
                XLOG_HEADER + 1,
                1 << 30,
                u32::MAX as usize,
            ]
            .choose(&mut self.rng)
            .unwrap_or(&0),
        }
    }

    /// A valid message of any kind, built from small random fields and the case's oids.
    pub fn synthesize(&mut self, case: &Case, in_stream: bool) -> PgOutputMessage {
        let oids = relation_oids(case);
        let xid = in_stream.then(|| self.rng.gen_range(700..800));
        let lsn = Lsn(self.interesting_u64());
        let ts = self.interesting_u64() as i64;
        match self.rng.gen_range(0..12u32) {
            0 => PgOutputMessage::Begin(Begin {
                final_lsn: lsn,
                commit_ts: ts,
                xid: self.rng.gen(),
            }),
            1 => PgOutputMessage::Commit(Commit {
                flags: 0,
                commit_lsn: lsn,
                end_lsn: Lsn(lsn.0.wrapping_add(40)),
                commit_ts: ts,
            }),
            2 => PgOutputMessage::Relation(outbox_relation(
                self.oid(&oids),
                xid,
                self.rng.gen_bool(0.5),
            )),
            3 | 4 => PgOutputMessage::Insert(Insert {
                xid,
                relation_oid: self.oid(&oids),
                new: if self.rng.gen_bool(0.5) {
                    outbox_row_text(self.rng.gen_range(1..1000))
                } else {
                    outbox_row_binary(self.rng.gen_range(1..1000))
                },
            }),
            5 => PgOutputMessage::Update(Update {
                xid,
                relation_oid: self.oid(&oids),
                old: None,
                new: TupleData(vec![self.value(), self.value()]),
            }),
            6 => PgOutputMessage::Truncate(Truncate {
                xid,
                options: 1,
                relation_oids: oids,
            }),
            7 => PgOutputMessage::Message(LogicalMessage {
                xid,
                flags: 1,
                lsn,
                prefix: "dispatchbox.heartbeat".into(),
                content: Bytes::from_static(b"x"),
            }),
            8 => PgOutputMessage::StreamStart(StreamStart {
                xid: self.rng.gen_range(700..800),
                first_segment: self.rng.gen(),
            }),
            9 => PgOutputMessage::StreamStop,
            10 => PgOutputMessage::StreamAbort(StreamAbort {
                xid: 700,
                sub_xid: self.rng.gen_range(700..800),
                abort: (case.streaming_parallel && case.protocol_version >= 4)
                    .then_some(AbortInfo { lsn, ts }),
            }),
            _ => PgOutputMessage::Origin(Origin {
                commit_lsn: lsn,
                name: "node_a".into(),
            }),
        }
    }
}

/// Decodes `bytes` under the case's options, outside and then inside a stream block.
fn decode_any(case: &Case, bytes: &Bytes) -> Option<(PgOutputMessage, DecodeContext)> {
    [false, true].into_iter().find_map(|in_stream| {
        let ctx = DecodeContext {
            in_stream,
            protocol_version: case.protocol_version,
            streaming_parallel: case.streaming_parallel,
        };
        decode(bytes.clone(), &ctx).ok().map(|m| (m, ctx))
    })
}

fn toggle_xid(xid: Option<u32>) -> Option<u32> {
    match xid {
        Some(_) => None,
        None => Some(777),
    }
}

/// The column types of the case's last Relation message for `oid`.
fn relation_columns(case: &Case, oid: u32) -> Vec<u32> {
    let mut columns = Vec::new();
    for item in &case.items {
        if let Item::Message(bytes) = item {
            if let Some((PgOutputMessage::Relation(r), _)) = decode_any(case, bytes) {
                if r.oid == oid {
                    columns = r.columns.iter().map(|c| c.type_oid).collect();
                }
            }
        }
    }
    columns
}

/// The relation oids the case's Relation messages announce.
fn relation_oids(case: &Case) -> Vec<u32> {
    let mut oids = Vec::new();
    for item in &case.items {
        let (bytes, _) = match item {
            Item::Message(b) => (b.clone(), 0),
            _ => continue,
        };
        if let Some((PgOutputMessage::Relation(r), _)) = decode_any(case, &bytes) {
            if !oids.contains(&r.oid) {
                oids.push(r.oid);
            }
        }
    }
    oids
}

// ---- seeds --------------------------------------------------------------------------------

/// The seed cases: windows of every fixture set, then the synthesized cases.
pub fn seeds(fixtures: &[(String, Case)]) -> Vec<Case> {
    let mut out = Vec::new();
    for (name, set) in fixtures {
        out.extend(windows(set));
        if name.starts_with("v1_dml") {
            // The same messages with their own table as the outbox: schema errors.
            for mut w in windows(set) {
                w.table = OutboxTable::new("public", "dml");
                out.push(w);
            }
        }
    }
    out.extend(synthesized());
    out
}

/// Short runs of a fixture set, each preceded by what it needs to decode and map the same
/// way as in the whole set: the open Stream Start, and the latest Relation of every oid.
fn windows(set: &Case) -> Vec<Case> {
    let messages: Vec<Bytes> = set
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Message(b) => Some(b.clone()),
            _ => None,
        })
        .collect();
    let mut decoder = Decoder::new(set.protocol_version, set.streaming_parallel);
    let mut open_stream: Option<Bytes> = None;
    let mut relations: Vec<(u32, Bytes)> = Vec::new();
    let mut out = Vec::new();
    let step = 3;
    for (i, bytes) in messages.iter().enumerate() {
        if i % step == 0 {
            let mut items: Vec<Item> = Vec::new();
            items.extend(open_stream.iter().cloned().map(Item::Message));
            items.extend(relations.iter().map(|(_, b)| Item::Message(b.clone())));
            let len = 1 + (i / step) % 6;
            items.extend(
                messages[i..(i + len).min(messages.len())]
                    .iter()
                    .cloned()
                    .map(Item::Message),
            );
            out.push(Case {
                items,
                ..set.clone()
            });
        }
        match decoder.decode(bytes.clone()) {
            Ok(PgOutputMessage::StreamStart(_)) => open_stream = Some(bytes.clone()),
            Ok(PgOutputMessage::StreamStop) => open_stream = None,
            Ok(PgOutputMessage::Relation(r)) => {
                relations.retain(|(oid, _)| *oid != r.oid);
                relations.push((r.oid, bytes.clone()));
            }
            _ => {}
        }
    }
    out
}

fn outbox_relation(oid: u32, xid: Option<u32>, narrow_types: bool) -> Relation {
    let (id, text, json) = if narrow_types {
        (type_oid::INT4, type_oid::VARCHAR, type_oid::JSON)
    } else {
        (type_oid::INT8, type_oid::TEXT, type_oid::JSONB)
    };
    let column = |name: &str, type_oid: u32| RelationColumn {
        flags: u8::from(name == "id"),
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    Relation {
        xid,
        oid,
        namespace: "public".into(),
        name: "outbox_event".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            column("id", id),
            column("aggregate_type", text),
            column("aggregate_id", text),
            column("event_type", text),
            column("payload", json),
            column("created_at", type_oid::TIMESTAMPTZ),
            column("headers", json),
            column("next_run_at", type_oid::TIMESTAMPTZ),
        ],
    }
}

fn text(s: &str) -> Column {
    Column::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn outbox_row_text(id: i64) -> TupleData {
    TupleData(vec![
        text(&id.to_string()),
        text("order"),
        text("o-1"),
        text("OrderPlaced"),
        text("{\"total\": 12.5}"),
        text("2026-01-02 03:04:05.123456+00"),
        text("{\"traceparent\": \"00-abc-01\"}"),
        Column::Null,
    ])
}

fn outbox_row_binary(id: i64) -> TupleData {
    let mut jsonb = vec![1u8];
    jsonb.extend_from_slice(b"{\"a\": 1}");
    TupleData(vec![
        Column::Binary(Bytes::copy_from_slice(&id.to_be_bytes())),
        Column::Binary(Bytes::from_static(b"order")),
        Column::Binary(Bytes::from_static(b"o-1")),
        Column::Binary(Bytes::from_static(b"OrderPlaced")),
        Column::Binary(Bytes::from(jsonb)),
        Column::Binary(Bytes::copy_from_slice(
            &820_000_000_000_000i64.to_be_bytes(),
        )),
        Column::Null,
        Column::Binary(Bytes::copy_from_slice(&i64::MAX.to_be_bytes())),
    ])
}

/// Cases the fixtures do not cover: every protocol version, parallel stream aborts, int4 /
/// varchar / json outbox columns, binary rows, origins, types and truncates.
fn synthesized() -> Vec<Case> {
    let msg = |m: PgOutputMessage| Item::Message(Bytes::from(encode(&m)));
    let begin = || {
        msg(PgOutputMessage::Begin(Begin {
            final_lsn: Lsn(0x100),
            commit_ts: 1,
            xid: 42,
        }))
    };
    let commit = || {
        msg(PgOutputMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x100),
            end_lsn: Lsn(0x128),
            commit_ts: 1,
        }))
    };
    let insert = |xid, new| {
        msg(PgOutputMessage::Insert(Insert {
            xid,
            relation_oid: 16_400,
            new,
        }))
    };
    let mut cases = Vec::new();
    for version in 1..=4u32 {
        for narrow in [false, true] {
            cases.push(Case {
                protocol_version: version,
                streaming_parallel: version == 4,
                table: OutboxTable::new("public", "outbox_event"),
                items: vec![
                    begin(),
                    msg(PgOutputMessage::Origin(Origin {
                        commit_lsn: Lsn(7),
                        name: "node_a".into(),
                    })),
                    msg(PgOutputMessage::Type(TypeInfo {
                        xid: None,
                        oid: 99_001,
                        namespace: "public".into(),
                        name: "mood".into(),
                    })),
                    msg(PgOutputMessage::Relation(outbox_relation(
                        16_400, None, narrow,
                    ))),
                    insert(None, outbox_row_text(1)),
                    insert(None, outbox_row_binary(2)),
                    msg(PgOutputMessage::Truncate(Truncate {
                        xid: None,
                        options: 3,
                        relation_oids: vec![16_400, 16_401],
                    })),
                    commit(),
                ],
            });
        }
        if version >= 2 {
            let mut items = vec![
                msg(PgOutputMessage::StreamStart(StreamStart {
                    xid: 700,
                    first_segment: true,
                })),
                msg(PgOutputMessage::Relation(outbox_relation(
                    16_400,
                    Some(700),
                    false,
                ))),
                insert(Some(701), outbox_row_text(3)),
                msg(PgOutputMessage::StreamStop),
            ];
            items.push(msg(PgOutputMessage::StreamAbort(StreamAbort {
                xid: 700,
                sub_xid: 701,
                abort: (version == 4).then_some(AbortInfo {
                    lsn: Lsn(0x200),
                    ts: 2,
                }),
            })));
            cases.push(Case {
                protocol_version: version,
                streaming_parallel: version == 4,
                table: OutboxTable::new("public", "outbox_event"),
                items,
            });
        }
    }
    cases
}
