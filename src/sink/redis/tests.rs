#![allow(clippy::unwrap_used)]

use super::*;
use chrono::TimeZone;

fn event() -> OutboxEvent {
    OutboxEvent {
        id: 42,
        aggregate_type: "order".into(),
        aggregate_id: "o-1".into(),
        event_type: "order.created".into(),
        payload: Bytes::from_static("{\"a\": \"ü\"}".as_bytes()),
        headers: vec![
            ("traceparent".into(), "00-abc-01".into()),
            ("id".into(), "forged".into()),
        ],
        created_at: chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
        next_run_at: None,
    }
}

#[test]
fn fields_carry_metadata_payload_and_prefixed_headers() {
    let fields: Vec<(String, String)> = fields(&event())
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.to_vec()).unwrap()))
        .collect();
    let expected = [
        ("id", "42"),
        ("event_type", "order.created"),
        ("aggregate_type", "order"),
        ("aggregate_id", "o-1"),
        ("created_at", "2024-01-02T03:04:05.000000Z"),
        ("payload", "{\"a\": \"ü\"}"),
        ("header.traceparent", "00-abc-01"),
        ("header.id", "forged"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(fields, expected);
}

#[test]
fn xadd_trims_approximately_when_asked() {
    let args = |maxlen| {
        let command = xadd("s", maxlen, &[("id".to_owned(), Bytes::from_static(b"1"))]);
        command
            .args_iter()
            .map(|arg| match arg {
                ::redis::Arg::Simple(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                _ => "<other>".to_owned(),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(args(None), ["XADD", "s", "*", "id", "1"]);
    assert_eq!(
        args(Some(100)),
        ["XADD", "s", "MAXLEN", "~", "100", "*", "id", "1"]
    );
}

#[test]
fn classification_table() {
    for code in ["WRONGTYPE", "NOPERM"] {
        let err = classify_reply(code, "detail", "outbox.order", "redis://r:6379");
        assert!(err.is_permanent(), "{code} should be permanent");
        assert!(
            err.reason().contains("\"outbox.order\""),
            "{}",
            err.reason()
        );
    }
    for code in [
        "OOM",
        "LOADING",
        "BUSY",
        "TRYAGAIN",
        "READONLY",
        "MASTERDOWN",
        "NOAUTH",
        "WRONGPASS",
        "ERR",
        "MOVED",
        "SOMETHINGNEW",
    ] {
        let err = classify_reply(code, "detail", "outbox.order", "redis://r:6379");
        assert!(!err.is_permanent(), "{code} should be retryable");
        assert!(
            err.reason().contains("\"outbox.order\""),
            "{}",
            err.reason()
        );
    }
    assert!(matches!(
        classify_reply("OOM", "", "s", "r"),
        DeliveryError::Retryable {
            retry_after: Some(_),
            ..
        }
    ));
    let wrongtype = classify_reply("WRONGTYPE", "", "s", "r");
    assert!(
        wrongtype.reason().contains("not a stream"),
        "{}",
        wrongtype.reason()
    );
}

#[test]
fn config_is_checked_and_never_echoes_the_password() {
    for good in [
        "redis://127.0.0.1:6379",
        "rediss://u:s3cret@r.example.com:6380/2",
        "redis://r",
    ] {
        RedisSinkConfig::new(good)
            .validate()
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for (bad, what) in [
        ("127.0.0.1:6379", "not a valid url"),
        ("http://u:s3cret@r:6379", "scheme"),
        ("not a url s3cret", "not a valid url"),
        ("redis://u:s3cret@r:6379/notadb", "not a valid url"),
    ] {
        let e = RedisSinkConfig::new(bad)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{bad}: {e}");
        assert!(!e.contains("s3cret"), "{bad}: {e}");
    }
    let template = RedisSinkConfig {
        stream_template: "outbox.{aggregate}".into(),
        ..RedisSinkConfig::new("redis://r")
    };
    assert!(matches!(
        template.validate().unwrap_err(),
        RedisSinkError::Template(_)
    ));
    let maxlen = RedisSinkConfig {
        maxlen: Some(0),
        ..RedisSinkConfig::new("redis://r")
    };
    assert!(matches!(
        maxlen.validate().unwrap_err(),
        RedisSinkError::ZeroMaxlen
    ));

    let config = RedisSinkConfig {
        password: Some(Secret::new("fromfile".into())),
        ..RedisSinkConfig::new("redis://u:s3cret@r:6379")
    };
    let printed = format!("{config:?} {:?}", RedisSink::new(config.clone()).unwrap());
    assert!(
        !printed.contains("s3cret") && !printed.contains("fromfile"),
        "{printed}"
    );
    assert!(printed.contains("redis://r:6379"), "{printed}");
}
