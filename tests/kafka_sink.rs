//! The Kafka sink against a real Kafka-protocol broker process (tansu), plus librdkafka's
//! mock cluster for broker errors tansu cannot be made to produce.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::TimeZone;
use dispatchbox::event::OutboxEvent;
use dispatchbox::sink::{DeliveryError, KafkaSink, KafkaSinkConfig, Sink};
use futures_util::future::join_all;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::kafka::TestBroker;
use support::varied_payload;

const AGGREGATE_TYPES: [&str; 3] = ["order", "invoice", "shipment"];

fn event(id: i64, aggregate_type: &str, aggregate_id: &str, payload: String) -> OutboxEvent {
    OutboxEvent {
        id,
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        event_type: format!("{aggregate_type}.changed"),
        payload: Bytes::from(payload),
        headers: vec![("traceparent".to_owned(), format!("00-trace{id}-01"))],
        created_at: chrono::Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()
            + chrono::Duration::microseconds(id),
        next_run_at: None,
    }
}

fn sink(brokers: &str, delivery_timeout: Duration) -> Sink {
    let mut config = KafkaSinkConfig::new(brokers);
    config.delivery_timeout = delivery_timeout;
    Sink::Kafka(KafkaSink::new(config).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_key_headers_and_exact_payload_in_order_per_key() {
    // Given a broker and 200 events over 3 aggregate types and 12 aggregates.
    let broker = TestBroker::start();
    let sink = sink(&broker.bootstrap(), Duration::from_secs(30));
    assert_eq!(sink.name(), "kafka");
    sink.check(Duration::from_secs(5)).await.unwrap();
    let events: Vec<Arc<OutboxEvent>> = (1..=200)
        .map(|id| {
            let aggregate_type = AGGREGATE_TYPES[(id % 3) as usize];
            let aggregate_id = format!("{aggregate_type}-{}", id % 4);
            Arc::new(event(id, aggregate_type, &aggregate_id, varied_payload(id)))
        })
        .collect();

    // When they are handed off in id order and all outcomes awaited together.
    let deliveries: Vec<_> = events.iter().map(|e| sink.deliver(Arc::clone(e))).collect();
    for (outcome, e) in join_all(deliveries).await.into_iter().zip(&events) {
        outcome.unwrap_or_else(|err| panic!("event {} failed: {err}", e.id));
    }

    // Then each topic holds exactly its events, unchanged, in id order per key.
    let by_id: HashMap<i64, &OutboxEvent> = events.iter().map(|e| (e.id, e.as_ref())).collect();
    for aggregate_type in AGGREGATE_TYPES {
        let topic = format!("outbox.{aggregate_type}");
        let expected = events
            .iter()
            .filter(|e| e.aggregate_type == aggregate_type)
            .count();
        let records = broker
            .read_topic(&topic, expected, Duration::from_secs(30))
            .await;
        assert_eq!(records.len(), expected, "records in {topic}");

        let mut last_id_per_key: HashMap<String, (i32, i64)> = HashMap::new();
        for record in &records {
            let id: i64 = record.header("id").unwrap().parse().unwrap();
            let sent = by_id[&id];
            assert_eq!(record.topic, topic);
            assert_eq!(record.key_str(), sent.aggregate_id);
            assert_eq!(
                record.payload.as_deref(),
                Some(sent.payload.as_ref()),
                "payload of {id}"
            );
            let headers: Vec<(&str, String)> = record
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), String::from_utf8(v.clone()).unwrap()))
                .collect();
            assert_eq!(
                headers,
                vec![
                    ("id", id.to_string()),
                    ("event_type", sent.event_type.clone()),
                    ("aggregate_type", sent.aggregate_type.clone()),
                    ("aggregate_id", sent.aggregate_id.clone()),
                    // RFC 3339 in UTC with microseconds (the fixture adds `id` µs).
                    ("created_at", format!("2024-05-06T07:08:09.{id:06}Z")),
                    ("traceparent", format!("00-trace{id}-01")),
                ]
            );
            // Records come sorted by (partition, offset): per key, one partition and
            // increasing ids.
            if let Some((partition, previous)) =
                last_id_per_key.insert(sent.aggregate_id.clone(), (record.partition, id))
            {
                assert_eq!(
                    partition, record.partition,
                    "key {} split",
                    sent.aggregate_id
                );
                assert!(
                    previous < id,
                    "key {}: {id} after {previous}",
                    sent.aggregate_id
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_topic_and_oversized_message_are_permanent() {
    let broker = TestBroker::start();
    let sink = sink(&broker.bootstrap(), Duration::from_secs(10));

    // An aggregate type that renders to an illegal topic name.
    let illegal = Arc::new(event(1, "order lines", "o-1", "{}".to_owned()));
    let err = sink.deliver(illegal).await.unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(
        err.reason().contains("\"outbox.order lines\""),
        "{}",
        err.reason()
    );

    // A payload over the producer's message.max.bytes.
    let big = format!(
        r#"{{"blob": "{}"}}"#,
        "x".repeat(dispatchbox::sink::kafka::DEFAULT_MESSAGE_MAX_BYTES + 1024)
    );
    let err = sink
        .deliver(Arc::new(event(2, "order", "o-1", big)))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(
        err.reason().contains("\"outbox.order\""),
        "{}",
        err.reason()
    );

    // The sink is still usable afterwards.
    sink.deliver(Arc::new(event(3, "order", "o-1", "{}".to_owned())))
        .await
        .unwrap();
}

/// A sink for the outage test: a short delivery timeout, and a reconnect backoff short
/// enough that a message waiting for a dead broker is timed out promptly (librdkafka only
/// scans for timeouts between reconnect attempts, up to `reconnect.backoff.max.ms` apart).
fn outage_sink(brokers: &str, extra: &[(&str, &str)]) -> Sink {
    let mut config = KafkaSinkConfig::new(brokers);
    config.delivery_timeout = Duration::from_secs(2);
    config
        .properties
        .push(("reconnect.backoff.max.ms".into(), "500".into()));
    for (name, value) in extra {
        config
            .properties
            .push((name.to_string(), value.to_string()));
    }
    Sink::Kafka(KafkaSink::new(config).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_retryable_and_delivery_resumes_after_restart() {
    // Given two sinks that have delivered once: the default idempotent producer, and one
    // with idempotence off for the restart half. tansu keeps producer ids in memory only; a
    // restarted tansu answers librdkafka's epoch bump with a producer id it then rejects as
    // unknown, forever (a real Kafka broker allocates a fresh id), so an idempotent producer
    // cannot resume against it. The outage half holds for both.
    let mut broker = TestBroker::start();
    let idempotent = outage_sink(&broker.bootstrap(), &[]);
    let plain = outage_sink(&broker.bootstrap(), &[("enable.idempotence", "false")]);
    for sink in [&idempotent, &plain] {
        sink.deliver(Arc::new(event(1, "order", "o-1", "{}".to_owned())))
            .await
            .unwrap();
    }

    let partitions = broker.partitions("outbox.order").unwrap();

    // When the broker dies, delivery fails as retryable within a few seconds and the
    // readiness check fails.
    broker.stop();
    for sink in [&idempotent, &plain] {
        let started = Instant::now();
        let err = sink
            .deliver(Arc::new(event(2, "order", "o-1", "{}".to_owned())))
            .await
            .unwrap_err();
        assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");
        assert!(
            err.reason().contains(&broker.bootstrap()),
            "{}",
            err.reason()
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "took {:?}",
            started.elapsed()
        );
        assert!(sink.check(Duration::from_millis(500)).await.is_err());
    }

    // Then after a restart on the same port, delivery works again, retried the way the
    // dispatcher would, until a deadline. The restarted broker is empty; the topic is
    // recreated as a real cluster would still have it (tansu auto-creates topics only on
    // metadata requests, and the producer's cached metadata skips those).
    broker.restart();
    broker.create_topic("outbox.order", partitions as i32).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match plain
            .deliver(Arc::new(event(3, "order", "o-1", "{}".to_owned())))
            .await
        {
            Ok(()) => break,
            Err(err) if Instant::now() < deadline => {
                assert!(!err.is_permanent(), "attempt {attempts}: {err:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("no delivery in {attempts} attempts after restart: {err:?}"),
        }
    }
    let records = broker
        .read_topic("outbox.order", 1, Duration::from_secs(10))
        .await;
    assert_eq!(records.len(), 1, "the restarted broker starts empty");
    assert_eq!(records[0].header("id"), Some("3"));
    plain.check(Duration::from_secs(5)).await.unwrap();
    plain.close(Duration::from_secs(5)).await;
}

/// Broker errors the real broker cannot be made to return, injected with librdkafka's mock
/// cluster: authorisation → permanent; too few in-sync replicas → retryable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_broker_errors_are_classified() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("outbox.order", 1, 1).unwrap();
    cluster.create_topic("outbox.invoice", 1, 1).unwrap();
    let sink = sink(&cluster.bootstrap_servers(), Duration::from_secs(3));
    sink.deliver(Arc::new(event(1, "order", "o-1", "{}".to_owned())))
        .await
        .unwrap();

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let err = sink
        .deliver(Arc::new(event(2, "order", "o-1", "{}".to_owned())))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(err.reason().contains("authorised"), "{}", err.reason());

    // librdkafka remembers an authorisation failure per topic, so use another topic.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 50],
    );
    let err = sink
        .deliver(Arc::new(event(3, "invoice", "i-1", "{}".to_owned())))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");

    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    sink.deliver(Arc::new(event(4, "invoice", "i-1", "{}".to_owned())))
        .await
        .unwrap();
}

/// With auto-creation off, a missing topic is reported as permanent (with a hint) well
/// before the delivery timeout, not as an endless retryable timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_is_permanent_before_the_delivery_timeout() {
    let cluster = MockCluster::new(1).unwrap();
    cluster
        .topic_error(
            "outbox.ghost",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .unwrap();
    let sink = sink(&cluster.bootstrap_servers(), Duration::from_secs(6));

    let started = Instant::now();
    let err = sink
        .deliver(Arc::new(event(1, "ghost", "g-1", "{}".to_owned())))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(
        err.reason().contains("\"outbox.ghost\""),
        "{}",
        err.reason()
    );
    assert!(
        err.reason().contains("create the topic"),
        "{}",
        err.reason()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// A producer that librdkafka declares fatally broken (an idempotence sequence violation)
/// is replaced: the affected event fails as retryable and the next one goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_producer_error_is_retryable_and_the_producer_is_replaced() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("outbox.order", 1, 1).unwrap();
    let sink = sink(&cluster.bootstrap_servers(), Duration::from_secs(5));
    sink.deliver(Arc::new(event(1, "order", "o-1", "{}".to_owned())))
        .await
        .unwrap();

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let err = sink
        .deliver(Arc::new(event(2, "order", "o-1", "{}".to_owned())))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");

    // The old producer is fatally broken (librdkafka refuses every produce from now on), so
    // this succeeds only through a fresh one.
    sink.deliver(Arc::new(event(3, "order", "o-1", "{}".to_owned())))
        .await
        .unwrap();
}
