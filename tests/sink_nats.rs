//! The NATS JetStream sink against a real `nats-server -js` process: subjects, headers and
//! payload bytes read back from the stream by a client of its own, `Nats-Msg-Id`
//! deduplication, and the classification of a missing stream, oversized messages, a full
//! stream and a stopped server.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy};
use bytes::Bytes;
use chrono::TimeZone;
use dispatchbox::event::OutboxEvent;
use dispatchbox::secret::Secret;
use dispatchbox::sink::nats::NatsAuth;
use dispatchbox::sink::{DeliveryError, NatsSink, NatsSinkConfig, Sink};
use futures_util::future::join_all;
use support::nats::TestNats;

fn event(id: i64, aggregate_type: &str, payload: &str) -> OutboxEvent {
    OutboxEvent {
        id,
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: format!("{aggregate_type}-{}", id % 4),
        event_type: format!("{aggregate_type}.changed"),
        payload: Bytes::from(payload.to_owned()),
        headers: vec![
            ("traceparent".to_owned(), format!("00-trace{id}-01")),
            ("tracestate".to_owned(), "vendor=1".to_owned()),
            // Must never override the idempotency key.
            ("Nats-Msg-Id".to_owned(), "forged".to_owned()),
            ("id".to_owned(), "forged".to_owned()),
        ],
        created_at: chrono::Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()
            + chrono::Duration::microseconds(id),
        next_run_at: None,
    }
}

fn sink(url: &str, timeout: Duration) -> Sink {
    let mut config = NatsSinkConfig::new(url);
    config.timeout = timeout;
    Sink::Nats(NatsSink::new(config).unwrap())
}

#[tokio::test]
async fn delivers_subject_headers_and_exact_payload() {
    // Given a server with one stream over every outbox subject.
    let nats = TestNats::start();
    nats.create_stream("OUTBOX", &["outbox.>"]).await;
    let sink = sink(&nats.url(), Duration::from_secs(10));
    assert_eq!(sink.name(), "nats");
    sink.check(Duration::from_secs(5)).await.unwrap();

    // When 60 events of three aggregate types are delivered at once.
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

    // Then the stream holds each once, on its subject, with the documented headers.
    let stored = nats
        .read_stream("OUTBOX", 60, Duration::from_secs(10))
        .await;
    assert_eq!(stored.len(), 60);
    let mut ids: Vec<i64> = Vec::new();
    for message in &stored {
        let id: i64 = message.header("id").parse().unwrap();
        ids.push(id);
        let sent = &events[(id - 1) as usize];
        assert_eq!(message.subject, format!("outbox.{}", sent.aggregate_type));
        assert_eq!(message.payload, sent.payload.as_ref(), "payload of {id}");
        assert_eq!(message.header("Nats-Msg-Id"), id.to_string());
        assert_eq!(message.header("event_type"), sent.event_type);
        assert_eq!(message.header("aggregate_type"), sent.aggregate_type);
        assert_eq!(message.header("aggregate_id"), sent.aggregate_id);
        assert_eq!(
            message.header("created_at"),
            format!("2024-05-06T07:08:09.{id:06}Z")
        );
        assert_eq!(message.header("traceparent"), format!("00-trace{id}-01"));
        assert_eq!(message.header("tracestate"), "vendor=1");
        let names: Vec<&str> = message.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names.len(), 8, "{names:?}");
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=60).collect::<Vec<_>>());
    sink.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_redelivered_event_is_stored_once() {
    let nats = TestNats::start();
    nats.create_stream("OUTBOX", &["outbox.>"]).await;
    let sink = sink(&nats.url(), Duration::from_secs(10));

    // The same row delivered three times (a retry after a lost acknowledgement, a replay
    // after a crash), and another row once.
    for _ in 0..3 {
        sink.deliver(Arc::new(event(7, "order", "{}")))
            .await
            .unwrap();
    }
    sink.deliver(Arc::new(event(8, "order", "{}")))
        .await
        .unwrap();

    let stored = nats.read_stream("OUTBOX", 2, Duration::from_secs(5)).await;
    let ids: Vec<&str> = stored.iter().map(|m| m.header("id")).collect();
    assert_eq!(ids, vec!["7", "8"]);
}

#[tokio::test]
async fn a_subject_without_a_stream_is_permanent_after_half_the_timeout() {
    let nats = TestNats::start();
    nats.create_stream("OTHER", &["other.>"]).await;
    let sink = sink(&nats.url(), Duration::from_secs(2));
    sink.check(Duration::from_secs(5)).await.unwrap();

    let started = Instant::now();
    let err = sink
        .deliver(Arc::new(event(1, "ghost", "{}")))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.is_permanent(), "{err:?}");
    assert!(
        err.reason().contains("\"outbox.ghost\""),
        "{}",
        err.reason()
    );
    assert!(err.reason().contains("create a stream"), "{}", err.reason());
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(2),
        "took {elapsed:?}: the grace is half the 2 s timeout"
    );

    // A stream created within the grace catches the event.
    let late = {
        let delivery = sink.deliver(Arc::new(event(2, "late", "{}")));
        let create = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            nats.create_stream("LATE", &["outbox.late"]).await;
        };
        tokio::join!(delivery, create).0
    };
    late.unwrap();
    assert_eq!(nats.message_count("LATE").await, 1);
}

#[tokio::test]
async fn oversized_messages_are_permanent_and_a_full_stream_is_retryable() {
    let nats = TestNats::start();
    nats.create_stream("OUTBOX", &["outbox.order"]).await;
    nats.create_stream_with(StreamConfig {
        name: "SMALL".into(),
        subjects: vec!["outbox.small".into()],
        max_message_size: 1024,
        ..Default::default()
    })
    .await;
    nats.create_stream_with(StreamConfig {
        name: "FULL".into(),
        subjects: vec!["outbox.full".into()],
        max_messages: 1,
        discard: DiscardPolicy::New,
        ..Default::default()
    })
    .await;
    let sink = sink(&nats.url(), Duration::from_secs(5));

    // Over the server's max_payload (1 MiB by default): refused before it is sent.
    let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(1024 * 1024));
    let err = sink
        .deliver(Arc::new(event(1, "order", &big)))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(err.reason().contains("max_payload"), "{}", err.reason());

    // Over the stream's max_msg_size: refused by JetStream.
    let medium = format!(r#"{{"blob": "{}"}}"#, "x".repeat(2048));
    let err = sink
        .deliver(Arc::new(event(2, "small", &medium)))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(err.reason().contains("max_msg_size"), "{}", err.reason());

    // A stream at its limit with discard: new refuses more until consumers make room.
    sink.deliver(Arc::new(event(3, "full", "{}")))
        .await
        .unwrap();
    let err = sink
        .deliver(Arc::new(event(4, "full", "{}")))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");
    assert!(err.reason().contains("full"), "{}", err.reason());

    // The connection survived all of it.
    sink.deliver(Arc::new(event(5, "order", "{}")))
        .await
        .unwrap();
    assert_eq!(nats.message_count("OUTBOX").await, 1);
}

#[tokio::test]
async fn a_stopped_server_is_retryable_and_delivery_resumes_after_restart() {
    let mut nats = TestNats::start();
    nats.create_stream("OUTBOX", &["outbox.>"]).await;
    let sink = sink(&nats.url(), Duration::from_secs(2));
    sink.deliver(Arc::new(event(1, "order", "{}")))
        .await
        .unwrap();

    nats.stop();
    let started = Instant::now();
    let err = sink
        .deliver(Arc::new(event(2, "order", "{}")))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");
    assert!(err.reason().contains(&nats.url()), "{}", err.reason());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(sink.check(Duration::from_millis(500)).await.is_err());

    // The store survives the restart; retried the way the dispatcher would, event 2 lands.
    nats.restart();
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
            Err(err) => panic!(
                "no delivery in {attempts} attempts: {err:?}\n{}",
                nats.logs()
            ),
        }
    }
    sink.check(Duration::from_secs(5)).await.unwrap();
    // The publish that timed out during the outage may have been sent after the reconnect:
    // `Nats-Msg-Id` keeps it at one copy.
    let stored = nats.read_stream("OUTBOX", 2, Duration::from_secs(5)).await;
    let ids: Vec<&str> = stored.iter().map(|m| m.header("id")).collect();
    assert_eq!(ids, vec!["1", "2"]);
}

#[tokio::test]
async fn tokens_and_passwords_authenticate_and_their_absence_is_reported_by_check() {
    let nats = TestNats::start_with(&["--auth", "s3cret-token"]);
    let port = nats.url().rsplit(':').next().unwrap().to_owned();
    // The token from the configuration (DISPATCHBOX_NATS_TOKEN[_FILE]) …
    let with_token = Sink::Nats(
        NatsSink::new(NatsSinkConfig {
            auth: NatsAuth::Token(Secret::new("s3cret-token".into())),
            ..NatsSinkConfig::new(nats.url())
        })
        .unwrap(),
    );
    with_token.check(Duration::from_secs(5)).await.unwrap();
    // … or in the URL, as `token@`.
    let token_in_url = sink(
        &format!("nats://s3cret-token@127.0.0.1:{port}"),
        Duration::from_secs(5),
    );
    token_in_url.check(Duration::from_secs(5)).await.unwrap();
    let without = sink(&nats.url(), Duration::from_secs(2));
    let err = without.check(Duration::from_secs(2)).await.unwrap_err();
    assert!(!err.reason().contains("s3cret-token"), "{}", err.reason());

    // A user and password in the URL.
    let nats = TestNats::start_with(&["--user", "relay", "--pass", "pa%ss"]);
    let port = nats.url().rsplit(':').next().unwrap().to_owned();
    let with_password = sink(
        &format!("nats://relay:pa%25ss@127.0.0.1:{port}"),
        Duration::from_secs(5),
    );
    with_password.check(Duration::from_secs(5)).await.unwrap();
    let wrong = sink(
        &format!("nats://relay:wrong@127.0.0.1:{port}"),
        Duration::from_secs(2),
    );
    let err = wrong.check(Duration::from_secs(2)).await.unwrap_err();
    assert!(!err.reason().contains("wrong"), "{}", err.reason());
}

#[tokio::test]
async fn tls_servers_are_verified_against_the_configured_ca() {
    let nats = TestNats::start_tls();
    nats.create_stream("OUTBOX", &["outbox.>"]).await;
    let port = nats.url().rsplit(':').next().unwrap().to_owned();
    let tls = |ca: Option<&std::path::Path>| {
        Sink::Nats(
            NatsSink::new(NatsSinkConfig {
                tls_ca_file: ca.map(std::path::Path::to_path_buf),
                timeout: Duration::from_secs(3),
                ..NatsSinkConfig::new(format!("tls://127.0.0.1:{port}"))
            })
            .unwrap(),
        )
    };
    // With the test CA: connected over TLS, delivered.
    let trusted = tls(nats.ca_file());
    trusted.check(Duration::from_secs(5)).await.unwrap();
    trusted
        .deliver(Arc::new(event(1, "order", "{}")))
        .await
        .unwrap();
    assert_eq!(nats.message_count("OUTBOX").await, 1);
    // Without it the server's certificate is not trusted (system roots): nothing connects.
    let untrusted = tls(None);
    assert!(untrusted.check(Duration::from_secs(2)).await.is_err());
}
