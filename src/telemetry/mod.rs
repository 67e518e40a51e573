//! What the relay tells operators about itself: logs (this file), Prometheus metrics
//! ([`metrics`]) and the health the probes read ([`health`]).
//!
//! Logs: `tracing` to stderr (stdout belongs to the stdout sink), JSON when stderr is not a
//! terminal or `DISPATCHBOX_LOG_FORMAT=json`, text otherwise. Fields first, message last;
//! payloads and secrets are never logged.

pub mod events;
pub mod health;
pub mod metrics;
pub mod traces;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global subscriber. `level` is a `tracing` filter (already validated).
pub fn init_logging(format: Option<LogFormat>, level: &str) {
    let mut filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    // tokio-postgres logs every server NOTICE at INFO ("relation already exists, skipping");
    // keep them out unless the operator asks for that target explicitly.
    if !level.contains("tokio_postgres") {
        if let Ok(directive) = "tokio_postgres=warn".parse() {
            filter = filter.add_directive(directive);
        }
    }
    // lapin logs a returned (unroutable) message whole, payload included, and an expected
    // channel close (a missing exchange) at ERROR; the rabbitmq sink reports both itself.
    if !level.contains("lapin") {
        if let Ok(directive) = "lapin=off".parse() {
            filter = filter.add_directive(directive);
        }
    }
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
