//! Replay of delivered events, end to end: the real relay delivers rows to stdout, then
//! `POST /api/replay` and the `dispatchbox replay` binary return `done` rows to `pending`
//! (dry run, cap, refusal of an empty selection), and the running relay's sweeper delivers
//! them again, in id order per aggregate, with the replay recorded on the row and counted.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};

use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, metric, migrate, run_to_end, set_env, start_streaming};
use support::store::count_status;

const TABLE: &str = "public.outbox_event";
const TOKEN: &str = "replay-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

async fn post(base: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/replay"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn statuses(client: &tokio_postgres::Client, ids: &[i64]) -> Vec<String> {
    client
        .query(
            &format!("SELECT status FROM {TABLE} WHERE id = ANY($1) ORDER BY id"),
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_events_are_replayed_by_filter_with_dry_run_and_cap() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = TestCluster::start();
    let db = cluster.create_database("replaydone").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_ADMIN_TOKEN", TOKEN);
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "200ms");
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    let ids: Vec<i64> = client
        .query(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 SELECT CASE WHEN g <= 3 THEN 'order' ELSE 'invoice' END,
                        CASE WHEN g <= 3 THEN 'o-1' ELSE 'i-1' END,
                        CASE WHEN g <= 3 THEN 'order.created' ELSE 'invoice.issued' END,
                        jsonb_build_object('g', g)
                 FROM generate_series(1, 6) g RETURNING id"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (orders, invoices) = ids.split_at(3);
    eventually(WAIT, "six rows done", || async {
        (count_status(&client, "done").await == 6).then_some(())
    })
    .await;
    let base = relay.admin_url();

    // Nothing selected, a dry run, and a cap that is too small change nothing.
    let (status, body) = post(&base, json!({})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&base, json!({"aggregate_type": "order", "dry_run": true})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matched"], 3);
    assert_eq!(body["replayed"], json!([]));
    // A dry run can list the first matches (the console's preview), and only a dry run.
    let (status, body) = post(
        &base,
        json!({"aggregate_type": "order", "dry_run": true, "preview": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matched"], 3);
    let previewed: Vec<i64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(previewed, orders[..2]);
    assert_eq!(body["events"][0]["event_type"], "order.created");
    for bad in [
        json!({"aggregate_type": "order", "preview": 2}),
        json!({"aggregate_type": "order", "dry_run": true, "preview": 101}),
    ] {
        let (status, body) = post(&base, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("preview"),
            "{body}"
        );
    }
    let (status, body) = post(&base, json!({"aggregate_type": "order", "max": 2})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(statuses(&client, orders).await, ["done", "done", "done"]);

    // The replay: the three orders go out again, in id order, and end done.
    let (status, body) = post(&base, json!({"aggregate_type": "order"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], json!(orders));
    let last_error: String = client
        .query_one(
            &format!("SELECT last_error FROM {TABLE} WHERE id = $1"),
            &[&orders[0]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(last_error, "replayed by api");
    eventually(WAIT, "the orders delivered twice", || async {
        let delivered = relay.delivered_ids();
        let again: Vec<i64> = delivered
            .iter()
            .skip(6)
            .copied()
            .filter(|id| orders.contains(id))
            .collect();
        (again.len() == 3).then_some(again)
    })
    .await;
    let delivered = relay.delivered_ids();
    let again: Vec<i64> = delivered.iter().skip(6).copied().collect();
    assert_eq!(again, orders, "replayed in id order, nothing else re-sent");
    eventually(WAIT, "all rows done again", || async {
        (count_status(&client, "done").await == 6).then_some(())
    })
    .await;
    assert_eq!(
        metric(&base, "dispatchbox_events_replayed_total").await,
        Some(3.0)
    );

    // The command line: an empty selection is a usage error, then a dry run, then a replay.
    let (status, _, stderr) = run_to_end(&["replay"], &env);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let (status, stdout, stderr) = run_to_end(
        &["replay", "--event-type", "invoice.issued", "--dry-run"],
        &env,
    );
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.starts_with("3 delivered events would be replayed"),
        "{stdout}"
    );
    let (status, _, stderr) = run_to_end(
        &["replay", "--event-type", "invoice.issued", "--max", "2"],
        &env,
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nothing was replayed"), "{stderr}");
    let (status, stdout, stderr) = run_to_end(
        &[
            "replay",
            "--from-id",
            &invoices[0].to_string(),
            "--to-id",
            &invoices[1].to_string(),
        ],
        &env,
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.starts_with("replayed 2 events"), "{stdout}");
    eventually(WAIT, "the two invoices delivered again", || async {
        let again: Vec<i64> = relay.delivered_ids().into_iter().skip(9).collect();
        (again.len() == 2).then_some(())
    })
    .await;
    let again: Vec<i64> = relay.delivered_ids().into_iter().skip(9).collect();
    assert_eq!(again, invoices[..2]);
}
