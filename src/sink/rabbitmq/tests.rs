#![allow(clippy::unwrap_used)]

use super::*;
use chrono::TimeZone;
use lapin::protocol::{AMQPError, AMQPHardError};

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
            ("message_id".into(), "not-reserved".into()),
            ("x".repeat(256), "too long a name".into()),
        ],
        created_at: chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
        next_run_at: None,
    }
}

fn render(template: &str, kind: TemplateKind) -> String {
    Template::parse(template, kind).unwrap().render(&event())
}

#[test]
fn templates_render_placeholders() {
    assert_eq!(
        render(DEFAULT_ROUTING_KEY_TEMPLATE, TemplateKind::RoutingKey),
        "order.order.created"
    );
    assert_eq!(
        render(DEFAULT_EXCHANGE_TEMPLATE, TemplateKind::Exchange),
        "outbox"
    );
    assert_eq!(
        render("events:{aggregate_type}", TemplateKind::Exchange),
        "events:order"
    );
    // Empty: the default exchange, or an empty routing key (fanout exchanges).
    assert_eq!(render("", TemplateKind::Exchange), "");
    assert_eq!(render("", TemplateKind::RoutingKey), "");
    // Routing keys may hold any text.
    assert_eq!(
        render("a/b c#{event_type}", TemplateKind::RoutingKey),
        "a/b c#order.created"
    );
}

#[test]
fn template_errors_name_the_template_and_the_rule() {
    let error = Template::parse("outbox.{aggregate}", TemplateKind::RoutingKey).unwrap_err();
    assert!(
        matches!(&error, RabbitMqSinkError::UnknownPlaceholder { placeholder, kind: TemplateKind::RoutingKey, .. } if placeholder == "aggregate"),
        "{error:?}"
    );
    assert!(error.to_string().contains("routing key"), "{error}");
    assert!(matches!(
        Template::parse("x.{event_type", TemplateKind::Exchange).unwrap_err(),
        RabbitMqSinkError::UnclosedPlaceholder {
            kind: TemplateKind::Exchange,
            ..
        }
    ));
    assert!(matches!(
        Template::parse("out box", TemplateKind::Exchange).unwrap_err(),
        RabbitMqSinkError::IllegalExchangeCharacter { found: ' ', .. }
    ));
    assert!(matches!(
        Template::parse(&"k".repeat(256), TemplateKind::RoutingKey).unwrap_err(),
        RabbitMqSinkError::TemplateTooLong { .. }
    ));
}

#[test]
fn exchange_names_follow_rabbitmq_rules() {
    assert!(validate_exchange_name("").is_ok());
    assert!(validate_exchange_name("amq.topic").is_ok());
    assert!(validate_exchange_name("a-b_c.d:e").is_ok());
    assert!(validate_exchange_name(&"e".repeat(255)).is_ok());
    for bad in ["has space", "slash/x", "ümlaut", &"e".repeat(256)] {
        assert!(validate_exchange_name(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn message_carries_properties_headers_and_the_exact_payload() {
    let (properties, body) = native_message(&event());
    assert_eq!(body.as_ref(), b"{\"a\": 1}");
    assert_eq!(properties.delivery_mode(), &Some(2));
    assert_eq!(
        properties.message_id().as_ref().map(ShortString::as_str),
        Some("1234567890123")
    );
    assert_eq!(
        properties.content_type().as_ref().map(ShortString::as_str),
        Some("application/json")
    );
    assert_eq!(
        properties.kind().as_ref().map(ShortString::as_str),
        Some("order.created")
    );
    assert_eq!(properties.timestamp(), &Some(1_704_164_645));
    let headers = properties.headers().as_ref().unwrap();
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(value)) => {
            Some(String::from_utf8(value.as_bytes().to_vec()).unwrap())
        }
        Some(other) => panic!("header {name} is {other:?}"),
        None => None,
    };
    assert_eq!(text("id").as_deref(), Some("1234567890123"), "never forged");
    assert_eq!(text("event_type").as_deref(), Some("order.created"));
    assert_eq!(text("aggregate_type").as_deref(), Some("order"));
    assert_eq!(text("aggregate_id").as_deref(), Some("o-1"));
    assert_eq!(
        text("created_at").as_deref(),
        Some("2024-01-02T03:04:05.000000Z")
    );
    assert_eq!(text("traceparent").as_deref(), Some("00-abc-01"));
    assert_eq!(text("message_id").as_deref(), Some("not-reserved"));
    assert_eq!(headers.inner().len(), 7, "the over-long name is dropped");
}

#[test]
fn an_overlong_event_type_is_cut_at_a_character_boundary() {
    let mut long = event();
    long.event_type = format!("{}é", "t".repeat(254));
    let (properties, _) = native_message(&long);
    let kind = properties.kind().as_ref().unwrap().as_str();
    assert_eq!(kind.len(), 254);
}

#[test]
fn urls_are_parsed_without_printing_the_password() {
    let (uri, endpoint) = parse_url("amqp://relay:s3cret@10.1.2.3:5673/%2f").unwrap();
    assert_eq!(uri.authority.host, "10.1.2.3", "IP hosts are kept");
    assert_eq!(uri.authority.port, 5673);
    assert_eq!(uri.vhost, "/");
    assert_eq!(uri.authority.userinfo.password, "s3cret");
    assert_eq!(endpoint, "amqp://10.1.2.3:5673/%2F");

    let (uri, endpoint) = parse_url("amqps://relay:pw@rabbit.example.com/prod").unwrap();
    assert_eq!(uri.authority.host, "rabbit.example.com");
    assert_eq!(uri.authority.port, 5671);
    assert_eq!(endpoint, "amqps://rabbit.example.com:5671/prod");

    let (uri, _) = parse_url("amqp://u:p@[::1]:5672/v").unwrap();
    assert_eq!(uri.authority.host, "::1");

    for (bad, rule) in [
        ("rabbit:5672", "amqp or amqps"),
        ("http://u:s3cret@h/", "amqp or amqps"),
        (
            "amqp://u:s3cret@h:5672/%2f?heartbeat=often",
            "not a valid AMQP URI",
        ),
        ("not a url s3cret", "not a valid url"),
    ] {
        let error = parse_url(bad).unwrap_err().to_string();
        assert!(error.contains(rule), "{bad}: {error}");
        assert!(!error.contains("s3cret"), "password echoed: {error}");
    }
    let config = RabbitMqSinkConfig::new("amqp://relay:s3cret@rabbit:5672/%2f");
    assert!(!format!("{config:?}").contains("s3cret"));
    let sink = RabbitMqSink::new(config).unwrap();
    assert!(!format!("{sink:?}").contains("s3cret"));
}

fn protocol_error(kind: AMQPErrorKind, text: &str) -> lapin::Error {
    ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
}

#[test]
fn channel_errors_are_permanent_only_for_the_message_they_name() {
    let endpoint = "amqp://h:5672/%2F";
    let missing = protocol_error(
        AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
        "NOT_FOUND - no exchange 'ghost' in vhost '/'",
    );
    let error = classify_error(&missing, "ghost", 10, endpoint);
    assert!(error.is_permanent(), "{error:?}");
    assert!(error.reason().contains("declare it"), "{}", error.reason());
    // Another message in flight on the channel the broker closed.
    assert!(!classify_error(&missing, "outbox", 10, endpoint).is_permanent());

    let refused = protocol_error(
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
        "ACCESS_REFUSED - access to exchange 'outbox' in vhost '/' refused for user 'relay'",
    );
    assert!(classify_error(&refused, "outbox", 10, endpoint).is_permanent());

    let too_large = protocol_error(
        AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
        "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1000",
    );
    assert!(classify_error(&too_large, "outbox", 2000, endpoint).is_permanent());
    assert!(!classify_error(&too_large, "outbox", 10, endpoint).is_permanent());

    let forced = protocol_error(
        AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
    );
    assert!(!classify_error(&forced, "outbox", 10, endpoint).is_permanent());

    let io: lapin::Error = ErrorKind::IOError(Arc::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionReset,
    )))
    .into();
    let error = classify_error(&io, "outbox", 10, endpoint);
    assert!(!error.is_permanent());
    assert!(error.reason().contains(endpoint), "{}", error.reason());
    assert!(!classify_error(
        &ErrorKind::MissingHeartbeatError.into(),
        "outbox",
        1,
        endpoint
    )
    .is_permanent());
}

#[test]
fn confirmations_are_classified() {
    let endpoint = "amqp://h:5672/%2F";
    assert!(classify_confirmation(Confirmation::Ack(None), "outbox", "k", endpoint).is_ok());
    let nack = classify_confirmation(Confirmation::Nack(None), "outbox", "k", endpoint);
    assert!(
        matches!(nack, Err(DeliveryError::Retryable { .. })),
        "{nack:?}"
    );
    let not_requested = classify_confirmation(Confirmation::NotRequested, "outbox", "k", endpoint);
    assert!(matches!(
        not_requested,
        Err(DeliveryError::Retryable { .. })
    ));
}

#[test]
fn the_size_limit_is_read_from_the_broker_text() {
    assert_eq!(
        max_size_in(
            "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1000"
        ),
        Some(1000)
    );
    assert_eq!(max_size_in("PRECONDITION_FAILED - something else"), None);
}

#[test]
fn validation_rejects_a_zero_timeout() {
    let mut config = RabbitMqSinkConfig::new("amqp://h");
    config.validate().unwrap();
    config.delivery_timeout = Duration::ZERO;
    assert!(matches!(
        config.validate().unwrap_err(),
        RabbitMqSinkError::ZeroTimeout
    ));
}

#[test]
fn ca_certificates_need_amqps_and_a_pem_certificate() {
    let mut config = RabbitMqSinkConfig::new("amqp://h");
    config.ca_pem = Some("-----BEGIN CERTIFICATE-----\n".to_owned());
    assert!(matches!(
        config.validate().unwrap_err(),
        RabbitMqSinkError::CaWithoutTls
    ));
    config.url = "amqps://h".to_owned();
    config.ca_pem = Some("not pem".to_owned());
    assert!(matches!(
        config.validate().unwrap_err(),
        RabbitMqSinkError::CaCertificates
    ));
}
