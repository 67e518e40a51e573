//! The decoder's tests: a round trip and the error cases of every message of protocol
//! versions 1–4. Over 800 lines on purpose: one section per message keeps each message's
//! layout next to its failures, and splitting them by file would split that pairing.

#![allow(clippy::unwrap_used)]

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
    let mut r =
        hex("72 00 0000000000000200 0000000000000500 0000000000000003 0000000000000006 0000002a");
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
    let PgOutputMessage::Insert(i) = d.decode(Bytes::from(insert_outside.clone())).unwrap() else {
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
