//! `dispatchbox status`: the replication slot (state, who streams from it, confirmed
//! position, lag, WAL retention) and the outbox rows per status, as a table for a human or
//! JSON for a script. Read-only: one store call, [`report::status`].

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::check::Format;
use crate::config::Config;
use crate::ops::report::{self, human_bytes, StatusReport};
use crate::source::slot::SlotWalStatus;

/// Arguments of `dispatchbox status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format (the JSON field names are stable; see README.md).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Runs the command.
pub async fn run(config: &Config, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let (client, connection) = super::connect(config).await?;
    let status = report::status(&client, &config.database.names, &config.database.slot)
        .await
        .with_context(|| format!("reading the status of {}", config.database.names.table()))?;
    drop(client);
    connection.abort();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Format::Text => print!("{}", text(&status)),
    }
    Ok(ExitCode::SUCCESS)
}

fn age(seconds: f64) -> String {
    // Whole seconds are precise enough for a human and keep the text short.
    let whole = Duration::from_secs(seconds.max(0.0).round() as u64);
    humantime::format_duration(whole).to_string()
}

/// ```text
/// replication slot "dispatchbox"
///   state            streaming to pid 4242 (dispatchbox, 10.0.0.7, streaming)
///   confirmed flush  0/1A2B3C8
///   lag              1.2 MiB (1258291 bytes)
///   wal_status       reserved (safe_wal_size 1023.5 MiB)
///
/// outbox table public.outbox_event
///   pending    12  oldest created 3m 20s ago
///   processing  0
///   …
/// ```
fn text(status: &StatusReport) -> String {
    let mut out = String::new();
    let slot = &status.slot;
    let _ = writeln!(out, "replication slot \"{}\"", slot.name);
    if !slot.exists {
        let _ = writeln!(
            out,
            "  state            does not exist (`dispatchbox run` creates it)"
        );
    } else {
        let state = match slot.active_pid {
            Some(pid) if slot.active => {
                let client: Vec<&str> = [
                    slot.client_application_name.as_deref(),
                    slot.client_addr.as_deref(),
                    slot.client_state.as_deref(),
                ]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .collect();
                if client.is_empty() {
                    format!("streaming to pid {pid}")
                } else {
                    format!("streaming to pid {pid} ({})", client.join(", "))
                }
            }
            _ => "inactive (no relay is streaming from it)".to_owned(),
        };
        let _ = writeln!(out, "  state            {state}");
        let _ = writeln!(
            out,
            "  confirmed flush  {}",
            slot.confirmed_flush_lsn.as_deref().unwrap_or("unknown")
        );
        let lag = slot.lag_bytes.map_or_else(
            || "unknown".to_owned(),
            |b| format!("{} ({b} bytes)", human_bytes(b)),
        );
        let _ = writeln!(out, "  lag              {lag}");
        let wal_status = slot.wal_status.unwrap_or(SlotWalStatus::Unknown);
        let safe = match (wal_status, slot.safe_wal_size) {
            (SlotWalStatus::Lost, _) => {
                " (the slot is unusable; `dispatchbox run` recreates it and sweeps)".to_owned()
            }
            (_, Some(bytes)) => format!(" (safe_wal_size {})", human_bytes(bytes)),
            (_, None) => " (safe_wal_size unlimited)".to_owned(),
        };
        let _ = writeln!(out, "  wal_status       {}{safe}", wal_status.as_str());
    }

    let outbox = &status.outbox;
    let counts = &outbox.counts;
    let _ = writeln!(out, "\noutbox table {}", outbox.table);
    let width = [
        counts.pending,
        counts.processing,
        counts.retry,
        counts.done,
        counts.dead,
        counts.other,
    ]
    .iter()
    .map(|n| n.to_string().len())
    .max()
    .unwrap_or(1);
    let mut line = |label: &str, n: i64, note: Option<String>| {
        let note = note.map(|n| format!("  {n}")).unwrap_or_default();
        let _ = writeln!(out, "  {label:<11}{n:>width$}{note}");
    };
    line(
        "pending",
        counts.pending,
        outbox
            .oldest_pending_age_seconds
            .map(|s| format!("oldest created {} ago", age(s))),
    );
    line("processing", counts.processing, None);
    line(
        "retry",
        counts.retry,
        outbox
            .oldest_due_retry_overdue_seconds
            .map(|s| format!("oldest due {} ago", age(s))),
    );
    line("done", counts.done, None);
    line(
        "dead",
        counts.dead,
        (counts.dead > 0).then(|| "see `dispatchbox dead list`".to_owned()),
    );
    if counts.other > 0 {
        line(
            "other",
            counts.other,
            Some("unknown status values".to_owned()),
        );
    }
    out
}
