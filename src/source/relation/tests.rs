#![allow(clippy::unwrap_used)]

use super::*;
use crate::event::mapping::{parse_timestamptz, parse_utc_fast, split_offset_seconds};
use crate::source::pgoutput::{pg_timestamp_to_datetime, TupleData};
use crate::source::pgoutput::{RelationColumn, ReplicaIdentity};
use bytes::Bytes;
use chrono::{DateTime, Utc};

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
    let schema = schema_of(&rel).unwrap();
    let row = TupleData(vec![
        t("2026-01-02 03:04:05.5+00"),
        t("b6f8c2a4-0000-0000-0000-000000000000"),
        t("[1, 2]"),
        t("E"),
        t("A1"),
        t("A"),
        t("7"),
    ]);
    let e = schema.map_row(row.0.as_slice()).unwrap();
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
    let err = schema_of(&rel).unwrap_err();
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
        let err = schema_of(&rel).unwrap_err();
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
    let InsertOutcome::Event(e) = map(t(r#"{"b": "2", "a": {"x": 1}, "c": null}"#)).unwrap() else {
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
