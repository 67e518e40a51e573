//! Formats: the shape a sink gives an event on the wire (`DISPATCHBOX_FORMAT`, or
//! `DISPATCHBOX_<SINK>_FORMAT` for one sink).
//!
//! - [`Format::Native`]: each sink's own shape (see the sink modules), the default.
//! - [`Format::CloudEvents`]: CloudEvents 1.0 ([`cloudevents`]), in structured mode (the
//!   whole event as one `application/cloudevents+json` document) or binary mode (the
//!   payload as the body, the attributes as `ce-`/`ce_` transport headers).
//! - [`Format::Debezium`]: what Debezium's outbox event router writes to Kafka
//!   ([`debezium`]), so consumers written for it need no change. Kafka only.
//!
//! This module only renders; the sinks decide where the rendered parts go (Kafka headers,
//! HTTP headers, a JSON line) and apply their own transport's naming rules.

pub mod cloudevents;
pub mod debezium;

pub use cloudevents::{CloudEvents, CloudEventsMode};
pub use debezium::Debezium;

/// A sink's format, with its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Native,
    CloudEvents(CloudEvents),
    Debezium(Debezium),
}

impl Format {
    /// The name `DISPATCHBOX_FORMAT` spells it with.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Native => FormatKind::Native.name(),
            Format::CloudEvents(_) => FormatKind::CloudEvents.name(),
            Format::Debezium(_) => FormatKind::Debezium.name(),
        }
    }
}

/// A format's name, before its settings are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatKind {
    Native,
    CloudEvents,
    Debezium,
}

impl FormatKind {
    /// Every format, in the order help texts list them.
    pub const ALL: [FormatKind; 3] = [
        FormatKind::Native,
        FormatKind::CloudEvents,
        FormatKind::Debezium,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FormatKind::Native => "native",
            FormatKind::CloudEvents => "cloudevents",
            FormatKind::Debezium => "debezium",
        }
    }
}

impl std::str::FromStr for FormatKind {
    type Err = FormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        FormatKind::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(text))
            .ok_or_else(|| FormatError::UnknownFormat {
                given: text.to_owned(),
            })
    }
}

/// Why a format's settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("unknown format {given:?}; use native, cloudevents or debezium")]
    UnknownFormat { given: String },
    #[error("unknown CloudEvents mode {given:?}; use structured or binary")]
    UnknownMode { given: String },
    #[error(
        "CloudEvents source must be a non-empty URI reference without spaces or control \
         characters (e.g. /dispatchbox/app/public.outbox_event or https://orders.example.com)"
    )]
    InvalidSource,
    #[error("{0}")]
    Placement(String),
    #[error(
        "the {format} format is not available for the {sink} sink ({reason}); set \
         DISPATCHBOX_{upper}_FORMAT to one it supports",
        upper = sink.to_ascii_uppercase()
    )]
    Unsupported {
        format: &'static str,
        sink: &'static str,
        reason: &'static str,
    },
}
