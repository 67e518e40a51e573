//! The ordering state across sweepers, leaders and time: leases that outlive a slow batch,
//! a standby that takes over, rows the stream missed, and blocked aggregates that drain.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, http_get, migrate, set_env, wait_streaming, RelayProcess};
use support::store::count_status;
use support::webhook::{Receiver, Rule};

fn webhook_env(cluster: &TestCluster, db: &str, receiver: &Receiver) -> Vec<(String, String)> {
    let mut env = base_env(cluster, db);
    set_env(&mut env, "DISPATCHBOX_SINKS", "webhook");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_URL", &receiver.url());
    // The receiver is on loopback: turn the SSRF guard off.
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_TIMEOUT", "1s");
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "200ms");
    env
}

async fn insert(client: &tokio_postgres::Client, aggregate: &str, n: i64) -> Vec<i64> {
    client
        .query(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
             SELECT 'order', $1, 'order.placed', jsonb_build_object('n', g)
               FROM generate_series(1, $2::bigint) g
             RETURNING id",
            &[&aggregate, &n],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn status_of(client: &tokio_postgres::Client, id: i64) -> (String, i32) {
    let row = client
        .query_one(
            "SELECT status, attempts FROM outbox_event WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Ids the receiver got, with how often.
fn received(receiver: &Receiver) -> HashMap<i64, usize> {
    let mut seen = HashMap::new();
    for request in receiver.requests() {
        *seen
            .entry(request.json()["id"].as_i64().unwrap())
            .or_insert(0) += 1;
    }
    seen
}

/// Given 30 rows for the sweepers of two relays and a receiver that takes 250 ms per
/// request one at a time, a claimed batch takes about 8 s against a 2 s lease: its leases
/// are renewed, so the other relay's sweeper never takes the rows over, and every event
/// arrives once.
#[tokio::test]
async fn a_batch_that_outlives_its_lease_is_not_delivered_twice() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("lease").await;
    let receiver = Receiver::start().await;
    receiver.respond(Rule::any().delay(Duration::from_millis(250)));
    let mut env = webhook_env(&cluster, &db, &receiver);
    set_env(&mut env, "DISPATCHBOX_SWEEP_LEASE", "2s");
    set_env(&mut env, "DISPATCHBOX_SWEEP_BATCH", "30");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_CONCURRENCY", "1");
    migrate(&env);
    let client = cluster.connect(&db).await;
    // Before any slot: rows for the sweepers.
    for n in 0..30 {
        insert(&client, &format!("a-{n}"), 1).await;
    }
    let _first = RelayProcess::start(&env);
    let _second = RelayProcess::start(&env);

    eventually(Duration::from_secs(60), "every row to be done", || async {
        (count_status(&client, "done").await == 30).then_some(())
    })
    .await;
    let seen = received(&receiver);
    assert_eq!(seen.len(), 30);
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}

/// Given a relay that leads and a standby started while nothing was blocked, when the
/// leader's event of aggregate X fails (retry in a minute) and the leader dies, then the
/// standby, now leading, parks X's next event behind the failed one instead of
/// delivering it first.
#[tokio::test]
async fn a_standby_that_takes_over_knows_the_blocked_aggregates() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("takeover").await;
    let receiver = Receiver::start().await;
    receiver.respond(Rule::for_aggregate("X").always(503));
    let mut env = webhook_env(&cluster, &db, &receiver);
    set_env(&mut env, "DISPATCHBOX_BACKOFF_BASE", "60s");
    migrate(&env);
    let client = cluster.connect(&db).await;
    let mut leader = RelayProcess::start(&env);
    wait_streaming(&client).await;
    let _standby = RelayProcess::start(&env);

    let first = insert(&client, "X", 1).await[0];
    eventually(
        Duration::from_secs(20),
        "the first event to fail",
        || async { (status_of(&client, first).await == ("retry".into(), 1)).then_some(()) },
    )
    .await;
    leader.kill9();
    eventually(
        Duration::from_secs(30),
        "the standby to take over",
        || async {
            let active: bool = client
                .query_one("SELECT bool_or(active) FROM pg_replication_slots", &[])
                .await
                .unwrap()
                .get(0);
            active.then_some(())
        },
    )
    .await;

    let second = insert(&client, "X", 1).await[0];
    eventually(
        Duration::from_secs(20),
        "the second event to be parked",
        || async { (status_of(&client, second).await == ("retry".into(), 0)).then_some(()) },
    )
    .await;
    assert!(
        !received(&receiver).contains_key(&second),
        "delivered before the failed event of its aggregate"
    );
}

/// Given a row the stream never saw (written before the slot) whose delivery takes 2 s,
/// when a later event of its aggregate is streamed while the sweeper delivers it, then the
/// later one is parked and arrives only after the first was answered.
#[tokio::test]
async fn a_row_the_stream_missed_holds_its_aggregate_back() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("missed").await;
    let receiver = Receiver::start().await;
    let mut env = webhook_env(&cluster, &db, &receiver);
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_TIMEOUT", "5s");
    set_env(&mut env, "DISPATCHBOX_SWEEP_LEASE", "30s");
    migrate(&env);
    let client = cluster.connect(&db).await;
    let missed = insert(&client, "Y", 1).await[0];
    receiver.respond(Rule::for_event(missed).delay(Duration::from_secs(2)));
    let _relay = RelayProcess::start(&env);
    let first = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(first[0].json()["id"], missed);

    // The sweeper is delivering the missed row now; the stream gets a later event.
    let later = insert(&client, "Y", 1).await[0];
    eventually(Duration::from_secs(30), "both to be done", || async {
        (count_status(&client, "done").await == 2).then_some(())
    })
    .await;
    let requests = receiver.requests();
    let arrival = |id: i64| {
        requests
            .iter()
            .find(|r| r.json()["id"] == id)
            .map(|r| r.arrived)
            .unwrap()
    };
    assert!(
        arrival(later) >= arrival(missed) + Duration::from_secs(2),
        "the later event arrived while the missed one was still being delivered"
    );
}

/// Given an aggregate blocked by a failed event that the sweeper then delivers, and no
/// later event of it ever, the relay forgets the aggregate
/// (`dispatchbox_blocked_aggregates` back to 0).
#[tokio::test]
async fn a_drained_aggregate_is_forgotten_without_new_events() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("forget").await;
    let receiver = Receiver::start().await;
    receiver.respond(Rule::for_aggregate("Z").fail_times(1, 503));
    let mut env = webhook_env(&cluster, &db, &receiver);
    set_env(&mut env, "DISPATCHBOX_BACKOFF_BASE", "1s");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_MAX", "1s");
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = RelayProcess::start(&env);
    wait_streaming(&client).await;
    insert(&client, "Z", 1).await;
    let base = relay.admin_url();
    let blocked = || async {
        let (_, body) = http_get(&base, "/metrics").await.ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix("dispatchbox_blocked_aggregates "))
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    eventually(Duration::from_secs(20), "Z to be blocked", || async {
        (blocked().await == Some(1)).then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), "the retry to be done", || async {
        (count_status(&client, "done").await == 1).then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), "Z to be forgotten", || async {
        (blocked().await == Some(0)).then_some(())
    })
    .await;
}
