//! End-to-end delivery through the relay binary to a real `nats-server -js` and a real
//! `redis-server`: rows inserted into PostgreSQL end `done` and arrive with their subject
//! or stream, headers or fields, and payload as PostgreSQL renders it; what a sink can never
//! accept ends `dead` with the sink's reason; the `sink` label of the delivery metrics
//! names the new sinks; both names work in `DISPATCHBOX_ROUTES`.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::nats::TestNats;
use support::postgres::{eventually, TestCluster};
use support::redis::TestRedis;
use support::relay::{base_env, http_get, migrate, set_env, start_streaming, RelayProcess};
use support::store::count_status;

const TABLE: &str = "public.outbox_event";

/// `count` events per statement: aggregate types `order`/`invoice` alternating, event types
/// `order.placed`/`invoice.issued`, a traceparent header, and varied JSON payloads.
async fn insert_events(client: &tokio_postgres::Client, count: i32, salt: i32) {
    client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload, headers)
                 SELECT (ARRAY['order','invoice'])[1 + g % 2],
                        'agg-' || (g % 7),
                        (ARRAY['order.placed','invoice.issued'])[1 + g % 2],
                        jsonb_build_object('g', g, 'salt', $2::int, 'text', 'grüße ✓',
                                           'list', jsonb_build_array(1, 2.5, null)),
                        jsonb_build_object('traceparent', 'tp-' || g, 'tracestate', 'v=1')
                 FROM generate_series(1, $1::int) g"
            ),
            &[&count, &salt],
        )
        .await
        .unwrap();
}

async fn insert_one(client: &tokio_postgres::Client, aggregate_type: &str, event_type: &str) {
    client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 VALUES ($1, 'x', $2, '{{}}')"
            ),
            &[&aggregate_type, &event_type],
        )
        .await
        .unwrap();
}

/// id → (aggregate_type, aggregate_id, event_type, payload text, created_at RFC 3339).
async fn rows(
    client: &tokio_postgres::Client,
) -> BTreeMap<i64, (String, String, String, String, String)> {
    client
        .query(
            &format!(
                "SELECT id, aggregate_type, aggregate_id, event_type, payload::text,
                        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                 FROM {TABLE}"
            ),
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))))
        .collect()
}

/// Waits until every row has left `pending`/`retry`/`processing`; returns id → (status,
/// last_error). On timeout, fails with the relay's log tail.
async fn settled(
    client: &tokio_postgres::Client,
    total: usize,
    relay: &RelayProcess,
) -> BTreeMap<i64, (String, Option<String>)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let rows: BTreeMap<i64, (String, Option<String>)> = client
            .query(&format!("SELECT id, status, last_error FROM {TABLE}"), &[])
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        if rows.len() == total && rows.values().all(|(s, _)| s == "done" || s == "dead") {
            return rows;
        }
        if std::time::Instant::now() > deadline {
            let log = relay.stderr();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "rows not settled: {:?}\nrelay log tail:\n{}",
                rows.iter()
                    .filter(|(_, (s, _))| s != "done")
                    .take(5)
                    .collect::<Vec<_>>(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of `name{…}` whose labels include every one of `labels` (as `k="v"`).
async fn metric_value(relay: &RelayProcess, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (status, body) = http_get(&relay.admin_url(), "/metrics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (label_text, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| {
                label_text
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            })
            .then(|| value.trim().parse().unwrap())
    })
}

#[tokio::test]
async fn rows_reach_nats_jetstream_and_end_done() {
    // Given PostgreSQL, a JetStream server whose streams cover order and invoice subjects
    // (but not `outbox.ghost`), and a relay with the nats sink.
    let cluster = TestCluster::start();
    let nats = TestNats::start();
    nats.create_stream("OUTBOX", &["outbox.order", "outbox.invoice"])
        .await;
    let db = cluster.create_database("natse2e").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SINKS", "nats");
    set_env(&mut env, "DISPATCHBOX_NATS_URL", &nats.url());
    set_env(&mut env, "DISPATCHBOX_NATS_TIMEOUT", "4s");
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;

    // When 300 events in three transactions and one for a subject no stream covers are
    // inserted.
    for salt in 0..3 {
        insert_events(&client, 100, salt).await;
    }
    insert_one(&client, "ghost", "ghost.seen").await;

    // Then the 300 are done and in the stream exactly once each, as PostgreSQL has them;
    // the ghost is dead, saying what to do.
    let statuses = settled(&client, 301, &relay).await;
    let expected = rows(&client).await;
    let ghost = expected
        .iter()
        .find(|(_, row)| row.0 == "ghost")
        .map(|(id, _)| *id)
        .unwrap();
    for (id, (status, last_error)) in &statuses {
        if *id == ghost {
            assert_eq!(status, "dead");
            let reason = last_error.as_deref().unwrap();
            assert!(
                reason.contains("\"outbox.ghost\"") && reason.contains("create a stream"),
                "{reason}"
            );
        } else {
            assert_eq!(status, "done", "row {id}: {last_error:?}");
        }
    }
    let stored = nats
        .read_stream("OUTBOX", 300, Duration::from_secs(10))
        .await;
    assert_eq!(stored.len(), 300);
    let mut seen = std::collections::BTreeSet::new();
    for message in &stored {
        let id: i64 = message.header("id").parse().unwrap();
        assert!(seen.insert(id), "event {id} stored twice");
        let (aggregate_type, aggregate_id, event_type, payload, created_at) = &expected[&id];
        assert_eq!(message.subject, format!("outbox.{aggregate_type}"));
        assert_eq!(message.header("Nats-Msg-Id"), id.to_string());
        assert_eq!(message.header("event_type"), event_type);
        assert_eq!(message.header("aggregate_id"), aggregate_id);
        assert_eq!(message.header("created_at"), created_at);
        assert!(message.header("traceparent").starts_with("tp-"));
        assert_eq!(message.header("tracestate"), "v=1");
        assert_eq!(message.payload, payload.as_bytes(), "payload of {id}");
    }

    // And the delivery metrics carry the sink's name.
    let done = metric_value(
        &relay,
        "dispatchbox_delivery_attempts_total",
        &[("sink", "nats"), ("outcome", "done")],
    )
    .await;
    assert_eq!(done, Some(300.0));
    let dead = metric_value(
        &relay,
        "dispatchbox_delivery_attempts_total",
        &[("sink", "nats"), ("outcome", "dead")],
    )
    .await;
    assert_eq!(dead, Some(1.0));
    assert!(
        relay.stderr().contains("\"sink\":\"nats\""),
        "no log line names the sink"
    );
}

#[tokio::test]
async fn routed_rows_reach_redis_streams_and_end_done() {
    // Given PostgreSQL, a Redis server where `outbox.broken` is a plain string, and a relay
    // with stdout and redis, routing order events to redis only.
    let cluster = TestCluster::start();
    let redis = TestRedis::start();
    redis
        .command(&["SET", "outbox.broken", "not a stream"])
        .await;
    let db = cluster.create_database("redise2e").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SINKS", "stdout,redis");
    set_env(&mut env, "DISPATCHBOX_REDIS_URL", &redis.url());
    set_env(&mut env, "DISPATCHBOX_REDIS_MAXLEN", "100000");
    set_env(&mut env, "DISPATCHBOX_ROUTES", "order.*=redis; *=stdout");
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;

    for salt in 0..3 {
        insert_events(&client, 100, salt).await;
    }
    insert_one(&client, "broken", "order.broken").await;

    let statuses = settled(&client, 301, &relay).await;
    let expected = rows(&client).await;
    let broken = expected
        .iter()
        .find(|(_, row)| row.0 == "broken")
        .map(|(id, _)| *id)
        .unwrap();
    for (id, (status, last_error)) in &statuses {
        if *id == broken {
            assert_eq!(status, "dead");
            let reason = last_error.as_deref().unwrap();
            assert!(
                reason.contains("\"outbox.broken\"") && reason.contains("not a stream"),
                "{reason}"
            );
        } else {
            assert_eq!(status, "done", "row {id}: {last_error:?}");
        }
    }
    assert_eq!(count_status(&client, "done").await, 300);

    // Order events went to redis only, the others to stdout only.
    let entries = redis.xrange("outbox.order").await;
    assert_eq!(entries.len(), 150);
    assert!(redis.xrange("outbox.invoice").await.is_empty());
    for entry in &entries {
        let id: i64 = entry.field("id").parse().unwrap();
        let (aggregate_type, aggregate_id, event_type, payload, created_at) = &expected[&id];
        assert_eq!(aggregate_type, "order");
        assert_eq!(entry.field("event_type"), event_type);
        assert_eq!(entry.field("aggregate_id"), aggregate_id);
        assert_eq!(entry.field("created_at"), created_at);
        assert_eq!(entry.field("payload"), payload);
        assert!(entry.field("header.traceparent").starts_with("tp-"));
    }
    let on_stdout = eventually(Duration::from_secs(10), "stdout lines", || async {
        let ids = relay.delivered_ids();
        (ids.len() >= 150).then_some(ids)
    })
    .await;
    assert_eq!(on_stdout.len(), 150);
    assert!(on_stdout.iter().all(|id| expected[id].0 == "invoice"));

    let done = metric_value(
        &relay,
        "dispatchbox_delivery_attempts_total",
        &[("sink", "redis"), ("outcome", "done")],
    )
    .await;
    assert_eq!(done, Some(150.0));
    let dead = metric_value(
        &relay,
        "dispatchbox_delivery_attempts_total",
        &[("sink", "redis"), ("outcome", "dead")],
    )
    .await;
    assert_eq!(dead, Some(1.0));
}
