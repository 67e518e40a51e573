//! Fewer duplicates after a crash: after a SIGKILL the slot sends again everything after
//! its confirmed position, but events whose rows were settled before the kill are not
//! delivered again. Only events delivered and not yet written may be duplicated.
//!
//! The confirmed position covers a settled prefix of the stream only, so one slow delivery
//! holds it back while thousands of later events are delivered and written: exactly the
//! window a crash replays.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, migrate, set_env, start_streaming, RelayProcess};
use support::store::count_status;
use support::webhook::{Receiver, Rule};

const EVENTS_PER_TRANSACTION: i64 = 10;

async fn insert_batch(client: &tokio_postgres::Client, aggregate_prefix: &str, round: i64) {
    client
        .execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
             SELECT 'order', $3 || (g % 50), 'order.placed',
                    jsonb_build_object('round', $1::bigint, 'n', g)
               FROM generate_series(1, $2::bigint) g",
            &[&round, &EVENTS_PER_TRANSACTION, &aggregate_prefix],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn events_settled_before_a_kill_are_not_delivered_again() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("replay").await;
    let receiver = Receiver::start().await;
    // The first transaction's events take 8 s to deliver: the confirmed position waits
    // for them while everything after is delivered and written.
    for n in 1..=EVENTS_PER_TRANSACTION {
        receiver.respond(Rule::for_aggregate(&format!("slow-{n}")).delay(Duration::from_secs(8)));
    }
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SINKS", "webhook");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_URL", &receiver.url());
    // The receiver is on loopback: turn the SSRF guard off.
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_TIMEOUT", "15s");
    set_env(&mut env, "DISPATCHBOX_SWEEP_LEASE", "30s");
    migrate(&env);
    let client = cluster.connect(&db).await;

    let mut first = start_streaming(&client, &env).await;
    insert_batch(&client, "slow-", 0).await;
    for round in 1..150 {
        insert_batch(&client, "o-", round).await;
    }
    eventually(
        Duration::from_secs(30),
        "the later events to be written",
        || async {
            (count_status(&client, "done").await >= 149 * EVENTS_PER_TRANSACTION - 100)
                .then_some(())
        },
    )
    .await;
    first.kill9();
    let settled_at_kill: HashSet<i64> = client
        .query("SELECT id FROM outbox_event WHERE status <> 'pending'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let confirmed_behind: i64 = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint
               FROM pg_replication_slots",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let second = RelayProcess::start(&env);
    for round in 150..200 {
        insert_batch(&client, "o-", round).await;
    }
    let total = 200 * EVENTS_PER_TRANSACTION;
    eventually(
        Duration::from_secs(60),
        "every event to be done",
        || async { (count_status(&client, "done").await == total).then_some(()) },
    )
    .await;

    let mut deliveries: HashMap<i64, usize> = HashMap::new();
    for request in receiver.requests() {
        *deliveries
            .entry(request.json()["id"].as_i64().unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(deliveries.len() as i64, total, "every event delivered");
    let twice: Vec<i64> = deliveries
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(&id, _)| id)
        .collect();
    println!(
        "{} events settled at the kill, slot {confirmed_behind} bytes behind; {} delivered \
         twice after the restart",
        settled_at_kill.len(),
        twice.len()
    );
    let settled_twice: Vec<&i64> = twice
        .iter()
        .filter(|id| settled_at_kill.contains(id))
        .collect();
    assert!(
        settled_twice.is_empty(),
        "{} events settled before the kill were delivered again, e.g. {:?}",
        settled_twice.len(),
        &settled_twice[..settled_twice.len().min(10)]
    );
    let metrics = support::relay::http_get(&second.admin_url(), "/metrics")
        .await
        .unwrap()
        .1;
    let skipped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dispatchbox_replay_skipped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    println!("{skipped} replayed events skipped as settled");
    assert!(
        skipped as usize >= settled_at_kill.len() - 100,
        "only {skipped} of {} settled events skipped",
        settled_at_kill.len()
    );
    drop(first);
}
