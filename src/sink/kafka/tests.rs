#![allow(clippy::unwrap_used)]

use super::*;
use bytes::Bytes;
use chrono::TimeZone;
use rdkafka::message::Headers;

fn event() -> OutboxEvent {
    OutboxEvent {
        id: 1234567890123,
        aggregate_type: "order".into(),
        aggregate_id: "o-1".into(),
        event_type: "order.created".into(),
        payload: Bytes::from_static(b"{\"a\": 1}"),
        headers: vec![
            ("traceparent".into(), "00-abc-01".into()),
            ("id".into(), "forged".into()),
            ("tenant".into(), "acme".into()),
        ],
        created_at: chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
        next_run_at: None,
    }
}

fn render(template: &str, event: &OutboxEvent) -> String {
    TopicTemplate::parse(template).unwrap().render(event)
}

#[test]
fn template_renders_placeholders() {
    let e = event();
    assert_eq!(render(DEFAULT_TOPIC_TEMPLATE, &e), "outbox.order");
    assert_eq!(render("{event_type}", &e), "order.created");
    assert_eq!(
        render("x.{aggregate_type}.{event_type}-v1", &e),
        "x.order.order.created-v1"
    );
    assert_eq!(render("{aggregate_type}{aggregate_type}", &e), "orderorder");
    assert_eq!(render("static", &e), "static");
}

#[test]
fn template_errors_name_the_problem() {
    let unknown = TopicTemplate::parse("outbox.{aggregate}").unwrap_err();
    assert!(
        matches!(&unknown, KafkaSinkError::UnknownPlaceholder { placeholder, .. } if placeholder == "aggregate")
    );
    assert!(unknown.to_string().contains("{aggregate}"), "{unknown}");
    assert!(matches!(
        TopicTemplate::parse("outbox.{aggregate_type").unwrap_err(),
        KafkaSinkError::UnclosedPlaceholder { .. }
    ));
    assert!(matches!(
        TopicTemplate::parse("outbox/{aggregate_type}").unwrap_err(),
        KafkaSinkError::IllegalTemplateCharacter { found: '/', .. }
    ));
    assert!(matches!(
        TopicTemplate::parse("a}b").unwrap_err(),
        KafkaSinkError::IllegalTemplateCharacter { found: '}', .. }
    ));
    assert!(matches!(
        TopicTemplate::parse("").unwrap_err(),
        KafkaSinkError::EmptyTemplate
    ));
}

#[test]
fn topic_names_follow_kafka_rules() {
    assert!(validate_topic_name("outbox.order_v1-x").is_ok());
    assert!(validate_topic_name(&"a".repeat(249)).is_ok());
    for bad in [
        "",
        ".",
        "..",
        "has space",
        "slash/x",
        "ümlaut",
        &"a".repeat(250),
    ] {
        assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn headers_carry_metadata_then_event_headers_without_collisions() {
    let headers = native_headers(&event());
    let pairs: Vec<(String, String)> = headers
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    let expected = [
        ("id", "1234567890123"),
        ("event_type", "order.created"),
        ("aggregate_type", "order"),
        ("aggregate_id", "o-1"),
        ("created_at", "2024-01-02T03:04:05.000000Z"),
        ("traceparent", "00-abc-01"),
        ("tenant", "acme"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(pairs, expected);
}

#[test]
fn classification_table() {
    use RDKafkaErrorCode as C;
    let permanent = [
        C::MessageSizeTooLarge,
        C::InvalidMessageSize,
        C::UnknownTopic,
        C::UnknownTopicOrPartition,
        C::InvalidTopic,
        C::TopicAuthorizationFailed,
        C::ClusterAuthorizationFailed,
        C::PolicyViolation,
        C::InvalidRecord,
    ];
    let retryable = [
        C::MessageTimedOut,
        C::RequestTimedOut,
        C::QueueFull,
        C::AllBrokersDown,
        C::BrokerTransportFailure,
        C::NetworkException,
        C::NotEnoughReplicas,
        C::NotEnoughReplicasAfterAppend,
        C::LeaderNotAvailable,
        C::NotLeaderForPartition,
        C::SaslAuthenticationFailed,
        C::Fatal,
        C::OutOfOrderSequenceNumber,
        C::PurgeQueue,
        C::Unknown,
    ];
    for code in permanent {
        let err = classify(
            &KafkaError::MessageProduction(code),
            "outbox.order",
            "b:9092",
        );
        assert!(err.is_permanent(), "{code:?} should be permanent");
        assert!(
            err.reason().contains("\"outbox.order\""),
            "{code:?}: {}",
            err.reason()
        );
    }
    for code in retryable {
        let err = classify(
            &KafkaError::MessageProduction(code),
            "outbox.order",
            "b:9092",
        );
        assert!(!err.is_permanent(), "{code:?} should be retryable");
        assert!(
            err.reason().contains("\"outbox.order\""),
            "{code:?}: {}",
            err.reason()
        );
    }
    let timeout = classify(
        &KafkaError::MessageProduction(C::MessageTimedOut),
        "t",
        "broker-1:9092",
    );
    assert!(
        timeout.reason().contains("broker-1:9092"),
        "{}",
        timeout.reason()
    );
    assert!(matches!(
        classify(&KafkaError::MessageProduction(C::QueueFull), "t", "b"),
        DeliveryError::Retryable {
            retry_after: Some(_),
            ..
        }
    ));
    assert!(!classify(&KafkaError::Canceled, "t", "b").is_permanent());
}

#[test]
fn config_errors_do_not_echo_property_values() {
    let mut config = KafkaSinkConfig::new("127.0.0.1:1");
    config
        .properties
        .push(("no.such.property".into(), "s3cret".into()));
    let invalid = config.validate().unwrap_err();
    let err = KafkaSink::new(config).unwrap_err();
    for err in [&invalid, &err] {
        assert!(matches!(err, KafkaSinkError::Property { name, .. } if name == "no.such.property"));
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    let mut config = KafkaSinkConfig::new("127.0.0.1:1");
    config
        .properties
        .push(("sasl.password".into(), "s3cret".into()));
    let sink = KafkaSink::new(config.clone()).unwrap();
    assert!(!format!("{sink:?} {config:?}").contains("s3cret"));
}

#[test]
fn illegal_rendered_topic_is_permanent_without_touching_the_broker() {
    let sink = KafkaSink::new(KafkaSinkConfig::new("127.0.0.1:1")).unwrap();
    let mut e = event();
    e.aggregate_type = "order lines".into();
    let Err(err) = sink.enqueue(&e, &sink.topic_for(&e)) else {
        panic!("an illegal topic was enqueued")
    };
    assert!(err.is_permanent());
    assert!(
        err.reason().contains("\"outbox.order lines\""),
        "{}",
        err.reason()
    );
}
