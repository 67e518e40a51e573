//! OpenTelemetry trace export: one `send` span per delivery attempt to each sink, exported
//! over OTLP/HTTP (protobuf) when an OTLP endpoint is configured, with OpenTelemetry's own
//! variable names (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_BSP_*`, …).
//!
//! The span follows the OpenTelemetry messaging conventions for a producer: name
//! `send {destination}`, kind `PRODUCER`, `messaging.operation.type` = `send`,
//! `messaging.system`, `messaging.destination.name`, `messaging.message.id` = the row id;
//! a failed attempt has status `ERROR` and `error.type` (`retryable` or `permanent`). The
//! row's own trace context (a W3C `traceparent` and `tracestate` in its `headers`) is the
//! message's creation context: the span **links** to it rather than joining that trace, as
//! the conventions say for a send that did not create the message.
//!
//! Without an endpoint nothing is built and [`record_send`] returns at once. Spans go to
//! the SDK's batch processor, which exports from a thread of its own; a slow or absent
//! collector never delays a delivery (the processor drops spans when its queue is full).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Link, Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::event::OutboxEvent;

/// The tracer of the installed export; unset while export is off.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// The full URL spans are `POST`ed to (`…/v1/traces`).
    pub endpoint: String,
    /// Per-export request timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s).
    pub timeout: Duration,
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` sets
    /// one.
    pub default_service_name: Option<String>,
}

/// Why the export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot set up TLS for the OTLP exporter: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the OTLP exporter's HTTP client: {0}")]
    Client(String),
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("trace export was already set up in this process")]
    AlreadyInstalled,
}

/// The running export. [`TraceExport::shutdown`] flushes what is queued; call it outside
/// any async runtime (the exporter's HTTP client is a blocking one).
#[derive(Debug)]
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Exports what is still queued (bounded by the exporter's timeout) and stops.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(error = %error, "flushing the last spans to the OTLP endpoint failed");
        }
    }
}

/// Sets up the export (once per process). Builds a blocking HTTP client on a thread of its
/// own, so it may be called from anywhere, though [`TraceExport::shutdown`] may not.
pub fn init(settings: &TraceSettings) -> Result<TraceExport, TraceError> {
    if TRACER.get().is_some() {
        return Err(TraceError::AlreadyInstalled);
    }
    let tls = crate::tls::https_client_config()?;
    let timeout = settings.timeout;
    // reqwest's blocking client must not be created (or dropped) on an async runtime's
    // thread: a plain thread builds it.
    let client = std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
    })
    .join()
    .map_err(|_| TraceError::Client("the thread building it panicked".into()))?
    .map_err(|error| TraceError::Client(error.to_string()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(settings.timeout)
        .build()?;
    let mut resource = Resource::builder();
    if let Some(name) = &settings.default_service_name {
        resource = resource.with_service_name(name.clone());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("dispatchbox");
    TRACER
        .set(tracer)
        .map_err(|_| TraceError::AlreadyInstalled)?;
    // The URL's path and query may carry tokens: only its origin is logged.
    let origin = url::Url::parse(&settings.endpoint)
        .map(|url| url.origin().ascii_serialization())
        .unwrap_or_default();
    tracing::info!(endpoint = %origin, "exporting a send span per delivery over OTLP/HTTP");
    Ok(TraceExport { provider })
}

/// True when spans are exported (callers skip work that only feeds spans).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// One finished delivery attempt of `event` to one sink.
#[derive(Debug)]
pub struct SendSpan<'a> {
    pub event: &'a OutboxEvent,
    /// The sink's name (`messaging.system`: `kafka`, `rabbitmq`, … or `webhook`, `stdout`).
    pub sink: &'a str,
    /// Topic, subject, stream or exchange, where the sink has one.
    pub destination: Option<&'a str>,
    pub attempt: u32,
    pub started: SystemTime,
    pub ended: SystemTime,
    /// The failure's reason and whether it was permanent; `None` when it was delivered.
    pub failed: Option<(&'a str, bool)>,
}

/// Exports `span` when trace export is on; otherwise does nothing.
pub fn record_send(span: SendSpan<'_>) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let name = match span.destination {
        Some(destination) => format!("send {destination}"),
        None => "send".to_owned(),
    };
    let mut attributes = vec![
        KeyValue::new("messaging.system", span.sink.to_owned()),
        KeyValue::new("messaging.operation.type", "send"),
        KeyValue::new("messaging.operation.name", "send"),
        KeyValue::new("messaging.message.id", span.event.id.to_string()),
        KeyValue::new("dispatchbox.attempt", i64::from(span.attempt)),
        KeyValue::new("dispatchbox.event_type", span.event.event_type.clone()),
    ];
    if let Some(destination) = span.destination {
        attributes.push(KeyValue::new(
            "messaging.destination.name",
            destination.to_owned(),
        ));
    }
    if let Some((_, permanent)) = span.failed {
        let kind = if permanent { "permanent" } else { "retryable" };
        attributes.push(KeyValue::new("error.type", kind));
    }
    let links = row_context(span.event)
        .map(|context| vec![Link::with_context(context)])
        .unwrap_or_default();
    let mut exported = tracer
        .span_builder(name)
        .with_kind(SpanKind::Producer)
        .with_start_time(span.started)
        .with_attributes(attributes)
        .with_links(links)
        .start(tracer);
    if let Some((reason, _)) = span.failed {
        exported.set_status(Status::error(reason.to_owned()));
    }
    exported.end_with_timestamp(span.ended);
}

/// The row's W3C trace context, when its headers carry a valid `traceparent`.
fn row_context(event: &OutboxEvent) -> Option<opentelemetry::trace::SpanContext> {
    let carrier: HashMap<String, String> = event
        .headers
        .iter()
        .filter(|(name, _)| {
            name.eq_ignore_ascii_case("traceparent") || name.eq_ignore_ascii_case("tracestate")
        })
        .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
        .collect();
    if carrier.is_empty() {
        return None;
    }
    let context = TraceContextPropagator::new().extract(&carrier);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(headers: &[(&str, &str)]) -> OutboxEvent {
        OutboxEvent {
            id: 1,
            aggregate_type: "a".into(),
            aggregate_id: "b".into(),
            event_type: "c".into(),
            payload: Bytes::from_static(b"{}"),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created_at: chrono::DateTime::UNIX_EPOCH,
            next_run_at: None,
        }
    }

    #[test]
    fn the_rows_trace_context_is_read_from_its_headers() {
        let context = row_context(&event(&[
            (
                "Traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "vendor=1"),
        ]))
        .expect("a valid traceparent");
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(context.span_id().to_string(), "b7ad6b7169203331");
        assert!(context.is_remote());
        assert_eq!(context.trace_state().header(), "vendor=1");
        for bad in [
            "00-abc-01",
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        ] {
            assert!(
                row_context(&event(&[("traceparent", bad)])).is_none(),
                "{bad}"
            );
        }
        assert!(row_context(&event(&[])).is_none());
    }
}
