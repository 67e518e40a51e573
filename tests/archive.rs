//! `dispatchbox archive` against a real cluster: only old `done` rows (and old `dead` rows
//! with `--include-dead`) move, in batches, with their data; everything else stays.
#![allow(clippy::unwrap_used)]

mod support;

use support::postgres::TestCluster;
use support::relay::{base_env, migrate, run_to_end};

async fn counts_by_status(client: &tokio_postgres::Client, table: &str) -> Vec<(String, i64)> {
    client
        .query(
            &format!("SELECT status, count(*) FROM {table} GROUP BY status ORDER BY status"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn archive(env: &[(String, String)], args: &[&str]) -> String {
    let mut full = vec!["archive"];
    full.extend_from_slice(args);
    let (status, stdout, stderr) = run_to_end(&full, env);
    assert!(
        status.success(),
        "archive {args:?} failed: {status}\n{stdout}\n{stderr}"
    );
    stdout
}

fn owned(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

#[tokio::test]
async fn archive_moves_only_old_done_rows_in_batches_and_dead_ones_when_asked() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("archive").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    // Given, all created 10 days ago:
    //   1-50  done, delivered 10 days ago          → archived
    //   51-52 done, delivered_at unset (Python era) → archived (by created_at)
    //   53-57 done, delivered an hour ago           → stay
    //   58-60 pending, 61-62 retry, 63 processing   → stay, whatever their age
    //   64-67 dead, failed 10 days ago              → archived only with --include-dead
    //   68    dead, failed an hour ago              → stays
    client
        .batch_execute(
            "INSERT INTO outbox_event
                    (aggregate_type, aggregate_id, event_type, payload, headers, created_at)
             SELECT 'order', g::text, 'order.placed', jsonb_build_object('n', g),
                    '{\"traceparent\": \"00-abc-01\"}', now() - interval '10 days'
               FROM generate_series(1, 68) g;
             UPDATE outbox_event SET status = 'done', attempts = 1,
                    delivered_at = now() - interval '10 days' WHERE id <= 50;
             UPDATE outbox_event SET status = 'done' WHERE id IN (51, 52);
             UPDATE outbox_event SET status = 'done', delivered_at = now() - interval '1 hour'
              WHERE id BETWEEN 53 AND 57;
             UPDATE outbox_event SET status = 'retry' WHERE id IN (61, 62);
             UPDATE outbox_event SET status = 'processing' WHERE id = 63;
             UPDATE outbox_event SET status = 'dead', attempts = 5, last_error = 'http 410',
                    last_error_at = now() - interval '10 days' WHERE id BETWEEN 64 AND 67;
             UPDATE outbox_event SET status = 'dead', last_error = 'no route',
                    last_error_at = now() - interval '1 hour' WHERE id = 68;",
        )
        .await
        .unwrap();
    let before = owned(&[
        ("dead", 5),
        ("done", 57),
        ("pending", 3),
        ("processing", 1),
        ("retry", 2),
    ]);
    assert_eq!(counts_by_status(&client, "outbox_event").await, before);

    // A dry run counts and moves nothing.
    let stdout = archive(&env, &["--older-than", "7d", "--dry-run"]);
    assert!(
        stdout.contains("would move 52 rows (52 done, 0 dead)"),
        "{stdout}"
    );
    let stdout = archive(&env, &["--older-than", "7d", "--include-dead", "--dry-run"]);
    assert!(
        stdout.contains("would move 56 rows (52 done, 4 dead)"),
        "{stdout}"
    );
    assert_eq!(counts_by_status(&client, "outbox_event").await, before);

    // 52 rows in batches of 7: 8 batches.
    let stdout = archive(&env, &["--older-than", "7d", "--batch-size", "7"]);
    assert!(
        stdout.contains("moved 52 rows (52 done, 0 dead)") && stdout.contains("in 8 batches"),
        "{stdout}"
    );
    assert_eq!(
        counts_by_status(&client, "outbox_event").await,
        owned(&[
            ("dead", 5),
            ("done", 5),
            ("pending", 3),
            ("processing", 1),
            ("retry", 2)
        ])
    );
    let left: Vec<i64> = client
        .query(
            "SELECT id FROM outbox_event WHERE status = 'done' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, (53..=57).collect::<Vec<i64>>());

    // The archived rows keep their data.
    let archived: Vec<i64> = client
        .query("SELECT id FROM outbox_event_archive ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(archived, (1..=52).collect::<Vec<i64>>());
    let row = client
        .query_one(
            "SELECT aggregate_id, event_type, payload->>'n', headers->>'traceparent', status,
                    attempts, delivered_at < now() - interval '9 days', archived_at IS NOT NULL
               FROM outbox_event_archive WHERE id = 17",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "17");
    assert_eq!(row.get::<_, String>(1), "order.placed");
    assert_eq!(row.get::<_, String>(2), "17");
    assert_eq!(row.get::<_, String>(3), "00-abc-01");
    assert_eq!(row.get::<_, String>(4), "done");
    assert_eq!(row.get::<_, i32>(5), 1);
    assert!(row.get::<_, bool>(6));
    assert!(row.get::<_, bool>(7));

    // Nothing left to move: a second run moves nothing.
    let stdout = archive(&env, &["--older-than", "7d"]);
    assert!(stdout.contains("moved 0 rows"), "{stdout}");

    // --include-dead moves the old dead rows, with their error, and keeps the recent one.
    let stdout = archive(&env, &["--older-than", "7d", "--include-dead"]);
    assert!(stdout.contains("moved 4 rows (0 done, 4 dead)"), "{stdout}");
    let dead_left: Vec<i64> = client
        .query("SELECT id FROM outbox_event WHERE status = 'dead'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dead_left, vec![68]);
    let last_error: String = client
        .query_one(
            "SELECT last_error FROM outbox_event_archive WHERE id = 65 AND status = 'dead'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(last_error, "http 410");
    assert_eq!(
        counts_by_status(&client, "outbox_event").await,
        owned(&[
            ("dead", 1),
            ("done", 5),
            ("pending", 3),
            ("processing", 1),
            ("retry", 2)
        ])
    );
}

#[tokio::test]
async fn archive_rejects_a_bad_age_and_explains_a_missing_archive_table() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("archive_bad").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    for bad in ["7 parsecs", "0s"] {
        let (status, _, stderr) = run_to_end(&["archive", "--older-than", bad], &env);
        assert_eq!(status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--older-than"), "{stderr}");
    }
    let client = cluster.connect(&db).await;
    client
        .batch_execute("DROP TABLE outbox_event_archive")
        .await
        .unwrap();
    let (status, _, stderr) = run_to_end(&["archive", "--older-than", "7d"], &env);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("archive table public.outbox_event_archive is missing"),
        "{stderr}"
    );
    assert!(stderr.contains("dispatchbox migrate"), "{stderr}");
}
