//! `dispatchbox check` against real clusters: a healthy setup passes (exit 0), and every
//! misconfiguration a test cluster can show is reported with its fix and exit code 1, all
//! findings at once rather than only the first.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::ExitStatus;

use serde_json::Value;
use support::postgres::{ClusterOptions, TestCluster};
use support::relay::{base_env, migrate, run_to_end, set_env};

/// Runs `check --format json` (plus `extra` arguments) and parses its report.
fn check_json(env: &[(String, String)], extra: &[&str]) -> (ExitStatus, Value) {
    let mut args = vec!["check", "--format", "json"];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = run_to_end(&args, env);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("check printed no JSON ({e}):\n{stdout}\n{stderr}"));
    (status, report)
}

/// The findings of `check` named `check` with severity `severity`.
fn findings<'a>(report: &'a Value, check: &str, severity: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check && f["severity"] == severity)
        .collect()
}

/// Asserts exit code 1 and one error finding of `check` whose message contains `message`
/// and whose fix contains `fix`.
fn assert_error(status: ExitStatus, report: &Value, check: &str, message: &str, fix: &str) {
    assert_eq!(status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    let errors = findings(report, check, "error");
    assert!(
        errors.iter().any(|f| {
            f["message"].as_str().unwrap().contains(message)
                && f["fix"].as_str().is_some_and(|h| h.contains(fix))
        }),
        "no {check} error with {message:?} and fix {fix:?}:\n{report:#}"
    );
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn healthy_setup_passes_with_the_missing_slot_as_a_warning() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("healthy").await;
    let env = base_env(&cluster, &db);
    migrate(&env);

    let (status, report) = check_json(&env, &[]);
    assert!(status.success(), "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["errors"], 0);
    for finding in report["findings"].as_array().unwrap() {
        assert!(
            finding["severity"] == "ok" || finding["severity"] == "warning",
            "{finding:#}"
        );
    }
    for check in [
        "connection",
        "server_version",
        "wal_level",
        "replication_privilege",
        "table",
        "publication",
        "max_slot_wal_keep_size",
        "sink.stdout",
    ] {
        assert_eq!(
            findings(&report, check, "ok").len(),
            1,
            "{check}: {report:#}"
        );
    }
    let slot = findings(&report, "slot", "warning");
    assert_eq!(slot.len(), 1, "{report:#}");
    assert!(slot[0]["fix"].as_str().unwrap().contains("dispatchbox run"));

    // Once the slot exists it is reported as fine, and the text output marks it so.
    let client = cluster.connect(&db).await;
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&format!("slot_{db}")],
        )
        .await
        .unwrap();
    let (status, report) = check_json(&env, &[]);
    assert!(status.success(), "{report:#}");
    assert_eq!(report["warnings"], 0, "{report:#}");
    let slot = findings(&report, "slot", "ok");
    assert!(
        slot[0]["message"]
            .as_str()
            .unwrap()
            .contains("wal_status reserved"),
        "{report:#}"
    );
    let (status, stdout, _) = run_to_end(&["check"], &env);
    assert!(status.success());
    assert!(stdout.contains("✓ wal_level is logical"), "{stdout}");
    assert!(stdout.contains("ready:"), "{stdout}");
}

#[tokio::test]
async fn wrong_wal_level_and_missing_publication_are_both_reported() {
    let cluster = TestCluster::start_with(ClusterOptions {
        wal_level: "replica",
        ..ClusterOptions::default()
    });
    let db = cluster.create_database("wal").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    client
        .batch_execute(&format!("DROP PUBLICATION pub_{db}"))
        .await
        .unwrap();

    let (status, report) = check_json(&env, &[]);
    assert_error(
        status,
        &report,
        "wal_level",
        "wal_level is \"replica\"",
        "ALTER SYSTEM SET wal_level = logical",
    );
    assert_error(
        status,
        &report,
        "publication",
        &format!("publication \"pub_{db}\" does not exist"),
        "CREATE PUBLICATION",
    );
    assert_eq!(report["errors"], 2, "{report:#}");

    let (status, stdout, _) = run_to_end(&["check"], &env);
    assert_eq!(status.code(), Some(1));
    assert!(stdout.contains("✗ wal_level is \"replica\""), "{stdout}");
    assert!(
        stdout.contains("    fix: run ALTER SYSTEM SET wal_level = logical"),
        "{stdout}"
    );
    assert!(stdout.contains("not ready: 2 errors"), "{stdout}");
}

#[tokio::test]
async fn publication_that_publishes_updates_is_an_error() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("pubupd").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION pub_{db} SET (publish = 'insert, update')"
        ))
        .await
        .unwrap();

    let (status, report) = check_json(&env, &[]);
    assert_error(
        status,
        &report,
        "publication",
        "publishes insert, update",
        &format!("ALTER PUBLICATION \"pub_{db}\" SET (publish = 'insert')"),
    );
}

#[tokio::test]
async fn role_without_replication_is_an_error() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("norepl").await;
    let mut env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    client
        .batch_execute("CREATE ROLE plain LOGIN PASSWORD 'plain-pw'")
        .await
        .unwrap();
    set_env(
        &mut env,
        "DISPATCHBOX_DATABASE_URL",
        &cluster.url("plain", "plain-pw", &db),
    );

    let (status, report) = check_json(&env, &[]);
    assert_error(
        status,
        &report,
        "replication_privilege",
        "role \"plain\" lacks the REPLICATION attribute",
        "ALTER ROLE \"plain\" REPLICATION",
    );
    // Everything else about this database is fine.
    assert_eq!(report["errors"], 1, "{report:#}");
}

#[tokio::test]
async fn missing_column_and_unusable_type_are_errors() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("cols").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    client
        .batch_execute(
            "ALTER TABLE public.outbox_event DROP COLUMN event_type;
             ALTER TABLE public.outbox_event ALTER COLUMN created_at TYPE timestamp",
        )
        .await
        .unwrap();

    let (status, report) = check_json(&env, &[]);
    assert_error(
        status,
        &report,
        "table",
        "has no column \"event_type\"",
        "add the column",
    );
    assert_error(
        status,
        &report,
        "table",
        "column \"created_at\" of outbox table public.outbox_event has type timestamp without time zone",
        "ALTER COLUMN \"created_at\" TYPE timestamptz",
    );
}

#[tokio::test]
async fn unreachable_database_and_wrong_password_are_one_error_each() {
    let port = closed_port();
    let env = vec![
        (
            "DISPATCHBOX_DATABASE_URL".to_owned(),
            format!("postgres://relay:secret-pw@127.0.0.1:{port}/app?sslmode=disable"),
        ),
        ("DISPATCHBOX_LOG_FORMAT".to_owned(), "json".to_owned()),
    ];
    let (status, report) = check_json(&env, &["--timeout", "5s"]);
    assert_error(
        status,
        &report,
        "connection",
        &format!("cannot connect to PostgreSQL at postgres://relay:***@127.0.0.1:{port}/app"),
        "running and reachable",
    );
    assert!(!report.to_string().contains("secret-pw"), "{report:#}");
    assert_eq!(report["errors"], 1, "{report:#}");

    let cluster = TestCluster::start();
    let db = cluster.create_database("pw").await;
    let mut env = base_env(&cluster, &db);
    set_env(
        &mut env,
        "DISPATCHBOX_DATABASE_URL",
        &cluster.url("postgres", "wrong-pw", &db),
    );
    let (status, report) = check_json(&env, &[]);
    assert_error(
        status,
        &report,
        "connection",
        "password authentication failed",
        "password in DISPATCHBOX_DATABASE_URL",
    );
    assert!(!report.to_string().contains("wrong-pw"), "{report:#}");
}

#[tokio::test]
async fn unreachable_kafka_broker_is_an_error() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("kafka").await;
    let mut env = base_env(&cluster, &db);
    migrate(&env);
    let brokers = format!("127.0.0.1:{}", closed_port());
    set_env(&mut env, "DISPATCHBOX_SINKS", "kafka");
    set_env(&mut env, "DISPATCHBOX_KAFKA_BROKERS", &brokers);

    let started = std::time::Instant::now();
    let (status, report) = check_json(&env, &["--timeout", "2s"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "check took {:?}",
        started.elapsed()
    );
    assert_error(
        status,
        &report,
        "sink.kafka",
        &brokers,
        "DISPATCHBOX_KAFKA_BROKERS",
    );
    // The database half is healthy: the sink is the only error.
    assert_eq!(report["errors"], 1, "{report:#}");
}

/// An address of this machine that is not loopback (the source address of its default
/// route; nothing is sent).
fn non_loopback_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("192.0.2.1:9")
        .expect("this test needs a network interface besides loopback (a default route)");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "no address besides loopback: {ip}");
    ip
}

/// Given a database reached over the network without TLS, `check` warns with the fix and
/// `run` logs the same warning at start-up; over loopback neither does.
#[tokio::test]
async fn an_unencrypted_connection_to_another_host_is_a_warning() {
    let cluster = TestCluster::start_with(ClusterOptions {
        conf: vec!["listen_addresses = '*'".into()],
        hba_prepend: vec!["host all all 0.0.0.0/0 scram-sha-256".into()],
        ..ClusterOptions::default()
    });
    let db = cluster.create_database("cleartext").await;
    let mut env = base_env(&cluster, &db);
    migrate(&env);

    let (status, report) = check_json(&env, &[]);
    assert!(status.success(), "{report:#}");
    assert!(
        findings(&report, "tls", "warning").is_empty(),
        "loopback: {report:#}"
    );

    let address = non_loopback_address();
    set_env(
        &mut env,
        "DISPATCHBOX_DATABASE_URL",
        &format!(
            "postgres://postgres:{}@{address}:{}/{db}?sslmode=disable",
            support::postgres::SUPERUSER_PASSWORD,
            cluster.port
        ),
    );
    let (status, report) = check_json(&env, &[]);
    assert!(status.success(), "a warning, not an error: {report:#}");
    let warnings = findings(&report, "tls", "warning");
    assert_eq!(warnings.len(), 1, "{report:#}");
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("database at {address} is not encrypted")),
        "{report:#}"
    );
    assert!(
        warnings[0]["fix"]
            .as_str()
            .unwrap()
            .contains("sslmode=verify-full"),
        "{report:#}"
    );

    let relay = support::relay::RelayProcess::start(&env);
    support::postgres::eventually(
        std::time::Duration::from_secs(30),
        "run to warn about the unencrypted connection",
        || async { relay.stderr().contains("is not encrypted").then_some(()) },
    )
    .await;
}
