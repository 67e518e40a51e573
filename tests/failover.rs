//! Failover to a promoted physical standby, end to end: a primary and a streaming standby
//! made with `pg_basebackup`, the real relay pointed at both through a multi-host URL with
//! `target_session_attrs=read-write`, and a real HTTP receiver. PostgreSQL 15 does not carry
//! logical slots to a standby: after the promotion the relay must notice the new timeline,
//! create its slot on the new primary, and let the sweeper deliver every row the new slot
//! cannot stream — with no operator action.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use support::postgres::{eventually, TestCluster, SUPERUSER_PASSWORD};
use support::relay::{base_env, metric, migrate, set_env, start_streaming};
use support::store::count_status;
use support::webhook::{Receiver, Rule};

const TABLE: &str = "public.outbox_event";
const AGGREGATES: i64 = 5;

/// Inserts `n` events spread over [`AGGREGATES`] aggregates, one transaction.
async fn insert_events(client: &tokio_postgres::Client, n: i64) {
    client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 SELECT 'order', 'agg-' || (g % $2), 'order.placed', jsonb_build_object('n', g)
                 FROM generate_series(1, $1::bigint) g"
            ),
            &[&n, &AGGREGATES],
        )
        .await
        .unwrap();
}

/// Given a relay streaming from the primary of a primary/standby pair through
/// `postgres://…@primary,standby/db?target_session_attrs=read-write`, with 40 events
/// delivered, 60 more committed while the receiver is slow (in flight at the failover), and
/// 20 more the relay never read (it was frozen), all replayed by the standby,
/// when the primary crashes, the standby is promoted (once the relay has found it is still a
/// standby) and 30 more events are inserted on it,
/// then every row on the new primary ends `done`, every event reaches the receiver at least
/// once, the first deliveries of each aggregate come in id order, and the relay reports the
/// failover (ERROR log, `dispatchbox_failovers_total`, the new timeline). Duplicates are
/// counted and printed, not forbidden: they are allowed around a failover (e.g. a status
/// written on the old primary after the standby's last replay is lost with it).
#[tokio::test]
async fn promoted_standby_takes_over_without_losing_events() {
    let primary = TestCluster::start();
    let db = primary.create_database("failover").await;
    let standby = TestCluster::start_standby_of(&primary);

    let receiver = Receiver::start().await;
    let mut env = base_env(&primary, &db);
    set_env(
        &mut env,
        "DISPATCHBOX_DATABASE_URL",
        &format!(
            "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write&sslmode=disable",
            primary.port, standby.port
        ),
    );
    set_env(&mut env, "DISPATCHBOX_SINKS", "webhook");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_URL", &receiver.url());
    // The receiver is on loopback: turn the SSRF guard off.
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_TIMEOUT", "10s");
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "500ms");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_BASE", "1s");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_MAX", "4s");
    migrate(&env);

    let old = primary.connect(&db).await;
    let mut relay = start_streaming(&old, &env).await;
    let admin = relay.admin_url();
    insert_events(&old, 40).await;
    eventually(Duration::from_secs(30), "the first 40 events", || async {
        (count_status(&old, "done").await == 40).then_some(())
    })
    .await;
    assert_eq!(
        metric(&admin, "dispatchbox_server_timeline").await,
        Some(1.0)
    );

    // The receiver slows down: the next events stay in flight.
    receiver.respond(Rule::any().fail_times(8, 200).delay(Duration::from_secs(2)));
    insert_events(&old, 60).await;
    receiver.wait_for(41, Duration::from_secs(30)).await;
    // The relay falls behind: 20 more events are committed (and replicated) that it never
    // reads from the old primary.
    relay.pause();
    insert_events(&old, 20).await;
    standby
        .wait_replayed(&primary, Duration::from_secs(30))
        .await;
    let pending_at_failover = count_status(&old, "pending").await;
    drop(old);

    primary.crash();
    relay.resume();
    // No primary for a while: the relay keeps trying the hosts (the standby refuses to be
    // one for read-write) instead of giving up.
    eventually(
        Duration::from_secs(30),
        "the relay to find no read-write host",
        || async {
            relay
                .stderr()
                .contains("accepts only read-only sessions")
                .then_some(())
        },
    )
    .await;
    assert!(relay.is_running());
    standby.promote();
    let new = standby.connect(&db).await;
    insert_events(&new, 30).await;

    let total: i64 = new
        .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 150, "the standby had replayed every event");
    eventually(
        Duration::from_secs(90),
        "every row on the new primary to be done",
        || async { (count_status(&new, "done").await == total).then_some(()) },
    )
    .await;

    // Every event reached the receiver; each aggregate's first deliveries in id order.
    let rows: Vec<(i64, String)> = new
        .query(
            &format!("SELECT id, aggregate_id FROM {TABLE} ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let requests = receiver.requests();
    let delivered: Vec<i64> = requests
        .iter()
        .map(|r| r.webhook_id().unwrap().parse().unwrap())
        .collect();
    let distinct: HashSet<i64> = delivered.iter().copied().collect();
    let missing: BTreeSet<i64> = rows
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !distinct.contains(id))
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    let aggregate_of: HashMap<i64, &str> =
        rows.iter().map(|(id, agg)| (*id, agg.as_str())).collect();
    let mut last_first: HashMap<&str, i64> = HashMap::new();
    let mut seen = HashSet::new();
    let mut violations = Vec::new();
    for id in &delivered {
        if !seen.insert(*id) {
            continue;
        }
        let aggregate = aggregate_of[id];
        if let Some(&before) = last_first.get(aggregate) {
            if *id < before {
                violations.push((aggregate, before, *id));
            }
        }
        last_first.insert(aggregate, *id);
    }
    assert!(
        violations.is_empty(),
        "first deliveries out of id order (aggregate, earlier id delivered first, later id): {violations:?}"
    );
    let duplicates = delivered.len() - distinct.len();
    println!(
        "failover: {total} events, {} deliveries, {duplicates} duplicates \
         ({pending_at_failover} rows pending at the failover)",
        delivered.len()
    );

    // The relay said so, and followed the new primary.
    assert_eq!(
        metric(&admin, "dispatchbox_failovers_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&admin, "dispatchbox_server_timeline").await,
        Some(2.0)
    );
    assert!(
        metric(
            &admin,
            "dispatchbox_sweeper_reclaims_total{reason=\"missed\"}"
        )
        .await
        .unwrap_or(0.0)
            > 0.0,
        "rows the new slot cannot stream are delivered by the sweeper"
    );
    let logs = relay.stderr();
    let failover_line = logs
        .lines()
        .find(|line| line.contains("failover:"))
        .unwrap_or_else(|| panic!("no failover log line:\n{logs}"));
    let line: serde_json::Value = serde_json::from_str(failover_line).unwrap();
    assert_eq!(line["level"], "ERROR", "{failover_line}");
    assert!(failover_line.contains("timeline 1 -> 2"), "{failover_line}");
    let slot_active: bool = new
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&format!("slot_{db}")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(slot_active, "the relay streams from its new slot");
}
