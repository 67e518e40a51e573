#![allow(clippy::unwrap_used)]

use super::*;
use chrono::TimeZone;

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
            ("nats-msg-id".into(), "forged".into()),
            ("bad name".into(), "dropped".into()),
            ("multi".into(), "line\r\nbreak".into()),
            ("tenant".into(), "acme".into()),
        ],
        created_at: chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
        next_run_at: None,
    }
}

#[test]
fn message_carries_the_id_metadata_and_event_headers_without_collisions() {
    let message = message(&event()).unwrap();
    assert_eq!(message.payload, Bytes::from_static(b"{\"a\": 1}"));
    let pairs: Vec<(String, String)> = message
        .headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect();
    let expected = [
        ("Nats-Msg-Id", "1234567890123"),
        ("id", "1234567890123"),
        ("event_type", "order.created"),
        ("aggregate_type", "order"),
        ("aggregate_id", "o-1"),
        ("created_at", "2024-01-02T03:04:05.000000Z"),
        ("traceparent", "00-abc-01"),
        ("tenant", "acme"),
    ];
    for (name, value) in expected {
        let found: Vec<&(String, String)> = pairs.iter().filter(|(n, _)| n == name).collect();
        assert_eq!(found.len(), 1, "{name}: {pairs:?}");
        assert_eq!(found[0].1, value, "{name}");
    }
    assert_eq!(pairs.len(), expected.len(), "{pairs:?}");
}

#[test]
fn a_line_break_in_a_fixed_header_is_named() {
    let mut e = event();
    e.aggregate_id = "o\n1".into();
    assert_eq!(message(&e).unwrap_err(), "aggregate_id");
}

#[test]
fn subject_templates_follow_nats_rules() {
    for good in [
        "outbox.{aggregate_type}",
        "{event_type}",
        "a.{aggregate_type}.{event_type}-v1",
        "orders",
    ] {
        parse_subject_template(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for (bad, what) in [
        ("outbox.*", "'*'"),
        ("outbox.>", "'>'"),
        ("out box.{aggregate_type}", "' '"),
        ("outbox..{aggregate_type}", "empty token"),
        (".outbox.{aggregate_type}", "empty token"),
        ("outbox.{aggregate_type}.", "empty token"),
        ("outbox.{aggregate}", "unknown placeholder"),
        ("", "empty"),
    ] {
        let e = parse_subject_template(bad).unwrap_err().to_string();
        assert!(e.contains(what), "{bad:?}: {e}");
    }
}

#[test]
fn rendered_subjects_are_checked() {
    assert!(validate_subject("outbox.order").is_ok());
    for bad in [
        "",
        "outbox.order lines",
        "outbox.",
        "outbox..x",
        "outbox.*",
        "a.>",
        "tab\there",
        &"a".repeat(MAX_SUBJECT_LEN + 1),
    ] {
        assert!(validate_subject(bad).is_err(), "{bad:?} accepted");
    }
}

#[tokio::test]
async fn an_illegal_rendered_subject_is_permanent_without_a_server() {
    let sink = NatsSink::new(NatsSinkConfig::new("nats://127.0.0.1:1")).unwrap();
    let mut e = event();
    e.aggregate_type = "order lines".into();
    let err = sink.deliver(Arc::new(e)).await.unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(
        err.reason().contains("\"outbox.order lines\""),
        "{}",
        err.reason()
    );
}

#[test]
fn classification_table() {
    let t = Duration::from_secs(3);
    let permanent = [
        Failure::NoStream,
        Failure::TooLarge { max_payload: 1024 },
        Failure::JetStream {
            code: 10054,
            description: "message size exceeds maximum allowed".into(),
        },
    ];
    let retryable = [
        Failure::Timeout,
        Failure::ConnectionLost,
        Failure::TooManyPending,
        Failure::JetStream {
            code: 10077,
            description: "maximum messages exceeded".into(),
        },
        Failure::JetStream {
            code: 10047,
            description: "insufficient storage".into(),
        },
        Failure::JetStream {
            code: 99999,
            description: "something new".into(),
        },
        Failure::Other("surprise".into()),
    ];
    for failure in permanent {
        let err = classify(&failure, "outbox.order", "nats://n:4222", t);
        assert!(err.is_permanent(), "{failure:?} should be permanent");
        assert!(
            err.reason().contains("\"outbox.order\""),
            "{}",
            err.reason()
        );
    }
    for failure in retryable {
        let err = classify(&failure, "outbox.order", "nats://n:4222", t);
        assert!(!err.is_permanent(), "{failure:?} should be retryable");
        assert!(
            err.reason().contains("\"outbox.order\""),
            "{}",
            err.reason()
        );
    }
    let no_stream = classify(&Failure::NoStream, "outbox.order", "s", t);
    assert!(
        no_stream.reason().contains("create a stream"),
        "{}",
        no_stream.reason()
    );
    let timeout = classify(&Failure::Timeout, "s", "nats://n-1:4222", t);
    assert!(
        timeout.reason().contains("nats://n-1:4222"),
        "{}",
        timeout.reason()
    );
}

#[test]
fn urls_are_checked_and_never_echoed() {
    for good in [
        "nats://127.0.0.1:4222",
        "tls://nats.example.com:4222",
        "nats://relay:s3cret@n1:4222, nats://relay:s3cret@n2:4222",
        "localhost:4222",
    ] {
        NatsSinkConfig::new(good)
            .validate()
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    assert!(matches!(
        NatsSinkConfig::new(" , ").validate().unwrap_err(),
        NatsSinkError::EmptyUrl
    ));
    let e = NatsSinkConfig::new("http://relay:s3cret@n1:4222")
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("http"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    let e = NatsSinkConfig::new("nats://relay:s3cret@[::1")
        .validate()
        .unwrap_err();
    assert!(matches!(e, NatsSinkError::InvalidUrl { .. }), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");

    for (url, auth) in [
        (
            "nats://relay:s3cret@n1:4222,nats://relay:s3cret@n2:4222",
            NatsAuth::None,
        ),
        ("nats://t0ken@n1:4222,nats://n2:4222", NatsAuth::None),
        (
            "nats://n1:4222,nats://n2:4222",
            NatsAuth::Token(Secret::new("t0ken".into())),
        ),
    ] {
        let config = NatsSinkConfig {
            auth,
            ..NatsSinkConfig::new(url)
        };
        let printed = format!("{config:?} {:?}", NatsSink::new(config.clone()).unwrap());
        assert!(
            !printed.contains("s3cret") && !printed.contains("t0ken"),
            "{printed}"
        );
        assert!(
            printed.contains("n1:4222") && printed.contains("n2:4222"),
            "{printed}"
        );
    }
}

#[test]
fn credentials_and_timeout_are_checked() {
    let config = NatsSinkConfig {
        auth: NatsAuth::Credentials(Secret::new("not a creds file SUAsecret".into())),
        ..NatsSinkConfig::new("nats://n:4222")
    };
    let e = config.validate().unwrap_err();
    assert!(matches!(e, NatsSinkError::Credentials { .. }), "{e}");
    assert!(!e.to_string().contains("SUAsecret"), "{e}");
    let config = NatsSinkConfig {
        timeout: Duration::ZERO,
        ..NatsSinkConfig::new("nats://n:4222")
    };
    assert!(matches!(
        config.validate().unwrap_err(),
        NatsSinkError::ZeroTimeout
    ));
}

#[test]
fn credentials_in_the_url_follow_the_nats_convention() {
    let login = |url: &str| NatsSinkConfig::new(url).parse().map(|(_, _, login)| login);
    assert_eq!(login("nats://n:4222").unwrap(), Login::None);
    assert_eq!(
        login("nats://relay:pa%25ss@n1:4222,nats://n2:4222").unwrap(),
        Login::UserPassword("relay".into(), Secret::new("pa%ss".into()))
    );
    assert_eq!(
        login("nats://t0ken@n:4222").unwrap(),
        Login::Token(Secret::new("t0ken".into()))
    );
    assert!(matches!(
        login("nats://a:b@n1:4222,nats://a:c@n2:4222").unwrap_err(),
        NatsSinkError::MixedUrlLogins
    ));
    let both = NatsSinkConfig {
        auth: NatsAuth::Token(Secret::new("t".into())),
        ..NatsSinkConfig::new("nats://a:b@n:4222")
    };
    assert!(matches!(
        both.validate().unwrap_err(),
        NatsSinkError::TwoLogins
    ));
}
