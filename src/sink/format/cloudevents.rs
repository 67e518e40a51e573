//! CloudEvents 1.0 (<https://github.com/cloudevents/spec>): the attributes of an outbox
//! event and its two content modes.
//!
//! Attributes: `specversion` = `1.0`, `id` = the row id (decimal), `source` =
//! `DISPATCHBOX_CLOUDEVENTS_SOURCE` (default `/dispatchbox/<database>/<table>`), `type` =
//! the event type, `subject` = the aggregate id, `time` = `created_at` (RFC 3339, UTC,
//! microseconds), `datacontenttype` = `application/json`, and the `partitionkey` extension =
//! the aggregate id (the Kafka binding's key). In structured mode, a `traceparent` and
//! `tracestate` in the row's headers also become extension attributes (the Distributed
//! Tracing extension), so trace context survives transports without headers of their own.
//!
//! - **Structured** ([`CloudEvents::structured`]): one JSON document
//!   (`application/cloudevents+json`) holding the attributes and the payload as `data`.
//! - **Binary** ([`CloudEvents::attributes`]): the payload alone is the body
//!   (`application/json`); each attribute travels as a transport header, named with the
//!   transport's prefix (`ce-` for HTTP and NATS, `ce_` for Kafka); the sink adds it.

use serde::Serialize;
use serde_json::value::RawValue;

use super::FormatError;
use crate::event::OutboxEvent;

/// The CloudEvents version the relay speaks.
pub const SPEC_VERSION: &str = "1.0";

/// Media type of a structured-mode document.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// Media type of the payload (`datacontenttype`; binary mode's content type).
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// Row headers that structured mode carries as extension attributes.
const TRACE_EXTENSIONS: [&str; 2] = ["traceparent", "tracestate"];

/// CloudEvents settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvents {
    /// The `source` attribute (`DISPATCHBOX_CLOUDEVENTS_SOURCE`).
    pub source: String,
    /// `DISPATCHBOX_CLOUDEVENTS_MODE`.
    pub mode: CloudEventsMode,
}

/// How a CloudEvent travels (`DISPATCHBOX_CLOUDEVENTS_MODE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CloudEventsMode {
    /// One `application/cloudevents+json` document.
    #[default]
    Structured,
    /// The payload as the body, attributes as transport headers.
    Binary,
}

impl std::str::FromStr for CloudEventsMode {
    type Err = FormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "structured" => Ok(CloudEventsMode::Structured),
            "binary" => Ok(CloudEventsMode::Binary),
            _ => Err(FormatError::UnknownMode {
                given: text.trim().to_owned(),
            }),
        }
    }
}

/// The default `source`: `/dispatchbox/<database>/<table>`.
pub fn default_source(database: &str, table: &str) -> String {
    format!("/dispatchbox/{database}/{table}")
}

impl CloudEvents {
    /// Settings with `source` checked: a URI reference needs at least one character, and
    /// spaces or control characters would not survive a header.
    pub fn new(source: impl Into<String>, mode: CloudEventsMode) -> Result<Self, FormatError> {
        let source = source.into();
        if source.is_empty() || source.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(FormatError::InvalidSource);
        }
        Ok(Self { source, mode })
    }

    /// The attributes binary mode sends as headers, unprefixed, `datacontenttype` excepted
    /// (it travels as the transport's content type).
    pub fn attributes(&self, event: &OutboxEvent) -> [(&'static str, String); 7] {
        [
            ("specversion", SPEC_VERSION.to_owned()),
            ("id", event.id.to_string()),
            ("source", self.source.clone()),
            ("type", event.event_type.clone()),
            ("subject", event.aggregate_id.clone()),
            ("time", event.created_at_rfc3339()),
            ("partitionkey", event.aggregate_id.clone()),
        ]
    }

    /// The structured-mode document: the attributes and `data` = the payload, embedded byte
    /// for byte. Fails only for a payload that is not JSON (the row is then unusable).
    pub fn structured(&self, event: &OutboxEvent) -> Result<Vec<u8>, serde_json::Error> {
        let data: &RawValue = serde_json::from_slice(&event.payload)?;
        let trace = |name: &str| {
            event
                .headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        };
        let document = Structured {
            specversion: SPEC_VERSION,
            id: event.id.to_string(),
            source: &self.source,
            event_type: &event.event_type,
            subject: &event.aggregate_id,
            time: event.created_at_rfc3339(),
            datacontenttype: DATA_CONTENT_TYPE,
            partitionkey: &event.aggregate_id,
            traceparent: trace(TRACE_EXTENSIONS[0]),
            tracestate: trace(TRACE_EXTENSIONS[1]),
            data,
        };
        let mut bytes = Vec::with_capacity(event.payload.len() + 320);
        serde_json::to_writer(&mut bytes, &document)?;
        Ok(bytes)
    }
}

#[derive(Serialize)]
struct Structured<'a> {
    specversion: &'static str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    partitionkey: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
    data: &'a RawValue,
}

/// An attribute value as the HTTP binding puts it in a header: UTF-8, with space, `"`, `%`
/// and everything outside printable ASCII percent-encoded (CloudEvents HTTP binding
/// 3.1.3.2). NATS headers follow the same rule.
pub fn http_header_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, HEADER_VALUE_ESCAPES).to_string()
}

/// What the HTTP binding escapes besides non-ASCII (which `utf8_percent_encode` always
/// escapes): controls (and DEL), space, `"` and `%`.
const HEADER_VALUE_ESCAPES: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'%');

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chrono::TimeZone;

    fn event() -> OutboxEvent {
        OutboxEvent {
            id: 42,
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            event_type: "order.created".into(),
            payload: Bytes::from_static(br#"{"total":1.50,"items":[1,2]}"#),
            headers: vec![
                (
                    "traceparent".into(),
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                ),
                ("tenant".into(), "t1".into()),
            ],
            created_at: chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
                + chrono::Duration::microseconds(6),
            next_run_at: None,
        }
    }

    #[test]
    fn structured_document_holds_every_attribute_and_the_payload_verbatim() {
        let ce = CloudEvents::new(
            "/dispatchbox/app/public.outbox_event",
            CloudEventsMode::Structured,
        )
        .unwrap();
        let bytes = ce.structured(&event()).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text,
            r#"{"specversion":"1.0","id":"42","source":"/dispatchbox/app/public.outbox_event","type":"order.created","subject":"o-1","time":"2024-01-02T03:04:05.000006Z","datacontenttype":"application/json","partitionkey":"o-1","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","data":{"total":1.50,"items":[1,2]}}"#
        );
    }

    #[test]
    fn structured_refuses_a_payload_that_is_not_json() {
        let ce = CloudEvents::new("/s", CloudEventsMode::Structured).unwrap();
        let mut bad = event();
        bad.payload = Bytes::from_static(b"{not json");
        assert!(ce.structured(&bad).is_err());
    }

    #[test]
    fn binary_attributes_name_the_row() {
        let ce = CloudEvents::new("/s", CloudEventsMode::Binary).unwrap();
        let attributes = ce.attributes(&event());
        let get = |name: &str| {
            attributes
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("id"), Some("42"));
        assert_eq!(get("type"), Some("order.created"));
        assert_eq!(get("subject"), Some("o-1"));
        assert_eq!(get("partitionkey"), Some("o-1"));
        assert_eq!(get("time"), Some("2024-01-02T03:04:05.000006Z"));
        assert_eq!(get("specversion"), Some("1.0"));
        assert_eq!(get("source"), Some("/s"));
    }

    #[test]
    fn source_and_mode_are_checked() {
        assert_eq!(
            CloudEvents::new("", CloudEventsMode::Binary),
            Err(FormatError::InvalidSource)
        );
        assert_eq!(
            CloudEvents::new("/a b", CloudEventsMode::Binary),
            Err(FormatError::InvalidSource)
        );
        assert_eq!(
            "Binary".parse::<CloudEventsMode>(),
            Ok(CloudEventsMode::Binary)
        );
        assert!("both".parse::<CloudEventsMode>().is_err());
    }

    #[test]
    fn header_values_are_percent_encoded_as_the_http_binding_says() {
        assert_eq!(http_header_value("order.created"), "order.created");
        assert_eq!(http_header_value("a b\"c%d"), "a%20b%22c%25d");
        assert_eq!(http_header_value("Ü"), "%C3%9C");
        assert_eq!(http_header_value("a\tb\u{7f}"), "a%09b%7F");
    }
}
