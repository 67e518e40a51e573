//! Pure pgoutput decoding: one logical-replication message (the payload of an XLogData,
//! after its 25-byte header) in, one typed [`PgOutputMessage`] out.
//!
//! Owns the byte layouts of protocol versions 1–4 (PostgreSQL "Logical Replication Message
//! Formats"; see `notes/replication-protocol.md` §6). It must not do I/O, keep state beyond
//! what the caller passes in [`DecodeContext`] (the small [`Decoder`] wrapper only tracks
//! whether a stream block is open), or interpret what the messages mean for the relay.
//!
//! Decoding is total: every length is checked before it is used, every unexpected byte is a
//! named [`DecodeError`], a message must be consumed to its exact end, and no input panics.
//! Column values are zero-copy slices of the input [`Bytes`].

use bytes::Bytes;

use crate::lsn::Lsn;

pub use crate::event::mapping::{pg_timestamp_to_datetime, PG_EPOCH_OFFSET_MICROS};
pub use messages::*;

mod messages;

/// What the decoder must know that is not in the message bytes themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeContext {
    /// Inside a Stream Start … Stream Stop block: Relation, Type, Insert, Update, Delete,
    /// Truncate and Message then carry a leading (sub-)transaction id.
    pub in_stream: bool,
    /// The `proto_version` requested in START_REPLICATION (1..=4).
    pub protocol_version: u32,
    /// `streaming 'parallel'` was requested (protocol 4): Stream Abort then carries
    /// `abort_lsn` and `abort_ts`.
    pub streaming_parallel: bool,
}

impl DecodeContext {
    /// Outside any stream block, for `protocol_version`, without parallel streaming.
    pub fn new(protocol_version: u32) -> Self {
        Self {
            in_stream: false,
            protocol_version,
            streaming_parallel: false,
        }
    }
}

/// Why a pgoutput message could not be decoded. Every variant means the bytes are not what
/// the negotiated protocol allows: the stream cannot be trusted past this point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message: expected at least a tag byte")]
    Empty,
    #[error("unknown pgoutput message tag {tag:#04x}")]
    UnknownTag { tag: u8 },
    #[error(
        "unsupported pgoutput protocol version {version}; supported are 1 to 4 \
         (check proto_version in START_REPLICATION)"
    )]
    UnsupportedProtocolVersion { version: u32 },
    #[error(
        "pgoutput {message} message requires protocol version {required} but version \
         {negotiated} was negotiated"
    )]
    RequiresProtocolVersion {
        message: &'static str,
        required: u32,
        negotiated: u32,
    },
    #[error("pgoutput {message} message ends early: {needed} more byte(s) needed for {field}")]
    UnexpectedEnd {
        message: &'static str,
        field: &'static str,
        needed: usize,
    },
    #[error("pgoutput {message} message has a negative {field} ({value})")]
    NegativeLength {
        message: &'static str,
        field: &'static str,
        value: i64,
    },
    #[error(
        "pgoutput {message} message declares {field} {value}, but only {remaining} byte(s) remain"
    )]
    OversizedLength {
        message: &'static str,
        field: &'static str,
        value: u64,
        remaining: usize,
    },
    #[error("pgoutput {message} message: {field} is not NUL-terminated")]
    MissingNul {
        message: &'static str,
        field: &'static str,
    },
    #[error("pgoutput {message} message: {field} is not valid UTF-8")]
    InvalidUtf8 {
        message: &'static str,
        field: &'static str,
    },
    #[error(
        "pgoutput {message} message: column {column} has invalid kind {kind:#04x} \
         (expected 'n', 'u', 't' or 'b')"
    )]
    InvalidColumnKind {
        message: &'static str,
        column: usize,
        kind: u8,
    },
    #[error("pgoutput {message} message: invalid {field} byte {value:#04x} (expected {expected})")]
    InvalidByte {
        message: &'static str,
        field: &'static str,
        value: u8,
        expected: &'static str,
    },
    #[error("pgoutput {message} message has {count} trailing byte(s) after its last field")]
    TrailingBytes { message: &'static str, count: usize },
    #[error("pgoutput Stream Start for xid {xid} arrived inside an open stream block")]
    NestedStreamStart { xid: u32 },
    #[error("pgoutput Stream Stop arrived outside a stream block")]
    StreamStopOutsideStream,
}

/// Decodes one pgoutput message under `ctx`.
pub fn decode(data: Bytes, ctx: &DecodeContext) -> Result<PgOutputMessage, DecodeError> {
    if !(1..=4).contains(&ctx.protocol_version) {
        return Err(DecodeError::UnsupportedProtocolVersion {
            version: ctx.protocol_version,
        });
    }
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Empty);
    };
    let message = message_name(tag).ok_or(DecodeError::UnknownTag { tag })?;
    let required = match tag {
        b'S' | b'E' | b'c' | b'A' => 2,
        b'b' | b'P' | b'K' | b'r' | b'p' => 3,
        _ => 1,
    };
    if ctx.protocol_version < required {
        return Err(DecodeError::RequiresProtocolVersion {
            message,
            required,
            negotiated: ctx.protocol_version,
        });
    }
    let mut r = Reader {
        buf: data,
        pos: 1,
        message,
    };
    let msg = match tag {
        b'B' => PgOutputMessage::Begin(Begin {
            final_lsn: r.lsn("final_lsn")?,
            commit_ts: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        }),
        b'C' => PgOutputMessage::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit_lsn")?,
            end_lsn: r.lsn("end_lsn")?,
            commit_ts: r.i64("commit timestamp")?,
        }),
        b'O' => PgOutputMessage::Origin(Origin {
            commit_lsn: r.lsn("origin commit lsn")?,
            name: r.string("origin name")?,
        }),
        b'R' => PgOutputMessage::Relation(decode_relation(&mut r, ctx)?),
        b'Y' => PgOutputMessage::Type(TypeInfo {
            xid: r.stream_xid(ctx)?,
            oid: r.u32("type oid")?,
            namespace: r.string("namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let xid = r.stream_xid(ctx)?;
            let relation_oid = r.u32("relation oid")?;
            r.expect_byte("tuple marker", b'N', "'N'")?;
            PgOutputMessage::Insert(Insert {
                xid,
                relation_oid,
                new: r.tuple()?,
            })
        }
        b'U' => PgOutputMessage::Update(decode_update(&mut r, ctx)?),
        b'D' => {
            let xid = r.stream_xid(ctx)?;
            let relation_oid = r.u32("relation oid")?;
            let old = match r.u8("tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                value => {
                    return Err(r.invalid_byte("tuple marker", value, "'K' or 'O'"));
                }
            };
            PgOutputMessage::Delete(Delete {
                xid,
                relation_oid,
                old,
            })
        }
        b'T' => {
            let xid = r.stream_xid(ctx)?;
            let count = r.count_i32("relation count", 4)?;
            let options = r.u8("options")?;
            let mut relation_oids = Vec::with_capacity(count);
            for _ in 0..count {
                relation_oids.push(r.u32("relation oid")?);
            }
            PgOutputMessage::Truncate(Truncate {
                xid,
                options,
                relation_oids,
            })
        }
        b'M' => {
            let xid = r.stream_xid(ctx)?;
            let flags = r.u8("flags")?;
            let lsn = r.lsn("message lsn")?;
            let prefix = r.string("prefix")?;
            let len = r.count_i32("content length", 1)?;
            PgOutputMessage::Message(LogicalMessage {
                xid,
                flags,
                lsn,
                prefix,
                content: r.bytes(len, "content")?,
            })
        }
        b'S' => PgOutputMessage::StreamStart(StreamStart {
            xid: r.u32("xid")?,
            first_segment: match r.u8("first_segment")? {
                0 => false,
                1 => true,
                value => return Err(r.invalid_byte("first_segment", value, "0 or 1")),
            },
        }),
        b'E' => PgOutputMessage::StreamStop,
        b'c' => PgOutputMessage::StreamCommit(StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit_lsn")?,
            end_lsn: r.lsn("end_lsn")?,
            commit_ts: r.i64("commit timestamp")?,
        }),
        b'A' => {
            let xid = r.u32("xid")?;
            let sub_xid = r.u32("sub-transaction xid")?;
            let abort = if ctx.streaming_parallel && ctx.protocol_version >= 4 {
                Some(AbortInfo {
                    lsn: r.lsn("abort_lsn")?,
                    ts: r.i64("abort timestamp")?,
                })
            } else {
                None
            };
            PgOutputMessage::StreamAbort(StreamAbort {
                xid,
                sub_xid,
                abort,
            })
        }
        b'b' => PgOutputMessage::BeginPrepare(BeginPrepare {
            prepare_lsn: r.lsn("prepare_lsn")?,
            end_lsn: r.lsn("end_lsn")?,
            prepare_ts: r.i64("prepare timestamp")?,
            xid: r.u32("xid")?,
            gid: r.string("gid")?,
        }),
        b'P' => PgOutputMessage::Prepare(decode_prepare(&mut r)?),
        b'p' => PgOutputMessage::StreamPrepare(decode_prepare(&mut r)?),
        b'K' => PgOutputMessage::CommitPrepared(CommitPrepared {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit_lsn")?,
            end_lsn: r.lsn("end_lsn")?,
            commit_ts: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
            gid: r.string("gid")?,
        }),
        b'r' => PgOutputMessage::RollbackPrepared(RollbackPrepared {
            flags: r.u8("flags")?,
            prepare_end_lsn: r.lsn("prepare_end_lsn")?,
            rollback_end_lsn: r.lsn("rollback_end_lsn")?,
            prepare_ts: r.i64("prepare timestamp")?,
            rollback_ts: r.i64("rollback timestamp")?,
            xid: r.u32("xid")?,
            gid: r.string("gid")?,
        }),
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    r.finish()?;
    Ok(msg)
}

/// Decodes the first bytes of an Insert message whose end was cut off: the header and
/// every column that is complete in `prefix`. A column cut short ends the decoding without
/// an error (the rest of the message is not there); a byte that cannot belong to an Insert
/// is an error, as in [`decode`].
pub fn decode_insert_prefix(
    prefix: Bytes,
    ctx: &DecodeContext,
) -> Result<InsertPrefix, DecodeError> {
    let mut r = Reader {
        buf: prefix,
        pos: 0,
        message: "Insert",
    };
    r.expect_byte("tag", b'I', "'I'")?;
    let xid = r.stream_xid(ctx)?;
    let relation_oid = r.u32("relation oid")?;
    r.expect_byte("tuple marker", b'N', "'N'")?;
    let count = i16::from_be_bytes(r.take("tuple column count")?);
    let column_count = usize::try_from(count).map_err(|_| DecodeError::NegativeLength {
        message: r.message,
        field: "tuple column count",
        value: i64::from(count),
    })?;
    let mut columns = Vec::new();
    for column in 0..column_count {
        let Ok(kind) = r.u8("tuple column kind") else {
            break;
        };
        columns.push(match kind {
            b'n' => Column::Null,
            b'u' => Column::UnchangedToast,
            b't' | b'b' => {
                let Ok(len) = r.i32("column value length") else {
                    break;
                };
                let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
                    message: r.message,
                    field: "column value length",
                    value: i64::from(len),
                })?;
                if len > r.remaining() {
                    break;
                }
                let value = r.bytes(len, "column value")?;
                if kind == b't' {
                    Column::Text(value)
                } else {
                    Column::Binary(value)
                }
            }
            kind => {
                return Err(DecodeError::InvalidColumnKind {
                    message: r.message,
                    column,
                    kind,
                })
            }
        });
    }
    Ok(InsertPrefix {
        xid,
        relation_oid,
        column_count,
        columns,
    })
}

/// Tracks whether a stream block is open so callers can feed messages one by one.
///
/// Reset it (or make a new one) on every new replication connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    ctx: DecodeContext,
}

impl Decoder {
    /// A decoder for `protocol_version` (1..=4); `streaming_parallel` as requested in
    /// START_REPLICATION.
    pub fn new(protocol_version: u32, streaming_parallel: bool) -> Self {
        Self {
            ctx: DecodeContext {
                in_stream: false,
                protocol_version,
                streaming_parallel,
            },
        }
    }

    /// Decodes the next message, opening the stream block on Stream Start and closing it on
    /// Stream Stop. A nested Stream Start or a stray Stream Stop is an error.
    pub fn decode(&mut self, data: Bytes) -> Result<PgOutputMessage, DecodeError> {
        let msg = decode(data, &self.ctx)?;
        match &msg {
            PgOutputMessage::StreamStart(start) => {
                if self.ctx.in_stream {
                    return Err(DecodeError::NestedStreamStart { xid: start.xid });
                }
                self.ctx.in_stream = true;
            }
            PgOutputMessage::StreamStop => {
                if !self.ctx.in_stream {
                    return Err(DecodeError::StreamStopOutsideStream);
                }
                self.ctx.in_stream = false;
            }
            _ => {}
        }
        Ok(msg)
    }

    /// The context the next message will be decoded under.
    pub fn context(&self) -> &DecodeContext {
        &self.ctx
    }
}

fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => return None,
    })
}

fn decode_relation(r: &mut Reader, ctx: &DecodeContext) -> Result<Relation, DecodeError> {
    let xid = r.stream_xid(ctx)?;
    let oid = r.u32("relation oid")?;
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let ri = r.u8("replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(ri)
        .ok_or_else(|| r.invalid_byte("replica identity", ri, "'d', 'n', 'f' or 'i'"))?;
    // Each column takes at least 1 + 1 (empty name's NUL) + 4 + 4 bytes.
    let count = r.count_i16("column count", 10)?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        columns.push(RelationColumn {
            flags: r.u8("column flags")?,
            name: r.string("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        xid,
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn decode_update(r: &mut Reader, ctx: &DecodeContext) -> Result<Update, DecodeError> {
    let xid = r.stream_xid(ctx)?;
    let relation_oid = r.u32("relation oid")?;
    let (old, marker) = match r.u8("tuple marker")? {
        b'K' => (Some(OldTuple::Key(r.tuple()?)), r.u8("new tuple marker")?),
        b'O' => (Some(OldTuple::Full(r.tuple()?)), r.u8("new tuple marker")?),
        other => (None, other),
    };
    if marker != b'N' {
        let expected = if old.is_some() {
            "'N'"
        } else {
            "'K', 'O' or 'N'"
        };
        return Err(r.invalid_byte("tuple marker", marker, expected));
    }
    Ok(Update {
        xid,
        relation_oid,
        old,
        new: r.tuple()?,
    })
}

fn decode_prepare(r: &mut Reader) -> Result<Prepare, DecodeError> {
    Ok(Prepare {
        flags: r.u8("flags")?,
        prepare_lsn: r.lsn("prepare_lsn")?,
        end_lsn: r.lsn("end_lsn")?,
        prepare_ts: r.i64("prepare timestamp")?,
        xid: r.u32("xid")?,
        gid: r.string("gid")?,
    })
}

/// A bounds-checked cursor over one message. Every read names the field it was reading so
/// errors say where the message broke.
struct Reader {
    buf: Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let end = self.pos.checked_add(N).filter(|&e| e <= self.buf.len());
        let bytes = end
            .and_then(|e| self.buf.get(self.pos..e))
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(DecodeError::UnexpectedEnd {
                message: self.message,
                field,
                needed: N - self.remaining().min(N),
            })?;
        self.pos += N;
        Ok(bytes)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.take(field)?)))
    }

    fn stream_xid(&mut self, ctx: &DecodeContext) -> Result<Option<u32>, DecodeError> {
        if ctx.in_stream {
            Ok(Some(self.u32("stream xid")?))
        } else {
            Ok(None)
        }
    }

    fn expect_byte(
        &mut self,
        field: &'static str,
        want: u8,
        expected: &'static str,
    ) -> Result<(), DecodeError> {
        let value = self.u8(field)?;
        if value == want {
            Ok(())
        } else {
            Err(self.invalid_byte(field, value, expected))
        }
    }

    fn invalid_byte(&self, field: &'static str, value: u8, expected: &'static str) -> DecodeError {
        DecodeError::InvalidByte {
            message: self.message,
            field,
            value,
            expected,
        }
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::MissingNul {
                message: self.message,
                field,
            })?;
        let text = rest.get(..nul).unwrap_or_default();
        let s = std::str::from_utf8(text)
            .map_err(|_| DecodeError::InvalidUtf8 {
                message: self.message,
                field,
            })?
            .to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    /// A zero-copy slice of `len` bytes.
    fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::OversizedLength {
                message: self.message,
                field,
                value: len as u64,
                remaining: self.remaining(),
            });
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    /// An Int32 count or length; rejects negatives and values that cannot fit in the rest
    /// of the message at `min_item_size` bytes per item (so nothing huge is allocated).
    fn count_i32(
        &mut self,
        field: &'static str,
        min_item_size: usize,
    ) -> Result<usize, DecodeError> {
        let value = self.i32(field)?;
        self.check_count(field, i64::from(value), min_item_size)
    }

    fn count_i16(
        &mut self,
        field: &'static str,
        min_item_size: usize,
    ) -> Result<usize, DecodeError> {
        let value = i16::from_be_bytes(self.take(field)?);
        self.check_count(field, i64::from(value), min_item_size)
    }

    fn check_count(
        &self,
        field: &'static str,
        value: i64,
        min_item_size: usize,
    ) -> Result<usize, DecodeError> {
        let count = usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            message: self.message,
            field,
            value,
        })?;
        if count.saturating_mul(min_item_size) > self.remaining() {
            return Err(DecodeError::OversizedLength {
                message: self.message,
                field,
                value: count as u64,
                remaining: self.remaining(),
            });
        }
        Ok(count)
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        // Every column takes at least its kind byte.
        let count = self.count_i16("tuple column count", 1)?;
        let mut columns = Vec::with_capacity(count);
        for column in 0..count {
            let kind = self.u8("tuple column kind")?;
            columns.push(match kind {
                b'n' => Column::Null,
                b'u' => Column::UnchangedToast,
                b't' => {
                    let len = self.count_i32("column value length", 1)?;
                    Column::Text(self.bytes(len, "column value")?)
                }
                b'b' => {
                    let len = self.count_i32("column value length", 1)?;
                    Column::Binary(self.bytes(len, "column value")?)
                }
                kind => {
                    return Err(DecodeError::InvalidColumnKind {
                        message: self.message,
                        column,
                        kind,
                    })
                }
            });
        }
        Ok(TupleData(columns))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                count,
            }),
        }
    }
}

/// Test-only encoder: the inverse of [`decode`], for round-trip properties and hand-built
/// vectors in other modules' tests.
#[cfg(test)]
pub(crate) mod encode;
#[cfg(test)]
mod tests;
