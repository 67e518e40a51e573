//! Misconfiguration fails fast and clearly: `dispatchbox run` exits non-zero within seconds
//! and says what is wrong (and how to fix it), instead of retrying forever.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::postgres::{ClusterOptions, TestCluster};
use support::relay::{base_env, migrate, run_to_end, set_env, RelayProcess};

/// Runs the relay and expects it to exit non-zero within 20 s; returns its stderr.
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

#[tokio::test]
async fn wrong_password_fails_fast() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("pw").await;
    let mut env = base_env(&cluster, &db);
    migrate(&env);
    set_env(
        &mut env,
        "DISPATCHBOX_DATABASE_URL",
        &cluster.url("postgres", "wrong-password", &db),
    );
    let stderr = expect_fast_failure(&env);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong-password"),
        "the password was logged:\n{stderr}"
    );
}

#[tokio::test]
async fn missing_publication_fails_fast() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("nopub").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    client
        .batch_execute(&format!("DROP PUBLICATION pub_{db}"))
        .await
        .unwrap();
    let stderr = expect_fast_failure(&env);
    assert!(stderr.contains(&format!("pub_{db}")), "{stderr}");
    assert!(
        stderr.contains("CREATE PUBLICATION"),
        "no fix hint:\n{stderr}"
    );
}

#[tokio::test]
async fn wal_level_not_logical_fails_fast() {
    let cluster = TestCluster::start_with(ClusterOptions {
        wal_level: "replica",
        ..ClusterOptions::default()
    });
    let db = cluster.create_database("wal").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let stderr = expect_fast_failure(&env);
    assert!(stderr.contains("wal_level"), "{stderr}");
    assert!(stderr.contains("logical"), "{stderr}");
}

#[tokio::test]
async fn outbox_table_without_a_required_column_fails_fast() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("cols").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    client
        .batch_execute("ALTER TABLE public.outbox_event DROP COLUMN event_type")
        .await
        .unwrap();
    let stderr = expect_fast_failure(&env);
    assert!(stderr.contains("event_type"), "{stderr}");
}

#[tokio::test]
async fn invalid_configuration_names_the_variable() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("cfg").await;
    for (key, value) in [
        ("DISPATCHBOX_MAX_ATTEMPTS", "zero"),
        ("DISPATCHBOX_SHUTDOWN_TIMEOUT", "forever"),
        ("DISPATCHBOX_SWEEP_INTERVAL", "forever"),
        ("DISPATCHBOX_SINKS", "carrier-pigeon"),
    ] {
        let mut env = base_env(&cluster, &db);
        set_env(&mut env, key, value);
        let (status, _stdout, stderr) = run_to_end(&["run"], &env);
        assert_eq!(status.code(), Some(2), "{key}={value}: {stderr}");
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
}

/// A database URL whose host list breaks libpq's rules is a configuration error: exit 2,
/// naming the variable and the rule, never the password.
#[test]
fn a_bad_multi_host_url_exits_2_naming_the_variable() {
    let env = [(
        "DISPATCHBOX_DATABASE_URL".to_owned(),
        "postgres://relay:s3cret@127.0.0.1:5432,127.0.0.1:5433/app?port=1,2,3".to_owned(),
    )];
    let (status, stdout, stderr) = run_to_end(&["run"], &env);
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("DISPATCHBOX_DATABASE_URL"), "{stderr}");
    assert!(stderr.contains("2 hosts but 3 ports"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "password leaked: {stderr}");
}

/// What a sink refuses about its settings is a configuration error, found before anything
/// connects: exit 2 (for `run` and for `check`), naming the variable, echoing neither the
/// URL's token nor a property's value.
#[test]
fn a_sink_setting_the_sink_refuses_exits_2_naming_the_variable() {
    let cases: [(&[(&str, &str)], &str); 6] = [
        (
            &[
                ("DISPATCHBOX_SINKS", "webhook"),
                (
                    "DISPATCHBOX_WEBHOOK_URL",
                    "hooks.example.com/x?token=s3cret",
                ),
            ],
            "DISPATCHBOX_WEBHOOK_URL",
        ),
        // The SSRF guard refuses an IP literal it would never connect to at startup.
        (
            &[
                ("DISPATCHBOX_SINKS", "webhook"),
                (
                    "DISPATCHBOX_WEBHOOK_URL",
                    "http://127.0.0.1:8080/x?token=s3cret",
                ),
            ],
            "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE=true",
        ),
        (
            &[
                ("DISPATCHBOX_SINKS", "webhook,webhook:billing"),
                ("DISPATCHBOX_WEBHOOK_URL", "https://hooks.example.com/"),
                ("DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true"),
                ("DISPATCHBOX_WEBHOOK_BILLING_URL", "http://169.254.169.254/"),
                ("DISPATCHBOX_WEBHOOK_BILLING_ALLOW_PRIVATE", "false"),
            ],
            "DISPATCHBOX_WEBHOOK_BILLING_URL",
        ),
        (
            &[
                ("DISPATCHBOX_SINKS", "webhook:billing"),
                (
                    "DISPATCHBOX_WEBHOOK_BILLING_URL",
                    "https://hooks.example.com/",
                ),
                (
                    "DISPATCHBOX_WEBHOOK_BILLING_HEADERS",
                    "Webhook-Signature: s3cret",
                ),
            ],
            "DISPATCHBOX_WEBHOOK_BILLING_HEADERS",
        ),
        (
            &[
                ("DISPATCHBOX_SINKS", "kafka"),
                ("DISPATCHBOX_KAFKA_BROKERS", "127.0.0.1:9"),
                ("DISPATCHBOX_KAFKA_TOPIC", "outbox/{aggregate_type}"),
            ],
            "DISPATCHBOX_KAFKA_TOPIC",
        ),
        (
            &[
                ("DISPATCHBOX_SINKS", "kafka"),
                ("DISPATCHBOX_KAFKA_BROKERS", "127.0.0.1:9"),
                ("DISPATCHBOX_KAFKA_PROPERTY_NO_SUCH_THING", "s3cret"),
            ],
            "DISPATCHBOX_KAFKA_PROPERTY_NO_SUCH_THING",
        ),
    ];
    for (settings, variable) in cases {
        let mut env = vec![(
            "DISPATCHBOX_DATABASE_URL".to_owned(),
            "postgres://relay:pw@127.0.0.1:9/app".to_owned(),
        )];
        for (key, value) in settings {
            set_env(&mut env, key, value);
        }
        for command in ["run", "check"] {
            let (status, stdout, stderr) = run_to_end(&[command], &env);
            assert_eq!(
                status.code(),
                Some(2),
                "{command} {variable}: {stdout}{stderr}"
            );
            assert!(stderr.contains(variable), "{variable} not named: {stderr}");
            assert!(!stderr.contains("s3cret"), "value echoed: {stderr}");
        }
    }
}

/// A misspelt log level is a configuration error (a `tracing` filter would take it for a
/// target name and silently log nothing of the relay's): exit 2, naming the variable.
#[test]
fn a_misspelt_log_level_exits_2_naming_the_variable() {
    for level in ["verbose", "inof", "dispatchbox=loud"] {
        let env = [
            (
                "DISPATCHBOX_DATABASE_URL".to_owned(),
                "postgres://relay:pw@127.0.0.1:9/app".to_owned(),
            ),
            ("DISPATCHBOX_LOG_LEVEL".to_owned(), level.to_owned()),
        ];
        for command in ["run", "check", "migrate"] {
            let (status, stdout, stderr) = run_to_end(&[command], &env);
            assert_eq!(
                status.code(),
                Some(2),
                "{command} {level}: {stdout}{stderr}"
            );
            assert!(
                stderr.contains("DISPATCHBOX_LOG_LEVEL"),
                "variable not named: {stderr}"
            );
            assert!(stderr.contains(level), "value not quoted: {stderr}");
        }
    }
}
