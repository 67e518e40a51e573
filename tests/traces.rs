//! Trace context and OTLP export, end to end: a row's W3C `traceparent` travels to the sink,
//! and with `OTEL_EXPORTER_OTLP_ENDPOINT` set the relay exports one `send` span per
//! delivery attempt over OTLP/HTTP, linked to the row's trace context. The receiver is a
//! plain HTTP server in the test, and the spans are decoded with the OTLP protobuf
//! definitions (`opentelemetry-proto` + `prost`), not with the SDK that encoded them.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use prost::Message as _;
use support::kafka::TestBroker;
use support::postgres::TestCluster;
use support::relay::{base_env, migrate, set_env, start_streaming};
use support::webhook::{Receiver, Rule};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN_ID: &str = "b7ad6b7169203331";
const WAIT: Duration = Duration::from_secs(30);

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attribute(attributes, key) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every span the collector received so far, with the resource's `service.name`.
fn spans(collector: &Receiver) -> Vec<(String, Span)> {
    let mut all = Vec::new();
    for request in collector.requests() {
        assert_eq!(request.path, "/v1/traces");
        assert_eq!(
            request.header("content-type"),
            Some("application/x-protobuf")
        );
        let export = ExportTraceServiceRequest::decode(request.body.as_ref())
            .expect("an OTLP ExportTraceServiceRequest in protobuf");
        for resource_spans in export.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| text(&r.attributes, "service.name"))
                .unwrap_or_default()
                .to_owned();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    all.push((service.clone(), span));
                }
            }
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_delivery_attempt_exports_a_send_span_linked_to_the_rows_trace() {
    let cluster = TestCluster::start();
    let broker = TestBroker::start();
    broker.create_topic("outbox.order", 1).await;
    let webhook = Receiver::start().await;
    let collector = Receiver::start().await;
    let db = cluster.create_database("traces").await;
    let mut env = base_env(&cluster, &db);
    for (key, value) in [
        ("DISPATCHBOX_SINKS", "kafka,webhook".to_owned()),
        ("DISPATCHBOX_KAFKA_BROKERS", broker.bootstrap()),
        ("DISPATCHBOX_WEBHOOK_URL", webhook.url()),
        ("DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ("DISPATCHBOX_BACKOFF_BASE", "100ms".to_owned()),
        ("DISPATCHBOX_SWEEP_INTERVAL", "200ms".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", collector.addr()),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ] {
        set_env(&mut env, key, &value);
    }
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    // The webhook refuses the traced event's first attempt: one failed span, then a good one.
    webhook.respond(Rule::for_aggregate("o-traced").fail_times(1, 503));
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    let traced: i64 = client
        .query_one(
            "INSERT INTO public.outbox_event (aggregate_type, aggregate_id, event_type, payload, headers)
             VALUES ('order', 'o-traced', 'order.created', '{}', jsonb_build_object('traceparent', $1::text, 'tracestate', 'vendor=1'))
             RETURNING id",
            &[&traceparent],
        )
        .await
        .unwrap()
        .get(0);
    let untraced: i64 = client
        .query_one(
            "INSERT INTO public.outbox_event (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('order', 'o-plain', 'order.created', '{}') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // The trace context reached both sinks.
    let records = broker.read_topic("outbox.order", 2, WAIT).await;
    let kafka_traceparent = records
        .iter()
        .find(|r| r.header("id") == Some(traced.to_string().as_str()))
        .and_then(|r| r.header("traceparent"));
    assert_eq!(kafka_traceparent, Some(traceparent.as_str()));
    let hooks = webhook.wait_for(3, WAIT).await;
    assert!(
        hooks
            .iter()
            .filter(|r| r.webhook_id() == Some(traced.to_string().as_str()))
            .all(|r| r.header("traceparent") == Some(traceparent.as_str())),
        "the webhook requests of the traced event carry its traceparent"
    );

    // The traced event's first attempt fails at the webhook, so it is attempted twice on
    // both sinks (a retry goes to every routed sink); the other event once on each.
    let deadline = Instant::now() + WAIT;
    let spans = loop {
        let spans = spans(&collector);
        if spans.len() >= 6 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let of = |id: i64, system: &str| -> Vec<&Span> {
        spans
            .iter()
            .map(|(_, span)| span)
            .filter(|s| {
                text(&s.attributes, "messaging.message.id") == Some(id.to_string().as_str())
                    && text(&s.attributes, "messaging.system") == Some(system)
            })
            .collect()
    };
    assert_eq!(
        spans.len(),
        6,
        "spans: {:?}\nrelay log: {}",
        spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>(),
        relay.stderr()
    );
    assert!(spans.iter().all(|(service, _)| service == "dispatchbox"));

    let mut kafka = of(traced, "kafka");
    kafka.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(kafka.len(), 2);
    let span = kafka[0];
    assert_eq!(span.name, "send outbox.order");
    assert_eq!(span.kind, SpanKind::Producer as i32);
    assert_eq!(
        text(&span.attributes, "messaging.operation.type"),
        Some("send")
    );
    assert_eq!(
        text(&span.attributes, "messaging.destination.name"),
        Some("outbox.order")
    );
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    // A link to the row's context, not a parent: the span starts its own trace.
    assert!(span.parent_span_id.is_empty());
    assert_ne!(hex(&span.trace_id), TRACE_ID);
    assert_eq!(span.links.len(), 1);
    assert_eq!(hex(&span.links[0].trace_id), TRACE_ID);
    assert_eq!(hex(&span.links[0].span_id), PARENT_SPAN_ID);
    assert_eq!(span.links[0].trace_state, "vendor=1");

    let mut hook_spans = of(traced, "webhook");
    hook_spans.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(hook_spans.len(), 2);
    let (failed, retried) = (hook_spans[0], hook_spans[1]);
    assert_eq!(failed.name, "send");
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert!(failed.status.as_ref().unwrap().message.contains("503"));
    assert_eq!(text(&failed.attributes, "error.type"), Some("retryable"));
    assert_eq!(
        attribute(&retried.attributes, "dispatchbox.attempt"),
        Some(&any_value::Value::IntValue(2))
    );
    assert_ne!(
        retried.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(retried.links.len(), 1);

    // No trace context on the row: no link.
    let plain = of(untraced, "kafka");
    assert_eq!(plain.len(), 1);
    assert!(plain[0].links.is_empty());
}
