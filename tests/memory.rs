//! Memory bounded in bytes: a backlog of 3,000 events of 1 MiB each — half written before
//! the relay started (the sweeper delivers those), half in one transaction while it streams
//! — drains with the relay's peak RSS well under the Helm chart's memory limit (512 MiB).
//! Without the byte budget a sweeper claim of 500 such rows alone held 500 MiB.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::BufRead;
use std::time::Duration;

use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, migrate, wait_streaming, RelayProcess};
use support::store::count_status;

/// The chart's `resources.limits.memory`.
const CHART_MEMORY_LIMIT_KIB: u64 = 512 * 1024;

async fn insert_large(client: &tokio_postgres::Client, n: i64) {
    // 1 MiB of JSON text per row (compressed to a few KiB in the table).
    client
        .execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
             SELECT 'blob', 'b-' || g, 'blob.stored',
                    jsonb_build_object('n', g, 'pad', repeat('x', 1048576 - 32))
               FROM generate_series(1, $1::bigint) g",
            &[&n],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_backlog_of_large_events_drains_within_the_memory_limit() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("large").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    insert_large(&client, 1500).await;

    let mut relay = RelayProcess::start_piped(&env);
    // Three gigabytes of stdout: counted and thrown away.
    let stdout = relay.take_stdout().unwrap();
    let lines = std::thread::spawn(move || {
        let mut reader = std::io::BufReader::with_capacity(1 << 20, stdout);
        let mut line = Vec::new();
        let mut n = 0_u64;
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            n += 1;
            line.clear();
        }
        n
    });
    wait_streaming(&client).await;
    insert_large(&client, 1500).await;

    eventually(
        Duration::from_secs(600),
        "every large event to be done",
        || async { (count_status(&client, "done").await == 3000).then_some(()) },
    )
    .await;
    let peak = relay.peak_rss_kib();
    println!(
        "peak RSS {} MiB draining 3,000 events of 1 MiB",
        peak / 1024
    );
    assert!(
        peak < CHART_MEMORY_LIMIT_KIB / 2,
        "peak RSS {} MiB, the chart allows {} MiB",
        peak / 1024,
        CHART_MEMORY_LIMIT_KIB / 1024
    );
    relay.terminate();
    assert!(relay.wait_exit(Duration::from_secs(30)).is_some());
    assert!(lines.join().unwrap() >= 3000);
}
