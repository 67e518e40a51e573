//! The dead-letter console in a real browser: PostgreSQL, a webhook receiver that refuses
//! some events for good, and the relay; then `tests/browser/console.mjs` drives Debian's
//! headless `chromium` (through `playwright-core`) over `/console`: the token from the URL
//! fragment, the dead events with their reasons and grouped causes, a hostile event type and
//! payload shown as text, paging, a retry of a selection, a filtered retry with its dry-run
//! count and confirmation, replays from the detail and the list view, an accessibility
//! audit (axe-core), a phone-sized screen, and a wrong token refused. Screenshots land
//! in `target/test-artifacts/console/`.
//!
//! Afterwards this test checks the database: a trigger it installed on the outbox table
//! recorded each status change, so the retried rows are seen going `dead` → `pending` →
//! `done` (not just ending `done`), the rows outside the filter are still `dead`, and the
//! replayed event went out twice.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, migrate, set_env, start_streaming, RelayProcess};
use support::webhook::{Receiver, Rule};

const TABLE: &str = "public.outbox_event";
/// With the characters of a base64 token, written unencoded in the fragment as the README
/// shows.
const TOKEN: &str = "console+test/token=0123456789abcdef";
const WAIT: Duration = Duration::from_secs(30);
/// Dead `bulk.failed` events beyond the first page's 25 rows.
const BULK: usize = 27;
const HOSTILE_TYPE: &str = r#"<img src=x onerror="window.__pwned=1">"#;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The browser and the driver must be installed: the test fails (never skips) without them.
fn chromium() -> String {
    let path = std::env::var("DISPATCHBOX_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&path).exists(),
        "{path} not found: run scripts/install-test-deps (it installs Debian's chromium), or \
         set DISPATCHBOX_CHROMIUM to a Chromium binary"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules/playwright-core not found: run scripts/install-test-deps \
         (npm ci in tests/browser)"
    );
    path
}

async fn insert(
    client: &tokio_postgres::Client,
    aggregate: (&str, &str),
    event_type: &str,
    payload: &str,
) -> i64 {
    client
        .query_one(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 VALUES ($1, $2, $3, $4::text::jsonb) RETURNING id"
            ),
            &[&aggregate.0, &aggregate.1, &event_type, &payload],
        )
        .await
        .unwrap()
        .get(0)
}

async fn status_of(client: &tokio_postgres::Client, id: i64) -> String {
    client
        .query_one(&format!("SELECT status FROM {TABLE} WHERE id = $1"), &[&id])
        .await
        .unwrap()
        .get(0)
}

/// The statuses row `id` went through, in order, as the test's trigger recorded them.
async fn history(client: &tokio_postgres::Client, id: i64) -> Vec<String> {
    client
        .query(
            "SELECT status FROM console_status_log WHERE id = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_retry_and_replay_from_the_console_in_a_real_browser() {
    let chromium = chromium();
    let cluster = TestCluster::start();
    let receiver = Receiver::start().await;
    let db = cluster.create_database("console").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SINKS", "webhook");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_URL", &receiver.url());
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_TIMEOUT", "2s");
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "300ms");
    set_env(&mut env, "DISPATCHBOX_ADMIN_TOKEN", TOKEN);
    migrate(&env);
    let client = cluster.connect(&db).await;
    // Records every status change of the outbox's rows (the test's own table and trigger).
    client
        .batch_execute(&format!(
            "CREATE TABLE console_status_log (seq bigserial PRIMARY KEY, id bigint, status text);
             CREATE FUNCTION console_log_status() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO console_status_log (id, status) VALUES (NEW.id, NEW.status);
               RETURN NEW;
             END $$;
             CREATE TRIGGER console_log_status AFTER INSERT OR UPDATE OF status ON {TABLE}
               FOR EACH ROW EXECUTE FUNCTION console_log_status();"
        ))
        .await
        .unwrap();
    // payment.failed: refused once (400), then accepted: the events the console retries.
    for aggregate in ["p1", "p2", "p3"] {
        receiver.respond(Rule::for_aggregate(aggregate).fail_times(1, 400));
    }
    // shipment.lost and the hostile event: refused for good (410, 422).
    for aggregate in ["s1", "s2"] {
        receiver.respond(Rule::for_aggregate(aggregate).always(410));
    }
    receiver.respond(Rule::for_aggregate("h1").always(422));
    // bulk.failed: enough dead events for two pages; two are retried as a selection.
    let bulk: Vec<String> = (1..=BULK).map(|n| format!("b{n}")).collect();
    for aggregate in &bulk {
        receiver.respond(Rule::for_aggregate(aggregate).fail_times(1, 400));
    }
    let relay = start_streaming(&client, &env).await;

    let mut retry_ids = Vec::new();
    for aggregate in ["p1", "p2", "p3"] {
        let payload = format!(r#"{{"payment": "{aggregate}"}}"#);
        retry_ids.push(insert(&client, ("payment", aggregate), "payment.failed", &payload).await);
    }
    let mut lost_ids = Vec::new();
    for aggregate in ["s1", "s2"] {
        lost_ids.push(insert(&client, ("shipment", aggregate), "shipment.lost", "{}").await);
    }
    let hostile_id = insert(
        &client,
        ("hostile", "h1"),
        HOSTILE_TYPE,
        r#"{"note": "<script>window.__pwned=2</script>"}"#,
    )
    .await;
    let replay_id = insert(&client, ("order", "o1"), "order.placed", r#"{"total": 5}"#).await;
    let mut bulk_ids = Vec::new();
    for aggregate in &bulk {
        bulk_ids.push(insert(&client, ("bulk", aggregate), "bulk.failed", "{}").await);
    }
    let (selected_ids, bulk_left) = bulk_ids.split_at(2);
    let dead: Vec<i64> = retry_ids
        .iter()
        .chain(&lost_ids)
        .chain([&hostile_id])
        .chain(&bulk_ids)
        .copied()
        .collect();
    for &id in &dead {
        eventually(WAIT, &format!("event {id} dead"), || async {
            (status_of(&client, id).await == "dead").then_some(())
        })
        .await;
    }
    eventually(WAIT, "the order delivered", || async {
        (status_of(&client, replay_id).await == "done").then_some(())
    })
    .await;
    let deliveries = |id: i64| {
        receiver
            .requests()
            .iter()
            .filter(|r| r.webhook_id() == Some(id.to_string().as_str()))
            .count()
    };
    assert_eq!(deliveries(replay_id), 1);

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/console");
    let expect = json!({
        "dead": dead.len(),
        "retry_event_type": "payment.failed",
        "retry_ids": retry_ids,
        "hostile_event_type": HOSTILE_TYPE,
        "hostile_id": hostile_id,
        "replay_id": replay_id,
        "select_ids": selected_ids,
        "auto_refresh_id": bulk_left[0],
        "slot": format!("slot_{db}"),
        "causes": ["400", "410", "422"],
    });
    let base = relay.admin_url();
    let output = tokio::task::spawn_blocking({
        let (base, artifacts) = (base.clone(), artifacts.clone());
        move || {
            Command::new("node")
                .arg("console.mjs")
                .current_dir(browser_dir())
                .env("CONSOLE_URL", base)
                .env("CONSOLE_TOKEN", TOKEN)
                .env("CONSOLE_EXPECT", expect.to_string())
                .env("ARTIFACTS", artifacts)
                .env("CHROMIUM", chromium)
                .output()
                .expect("run node (install Node.js: scripts/install-test-deps)")
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed ({}); screenshots in {}:\n{stderr}\nrelay log:\n{}",
        output.status,
        artifacts.display(),
        relay.stderr()
    );
    assert!(stderr.contains("all steps passed"), "{stderr}");
    eprintln!("{stderr}");

    // What the clicks did to the rows: each retried row went dead → pending → … → done,
    // then (replayed from the list view) done → pending → … → done, and reached the
    // receiver three times (refused, retried, replayed).
    for &id in &retry_ids {
        let seen = history(&client, id).await;
        let dead_at = seen.iter().position(|s| s == "dead").unwrap();
        let after: Vec<&str> = seen[dead_at + 1..].iter().map(String::as_str).collect();
        assert_eq!(after.first(), Some(&"pending"), "event {id}: {seen:?}");
        let done_at = after.iter().position(|s| *s == "done").unwrap();
        assert_eq!(
            after.get(done_at + 1),
            Some(&"pending"),
            "event {id}: {seen:?}"
        );
        assert_eq!(after.last(), Some(&"done"), "event {id}: {seen:?}");
        assert_eq!(status_of(&client, id).await, "done");
        assert_eq!(deliveries(id), 3, "event {id}");
    }
    // The selection: the two selected rows were retried and delivered, the others not.
    for &id in selected_ids {
        let seen = history(&client, id).await;
        assert!(
            seen.ends_with(&["dead", "pending", "processing", "done"].map(String::from))
                || seen.ends_with(&["dead", "pending", "done"].map(String::from)),
            "event {id}: {seen:?}"
        );
    }
    // Retried through the API while the page was open (its counts followed by themselves).
    eventually(WAIT, "the event retried behind the page's back", || async {
        (status_of(&client, bulk_left[0]).await == "done").then_some(())
    })
    .await;
    // Outside the filter and the selections: untouched.
    for &id in lost_ids.iter().chain([&hostile_id]).chain(&bulk_left[1..]) {
        assert_eq!(status_of(&client, id).await, "dead", "event {id}");
        assert_eq!(history(&client, id).await.last().unwrap(), "dead");
    }
    // The replayed order: done → pending → done, and delivered a second time.
    let seen = history(&client, replay_id).await;
    let replayed_at = seen.iter().position(|s| s == "done").unwrap();
    assert_eq!(seen[replayed_at + 1], "pending", "{seen:?}");
    assert_eq!(seen.last().unwrap(), "done", "{seen:?}");
    assert_eq!(deliveries(replay_id), 2);
    for name in [
        "console-overview",
        "console-top",
        "console-detail",
        "console-retry-confirm",
        "console-retry-done",
        "console-replay-preview",
        "console-phone",
        "console-wrong-token",
    ] {
        let file = artifacts.join(format!("{name}.png"));
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 1000,
            "screenshot {} missing or empty",
            file.display()
        );
    }
}

/// Without a browser: the page and its assets carry the CSP, are public and hold no data;
/// every API route the console calls refuses a wrong token, state-changing ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_assets_carry_a_strict_csp_and_the_api_wants_the_token() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = TestCluster::start();
    let db = cluster.create_database("consolecsp").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_ADMIN_TOKEN", TOKEN);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    let base = relay.admin_url();
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self';"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}: {:?}",
            headers["content-type"]
        );
    }
    // The probes and the API answer with the same headers.
    let response = http.get(format!("{base}/health")).send().await.unwrap();
    assert!(response.headers().contains_key("content-security-policy"));
    let calls = [
        ("GET", "/api/overview", None),
        ("GET", "/api/events/1", None),
        ("POST", "/api/events/statuses", Some(json!({"ids": [1]}))),
        ("POST", "/api/dead-events/retry", Some(json!({"all": true}))),
        ("POST", "/api/replay", Some(json!({"all": true}))),
    ];
    for (method, path, body) in calls {
        for auth in [None, Some("Bearer wrong-token-wrong-token")] {
            let mut request = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {auth:?}");
        }
    }
    // With the token, the overview reports the counts, the stream and the slot.
    let overview: serde_json::Value = http
        .get(format!("{base}/api/overview"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overview["relay"]["stream"], "streaming", "{overview}");
    assert_eq!(overview["relay"]["role"], "leader", "{overview}");
    assert_eq!(overview["slot"]["name"], format!("slot_{db}"), "{overview}");
    assert_eq!(overview["slot"]["active"], true, "{overview}");
    assert_eq!(overview["counts"]["dead"], 0, "{overview}");

    // A second relay on the same slot stands by, and its console says so.
    let standby = RelayProcess::start(&env);
    let standby_base = standby.admin_url();
    let overview = eventually(WAIT, "the second relay to stand by", || {
        let (http, url) = (http.clone(), format!("{standby_base}/api/overview"));
        async move {
            let overview: serde_json::Value = http
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (overview["relay"]["stream"] == "standing by").then_some(overview)
        }
    })
    .await;
    assert_eq!(overview["relay"]["role"], "standby", "{overview}");
    assert_eq!(overview["relay"]["stream_connected"], false, "{overview}");
    assert_eq!(
        overview["slot"]["active"], true,
        "the leader holds it: {overview}"
    );
}
