//! pgoutput encoding: the inverse of `dispatchbox::source::pgoutput::decode`, so the
//! harness can check that a decoded message re-encodes to exactly the bytes it came from,
//! and the mutator can edit a message as a structure and write it back.
//!
//! Besides the bytes it records the [`Layout`] of what it wrote (where the tag, the counts,
//! the lengths and the column kinds sit), so byte-level mutations can aim at the fields a
//! decoder trusts. It writes whatever it is given: a count that does not fit its wire width
//! is cut, as the mutator wants, not rejected.

use dispatchbox::source::pgoutput::{Column, OldTuple, PgOutputMessage, TupleData};

/// What a byte range of an encoded message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// The message tag.
    Tag,
    /// A transaction id (the stream prefix included).
    Xid,
    /// An LSN.
    Lsn,
    /// A timestamp.
    Timestamp,
    /// A relation or type OID.
    Oid,
    /// A count of items that follow (columns, relations).
    Count,
    /// A byte length of a value that follows.
    Length,
    /// A tuple column kind (`n`, `u`, `t`, `b`).
    ColumnKind,
    /// A tuple marker (`N`, `K`, `O`), a replica identity or another one-byte enum.
    Marker,
    /// Flags and other free bytes.
    Flags,
    /// A NUL that ends a string.
    Nul,
}

/// One field of an encoded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: usize,
    pub width: usize,
    pub kind: FieldKind,
}

/// Where the fields of an encoded message sit.
pub type Layout = Vec<Field>;

/// The wire bytes of `msg`; the stream xid prefix is written when the message carries one.
pub fn encode(msg: &PgOutputMessage) -> Vec<u8> {
    encode_with_layout(msg).0
}

/// The wire bytes of `msg` and where each field sits in them.
pub fn encode_with_layout(msg: &PgOutputMessage) -> (Vec<u8>, Layout) {
    let mut w = Writer::default();
    w.put(FieldKind::Tag, &[msg.tag()]);
    match msg {
        PgOutputMessage::Begin(m) => {
            w.u64(FieldKind::Lsn, m.final_lsn.0);
            w.i64(FieldKind::Timestamp, m.commit_ts);
            w.u32(FieldKind::Xid, m.xid);
        }
        PgOutputMessage::Commit(m) => {
            w.put(FieldKind::Flags, &[m.flags]);
            w.u64(FieldKind::Lsn, m.commit_lsn.0);
            w.u64(FieldKind::Lsn, m.end_lsn.0);
            w.i64(FieldKind::Timestamp, m.commit_ts);
        }
        PgOutputMessage::Origin(m) => {
            w.u64(FieldKind::Lsn, m.commit_lsn.0);
            w.string(&m.name);
        }
        PgOutputMessage::Relation(m) => {
            w.xid(m.xid);
            w.u32(FieldKind::Oid, m.oid);
            w.string(&m.namespace);
            w.string(&m.name);
            w.put(FieldKind::Marker, &[m.replica_identity.as_byte()]);
            w.i16_count(m.columns.len());
            for c in &m.columns {
                w.put(FieldKind::Flags, &[c.flags]);
                w.string(&c.name);
                w.u32(FieldKind::Oid, c.type_oid);
                w.put(FieldKind::Flags, &c.type_modifier.to_be_bytes());
            }
        }
        PgOutputMessage::Type(m) => {
            w.xid(m.xid);
            w.u32(FieldKind::Oid, m.oid);
            w.string(&m.namespace);
            w.string(&m.name);
        }
        PgOutputMessage::Insert(m) => {
            w.xid(m.xid);
            w.u32(FieldKind::Oid, m.relation_oid);
            w.put(FieldKind::Marker, b"N");
            w.tuple(&m.new);
        }
        PgOutputMessage::Update(m) => {
            w.xid(m.xid);
            w.u32(FieldKind::Oid, m.relation_oid);
            if let Some(old) = &m.old {
                w.old_tuple(old);
            }
            w.put(FieldKind::Marker, b"N");
            w.tuple(&m.new);
        }
        PgOutputMessage::Delete(m) => {
            w.xid(m.xid);
            w.u32(FieldKind::Oid, m.relation_oid);
            w.old_tuple(&m.old);
        }
        PgOutputMessage::Truncate(m) => {
            w.xid(m.xid);
            w.u32(FieldKind::Count, m.relation_oids.len() as u32);
            w.put(FieldKind::Flags, &[m.options]);
            for oid in &m.relation_oids {
                w.u32(FieldKind::Oid, *oid);
            }
        }
        PgOutputMessage::Message(m) => {
            w.xid(m.xid);
            w.put(FieldKind::Flags, &[m.flags]);
            w.u64(FieldKind::Lsn, m.lsn.0);
            w.string(&m.prefix);
            w.u32(FieldKind::Length, m.content.len() as u32);
            w.put(FieldKind::Flags, &m.content);
        }
        PgOutputMessage::StreamStart(m) => {
            w.u32(FieldKind::Xid, m.xid);
            w.put(FieldKind::Marker, &[u8::from(m.first_segment)]);
        }
        PgOutputMessage::StreamStop => {}
        PgOutputMessage::StreamCommit(m) => {
            w.u32(FieldKind::Xid, m.xid);
            w.put(FieldKind::Flags, &[m.flags]);
            w.u64(FieldKind::Lsn, m.commit_lsn.0);
            w.u64(FieldKind::Lsn, m.end_lsn.0);
            w.i64(FieldKind::Timestamp, m.commit_ts);
        }
        PgOutputMessage::StreamAbort(m) => {
            w.u32(FieldKind::Xid, m.xid);
            w.u32(FieldKind::Xid, m.sub_xid);
            if let Some(a) = m.abort {
                w.u64(FieldKind::Lsn, a.lsn.0);
                w.i64(FieldKind::Timestamp, a.ts);
            }
        }
        PgOutputMessage::BeginPrepare(m) => {
            w.u64(FieldKind::Lsn, m.prepare_lsn.0);
            w.u64(FieldKind::Lsn, m.end_lsn.0);
            w.i64(FieldKind::Timestamp, m.prepare_ts);
            w.u32(FieldKind::Xid, m.xid);
            w.string(&m.gid);
        }
        PgOutputMessage::Prepare(m) | PgOutputMessage::StreamPrepare(m) => {
            w.put(FieldKind::Flags, &[m.flags]);
            w.u64(FieldKind::Lsn, m.prepare_lsn.0);
            w.u64(FieldKind::Lsn, m.end_lsn.0);
            w.i64(FieldKind::Timestamp, m.prepare_ts);
            w.u32(FieldKind::Xid, m.xid);
            w.string(&m.gid);
        }
        PgOutputMessage::CommitPrepared(m) => {
            w.put(FieldKind::Flags, &[m.flags]);
            w.u64(FieldKind::Lsn, m.commit_lsn.0);
            w.u64(FieldKind::Lsn, m.end_lsn.0);
            w.i64(FieldKind::Timestamp, m.commit_ts);
            w.u32(FieldKind::Xid, m.xid);
            w.string(&m.gid);
        }
        PgOutputMessage::RollbackPrepared(m) => {
            w.put(FieldKind::Flags, &[m.flags]);
            w.u64(FieldKind::Lsn, m.prepare_end_lsn.0);
            w.u64(FieldKind::Lsn, m.rollback_end_lsn.0);
            w.i64(FieldKind::Timestamp, m.prepare_ts);
            w.i64(FieldKind::Timestamp, m.rollback_ts);
            w.u32(FieldKind::Xid, m.xid);
            w.string(&m.gid);
        }
    }
    (w.out, w.layout)
}

#[derive(Default)]
struct Writer {
    out: Vec<u8>,
    layout: Layout,
}

impl Writer {
    fn put(&mut self, kind: FieldKind, bytes: &[u8]) {
        self.layout.push(Field {
            offset: self.out.len(),
            width: bytes.len(),
            kind,
        });
        self.out.extend_from_slice(bytes);
    }

    fn u32(&mut self, kind: FieldKind, v: u32) {
        self.put(kind, &v.to_be_bytes());
    }

    fn u64(&mut self, kind: FieldKind, v: u64) {
        self.put(kind, &v.to_be_bytes());
    }

    fn i64(&mut self, kind: FieldKind, v: i64) {
        self.put(kind, &v.to_be_bytes());
    }

    fn i16_count(&mut self, n: usize) {
        self.put(FieldKind::Count, &(n as i16).to_be_bytes());
    }

    fn xid(&mut self, xid: Option<u32>) {
        if let Some(x) = xid {
            self.u32(FieldKind::Xid, x);
        }
    }

    fn string(&mut self, s: &str) {
        // The text itself is not a field a decoder trusts; only its end is.
        self.out.extend_from_slice(s.as_bytes());
        self.put(FieldKind::Nul, &[0]);
    }

    fn old_tuple(&mut self, old: &OldTuple) {
        let (marker, t) = match old {
            OldTuple::Key(t) => (b'K', t),
            OldTuple::Full(t) => (b'O', t),
        };
        self.put(FieldKind::Marker, &[marker]);
        self.tuple(t);
    }

    fn tuple(&mut self, t: &TupleData) {
        self.i16_count(t.0.len());
        for c in &t.0 {
            match c {
                Column::Null => self.put(FieldKind::ColumnKind, b"n"),
                Column::UnchangedToast => self.put(FieldKind::ColumnKind, b"u"),
                Column::Text(b) | Column::Binary(b) => {
                    let kind = if matches!(c, Column::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    };
                    self.put(FieldKind::ColumnKind, &[kind]);
                    self.u32(FieldKind::Length, b.len() as u32);
                    self.out.extend_from_slice(b);
                }
            }
        }
    }
}
