//! `dispatchbox check`: preflight of the database and the sinks. Reports every finding,
//! passed or not, each failure with the command or setting that fixes it, as text for a
//! human or JSON for a script. Exit code 0 when nothing blocks `dispatchbox run` (warnings
//! allowed), 1 otherwise.
//!
//! The judgements are the ones `run` applies at start ([`crate::ops::checks`]); this
//! command only gathers, adds the sinks and prints. It never changes anything.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, SinkConfig};
use crate::ops::checks::{self, CheckError, Finding, Severity};
use crate::sink::Sink;
use crate::source::slot;

/// Output format of `check` and `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned lines for a terminal.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
}

/// Arguments of `dispatchbox check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// How long to wait for the database, and for each sink (e.g. 5s, 1m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// What `check --format json` prints.
#[derive(Debug, Serialize)]
struct CheckReport {
    /// True when nothing blocks `dispatchbox run` (warnings allowed).
    ok: bool,
    errors: usize,
    warnings: usize,
    findings: Vec<Finding>,
}

/// Runs the command.
pub async fn run(config: &Config, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let mut findings = database_findings(config, args.timeout).await;
    findings.extend(sink_findings(config, args.timeout).await);
    let count = |severity| findings.iter().filter(|f| f.severity == severity).count();
    let report = CheckReport {
        ok: count(Severity::Error) == 0,
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        findings,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print!("{}", text(&report)),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Connection, server, role, table, publication and slot. An unreachable database is one
/// error finding (with a hint), not a failure of the command.
async fn database_findings(config: &Config, timeout: Duration) -> Vec<Finding> {
    let target = config.database.conninfo.redacted_url();
    let timed_out = || {
        vec![Finding::from(&CheckError::ConnectTimeout {
            target: target.clone(),
            timeout,
        })]
    };
    let (client, connection) =
        match tokio::time::timeout(timeout, config.database.conninfo.connect_sql()).await {
            Err(_elapsed) => return timed_out(),
            Ok(Err(error)) => return vec![Finding::from(&CheckError::from_connect(error))],
            Ok(Ok(connected)) => connected,
        };
    let gathered = tokio::time::timeout(timeout, async {
        let facts = checks::gather(&client, &config.database.names).await?;
        let slot = slot::inspect(&client, &config.database.slot).await?;
        Ok::<_, crate::store::StoreError>((facts, slot))
    })
    .await;
    drop(client);
    connection.abort();
    match gathered {
        Err(_elapsed) => timed_out(),
        Ok(Err(error)) => vec![Finding::from(&CheckError::Database(error))],
        Ok(Ok((facts, slot))) => {
            let mut findings = vec![Finding::ok("connection", format!("connected to {target}"))];
            findings.extend(facts.findings(&config.database.names, &slot));
            findings
        }
    }
}

/// Each enabled sink's readiness probe ([`Sink::check`]), bounded by `timeout`. A sink that
/// cannot be built (its settings were validated with the configuration, so for reasons of
/// this machine) is an error finding of its own.
async fn sink_findings(config: &Config, timeout: Duration) -> Vec<Finding> {
    let mut findings = Vec::with_capacity(config.sinks.len());
    let mut sinks = Vec::with_capacity(config.sinks.len());
    for sink_config in &config.sinks {
        match Sink::from_config(sink_config) {
            Ok(sink) => sinks.push((sink_config, sink)),
            Err(error) => {
                let sink = error.sink();
                findings.push(Finding::error(
                    format!("sink.{sink}"),
                    format!("cannot set up the {sink} sink: {error}"),
                    Some(sink_fix(sink).to_owned()),
                ));
            }
        }
    }
    for (sink_config, sink) in &sinks {
        let name = sink.name();
        // Sink::check bounds itself; the outer timeout guards against a probe that does not.
        let answered = tokio::time::timeout(timeout + Duration::from_secs(2), sink.check(timeout))
            .await
            .unwrap_or_else(|_elapsed| {
                Err(crate::sink::DeliveryError::retryable(format!(
                    "the {name} sink did not answer within {}",
                    humantime::format_duration(timeout)
                )))
            });
        findings.push(match answered {
            Ok(()) => Finding::ok(format!("sink.{name}"), sink_ready(sink_config)),
            Err(error) => Finding::error(
                format!("sink.{name}"),
                error.reason(),
                Some(sink_fix(name).to_owned()),
            ),
        });
    }
    for (_, sink) in &sinks {
        sink.close(Duration::from_millis(100)).await;
    }
    findings
}

fn sink_ready(config: &SinkConfig) -> String {
    match config {
        SinkConfig::Kafka(kafka) => format!(
            "kafka brokers {} answered a metadata request",
            kafka.brokers
        ),
        SinkConfig::Nats(_) => "nats servers answered a jetstream account request".to_owned(),
        SinkConfig::Redis(_) => "redis answered PING".to_owned(),
        SinkConfig::Webhook(webhook) => {
            // Only the origin: paths and queries may carry tokens.
            let origin = url::Url::parse(&webhook.url)
                .map(|url| url.origin().ascii_serialization())
                .unwrap_or_default();
            if webhook.allow_private {
                format!("webhook host of {origin} resolves (SSRF guard off; no request was sent)")
            } else {
                format!(
                    "webhook host of {origin} resolves to an address the SSRF guard allows (no \
                     request was sent)"
                )
            }
        }
        SinkConfig::Stdout(_) => "stdout needs nothing".to_owned(),
        SinkConfig::RabbitMq(rabbitmq) => format!(
            "rabbitmq broker {} accepted a connection and opened a channel",
            rabbitmq.endpoint()
        ),
    }
}

fn sink_fix(sink: &str) -> &'static str {
    match sink {
        "kafka" => {
            "check DISPATCHBOX_KAFKA_BROKERS, that the brokers run and are reachable from here, \
             and the security settings (DISPATCHBOX_KAFKA_PROPERTY_SECURITY_PROTOCOL, SASL, SSL)"
        }
        "webhook" => {
            "check the host in DISPATCHBOX_WEBHOOK_URL and this machine's DNS; an internal \
             receiver needs DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE=true"
        }
        name if name.starts_with("webhook:") => {
            "check the host in the endpoint's DISPATCHBOX_WEBHOOK_<NAME>_URL and this machine's \
             DNS; an internal receiver needs DISPATCHBOX_WEBHOOK_<NAME>_ALLOW_PRIVATE=true"
        }
        "rabbitmq" => {
            "check DISPATCHBOX_RABBITMQ_URL (host, port, user, password, vhost) and that the \
             broker runs and is reachable from here"
        }
        "nats" => {
            "check DISPATCHBOX_NATS_URL, that the servers run with jetstream enabled (-js) and \
             are reachable from here, and the credentials (DISPATCHBOX_NATS_TOKEN, \
             DISPATCHBOX_NATS_CREDS_FILE)"
        }
        "redis" => {
            "check DISPATCHBOX_REDIS_URL, that the server runs and is reachable from here, and \
             the password (DISPATCHBOX_REDIS_PASSWORD_FILE)"
        }
        _ => "check the DISPATCHBOX_SINKS setting",
    }
}

/// ```text
/// ✓ server version 15.4
/// ✗ wal_level is "replica" but logical decoding needs "logical"
///     fix: run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL …
/// ```
fn text(report: &CheckReport) -> String {
    let mut out = String::new();
    for finding in &report.findings {
        let mark = match finding.severity {
            Severity::Ok => '✓',
            Severity::Warning => '!',
            Severity::Error => '✗',
        };
        out.push_str(&format!("{mark} {}\n", finding.message));
        if let Some(fix) = &finding.fix {
            out.push_str(&format!("    fix: {fix}\n"));
        }
    }
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    out.push('\n');
    if report.ok {
        out.push_str(&format!(
            "ready: nothing blocks `dispatchbox run` ({})\n",
            plural(report.warnings, "warning")
        ));
    } else {
        out.push_str(&format!(
            "not ready: {}, {}\n",
            plural(report.errors, "error"),
            plural(report.warnings, "warning")
        ));
    }
    out
}
