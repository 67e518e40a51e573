//! Dead-letter management end to end: the real relay drives events to `dead` (a webhook
//! receiver answering 400, an event type no route matches), then the real `dispatchbox
//! dead` binary lists, pages, counts, shows, exports and retries them, and the running relay
//! delivers the retried events.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::{json, Value};

use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, migrate, run_to_end, set_env, start_streaming, RelayProcess};
use support::webhook::{Receiver, Rule};

const TABLE: &str = "public.outbox_event";

struct Setup {
    _cluster: TestCluster,
    client: tokio_postgres::Client,
    receiver: Receiver,
    env: Vec<(String, String)>,
    relay: RelayProcess,
}

impl Setup {
    /// `dispatchbox dead <args>`; returns (status, stdout, stderr).
    fn dead(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let args: Vec<&str> = std::iter::once("dead")
            .chain(args.iter().copied())
            .collect();
        run_to_end(&args, &self.env)
    }

    /// `dispatchbox dead <args>` that must succeed; returns stdout.
    fn dead_ok(&self, args: &[&str]) -> String {
        let (status, stdout, stderr) = self.dead(args);
        assert!(
            status.success(),
            "dead {args:?} failed: {status}\n{stdout}\n{stderr}"
        );
        stdout
    }

    /// `dead <args> --format json`, parsed.
    fn dead_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--format", "json"]);
        let stdout = self.dead_ok(&args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }

    /// Ids of `dead list` with `args`, following every page.
    fn list_ids(&self, args: &[&str]) -> Vec<i64> {
        let page = self.dead_json(&[&["list", "--limit", "1000"][..], args].concat());
        assert_eq!(page["next_after_id"], Value::Null);
        ids(&page["events"])
    }

    async fn insert(
        &self,
        aggregate: (&str, &str),
        event_type: &str,
        headers: Option<&str>,
    ) -> i64 {
        self.client
            .query_one(
                &format!(
                    "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload, headers)
                     VALUES ($1, $2, $3,
                             jsonb_build_object('aggregate', $2::text, 'note', 'grüße, \"quoted\"',
                                                'n', 12345678901234567890),
                             $4::text::jsonb)
                     RETURNING id"
                ),
                &[&aggregate.0, &aggregate.1, &event_type, &headers],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn status(&self, id: i64) -> (String, i32, Option<String>) {
        let r = self
            .client
            .query_one(
                &format!("SELECT status, attempts, last_error FROM {TABLE} WHERE id = $1"),
                &[&id],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    }

    async fn last_error_at(&self, id: i64) -> chrono::DateTime<chrono::Utc> {
        self.client
            .query_one(
                &format!("SELECT last_error_at FROM {TABLE} WHERE id = $1"),
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn wait_status(&self, id: i64, status: &str) -> (String, i32, Option<String>) {
        eventually(
            Duration::from_secs(30),
            &format!("event {id} to be {status}"),
            || async {
                let r = self.status(id).await;
                (r.0 == status).then_some(r)
            },
        )
        .await
    }
}

fn ids(events: &Value) -> Vec<i64> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

/// Events of three aggregates types over four event types: five answered 400 by the
/// receiver (dead after one attempt), one unrouted ("no route"), one delivered.
struct Events {
    o1: i64,
    o2: i64,
    o3: i64,
    i1: i64,
    i2: i64,
    audit: i64,
    delivered: i64,
}

impl Events {
    fn dead(&self) -> Vec<i64> {
        vec![self.o1, self.o2, self.o3, self.i1, self.i2, self.audit]
    }
}

async fn setup() -> (Setup, Events) {
    let cluster = TestCluster::start();
    let receiver = Receiver::start().await;
    let db = cluster.create_database("dead").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SINKS", "webhook");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_URL", &receiver.url());
    // The receiver is on loopback: turn the SSRF guard off.
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_TIMEOUT", "2s");
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "200ms");
    set_env(&mut env, "DISPATCHBOX_SWEEP_LEASE", "10s");
    set_env(
        &mut env,
        "DISPATCHBOX_ROUTES",
        "order.*=webhook; invoice.*=webhook",
    );
    migrate(&env);
    let client = cluster.connect(&db).await;
    // One 400 per aggregate: the first attempt fails for good, a retry gets the default 200.
    for aggregate in ["o1", "o2", "o3", "i1", "i2"] {
        receiver.respond(Rule::for_aggregate(aggregate).fail_times(1, 400));
    }
    let relay = start_streaming(&client, &env).await;
    let s = Setup {
        _cluster: cluster,
        client,
        receiver,
        env,
        relay,
    };
    let events = Events {
        o1: s
            .insert(
                ("order", "o1"),
                "order.placed",
                Some(r#"{"traceparent": "00-aa-01"}"#),
            )
            .await,
        o2: s.insert(("order", "o2"), "order.placed", None).await,
        o3: s.insert(("order", "o3"), "order.cancelled", None).await,
        i1: s.insert(("invoice", "i1"), "invoice.issued", None).await,
        i2: s.insert(("invoice", "i2"), "invoice.issued", None).await,
        audit: s.insert(("audit", "a1"), "audit.logged", None).await,
        delivered: s.insert(("order", "ok"), "order.placed", None).await,
    };
    for id in events.dead() {
        s.wait_status(id, "dead").await;
    }
    s.wait_status(events.delivered, "done").await;
    (s, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_stats_show_and_export_dead_events() {
    let (s, e) = setup().await;
    let all = e.dead();

    // Filters.
    assert_eq!(s.list_ids(&[]), all);
    assert_eq!(
        s.list_ids(&["--aggregate-type", "order"]),
        [e.o1, e.o2, e.o3]
    );
    assert_eq!(
        s.list_ids(&["--event-type", "invoice.issued"]),
        [e.i1, e.i2]
    );
    assert_eq!(
        s.list_ids(&["--aggregate-type", "order", "--event-type", "order.placed"]),
        [e.o1, e.o2]
    );
    assert_eq!(
        s.list_ids(&["--id", &e.o3.to_string(), "--id", &e.i2.to_string()]),
        [e.o3, e.i2]
    );
    assert_eq!(
        s.list_ids(&["--id", &e.delivered.to_string()]),
        Vec::<i64>::new()
    );
    // Time filters work on last_error_at: move two failures into the past.
    s.client
        .execute(
            &format!(
                "UPDATE {TABLE} SET last_error_at = '2020-06-01T00:00:00Z' WHERE id = ANY($1)"
            ),
            &[&vec![e.o1, e.i1]],
        )
        .await
        .unwrap();
    assert_eq!(s.list_ids(&["--until", "2021-01-01"]), [e.o1, e.i1]);
    assert_eq!(
        s.list_ids(&["--since", "2021-01-01T00:00:00Z"]),
        [e.o2, e.o3, e.i2, e.audit]
    );
    assert_eq!(s.list_ids(&["--since", "1h"]), [e.o2, e.o3, e.i2, e.audit]);
    assert_eq!(
        s.list_ids(&[
            "--since",
            "2020-01-01",
            "--until",
            "7d",
            "--aggregate-type",
            "invoice"
        ]),
        [e.i1]
    );

    // Paging with --limit 2 covers everything once.
    let mut seen = Vec::new();
    let mut after: Option<i64> = None;
    let mut pages = 0;
    loop {
        let mut args = vec!["list".to_owned(), "--limit".into(), "2".into()];
        if let Some(after) = after {
            args.extend(["--after-id".into(), after.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let page = s.dead_json(&args);
        let page_ids = ids(&page["events"]);
        assert!(page_ids.len() <= 2, "{page}");
        seen.extend(page_ids);
        pages += 1;
        match page["next_after_id"].as_i64() {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, all, "pages overlap or miss events");
    assert_eq!(pages, 3);

    // The human table: header, one row per event, the reason, and the next-page hint.
    let (status, table, stderr) = s.dead(&["list", "--limit", "4"]);
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID"), "{table}");
    assert!(lines[0].contains("LAST ERROR"), "{table}");
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[1].starts_with(&e.o1.to_string()), "{table}");
    assert!(lines[1].contains("order/o1"), "{table}");
    assert!(table.contains("400"), "{table}");
    assert!(stderr.contains(&format!("--after-id {}", e.i1)), "{stderr}");
    // CSV listing.
    let csv_text = s.dead_ok(&["list", "--format", "csv", "--event-type", "order.placed"]);
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(reader.headers().unwrap().get(0), Some("id"));
    let csv_ids: Vec<i64> = reader
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect();
    assert_eq!(csv_ids, [e.o1, e.o2]);

    // Stats.
    let stats = s.dead_json(&["stats"]);
    assert_eq!(stats["total"], 6);
    assert_eq!(
        stats["by_event_type"],
        json!([
            {"name": "invoice.issued", "count": 2},
            {"name": "order.placed", "count": 2},
            {"name": "audit.logged", "count": 1},
            {"name": "order.cancelled", "count": 1},
        ])
    );
    assert_eq!(
        stats["by_aggregate_type"],
        json!([
            {"name": "order", "count": 3},
            {"name": "invoice", "count": 2},
            {"name": "audit", "count": 1},
        ])
    );
    assert!(stats["oldest_failed_at"]
        .as_str()
        .unwrap()
        .starts_with("2020-06-01"));
    let text = s.dead_ok(&["stats", "--aggregate-type", "invoice"]);
    assert!(text.starts_with("dead events: 2"), "{text}");
    assert!(text.contains("invoice.issued"), "{text}");

    // Show: payload, headers and the last error; the no-route reason for the unrouted one.
    let shown = s.dead_json(&["show", &e.o1.to_string()]);
    assert_eq!(shown["id"], e.o1);
    assert_eq!(
        shown["payload"],
        json!({"aggregate": "o1", "note": "grüße, \"quoted\"", "n": 12345678901234567890_u64})
    );
    assert_eq!(shown["headers"], json!({"traceparent": "00-aa-01"}));
    assert_eq!(shown["attempts"], 1);
    assert!(
        shown["last_error"].as_str().unwrap().contains("400"),
        "{shown}"
    );
    let shown = s.dead_json(&["show", &e.audit.to_string()]);
    assert!(
        shown["last_error"].as_str().unwrap().contains("no route"),
        "{shown}"
    );
    assert_eq!(shown["headers"], Value::Null);
    let text = s.dead_ok(&["show", &e.o2.to_string()]);
    assert!(text.contains("payload:"), "{text}");
    assert!(text.contains("\"aggregate\": \"o2\""), "{text}");
    assert!(text.contains("last error:"), "{text}");
    let (status, _, stderr) = s.dead(&["show", &e.delivered.to_string()]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("no dead event with id"), "{stderr}");

    // Export as JSON (to a file) and as CSV (to stdout): the same events and fields.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.json");
    let (status, _, stderr) = s.dead(&["export", "--output", path.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("exported 6 dead events"), "{stderr}");
    let exported: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(ids(&exported), all);
    let csv_text = s.dead_ok(&["export", "--format", "csv"]);
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header,
        [
            "id",
            "aggregate_type",
            "aggregate_id",
            "event_type",
            "attempts",
            "last_error",
            "last_error_at",
            "created_at",
            "payload",
            "headers",
            "unreadable"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 6);
    for (row, json_event) in rows.iter().zip(exported.as_array().unwrap()) {
        let shown = s.dead_json(&["show", &row[0]]);
        assert_eq!(json_event, &shown, "export JSON and show differ");
        assert_eq!(
            row[0].parse::<i64>().unwrap(),
            shown["id"].as_i64().unwrap()
        );
        for (column, field) in [
            (1, "aggregate_type"),
            (2, "aggregate_id"),
            (3, "event_type"),
        ] {
            assert_eq!(&row[column], shown[field].as_str().unwrap());
        }
        assert_eq!(
            row[4].parse::<i64>().unwrap(),
            shown["attempts"].as_i64().unwrap()
        );
        assert_eq!(&row[5], shown["last_error"].as_str().unwrap());
        for (column, field) in [(6, "last_error_at"), (7, "created_at")] {
            let csv_time = chrono::DateTime::parse_from_rfc3339(&row[column]).unwrap();
            let json_time =
                chrono::DateTime::parse_from_rfc3339(shown[field].as_str().unwrap()).unwrap();
            assert_eq!(csv_time, json_time, "{field}");
        }
        let payload: Value = serde_json::from_str(&row[8]).unwrap();
        assert_eq!(payload, shown["payload"]);
        let headers: Value = serde_json::from_str(&row[9]).unwrap();
        assert_eq!(headers, shown["headers"]);
    }
    // Payloads are exported verbatim: the 20-digit number keeps every digit.
    assert!(
        rows[0][8].contains("12345678901234567890"),
        "{:?}",
        &rows[0]
    );
    let filtered = s.dead_ok(&["export", "--aggregate-type", "audit"]);
    let filtered: Value = serde_json::from_str(&filtered).unwrap();
    assert_eq!(ids(&filtered), [e.audit]);

    drop(s.relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_dead_events_are_delivered_by_the_running_relay() {
    let (s, e) = setup().await;
    let requests_before = s.receiver.requests().len();

    // Nothing selected explicitly: refused as a usage error, nothing changes.
    for args in [
        &["retry"][..],
        &["retry", "--event-type", "order.placed"],
        &["retry", "--all-matching"],
    ] {
        let (status, stdout, stderr) = s.dead(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains("--all"), "{args:?}: {stderr}");
    }
    let (status, _, _) = s.dead(&["retry", "--all", "--event-type", "x"]);
    assert_eq!(status.code(), Some(2));

    // A dry run names what would be retried and changes nothing.
    let report = s.dead_json(&[
        "retry",
        "--all-matching",
        "--aggregate-type",
        "invoice",
        "--dry-run",
    ]);
    assert_eq!(report, json!({"retried": [e.i1, e.i2], "dry_run": true}));
    let text = s.dead_ok(&["retry", "--all", "--dry-run"]);
    assert!(text.contains("would retry 6 dead events"), "{text}");
    for id in e.dead() {
        assert_eq!(s.status(id).await.0, "dead", "dry run changed {id}");
    }
    // And nothing is delivered: the running relay would have sent rows the dry run had
    // returned to `pending` by its next sweep. A marker shows that sweep happened: an event
    // made dead after the dry run (the stream was running) and retried for real is
    // delivered by a sweep that takes returned rows in id order, in one claim, and writes
    // the marker's outcome only after every delivery of that claim ended.
    s.receiver
        .respond(Rule::for_aggregate("marker").fail_times(1, 400));
    let marker = s.insert(("order", "marker"), "order.placed", None).await;
    s.wait_status(marker, "dead").await;
    let report = s.dead_json(&["retry", &marker.to_string()]);
    assert_eq!(report, json!({"retried": [marker], "dry_run": false}));
    s.wait_status(marker, "done").await;
    assert_eq!(
        s.receiver.requests_for("marker").len(),
        2,
        "one 400, one 200"
    );
    assert_eq!(s.receiver.requests().len(), requests_before + 2);

    // Retry one id: the running relay delivers it (the receiver now answers 200).
    let report = s.dead_json(&["retry", &e.o1.to_string()]);
    assert_eq!(report, json!({"retried": [e.o1], "dry_run": false}));
    let (_, attempts, _) = s.wait_status(e.o1, "done").await;
    assert_eq!(attempts, 1, "attempts restart from zero");
    assert_eq!(s.status(e.o2).await.0, "dead", "only the selected id");

    // A list of ids (a delivered one among them is left alone).
    let text = s.dead_ok(&[
        "retry",
        &e.o2.to_string(),
        &e.o3.to_string(),
        &e.delivered.to_string(),
    ]);
    assert!(text.contains("retried 2 dead events"), "{text}");
    s.wait_status(e.o2, "done").await;
    s.wait_status(e.o3, "done").await;

    // By filter.
    let report = s.dead_json(&["retry", "--all-matching", "--event-type", "invoice.issued"]);
    assert_eq!(report["retried"], json!([e.i1, e.i2]));
    s.wait_status(e.i1, "done").await;
    s.wait_status(e.i2, "done").await;
    for aggregate in ["o1", "o2", "o3", "i1", "i2"] {
        let requests = s.receiver.requests_for(aggregate);
        assert_eq!(requests.len(), 2, "{aggregate}: one 400, then one 200");
    }
    // Retrying an id already delivered selects nothing.
    let report = s.dead_json(&["retry", &e.o1.to_string()]);
    assert_eq!(report["retried"], json!([]));

    // An unrouted event retried under the same routes ends dead again with its reason.
    let first_failure = s.last_error_at(e.audit).await;
    let report = s.dead_json(&["retry", "--all"]);
    assert_eq!(report["retried"], json!([e.audit]));
    let (_, attempts, last_error) = eventually(
        Duration::from_secs(30),
        "the unrouted event to be attempted again",
        || async {
            let r = s.status(e.audit).await;
            let again = s.last_error_at(e.audit).await > first_failure;
            (r.0 == "dead" && again).then_some(r)
        },
    )
    .await;
    assert_eq!(attempts, 1);
    assert!(last_error.unwrap().contains("no route"));
    let set: BTreeSet<i64> = s.list_ids(&[]).into_iter().collect();
    assert_eq!(set, BTreeSet::from([e.audit]));

    drop(s.relay);
}
