//! One bad row never poisons its neighbours: in a table the relay adopted without the NOT
//! NULL constraints of its schema, rows that cannot become events (a NULL where the
//! contract needs a value, a timestamp of `infinity`, malformed headers) are marked `dead`
//! one by one with a reason that names the column and never the value, while every other
//! row of the same sweeper batch is delivered; the dead-letter list, export and archive
//! show and move the rest; `check` reports the missing constraints with the fix.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, migrate, run_to_end, RelayProcess};
use support::store::count_status;

/// A header value that must never show up in an error text.
const SECRET: &str = "s3cr3t-header-value";

#[tokio::test]
async fn bad_rows_go_dead_alone_and_the_batch_goes_on() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("badrows").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    // A table as another tool made it: no NOT NULL on what the relay needs.
    client
        .batch_execute(
            "ALTER TABLE outbox_event ALTER COLUMN aggregate_type DROP NOT NULL,
                                      ALTER COLUMN event_type DROP NOT NULL",
        )
        .await
        .unwrap();
    // Written before the relay ever ran: the sweeper delivers them, in one batch.
    client
        .batch_execute(&format!(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
             SELECT 'order', 'o-' || g, 'order.placed', '{{}}' FROM generate_series(1, 10) g;
             INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
             VALUES (NULL, 'n-1', 'order.placed', '{{}}'),
                    ('order', 'n-2', NULL, '{{}}');
             INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, created_at)
             VALUES ('order', 'i-1', 'order.placed', '{{}}', 'infinity');
             INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, headers)
             VALUES ('order', 'h-1', 'order.placed', '{{}}', '\"{SECRET}\"');
             INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
             SELECT 'order', 'p-' || g, 'order.placed', '{{}}' FROM generate_series(1, 10) g;"
        ))
        .await
        .unwrap();

    let (_, stdout, _) = run_to_end(&["check"], &env);
    assert!(
        stdout.contains("allows NULL in \"aggregate_type\" and \"event_type\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("ALTER COLUMN \"aggregate_type\" SET NOT NULL"),
        "{stdout}"
    );

    let relay = RelayProcess::start(&env);
    eventually(
        Duration::from_secs(60),
        "every row to be settled",
        || async {
            (count_status(&client, "done").await == 20 && count_status(&client, "dead").await == 4)
                .then_some(())
        },
    )
    .await;
    let dead = client
        .query(
            "SELECT aggregate_id, last_error FROM outbox_event WHERE status = 'dead'
              ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let reasons: Vec<(String, String)> = dead.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expect = [
        ("n-1", "column \"aggregate_type\" is NULL"),
        ("n-2", "column \"event_type\" is NULL"),
        ("i-1", "column \"created_at\""),
        (
            "h-1",
            "column \"headers\" is not a JSON object but a string",
        ),
    ];
    for ((aggregate, reason), (expected_aggregate, expected_reason)) in reasons.iter().zip(expect) {
        assert_eq!(aggregate, expected_aggregate);
        assert!(reason.contains(expected_reason), "{aggregate}: {reason}");
        assert!(!reason.contains(SECRET), "a header value in {reason}");
    }
    let delivered = relay.delivered_ids();
    assert_eq!(delivered.len(), 20, "every good row, once: {delivered:?}");
    assert!(
        !relay.stderr().contains(SECRET),
        "a header value in the logs"
    );

    // The dead-letter list shows every dead row, the unreadable ones marked as such.
    let (status, stdout, stderr) = run_to_end(&["dead", "list", "--format", "json"], &env);
    assert!(status.success(), "{stdout}\n{stderr}");
    let page: Value = serde_json::from_str(&stdout).unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 4, "{page:#}");
    let unreadable: Vec<&str> = events
        .iter()
        .filter_map(|e| e["unreadable"].as_str())
        .collect();
    assert_eq!(
        unreadable,
        [
            "column \"aggregate_type\" is NULL",
            "column \"event_type\" is NULL",
            "column \"created_at\" cannot be read as a time (e.g. infinity)",
        ],
        "{page:#}"
    );
    let (status, csv, stderr) = run_to_end(&["dead", "export", "--format", "csv"], &env);
    assert!(status.success(), "{stderr}");
    assert_eq!(csv.lines().count(), 5, "a header and four rows: {csv}");

    // Archiving moves every done and dead row except the two with NULLs, which the archive
    // table cannot hold; they no longer fail the batch.
    drop(relay);
    let (status, stdout, stderr) =
        run_to_end(&["archive", "--older-than", "1ms", "--include-dead"], &env);
    assert!(status.success(), "{stdout}\n{stderr}");
    let left: Vec<String> = client
        .query("SELECT aggregate_id FROM outbox_event ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["n-1", "n-2"], "{stdout}");
}
