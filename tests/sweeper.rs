//! The sweeper as the stream's safety net, end to end with the real relay: rows from before
//! the slot existed, a slot dropped while the relay was down, scheduled events, and a
//! broker that stops answering for a while.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use support::kafka::TestBroker;
use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, metric, migrate, set_env, start_streaming, RelayProcess};
use support::store::count_status;
use support::webhook::{Receiver, Rule};

const TABLE: &str = "public.outbox_event";

async fn insert_events(client: &tokio_postgres::Client, n: i64) {
    client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 SELECT 'order', 'agg-' || (g % 13), 'order.placed', jsonb_build_object('n', g)
                 FROM generate_series(1, $1::bigint) g"
            ),
            &[&n],
        )
        .await
        .unwrap();
}

async fn wait_done(client: &tokio_postgres::Client, total: i64, within: Duration) {
    eventually(within, "every row to be done", || async {
        (count_status(client, "done").await == total).then_some(())
    })
    .await;
}

fn counts(ids: &[i64]) -> HashMap<i64, usize> {
    let mut seen = HashMap::new();
    for id in ids {
        *seen.entry(*id).or_insert(0) += 1;
    }
    seen
}

/// Asserts the relay delivered exactly `total` distinct events, none more than once.
fn assert_each_delivered_once(relay: &RelayProcess, total: usize) {
    let seen = counts(&relay.delivered_ids());
    let repeated: Vec<i64> = seen
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(seen.len(), total, "distinct events delivered");
    assert!(
        repeated.is_empty(),
        "delivered more than once: {repeated:?}"
    );
}

/// Given 1,000 pending rows written before any slot existed (an existing Dispatchbox table
/// adopted by the relay), when the relay starts and creates its slot, then the sweeper
/// delivers all of them exactly once, without waiting for the grace period.
#[tokio::test]
async fn rows_from_before_the_slot_existed_are_delivered() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("preslot").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    insert_events(&client, 1_000).await;

    let relay = RelayProcess::start(&env);
    wait_done(&client, 1_000, Duration::from_secs(60)).await;
    assert_each_delivered_once(&relay, 1_000);
}

/// Given a relay that is stopped, when its slot is dropped and 500 events are inserted,
/// then after restart the slot is recreated and all 500 are delivered, none twice.
#[tokio::test]
async fn slot_dropped_while_stopped_loses_nothing() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("dropped").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let mut relay = start_streaming(&client, &env).await;
    relay.terminate();
    assert!(relay
        .wait_exit(Duration::from_secs(30))
        .expect("exit")
        .success());

    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots",
            &[],
        )
        .await
        .unwrap();
    insert_events(&client, 500).await;

    let relay = RelayProcess::start(&env);
    wait_done(&client, 500, Duration::from_secs(60)).await;
    assert_each_delivered_once(&relay, 500);
    assert!(
        relay.stderr().contains("does not exist"),
        "the relay should say the slot was missing:\n{}",
        relay.stderr()
    );
    let url = relay.admin_url();
    let recreated = |reason: &'static str| {
        let url = url.clone();
        async move {
            metric(
                &url,
                &format!("dispatchbox_slot_recreations_total{{reason=\"{reason}\"}}"),
            )
            .await
        }
    };
    assert_eq!(recreated("missing").await, Some(1.0));
    assert_eq!(recreated("lost").await, Some(0.0));
    // New writes flow through the recreated slot.
    insert_events(&client, 10).await;
    wait_done(&client, 510, Duration::from_secs(30)).await;
}

/// Given a transaction that inserts an event and stays open for longer than the grace
/// period, and a receiver that takes 1.5 s to answer, when it commits, then the stream
/// delivers the event exactly once: the sweeper counts the grace period from when it saw
/// the row committed, not from `created_at` (the transaction's start), and does not take
/// a row the stream is delivering.
#[tokio::test]
async fn a_long_transaction_is_delivered_once() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("longtx").await;
    let receiver = Receiver::start().await;
    receiver.respond(Rule::any().delay(Duration::from_millis(1500)));
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SINKS", "webhook");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_URL", &receiver.url());
    // The receiver is on loopback: turn the SSRF guard off.
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true");
    set_env(&mut env, "DISPATCHBOX_SWEEP_GRACE", "3s");
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "200ms");
    migrate(&env);
    let client = cluster.connect(&db).await;
    let _relay = start_streaming(&client, &env).await;

    let mut writer = cluster.connect(&db).await;
    let tx = writer.transaction().await.unwrap();
    let id: i64 = tx
        .query_one(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 VALUES ('order', 'long', 'order.placed', '{{}}') RETURNING id"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    tx.commit().await.unwrap();
    let committed = Instant::now();
    // A marker the sweeper delivers (the stream parks it: it is scheduled) once the grace
    // period counted from the commit has passed, with a second to spare for the sweeper's
    // first sighting of the row.
    let marker: i64 = client
        .query_one(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload, next_run_at)
                 VALUES ('order', 'marker', 'order.placed', '{{}}', now() + interval '4 seconds')
                 RETURNING id"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);

    wait_done(&client, 1, Duration::from_secs(30)).await;
    // Past the grace period counted from the commit: nothing more arrives. The sweep that
    // claims the marker counts the grace up to then, claims every row it finds due in id
    // order in the same statement (the long transaction's row comes first) and writes the
    // marker's outcome only after each of those deliveries ended: once the marker is done,
    // a second delivery of the row would have been recorded.
    wait_done(&client, 2, Duration::from_secs(30)).await;
    let marker_requests = receiver.requests_for("marker");
    assert_eq!(marker_requests.len(), 1);
    assert!(
        marker_requests[0].arrived >= committed + Duration::from_secs(3),
        "the marker came before the grace period had passed"
    );
    let marker_attempts: i32 = client
        .query_one(
            &format!("SELECT attempts FROM {TABLE} WHERE id = $1"),
            &[&marker],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(marker_attempts, 1);
    let requests = receiver.requests_for("long");
    assert_eq!(requests.len(), 1, "delivered {} times", requests.len());
    let attempts: i32 = client
        .query_one(
            &format!("SELECT attempts FROM {TABLE} WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1);
}

/// Given a healthy stream and a long grace period, when a row commits while the table is
/// out of the publication (the stream never sees it), then the sweeper delivers it as soon
/// as the slot's confirmed position passes the point where it saw the row, long before the
/// grace period; rows the stream does see are delivered once.
#[tokio::test]
async fn a_row_the_stream_passed_is_swept_without_waiting_for_the_grace_period() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("passed").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SWEEP_GRACE", "10m");
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "200ms");
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;

    let publication = format!("pub_{db}");
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {publication} DROP TABLE {TABLE}"
        ))
        .await
        .unwrap();
    insert_events(&client, 3).await;
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {publication} ADD TABLE {TABLE}"
        ))
        .await
        .unwrap();
    insert_events(&client, 2).await;

    wait_done(&client, 5, Duration::from_secs(30)).await;
    assert_each_delivered_once(&relay, 5);
}

/// A row inserted with `next_run_at` 3 s in the future is delivered no earlier than that,
/// while the rows around it are delivered at once.
#[tokio::test]
async fn scheduled_event_waits_until_it_is_due() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("scheduled").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;

    let inserted = Instant::now();
    let scheduled_id: i64 = client
        .query_one(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload, next_run_at)
                 VALUES ('reminder', 'r-1', 'reminder.due', '{{}}', now() + interval '3 seconds')
                 RETURNING id"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    insert_events(&client, 5).await;
    eventually(Duration::from_secs(10), "the unscheduled rows", || async {
        (count_status(&client, "done").await == 5).then_some(())
    })
    .await;
    assert!(
        !relay.delivered_ids().contains(&scheduled_id),
        "delivered before it was due"
    );

    let arrived = eventually(Duration::from_secs(20), "the scheduled event", || async {
        relay
            .delivered_ids()
            .contains(&scheduled_id)
            .then(Instant::now)
    })
    .await;
    let waited = arrived - inserted;
    assert!(
        waited >= Duration::from_secs(3),
        "delivered after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(12),
        "delivered only after {waited:?}"
    );
    let row = client
        .query_one(
            &format!("SELECT status, attempts FROM {TABLE} WHERE id = $1"),
            &[&scheduled_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "done");
    assert_eq!(row.get::<_, i32>(1), 1);
}

/// The broker process stops answering for 20 s under load (SIGSTOP, then SIGCONT): every
/// event is delivered afterwards and every row ends `done`.
#[tokio::test]
async fn broker_outage_under_load_loses_nothing() {
    let cluster = TestCluster::start();
    let broker = TestBroker::start();
    broker.create_topic("outbox.order", 3).await;
    let db = cluster.create_database("outage").await;
    let mut env = base_env(&cluster, &db);
    env.retain(|(k, _)| k != "DISPATCHBOX_SINKS");
    env.extend(
        [
            ("DISPATCHBOX_SINKS", "kafka".to_owned()),
            ("DISPATCHBOX_KAFKA_BROKERS", broker.bootstrap()),
            ("DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT", "60s".to_owned()),
            ("DISPATCHBOX_SWEEP_LEASE", "90s".to_owned()),
            ("DISPATCHBOX_SWEEP_INTERVAL", "1s".to_owned()),
            ("DISPATCHBOX_BACKOFF_BASE", "500ms".to_owned()),
            ("DISPATCHBOX_BACKOFF_MAX", "2s".to_owned()),
            ("DISPATCHBOX_MAX_ATTEMPTS", "50".to_owned()),
            (
                "DISPATCHBOX_KAFKA_PROPERTY_RECONNECT_BACKOFF_MAX_MS",
                "500".to_owned(),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;

    let writer = {
        let client = cluster.connect(&db).await;
        tokio::spawn(async move {
            // About 40 s of load: 10 events every 100 ms.
            for _ in 0..400 {
                insert_events(&client, 10).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Under load: events flow through the broker before it stops (rather than "5 s in").
    eventually(
        Duration::from_secs(30),
        "events to be delivered through the broker",
        || async { (count_status(&client, "done").await >= 100).then_some(()) },
    )
    .await;
    broker.pause();
    // The outage lasts 20 s: the fault under test, not a wait for something to happen. It
    // is checked to have hit the load: the writer still inserts, and what it wrote
    // meanwhile waits for the broker.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        !writer.is_finished(),
        "the load ended before the outage did"
    );
    let waiting: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {TABLE} WHERE status <> 'done'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        waiting >= 200,
        "only {waiting} rows waited for the broker during the outage"
    );
    broker.resume();
    writer.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    while count_status(&client, "done").await != 4_000 {
        if Instant::now() > deadline {
            let stuck: Vec<String> = client
                .query(
                    &format!("SELECT status, count(*), max(attempts), max(last_error) FROM {TABLE} GROUP BY status"),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| format!("{}: {} (max attempts {}, {:?})", r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, i32>(2), r.get::<_, Option<String>>(3)))
                .collect();
            let log = relay.stderr();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            panic!(
                "not all rows done: {stuck:?}\nrelay log (newest first):\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids: BTreeSet<i64> = client
        .query(&format!("SELECT id FROM {TABLE}"), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let records = broker.read_to_end("outbox.order").await;
    let delivered: BTreeSet<i64> = records
        .iter()
        .map(|r| r.header("id").unwrap().parse().unwrap())
        .collect();
    let missing: Vec<_> = ids.difference(&delivered).take(5).collect();
    assert!(
        missing.is_empty(),
        "events missing from Kafka, e.g. {missing:?}"
    );
}

/// A slot invalidated because it retained more WAL than `max_slot_wal_keep_size` while the
/// relay was down: the relay drops and recreates it (it is its own: logical, pgoutput, this
/// database), counts it in `dispatchbox_slot_recreations_total{reason="lost"}`, and the
/// sweeper delivers the rows inserted meanwhile.
#[tokio::test]
async fn invalidated_slot_is_recreated_and_rows_are_swept() {
    let cluster = TestCluster::start_with(support::postgres::ClusterOptions {
        conf: vec![
            "max_slot_wal_keep_size = '32MB'".into(),
            "wal_keep_size = 0".into(),
        ],
        ..Default::default()
    });
    let db = cluster.create_database("invalidated").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let mut relay = start_streaming(&client, &env).await;
    relay.terminate();
    assert!(relay
        .wait_exit(Duration::from_secs(30))
        .expect("exit")
        .success());

    insert_events(&client, 200).await;
    client
        .batch_execute("CREATE TABLE filler (body text)")
        .await
        .unwrap();
    let slot = format!("slot_{db}");
    eventually(
        Duration::from_secs(120),
        "the slot to be invalidated",
        || async {
            client
                .batch_execute(
                    "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000);
                 SELECT pg_switch_wal(); CHECKPOINT;",
                )
                .await
                .unwrap();
            let status: Option<String> = client
                .query_one(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap()
                .get(0);
            (status.as_deref() == Some("lost")).then_some(())
        },
    )
    .await;

    let relay = RelayProcess::start(&env);
    wait_done(&client, 200, Duration::from_secs(60)).await;
    let seen = counts(&relay.delivered_ids());
    assert_eq!(seen.len(), 200);
    assert!(relay.stderr().contains("invalidated"), "{}", relay.stderr());
    let url = relay.admin_url();
    assert_eq!(
        metric(&url, "dispatchbox_slot_recreations_total{reason=\"lost\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &url,
            "dispatchbox_slot_recreations_total{reason=\"missing\"}"
        )
        .await,
        Some(0.0)
    );
    // The recreated slot streams new events.
    insert_events(&client, 5).await;
    wait_done(&client, 205, Duration::from_secs(30)).await;
}

/// Transactions committed in database `db` so far, read from another database's session
/// once no session of `db` is left (a backend reports its counts when it exits), so that
/// the reading itself is not counted.
async fn committed_transactions(observer: &tokio_postgres::Client, db: &str) -> i64 {
    eventually(
        Duration::from_secs(30),
        "every session of the database to end",
        || async {
            let sessions: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&db],
                )
                .await
                .unwrap()
                .get(0);
            (sessions == 0).then_some(())
        },
    )
    .await;
    observer
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    observer
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

/// Given retrying, scheduled and leased heads of three aggregates due in an hour, with rows
/// parked behind them that are due already, when a relay runs for about 9 s with a 1 s
/// sweep interval (until a marker row falls due and is delivered), then the database runs
/// a handful of transactions per interval (not one sweep every 20 ms) and nothing but the
/// marker is delivered; and once the heads fall due, every row is delivered, in order.
#[tokio::test]
async fn the_sweeper_sleeps_while_nothing_is_claimable() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("idle").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "1s");
    set_env(&mut env, "DISPATCHBOX_HEARTBEAT_INTERVAL", "1h");
    migrate(&env);
    {
        let client = cluster.connect(&db).await;
        client
            .batch_execute(&format!(
                "INSERT INTO {TABLE} (id, aggregate_type, aggregate_id, event_type, payload,
                                      status, attempts, last_error, claim_token, next_run_at)
                 VALUES (1, 'order', 'A', 'order.placed', '{{}}', 'retry', 1, 'timeout', NULL,
                         now() + interval '1 hour'),
                        (2, 'order', 'A', 'order.paid', '{{}}', 'retry', 0, NULL, NULL,
                         now() - interval '1 minute'),
                        (3, 'order', 'A', 'order.packed', '{{}}', 'retry', 0, NULL, NULL,
                         now() - interval '1 minute'),
                        (4, 'order', 'A', 'order.shipped', '{{}}', 'retry', 0, NULL, NULL,
                         now() - interval '1 minute'),
                        (5, 'reminder', 'B', 'reminder.due', '{{}}', 'retry', 0, NULL, NULL,
                         now() + interval '1 hour'),
                        (6, 'order', 'C', 'order.placed', '{{}}', 'processing', 0, NULL,
                         'a-replica-that-died', now() + interval '1 hour'),
                        (7, 'order', 'C', 'order.paid', '{{}}', 'retry', 0, NULL, NULL,
                         now() - interval '1 minute'),
                        (8, 'marker', 'M', 'marker.passed', '{{}}', 'retry', 0, NULL, NULL,
                         now() + interval '9 seconds')"
            ))
            .await
            .unwrap();
    }
    let observer = cluster.connect("postgres").await;
    let before = committed_transactions(&observer, &db).await;

    // The relay runs for about 9 s once it streams, until a marker falls due: row 8, alone
    // in its aggregate, due 9 s after the rows were written (the stream never sees it: it
    // was written before the slot existed, by a session that ended before the count began).
    // The sweep that claims it claims every claimable row with it, in id order, in one
    // statement, and hands them to the stdout sink in that order: once the marker is on
    // stdout, a row that was claimable (wrongly) is there too. So no deliveries and few
    // transactions mean the sweeper slept, not that it had not got round to anything yet.
    // Stdout is polled, not the database, to keep the count clean. (The marker's sweep
    // costs about what a second of idling does: 9 s with it ≈ 10 s without, measured.)
    let mut relay = RelayProcess::start(&env);
    support::relay::wait_streaming(&observer).await;
    let streaming = Instant::now();
    eventually(
        Duration::from_secs(30),
        "the sweeper to deliver the marker when it falls due",
        || async { relay.delivered_ids().contains(&8).then_some(()) },
    )
    .await;
    let window = streaming.elapsed();
    assert!(
        window >= Duration::from_secs(5),
        "only {window:?} from streaming to the marker: too short an idle time to judge"
    );
    relay.terminate();
    assert!(relay.wait_exit(Duration::from_secs(30)).is_some());
    let transactions = committed_transactions(&observer, &db).await - before;
    println!("{transactions} transactions in {window:?} (start-up, marker and shutdown included)");
    // Measured: about 30 for start-up and shutdown (checks, prepared statements, the
    // slot), 3 per sweep (sighting, claim, next due), one sweep per interval. Before the
    // sweeper computed its wake-up from claimable rows: 1,100 in 8 s.
    assert!(
        transactions <= 100,
        "{transactions} transactions in {window:?} with nothing claimable: the sweeper polls"
    );
    assert_eq!(
        relay.delivered_ids(),
        vec![8],
        "nothing was claimable (but the marker)"
    );

    // The heads fall due: everything goes out, parked rows after their head.
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    client
        .execute(
            &format!("UPDATE {TABLE} SET next_run_at = now() WHERE id IN (1, 5, 6)"),
            &[],
        )
        .await
        .unwrap();
    wait_done(&client, 8, Duration::from_secs(30)).await;
    let delivered = relay.delivered_ids();
    let of_a: Vec<i64> = delivered.iter().copied().filter(|id| *id <= 4).collect();
    assert_eq!(of_a, vec![1, 2, 3, 4]);
    let of_c: Vec<i64> = delivered.iter().copied().filter(|id| *id >= 6).collect();
    assert_eq!(of_c, vec![6, 7]);
}
