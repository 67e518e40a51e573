//! The relay only ever uses, drops or recreates its own replication slot: a logical slot
//! of its database with the output plugin pgoutput. A slot of the configured name that is
//! anything else (another database's, a physical slot, another plugin's) is left exactly
//! as it is, and `dispatchbox run` stops at once with an error that names the slot, what it
//! is, and the two ways out; `dispatchbox check` reports the same judgement.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, migrate, run_to_end, set_env, start_streaming, RelayProcess};
use support::store::count_status;

/// Runs the relay and expects it to exit non-zero within 20 s (no retry loop); returns
/// its stderr.
fn expect_fast_failure(env: &[(String, String)]) -> String {
    let started = Instant::now();
    let mut relay = RelayProcess::start(env);
    let status = relay
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("relay kept running:\n{}", relay.stderr()));
    assert!(!status.success(), "relay exited 0:\n{}", relay.stderr());
    assert!(started.elapsed() < Duration::from_secs(20));
    relay.stderr()
}

/// The slot's (type, database, plugin) as the server shows it, or `None`.
async fn slot_row(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Option<(String, Option<String>, Option<String>)> {
    client
        .query_opt(
            "SELECT slot_type, database::text, plugin::text
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// Asserts the error names the slot, what it is (`what`), and both ways out, once.
fn assert_names_the_slot(stderr: &str, slot: &str, what: &str) {
    let report = stderr
        .lines()
        .find(|l| l.starts_with("dispatchbox: "))
        .unwrap_or_else(|| panic!("no error report on stderr:\n{stderr}"));
    assert_eq!(
        report.matches("is not this relay's").count(),
        1,
        "the error is repeated:\n{report}"
    );
    for needle in [
        &format!("replication slot \"{slot}\" is not this relay's"),
        what,
        "set DISPATCHBOX_SLOT",
        &format!("SELECT pg_drop_replication_slot('{slot}')"),
    ] {
        assert!(
            stderr.contains(needle),
            "{needle:?} missing from:\n{stderr}"
        );
    }
}

/// `check --format json` has an error finding for the slot containing `what`.
fn assert_check_reports(env: &[(String, String)], what: &str) {
    let (status, stdout, stderr) = run_to_end(&["check", "--format", "json"], env);
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let slot_errors: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "slot" && f["severity"] == "error")
        .collect();
    assert_eq!(slot_errors.len(), 1, "{report:#}");
    assert!(
        slot_errors[0]["message"].as_str().unwrap().contains(what),
        "{report:#}"
    );
    assert!(
        slot_errors[0]["fix"]
            .as_str()
            .unwrap()
            .contains("set DISPATCHBOX_SLOT"),
        "{report:#}"
    );
}

/// Two relays on two databases of one cluster, both with the default slot name: the
/// second does not drop the first one's slot (stopped or streaming) but stops with an error
/// naming the slot and its database, and the first relay streams on from its slot.
#[tokio::test]
async fn slot_of_another_database_is_left_alone_and_run_stops() {
    let cluster = TestCluster::start();
    let billing = cluster.create_database("billing").await;
    let orders = cluster.create_database("orders").await;
    let mut billing_env = base_env(&cluster, &billing);
    let mut orders_env = base_env(&cluster, &orders);
    set_env(&mut billing_env, "DISPATCHBOX_SLOT", "dispatchbox");
    set_env(&mut orders_env, "DISPATCHBOX_SLOT", "dispatchbox");
    migrate(&billing_env);
    migrate(&orders_env);
    let billing_client = cluster.connect(&billing).await;

    // The billing relay creates the slot, then stops (the slot is inactive).
    let mut first = start_streaming(&billing_client, &billing_env).await;
    first.terminate();
    assert!(first.wait_exit(Duration::from_secs(30)).unwrap().success());
    let owned = slot_row(&billing_client, "dispatchbox").await;
    assert_eq!(
        owned,
        Some((
            "logical".to_owned(),
            Some(billing.clone()),
            Some("pgoutput".to_owned())
        ))
    );

    let stderr = expect_fast_failure(&orders_env);
    assert_names_the_slot(
        &stderr,
        "dispatchbox",
        &format!("a logical slot of database \"{billing}\" with output plugin \"pgoutput\""),
    );
    assert!(
        stderr.contains(&format!("while connected to database \"{billing}\"")),
        "{stderr}"
    );
    assert_eq!(slot_row(&billing_client, "dispatchbox").await, owned);
    assert_check_reports(&orders_env, &format!("database \"{billing}\""));

    // The billing relay still streams from its own slot; the orders relay refuses it while
    // it is active too.
    let _billing_relay = start_streaming(&billing_client, &billing_env).await;
    billing_client
        .batch_execute(
            "INSERT INTO public.outbox_event (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('invoice', 'i-1', 'invoice.issued', '{}')",
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the billing event done",
        || async { (count_status(&billing_client, "done").await == 1).then_some(()) },
    )
    .await;
    let stderr = expect_fast_failure(&orders_env);
    assert!(stderr.contains("is not this relay's"), "{stderr}");
    assert_eq!(slot_row(&billing_client, "dispatchbox").await, owned);
}

/// A physical slot of the configured name (a standby's) is not dropped.
#[tokio::test]
async fn physical_slot_of_that_name_is_left_alone() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("physical").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SLOT", "standby_1");
    migrate(&env);
    let client = cluster.connect(&db).await;
    client
        .execute(
            "SELECT pg_create_physical_replication_slot('standby_1', true)",
            &[],
        )
        .await
        .unwrap();

    let stderr = expect_fast_failure(&env);
    assert_names_the_slot(&stderr, "standby_1", "a physical slot");
    assert_eq!(
        slot_row(&client, "standby_1").await,
        Some(("physical".to_owned(), None, None))
    );
    assert_check_reports(&env, "a physical slot");
}

/// A logical slot of the relay's own database with another output plugin is not dropped.
#[tokio::test]
async fn slot_with_another_plugin_is_left_alone() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("plugin").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SLOT", "audit");
    migrate(&env);
    let client = cluster.connect(&db).await;
    client
        .execute(
            "SELECT pg_create_logical_replication_slot('audit', 'test_decoding')",
            &[],
        )
        .await
        .unwrap();

    let stderr = expect_fast_failure(&env);
    assert_names_the_slot(&stderr, "audit", "with output plugin \"test_decoding\"");
    assert_eq!(
        slot_row(&client, "audit").await,
        Some((
            "logical".to_owned(),
            Some(db.clone()),
            Some("test_decoding".to_owned())
        ))
    );
    assert_check_reports(&env, "\"test_decoding\"");
}
