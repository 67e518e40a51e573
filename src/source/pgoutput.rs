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

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// `'B'`
    Begin(Begin),
    /// `'C'`
    Commit(Commit),
    /// `'O'`
    Origin(Origin),
    /// `'R'`
    Relation(Relation),
    /// `'Y'`
    Type(TypeInfo),
    /// `'I'`
    Insert(Insert),
    /// `'U'`
    Update(Update),
    /// `'D'`
    Delete(Delete),
    /// `'T'`
    Truncate(Truncate),
    /// `'M'`
    Message(LogicalMessage),
    /// `'S'` (protocol ≥ 2)
    StreamStart(StreamStart),
    /// `'E'` (protocol ≥ 2): no body.
    StreamStop,
    /// `'c'` (protocol ≥ 2)
    StreamCommit(StreamCommit),
    /// `'A'` (protocol ≥ 2)
    StreamAbort(StreamAbort),
    /// `'b'` (protocol ≥ 3)
    BeginPrepare(BeginPrepare),
    /// `'P'` (protocol ≥ 3)
    Prepare(Prepare),
    /// `'K'` (protocol ≥ 3)
    CommitPrepared(CommitPrepared),
    /// `'r'` (protocol ≥ 3)
    RollbackPrepared(RollbackPrepared),
    /// `'p'` (protocol ≥ 3): same layout as Prepare.
    StreamPrepare(Prepare),
}

impl PgOutputMessage {
    /// The message's tag byte (`b'B'` for Begin, …).
    pub fn tag(&self) -> u8 {
        match self {
            Self::Begin(_) => b'B',
            Self::Commit(_) => b'C',
            Self::Origin(_) => b'O',
            Self::Relation(_) => b'R',
            Self::Type(_) => b'Y',
            Self::Insert(_) => b'I',
            Self::Update(_) => b'U',
            Self::Delete(_) => b'D',
            Self::Truncate(_) => b'T',
            Self::Message(_) => b'M',
            Self::StreamStart(_) => b'S',
            Self::StreamStop => b'E',
            Self::StreamCommit(_) => b'c',
            Self::StreamAbort(_) => b'A',
            Self::BeginPrepare(_) => b'b',
            Self::Prepare(_) => b'P',
            Self::CommitPrepared(_) => b'K',
            Self::RollbackPrepared(_) => b'r',
            Self::StreamPrepare(_) => b'p',
        }
    }
}

/// Begin 'B': start of a (non-streamed) transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record (equals the Commit's `commit_lsn`).
    pub final_lsn: Lsn,
    /// Commit time, µs since 2000-01-01 UTC.
    pub commit_ts: i64,
    /// Top-level transaction id.
    pub xid: u32,
}

/// Commit 'C': end of a transaction. `end_lsn` is the position to acknowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Currently always 0.
    pub flags: u8,
    /// LSN of the commit record (equals the Begin's `final_lsn`).
    pub commit_lsn: Lsn,
    /// End of the commit record: the flush position once the transaction is settled.
    pub end_lsn: Lsn,
    /// Commit time, µs since 2000-01-01 UTC.
    pub commit_ts: i64,
}

/// Origin 'O': the transaction was replicated from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server (0 when the origin session did not set it).
    pub commit_lsn: Lsn,
    /// Replication origin name.
    pub name: String,
}

/// Replica identity setting of a relation (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(Self::Default),
            b'n' => Some(Self::Nothing),
            b'f' => Some(Self::Full),
            b'i' => Some(Self::Index),
            _ => None,
        }
    }

    /// The wire byte.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::Default => b'd',
            Self::Nothing => b'n',
            Self::Full => b'f',
            Self::Index => b'i',
        }
    }
}

/// One column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 1 = part of the replica identity key.
    pub flags: u8,
    /// Column name (`attname`).
    pub name: String,
    /// Type OID (`atttypid`); for non-built-in types a Type message names it.
    pub type_oid: u32,
    /// `atttypmod`; -1 when the type has none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Whether the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// Relation 'R': the shape of a table, sent before its first change in a session and again
/// after any change to it. Columns are in tuple order and respect the publication's column
/// list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Sub-transaction id; present only inside a stream block.
    pub xid: Option<u32>,
    /// Relation OID; DML messages refer to the relation by it.
    pub oid: u32,
    /// Schema name; empty means `pg_catalog`.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Which old-row image Update/Delete carry.
    pub replica_identity: ReplicaIdentity,
    /// Published columns, in tuple order.
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    /// `namespace.name` as shown to operators (`pg_catalog` for the empty namespace).
    pub fn qualified_name(&self) -> String {
        let ns = if self.namespace.is_empty() {
            "pg_catalog"
        } else {
            &self.namespace
        };
        format!("{ns}.{}", self.name)
    }
}

/// Type 'Y': name of a non-built-in type used by a following Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Sub-transaction id; present only inside a stream block.
    pub xid: Option<u32>,
    /// Type OID, as used in Relation columns.
    pub oid: u32,
    /// Schema name; empty means `pg_catalog`.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// `'n'`
    Null,
    /// `'u'`: an unchanged TOASTed value the server did not send.
    UnchangedToast,
    /// `'t'`: the type's text output.
    Text(Bytes),
    /// `'b'`: the type's binary (`typsend`) output.
    Binary(Bytes),
}

/// The columns of one row, in Relation column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData(pub Vec<Column>);

/// The old row image carried by Update and Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `'K'`: replica identity key columns only (others are NULL).
    Key(TupleData),
    /// `'O'`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

/// Insert 'I'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Sub-transaction id; present only inside a stream block.
    pub xid: Option<u32>,
    /// The Relation this row belongs to.
    pub relation_oid: u32,
    /// The inserted row.
    pub new: TupleData,
}

/// The start of an Insert 'I' whose whole message was not received (it exceeded the
/// maximum message size): its header and the columns that fit in the bytes kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertPrefix {
    /// Sub-transaction id; present only inside a stream block.
    pub xid: Option<u32>,
    /// The Relation this row belongs to.
    pub relation_oid: u32,
    /// How many columns the tuple declares.
    pub column_count: usize,
    /// The leading columns that are complete within the prefix, in Relation column order
    /// (at most `column_count`).
    pub columns: Vec<Column>,
}

/// Update 'U'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Sub-transaction id; present only inside a stream block.
    pub xid: Option<u32>,
    /// The Relation this row belongs to.
    pub relation_oid: u32,
    /// Absent when the key did not change and the identity is not FULL.
    pub old: Option<OldTuple>,
    /// The new row; unchanged TOASTed columns are [`Column::UnchangedToast`].
    pub new: TupleData,
}

/// Delete 'D'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Sub-transaction id; present only inside a stream block.
    pub xid: Option<u32>,
    /// The Relation this row belongs to.
    pub relation_oid: u32,
    /// The deleted row's key or full image.
    pub old: OldTuple,
}

/// Truncate 'T'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Sub-transaction id; present only inside a stream block.
    pub xid: Option<u32>,
    /// Bit 1 = CASCADE, bit 2 = RESTART IDENTITY.
    pub options: u8,
    /// The truncated relations.
    pub relation_oids: Vec<u32>,
}

/// Message 'M': a `pg_logical_emit_message` record. Not filtered by publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Sub-transaction id; present only inside a stream block.
    pub xid: Option<u32>,
    /// Bit 1 = transactional.
    pub flags: u8,
    /// LSN of the message record.
    pub lsn: Lsn,
    /// The emitter's prefix; filter on it (messages bypass publications).
    pub prefix: String,
    /// The message body, zero-copy.
    pub content: Bytes,
}

impl LogicalMessage {
    /// Whether the message was emitted as part of a transaction (arrives inside Begin/Commit).
    pub fn is_transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// Stream Start 'S' (protocol ≥ 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// Top-level transaction id.
    pub xid: u32,
    /// First block streamed for this transaction.
    pub first_segment: bool,
}

/// Stream Commit 'c' (protocol ≥ 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// Top-level transaction id.
    pub xid: u32,
    /// Currently always 0.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record: the flush position once the transaction is settled.
    pub end_lsn: Lsn,
    /// Commit time, µs since 2000-01-01 UTC.
    pub commit_ts: i64,
}

/// Where and when a parallel-streamed transaction aborted (protocol 4, `streaming 'parallel'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortInfo {
    /// LSN of the abort record.
    pub lsn: Lsn,
    /// Abort time, µs since 2000-01-01 UTC.
    pub ts: i64,
}

/// Stream Abort 'A' (protocol ≥ 2). `sub_xid != xid` aborts only that sub-transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// Top-level transaction id.
    pub xid: u32,
    /// The aborted (sub-)transaction; equals `xid` when the whole transaction aborted.
    pub sub_xid: u32,
    /// Present exactly when the context has `streaming_parallel`.
    pub abort: Option<AbortInfo>,
}

/// Begin Prepare 'b' (protocol ≥ 3, two-phase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End of the record: the flush position once handled.
    pub end_lsn: Lsn,
    /// Prepare time, µs since 2000-01-01 UTC.
    pub prepare_ts: i64,
    /// Transaction id.
    pub xid: u32,
    /// The user-defined global transaction id.
    pub gid: String,
}

/// Prepare 'P' and Stream Prepare 'p' (protocol ≥ 3, two-phase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    /// Currently always 0.
    pub flags: u8,
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End of the record: the flush position once handled.
    pub end_lsn: Lsn,
    /// Prepare time, µs since 2000-01-01 UTC.
    pub prepare_ts: i64,
    /// Transaction id.
    pub xid: u32,
    /// The user-defined global transaction id.
    pub gid: String,
}

/// Commit Prepared 'K' (protocol ≥ 3, two-phase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    /// Currently always 0.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the record: the flush position once handled.
    pub end_lsn: Lsn,
    /// Commit time, µs since 2000-01-01 UTC.
    pub commit_ts: i64,
    /// Transaction id.
    pub xid: u32,
    /// The user-defined global transaction id.
    pub gid: String,
}

/// Rollback Prepared 'r' (protocol ≥ 3, two-phase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Currently always 0.
    pub flags: u8,
    /// End of the prepare record.
    pub prepare_end_lsn: Lsn,
    /// End of the rollback record.
    pub rollback_end_lsn: Lsn,
    /// Prepare time, µs since 2000-01-01 UTC.
    pub prepare_ts: i64,
    /// Rollback time, µs since 2000-01-01 UTC.
    pub rollback_ts: i64,
    /// Transaction id.
    pub xid: u32,
    /// The user-defined global transaction id.
    pub gid: String,
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
pub(crate) mod encode {
    use super::*;

    /// Encodes `msg` as the server would; the stream xid prefix is written when the message
    /// carries one (decode it under [`context_for`]).
    pub(crate) fn encode(msg: &PgOutputMessage) -> Vec<u8> {
        let mut out = vec![msg.tag()];
        let o = &mut out;
        match msg {
            PgOutputMessage::Begin(m) => {
                lsn(o, m.final_lsn);
                i64(o, m.commit_ts);
                u32(o, m.xid);
            }
            PgOutputMessage::Commit(m) => {
                o.push(m.flags);
                lsn(o, m.commit_lsn);
                lsn(o, m.end_lsn);
                i64(o, m.commit_ts);
            }
            PgOutputMessage::Origin(m) => {
                lsn(o, m.commit_lsn);
                string(o, &m.name);
            }
            PgOutputMessage::Relation(m) => {
                xid(o, m.xid);
                u32(o, m.oid);
                string(o, &m.namespace);
                string(o, &m.name);
                o.push(m.replica_identity.as_byte());
                o.extend_from_slice(&(m.columns.len() as i16).to_be_bytes());
                for c in &m.columns {
                    o.push(c.flags);
                    string(o, &c.name);
                    u32(o, c.type_oid);
                    o.extend_from_slice(&c.type_modifier.to_be_bytes());
                }
            }
            PgOutputMessage::Type(m) => {
                xid(o, m.xid);
                u32(o, m.oid);
                string(o, &m.namespace);
                string(o, &m.name);
            }
            PgOutputMessage::Insert(m) => {
                xid(o, m.xid);
                u32(o, m.relation_oid);
                o.push(b'N');
                tuple(o, &m.new);
            }
            PgOutputMessage::Update(m) => {
                xid(o, m.xid);
                u32(o, m.relation_oid);
                if let Some(old) = &m.old {
                    old_tuple(o, old);
                }
                o.push(b'N');
                tuple(o, &m.new);
            }
            PgOutputMessage::Delete(m) => {
                xid(o, m.xid);
                u32(o, m.relation_oid);
                old_tuple(o, &m.old);
            }
            PgOutputMessage::Truncate(m) => {
                xid(o, m.xid);
                u32(o, m.relation_oids.len() as u32);
                o.push(m.options);
                for oid in &m.relation_oids {
                    u32(o, *oid);
                }
            }
            PgOutputMessage::Message(m) => {
                xid(o, m.xid);
                o.push(m.flags);
                lsn(o, m.lsn);
                string(o, &m.prefix);
                u32(o, m.content.len() as u32);
                o.extend_from_slice(&m.content);
            }
            PgOutputMessage::StreamStart(m) => {
                u32(o, m.xid);
                o.push(u8::from(m.first_segment));
            }
            PgOutputMessage::StreamStop => {}
            PgOutputMessage::StreamCommit(m) => {
                u32(o, m.xid);
                o.push(m.flags);
                lsn(o, m.commit_lsn);
                lsn(o, m.end_lsn);
                i64(o, m.commit_ts);
            }
            PgOutputMessage::StreamAbort(m) => {
                u32(o, m.xid);
                u32(o, m.sub_xid);
                if let Some(a) = m.abort {
                    lsn(o, a.lsn);
                    i64(o, a.ts);
                }
            }
            PgOutputMessage::BeginPrepare(m) => {
                lsn(o, m.prepare_lsn);
                lsn(o, m.end_lsn);
                i64(o, m.prepare_ts);
                u32(o, m.xid);
                string(o, &m.gid);
            }
            PgOutputMessage::Prepare(m) | PgOutputMessage::StreamPrepare(m) => {
                o.push(m.flags);
                lsn(o, m.prepare_lsn);
                lsn(o, m.end_lsn);
                i64(o, m.prepare_ts);
                u32(o, m.xid);
                string(o, &m.gid);
            }
            PgOutputMessage::CommitPrepared(m) => {
                o.push(m.flags);
                lsn(o, m.commit_lsn);
                lsn(o, m.end_lsn);
                i64(o, m.commit_ts);
                u32(o, m.xid);
                string(o, &m.gid);
            }
            PgOutputMessage::RollbackPrepared(m) => {
                o.push(m.flags);
                lsn(o, m.prepare_end_lsn);
                lsn(o, m.rollback_end_lsn);
                i64(o, m.prepare_ts);
                i64(o, m.rollback_ts);
                u32(o, m.xid);
                string(o, &m.gid);
            }
        }
        out
    }

    /// The context under which `encode(msg)` decodes back to `msg`.
    pub(crate) fn context_for(msg: &PgOutputMessage) -> DecodeContext {
        let xid = match msg {
            PgOutputMessage::Relation(m) => m.xid,
            PgOutputMessage::Type(m) => m.xid,
            PgOutputMessage::Insert(m) => m.xid,
            PgOutputMessage::Update(m) => m.xid,
            PgOutputMessage::Delete(m) => m.xid,
            PgOutputMessage::Truncate(m) => m.xid,
            PgOutputMessage::Message(m) => m.xid,
            _ => None,
        };
        let parallel = matches!(msg, PgOutputMessage::StreamAbort(a) if a.abort.is_some());
        DecodeContext {
            in_stream: xid.is_some(),
            protocol_version: if parallel { 4 } else { 3 },
            streaming_parallel: parallel,
        }
    }

    fn xid(o: &mut Vec<u8>, xid: Option<u32>) {
        if let Some(x) = xid {
            u32(o, x);
        }
    }

    fn u32(o: &mut Vec<u8>, v: u32) {
        o.extend_from_slice(&v.to_be_bytes());
    }

    fn i64(o: &mut Vec<u8>, v: i64) {
        o.extend_from_slice(&v.to_be_bytes());
    }

    fn lsn(o: &mut Vec<u8>, v: Lsn) {
        o.extend_from_slice(&v.0.to_be_bytes());
    }

    fn string(o: &mut Vec<u8>, s: &str) {
        o.extend_from_slice(s.as_bytes());
        o.push(0);
    }

    fn old_tuple(o: &mut Vec<u8>, old: &OldTuple) {
        match old {
            OldTuple::Key(t) => {
                o.push(b'K');
                tuple(o, t);
            }
            OldTuple::Full(t) => {
                o.push(b'O');
                tuple(o, t);
            }
        }
    }

    pub(crate) fn tuple(o: &mut Vec<u8>, t: &TupleData) {
        o.extend_from_slice(&(t.0.len() as i16).to_be_bytes());
        for c in &t.0 {
            match c {
                Column::Null => o.push(b'n'),
                Column::UnchangedToast => o.push(b'u'),
                Column::Text(b) => {
                    o.push(b't');
                    u32(o, b.len() as u32);
                    o.extend_from_slice(b);
                }
                Column::Binary(b) => {
                    o.push(b'b');
                    u32(o, b.len() as u32);
                    o.extend_from_slice(b);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::encode::{context_for, encode};
    use super::*;
    use proptest::prelude::*;

    fn ctx(version: u32) -> DecodeContext {
        DecodeContext::new(version)
    }

    fn stream_ctx(version: u32) -> DecodeContext {
        DecodeContext {
            in_stream: true,
            ..DecodeContext::new(version)
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn dec(bytes: &[u8], c: &DecodeContext) -> Result<PgOutputMessage, DecodeError> {
        decode(Bytes::copy_from_slice(bytes), c)
    }

    /// Decodes, then checks every strict prefix errors and one extra byte is trailing.
    fn dec_strict(bytes: &[u8], c: &DecodeContext) -> PgOutputMessage {
        let msg = dec(bytes, c).unwrap();
        for len in 0..bytes.len() {
            assert!(dec(&bytes[..len], c).is_err(), "prefix {len} decoded");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            dec(&longer, c),
            Err(DecodeError::TrailingBytes { count: 1, .. })
        ));
        msg
    }

    fn text(s: &str) -> Column {
        Column::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn begin_commit_from_notes_appendix() {
        let begin = hex("42 0000000009d36578 000303e72f7a44f7 00000329");
        assert_eq!(
            dec_strict(&begin, &ctx(1)),
            PgOutputMessage::Begin(Begin {
                final_lsn: Lsn(0x9D3_6578),
                commit_ts: 0x0003_03e7_2f7a_44f7,
                xid: 809
            })
        );
        let commit = hex("43 00 0000000009d36578 0000000009d365a8 000303e72f7a44f7");
        let PgOutputMessage::Commit(c) = dec_strict(&commit, &ctx(1)) else {
            panic!("not a commit")
        };
        assert_eq!(c.end_lsn.to_string(), "0/9D365A8");
        assert_eq!(c.commit_lsn, Lsn(0x9D3_6578));
    }

    #[test]
    fn outbox_insert_text_tuple_with_null() {
        let mut b = hex("49 00004004 4e 0003");
        b.extend(hex("74 00000005"));
        b.extend(b"62819");
        b.push(b'n');
        b.extend(hex("74 00000010"));
        b.extend(br#"{"amount": 12.5}"#);
        let msg = dec_strict(&b, &ctx(1));
        assert_eq!(
            msg,
            PgOutputMessage::Insert(Insert {
                xid: None,
                relation_oid: 16388,
                new: TupleData(vec![
                    text("62819"),
                    Column::Null,
                    text(r#"{"amount": 12.5}"#)
                ]),
            })
        );
    }

    /// Every prefix of an Insert decodes to its header and the columns complete in it
    /// (once the header is there); the whole message gives every column.
    #[test]
    fn insert_prefix_keeps_the_complete_leading_columns() {
        let mut b = hex("49 00004004 4e 0003");
        b.extend(hex("74 00000005"));
        b.extend(b"62819");
        b.push(b'n');
        b.extend(hex("74 00000010"));
        b.extend(br#"{"amount": 12.5}"#);
        let header = 1 + 4 + 1 + 2;
        for len in 0..b.len() {
            let prefix = decode_insert_prefix(Bytes::copy_from_slice(&b[..len]), &ctx(1));
            if len < header {
                assert!(prefix.is_err(), "{len}");
                continue;
            }
            let prefix = prefix.unwrap();
            assert_eq!((prefix.relation_oid, prefix.column_count), (16388, 3));
            let complete = match len {
                l if l < header + 1 + 4 + 5 => 0,
                l if l < header + 1 + 4 + 5 + 1 => 1,
                l if l < b.len() => 2,
                _ => 3,
            };
            assert_eq!(prefix.columns.len(), complete, "{len}");
        }
        let whole = decode_insert_prefix(Bytes::from(b), &ctx(1)).unwrap();
        assert_eq!(whole.columns[0], text("62819"));
        assert_eq!(whole.columns[1], Column::Null);
        assert!(decode_insert_prefix(Bytes::from(hex("55 00004004 4e 0001")), &ctx(1)).is_err());
        assert!(decode_insert_prefix(Bytes::from(hex("49 00004004 4e 0001 78")), &ctx(1)).is_err());
    }

    #[test]
    fn column_values_are_zero_copy_slices() {
        let raw = Bytes::from(hex("49 00000001 4e 0001 74 00000003 616263"));
        let PgOutputMessage::Insert(ins) = decode(raw.clone(), &ctx(1)).unwrap() else {
            panic!()
        };
        let Column::Text(v) = &ins.new.0[0] else {
            panic!()
        };
        assert_eq!(v.as_ptr(), raw[raw.len() - 3..].as_ptr());
    }

    #[test]
    fn relation_with_key_flag_and_typmod() {
        let mut b = hex("52 00004004");
        b.extend(b"public\0outbox\0");
        b.push(b'd');
        b.extend(hex("0002 01"));
        b.extend(b"id\0");
        b.extend(hex("00000014 ffffffff 00"));
        b.extend(b"code\0");
        b.extend(hex("00000413 0000000e"));
        let PgOutputMessage::Relation(rel) = dec_strict(&b, &ctx(1)) else {
            panic!()
        };
        assert_eq!(rel.qualified_name(), "public.outbox");
        assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
        assert!(rel.columns[0].is_key());
        assert_eq!(rel.columns[0].type_modifier, -1);
        assert_eq!(rel.columns[1].name, "code");
        assert_eq!(rel.columns[1].type_oid, 1043);
        assert!(!rel.columns[1].is_key());
        assert_eq!(rel.columns[1].type_modifier, 14);
    }

    #[test]
    fn relation_in_stream_has_xid_prefix() {
        let mut b = hex("52 00000320 00004004");
        b.extend(b"\0t\0f\0\0");
        let PgOutputMessage::Relation(rel) = dec_strict(&b, &stream_ctx(2)) else {
            panic!()
        };
        assert_eq!(rel.xid, Some(800));
        assert_eq!(rel.namespace, "");
        assert_eq!(rel.qualified_name(), "pg_catalog.t");
        assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
        // The same bytes outside a stream misread the xid as the OID and end up malformed.
        assert!(dec(&b, &ctx(2)).is_err());
    }

    #[test]
    fn origin_type_and_truncate_from_notes() {
        let mut origin = hex("4f 0000000000000000");
        origin.extend(b"upstream_a\0");
        assert_eq!(
            dec_strict(&origin, &ctx(1)),
            PgOutputMessage::Origin(Origin {
                commit_lsn: Lsn(0),
                name: "upstream_a".into()
            })
        );
        let mut ty = hex("59 00004026");
        ty.extend(b"public\0mood\0");
        assert_eq!(
            dec_strict(&ty, &ctx(1)),
            PgOutputMessage::Type(TypeInfo {
                xid: None,
                oid: 16422,
                namespace: "public".into(),
                name: "mood".into()
            })
        );
        let trunc = hex("54 00000002 03 00004016 00004017");
        assert_eq!(
            dec_strict(&trunc, &ctx(1)),
            PgOutputMessage::Truncate(Truncate {
                xid: None,
                options: 3,
                relation_oids: vec![16406, 16407]
            })
        );
        let trunc_stream = hex("54 0000031f 00000000 00");
        assert_eq!(
            dec_strict(&trunc_stream, &stream_ctx(2)),
            PgOutputMessage::Truncate(Truncate {
                xid: Some(799),
                options: 0,
                relation_oids: vec![]
            })
        );
    }

    #[test]
    fn update_with_key_full_and_no_old_tuple() {
        let new = hex("0002 74 00000001 31 75");
        let old = hex("0002 74 00000001 30 6e");
        let mut k = hex("55 00000010 4b");
        k.extend(&old);
        k.push(b'N');
        k.extend(&new);
        let mut o = hex("55 00000010 4f");
        o.extend(&old);
        o.push(b'N');
        o.extend(&new);
        let mut n = hex("55 00000010 4e");
        n.extend(&new);
        let new_t = TupleData(vec![text("1"), Column::UnchangedToast]);
        let old_t = TupleData(vec![text("0"), Column::Null]);
        let expect = |old: Option<OldTuple>| {
            PgOutputMessage::Update(Update {
                xid: None,
                relation_oid: 16,
                old,
                new: new_t.clone(),
            })
        };
        assert_eq!(
            dec_strict(&k, &ctx(1)),
            expect(Some(OldTuple::Key(old_t.clone())))
        );
        assert_eq!(
            dec_strict(&o, &ctx(1)),
            expect(Some(OldTuple::Full(old_t.clone())))
        );
        assert_eq!(dec_strict(&n, &ctx(1)), expect(None));
        // After an old tuple only 'N' may follow.
        let mut bad = hex("55 00000010 4b");
        bad.extend(&old);
        bad.push(b'K');
        bad.extend(&new);
        assert!(matches!(
            dec(&bad, &ctx(1)),
            Err(DecodeError::InvalidByte { value: b'K', .. })
        ));
    }

    #[test]
    fn delete_key_and_full_in_stream() {
        let b = hex("44 00000320 00000010 4b 0001 62 00000008 00000000000004b6");
        assert_eq!(
            dec_strict(&b, &stream_ctx(2)),
            PgOutputMessage::Delete(Delete {
                xid: Some(800),
                relation_oid: 16,
                old: OldTuple::Key(TupleData(vec![Column::Binary(Bytes::from_static(&[
                    0, 0, 0, 0, 0, 0, 4, 0xb6
                ]))]))
            })
        );
        let bad = hex("44 00000010 4e 0000");
        assert!(matches!(
            dec(&bad, &ctx(1)),
            Err(DecodeError::InvalidByte { value: b'N', .. })
        ));
    }

    #[test]
    fn mixed_text_binary_and_zero_column_tuples() {
        let b = hex("49 00000010 4e 0003 62 00000001 01 74 00000000 6e");
        let PgOutputMessage::Insert(ins) = dec_strict(&b, &ctx(2)) else {
            panic!()
        };
        assert_eq!(
            ins.new.0,
            vec![
                Column::Binary(Bytes::from_static(&[1])),
                Column::Text(Bytes::new()),
                Column::Null
            ]
        );
        let zero = hex("49 00000010 4e 0000");
        let PgOutputMessage::Insert(ins) = dec_strict(&zero, &ctx(1)) else {
            panic!()
        };
        assert!(ins.new.0.is_empty());
    }

    #[test]
    fn messages_with_and_without_xid_and_empty_content() {
        let mut b = hex("4d 00 0000000009d365e8");
        b.extend(b"relay.hb\0");
        b.extend(hex("00000002"));
        b.extend(b"hb");
        let PgOutputMessage::Message(m) = dec_strict(&b, &ctx(1)) else {
            panic!()
        };
        assert!(!m.is_transactional());
        assert_eq!(m.prefix, "relay.hb");
        assert_eq!(&m.content[..], b"hb");

        let mut empty = hex("4d 0000031f 01 0000000000000010");
        empty.extend(b"p\0");
        empty.extend(hex("00000000"));
        let PgOutputMessage::Message(m) = dec_strict(&empty, &stream_ctx(2)) else {
            panic!()
        };
        assert_eq!(m.xid, Some(799));
        assert!(m.is_transactional());
        assert!(m.content.is_empty());
    }

    #[test]
    fn stream_control_messages() {
        assert_eq!(
            dec_strict(&hex("53 0000031f 01"), &ctx(2)),
            PgOutputMessage::StreamStart(StreamStart {
                xid: 799,
                first_segment: true
            })
        );
        assert!(matches!(
            dec(&hex("53 0000031f 02"), &ctx(2)),
            Err(DecodeError::InvalidByte { value: 2, .. })
        ));
        assert_eq!(
            dec_strict(&hex("45"), &stream_ctx(2)),
            PgOutputMessage::StreamStop
        );
        let commit = hex("63 0000031f 00 0000000001000000 0000000001000030 0000000000000007");
        assert_eq!(
            dec_strict(&commit, &ctx(2)),
            PgOutputMessage::StreamCommit(StreamCommit {
                xid: 799,
                flags: 0,
                commit_lsn: Lsn(0x100_0000),
                end_lsn: Lsn(0x100_0030),
                commit_ts: 7
            })
        );
        assert_eq!(
            dec_strict(&hex("41 0000031f 00000320"), &ctx(2)),
            PgOutputMessage::StreamAbort(StreamAbort {
                xid: 799,
                sub_xid: 800,
                abort: None
            })
        );
    }

    #[test]
    fn v4_parallel_stream_abort_carries_lsn_and_ts() {
        let parallel = DecodeContext {
            streaming_parallel: true,
            ..ctx(4)
        };
        let b = hex("41 0000031f 00000320 0000000001000000 0000000000000009");
        assert_eq!(
            dec_strict(&b, &parallel),
            PgOutputMessage::StreamAbort(StreamAbort {
                xid: 799,
                sub_xid: 800,
                abort: Some(AbortInfo {
                    lsn: Lsn(0x100_0000),
                    ts: 9
                })
            })
        );
        // Without parallel streaming the 25-byte form has 16 trailing bytes.
        assert!(matches!(
            dec(&b, &ctx(4)),
            Err(DecodeError::TrailingBytes { count: 16, .. })
        ));
    }

    #[test]
    fn two_phase_messages() {
        let mut bp = hex("62 0000000000000100 0000000000000200 0000000000000003 0000002a");
        bp.extend(b"gid-1\0");
        assert_eq!(
            dec_strict(&bp, &ctx(3)),
            PgOutputMessage::BeginPrepare(BeginPrepare {
                prepare_lsn: Lsn(0x100),
                end_lsn: Lsn(0x200),
                prepare_ts: 3,
                xid: 42,
                gid: "gid-1".into()
            })
        );
        let mut p = hex("50 00 0000000000000100 0000000000000200 0000000000000003 0000002a");
        p.extend(b"g\0");
        let prepare = Prepare {
            flags: 0,
            prepare_lsn: Lsn(0x100),
            end_lsn: Lsn(0x200),
            prepare_ts: 3,
            xid: 42,
            gid: "g".into(),
        };
        assert_eq!(
            dec_strict(&p, &ctx(3)),
            PgOutputMessage::Prepare(prepare.clone())
        );
        p[0] = b'p';
        assert_eq!(
            dec_strict(&p, &ctx(3)),
            PgOutputMessage::StreamPrepare(prepare)
        );
        let mut k = hex("4b 00 0000000000000300 0000000000000400 0000000000000005 0000002a");
        k.extend(b"g\0");
        assert!(matches!(
            dec_strict(&k, &ctx(3)),
            PgOutputMessage::CommitPrepared(CommitPrepared { xid: 42, .. })
        ));
        let mut r = hex(
            "72 00 0000000000000200 0000000000000500 0000000000000003 0000000000000006 0000002a",
        );
        r.extend(b"g\0");
        assert_eq!(
            dec_strict(&r, &ctx(3)),
            PgOutputMessage::RollbackPrepared(RollbackPrepared {
                flags: 0,
                prepare_end_lsn: Lsn(0x200),
                rollback_end_lsn: Lsn(0x500),
                prepare_ts: 3,
                rollback_ts: 6,
                xid: 42,
                gid: "g".into()
            })
        );
    }

    #[test]
    fn protocol_version_gates_message_types() {
        assert!(matches!(
            dec(&hex("45"), &ctx(1)),
            Err(DecodeError::RequiresProtocolVersion { required: 2, .. })
        ));
        let mut p = hex("50 00 0000000000000100 0000000000000200 0000000000000003 0000002a");
        p.extend(b"g\0");
        assert!(matches!(
            dec(&p, &ctx(2)),
            Err(DecodeError::RequiresProtocolVersion { required: 3, .. })
        ));
        assert!(matches!(
            dec(&hex("45"), &ctx(5)),
            Err(DecodeError::UnsupportedProtocolVersion { version: 5 })
        ));
    }

    #[test]
    fn named_errors_for_malformed_input() {
        assert_eq!(dec(&[], &ctx(1)), Err(DecodeError::Empty));
        assert_eq!(
            dec(b"Z", &ctx(1)),
            Err(DecodeError::UnknownTag { tag: b'Z' })
        );
        // Negative and huge column value lengths.
        let neg = hex("49 00000010 4e 0001 74 ffffffff");
        assert!(matches!(
            dec(&neg, &ctx(1)),
            Err(DecodeError::NegativeLength { value: -1, .. })
        ));
        let huge = hex("49 00000010 4e 0001 74 7fffffff 41");
        assert!(matches!(
            dec(&huge, &ctx(1)),
            Err(DecodeError::OversizedLength {
                value: 0x7fff_ffff,
                remaining: 1,
                ..
            })
        ));
        // Negative column count; huge relation count in Truncate.
        assert!(matches!(
            dec(&hex("49 00000010 4e ffff"), &ctx(1)),
            Err(DecodeError::NegativeLength { value: -1, .. })
        ));
        assert!(matches!(
            dec(&hex("54 7fffffff 00"), &ctx(1)),
            Err(DecodeError::OversizedLength { .. })
        ));
        assert!(matches!(
            dec(&hex("54 80000000 00"), &ctx(1)),
            Err(DecodeError::NegativeLength { .. })
        ));
        // Invalid column kind.
        assert_eq!(
            dec(&hex("49 00000010 4e 0002 6e 78"), &ctx(1)),
            Err(DecodeError::InvalidColumnKind {
                message: "Insert",
                column: 1,
                kind: b'x'
            })
        );
        // Non-UTF-8 and unterminated names.
        let mut bad_utf8 = hex("4f 0000000000000000");
        bad_utf8.extend([0xff, 0xfe, 0]);
        assert!(matches!(
            dec(&bad_utf8, &ctx(1)),
            Err(DecodeError::InvalidUtf8 { .. })
        ));
        let unterminated = hex("4f 0000000000000000 6162");
        assert!(matches!(
            dec(&unterminated, &ctx(1)),
            Err(DecodeError::MissingNul { .. })
        ));
        // Insert without 'N'; bad replica identity.
        assert!(matches!(
            dec(&hex("49 00000010 4b 0000"), &ctx(1)),
            Err(DecodeError::InvalidByte { .. })
        ));
        let mut bad_ri = hex("52 00000010");
        bad_ri.extend(b"s\0t\0x");
        bad_ri.extend(hex("0000"));
        assert!(matches!(
            dec(&bad_ri, &ctx(1)),
            Err(DecodeError::InvalidByte { value: b'x', .. })
        ));
    }

    #[test]
    fn error_messages_name_the_message_and_field() {
        let err = dec(&hex("42 00000000"), &ctx(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pgoutput Begin message ends early: 4 more byte(s) needed for final_lsn"
        );
    }

    #[test]
    fn stateful_decoder_tracks_stream_blocks() {
        let mut d = Decoder::new(2, false);
        let insert_in_stream = hex("49 00000320 00000010 4e 0000");
        let insert_outside = hex("49 00000010 4e 0000");
        assert!(matches!(
            d.decode(Bytes::from(hex("45"))),
            Err(DecodeError::StreamStopOutsideStream)
        ));
        d.decode(Bytes::from(hex("53 0000031f 01"))).unwrap();
        assert!(d.context().in_stream);
        assert!(matches!(
            d.decode(Bytes::from(hex("53 0000031f 00"))),
            Err(DecodeError::NestedStreamStart { xid: 799 })
        ));
        let PgOutputMessage::Insert(i) = d.decode(Bytes::from(insert_in_stream)).unwrap() else {
            panic!()
        };
        assert_eq!(i.xid, Some(800));
        d.decode(Bytes::from(hex("45"))).unwrap();
        let PgOutputMessage::Insert(i) = d.decode(Bytes::from(insert_outside.clone())).unwrap()
        else {
            panic!()
        };
        assert_eq!(i.xid, None);
        d.decode(Bytes::from(hex("53 0000031f 00"))).unwrap();
    }

    #[test]
    fn timestamps_convert_from_pg_epoch() {
        assert_eq!(
            pg_timestamp_to_datetime(0).unwrap().to_rfc3339(),
            "2000-01-01T00:00:00+00:00"
        );
        // 0x000303e7199d12f1 from the notes' binary fixture.
        let dt = pg_timestamp_to_datetime(0x0003_03e7_199d_12f1).unwrap();
        assert_eq!(
            dt.timestamp_micros() % 1_000_000,
            0x0003_03e7_199d_12f1 % 1_000_000
        );
        assert!(pg_timestamp_to_datetime(i64::MAX).is_none());
        assert!(pg_timestamp_to_datetime(i64::MIN).is_none());
    }

    fn arb_lsn() -> impl Strategy<Value = Lsn> {
        any::<u64>().prop_map(Lsn)
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,12}"
    }

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
    }

    fn arb_tuple() -> impl Strategy<Value = TupleData> {
        let col = prop_oneof![
            Just(Column::Null),
            Just(Column::UnchangedToast),
            arb_bytes().prop_map(Column::Text),
            arb_bytes().prop_map(Column::Binary),
        ];
        proptest::collection::vec(col, 0..6).prop_map(TupleData)
    }

    fn arb_old() -> impl Strategy<Value = OldTuple> {
        prop_oneof![
            arb_tuple().prop_map(OldTuple::Key),
            arb_tuple().prop_map(OldTuple::Full)
        ]
    }

    fn arb_ri() -> impl Strategy<Value = ReplicaIdentity> {
        prop_oneof![
            Just(ReplicaIdentity::Default),
            Just(ReplicaIdentity::Nothing),
            Just(ReplicaIdentity::Full),
            Just(ReplicaIdentity::Index),
        ]
    }

    fn arb_prepare() -> impl Strategy<Value = Prepare> {
        (
            any::<u8>(),
            arb_lsn(),
            arb_lsn(),
            any::<i64>(),
            any::<u32>(),
            arb_name(),
        )
            .prop_map(
                |(flags, prepare_lsn, end_lsn, prepare_ts, xid, gid)| Prepare {
                    flags,
                    prepare_lsn,
                    end_lsn,
                    prepare_ts,
                    xid,
                    gid,
                },
            )
    }

    fn arb_message() -> impl Strategy<Value = PgOutputMessage> {
        let xid = proptest::option::of(any::<u32>());
        let col = (any::<u8>(), arb_name(), any::<u32>(), any::<i32>()).prop_map(
            |(flags, name, type_oid, type_modifier)| RelationColumn {
                flags,
                name,
                type_oid,
                type_modifier,
            },
        );
        prop_oneof![
            (arb_lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_ts, xid)| {
                PgOutputMessage::Begin(Begin {
                    final_lsn,
                    commit_ts,
                    xid,
                })
            }),
            (any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>()).prop_map(|(f, c, e, t)| {
                PgOutputMessage::Commit(Commit {
                    flags: f,
                    commit_lsn: c,
                    end_lsn: e,
                    commit_ts: t,
                })
            }),
            (arb_lsn(), arb_name()).prop_map(|(commit_lsn, name)| {
                PgOutputMessage::Origin(Origin { commit_lsn, name })
            }),
            (
                xid.clone(),
                any::<u32>(),
                arb_name(),
                arb_name(),
                arb_ri(),
                proptest::collection::vec(col, 0..5)
            )
                .prop_map(|(xid, oid, namespace, name, replica_identity, columns)| {
                    PgOutputMessage::Relation(Relation {
                        xid,
                        oid,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    })
                }),
            (xid.clone(), any::<u32>(), arb_name(), arb_name()).prop_map(
                |(xid, oid, namespace, name)| PgOutputMessage::Type(TypeInfo {
                    xid,
                    oid,
                    namespace,
                    name
                })
            ),
            (xid.clone(), any::<u32>(), arb_tuple()).prop_map(|(xid, relation_oid, new)| {
                PgOutputMessage::Insert(Insert {
                    xid,
                    relation_oid,
                    new,
                })
            }),
            (
                xid.clone(),
                any::<u32>(),
                proptest::option::of(arb_old()),
                arb_tuple()
            )
                .prop_map(|(xid, relation_oid, old, new)| {
                    PgOutputMessage::Update(Update {
                        xid,
                        relation_oid,
                        old,
                        new,
                    })
                }),
            (xid.clone(), any::<u32>(), arb_old()).prop_map(|(xid, relation_oid, old)| {
                PgOutputMessage::Delete(Delete {
                    xid,
                    relation_oid,
                    old,
                })
            }),
            (
                xid.clone(),
                any::<u8>(),
                proptest::collection::vec(any::<u32>(), 0..5)
            )
                .prop_map(|(xid, options, relation_oids)| {
                    PgOutputMessage::Truncate(Truncate {
                        xid,
                        options,
                        relation_oids,
                    })
                }),
            (xid, any::<u8>(), arb_lsn(), arb_name(), arb_bytes()).prop_map(
                |(xid, flags, lsn, prefix, content)| PgOutputMessage::Message(LogicalMessage {
                    xid,
                    flags,
                    lsn,
                    prefix,
                    content
                })
            ),
            (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| {
                PgOutputMessage::StreamStart(StreamStart { xid, first_segment })
            }),
            Just(PgOutputMessage::StreamStop),
            (
                any::<u32>(),
                any::<u8>(),
                arb_lsn(),
                arb_lsn(),
                any::<i64>()
            )
                .prop_map(|(xid, flags, commit_lsn, end_lsn, commit_ts)| {
                    PgOutputMessage::StreamCommit(StreamCommit {
                        xid,
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_ts,
                    })
                }),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::option::of((arb_lsn(), any::<i64>()))
            )
                .prop_map(|(xid, sub_xid, abort)| {
                    PgOutputMessage::StreamAbort(StreamAbort {
                        xid,
                        sub_xid,
                        abort: abort.map(|(lsn, ts)| AbortInfo { lsn, ts }),
                    })
                }),
            (arb_lsn(), arb_lsn(), any::<i64>(), any::<u32>(), arb_name()).prop_map(
                |(prepare_lsn, end_lsn, prepare_ts, xid, gid)| {
                    PgOutputMessage::BeginPrepare(BeginPrepare {
                        prepare_lsn,
                        end_lsn,
                        prepare_ts,
                        xid,
                        gid,
                    })
                }
            ),
            arb_prepare().prop_map(PgOutputMessage::Prepare),
            arb_prepare().prop_map(PgOutputMessage::StreamPrepare),
            (
                any::<u8>(),
                arb_lsn(),
                arb_lsn(),
                any::<i64>(),
                any::<u32>(),
                arb_name()
            )
                .prop_map(|(flags, commit_lsn, end_lsn, commit_ts, xid, gid)| {
                    PgOutputMessage::CommitPrepared(CommitPrepared {
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_ts,
                        xid,
                        gid,
                    })
                }),
            (
                any::<u8>(),
                arb_lsn(),
                arb_lsn(),
                any::<i64>(),
                any::<i64>(),
                any::<u32>(),
                arb_name()
            )
                .prop_map(|(flags, pe, re, pt, rt, xid, gid)| {
                    PgOutputMessage::RollbackPrepared(RollbackPrepared {
                        flags,
                        prepare_end_lsn: pe,
                        rollback_end_lsn: re,
                        prepare_ts: pt,
                        rollback_ts: rt,
                        xid,
                        gid,
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(msg in arb_message()) {
            let c = context_for(&msg);
            let bytes = encode(&msg);
            prop_assert_eq!(dec(&bytes, &c), Ok(msg));
            for len in 0..bytes.len() {
                prop_assert!(dec(&bytes[..len], &c).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            let trailing = matches!(dec(&longer, &c), Err(DecodeError::TrailingBytes { .. }));
            prop_assert!(trailing);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            in_stream in any::<bool>(),
            version in 0u32..6,
            parallel in any::<bool>(),
        ) {
            let c = DecodeContext { in_stream, protocol_version: version, streaming_parallel: parallel };
            let _ = dec(&bytes, &c);
        }

        #[test]
        fn tagged_random_bodies_never_panic(
            tag in prop::sample::select(b"BCORYIUDTMSEcAbPKrp".to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            in_stream in any::<bool>(),
        ) {
            let mut bytes = vec![tag];
            bytes.extend(body);
            let c = DecodeContext { in_stream, protocol_version: 4, streaming_parallel: in_stream };
            let _ = dec(&bytes, &c);
        }
    }
}
