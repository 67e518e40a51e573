//! The admin HTTP server of a real relay process: liveness, readiness (database down and
//! back, shutdown, a sink down), Prometheus metrics after real deliveries to a
//! Kafka-protocol broker, during a broker outage and across a broken replication
//! connection, and the `dispatchbox healthcheck` command.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::kafka::TestBroker;
use support::postgres::{eventually, TestCluster};
use support::relay::{
    base_env, http_get, migrate, run_to_end, set_env, start_streaming, RelayProcess,
};
use support::store::count_status;
use support::webhook::{Receiver, Rule};

const TABLE: &str = "public.outbox_event";

/// One sample of the exposition text: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (0.0.4): comments skipped, labels with escapes.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name = line[..name_end].to_owned();
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let mut end = None;
            while let Some(&(start, c)) = chars.peek() {
                if c == '}' {
                    end = Some(start + 1);
                    break;
                }
                if c == ',' || c == ' ' {
                    chars.next();
                    continue;
                }
                let mut key = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                chars.next(); // '='
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(other) => value.push(other),
                            None => panic!("bad escape in {line:?}"),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
            }
            let end = end.unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
            rest = &body[end..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// Scraped metrics with lookups by name and labels.
#[derive(Debug)]
struct Scrape(Vec<Sample>);

impl Scrape {
    async fn from(relay_url: &str) -> Self {
        let (status, body) = http_get(relay_url, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{body}");
        Scrape(parse_exposition(&body))
    }

    /// The value of the one sample named `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .0
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} is ambiguous: {matching:?}"
        );
        matching.first().map(|s| s.value)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} not exported; got {:#?}", self.0))
    }
}

#[test]
fn the_exposition_parser_reads_labels_and_escapes() {
    let samples = parse_exposition(
        "# HELP x_total a\n# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"u\\\\o\"} 3\ny 2.5\nh_bucket{le=\"+Inf\"} 7\n",
    );
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[0].labels["b"], "q\"u\\o");
    assert_eq!(samples[0].value, 3.0);
    assert_eq!(samples[1].name, "y");
    assert_eq!(samples[2].labels["le"], "+Inf");
}

async fn ready_status(url: &str) -> Option<(u16, serde_json::Value)> {
    let (status, body) = http_get(url, "/ready").await.ok()?;
    Some((status, serde_json::from_str(&body).unwrap()))
}

/// Polls `/ready` until it answers `want`; returns the JSON body.
async fn wait_ready_status(url: &str, want: u16, within: Duration) -> serde_json::Value {
    eventually(within, &format!("/ready to answer {want}"), || async {
        match ready_status(url).await {
            Some((status, body)) if status == want => Some(body),
            _ => None,
        }
    })
    .await
}

async fn insert(client: &tokio_postgres::Client, aggregate_type: &str, event_type: &str, n: i32) {
    client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 SELECT $1, 'agg-' || (g % 7), $2, jsonb_build_object('g', g)
                 FROM generate_series(1, $3::int) g"
            ),
            &[&aggregate_type, &event_type, &n],
        )
        .await
        .unwrap();
}

/// A loopback port nothing listens on (bound, then released).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn probes_and_stream_metrics_while_streaming() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("adminprobe").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    let url = relay.admin_url();

    let (status, body) = http_get(&url, "/health").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"status": "ok"})
    );

    let ready = wait_ready_status(&url, 200, Duration::from_secs(30)).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["stream"], "streaming");

    let scrape = eventually(Duration::from_secs(15), "slot gauges", || async {
        let scrape = Scrape::from(&url).await;
        (scrape.get("dispatchbox_slot_wal_status", &[("status", "reserved")]) == Some(1.0))
            .then_some(scrape)
    })
    .await;
    assert_eq!(scrape.value("dispatchbox_stream_connected", &[]), 1.0);
    assert_eq!(scrape.value("dispatchbox_leader", &[]), 1.0);
    assert_eq!(
        scrape.value(
            "dispatchbox_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(scrape.value("dispatchbox_replication_lag_bytes", &[]) >= 0.0);
    assert_eq!(
        scrape.value("dispatchbox_slot_wal_status", &[("status", "missing")]),
        0.0
    );
    assert_eq!(scrape.value("dispatchbox_outbox_dead_events", &[]), 0.0);
    assert_eq!(
        scrape.value("dispatchbox_stream_reconnects_total", &[]),
        0.0
    );
    assert_eq!(
        scrape.value("dispatchbox_sink_up", &[("sink", "stdout")]),
        1.0
    );
    assert_eq!(ready["sinks"], serde_json::json!({"stdout": {"up": true}}));
    assert!(scrape.value("process_resident_memory_bytes", &[]) > 0.0);

    // dispatchbox healthcheck: 0 against the running relay, 1 when nothing listens.
    let addr = url.trim_start_matches("http://").to_owned();
    let (status, _, stderr) = run_to_end(
        &["healthcheck"],
        &[("DISPATCHBOX_HTTP_ADDR".into(), addr.clone())],
    );
    assert!(status.success(), "healthcheck failed: {stderr}");
    let port = addr.rsplit(':').next().unwrap();
    let (status, _, _) = run_to_end(
        &["healthcheck"],
        &[("DISPATCHBOX_HTTP_ADDR".into(), format!("0.0.0.0:{port}"))],
    );
    assert!(status.success(), "0.0.0.0 must probe loopback");
    let closed = format!("127.0.0.1:{}", unused_port());
    let (status, _, stderr) = run_to_end(
        &["healthcheck"],
        &[("DISPATCHBOX_HTTP_ADDR".into(), closed.clone())],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&closed), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn ready_reports_an_unreachable_database_and_recovers() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("adminready").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let mut relay = start_streaming(&client, &env).await;
    let url = relay.admin_url();
    wait_ready_status(&url, 200, Duration::from_secs(30)).await;

    cluster.stop();
    // The stream notices first; the database check (cached for up to 2 s) soon after.
    let reasons = eventually(
        Duration::from_secs(30),
        "/ready to report the database",
        || async {
            let (status, body) = ready_status(&url).await?;
            assert!(status == 503 || status == 200, "{status} {body}");
            if status != 503 {
                return None;
            }
            assert_eq!(body["status"], "not ready", "{body}");
            let reasons: Vec<String> = body["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect();
            reasons
                .iter()
                .any(|r| r.starts_with("database unreachable: "))
                .then_some(reasons)
        },
    )
    .await;
    assert!(
        reasons.iter().any(|r| r.starts_with("replication stream ")),
        "{reasons:?}"
    );
    // Liveness does not depend on the database.
    assert_eq!(http_get(&url, "/health").await.unwrap().0, 200);

    cluster.restart();
    let body = wait_ready_status(&url, 200, Duration::from_secs(60)).await;
    assert_eq!(body["stream"], "streaming");
    assert!(relay.is_running());
}

#[tokio::test]
async fn ready_is_unavailable_from_the_signal_until_exit() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("adminstop").await;
    let receiver = Receiver::start().await;
    receiver.respond(Rule::any().delay(Duration::from_secs(3)));
    let mut env = base_env(&cluster, &db);
    env.retain(|(k, _)| k != "DISPATCHBOX_SINKS");
    env.extend([
        ("DISPATCHBOX_SINKS".to_owned(), "webhook".to_owned()),
        ("DISPATCHBOX_WEBHOOK_URL".to_owned(), receiver.url()),
        (
            "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE".to_owned(),
            "true".to_owned(),
        ),
        ("DISPATCHBOX_SHUTDOWN_TIMEOUT".to_owned(), "5s".to_owned()),
    ]);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let mut relay = start_streaming(&client, &env).await;
    let url = relay.admin_url();
    wait_ready_status(&url, 200, Duration::from_secs(30)).await;

    insert(&client, "order", "order.placed", 1).await;
    // The delivery is in flight (the receiver holds it for 3 s).
    receiver.wait_for(1, Duration::from_secs(30)).await;
    relay.terminate();
    let signalled = Instant::now();

    let mut answers = Vec::new();
    while relay.is_running() {
        assert!(
            signalled.elapsed() < Duration::from_secs(30),
            "relay did not exit"
        );
        if let Some((status, body)) = ready_status(&url).await {
            answers.push((status, body));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = relay.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(exit.success(), "{exit}\n{}", relay.stderr());
    // The relay drained for about the receiver's delay, answering all along.
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "no drain observed"
    );
    assert!(
        answers.len() >= 5,
        "too few answers while draining: {answers:?}"
    );
    // The signal is handled asynchronously, so the first answers may still be the last
    // ones from before it; once the relay says "shutting down" it never says ready again.
    let first_unready = answers
        .iter()
        .position(|(status, _)| *status == 503)
        .unwrap_or_else(|| panic!("never unready after the signal: {answers:?}"));
    assert!(
        first_unready <= 10,
        "still ready {first_unready} polls (50 ms apart) after the signal: {answers:?}"
    );
    for (status, body) in &answers[first_unready..] {
        assert_eq!(*status, 503, "ready again after shutdown began: {body}");
        assert_eq!(body["status"], "shutting down", "{body}");
    }
    // The in-flight delivery finished and was written.
    assert_eq!(count_status(&client, "done").await, 1);
}

#[tokio::test]
async fn metrics_count_kafka_deliveries_and_dead_events() {
    let cluster = TestCluster::start();
    let broker = TestBroker::start();
    broker.create_topic("outbox.order", 3).await;
    let db = cluster.create_database("adminmetrics").await;
    let mut env = base_env(&cluster, &db);
    env.retain(|(k, _)| k != "DISPATCHBOX_SINKS");
    env.extend([
        ("DISPATCHBOX_SINKS".to_owned(), "kafka".to_owned()),
        ("DISPATCHBOX_KAFKA_BROKERS".to_owned(), broker.bootstrap()),
    ]);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    let url = relay.admin_url();

    for _ in 0..4 {
        insert(&client, "order", "order.placed", 25).await;
    }
    // A topic name with a space is illegal: the event is dead at once.
    insert(&client, "bad type", "order.broken", 1).await;
    eventually(Duration::from_secs(60), "100 done and 1 dead", || async {
        (count_status(&client, "done").await == 100 && count_status(&client, "dead").await == 1)
            .then_some(())
    })
    .await;

    // The dead-row gauge is refreshed from the database every 15 s.
    let scrape = eventually(Duration::from_secs(40), "the dead-row gauge", || async {
        let scrape = Scrape::from(&url).await;
        (scrape.get("dispatchbox_outbox_dead_events", &[]) == Some(1.0)).then_some(scrape)
    })
    .await;
    let processed = |outcome| {
        scrape.value(
            "dispatchbox_delivery_attempts_total",
            &[("sink", "kafka"), ("outcome", outcome)],
        )
    };
    assert_eq!(processed("done"), 100.0);
    assert_eq!(processed("dead"), 1.0);
    // A broker hiccup may make some attempts fail; each such attempt is counted as a retry.
    let retried = scrape
        .get(
            "dispatchbox_delivery_attempts_total",
            &[("sink", "kafka"), ("outcome", "retry")],
        )
        .unwrap_or(0.0);
    assert_eq!(
        scrape
            .get("dispatchbox_retries_total", &[("sink", "kafka")])
            .unwrap_or(0.0),
        retried
    );
    assert_eq!(
        scrape.value(
            "dispatchbox_dead_events_total",
            &[("event_type", "order.broken")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value("dispatchbox_attempts_before_dead_count", &[]),
        1.0
    );
    assert_eq!(
        scrape.value(
            "dispatchbox_delivery_duration_seconds_count",
            &[("sink", "kafka")]
        ),
        101.0 + retried
    );
    // Streamed events that were acknowledged on their first attempt (retried ones are
    // delivered by the sweeper, without a commit time).
    let acked = scrape.value("dispatchbox_commit_to_ack_seconds_count", &[]);
    assert!(acked <= 100.0 && acked >= 100.0 - retried, "{acked}");
    assert!(scrape.value("dispatchbox_commit_to_ack_seconds_sum", &[]) > 0.0);
    // Every row's outcome went through status UPDATEs of at least one row.
    let rows = scrape.value("dispatchbox_status_write_batch_size_sum", &[]);
    assert!(rows >= 101.0, "{rows}");
    assert!(scrape.value("dispatchbox_status_write_batch_size_count", &[]) >= 1.0);
    assert_eq!(scrape.value("dispatchbox_events_in_flight", &[]), 0.0);
    assert!(scrape.value("dispatchbox_replication_lag_bytes", &[]) >= 0.0);
    assert_eq!(scrape.value("dispatchbox_stream_connected", &[]), 1.0);
    assert_eq!(scrape.value("dispatchbox_leader", &[]), 1.0);
}

#[tokio::test]
async fn sweeper_reclaims_are_counted_by_reason() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("adminsweep").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    // Rows written before the relay ever created its slot: the sweeper delivers them.
    insert(&client, "order", "order.placed", 3).await;
    let relay = start_streaming(&client, &env).await;
    let url = relay.admin_url();
    eventually(Duration::from_secs(30), "3 done", || async {
        (count_status(&client, "done").await == 3).then_some(())
    })
    .await;
    let scrape = Scrape::from(&url).await;
    assert_eq!(
        scrape.value(
            "dispatchbox_sweeper_reclaims_total",
            &[("reason", "missed")]
        ),
        3.0
    );
    assert_eq!(
        scrape.value(
            "dispatchbox_delivery_attempts_total",
            &[("sink", "stdout"), ("outcome", "done")]
        ),
        3.0
    );
}

/// A failed attempt is counted as a retry for its sink, and the sweeper's re-delivery as a
/// due retry.
#[tokio::test]
async fn retries_are_counted_per_sink() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("adminretry").await;
    let receiver = Receiver::start().await;
    receiver.respond(Rule::any().fail_times(1, 503));
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SINKS", "webhook");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_URL", &receiver.url());
    // The receiver is on loopback: turn the SSRF guard off.
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_BASE", "100ms");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_MAX", "200ms");
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "200ms");
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    let url = relay.admin_url();
    insert(&client, "order", "order.placed", 1).await;
    eventually(Duration::from_secs(30), "the event done", || async {
        (count_status(&client, "done").await == 1).then_some(())
    })
    .await;
    let scrape = Scrape::from(&url).await;
    assert_eq!(
        scrape.value("dispatchbox_retries_total", &[("sink", "webhook")]),
        1.0
    );
    let processed = |outcome| {
        scrape.value(
            "dispatchbox_delivery_attempts_total",
            &[("sink", "webhook"), ("outcome", outcome)],
        )
    };
    assert_eq!((processed("retry"), processed("done")), (1.0, 1.0));
    assert_eq!(
        scrape.value(
            "dispatchbox_sweeper_reclaims_total",
            &[("reason", "due_retry")]
        ),
        1.0
    );
}

/// The rows of the outbox waiting for delivery, over every status.
fn backlog(scrape: &Scrape) -> f64 {
    ["pending", "retry", "processing"]
        .iter()
        .map(|s| scrape.value("dispatchbox_outbox_backlog_events", &[("status", s)]))
        .sum()
}

/// A sink outage takes no replica out of service: `/ready` stays 200 and reports the sink in
/// its body, `dispatchbox_sink_up` says 0, and the rows inserted meanwhile show as the
/// outbox backlog, with the age of the oldest. When the broker answers again, all of it
/// recovers.
#[tokio::test]
async fn a_kafka_outage_keeps_ready_and_shows_in_sink_up_and_the_backlog() {
    let cluster = TestCluster::start();
    let broker = TestBroker::start();
    broker.create_topic("outbox.order", 1).await;
    let db = cluster.create_database("adminsinkdown").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SINKS", "kafka");
    set_env(&mut env, "DISPATCHBOX_KAFKA_BROKERS", &broker.bootstrap());
    set_env(&mut env, "DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT", "2s");
    // Attempts fail every 2 s while the broker is away: none may run out.
    set_env(&mut env, "DISPATCHBOX_MAX_ATTEMPTS", "1000");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_BASE", "200ms");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_MAX", "1s");
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "1s");
    // A message waiting for a silent broker times out between reconnect attempts.
    set_env(
        &mut env,
        "DISPATCHBOX_KAFKA_PROPERTY_RECONNECT_BACKOFF_MAX_MS",
        "500",
    );
    // After timed-out messages librdkafka bumps the idempotent producer's epoch, which
    // tansu answers with ProducerFenced for good (a real broker does not): this test is
    // about the relay's metrics, not idempotence.
    set_env(
        &mut env,
        "DISPATCHBOX_KAFKA_PROPERTY_ENABLE_IDEMPOTENCE",
        "false",
    );
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    let url = relay.admin_url();
    let ready = eventually(Duration::from_secs(30), "kafka checked", || async {
        let (status, body) = ready_status(&url).await?;
        (status == 200 && body["sinks"]["kafka"]["up"] == true).then_some(body)
    })
    .await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(
        Scrape::from(&url)
            .await
            .value("dispatchbox_sink_up", &[("sink", "kafka")]),
        1.0
    );

    // The broker stops answering (SIGSTOP; a restarted tansu forgets the idempotent
    // producer's id, which a real broker does not).
    broker.pause();
    insert(&client, "order", "order.placed", 5).await;
    // Sinks are checked every 10 s, the backlog counted every 15 s.
    let scrape = eventually(
        Duration::from_secs(60),
        "the sink down and the backlog counted",
        || async {
            let scrape = Scrape::from(&url).await;
            (scrape.get("dispatchbox_sink_up", &[("sink", "kafka")]) == Some(0.0)
                && backlog(&scrape) == 5.0
                && scrape.value("dispatchbox_outbox_oldest_undelivered_age_seconds", &[]) > 0.0)
                .then_some(scrape)
        },
    )
    .await;
    assert!(
        scrape.value(
            "dispatchbox_delivery_attempts_total",
            &[("sink", "kafka"), ("outcome", "retry")]
        ) >= 1.0,
        "{scrape:?}"
    );
    let (status, body) = ready_status(&url).await.unwrap();
    assert_eq!(status, 200, "a sink outage made the relay unready: {body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["sinks"]["kafka"]["up"], false, "{body}");
    assert!(
        body["sinks"]["kafka"]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&broker.bootstrap())),
        "{body}"
    );
    assert!(count_status(&client, "done").await < 5);

    broker.resume();
    eventually(
        Duration::from_secs(120),
        "the sink back and the backlog drained",
        || async {
            let scrape = Scrape::from(&url).await;
            (scrape.get("dispatchbox_sink_up", &[("sink", "kafka")]) == Some(1.0)
                && backlog(&scrape) == 0.0
                && scrape.value("dispatchbox_outbox_oldest_undelivered_age_seconds", &[]) == 0.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(count_status(&client, "done").await, 5);
    let (status, body) = ready_status(&url).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sinks"]["kafka"]["up"], true, "{body}");
}

/// A broken replication connection is counted as a reconnect, and the lag in seconds reads
/// zero again once the relay is back and caught up (it does not grow while idle).
#[tokio::test]
async fn a_broken_stream_counts_a_reconnect_and_the_lag_returns_to_zero() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("adminreconnect").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    let url = relay.admin_url();
    insert(&client, "order", "order.placed", 3).await;
    eventually(Duration::from_secs(30), "3 done", || async {
        (count_status(&client, "done").await == 3).then_some(())
    })
    .await;
    let scrape = Scrape::from(&url).await;
    assert_eq!(
        scrape.value("dispatchbox_stream_reconnects_total", &[]),
        0.0
    );
    assert!(scrape.value("dispatchbox_replication_lag_seconds", &[]) < 3.0);

    let terminated: bool = client
        .query_one(
            &format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                  WHERE slot_name = 'slot_{db}' AND active"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    eventually(Duration::from_secs(30), "a reconnect counted", || async {
        let scrape = Scrape::from(&url).await;
        (scrape.value("dispatchbox_stream_reconnects_total", &[]) == 1.0
            && scrape.value("dispatchbox_stream_connected", &[]) == 1.0)
            .then_some(())
    })
    .await;
    insert(&client, "order", "order.placed", 2).await;
    eventually(Duration::from_secs(30), "5 done", || async {
        (count_status(&client, "done").await == 5).then_some(())
    })
    .await;
    // Idle and caught up: the lag stays near zero for longer than a status interval and a
    // heartbeat (500 ms and 1 s in these tests).
    let idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(4) {
        let lag = Scrape::from(&url)
            .await
            .value("dispatchbox_replication_lag_seconds", &[]);
        assert!(lag < 3.0, "lag {lag} s while idle and caught up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn an_admin_address_in_use_stops_the_relay() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // The address is bound before the database is contacted, so no database is needed.
    let env: Vec<(String, String)> = [
        (
            "DISPATCHBOX_DATABASE_URL",
            "postgres://relay:pw@127.0.0.1:1/app?sslmode=disable".to_owned(),
        ),
        ("DISPATCHBOX_HTTP_ADDR", addr.clone()),
        ("DISPATCHBOX_LOG_FORMAT", "json".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut relay = RelayProcess::start(&env);
    let status = relay
        .wait_exit(Duration::from_secs(30))
        .expect("relay exits");
    assert_eq!(status.code(), Some(1), "{}", relay.stderr());
    let stderr = relay.stderr();
    assert!(
        stderr.contains("DISPATCHBOX_HTTP_ADDR") && stderr.contains(&addr),
        "{stderr}"
    );
    drop(taken);
}
