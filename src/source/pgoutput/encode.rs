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
