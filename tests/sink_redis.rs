//! The Redis Streams sink against a real `redis-server` process: stream names, fields and
//! payload bytes read back with `XRANGE` by a client of its own, `MAXLEN ~` trimming, and
//! the classification of a key of another type and a stopped server.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::TimeZone;
use dispatchbox::event::OutboxEvent;
use dispatchbox::sink::{DeliveryError, RedisSink, RedisSinkConfig, Sink};
use futures_util::future::join_all;
use support::redis::TestRedis;

fn event(id: i64, aggregate_type: &str, payload: &str) -> OutboxEvent {
    OutboxEvent {
        id,
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: format!("{aggregate_type}-{}", id % 4),
        event_type: format!("{aggregate_type}.changed"),
        payload: Bytes::from(payload.to_owned()),
        headers: vec![
            ("traceparent".to_owned(), format!("00-trace{id}-01")),
            ("id".to_owned(), "forged".to_owned()),
        ],
        created_at: chrono::Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()
            + chrono::Duration::microseconds(id),
        next_run_at: None,
    }
}

fn sink(url: &str, maxlen: Option<u64>, timeout: Duration) -> Sink {
    let config = RedisSinkConfig {
        maxlen,
        timeout,
        ..RedisSinkConfig::new(url)
    };
    Sink::Redis(RedisSink::new(config).unwrap())
}

#[tokio::test]
async fn delivers_stream_fields_and_exact_payload() {
    let redis = TestRedis::start();
    let sink = sink(&redis.url(), None, Duration::from_secs(10));
    assert_eq!(sink.name(), "redis");
    sink.check(Duration::from_secs(5)).await.unwrap();

    let payloads = [
        r#"{"n": 1, "name": "grüße 🚀", "nested": {"list": [1, 2.5, null]}}"#,
        r#"[1, "x", true]"#,
        r#""just a string""#,
    ];
    let events: Vec<Arc<OutboxEvent>> = (1..=60)
        .map(|id| {
            let aggregate_type = ["order", "invoice", "shipment"][(id % 3) as usize];
            Arc::new(event(id, aggregate_type, payloads[(id % 3) as usize]))
        })
        .collect();
    let outcomes = join_all(events.iter().map(|e| sink.deliver(Arc::clone(e)))).await;
    for (outcome, e) in outcomes.into_iter().zip(&events) {
        outcome.unwrap_or_else(|err| panic!("event {} failed: {err}", e.id));
    }

    let mut ids = Vec::new();
    for aggregate_type in ["order", "invoice", "shipment"] {
        let entries = redis.xrange(&format!("outbox.{aggregate_type}")).await;
        assert_eq!(entries.len(), 20, "{aggregate_type}");
        for entry in &entries {
            let id: i64 = entry.field("id").parse().unwrap();
            ids.push(id);
            let sent = &events[(id - 1) as usize];
            assert_eq!(sent.aggregate_type, aggregate_type);
            assert_eq!(
                entry.names(),
                vec![
                    "id",
                    "event_type",
                    "aggregate_type",
                    "aggregate_id",
                    "created_at",
                    "payload",
                    "header.traceparent",
                    "header.id",
                ]
            );
            assert_eq!(entry.field("event_type"), sent.event_type);
            assert_eq!(entry.field("aggregate_type"), sent.aggregate_type);
            assert_eq!(entry.field("aggregate_id"), sent.aggregate_id);
            assert_eq!(
                entry.field("created_at"),
                format!("2024-05-06T07:08:09.{id:06}Z")
            );
            assert_eq!(entry.field("payload").as_bytes(), sent.payload.as_ref());
            assert_eq!(
                entry.field("header.traceparent"),
                format!("00-trace{id}-01")
            );
            assert_eq!(entry.field("header.id"), "forged");
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=60).collect::<Vec<_>>());
}

#[tokio::test]
async fn maxlen_trims_each_stream_approximately() {
    let redis = TestRedis::start();
    let sink = sink(&redis.url(), Some(10), Duration::from_secs(10));
    // Appended one at a time (the trim happens on each XADD).
    for id in 1..=1000 {
        sink.deliver(Arc::new(event(id, "order", "{}")))
            .await
            .unwrap();
    }
    let entries = redis.xrange("outbox.order").await;
    // `~` trims whole macro nodes (100 entries each by default): at least 10 stay, and far
    // fewer than the 1000 appended.
    assert!(
        (10..=200).contains(&entries.len()),
        "{} entries after trimming to ~10",
        entries.len()
    );
    assert_eq!(
        entries.last().unwrap().field("id"),
        "1000",
        "the newest stay"
    );

    // Without MAXLEN nothing is trimmed.
    let untrimmed = self::sink(&redis.url(), None, Duration::from_secs(10));
    for id in 1..=300 {
        untrimmed
            .deliver(Arc::new(event(id, "invoice", "{}")))
            .await
            .unwrap();
    }
    assert_eq!(redis.xrange("outbox.invoice").await.len(), 300);
}

#[tokio::test]
async fn a_redelivered_event_is_a_second_entry_with_the_same_id() {
    let redis = TestRedis::start();
    let sink = sink(&redis.url(), None, Duration::from_secs(10));
    for _ in 0..2 {
        sink.deliver(Arc::new(event(7, "order", "{}")))
            .await
            .unwrap();
    }
    let entries = redis.xrange("outbox.order").await;
    let ids: Vec<&str> = entries.iter().map(|e| e.field("id")).collect();
    assert_eq!(ids, vec!["7", "7"], "consumers dedupe by the id field");
}

#[tokio::test]
async fn a_key_of_another_type_is_permanent() {
    let redis = TestRedis::start();
    redis
        .command(&["SET", "outbox.order", "not a stream"])
        .await;
    let sink = sink(&redis.url(), None, Duration::from_secs(10));
    let err = sink
        .deliver(Arc::new(event(1, "order", "{}")))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(
        err.reason().contains("\"outbox.order\""),
        "{}",
        err.reason()
    );
    assert!(err.reason().contains("not a stream"), "{}", err.reason());
    // Other streams still work.
    sink.deliver(Arc::new(event(2, "invoice", "{}")))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stopped_server_is_retryable_and_delivery_resumes_after_restart() {
    let mut redis = TestRedis::start();
    let sink = sink(&redis.url(), None, Duration::from_secs(2));
    sink.deliver(Arc::new(event(1, "order", "{}")))
        .await
        .unwrap();

    redis.stop();
    let started = Instant::now();
    let err = sink
        .deliver(Arc::new(event(2, "order", "{}")))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");
    assert!(err.reason().contains("127.0.0.1"), "{}", err.reason());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(sink.check(Duration::from_millis(500)).await.is_err());

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sink.deliver(Arc::new(event(2, "order", "{}"))).await {
            Ok(()) => break,
            Err(err) if Instant::now() < deadline => {
                assert!(!err.is_permanent(), "attempt {attempts}: {err:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("no delivery in {attempts} attempts: {err:?}"),
        }
    }
    sink.check(Duration::from_secs(5)).await.unwrap();
    // The restarted server saved nothing: only event 2 is there.
    let ids: Vec<String> = redis
        .xrange("outbox.order")
        .await
        .iter()
        .map(|e| e.field("id").to_owned())
        .collect();
    assert_eq!(ids, vec!["2"]);
}

#[tokio::test]
async fn a_password_from_the_configuration_authenticates() {
    let redis = TestRedis::start_with(&["--requirepass", "pw-from-file"]);
    let with_password = Sink::Redis(
        RedisSink::new(RedisSinkConfig {
            password: Some(dispatchbox::secret::Secret::new("pw-from-file".into())),
            ..RedisSinkConfig::new(redis.url())
        })
        .unwrap(),
    );
    with_password.check(Duration::from_secs(5)).await.unwrap();
    with_password
        .deliver(Arc::new(event(1, "order", "{}")))
        .await
        .unwrap();

    // Without it (or with a wrong one) the attempt is retryable, and says where the
    // password comes from: an operator fixes the secret without losing events.
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    let wrong_url = format!("redis://default:wrong@127.0.0.1:{port}");
    for url in [redis.url(), wrong_url.clone()] {
        let sink = sink(&url, None, Duration::from_secs(2));
        let err = sink
            .deliver(Arc::new(event(2, "order", "{}")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, DeliveryError::Retryable { .. }),
            "{url}: {err:?}"
        );
        assert!(
            err.reason().contains("DISPATCHBOX_REDIS_PASSWORD_FILE"),
            "{}",
            err.reason()
        );
        assert!(!err.reason().contains("wrong"), "{}", err.reason());
        assert!(sink.check(Duration::from_secs(2)).await.is_err());
    }

    // A refused login is not remembered: once the server accepts the password (here: the
    // server's password is changed to it), the same sink delivers.
    let wrong = sink(&wrong_url, None, Duration::from_secs(2));
    assert!(wrong
        .deliver(Arc::new(event(3, "order", "{}")))
        .await
        .is_err());
    let mut admin = redis::Client::open(format!("redis://:pw-from-file@127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("wrong")
        .query_async(&mut admin)
        .await
        .unwrap();
    wrong
        .deliver(Arc::new(event(3, "order", "{}")))
        .await
        .unwrap();
}

#[tokio::test]
async fn rediss_is_verified_against_the_configured_ca() {
    let redis = TestRedis::start_tls();
    let tls = |ca: Option<&std::path::Path>| {
        Sink::Redis(
            RedisSink::new(RedisSinkConfig {
                tls_ca_file: ca.map(std::path::Path::to_path_buf),
                timeout: Duration::from_secs(3),
                ..RedisSinkConfig::new(redis.tls_url())
            })
            .unwrap(),
        )
    };
    let trusted = tls(redis.ca_file());
    trusted.check(Duration::from_secs(5)).await.unwrap();
    trusted
        .deliver(Arc::new(event(1, "order", "{}")))
        .await
        .unwrap();
    // Read back over TLS with a client of the test's own.
    let client = redis::Client::build_with_tls(
        redis.tls_url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(redis.ca_file().unwrap()).unwrap()),
        },
    )
    .unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let length: u64 = redis::cmd("XLEN")
        .arg("outbox.order")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(length, 1);
    // Without the CA (system roots) the handshake fails: retryable, never delivered.
    let untrusted = tls(None);
    let err = untrusted
        .deliver(Arc::new(event(2, "order", "{}")))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");
}
