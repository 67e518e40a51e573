//! The typed pgoutput messages [`super::decode`] produces: one struct per message of
//! protocol versions 1–4, values as zero-copy slices of the received bytes.

use bytes::Bytes;

use crate::lsn::Lsn;

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
    pub(super) fn from_byte(b: u8) -> Option<Self> {
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
