//! End-to-end delivery to a real Kafka-protocol broker process (tansu): topics, keys,
//! headers and payloads of many transactions, crash recovery with SIGKILL, and payloads
//! passed through byte for byte.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use support::kafka::{Record, TestBroker};
use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, migrate, start_streaming, RelayProcess};
use support::store::count_status;

const TABLE: &str = "public.outbox_event";
const AGGREGATE_TYPES: [&str; 3] = ["order", "invoice", "customer"];

fn kafka_env(cluster: &TestCluster, db: &str, broker: &TestBroker) -> Vec<(String, String)> {
    let mut env = base_env(cluster, db);
    env.retain(|(k, _)| k != "DISPATCHBOX_SINKS");
    env.push(("DISPATCHBOX_SINKS".into(), "kafka".into()));
    env.push(("DISPATCHBOX_KAFKA_BROKERS".into(), broker.bootstrap()));
    env.push(("DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT".into(), "60s".into()));
    env
}

async fn create_topics(broker: &TestBroker) {
    for t in AGGREGATE_TYPES {
        broker.create_topic(&format!("outbox.{t}"), 3).await;
    }
}

/// Deterministic transaction sizes between 1 and `max` rows summing to `total`.
fn transaction_sizes(total: usize, max: usize) -> Vec<usize> {
    // Both extremes first, then pseudo-random sizes.
    let mut sizes = vec![1, max];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = total - 1 - max;
    while left > 0 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let size = ((state >> 33) as usize % max + 1).min(left);
        sizes.push(size);
        left -= size;
    }
    sizes
}

async fn insert_transaction(client: &tokio_postgres::Client, size: usize, salt: usize) {
    client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload, headers)
                 SELECT (ARRAY['order','invoice','customer'])[1 + (g + $2) % 3],
                        'agg-' || ((g + $2) % 23),
                        'thing.' || ((g + $2) % 3),
                        jsonb_build_object('g', g, 'salt', $2::int, 'tags', jsonb_build_array('a', g)),
                        jsonb_build_object('traceparent', 'tp-' || g)
                 FROM generate_series(1, $1::int) g"
            ),
            &[&(size as i32), &(salt as i32)],
        )
        .await
        .unwrap();
}

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

/// Every record of the three topics, up to their current high watermarks.
async fn read_all(broker: &TestBroker) -> Vec<Record> {
    let mut all = Vec::new();
    for t in AGGREGATE_TYPES {
        all.extend(broker.read_to_end(&format!("outbox.{t}")).await);
    }
    all
}

/// Waits until `total` rows are `done`; on timeout, fails with the rows that are not and
/// the relay's log.
async fn wait_done(
    client: &tokio_postgres::Client,
    total: i64,
    within: Duration,
    relay: &RelayProcess,
) {
    let deadline = std::time::Instant::now() + within;
    while count_status(client, "done").await != total {
        if std::time::Instant::now() > deadline {
            let stuck: Vec<String> = client
                .query(
                    &format!(
                        "SELECT id, status, last_error FROM {TABLE} WHERE status <> 'done' LIMIT 5"
                    ),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {:?}",
                        r.get::<_, i64>(0),
                        r.get::<_, String>(1),
                        r.get::<_, Option<String>>(2)
                    )
                })
                .collect();
            let log = relay.stderr();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "not all {total} rows done within {within:?}; e.g. {stuck:?}\nrelay log tail:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ids of the outbox events the relay's slot has not confirmed: what PostgreSQL would
/// stream again. Read with `pg_logical_slot_peek_binary_changes` (which needs the slot to
/// be inactive) and decoded with the relay's own decoder.
async fn unacknowledged_ids(client: &tokio_postgres::Client, db: &str) -> BTreeSet<i64> {
    use dispatchbox::source::pgoutput::{decode, DecodeContext, PgOutputMessage};
    use dispatchbox::source::relation::{InsertOutcome, OutboxMapper, OutboxTable};

    let slot = format!("slot_{db}");
    eventually(
        Duration::from_secs(20),
        "the killed relay's slot to be released",
        || async {
            let active: bool = client
                .query_one(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap()
                .get(0);
            (!active).then_some(())
        },
    )
    .await;
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
                 'proto_version', '1', 'publication_names', $2)",
            &[&slot, &format!("pub_{db}")],
        )
        .await
        .unwrap();
    let mut mapper = OutboxMapper::new(OutboxTable::new("public", "outbox_event"));
    let mut ids = BTreeSet::new();
    for row in rows {
        let data: Vec<u8> = row.get(0);
        match decode(data.into(), &DecodeContext::new(1)).unwrap() {
            PgOutputMessage::Relation(relation) => mapper.on_relation(relation).unwrap(),
            PgOutputMessage::Insert(insert) => {
                if let InsertOutcome::Event(event) = mapper.map_insert(&insert).unwrap() {
                    ids.insert(event.id);
                }
            }
            _ => {}
        }
    }
    ids
}

/// Given 10,000 events in transactions of 1 to 500 rows across three aggregate types, every
/// event reaches Kafka on `outbox.<aggregate_type>` with key = aggregate_id, the documented
/// headers and the payload as PostgreSQL renders it, and every row ends `done`.
#[tokio::test]
async fn ten_thousand_events_reach_kafka_with_topic_key_headers_and_payload() {
    let cluster = TestCluster::start();
    let broker = TestBroker::start();
    create_topics(&broker).await;
    let db = cluster.create_database("kafka10k").await;
    let env = kafka_env(&cluster, &db, &broker);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;

    let sizes = transaction_sizes(10_000, 500);
    for (i, size) in sizes.iter().enumerate() {
        insert_transaction(&client, *size, i).await;
    }
    wait_done(&client, 10_000, Duration::from_secs(180), &relay).await;

    let expected = rows(&client).await;
    let records = read_by_topic_until(&broker, 10_000).await;
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for record in &records {
        let id: i64 = record.header("id").expect("id header").parse().unwrap();
        *seen.entry(id).or_default() += 1;
        let (aggregate_type, aggregate_id, event_type, payload, created_at) = expected
            .get(&id)
            .unwrap_or_else(|| panic!("unknown id {id}"));
        assert_eq!(record.topic, format!("outbox.{aggregate_type}"));
        assert_eq!(record.key_str(), aggregate_id);
        assert_eq!(record.header("event_type"), Some(event_type.as_str()));
        assert_eq!(
            record.header("aggregate_type"),
            Some(aggregate_type.as_str())
        );
        assert_eq!(record.header("aggregate_id"), Some(aggregate_id.as_str()));
        assert_eq!(record.header("created_at"), Some(created_at.as_str()));
        assert!(record.header("traceparent").unwrap().starts_with("tp-"));
        assert_eq!(
            record.payload.as_deref(),
            Some(payload.as_bytes()),
            "payload of {id}"
        );
    }
    assert_eq!(seen.len(), 10_000, "every event delivered");
    assert!(
        seen.values().all(|&n| n == 1),
        "no duplicates without a crash"
    );
}

async fn read_by_topic_until(broker: &TestBroker, at_least: usize) -> Vec<Record> {
    let records = read_all(broker).await;
    assert!(
        records.len() >= at_least,
        "only {} records in Kafka, expected at least {at_least}",
        records.len()
    );
    records
}

/// Given a relay killed with SIGKILL in the middle of a stream, when it restarts, then no
/// event is missing, and events delivered twice are only those of the window that had not
/// been acknowledged (bounded by the in-flight limits), not the whole history.
#[tokio::test]
async fn sigkill_mid_stream_loses_nothing() {
    let cluster = TestCluster::start();
    let broker = TestBroker::start();
    create_topics(&broker).await;
    let db = cluster.create_database("kafkakill").await;
    let mut env = kafka_env(&cluster, &db, &broker);
    env.push(("DISPATCHBOX_MAX_IN_FLIGHT".into(), "200".into()));
    env.push(("DISPATCHBOX_STATUS_BATCH_SIZE".into(), "200".into()));
    migrate(&env);
    let client = cluster.connect(&db).await;
    let mut relay = start_streaming(&client, &env).await;

    let total = 6_000;
    let sizes = transaction_sizes(total, 50);
    let (first, second) = sizes.split_at(sizes.len() / 2);
    for (i, size) in first.iter().enumerate() {
        insert_transaction(&client, *size, i).await;
    }
    eventually(
        Duration::from_secs(60),
        "part of the stream delivered",
        || async { (count_status(&client, "done").await > 1_000).then_some(()) },
    )
    .await;
    relay.kill9();
    // The unacknowledged window: every event the slot would send again.
    let window = unacknowledged_ids(&client, &db).await;
    // More writes while the relay is dead.
    for (i, size) in second.iter().enumerate() {
        insert_transaction(&client, *size, first.len() + i).await;
    }
    let relay = RelayProcess::start(&env);
    wait_done(&client, total as i64, Duration::from_secs(120), &relay).await;

    let records = read_by_topic_until(&broker, total).await;
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for record in &records {
        let id: i64 = record.header("id").unwrap().parse().unwrap();
        *seen.entry(id).or_default() += 1;
    }
    let ids: BTreeSet<i64> = rows(&client).await.into_keys().collect();
    let missing: Vec<_> = ids.iter().filter(|id| !seen.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{} events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let duplicated: BTreeSet<i64> = seen
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(&id, _)| id)
        .collect();
    let outside: Vec<_> = duplicated.difference(&window).collect();
    assert!(
        outside.is_empty(),
        "{} events outside the unacknowledged window ({} events) were delivered twice, e.g. {:?}",
        outside.len(),
        window.len(),
        &outside[..outside.len().min(5)]
    );
    assert!(
        seen.values().all(|&n| n <= 2),
        "an event was delivered more than twice"
    );
    assert!(
        window.len() < first.iter().sum::<usize>(),
        "the slot never advanced before the kill"
    );
}

/// Payloads that are arrays, strings, numbers, unicode and 1 MB objects reach Kafka byte
/// for byte as PostgreSQL renders them.
#[tokio::test]
async fn payloads_pass_through_byte_for_byte() {
    let cluster = TestCluster::start();
    let broker = TestBroker::start();
    create_topics(&broker).await;
    let db = cluster.create_database("kafkapayload").await;
    let env = kafka_env(&cluster, &db, &broker);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;

    let big: String = {
        let fields: Vec<String> = (0..20_000)
            .map(|i| format!("\"key{i:05}\": \"{}\"", "v".repeat(40)))
            .collect();
        format!("{{{}}}", fields.join(", "))
    };
    assert!(big.len() > 1_000_000);
    let payloads = [
        r#"[1, "two", {"three": 3}, null]"#.to_owned(),
        r#""just a string""#.to_owned(),
        "42".to_owned(),
        "-3.14159e10".to_owned(),
        "true".to_owned(),
        r#"{"emoji": "😀", "cjk": "漢字", "escapes": "tab\tnl\n\"q\" \\ \u0001", "ü": "ö"}"#
            .to_owned(),
        big,
    ];
    for p in &payloads {
        client
            .execute(
                &format!(
                    "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                     VALUES ('order', 'p', 'payload.test', $1::text::jsonb)"
                ),
                &[p],
            )
            .await
            .unwrap();
    }
    wait_done(
        &client,
        payloads.len() as i64,
        Duration::from_secs(60),
        &relay,
    )
    .await;
    let expected = rows(&client).await;
    let records = broker
        .read_topic("outbox.order", payloads.len(), Duration::from_secs(30))
        .await;
    assert_eq!(records.len(), payloads.len());
    for record in records {
        let id: i64 = record.header("id").unwrap().parse().unwrap();
        let rendered = &expected[&id].3;
        assert_eq!(
            record.payload.as_deref(),
            Some(rendered.as_bytes()),
            "payload of event {id} changed in transit"
        );
    }
}

/// Failed deliveries are written back: with the broker unreachable the event becomes
/// `retry` with the error and a next attempt time; an event whose topic cannot exist is
/// `dead` at once. Neither stops the relay from settling (and confirming) the stream.
#[tokio::test]
async fn failed_deliveries_are_written_as_retry_or_dead() {
    let cluster = TestCluster::start();
    let mut broker = TestBroker::start();
    let db = cluster.create_database("kafkafail").await;
    let mut env = kafka_env(&cluster, &db, &broker);
    env.retain(|(k, _)| k != "DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT");
    env.push(("DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT".into(), "2s".into()));
    // Notice the unreachable broker quickly (librdkafka backs off up to 10 s by default).
    env.push((
        "DISPATCHBOX_KAFKA_PROPERTY_RECONNECT_BACKOFF_MAX_MS".into(),
        "200".into(),
    ));
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;

    // A topic name with a space is illegal: permanent.
    client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 VALUES ('bad type', 'x', 'thing.happened', '{{}}')"
            ),
            &[],
        )
        .await
        .unwrap();
    // The broker goes away: retryable.
    broker.stop();
    client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 VALUES ('order', 'o-1', 'order.placed', '{{}}')"
            ),
            &[],
        )
        .await
        .unwrap();

    let rows = eventually(Duration::from_secs(60), "both rows settled", || async {
        let rows = client
            .query(
                &format!(
                    "SELECT aggregate_type, status, attempts, last_error, last_error_at IS NOT NULL,
                            next_run_at > created_at
                     FROM {TABLE} ORDER BY id"
                ),
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .all(|r| r.get::<_, String>(1) != "pending")
            .then_some(rows)
    })
    .await;
    let dead = &rows[0];
    assert_eq!(
        dead.get::<_, String>(1),
        "dead",
        "{:?}",
        dead.get::<_, Option<String>>(3)
    );
    assert!(dead
        .get::<_, Option<String>>(3)
        .unwrap()
        .contains("outbox.bad type"));
    let retry = &rows[1];
    assert_eq!(
        retry.get::<_, String>(1),
        "retry",
        "{:?}",
        retry.get::<_, Option<String>>(3)
    );
    assert_eq!(retry.get::<_, i32>(2), 1);
    assert!(!retry.get::<_, Option<String>>(3).unwrap().is_empty());
    assert!(retry.get::<_, bool>(4), "last_error_at set");
    assert!(
        retry.get::<_, bool>(5),
        "next_run_at moved to a later attempt"
    );
    drop(relay);
}
