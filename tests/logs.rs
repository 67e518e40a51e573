//! The relay's logs at DEBUG, from a real process: every stderr line is a JSON object,
//! delivery lines carry their fields (`event_id`, `event_type`, `sink`, `attempt`, `error`),
//! and neither the database password, the webhook secret, the admin token nor a payload
//! ever appears on stdout or stderr.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, migrate, start_streaming};
use support::store::count_status;
use support::webhook::{Receiver, Rule};

const TABLE: &str = "public.outbox_event";
const DB_PASSWORD: &str = "pw-8Hq2vKx0-never-logged";
const WEBHOOK_SECRET_B64: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN_TOKEN: &str = "admin-token-Zx81Qp0s9dL3mNb7";
const PAYLOAD_MARKER: &str = "payload-marker-5521";

#[tokio::test]
async fn debug_logs_are_json_with_delivery_fields_and_no_secrets() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("logs").await;
    let client = cluster.connect(&db).await;
    client
        .batch_execute(&format!(
            "CREATE ROLE relay_logs LOGIN SUPERUSER PASSWORD '{DB_PASSWORD}'"
        ))
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    // The first attempt of event 1 fails: a WARN line, then a retry through the sweeper.
    receiver.respond(Rule::for_event(1).fail_times(1, 503));

    let mut env = base_env(&cluster, &db);
    env.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "DISPATCHBOX_SINKS" | "DISPATCHBOX_DATABASE_URL" | "DISPATCHBOX_LOG_LEVEL"
        )
    });
    env.extend([
        (
            "DISPATCHBOX_DATABASE_URL".to_owned(),
            cluster.url("relay_logs", DB_PASSWORD, &db),
        ),
        ("DISPATCHBOX_SINKS".to_owned(), "webhook".to_owned()),
        ("DISPATCHBOX_WEBHOOK_URL".to_owned(), receiver.url()),
        (
            "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE".to_owned(),
            "true".to_owned(),
        ),
        (
            "DISPATCHBOX_WEBHOOK_SECRET".to_owned(),
            format!("whsec_{WEBHOOK_SECRET_B64}"),
        ),
        ("DISPATCHBOX_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
        ("DISPATCHBOX_LOG_LEVEL".to_owned(), "debug".to_owned()),
        ("DISPATCHBOX_BACKOFF_BASE".to_owned(), "100ms".to_owned()),
    ]);
    migrate(&env);
    let mut relay = start_streaming(&client, &env).await;

    client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload, headers)
                 SELECT 'order', 'o-' || g, 'order.placed',
                        jsonb_build_object('marker', $1::text, 'g', g),
                        jsonb_build_object('x-marker', $1::text)
                 FROM generate_series(1, 3) g"
            ),
            &[&PAYLOAD_MARKER],
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "3 rows done", || async {
        (count_status(&client, "done").await == 3).then_some(())
    })
    .await;
    relay.terminate();
    let status = relay.wait_exit(Duration::from_secs(30)).expect("exit");
    assert!(status.success(), "{status}");

    let (stdout, stderr) = (relay.stdout(), relay.stderr());
    for secret in [
        DB_PASSWORD,
        WEBHOOK_SECRET_B64,
        ADMIN_TOKEN,
        PAYLOAD_MARKER,
        support::postgres::SUPERUSER_PASSWORD,
    ] {
        assert!(!stderr.contains(secret), "{secret:?} on stderr:\n{stderr}");
        assert!(!stdout.contains(secret), "{secret:?} on stdout:\n{stdout}");
    }

    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    let with_message = |message: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["message"] == message).collect()
    };
    let delivered = with_message("delivered");
    assert_eq!(delivered.len(), 3, "{stderr}");
    for line in &delivered {
        assert_eq!(line["level"], "DEBUG", "{line}");
        assert!(line["event_id"].is_i64(), "{line}");
        assert_eq!(line["event_type"], "order.placed", "{line}");
        assert_eq!(line["sink"], "webhook", "{line}");
        assert!(line["attempt"].is_u64(), "{line}");
    }
    let failed = with_message("delivery failed");
    assert_eq!(failed.len(), 1, "{stderr}");
    let failed = failed[0];
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["event_id"], 1);
    assert_eq!(failed["sink"], "webhook");
    assert_eq!(failed["attempt"], 1);
    assert!(
        failed["error"].as_str().unwrap().contains("503"),
        "{failed}"
    );
    // The retry of event 1 was its second attempt.
    assert!(
        delivered
            .iter()
            .any(|l| l["event_id"] == 1 && l["attempt"] == 2),
        "{delivered:?}"
    );
    assert_eq!(with_message("admin server listening").len(), 1);
}
