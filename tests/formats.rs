//! The formats (`DISPATCHBOX_FORMAT`): CloudEvents in structured and binary mode over HTTP
//! and Kafka, decoded by the independent CloudEvents Python SDK (`cloudevents` on PyPI,
//! installed by `scripts/install-test-deps`), and Debezium's outbox-router record shape on a
//! real Kafka-protocol broker; then all of them end to end through the relay.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chrono::TimeZone;
use dispatchbox::event::OutboxEvent;
use dispatchbox::sink::format::debezium::Debezium;
use dispatchbox::sink::format::{CloudEvents, CloudEventsMode, Format};
use dispatchbox::sink::{KafkaSink, KafkaSinkConfig, Sink, WebhookSink, WebhookSinkConfig};
use serde_json::{json, Value};
use support::kafka::{Record, TestBroker};
use support::postgres::TestCluster;
use support::relay::{base_env, migrate, set_env, start_streaming};
use support::store::count_status;
use support::webhook::Receiver;

const SOURCE: &str = "/dispatchbox/app/public.outbox_event";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const WAIT: Duration = Duration::from_secs(20);

/// An event whose aggregate id needs percent-encoding in an HTTP header and whose payload
/// has non-ASCII text, so the SDK's decoding is exercised, not just echoed.
fn event(id: i64) -> Arc<OutboxEvent> {
    Arc::new(OutboxEvent {
        id,
        aggregate_type: "order".into(),
        aggregate_id: "o 1/ü%".into(),
        event_type: "order.created".into(),
        payload: Bytes::from_static(r#"{"total":10.5,"note":"grüße","items":[1,2]}"#.as_bytes()),
        headers: vec![
            ("traceparent".into(), TRACEPARENT.into()),
            ("id".into(), "forged".into()),
        ],
        created_at: chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::microseconds(6),
        next_run_at: None,
    })
}

fn cloudevents(mode: CloudEventsMode) -> Format {
    Format::CloudEvents(CloudEvents::new(SOURCE, mode).unwrap())
}

/// Decodes one message with the CloudEvents Python SDK; returns its attributes and data.
fn sdk_decode(
    binding: &str,
    headers: &[(String, String)],
    body: &[u8],
    key: Option<&str>,
) -> Value {
    sdk_decode_with(binding, headers, body, key, None)
}

/// [`sdk_decode`] with a RabbitMQ `content_type` property.
fn sdk_decode_with(
    binding: &str,
    headers: &[(String, String)],
    body: &[u8],
    key: Option<&str>,
    content_type: Option<&str>,
) -> Value {
    let input = json!({
        "binding": binding,
        "headers": headers
            .iter()
            .map(|(name, value)| (name.clone(), Value::from(value.as_str())))
            .collect::<serde_json::Map<String, Value>>(),
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "key": key,
        "content_type": content_type,
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cloudevents_check.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/install-test-deps installs it with the cloudevents SDK)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the CloudEvents SDK refused the message: {}\ninput: {input}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// What the SDK must read back from `event(42)`.
fn assert_is_event_42(decoded: &Value) {
    let attributes = &decoded["attributes"];
    assert_eq!(attributes["specversion"], "1.0", "{decoded}");
    assert_eq!(attributes["id"], "42");
    assert_eq!(attributes["source"], SOURCE);
    assert_eq!(attributes["type"], "order.created");
    assert_eq!(attributes["subject"], "o 1/ü%");
    assert_eq!(attributes["partitionkey"], "o 1/ü%");
    assert_eq!(attributes["datacontenttype"], "application/json");
    assert_eq!(attributes["time"], "2024-01-02T03:04:05.000006+00:00");
    assert_eq!(
        decoded["data"],
        json!({"total": 10.5, "note": "grüße", "items": [1, 2]})
    );
}

fn text_headers(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect()
}

fn kafka_text_headers(record: &Record) -> Vec<(String, String)> {
    record
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), String::from_utf8(value.clone()).unwrap()))
        .collect()
}

#[tokio::test]
async fn webhook_cloudevents_in_both_modes_decode_with_the_sdk() {
    let receiver = Receiver::start().await;
    for (mode, content_type) in [
        (
            CloudEventsMode::Structured,
            "application/cloudevents+json; charset=utf-8",
        ),
        (CloudEventsMode::Binary, "application/json"),
    ] {
        let sink = Sink::Webhook(
            WebhookSink::new(WebhookSinkConfig {
                format: cloudevents(mode),
                allow_private: true,
                ..WebhookSinkConfig::new(receiver.url())
            })
            .unwrap(),
        );
        sink.deliver(event(42)).await.unwrap();
        let request = receiver.requests().pop().unwrap();
        assert_eq!(
            request.header("content-type"),
            Some(content_type),
            "{mode:?}"
        );
        // The Standard Webhooks headers stay in every format.
        assert_eq!(request.webhook_id(), Some("42"));
        let headers = text_headers(&request.headers);
        let binary = headers.iter().any(|(name, _)| name.starts_with("ce-"));
        assert_eq!(binary, mode == CloudEventsMode::Binary, "{headers:?}");
        if binary {
            // Percent-encoded as the HTTP binding requires (space, `%`, non-ASCII).
            assert_eq!(request.header("ce-subject"), Some("o%201/%C3%BC%25"));
        }
        let decoded = sdk_decode("http", &headers, &request.body, None);
        assert_is_event_42(&decoded);
        if mode == CloudEventsMode::Structured {
            assert_eq!(decoded["attributes"]["traceparent"], TRACEPARENT);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_cloudevents_in_both_modes_decode_with_the_sdk() {
    let broker = TestBroker::start();
    for (mode, topic) in [
        (CloudEventsMode::Structured, "ce.structured"),
        (CloudEventsMode::Binary, "ce.binary"),
    ] {
        broker.create_topic(topic, 1).await;
        let mut config = KafkaSinkConfig::new(broker.bootstrap());
        config.topic_template = topic.to_owned();
        config.format = cloudevents(mode);
        let sink = Sink::Kafka(KafkaSink::new(config).unwrap());
        sink.deliver(event(42)).await.unwrap();
        let records = broker.read_topic(topic, 1, WAIT).await;
        assert_eq!(records.len(), 1, "{mode:?}");
        let record = &records[0];
        assert_eq!(record.key_str(), "o 1/ü%");
        // The row's trace context travels as a Kafka header; its forged `id` does not
        // (in binary mode the id is `ce_id`).
        assert_eq!(record.header("traceparent"), Some(TRACEPARENT));
        let headers = kafka_text_headers(record);
        match mode {
            CloudEventsMode::Structured => {
                assert_eq!(
                    record.header("content-type"),
                    Some("application/cloudevents+json; charset=utf-8")
                );
                assert!(
                    !headers.iter().any(|(n, _)| n.starts_with("ce_")),
                    "{headers:?}"
                );
            }
            CloudEventsMode::Binary => {
                assert_eq!(record.header("content-type"), Some("application/json"));
                assert_eq!(record.header("ce_id"), Some("42"));
                assert_eq!(
                    record.payload.as_deref(),
                    Some(event(42).payload.as_ref()),
                    "binary mode sends the payload byte for byte"
                );
            }
        }
        let decoded = sdk_decode(
            "kafka",
            &headers,
            record.payload.as_deref().unwrap(),
            Some(record.key_str()),
        );
        assert_is_event_42(&decoded);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_debezium_records_look_like_the_outbox_event_routers() {
    let broker = TestBroker::start();
    broker.create_topic("outbox.event.order", 1).await;
    let mut config = KafkaSinkConfig::new(broker.bootstrap());
    config.topic_template = "outbox.event.{aggregate_type}".to_owned();
    config.format = Format::Debezium(
        Debezium::from_placements("event_type:header:eventType,created_at:header").unwrap(),
    );
    let sink = Sink::Kafka(KafkaSink::new(config).unwrap());
    sink.deliver(event(42)).await.unwrap();

    let records = broker.read_topic("outbox.event.order", 1, WAIT).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.key_str(), "o 1/ü%");
    assert_eq!(record.payload.as_deref(), Some(event(42).payload.as_ref()));
    assert_eq!(
        kafka_text_headers(record),
        vec![
            ("id".to_owned(), "42".to_owned()),
            ("eventType".to_owned(), "order.created".to_owned()),
            (
                "created_at".to_owned(),
                "2024-01-02T03:04:05.000006Z".to_owned()
            ),
            // The row's headers follow; its forged `id` is dropped.
            ("traceparent".to_owned(), TRACEPARENT.to_owned()),
        ]
    );
}

/// Through the relay: Kafka in Debezium's shape (its default topic), the webhook in binary
/// CloudEvents, stdout in structured CloudEvents; every row `done`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_format_end_to_end_through_the_relay() {
    let cluster = TestCluster::start();
    let broker = TestBroker::start();
    broker.create_topic("outbox.event.invoice", 1).await;
    let receiver = Receiver::start().await;
    let db = cluster.create_database("formats").await;
    let mut env = base_env(&cluster, &db);
    for (key, value) in [
        ("DISPATCHBOX_SINKS", "kafka,webhook,stdout".to_owned()),
        ("DISPATCHBOX_KAFKA_BROKERS", broker.bootstrap()),
        ("DISPATCHBOX_WEBHOOK_URL", receiver.url()),
        ("DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ("DISPATCHBOX_FORMAT", "cloudevents".to_owned()),
        ("DISPATCHBOX_CLOUDEVENTS_MODE", "binary".to_owned()),
        ("DISPATCHBOX_KAFKA_FORMAT", "debezium".to_owned()),
    ] {
        set_env(&mut env, key, &value);
    }
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    client
        .execute(
            "INSERT INTO public.outbox_event (aggregate_type, aggregate_id, event_type, payload, headers)
             SELECT 'invoice', 'inv-' || g, 'invoice.issued', jsonb_build_object('n', g),
                    jsonb_build_object('traceparent', $1::text)
             FROM generate_series(1, 3) g",
            &[&TRACEPARENT],
        )
        .await
        .unwrap();

    let records = broker.read_topic("outbox.event.invoice", 3, WAIT).await;
    assert_eq!(records.len(), 3, "relay log: {}", relay.stderr());
    for record in &records {
        assert!(record.key_str().starts_with("inv-"));
        assert!(record.header("id").is_some());
        assert_eq!(record.header("traceparent"), Some(TRACEPARENT));
    }

    let requests = receiver.wait_for(3, WAIT).await;
    assert_eq!(requests.len(), 3);
    let source = format!("/dispatchbox/{db}/public.outbox_event");
    for request in &requests {
        let decoded = sdk_decode("http", &text_headers(&request.headers), &request.body, None);
        assert_eq!(decoded["attributes"]["type"], "invoice.issued");
        assert_eq!(decoded["attributes"]["source"], source.as_str());
        assert_eq!(request.header("traceparent"), Some(TRACEPARENT));
    }

    support::postgres::eventually(WAIT, "all three rows done", || async {
        (count_status(&client, "done").await == 3).then_some(())
    })
    .await;
    // Stdout: one structured CloudEvent per line.
    let lines = relay.stdout();
    let lines: Vec<&str> = lines.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in lines {
        let headers = [(
            "content-type".to_owned(),
            "application/cloudevents+json".to_owned(),
        )];
        let decoded = sdk_decode("http", &headers, line.as_bytes(), None);
        assert_eq!(
            decoded["attributes"]["subject"]
                .as_str()
                .map(|s| s.starts_with("inv-")),
            Some(true)
        );
        assert_eq!(decoded["attributes"]["traceparent"], TRACEPARENT);
    }
}

#[tokio::test]
async fn nats_cloudevents_in_both_modes_decode_with_the_sdk() {
    use dispatchbox::sink::{NatsSink, NatsSinkConfig};
    let nats = support::nats::TestNats::start();
    nats.create_stream("OUTBOX", &["outbox.>"]).await;
    for (n, mode) in [CloudEventsMode::Structured, CloudEventsMode::Binary]
        .into_iter()
        .enumerate()
    {
        let mut config = NatsSinkConfig::new(nats.url());
        config.format = cloudevents(mode);
        let sink = Sink::Nats(NatsSink::new(config).unwrap());
        sink.deliver(event(42 + n as i64)).await.unwrap();
    }
    let stored = nats.read_stream("OUTBOX", 2, WAIT).await;
    assert_eq!(stored.len(), 2);
    for (message, mode) in stored
        .iter()
        .zip([CloudEventsMode::Structured, CloudEventsMode::Binary])
    {
        // JetStream's dedup key stays the row id, and the trace context travels.
        let id = if mode == CloudEventsMode::Binary {
            "43"
        } else {
            "42"
        };
        assert_eq!(message.header("Nats-Msg-Id"), id);
        assert_eq!(message.header("traceparent"), TRACEPARENT);
        // NATS headers follow HTTP's: the SDK's HTTP binding reads them.
        let mut decoded = sdk_decode("http", &message.headers, &message.payload, None);
        // The second event is id 43; every other attribute is event 42's.
        assert_eq!(decoded["attributes"]["id"], id);
        decoded["attributes"]["id"] = Value::from("42");
        assert_is_event_42(&decoded);
        let binary = message.headers.iter().any(|(n, _)| n.starts_with("ce-"));
        assert_eq!(binary, mode == CloudEventsMode::Binary);
    }
}

#[tokio::test]
async fn redis_cloudevents_entries_hold_the_structured_document() {
    use dispatchbox::sink::{RedisSink, RedisSinkConfig};
    let redis = support::redis::TestRedis::start();
    let mut config = RedisSinkConfig::new(redis.url());
    config.format = cloudevents(CloudEventsMode::Binary);
    let sink = Sink::Redis(RedisSink::new(config).unwrap());
    sink.deliver(event(42)).await.unwrap();
    let entries = redis.xrange("outbox.order").await;
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.field("id"), "42");
    assert_eq!(entry.field("header.traceparent"), TRACEPARENT);
    let headers = [(
        "content-type".to_owned(),
        entry.field("content-type").to_owned(),
    )];
    let decoded = sdk_decode("http", &headers, entry.field("cloudevent").as_bytes(), None);
    assert_is_event_42(&decoded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_cloudevents_in_both_modes_decode_with_the_sdk() {
    use dispatchbox::sink::{RabbitMqSink, RabbitMqSinkConfig};
    let node = support::rabbitmq::node();
    let admin = node.admin().await;
    admin.topic_exchange("ce.outbox").await;
    admin.bound_queue("ce.all", "ce.outbox", "#").await;
    for mode in [CloudEventsMode::Structured, CloudEventsMode::Binary] {
        let mut config = RabbitMqSinkConfig::new(node.url());
        config.exchange_template = "ce.outbox".to_owned();
        config.format = cloudevents(mode);
        let sink = Sink::RabbitMq(RabbitMqSink::new(config).unwrap());
        sink.deliver(event(42)).await.unwrap();
    }
    let received = admin.read("ce.all", 2, WAIT).await;
    assert_eq!(received.len(), 2);
    for (message, mode) in received
        .iter()
        .zip([CloudEventsMode::Structured, CloudEventsMode::Binary])
    {
        assert_eq!(message.message_id(), Some("42"));
        assert_eq!(message.header("traceparent").as_deref(), Some(TRACEPARENT));
        let headers: Vec<(String, String)> = message
            .properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .keys()
                    .map(|name| {
                        let name = name.as_str().to_owned();
                        let value = message.header(&name).unwrap_or_default();
                        (name, value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let content_type = message
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_owned());
        let binary = headers.iter().any(|(n, _)| n.starts_with("ce-"));
        assert_eq!(binary, mode == CloudEventsMode::Binary, "{headers:?}");
        let decoded = sdk_decode_with(
            "rabbitmq",
            &headers,
            &message.body,
            None,
            content_type.as_deref(),
        );
        assert_is_event_42(&decoded);
    }
    admin.close().await;
}
