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
fn verdicts_are_classified() {
    let endpoint = "amqp://h:5672/%2F";
    let classify = |verdict| classify_verdict(verdict, "outbox", "k", 10, endpoint);
    assert!(classify(Verdict::Delivered).is_ok());
    let unroutable = classify(Verdict::Returned {
        reply_code: 312,
        reply_text: "NO_ROUTE".to_owned(),
    })
    .unwrap_err();
    assert!(unroutable.is_permanent(), "{unroutable:?}");
    assert!(
        unroutable.reason().contains("\"k\" to no queue"),
        "{unroutable:?}"
    );
    let other = classify(Verdict::Returned {
        reply_code: 313,
        reply_text: "NO_CONSUMERS".to_owned(),
    })
    .unwrap_err();
    assert!(
        other.is_permanent() && other.reason().contains("313 NO_CONSUMERS"),
        "{other:?}"
    );
    let nack = classify(Verdict::Nacked);
    assert!(
        matches!(nack, Err(DeliveryError::Retryable { .. })),
        "{nack:?}"
    );
    assert!(matches!(
        classify(Verdict::NotRequested),
        Err(DeliveryError::Retryable { .. })
    ));
    let failed = classify(Verdict::Failed(protocol_error(
        AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
        "NOT_FOUND - no exchange 'outbox' in vhost '/'",
    )));
    assert!(failed.unwrap_err().is_permanent());
}

/// A message the broker returned as unroutable, as lapin hands it out.
fn returned(id: Option<&str>) -> BasicReturnMessage {
    let mut delivery = lapin::message::Delivery::mock(
        0,
        "outbox".into(),
        "k".into(),
        false,
        b"secret payload".to_vec(),
    );
    if let Some(id) = id {
        delivery.properties = BasicProperties::default().with_message_id(id.into());
    }
    BasicReturnMessage {
        delivery,
        reply_code: 312,
        reply_text: "NO_ROUTE".into(),
    }
}

fn ack(id: Option<&str>) -> Result<Confirmation, lapin::Error> {
    Ok(Confirmation::Ack(id.map(|id| returned(Some(id)))))
}

/// Judges everything the ledger may judge, as `(key, delivered?)` sorted by key; panics
/// on a verdict other than delivered or returned.
fn judged(ledger: &mut Ledger) -> Vec<(u64, bool)> {
    ledger.all_ready();
    let mut judged: Vec<(u64, bool)> = ledger
        .judge()
        .into_iter()
        .map(|(key, verdict)| match verdict {
            Verdict::Delivered => (key, true),
            Verdict::Returned {
                reply_code: 312, ..
            } => (key, false),
            other => panic!("{key}: {other:?}"),
        })
        .collect();
    judged.sort_unstable();
    judged
}

#[test]
fn a_return_on_another_messages_confirm_is_matched_by_message_id() {
    // Given four publications on one channel, 11 and 13 unroutable.
    let mut ledger = Ledger::default();
    for (key, id) in [(0, "10"), (1, "11"), (2, "12"), (3, "13")] {
        ledger.open(key, 1, id.to_owned());
    }
    // When lapin hands 11's return to 10's confirm and 13's to 12's (a multiple ack
    // completing its confirms in hash-map order), and 11 and 13 get bare acks.
    assert_eq!(ledger.resolve(0, ack(Some("11"))), Filed::Pending);
    assert_eq!(ledger.resolve(1, ack(None)), Filed::Pending);
    assert_eq!(ledger.resolve(3, ack(None)), Filed::Pending);
    assert_eq!(ledger.resolve(2, ack(Some("13"))), Filed::Pending);
    // Then the returns go to their own messages.
    assert_eq!(
        judged(&mut ledger),
        [(0, true), (1, false), (2, true), (3, false)]
    );
    assert_eq!(ledger.strays, 0);
    assert!(ledger.open.is_empty() && ledger.returns.is_empty() && ledger.owners.is_empty());
}

#[test]
fn a_return_waits_for_its_owner_and_is_judged_with_it() {
    // Given a routed message (key 0) whose confirm carries the return of an unroutable one
    // (key 1) whose confirm has not been seen yet.
    let mut ledger = Ledger::default();
    ledger.open(0, 1, "20".to_owned());
    ledger.open(1, 1, "21".to_owned());
    ledger.resolve(0, ack(Some("21")));
    // When the first is judged alone, it is delivered; the return stays filed.
    assert_eq!(judged(&mut ledger), [(0, true)]);
    assert_eq!(ledger.returns.len(), 1);
    // Then the second, acked bare, is judged returned.
    ledger.resolve(1, ack(None));
    assert_eq!(judged(&mut ledger), [(1, false)]);
    assert!(ledger.returns.is_empty());
}

#[test]
fn a_return_can_arrive_before_its_publication_is_opened() {
    // Given a routed message whose confirm (an earlier multiple ack) carries the return of a
    // message whose publish has not come back to the publisher yet.
    let mut ledger = Ledger::default();
    ledger.open(0, 1, "60".to_owned());
    ledger.resolve(0, ack(Some("61")));
    assert_eq!(judged(&mut ledger), [(0, true)]);
    // When that publish comes back and its bare ack resolves, the return is still filed
    // for it: a sweep happens only once every completed publish is opened.
    ledger.open(1, 1, "61".to_owned());
    ledger.sweep();
    ledger.resolve(1, ack(None));
    assert_eq!(judged(&mut ledger), [(1, false)]);
    assert_eq!(ledger.strays, 0);
}

#[test]
fn only_judged_ready_publications_are_answered() {
    let mut ledger = Ledger::default();
    ledger.open(0, 1, "30".to_owned());
    ledger.open(1, 1, "31".to_owned());
    ledger.resolve(0, ack(None));
    let mark = ledger.resolved_count();
    ledger.resolve(1, ack(None));
    ledger.ready_up_to(mark);
    let first: Vec<u64> = ledger.judge().into_iter().map(|(key, _)| key).collect();
    assert_eq!(first, [0]);
    assert_eq!(judged(&mut ledger), [(1, true)]);
}

#[test]
fn returns_are_matched_within_their_channel_and_strays_are_counted() {
    // Given the same event published on channel 1 (timed out, still unresolved) and again
    // on channel 2.
    let mut ledger = Ledger::default();
    ledger.open(0, 1, "40".to_owned());
    assert!(ledger.expire(0));
    assert!(!ledger.expire(0), "answered once");
    ledger.open(1, 2, "40".to_owned());
    // When channel 1's confirm resolves carrying its own return, that return is consumed
    // there and the publication is gone.
    assert_eq!(ledger.resolve(0, ack(Some("40"))), Filed::Closed);
    // And a return that names no open publication (or none at all) is a stray.
    ledger.open(2, 2, "41".to_owned());
    ledger.resolve(2, ack(Some("99")));
    let mut nameless = ack(None);
    if let Ok(Confirmation::Ack(slot)) = &mut nameless {
        *slot = Some(returned(None));
    }
    ledger.resolve(1, nameless);
    assert_eq!(ledger.strays, 0, "strays are only counted by a sweep");
    ledger.sweep();
    assert_eq!(ledger.strays, 2);
    // Then the channel 2 publications are both delivered.
    assert_eq!(judged(&mut ledger), [(1, true), (2, true)]);
    assert_eq!(ledger.resolve(7, ack(None)), Filed::Unknown);
}

#[test]
fn nacks_and_failures_keep_their_meaning_unless_returned() {
    let mut ledger = Ledger::default();
    for key in 0..4 {
        ledger.open(key, 1, format!("5{key}"));
    }
    ledger.resolve(0, Ok(Confirmation::Nack(Some(returned(Some("51"))))));
    ledger.resolve(1, Ok(Confirmation::Nack(None)));
    ledger.resolve(
        2,
        Err(protocol_error(
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
            "NOT_FOUND - no exchange 'x' in vhost '/'",
        )),
    );
    ledger.resolve(3, Ok(Confirmation::NotRequested));
    ledger.all_ready();
    let mut verdicts = ledger.judge();
    verdicts.sort_by_key(|(key, _)| *key);
    assert!(matches!(verdicts[0].1, Verdict::Nacked), "{verdicts:?}");
    assert!(
        matches!(
            verdicts[1].1,
            Verdict::Returned {
                reply_code: 312,
                ..
            }
        ),
        "{verdicts:?}"
    );
    assert!(matches!(verdicts[2].1, Verdict::Failed(_)), "{verdicts:?}");
    assert!(
        matches!(verdicts[3].1, Verdict::NotRequested),
        "{verdicts:?}"
    );
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
