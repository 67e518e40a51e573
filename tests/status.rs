//! `dispatchbox status` against a real cluster: counts per status, the oldest pending and
//! due retry rows, and the slot before it exists, once created, and while a relay streams.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, migrate, run_to_end, start_streaming};

fn status_json(env: &[(String, String)]) -> Value {
    let (status, stdout, stderr) = run_to_end(&["status", "--format", "json"], env);
    assert!(
        status.success(),
        "status failed: {status}\n{stdout}\n{stderr}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{stdout}"))
}

#[tokio::test]
async fn status_reports_counts_ages_and_the_slot() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("status").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    // Given 15 rows: 3 pending (2 minutes old), 2 processing, 4 retry (2 due, the oldest
    // for 30 s), 5 done, 1 dead.
    client
        .batch_execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, created_at)
             SELECT 'order', g::text, 'order.placed', '{}', now() - interval '2 minutes'
               FROM generate_series(1, 15) g;
             UPDATE outbox_event SET status = 'processing', next_run_at = now() + interval '1 minute'
              WHERE id IN (4, 5);
             UPDATE outbox_event SET status = 'retry', next_run_at = now() - interval '30 seconds'
              WHERE id = 6;
             UPDATE outbox_event SET status = 'retry', next_run_at = now() - interval '5 seconds'
              WHERE id = 7;
             UPDATE outbox_event SET status = 'retry', next_run_at = now() + interval '1 hour'
              WHERE id IN (8, 9);
             UPDATE outbox_event SET status = 'done', delivered_at = now() WHERE id BETWEEN 10 AND 14;
             UPDATE outbox_event SET status = 'dead', last_error = 'no route' WHERE id = 15;",
        )
        .await
        .unwrap();

    // Without a slot.
    let report = status_json(&env);
    let counts = &report["outbox"]["counts"];
    assert_eq!(counts["pending"], 3, "{report:#}");
    assert_eq!(counts["processing"], 2);
    assert_eq!(counts["retry"], 4);
    assert_eq!(counts["done"], 5);
    assert_eq!(counts["dead"], 1);
    assert_eq!(counts["other"], 0);
    assert_eq!(report["outbox"]["table"], "public.outbox_event");
    let pending_age = report["outbox"]["oldest_pending_age_seconds"]
        .as_f64()
        .unwrap();
    assert!((119.0..600.0).contains(&pending_age), "{report:#}");
    assert!(report["outbox"]["oldest_pending_created_at"].is_string());
    let overdue = report["outbox"]["oldest_due_retry_overdue_seconds"]
        .as_f64()
        .unwrap();
    assert!((29.0..600.0).contains(&overdue), "{report:#}");
    let slot = &report["slot"];
    assert_eq!(slot["name"], format!("slot_{db}"));
    assert_eq!(slot["exists"], false);
    assert_eq!(slot["active"], false);
    assert!(slot["lag_bytes"].is_null());
    assert!(slot["wal_status"].is_null());

    // With a slot nobody streams from, and WAL written after it.
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&format!("slot_{db}")],
        )
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE filler AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    let report = status_json(&env);
    let slot = &report["slot"];
    assert_eq!(slot["exists"], true, "{report:#}");
    assert_eq!(slot["active"], false);
    assert!(slot["active_pid"].is_null());
    assert_eq!(slot["plugin"], "pgoutput");
    assert_eq!(slot["database"], db.as_str());
    assert!(slot["confirmed_flush_lsn"].as_str().unwrap().contains('/'));
    assert!(slot["lag_bytes"].as_i64().unwrap() > 0, "{report:#}");
    assert_eq!(slot["wal_status"], "reserved");
    // The test clusters cap slots at 1GB (plus up to a WAL segment of rounding).
    let safe = slot["safe_wal_size"].as_i64().unwrap();
    assert!(
        safe > (1 << 30) - (64 << 20) && safe < (1 << 30) + (64 << 20),
        "{report:#}"
    );

    let (status, stdout, _) = run_to_end(&["status"], &env);
    assert!(status.success());
    assert!(
        stdout.contains(&format!("replication slot \"slot_{db}\"")),
        "{stdout}"
    );
    assert!(stdout.contains("inactive"), "{stdout}");
    assert!(stdout.contains("lag "), "{stdout}");
    assert!(stdout.contains(" bytes)"), "{stdout}");
    assert!(stdout.contains("wal_status       reserved"), "{stdout}");
    assert!(
        stdout.contains("outbox table public.outbox_event"),
        "{stdout}"
    );
    assert!(stdout.contains("oldest created 2m"), "{stdout}");

    // While a relay streams, the slot is active and names its client.
    let _relay = start_streaming(&client, &env).await;
    // The walsender reports `catchup` until it reached the end of the WAL.
    let report = eventually(
        Duration::from_secs(30),
        "the walsender to report streaming",
        || async {
            let report = status_json(&env);
            (report["slot"]["client_state"] == "streaming").then_some(report)
        },
    )
    .await;
    let slot = &report["slot"];
    assert_eq!(slot["active"], true, "{report:#}");
    assert!(slot["active_pid"].as_i64().unwrap() > 0);
    assert_eq!(slot["client_addr"], "127.0.0.1", "{report:#}");
    assert!(slot["client_application_name"].is_string(), "{report:#}");
    let (_, stdout, _) = run_to_end(&["status"], &env);
    assert!(stdout.contains("streaming to pid"), "{stdout}");
}
