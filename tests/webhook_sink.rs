//! The webhook sink against a real HTTP receiver (axum on loopback): request shape and
//! signatures (checked with the independent `standardwebhooks` crate), extra and forwarded
//! headers, classification of answers and transport failures, the concurrency limit,
//! connection reuse, and the SSRF guard (the receiver is on loopback, so every other test
//! turns the guard off, as `DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE=true` does).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use chrono::TimeZone;
use dispatchbox::event::OutboxEvent;
use dispatchbox::sink::{DeliveryError, Sink, WebhookSink, WebhookSinkConfig};
use futures_util::future::join_all;
use support::webhook::{Receiver, Rule, HOOK_PATH};

const WAIT: Duration = Duration::from_secs(10);

fn secret(fill: u8) -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([fill; 32])
    )
}

fn event(id: i64, aggregate_id: &str, payload: &str) -> Arc<OutboxEvent> {
    Arc::new(OutboxEvent {
        id,
        aggregate_type: "order".into(),
        aggregate_id: aggregate_id.into(),
        event_type: "order.created".into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        headers: vec![("traceparent".into(), "00-abc-01".into())],
        created_at: chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
        next_run_at: None,
    })
}

fn sink_with(config: WebhookSinkConfig) -> Sink {
    Sink::Webhook(WebhookSink::new(config).unwrap())
}

/// The receiver is on loopback: the SSRF guard is off.
fn to(url: &str) -> WebhookSinkConfig {
    WebhookSinkConfig {
        allow_private: true,
        ..WebhookSinkConfig::new(url)
    }
}

fn sink(url: &str) -> Sink {
    sink_with(to(url))
}

fn origin(receiver: &Receiver) -> String {
    format!("http://{}", receiver.addr())
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn delivers_a_signed_request_that_an_independent_verifier_accepts() {
    let receiver = Receiver::start().await;
    let (old, new, newest) = (secret(1), secret(2), secret(4));
    let sink = sink_with(WebhookSinkConfig {
        secrets: vec![old.clone(), new.clone(), newest.clone()],
        ..to(&receiver.url())
    });
    assert_eq!(sink.name(), "webhook");

    let before = now_unix();
    sink.deliver(event(1234, "o-1", r#"{"total": 10, "note": "grüße"}"#))
        .await
        .unwrap();
    let after = now_unix();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, axum::http::Method::POST);
    assert_eq!(request.path, HOOK_PATH);
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert!(
        request
            .header("user-agent")
            .unwrap()
            .starts_with("dispatchbox/"),
        "{:?}",
        request.header("user-agent")
    );
    assert_eq!(request.webhook_id(), Some("1234"));
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&timestamp),
        "{timestamp} not in {before}..={after}"
    );
    assert_eq!(
        request.header("traceparent"),
        Some("00-abc-01"),
        "the trace context is forwarded by default"
    );
    assert_eq!(
        request.json(),
        serde_json::json!({
            "id": 1234,
            "type": "order.created",
            "timestamp": "2024-01-02T03:04:05.000000Z",
            "aggregate_type": "order",
            "aggregate_id": "o-1",
            "data": {"total": 10, "note": "grüße"},
        })
    );
    let signatures: Vec<&str> = request
        .header("webhook-signature")
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(signatures.len(), 3, "{signatures:?}");
    assert!(signatures.iter().all(|s| s.starts_with("v1,")));

    // Every secret of the rotation verifies on its own, as a receiver that has only one of
    // them would.
    for secret in [&old, &new, &newest] {
        let verifier = standardwebhooks::Webhook::new(secret).unwrap();
        verifier.verify(&request.body, &request.headers).unwrap();
    }
    let stranger = standardwebhooks::Webhook::new(&secret(3)).unwrap();
    assert!(stranger.verify(&request.body, &request.headers).is_err());

    let verifier = standardwebhooks::Webhook::new(&old).unwrap();
    let mut tampered = request.body.to_vec();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    assert!(verifier.verify(&tampered, &request.headers).is_err());
    let mut other_id = request.headers.clone();
    other_id.insert("webhook-id", "1235".parse().unwrap());
    assert!(verifier.verify(&request.body, &other_id).is_err());
}

#[tokio::test]
async fn without_secrets_requests_are_unsigned() {
    let receiver = Receiver::start().await;
    let sink = sink(&receiver.url());
    sink.deliver(event(1, "o-1", "[1, 2]")).await.unwrap();
    let request = &receiver.requests()[0];
    assert!(request.header("webhook-signature").is_none());
    assert_eq!(request.webhook_id(), Some("1"));
    assert_eq!(
        &request.body[request.body.len() - 14..],
        br#""data":[1, 2]}"#
    );
}

#[tokio::test]
async fn answers_are_classified_by_status() {
    let receiver = Receiver::start().await;
    receiver.respond(Rule::for_event(1).always(500));
    receiver.respond(Rule::for_event(2).always(400));
    receiver.respond(Rule::for_event(3).always(410));
    receiver.respond(Rule::for_event(4).always(429).header("retry-after", "2"));
    receiver.respond(Rule::for_event(5).always(503).header("retry-after", "soon"));
    receiver.respond(Rule::for_event(6).always(204));
    let sink = sink(&receiver.url());
    let origin = origin(&receiver);
    let outcome = |id| sink.deliver(event(id, "o-1", "{}"));

    assert_eq!(
        outcome(1).await,
        Err(DeliveryError::Retryable {
            reason: format!("webhook {origin} answered 500 Internal Server Error"),
            retry_after: None,
        })
    );
    let bad_request = outcome(2).await.unwrap_err();
    assert!(bad_request.is_permanent());
    assert!(
        bad_request
            .reason()
            .starts_with(&format!("webhook {origin} answered 400 Bad Request")),
        "{bad_request}"
    );
    let gone = outcome(3).await.unwrap_err();
    assert!(gone.is_permanent());
    assert!(gone.reason().contains("410 Gone"), "{gone}");
    assert_eq!(
        outcome(4).await,
        Err(DeliveryError::Retryable {
            reason: format!("webhook {origin} answered 429 Too Many Requests"),
            retry_after: Some(Duration::from_secs(2)),
        })
    );
    assert_eq!(
        outcome(5).await,
        Err(DeliveryError::Retryable {
            reason: format!("webhook {origin} answered 503 Service Unavailable"),
            retry_after: None,
        })
    );
    assert_eq!(outcome(6).await, Ok(()));
    assert_eq!(receiver.requests().len(), 6, "one attempt per delivery");
}

#[tokio::test]
async fn scripted_failures_hit_only_their_aggregate_then_clear() {
    let receiver = Receiver::start().await;
    receiver.respond(Rule::for_aggregate("A").fail_times(2, 500));
    let sink = sink(&receiver.url());

    assert!(sink.deliver(event(1, "A", "{}")).await.is_err());
    assert_eq!(sink.deliver(event(2, "B", "{}")).await, Ok(()));
    assert!(sink.deliver(event(1, "A", "{}")).await.is_err());
    assert_eq!(sink.deliver(event(1, "A", "{}")).await, Ok(()));

    assert_eq!(receiver.requests_for("A").len(), 3);
    assert_eq!(receiver.requests_for("B").len(), 1);
}

#[tokio::test]
async fn redirects_are_not_followed_and_are_retryable() {
    let receiver = Receiver::start().await;
    let moved = format!("{}/moved", origin(&receiver));
    receiver.respond(Rule::any().redirect_to(&moved));
    let sink = sink(&receiver.url());

    let err = sink.deliver(event(1, "o-1", "{}")).await.unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    assert!(err.reason().contains("answered 302 Found"), "{err}");
    assert!(err.reason().contains("redirects are not followed"), "{err}");
    // Had the client followed, its future would only have resolved after the second request.
    let paths: Vec<String> = receiver.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec![HOOK_PATH.to_owned()]);
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_retryable() {
    let receiver = Receiver::start().await;
    receiver.respond(Rule::any().delay(Duration::from_secs(5)));
    let sink = sink_with(WebhookSinkConfig {
        timeout: Duration::from_millis(300),
        ..to(&receiver.url())
    });

    let started = Instant::now();
    let err = sink.deliver(event(1, "o-1", "{}")).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        err,
        DeliveryError::retryable(format!(
            "webhook {} did not answer within 300ms",
            origin(&receiver)
        ))
    );
    assert_eq!(receiver.requests().len(), 1, "the request did arrive");
}

#[tokio::test]
async fn a_closed_port_is_retryable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let sink = sink(&format!("http://127.0.0.1:{port}/hook?token=s3cr3t"));

    let err = sink.deliver(event(1, "o-1", "{}")).await.unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    assert!(
        err.reason().starts_with(&format!(
            "could not connect to webhook http://127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(
        !err.reason().contains("s3cr3t"),
        "the query is never printed: {err}"
    );
}

#[tokio::test]
async fn no_more_than_max_concurrency_requests_are_in_flight() {
    let receiver = Receiver::start().await;
    receiver.respond(Rule::any().delay(Duration::from_millis(300)));
    let sink = sink_with(WebhookSinkConfig {
        max_concurrency: 2,
        ..to(&receiver.url())
    });

    let started = Instant::now();
    let deliveries = (1..=6).map(|id| sink.deliver(event(id, &format!("a-{id}"), "{}")));
    let outcomes = join_all(deliveries).await;
    let elapsed = started.elapsed();

    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(receiver.requests().len(), 6);
    assert_eq!(receiver.max_in_flight(), 2);
    // Three waves of two, 300 ms each.
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
}

#[tokio::test]
async fn sequential_deliveries_reuse_one_connection() {
    let receiver = Receiver::start().await;
    let sink = sink(&receiver.url());
    for id in 1..=20 {
        sink.deliver(event(id, "o-1", r#"{"n": 1}"#)).await.unwrap();
    }
    let requests = receiver.wait_for(20, WAIT).await;
    assert_eq!(requests.len(), 20);
    let ports = receiver.remote_ports();
    assert!(ports.len() <= 2, "connections opened: {ports:?}");
}

#[tokio::test]
async fn check_probes_without_sending_a_request() {
    let receiver = Receiver::start().await;
    let sink = sink(&receiver.url().replace("127.0.0.1", "localhost"));
    sink.check(Duration::from_secs(5)).await.unwrap();
    sink.close(Duration::from_secs(1)).await;
    assert!(receiver.requests().is_empty());
}

fn event_with_headers(id: i64, headers: &[(&str, &str)]) -> Arc<OutboxEvent> {
    let mut event = Arc::unwrap_or_clone(event(id, "o-1", "{}"));
    event.headers = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Arc::new(event)
}

#[tokio::test]
async fn static_and_allowed_row_headers_travel_and_nothing_else() {
    let receiver = Receiver::start().await;
    let key = secret(5);
    let sink = sink_with(WebhookSinkConfig {
        secrets: vec![key.clone()],
        headers: vec![
            ("Authorization".into(), "Bearer k1,k2".into()),
            ("X-Tenant".into(), "static".into()),
        ],
        forward_headers: vec!["traceparent".into(), "tracestate".into(), "x-tenant".into()],
        ..to(&receiver.url())
    });
    sink.deliver(event_with_headers(
        1,
        &[
            (
                "TraceParent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=a\nInjected: yes"),
            ("x-tenant", "from-row"),
            ("x-internal", "not-on-the-list"),
            ("webhook-id", "999"),
        ],
    ))
    .await
    .unwrap();
    let request = &receiver.requests()[0];
    assert_eq!(request.header("authorization"), Some("Bearer k1,k2"));
    assert_eq!(
        request.header("traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(
        request.header("x-tenant"),
        Some("static"),
        "static headers win"
    );
    assert!(
        request.header("tracestate").is_none(),
        "invalid value skipped"
    );
    assert!(request.header("injected").is_none(), "no header injection");
    assert!(
        request.header("x-internal").is_none(),
        "not on the allow-list"
    );
    assert_eq!(
        request.webhook_id(),
        Some("1"),
        "signing headers are the relay's"
    );
    standardwebhooks::Webhook::new(&key)
        .unwrap()
        .verify(&request.body, &request.headers)
        .unwrap();

    // Nothing forwarded when the list is empty.
    let sink = sink_with(WebhookSinkConfig {
        forward_headers: Vec::new(),
        ..to(&receiver.url())
    });
    sink.deliver(event(2, "o-1", "{}")).await.unwrap();
    assert!(receiver.requests()[1].header("traceparent").is_none());
}

/// By default the guard refuses a receiver on loopback: an IP literal when the sink is
/// built, and a host name that resolves there (`localhost`) on connecting, which is a
/// permanent failure naming the host, the rule and the switch. No request arrives.
#[tokio::test]
async fn the_ssrf_guard_refuses_loopback_unless_allowed() {
    let receiver = Receiver::start().await;
    let error = WebhookSink::new(WebhookSinkConfig::new(receiver.url())).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("webhook url points at 127.0.0.1, a loopback address (127.0.0.0/8)"),
        "{error}"
    );

    let by_name = receiver.url().replace("127.0.0.1", "localhost");
    let port = receiver.addr().port();
    let guarded = sink_with(WebhookSinkConfig::new(format!("{by_name}?token=s3cr3t")));
    let err = guarded.deliver(event(1, "o-1", "{}")).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    let reason = err.reason();
    assert!(
        reason.starts_with(&format!(
            "webhook http://localhost:{port} refused by the SSRF guard: host \"localhost\" \
             resolves to "
        )),
        "{reason}"
    );
    assert!(reason.contains("loopback address"), "{reason}");
    assert!(
        reason.contains("set DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE=true"),
        "{reason}"
    );
    assert!(!reason.contains("s3cr3t"), "{reason}");
    assert!(receiver.requests().is_empty(), "nothing was sent");

    // A named endpoint's reason names its own switch.
    let named = sink_with(WebhookSinkConfig {
        name: "webhook:billing".into(),
        ..WebhookSinkConfig::new(by_name.clone())
    });
    assert_eq!(named.name(), "webhook:billing");
    let err = named.deliver(event(2, "o-1", "{}")).await.unwrap_err();
    assert!(
        err.reason()
            .contains("set DISPATCHBOX_WEBHOOK_BILLING_ALLOW_PRIVATE=true"),
        "{err}"
    );

    // Allowed: the same host name delivers.
    sink(&by_name).deliver(event(3, "o-1", "{}")).await.unwrap();
    assert_eq!(receiver.requests().len(), 1);
}
