//! pgoutput decoding and outbox mapping on real server bytes.
//!
//! - `capture_fixtures` (ignored; run by hand) records pgoutput messages from a throwaway
//!   cluster into `tests/fixtures/pgoutput/<set>/NNNN_<message>.bin`, one directory per
//!   option set, each with a `manifest.txt` naming the START_REPLICATION options used.
//! - `fixtures_*` decode those files: every fixture decodes, every strict prefix is an error,
//!   one extra byte is a trailing-bytes error, and key values are what was inserted.
//! - `live_*` decodes and maps freshly peeked WAL, so the mapping is tested on bytes from
//!   the server the tests run against, not only on stored ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use dispatchbox::event::OutboxEvent;
use dispatchbox::source::pgoutput::{decode, Column, Decoder, PgOutputMessage};
use dispatchbox::source::relation::{InsertOutcome, OutboxMapper, OutboxTable};
use support::postgres::{ClusterOptions, TestCluster};

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pgoutput")
}

/// The DESIGN.md outbox table, in migration column order.
const OUTBOX_DDL: &str = "
    CREATE TABLE public.outbox_event (
        id bigserial PRIMARY KEY,
        aggregate_type text NOT NULL,
        aggregate_id text NOT NULL,
        event_type text NOT NULL,
        payload jsonb NOT NULL,
        status text NOT NULL DEFAULT 'pending',
        claim_token text,
        attempts int NOT NULL DEFAULT 0,
        next_run_at timestamptz NOT NULL DEFAULT now(),
        created_at timestamptz NOT NULL DEFAULT now(),
        headers jsonb,
        last_error text,
        last_error_at timestamptz,
        delivered_at timestamptz
    );
    CREATE PUBLICATION pub_outbox FOR TABLE public.outbox_event WITH (publish = 'insert');";

const OUTBOX_COLUMNS: [&str; 14] = [
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
    "status",
    "claim_token",
    "attempts",
    "next_run_at",
    "created_at",
    "headers",
    "last_error",
    "last_error_at",
    "delivered_at",
];

/// Session settings the replication client pins (text output of timestamps follows them),
/// plus a synchronous commit: the harness runs with `synchronous_commit = off`, and logical
/// decoding only reads flushed WAL, so a peek right after an async commit can miss it.
const SESSION_GUCS: &str =
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET synchronous_commit = on;";

fn message_name(tag: u8) -> &'static str {
    match tag {
        b'B' => "begin",
        b'C' => "commit",
        b'O' => "origin",
        b'R' => "relation",
        b'Y' => "type",
        b'I' => "insert",
        b'U' => "update",
        b'D' => "delete",
        b'T' => "truncate",
        b'M' => "message",
        b'S' => "stream_start",
        b'E' => "stream_stop",
        b'c' => "stream_commit",
        b'A' => "stream_abort",
        b'b' => "begin_prepare",
        b'P' => "prepare",
        b'K' => "commit_prepared",
        b'r' => "rollback_prepared",
        b'p' => "stream_prepare",
        _ => "unknown",
    }
}

/// START_REPLICATION options of one fixture set, as recorded in its `manifest.txt`.
#[derive(Debug, Clone)]
struct Options(Vec<(&'static str, &'static str)>);

/// Runs each string as its own simple query, so each is its own transaction (several
/// statements in one simple query share one implicit transaction).
async fn run_each(client: &tokio_postgres::Client, statements: &[&str]) {
    for sql in statements {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Peeks every pending message of `slot` with `options` and writes them to `set`.
async fn capture(client: &tokio_postgres::Client, slot: &str, set: &str, options: &Options) {
    let dir = fixtures_root().join(set);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    let args: Vec<String> = options
        .0
        .iter()
        .flat_map(|(k, v)| [format!("'{k}'"), format!("'{v}'")])
        .collect();
    let sql = format!(
        "SELECT data FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL, {})",
        args.join(", ")
    );
    let rows = client.query(&sql, &[]).await.unwrap();
    assert!(
        !rows.is_empty(),
        "slot {slot} produced no messages for {set}"
    );
    let mut manifest = format!(
        "# pg_logical_slot_peek_binary_changes options used to capture this set\n\
         # server: {}\n",
        client
            .query_one("SHOW server_version", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    );
    for (k, v) in &options.0 {
        manifest.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(dir.join("manifest.txt"), manifest).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let data: Vec<u8> = row.get(0);
        let name = message_name(data[0]);
        std::fs::write(dir.join(format!("{:04}_{name}.bin", i + 1)), &data).unwrap();
    }
}

/// Records the fixture sets. Run with `cargo test --test pgoutput_fixtures -- --ignored`
/// and commit the files.
#[tokio::test]
#[ignore = "regenerates committed fixtures; run by hand"]
async fn capture_fixtures() {
    let cluster = TestCluster::start_with(ClusterOptions {
        conf: vec!["max_prepared_transactions = 10".into()],
        ..ClusterOptions::default()
    });
    let db = cluster.create_database("fixtures").await;
    let c = cluster.connect(&db).await;
    c.batch_execute(SESSION_GUCS).await.unwrap();
    c.batch_execute(OUTBOX_DDL).await.unwrap();
    c.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE public.dml (k int PRIMARY KEY, m mood, note text);
         -- Out of line and uncompressed, so an unchanged note is sent as 'u'.
         ALTER TABLE public.dml ALTER COLUMN note SET STORAGE EXTERNAL;
         CREATE PUBLICATION pub_dml FOR TABLE public.dml;",
    )
    .await
    .unwrap();

    // Outbox inserts and logical messages, text and binary.
    c.batch_execute("SELECT pg_create_logical_replication_slot('s_outbox', 'pgoutput')")
        .await
        .unwrap();
    run_each(
        &c,
        &[
            r#"INSERT INTO outbox_event
                   (aggregate_type, aggregate_id, event_type, payload, headers, created_at, next_run_at)
               VALUES ('order', 'o-42', 'OrderPlaced', '{"amount": 12.5, "items": [1,2]}',
                       '{"traceparent": "00-abc-01", "n": 1}',
                       '2026-11-23 02:33:19.001946+00', '2026-11-23 02:33:19+00')"#,
            r#"INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, created_at)
               VALUES ('kundé', 'ü-7 😀', 'Geändert', '"ein String"', '2026-01-02 03:04:05+00')"#,
            r#"BEGIN;
               INSERT INTO outbox_event
                   (aggregate_type, aggregate_id, event_type, payload, headers, created_at)
               VALUES ('order', 'o-43', 'Listed', '[1, "two", null]', '{}', '2026-01-02 03:04:05.5+00'),
                      ('order', 'o-44', 'Counted', '42', NULL, '2026-01-02 03:04:05.000001+00');
               SELECT pg_logical_emit_message(true, 'dispatchbox.tx', 'inside');
               COMMIT"#,
            "SELECT pg_logical_emit_message(false, 'dispatchbox.heartbeat', 'x')",
            "UPDATE outbox_event SET status = 'done' WHERE aggregate_id = 'o-42'",
        ],
    )
    .await;
    let outbox = |binary: &'static str| {
        Options(vec![
            ("proto_version", "1"),
            ("publication_names", "pub_outbox"),
            ("messages", "true"),
            ("binary", binary),
        ])
    };
    capture(&c, "s_outbox", "v1_outbox", &outbox("false")).await;
    capture(&c, "s_outbox", "v1_outbox_binary", &outbox("true")).await;
    c.batch_execute("SELECT pg_drop_replication_slot('s_outbox')")
        .await
        .unwrap();

    // Other DML: Type, Update (key change, FULL identity), Delete, Truncate.
    c.batch_execute("SELECT pg_create_logical_replication_slot('s_dml', 'pgoutput')")
        .await
        .unwrap();
    run_each(
        &c,
        &[
            "INSERT INTO dml VALUES (1, 'ok', 'first'), (2, NULL, repeat('t', 5000))",
            "UPDATE dml SET note = 'second' WHERE k = 1",
            "UPDATE dml SET k = 3 WHERE k = 1",
            "ALTER TABLE dml REPLICA IDENTITY FULL",
            "UPDATE dml SET m = 'happy' WHERE k = 2",
            "DELETE FROM dml WHERE k = 3",
            "TRUNCATE dml RESTART IDENTITY CASCADE",
        ],
    )
    .await;
    capture(
        &c,
        "s_dml",
        "v1_dml",
        &Options(vec![
            ("proto_version", "1"),
            ("publication_names", "pub_dml"),
            ("messages", "false"),
        ]),
    )
    .await;
    c.batch_execute("SELECT pg_drop_replication_slot('s_dml')")
        .await
        .unwrap();

    // Streaming: a big transaction with a rolled-back savepoint, and a big aborted one.
    let big_rows = |n: u32| {
        format!(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, created_at)
             SELECT 'bulk', 'b-' || g, 'Bulk', jsonb_build_object('blob', repeat(md5(g::text), 45)),
                    '2026-01-01 00:00:00+00'
             FROM generate_series(1, {n}) g;"
        )
    };
    c.batch_execute("SELECT pg_create_logical_replication_slot('s_stream', 'pgoutput')")
        .await
        .unwrap();
    let (rows, few) = (big_rows(60), big_rows(3));
    run_each(
        &c,
        &[
            &format!("BEGIN; {rows} SAVEPOINT a; {rows} ROLLBACK TO SAVEPOINT a; {few} COMMIT"),
            &format!("BEGIN; {rows} ROLLBACK"),
            // An abort record is not flushed on its own, and decoding stops at the flushed
            // end of WAL: commit an unpublished change to flush past it.
            "INSERT INTO dml VALUES (100, NULL, 'flush')",
        ],
    )
    .await;
    c.batch_execute("SET logical_decoding_work_mem = '64kB'")
        .await
        .unwrap();
    capture(
        &c,
        "s_stream",
        "v2_stream",
        &Options(vec![
            ("proto_version", "2"),
            ("publication_names", "pub_outbox"),
            ("messages", "true"),
            ("streaming", "on"),
        ]),
    )
    .await;
    c.batch_execute("SELECT pg_drop_replication_slot('s_stream')")
        .await
        .unwrap();

    // Two-phase: prepare + commit prepared, prepare + rollback prepared, and a streamed
    // prepared transaction (Stream Prepare).
    c.batch_execute("SELECT pg_create_logical_replication_slot('s_2pc', 'pgoutput', false, true)")
        .await
        .unwrap();
    let one = big_rows(1);
    run_each(
        &c,
        &[
            &format!("BEGIN; {one} PREPARE TRANSACTION 'g1'"),
            "COMMIT PREPARED 'g1'",
            &format!("BEGIN; {one} PREPARE TRANSACTION 'g2'"),
            "ROLLBACK PREPARED 'g2'",
            &format!("BEGIN; {rows} PREPARE TRANSACTION 'g3'"),
            "COMMIT PREPARED 'g3'",
        ],
    )
    .await;
    capture(
        &c,
        "s_2pc",
        "v3_two_phase",
        &Options(vec![
            ("proto_version", "3"),
            ("publication_names", "pub_outbox"),
            ("messages", "true"),
            ("streaming", "on"),
            ("two_phase", "on"),
        ]),
    )
    .await;
    c.batch_execute("SELECT pg_drop_replication_slot('s_2pc')")
        .await
        .unwrap();
}

/// One stored fixture set: its options and its messages in stream order.
struct FixtureSet {
    name: String,
    options: BTreeMap<String, String>,
    files: Vec<(String, Bytes)>,
}

impl FixtureSet {
    fn load(name: &str) -> Self {
        let dir = fixtures_root().join(name);
        let manifest = std::fs::read_to_string(dir.join("manifest.txt"))
            .unwrap_or_else(|e| panic!("read manifest of fixture set {name}: {e}"));
        let options = manifest
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let mut files: Vec<(String, Bytes)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .map(|p| {
                let file = p.file_name().unwrap().to_string_lossy().into_owned();
                (file, Bytes::from(std::fs::read(&p).unwrap()))
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "fixture set {name} is empty");
        Self {
            name: name.to_string(),
            options,
            files,
        }
    }

    fn decoder(&self) -> Decoder {
        let proto: u32 = self.options["proto_version"].parse().unwrap();
        let parallel = self
            .options
            .get("streaming")
            .is_some_and(|s| s == "parallel");
        Decoder::new(proto, parallel)
    }

    /// Decodes the whole set in order, checking prefixes and a trailing byte on each file.
    fn decode_strictly(&self) -> Vec<PgOutputMessage> {
        let mut decoder = self.decoder();
        let mut out = Vec::new();
        for (file, bytes) in &self.files {
            let ctx = *decoder.context();
            for len in 0..bytes.len() {
                assert!(
                    decode(bytes.slice(..len), &ctx).is_err(),
                    "{}/{file}: prefix of {len} bytes decoded",
                    self.name
                );
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            let err = decode(Bytes::from(longer), &ctx).unwrap_err();
            assert!(
                err.to_string().contains("trailing byte"),
                "{}/{file}: {err}",
                self.name
            );
            let msg = decoder
                .decode(bytes.clone())
                .unwrap_or_else(|e| panic!("{}/{file}: {e}", self.name));
            let expected_name = file.split_once('_').unwrap().1.trim_end_matches(".bin");
            assert_eq!(
                message_name(msg.tag()),
                expected_name,
                "{}/{file}",
                self.name
            );
            out.push(msg);
        }
        out
    }
}

/// Feeds decoded messages through the outbox mapper, returning events and dead rows.
fn map_events(messages: &[PgOutputMessage], table: OutboxTable) -> Vec<InsertOutcome> {
    let mut mapper = OutboxMapper::new(table);
    let mut out = Vec::new();
    for msg in messages {
        match msg {
            PgOutputMessage::Relation(rel) => mapper.on_relation(rel.clone()).unwrap(),
            PgOutputMessage::Insert(ins) => out.push(mapper.map_insert(ins).unwrap()),
            _ => {}
        }
    }
    out
}

fn public_outbox() -> OutboxTable {
    OutboxTable::new("public", "outbox_event")
}

fn events(outcomes: Vec<InsertOutcome>) -> Vec<OutboxEvent> {
    outcomes
        .into_iter()
        .map(|o| match o {
            InsertOutcome::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        })
        .collect()
}

#[test]
fn fixtures_every_set_decodes_strictly() {
    let mut sets: Vec<String> = std::fs::read_dir(fixtures_root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    sets.sort();
    assert_eq!(
        sets,
        [
            "v1_dml",
            "v1_outbox",
            "v1_outbox_binary",
            "v2_stream",
            "v3_two_phase"
        ]
    );
    for set in sets {
        FixtureSet::load(&set).decode_strictly();
    }
}

#[test]
fn fixtures_outbox_text_relation_insert_and_messages() {
    let msgs = FixtureSet::load("v1_outbox").decode_strictly();
    let rel = msgs
        .iter()
        .find_map(|m| match m {
            PgOutputMessage::Relation(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(rel.qualified_name(), "public.outbox_event");
    let names: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, OUTBOX_COLUMNS);
    assert!(rel.columns[0].is_key());

    let first_insert = msgs
        .iter()
        .find_map(|m| match m {
            PgOutputMessage::Insert(i) => Some(i),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        first_insert.new.0[4],
        Column::Text(Bytes::from_static(br#"{"items": [1, 2], "amount": 12.5}"#))
    );

    let logical: Vec<(String, bool, Bytes)> = msgs
        .iter()
        .filter_map(|m| match m {
            PgOutputMessage::Message(m) => {
                Some((m.prefix.clone(), m.is_transactional(), m.content.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        logical,
        vec![
            ("dispatchbox.tx".into(), true, Bytes::from_static(b"inside")),
            (
                "dispatchbox.heartbeat".into(),
                false,
                Bytes::from_static(b"x")
            ),
        ]
    );
    // publish = 'insert': the UPDATE is not in the stream.
    assert!(!msgs.iter().any(|m| matches!(m, PgOutputMessage::Update(_))));
}

#[test]
fn fixtures_outbox_text_and_binary_map_to_the_same_events() {
    let text = events(map_events(
        &FixtureSet::load("v1_outbox").decode_strictly(),
        public_outbox(),
    ));
    let binary_msgs = FixtureSet::load("v1_outbox_binary").decode_strictly();
    assert!(binary_msgs.iter().any(|m| matches!(
        m,
        PgOutputMessage::Insert(i) if matches!(i.new.0[0], Column::Binary(_))
    )));
    let binary = events(map_events(&binary_msgs, public_outbox()));
    assert_eq!(text, binary);

    let summary: Vec<(&str, &str, &[u8], String)> = text
        .iter()
        .map(|e| {
            (
                e.aggregate_id.as_str(),
                e.event_type.as_str(),
                &e.payload[..],
                e.created_at_rfc3339(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "o-42",
                "OrderPlaced",
                &br#"{"items": [1, 2], "amount": 12.5}"#[..],
                "2026-11-23T02:33:19.001946Z".to_string()
            ),
            (
                "ü-7 😀",
                "Geändert",
                &br#""ein String""#[..],
                "2026-01-02T03:04:05.000000Z".to_string()
            ),
            (
                "o-43",
                "Listed",
                &br#"[1, "two", null]"#[..],
                "2026-01-02T03:04:05.500000Z".to_string()
            ),
            (
                "o-44",
                "Counted",
                &b"42"[..],
                "2026-01-02T03:04:05.000001Z".to_string()
            ),
        ]
    );
    assert_eq!(text[0].aggregate_type, "order");
    assert_eq!(
        text[0].headers,
        vec![("traceparent".to_string(), "00-abc-01".to_string())]
    );
    assert_eq!(
        text[0].next_run_at.unwrap().to_rfc3339(),
        "2026-11-23T02:33:19+00:00"
    );
    assert_eq!(text[1].aggregate_type, "kundé");
    assert!(text.iter().skip(1).all(|e| e.headers.is_empty()));
    let ids: Vec<i64> = text.iter().map(|e| e.id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
}

#[test]
fn fixtures_other_dml_shapes() {
    use dispatchbox::source::pgoutput::{OldTuple, ReplicaIdentity};
    let msgs = FixtureSet::load("v1_dml").decode_strictly();
    let ty = msgs
        .iter()
        .find_map(|m| match m {
            PgOutputMessage::Type(t) => Some(t),
            _ => None,
        })
        .expect("a Type message for the enum");
    assert_eq!(
        (ty.namespace.as_str(), ty.name.as_str()),
        ("public", "mood")
    );
    let updates: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            PgOutputMessage::Update(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 3);
    assert!(updates[0].old.is_none());
    assert!(matches!(updates[1].old, Some(OldTuple::Key(_))));
    // FULL identity: the old row travels, the unchanged TOASTed note is 'u' in the new one.
    let Some(OldTuple::Full(old)) = &updates[2].old else {
        panic!("{:?}", updates[2].old)
    };
    assert!(matches!(&old.0[2], Column::Text(t) if t.len() == 5000));
    assert_eq!(updates[2].new.0[2], Column::UnchangedToast);
    assert!(msgs.iter().any(|m| matches!(
        m,
        PgOutputMessage::Relation(r) if r.replica_identity == ReplicaIdentity::Full
    )));
    assert!(msgs
        .iter()
        .any(|m| matches!(m, PgOutputMessage::Delete(d) if matches!(d.old, OldTuple::Full(_)))));
    assert!(msgs
        .iter()
        .any(|m| matches!(m, PgOutputMessage::Truncate(t) if t.options == 3)));
}

#[test]
fn fixtures_streamed_transactions() {
    let msgs = FixtureSet::load("v2_stream").decode_strictly();
    let mut in_stream = false;
    let mut top_xids = Vec::new();
    for m in &msgs {
        match m {
            PgOutputMessage::StreamStart(s) => {
                in_stream = true;
                top_xids.push(s.xid);
            }
            PgOutputMessage::StreamStop => in_stream = false,
            PgOutputMessage::Insert(i) => assert_eq!(i.xid.is_some(), in_stream),
            PgOutputMessage::Relation(r) => assert_eq!(r.xid.is_some(), in_stream),
            _ => {}
        }
    }
    let aborts: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            PgOutputMessage::StreamAbort(a) => Some(a),
            _ => None,
        })
        .collect();
    assert!(
        aborts.iter().any(|a| a.sub_xid != a.xid),
        "savepoint rollback: {aborts:?}"
    );
    assert!(
        aborts.iter().any(|a| a.sub_xid == a.xid),
        "whole abort: {aborts:?}"
    );
    assert!(aborts.iter().all(|a| a.abort.is_none()));
    let commits: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            PgOutputMessage::StreamCommit(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(commits.len(), 1);
    assert!(top_xids.contains(&commits[0].xid));
    assert!(commits[0].end_lsn > commits[0].commit_lsn);
    // Rows of the rolled-back sub-transaction carry the sub-xid.
    let sub = aborts.iter().find(|a| a.sub_xid != a.xid).unwrap().sub_xid;
    assert!(msgs
        .iter()
        .any(|m| matches!(m, PgOutputMessage::Insert(i) if i.xid == Some(sub))));
}

#[test]
fn fixtures_two_phase_transactions() {
    let msgs = FixtureSet::load("v3_two_phase").decode_strictly();
    let tags: String = msgs
        .iter()
        .map(|m| m.tag() as char)
        .filter(|t| "bPKrp".contains(*t))
        .collect();
    assert_eq!(tags, "bPKbPrpK", "two-phase message order");
    let gids: Vec<&str> = msgs
        .iter()
        .filter_map(|m| match m {
            PgOutputMessage::Prepare(p) | PgOutputMessage::StreamPrepare(p) => Some(p.gid.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(gids, ["g1", "g2", "g3"]);
}

/// Given an outbox table with reordered and extra columns, when rows are inserted and the
/// slot's pgoutput bytes are decoded and mapped, then the events match the rows.
#[tokio::test]
async fn live_outbox_inserts_map_to_events() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("decoder_live").await;
    let c = cluster.connect(&db).await;
    c.batch_execute(SESSION_GUCS).await.unwrap();
    c.batch_execute(
        "CREATE SCHEMA app;
         CREATE TABLE app.outbox (
            created_at timestamptz NOT NULL DEFAULT now(),
            tenant uuid,
            payload jsonb NOT NULL,
            headers jsonb,
            event_type varchar(64) NOT NULL,
            aggregate_id text NOT NULL,
            aggregate_type text NOT NULL,
            id bigserial PRIMARY KEY
         );
         CREATE TABLE app.other (x int);
         CREATE PUBLICATION live_pub FOR TABLE app.outbox, app.other WITH (publish = 'insert');",
    )
    .await
    .unwrap();
    c.batch_execute("SELECT pg_create_logical_replication_slot('live', 'pgoutput')")
        .await
        .unwrap();
    c.batch_execute(
        r#"
        INSERT INTO app.outbox (aggregate_type, aggregate_id, event_type, payload, headers)
        VALUES ('cart', 'c-1', 'Added', '{"sku": "ß-1", "qty": 2}', '{"x-b": "2", "x-a": "1"}');
        INSERT INTO app.other VALUES (1);
        INSERT INTO app.outbox (aggregate_type, aggregate_id, event_type, payload, headers)
        VALUES ('cart', 'c-1', 'Removed', '{}', '[1]');
        INSERT INTO app.outbox (aggregate_type, aggregate_id, event_type, payload)
        VALUES ('cart', 'c-2', 'Added', 'null');
        "#,
    )
    .await
    .unwrap();
    // What the table holds, read over plain SQL, is what the events must say.
    let rows = c
        .query(
            "SELECT id, aggregate_id, event_type, payload::text, created_at
             FROM app.outbox ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let data = c
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('live', NULL, NULL,
                'proto_version', '1', 'publication_names', 'live_pub', 'messages', 'true')",
            &[],
        )
        .await
        .unwrap();
    let mut decoder = Decoder::new(1, false);
    let msgs: Vec<PgOutputMessage> = data
        .iter()
        .map(|r| decoder.decode(Bytes::from(r.get::<_, Vec<u8>>(0))).unwrap())
        .collect();
    let outcomes = map_events(&msgs, OutboxTable::new("app", "outbox"));
    assert_eq!(outcomes.len(), 4);
    assert_eq!(outcomes[1], InsertOutcome::Ignored, "app.other row");

    let InsertOutcome::Event(first) = &outcomes[0] else {
        panic!("{:?}", outcomes[0])
    };
    assert_eq!(first.id, rows[0].get::<_, i64>(0));
    assert_eq!(first.aggregate_type, "cart");
    assert_eq!(first.aggregate_id, rows[0].get::<_, String>(1));
    assert_eq!(first.event_type, rows[0].get::<_, String>(2));
    assert_eq!(first.payload_str(), rows[0].get::<_, String>(3));
    assert_eq!(
        first.created_at,
        rows[0].get::<_, chrono::DateTime<chrono::Utc>>(4)
    );
    // jsonb orders keys by length, then bytewise.
    assert_eq!(
        first.headers,
        vec![
            ("x-a".to_string(), "1".to_string()),
            ("x-b".to_string(), "2".to_string())
        ]
    );
    assert_eq!(first.next_run_at, None);

    let InsertOutcome::Dead(bad) = &outcomes[2] else {
        panic!("{:?}", outcomes[2])
    };
    assert_eq!(bad.id, Some(rows[1].get::<_, i64>(0)));
    assert!(bad.reason.contains("headers"), "{bad}");

    let InsertOutcome::Event(third) = &outcomes[3] else {
        panic!("{:?}", outcomes[3])
    };
    assert_eq!(third.payload_str(), "null");
    assert_eq!(third.aggregate_id, "c-2");
}

/// Given the outbox table loses a required column, when its next Relation is decoded, then
/// the mapper reports a schema error naming the table and column.
#[tokio::test]
async fn live_dropped_column_is_a_schema_error() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("decoder_schema").await;
    let c = cluster.connect(&db).await;
    c.batch_execute(SESSION_GUCS).await.unwrap();
    c.batch_execute(OUTBOX_DDL).await.unwrap();
    c.batch_execute(
        r#"SELECT pg_create_logical_replication_slot('schema', 'pgoutput');
           ALTER TABLE outbox_event DROP COLUMN created_at;
           INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
           VALUES ('a', 'b', 'c', '{}');"#,
    )
    .await
    .unwrap();
    let data = c
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('schema', NULL, NULL,
                'proto_version', '1', 'publication_names', 'pub_outbox')",
            &[],
        )
        .await
        .unwrap();
    let mut decoder = Decoder::new(1, false);
    let mut mapper = OutboxMapper::new(OutboxTable::new("public", "outbox_event"));
    let err = data
        .iter()
        .find_map(
            |r| match decoder.decode(Bytes::from(r.get::<_, Vec<u8>>(0))).unwrap() {
                PgOutputMessage::Relation(rel) => mapper.on_relation(rel).err(),
                _ => None,
            },
        )
        .expect("a schema error");
    assert_eq!(
        err.to_string(),
        "outbox table \"public.outbox_event\" has no column \"created_at\" (timestamptz); run \
         `dispatchbox migrate` or add the column (if the publication has a column list, \
         include it)"
    );
}
