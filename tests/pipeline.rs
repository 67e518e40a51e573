//! End-to-end behaviour of `dispatchbox run` with the stdout sink against a real
//! PostgreSQL cluster: delivery, restarts, filtering, large transactions, idle slots,
//! shutdown. Kafka end-to-end tests live in `pipeline_kafka.rs`.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, migrate, start_streaming, RelayProcess};

const TABLE: &str = "public.outbox_event";

async fn setup(
    cluster: &TestCluster,
    prefix: &str,
) -> (String, tokio_postgres::Client, Vec<(String, String)>) {
    let db = cluster.create_database(prefix).await;
    let env = base_env(cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    (db, client, env)
}

async fn insert_events(client: &tokio_postgres::Client, n: i64, aggregate_type: &str) {
    client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 SELECT $1, 'agg-' || (g % 17), 'thing.happened', jsonb_build_object('n', g)
                 FROM generate_series(1, $2::bigint) g"
            ),
            &[&aggregate_type, &n],
        )
        .await
        .unwrap();
}

async fn status_counts(client: &tokio_postgres::Client) -> HashMap<String, i64> {
    client
        .query(
            &format!("SELECT status, count(*) FROM {TABLE} GROUP BY status"),
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect()
}

async fn all_ids(client: &tokio_postgres::Client) -> BTreeSet<i64> {
    client
        .query(&format!("SELECT id FROM {TABLE}"), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

async fn wait_all_done(client: &tokio_postgres::Client, total: i64, timeout: Duration) {
    eventually(timeout, "every outbox row to be done", || async {
        let counts = status_counts(client).await;
        (counts.get("done").copied().unwrap_or(0) == total).then_some(())
    })
    .await;
}

/// Given a relay that is down while 1,000 events are inserted, when it starts, then every
/// event is delivered exactly once and every row is `done` with `delivered_at` set.
#[tokio::test]
async fn events_inserted_while_down_are_delivered_after_start() {
    let cluster = TestCluster::start();
    let (_db, client, env) = setup(&cluster, "down").await;

    // First run creates the slot, then stops cleanly.
    let mut relay = start_streaming(&client, &env).await;
    relay.terminate();
    let status = relay
        .wait_exit(Duration::from_secs(30))
        .expect("relay exits after SIGTERM");
    assert!(status.success(), "exit status {status}\n{}", relay.stderr());

    insert_events(&client, 1_000, "order").await;

    let relay = RelayProcess::start(&env);
    wait_all_done(&client, 1_000, Duration::from_secs(60)).await;
    let delivered = relay.delivered_ids();
    let unique: BTreeSet<i64> = delivered.iter().copied().collect();
    assert_eq!(unique, all_ids(&client).await);
    assert_eq!(
        delivered.len(),
        unique.len(),
        "no duplicates after a clean restart"
    );
    let missing_delivered_at: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {TABLE} WHERE delivered_at IS NULL OR attempts <> 1"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(missing_delivered_at, 0);
}

/// Only outbox INSERTs are delivered: writes to other tables in the same transactions,
/// and UPDATEs and DELETEs of outbox rows, are not.
#[tokio::test]
async fn only_outbox_inserts_are_delivered() {
    let cluster = TestCluster::start();
    let (_db, client, env) = setup(&cluster, "filter").await;
    client
        .batch_execute("CREATE TABLE orders (id bigserial primary key, note text)")
        .await
        .unwrap();
    let relay = start_streaming(&client, &env).await;

    client
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO orders (note) SELECT 'x' FROM generate_series(1, 50);
             INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
               VALUES ('order', 'o-1', 'order.placed', '{{\"a\":1}}'),
                      ('order', 'o-2', 'order.placed', '{{\"a\":2}}');
             UPDATE orders SET note = 'y';
             COMMIT;
             INSERT INTO orders (note) VALUES ('only other table');"
        ))
        .await
        .unwrap();
    wait_all_done(&client, 2, Duration::from_secs(30)).await;

    // The application updates and deletes outbox rows; none of it is delivered.
    client
        .batch_execute(&format!(
            "UPDATE {TABLE} SET payload = '{{\"changed\":true}}';
             DELETE FROM {TABLE} WHERE aggregate_id = 'o-2';
             INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
               VALUES ('order', 'o-3', 'order.placed', '{{\"a\":3}}');"
        ))
        .await
        .unwrap();
    // o-3 commits after the UPDATE and DELETE and the stream is in commit order: once it
    // is out, anything those statements could have produced would be out before it.
    eventually(Duration::from_secs(30), "the marker event o-3", || async {
        relay
            .delivered()
            .iter()
            .any(|v| v["aggregate_id"] == "o-3")
            .then_some(())
    })
    .await;
    let delivered = relay.delivered();
    let ids: Vec<&str> = delivered
        .iter()
        .map(|v| v["aggregate_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["o-1", "o-2", "o-3"]);
    assert!(delivered
        .iter()
        .all(|v| v["payload"].get("changed").is_none()));
}

/// A single 50,000-row transaction is delivered completely while the relay's memory
/// stays bounded by its in-flight limit, not by the transaction size.
#[tokio::test]
async fn huge_transaction_is_delivered_with_bounded_memory() {
    let cluster = TestCluster::start();
    let (_db, client, mut env) = setup(&cluster, "huge").await;
    env.push(("DISPATCHBOX_MAX_IN_FLIGHT".into(), "500".into()));
    let relay = start_streaming(&client, &env).await;
    let baseline_kib = relay.peak_rss_kib();

    // ~2 KiB per payload: 50,000 rows are ~100 MiB of payload in one transaction.
    client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 SELECT 'bulk', 'b-' || (g % 100), 'bulk.loaded',
                        jsonb_build_object('n', g, 'pad', repeat('x', 2000))
                 FROM generate_series(1, 50000) g"
            ),
            &[],
        )
        .await
        .unwrap();
    wait_all_done(&client, 50_000, Duration::from_secs(240)).await;
    let unique: BTreeSet<i64> = relay.delivered_ids().into_iter().collect();
    assert_eq!(unique.len(), 50_000);
    let peak_kib = relay.peak_rss_kib();
    eprintln!("relay memory for a 50,000-row (~100 MiB) transaction: {baseline_kib} KiB at start, {peak_kib} KiB peak");
    assert!(
        peak_kib < baseline_kib + 64 * 1024,
        "relay memory grew from {baseline_kib} KiB to {peak_kib} KiB for a 100 MiB transaction"
    );
}

/// 30 s of writes to other tables only: the slot's confirmed_flush_lsn keeps up with the
/// WAL (lag stays under 1 MB), because idle keepalives are acknowledged.
#[tokio::test]
async fn idle_slot_keeps_up_with_unrelated_writes() {
    let cluster = TestCluster::start();
    let (_db, client, env) = setup(&cluster, "idle").await;
    client
        .batch_execute("CREATE TABLE noise (id bigserial primary key, body text)")
        .await
        .unwrap();
    let _relay = start_streaming(&client, &env).await;

    let lag_sql =
        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots";
    let started = std::time::Instant::now();
    let mut written_bytes = 0i64;
    let mut worst_lag_after_settle = 0i64;
    while started.elapsed() < Duration::from_secs(30) {
        client
            .execute(
                "INSERT INTO noise (body) SELECT repeat('n', 1000) FROM generate_series(1, 200)",
                &[],
            )
            .await
            .unwrap();
        written_bytes += 200 * 1000;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(5) {
            let lag: i64 = client.query_one(lag_sql, &[]).await.unwrap().get(0);
            worst_lag_after_settle = worst_lag_after_settle.max(lag);
        }
    }
    assert!(
        written_bytes > 10_000_000,
        "the test must write well over 1 MB of WAL"
    );
    assert!(
        worst_lag_after_settle < 1_000_000,
        "slot lag reached {worst_lag_after_settle} bytes while only unrelated tables were written"
    );
}

/// SIGTERM: the relay stops intake, finishes in-flight deliveries, flushes statuses, sends
/// a final status update and exits 0. Nothing delivered is left unsettled, and the next run
/// repeats at most the one transaction that was cut off mid-way.
#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let cluster = TestCluster::start();
    let (_db, client, env) = setup(&cluster, "term").await;
    let mut relay = start_streaming(&client, &env).await;
    let writer = {
        let client = cluster.connect(&_db).await;
        tokio::spawn(async move {
            // 200 transactions of 10 events each.
            for _ in 0..200 {
                insert_events(&client, 10, "order").await;
            }
        })
    };
    eventually(Duration::from_secs(30), "some deliveries", || async {
        (relay.delivered_ids().len() > 200).then_some(())
    })
    .await;
    relay.terminate();
    let status = relay
        .wait_exit(Duration::from_secs(40))
        .expect("exit after SIGTERM");
    assert!(status.success(), "exit status {status}\n{}", relay.stderr());
    writer.await.unwrap();

    // Everything written to stdout is `done` on its row.
    let delivered: BTreeSet<i64> = relay.delivered_ids().into_iter().collect();
    let done: BTreeSet<i64> = client
        .query(
            &format!("SELECT id FROM {TABLE} WHERE status = 'done'"),
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        delivered.is_subset(&done),
        "a delivered event was left unsettled"
    );

    // The next run delivers the rest; of what was settled it repeats at most the one
    // transaction the shutdown cut off (the flush position covers whole transactions).
    let relay = RelayProcess::start(&env);
    wait_all_done(&client, 2_000, Duration::from_secs(60)).await;
    let second: BTreeSet<i64> = relay.delivered_ids().into_iter().collect();
    let repeated = second.intersection(&done).count();
    assert!(
        repeated <= 10,
        "{repeated} settled events were delivered again after a clean stop"
    );
}

/// An outbox row whose `headers` is not a JSON object cannot be delivered: it ends `dead`
/// with a reason, and the relay keeps delivering the rows after it.
#[tokio::test]
async fn unusable_row_is_dead_and_the_relay_continues() {
    let cluster = TestCluster::start();
    let (_db, client, env) = setup(&cluster, "unusable").await;
    let relay = start_streaming(&client, &env).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload, headers)
               VALUES ('order', 'o-1', 'order.placed', '{{}}', '[1, 2]');
             INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload, headers)
               VALUES ('order', 'o-2', 'order.placed', '{{}}', '{{\"traceparent\": \"00-abc\"}}');"
        ))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "both rows settled", || async {
        let counts = status_counts(&client).await;
        (counts.get("dead") == Some(&1) && counts.get("done") == Some(&1)).then_some(())
    })
    .await;
    let row = client
        .query_one(
            &format!("SELECT aggregate_id, last_error FROM {TABLE} WHERE status = 'dead'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "o-1");
    assert!(row.get::<_, Option<String>>(1).unwrap().contains("headers"));
    let delivered = relay.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["headers"]["traceparent"], "00-abc");
}

/// A row whose replication message exceeds `DISPATCHBOX_MAX_MESSAGE_SIZE_MB` (a 2 MiB
/// payload against a 1 MiB limit) is one dead row naming the limit, not a crash loop: the
/// relay keeps streaming and delivers the events after it (in its transaction and later
/// ones), and after a restart it neither meets that row again nor delivers it.
#[tokio::test]
async fn oversized_row_is_dead_and_the_stream_goes_on() {
    let cluster = TestCluster::start();
    let (_db, client, mut env) = setup(&cluster, "oversized").await;
    env.push(("DISPATCHBOX_MAX_MESSAGE_SIZE_MB".into(), "1".into()));
    let mut relay = start_streaming(&client, &env).await;

    let big: i64 = client
        .query_one(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 VALUES ('order', 'big', 'order.placed',
                         jsonb_build_object('pad', repeat('x', 2 * 1024 * 1024)))
                 RETURNING id"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
               VALUES ('order', 'big-too', 'order.placed',
                       jsonb_build_object('pad', repeat('y', 2 * 1024 * 1024)));
             INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
               VALUES ('order', 'same-tx', 'order.placed', '{{}}');
             COMMIT;"
        ))
        .await
        .unwrap();
    insert_events(&client, 5, "order").await;

    eventually(Duration::from_secs(60), "2 dead and 6 done", || async {
        let counts = status_counts(&client).await;
        (counts.get("dead") == Some(&2) && counts.get("done") == Some(&6)).then_some(())
    })
    .await;
    assert!(relay.is_running(), "the relay stopped:\n{}", relay.stderr());
    let dead = client
        .query(
            &format!("SELECT id, last_error FROM {TABLE} WHERE status = 'dead' ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(dead[0].get::<_, i64>(0), big);
    for row in &dead {
        let error: String = row.get(1);
        assert!(
            error.contains("DISPATCHBOX_MAX_MESSAGE_SIZE_MB (1 MiB)"),
            "{error}"
        );
    }
    let delivered = relay.delivered_ids();
    assert_eq!(delivered.len(), 6, "{delivered:?}");
    assert!(!delivered.contains(&big));

    // The dead rows were settled like any event, so the confirmed position passed them: a
    // restarted relay streams on without meeting them again.
    relay.terminate();
    assert!(relay.wait_exit(Duration::from_secs(30)).unwrap().success());
    let relay = RelayProcess::start(&env);
    insert_events(&client, 1, "order").await;
    wait_all_done(&client, 7, Duration::from_secs(30)).await;
    assert_eq!(relay.delivered_ids().len(), 1);
    assert_eq!(status_counts(&client).await.get("dead"), Some(&2));
    assert!(
        !relay.stderr().contains("too large"),
        "the restarted relay met an oversized row again:\n{}",
        relay.stderr()
    );
}

/// PostgreSQL restarts under the relay: it reconnects with backoff and resumes from the
/// settled position; events written before and after the restart are all delivered.
#[tokio::test]
async fn reconnects_after_a_database_restart() {
    let cluster = TestCluster::start();
    let (db, client, env) = setup(&cluster, "restart").await;
    let mut relay = start_streaming(&client, &env).await;
    insert_events(&client, 300, "order").await;
    wait_all_done(&client, 300, Duration::from_secs(30)).await;

    cluster.stop();
    cluster.restart();
    let client = cluster.connect(&db).await;
    insert_events(&client, 300, "order").await;
    wait_all_done(&client, 600, Duration::from_secs(60)).await;
    assert!(
        relay.is_running(),
        "the relay exited instead of reconnecting:\n{}",
        relay.stderr()
    );
    let unique: BTreeSet<i64> = relay.delivered_ids().into_iter().collect();
    assert_eq!(unique, all_ids(&client).await);
}

/// A second relay on the same slot stands by while the first streams, and takes over when
/// the first goes away.
#[tokio::test]
async fn second_relay_stands_by_and_takes_over() {
    let cluster = TestCluster::start();
    let (_db, client, env) = setup(&cluster, "standby").await;
    let mut first = start_streaming(&client, &env).await;
    let mut second = RelayProcess::start(&env);
    eventually(
        Duration::from_secs(20),
        "the second relay to stand by",
        || async {
            second
                .stderr()
                .contains("in use by another process")
                .then_some(())
        },
    )
    .await;
    assert!(
        second.is_running(),
        "standby relay exited:\n{}",
        second.stderr()
    );

    first.kill9();
    insert_events(&client, 200, "order").await;
    wait_all_done(&client, 200, Duration::from_secs(60)).await;
    let unique: BTreeSet<i64> = second.delivered_ids().into_iter().collect();
    assert_eq!(
        unique,
        all_ids(&client).await,
        "the standby did not take over"
    );
}
