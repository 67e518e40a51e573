//! Plans that cannot degrade: the statements `dispatchbox run` repeats keep reading a few
//! pages per row as the outbox grows from empty, even when the table's statistics still say
//! it is empty (analyzed while empty, autovacuum off) and the statements were prepared and
//! cached while it was. Before the relay pinned its sessions' planner settings, the cached
//! generic plan of the status UPDATE was a sequential scan of the whole table per batch.
//!
//! Measured with `pg_stat_statements` on the relay's own role, after the table grew: every
//! statement that touches the outbox reads at most a few pages per row it handles, far
//! below the table's size.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};

use support::postgres::{eventually, ClusterOptions, TestCluster};
use support::relay::{base_env, migrate, set_env, start_streaming};

const ROLE: &str = "relay_plans";
const PASSWORD: &str = "relay-plans-pw";
const TOKEN: &str = "plans-admin-token-0123456789";

/// Pages a statement may read per call in a table of `table_pages`: a few per row handled,
/// plus index entries of rows that changed status since the last vacuum (autovacuum is off
/// here, so index scans still step over them), never more than a tenth of the table. A
/// sequential scan reads every page.
fn page_budget(rows_per_call: f64, table_pages: i64) -> f64 {
    (50.0 + 20.0 * rows_per_call).max(table_pages as f64 / 10.0)
}

async fn insert(client: &tokio_postgres::Client, rows: i32, status: &str) {
    client
        .execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status)
             SELECT 'order', 'o-' || (g % 100), 'order.created',
                    jsonb_build_object('n', g, 'pad', repeat('x', 200)), $2
               FROM generate_series(1, $1) g",
            &[&rows, &status],
        )
        .await
        .unwrap();
}

/// Every event delivered and its row written: no row pending, none without `delivered_at`
/// (rows inserted as `done` get one when the relay has delivered them too).
async fn settled(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM outbox_event
                                 WHERE status <> 'dead' AND delivered_at IS NULL)",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn api_get(http: &reqwest::Client, base: &str, path: &str) {
    let response = http
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
}

async fn api_post(http: &reqwest::Client, base: &str, path: &str, body: Value) {
    let response = http
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "POST {path}: {}",
        response.status()
    );
}

#[tokio::test]
async fn repeated_statements_keep_index_plans_as_the_table_grows_from_empty() {
    let cluster = TestCluster::start_with(ClusterOptions {
        conf: vec!["shared_preload_libraries = 'pg_stat_statements'".to_owned()],
        ..ClusterOptions::default()
    });
    let db = cluster.create_database("plans").await;
    let client = cluster.connect(&db).await;
    client
        .batch_execute(&format!(
            "CREATE EXTENSION pg_stat_statements;
             CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}';"
        ))
        .await
        .unwrap();
    let mut env = base_env(&cluster, &db);
    set_env(
        &mut env,
        "DISPATCHBOX_DATABASE_URL",
        &cluster.url(ROLE, PASSWORD, &db),
    );
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "100ms");
    set_env(&mut env, "DISPATCHBOX_ADMIN_TOKEN", TOKEN);
    migrate(&env);
    // Statistics that say "empty", and nothing to refresh them.
    client
        .batch_execute(
            "ALTER TABLE outbox_event SET (autovacuum_enabled = false);
             ANALYZE outbox_event;",
        )
        .await
        .unwrap();

    // Given a relay whose statements were prepared, and their plans cached, while the table
    // was empty (PostgreSQL caches a generic plan after five executions).
    let relay = start_streaming(&client, &env).await;
    let base = format!("{}/api", relay.admin_url());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    for _ in 0..8 {
        insert(&client, 1, "pending").await;
        api_get(&http, &base, "/dead-events").await;
        api_get(&http, &base, "/dead-events/stats").await;
        api_get(&http, &base, "/overview").await;
        api_post(&http, &base, "/events/statuses", json!({"ids": [1, 2, 3]})).await;
        eventually(Duration::from_secs(30), "the event to be done", || async {
            settled(&client).await.then_some(())
        })
        .await;
    }

    // When the table grows to tens of thousands of rows (its statistics still say empty).
    // The rows are written `done` (the relay still streams and delivers them): without
    // autovacuum, rows that passed through `pending` would leave dead entries in the partial
    // indexes, a cost of bloat that would hide the cost of a plan.
    for _ in 0..30 {
        insert(&client, 2000, "done").await;
    }
    insert(&client, 40, "dead").await;
    eventually(
        Duration::from_secs(120),
        "the grown table to be delivered",
        || async { settled(&client).await.then_some(()) },
    )
    .await;
    let pages: i64 = client
        .query_one(
            "SELECT pg_relation_size('outbox_event') / current_setting('block_size')::int",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pages > 2000, "the table has only {pages} pages");
    client
        .execute(
            "SELECT pg_stat_statements_reset((SELECT oid FROM pg_roles WHERE rolname = $1))",
            &[&ROLE],
        )
        .await
        .unwrap();

    // And the relay keeps delivering, sweeping and answering the dead-letter API.
    for i in 0..40 {
        insert(&client, 5, "pending").await;
        api_get(&http, &base, "/dead-events").await;
        api_get(&http, &base, "/dead-events/stats").await;
        api_post(&http, &base, "/events/statuses", json!({"ids": [1, 2, 3]})).await;
        // Past the overview's 2 s cache every few calls, so it queries again.
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(2100)).await;
            api_get(&http, &base, "/overview").await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(
        Duration::from_secs(30),
        "the last events to be done",
        || async { settled(&client).await.then_some(()) },
    )
    .await;

    // The backlog gauges are counted every 15 s: wait for one count over the grown table.
    eventually(Duration::from_secs(40), "a backlog count", || async {
        let calls: i64 = client
            .query_one(
                "SELECT coalesce(sum(calls), 0)::bigint
                   FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
                  WHERE r.rolname = $1 AND query ILIKE '%greatest(created_at, next_run_at)%'",
                &[&ROLE],
            )
            .await
            .unwrap()
            .get(0);
        (calls > 0).then_some(())
    })
    .await;

    // Then no statement of the relay reads more than a few pages per row it handles.
    let statements = client
        .query(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls, rows,
                    shared_blks_hit + shared_blks_read
               FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
              WHERE r.rolname = $1 AND query ILIKE '%outbox_event%' AND calls > 0",
            &[&ROLE],
        )
        .await
        .unwrap();
    let mut checked = Vec::new();
    for row in &statements {
        let query: String = row.get(0);
        let calls: i64 = row.get(1);
        let rows: i64 = row.get(2);
        let pages_read: i64 = row.get(3);
        let per_call = pages_read as f64 / calls as f64;
        let rows_per_call = rows as f64 / calls as f64;
        assert!(
            per_call <= page_budget(rows_per_call, pages),
            "{per_call:.0} pages per call ({rows_per_call:.1} rows per call, table {pages} \
             pages): {query}"
        );
        checked.push(query);
    }
    // The statements that matter were all among them.
    for expected in [
        "UPDATE \"public\".\"outbox_event\" SET status",
        "WITH candidate AS MATERIALIZED",
        "FILTER (WHERE p.last_error_at IS NULL)",
        "SELECT LEAST((SELECT t.next_run_at",
        "GROUPING SETS",
        "greatest(created_at, next_run_at)",
        "reltuples",
        "WHERE id = ANY($1) GROUP BY 1",
    ] {
        assert!(
            checked.iter().any(|q| q.contains(expected)),
            "no statement like {expected:?} ran after the table grew: {checked:#?}"
        );
    }
}
