#![allow(clippy::unwrap_used)]

use super::*;
use chrono::TimeZone;

const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn event(id: i64, payload: &str) -> OutboxEvent {
    OutboxEvent {
        id,
        aggregate_type: "order".into(),
        aggregate_id: "o-1".into(),
        event_type: "order.created".into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        headers: vec![("traceparent".into(), "00-abc-01".into())],
        created_at: chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::microseconds(6),
        next_run_at: None,
    }
}

fn signer(secrets: &[&str]) -> Signer {
    let keys = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| HmacSha256::new_from_slice(&decode_secret(s, i + 1).unwrap()).unwrap())
        .collect();
    Signer { keys }
}

fn status(code: u16, retry_after: Option<Duration>) -> Answer {
    Answer::Status {
        status: StatusCode::from_u16(code).unwrap(),
        retry_after,
    }
}

#[test]
fn spec_test_vector_signs_identically() {
    let signature = signer(&[SPEC_SECRET])
        .sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
    assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

#[test]
fn every_secret_of_a_rotation_signs_space_separated() {
    let other = format!("whsec_{}", STANDARD.encode([7u8; 32]));
    let both = signer(&[SPEC_SECRET, &other])
        .sign("1", "1614265330", b"{}")
        .unwrap();
    let first = signer(&[SPEC_SECRET])
        .sign("1", "1614265330", b"{}")
        .unwrap();
    let second = signer(&[&other]).sign("1", "1614265330", b"{}").unwrap();
    assert_eq!(both, format!("{first} {second}"));
    assert_ne!(first, second);
    assert!(signer(&[]).sign("1", "1", b"{}").is_none());
}

#[test]
fn body_has_the_documented_shape_in_order() {
    let body = render_body(&event(42, r#"{"total": 10, "items": [1, 2]}"#)).unwrap();
    let text = std::str::from_utf8(&body).unwrap();
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "id": 42,
            "type": "order.created",
            "timestamp": "2024-01-02T03:04:05.000006Z",
            "aggregate_type": "order",
            "aggregate_id": "o-1",
            "data": {"total": 10, "items": [1, 2]},
        })
    );
    let keys = [
        "\"id\"",
        "\"type\"",
        "\"timestamp\"",
        "\"aggregate_type\"",
        "\"aggregate_id\"",
        "\"data\"",
    ];
    let positions: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "key order: {text}"
    );
    assert!(
        !text.contains("traceparent"),
        "row headers are not part of the body: {text}"
    );
}

#[test]
fn payload_is_embedded_byte_for_byte() {
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let payloads = [
        r#"[1, "two", {"three": 3.0}]"#,
        r#""just a string""#,
        "12345678901234567890.5",
        "-0.0",
        "null",
        r#"{"unicode": "grüße 🚀 \u00e9", "escaped": "a\"b\\c\n"}"#,
    ];
    for (i, payload) in payloads.iter().enumerate() {
        let body = render_body(&event(i as i64, payload)).unwrap();
        let parsed: Data<'_> = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.data.get(), *payload, "payload #{i} changed");
    }
}

#[test]
fn invalid_payload_is_permanent_and_named() {
    let err = render_body(&event(7, "{not json")).unwrap_err();
    assert!(err.is_permanent());
    assert!(err.reason().contains("event 7"), "{}", err.reason());
}

#[test]
fn retry_after_accepts_seconds_and_http_dates() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 07:28:00
    let secs = |s| Some(Duration::from_secs(s));
    assert_eq!(parse_retry_after("2", now), secs(2));
    assert_eq!(parse_retry_after(" 120 ", now), secs(120));
    assert_eq!(parse_retry_after("0", now), secs(0));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
        secs(30)
    );
    // RFC 850 and asctime forms are legal HTTP dates too.
    assert_eq!(
        parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
        secs(60)
    );
    assert_eq!(parse_retry_after("Wed Oct 21 07:28:10 2015", now), secs(10));
    // Capped.
    assert_eq!(parse_retry_after("999999999", now), Some(MAX_RETRY_AFTER));
    assert_eq!(
        parse_retry_after("99999999999999999999999", now),
        Some(MAX_RETRY_AFTER)
    );
    assert_eq!(
        parse_retry_after("Fri, 21 Oct 2016 07:28:00 GMT", now),
        Some(MAX_RETRY_AFTER)
    );
    // Ignored.
    for garbage in [
        "",
        "soon",
        "-5",
        "1.5",
        "2 s",
        "Wed, 21 Oct 2015 07:27:00 GMT",
    ] {
        assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
    }
}

#[test]
fn statuses_are_classified_by_what_the_caller_should_do() {
    let origin = "https://hooks.example.com";
    let timeout = Duration::from_secs(1);
    for code in [200, 201, 202, 204, 299] {
        assert_eq!(
            classify(status(code, None), origin, timeout),
            Ok(()),
            "{code}"
        );
    }
    for code in [408, 429, 500, 502, 503, 504, 599] {
        let err = classify(status(code, None), origin, timeout).unwrap_err();
        assert!(!err.is_permanent(), "{code} must be retryable");
    }
    for code in [301, 302, 303, 307, 308] {
        let err = classify(status(code, None), origin, timeout).unwrap_err();
        assert!(!err.is_permanent(), "{code} must be retryable");
        assert!(
            err.reason().contains("redirects are not followed"),
            "{}",
            err.reason()
        );
    }
    for code in [400, 401, 403, 404, 405, 409, 410, 413, 422, 451] {
        let err = classify(status(code, None), origin, timeout).unwrap_err();
        assert!(err.is_permanent(), "{code} must be permanent");
    }
    for code in [101, 600, 999] {
        let err = classify(status(code, None), origin, timeout).unwrap_err();
        assert!(!err.is_permanent(), "{code} must be retryable");
    }
}

#[test]
fn retryable_statuses_carry_retry_after_and_name_origin_and_status() {
    let pause = Some(Duration::from_secs(2));
    let err = classify(
        status(429, pause),
        "https://hooks.example.com",
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert_eq!(
        err,
        DeliveryError::Retryable {
            reason: "webhook https://hooks.example.com answered 429 Too Many Requests".into(),
            retry_after: pause,
        }
    );
    let err = classify(
        status(500, None),
        "https://hooks.example.com",
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert_eq!(
        err.reason(),
        "webhook https://hooks.example.com answered 500 Internal Server Error"
    );
    let err = classify(
        status(410, pause),
        "https://h.example",
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(err
        .reason()
        .starts_with("webhook https://h.example answered 410 Gone"));
}

fn config(url: &str, secrets: &[&str]) -> WebhookSinkConfig {
    WebhookSinkConfig {
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        ..WebhookSinkConfig::new(url)
    }
}

/// What `new` rejects the config for, checking that `validate` says the same.
fn build_error(config: WebhookSinkConfig) -> String {
    let invalid = config.validate().unwrap_err().to_string();
    let rejected = WebhookSink::new(config).unwrap_err().to_string();
    assert_eq!(invalid, rejected, "validate and new disagree");
    rejected
}

#[test]
fn config_is_validated_without_echoing_secrets_or_urls() {
    assert!(WebhookSink::new(config(
        "https://hooks.example.com/x?token=t",
        &[SPEC_SECRET]
    ))
    .is_ok());
    assert!(WebhookSink::new(WebhookSinkConfig {
        allow_private: true,
        ..config("http://127.0.0.1:9/", &[])
    })
    .is_ok());

    let msg = build_error(config("hooks.example.com/x?token=s3cr3t", &[]));
    assert!(
        msg.starts_with("webhook url is not a valid url (relative URL without a base)"),
        "{msg}"
    );
    assert!(!msg.contains("s3cr3t"), "{msg}");
    let msg = build_error(config("ftp://hooks.example.com/", &[]));
    assert_eq!(msg, "webhook url must use http or https, not \"ftp\"");

    let short = format!("whsec_{}", STANDARD.encode([1u8; 16]));
    let long = format!("whsec_{}", STANDARD.encode([1u8; 65]));
    let cases = [
        (
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "secret #2 does not start with \"whsec_\"",
        ),
        ("whsec_!!!notbase64!!!", "secret #2 is not valid base64"),
        (
            short.as_str(),
            "secret #2 decodes to 16 bytes; it must be 24 to 64 bytes",
        ),
        (long.as_str(), "secret #2 decodes to 65 bytes"),
    ];
    for (bad, expected) in cases {
        let msg = build_error(config("https://h.example/", &[SPEC_SECRET, bad]));
        assert!(msg.contains(expected), "{msg}");
        assert!(!msg.contains(bad), "secret echoed: {msg}");
    }
    let max = format!("whsec_{}", STANDARD.encode([1u8; 64]));
    assert!(WebhookSink::new(config("https://h.example/", &[&max])).is_ok());

    let zero_timeout = WebhookSinkConfig {
        timeout: Duration::ZERO,
        ..config("https://h.example/", &[])
    };
    assert_eq!(
        build_error(zero_timeout),
        "webhook timeout must be greater than zero"
    );
    let zero_concurrency = WebhookSinkConfig {
        max_concurrency: 0,
        ..config("https://h.example/", &[])
    };
    assert_eq!(
        build_error(zero_concurrency),
        "webhook concurrency must be at least 1"
    );
}

#[test]
fn debug_output_hides_secrets_and_url_paths() {
    let config = config(
        "https://user:pw@hooks.example.com/hook?token=t0k",
        &[SPEC_SECRET],
    );
    let printed = format!("{config:?}");
    assert!(printed.contains("https://hooks.example.com"), "{printed}");
    for hidden in ["t0k", "pw", "MfKQ9r8"] {
        assert!(!printed.contains(hidden), "{printed}");
    }
    let sink = WebhookSink::new(config).unwrap();
    let printed = format!("{sink:?}");
    for hidden in ["t0k", "pw", "MfKQ9r8"] {
        assert!(!printed.contains(hidden), "{printed}");
    }
}

#[test]
fn secret_lists_split_on_spaces_and_commas() {
    let other = format!("whsec_{}", STANDARD.encode([9u8; 32]));
    assert_eq!(parse_secrets(SPEC_SECRET).unwrap(), vec![SPEC_SECRET]);
    for list in [
        format!("{SPEC_SECRET} {other}"),
        format!("{SPEC_SECRET},{other}"),
        format!("  {SPEC_SECRET} ,\n {other},"),
    ] {
        assert_eq!(
            parse_secrets(&list).unwrap(),
            vec![SPEC_SECRET, other.as_str()]
        );
    }
    for empty in ["", "  ", " , ,"] {
        assert!(matches!(
            parse_secrets(empty),
            Err(WebhookSinkError::NoSecrets)
        ));
    }
    let err = parse_secrets(&format!("{SPEC_SECRET}, whsec_short")).unwrap_err();
    assert!(
        matches!(
            err,
            WebhookSinkError::SecretLength { position: 2, .. }
                | WebhookSinkError::SecretEncoding { position: 2 }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("short"), "{err}");
}

fn private(url: &str) -> WebhookSinkConfig {
    WebhookSinkConfig {
        allow_private: true,
        ..config(url, &[])
    }
}

#[tokio::test]
async fn check_resolves_the_host_without_sending() {
    let sink = WebhookSink::new(private("http://127.0.0.1:9/")).unwrap();
    sink.check(Duration::from_secs(1)).await.unwrap();
    let sink = WebhookSink::new(private("http://localhost:9/")).unwrap();
    sink.check(Duration::from_secs(5)).await.unwrap();
    let sink = WebhookSink::new(config("http://no-such-host.invalid/", &[])).unwrap();
    let err = sink.check(Duration::from_secs(5)).await.unwrap_err();
    assert!(!err.is_permanent());
    assert!(
        err.reason().contains("no-such-host.invalid"),
        "{}",
        err.reason()
    );
}

#[test]
fn ip_literal_urls_the_guard_refuses_are_config_errors() {
    for (url, shown, rule) in [
        (
            "http://127.0.0.1:8080/x?token=s3cr3t",
            "127.0.0.1",
            "loopback address (127.0.0.0/8)",
        ),
        ("http://[::1]/x", "::1", "loopback address (::1/128)"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254",
            "link-local (cloud metadata) address (169.254.0.0/16)",
        ),
        (
            "https://[::ffff:10.0.0.1]/",
            "::ffff:10.0.0.1",
            "IPv4-mapped private address (10.0.0.0/8)",
        ),
        // The url crate normalises other spellings of an IPv4 address.
        ("http://2130706433/", "127.0.0.1", "loopback address"),
        ("http://0x7f.1/", "127.0.0.1", "loopback address"),
        (
            "http://[fd00:ec2::254]/",
            "fd00:ec2::254",
            "private (unique local)",
        ),
    ] {
        let msg = build_error(config(url, &[]));
        assert!(
            msg.starts_with(&format!("webhook url points at {shown}, a {rule}")),
            "{url}: {msg}"
        );
        assert!(
            msg.ends_with("unless DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE=true"),
            "{msg}"
        );
        assert!(!msg.contains("s3cr3t"), "{msg}");
        assert!(WebhookSink::new(private(url)).is_ok(), "{url}");
    }
    let named = WebhookSinkConfig {
        name: "webhook:billing".into(),
        ..config("http://10.1.2.3/", &[])
    };
    assert!(build_error(named).ends_with("DISPATCHBOX_WEBHOOK_BILLING_ALLOW_PRIVATE=true"));
    assert!(WebhookSink::new(config("https://93.184.215.14/", &[])).is_ok());
}

#[tokio::test]
async fn check_refuses_a_host_that_resolves_only_to_refused_addresses() {
    let sink = WebhookSink::new(config("http://localhost:9/hook?token=s3cr3t", &[])).unwrap();
    let err = sink.check(Duration::from_secs(5)).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(
        err.reason().starts_with(
            "webhook http://localhost:9 refused by the SSRF guard: host \"localhost\" resolves to "
        ),
        "{}",
        err.reason()
    );
    assert!(
        err.reason().contains("loopback address"),
        "{}",
        err.reason()
    );
    assert!(
        err.reason()
            .contains("DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE=true"),
        "{}",
        err.reason()
    );
    assert!(!err.reason().contains("s3cr3t"));
}

#[test]
fn header_settings_are_validated_by_the_sink() {
    let with = |headers: &[(&str, &str)], forward: &[&str]| WebhookSinkConfig {
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        forward_headers: forward.iter().map(|n| n.to_string()).collect(),
        ..config("https://h.example/", &[])
    };
    assert!(WebhookSink::new(with(&[("X-Api-Key", "k")], &["traceparent"])).is_ok());
    let msg = build_error(with(&[("webhook-signature", "v1,forged")], &[]));
    assert!(
        msg.starts_with("webhook header webhook-signature is set by the relay"),
        "{msg}"
    );
    assert!(!msg.contains("forged"), "{msg}");
    let msg = build_error(with(&[], &["traceparent", "Host"]));
    assert!(
        msg.starts_with("webhook header host is set by the relay"),
        "{msg}"
    );
    let msg = build_error(with(&[("X-Api-Key", "s3cret\nX-Evil: 1")], &[]));
    assert!(msg.contains("x-api-key has an invalid value"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");

    let printed = format!("{:?}", with(&[("X-Api-Key", "s3cret")], &["traceparent"]));
    assert!(printed.contains("X-Api-Key"), "{printed}");
    assert!(!printed.contains("s3cret"), "{printed}");
}
