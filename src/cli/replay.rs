//! `dispatchbox replay`: returns delivered (`done`) events to `pending` so the running
//! relay's sweeper delivers them again (see [`crate::ops::replay`], shared with
//! `POST /api/replay`). Exit codes: 0 done (or a dry run), 1 failed, 2 usage error,
//! including a selection that names nothing and one over its cap (nothing changed).

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::{time_arg, EXIT_USAGE};
use crate::config::Config;
use crate::ops::replay::{ReplayError, ReplayFilter, DEFAULT_REPLAY_CAP};
use crate::store::Store;

/// Arguments of `dispatchbox replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Lowest event id (inclusive).
    #[arg(long, value_name = "ID")]
    from_id: Option<i64>,
    /// Highest event id (inclusive).
    #[arg(long, value_name = "ID")]
    to_id: Option<i64>,
    /// Events created at or after TIME: RFC 3339, a date (UTC midnight) or an age such as
    /// 24h or 7d (that long ago).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    since: Option<DateTime<Utc>>,
    /// Events created before TIME (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    until: Option<DateTime<Utc>>,
    /// Events of this aggregate type (exact match).
    #[arg(long, value_name = "TYPE")]
    aggregate_type: Option<String>,
    /// Events of this aggregate (exact match).
    #[arg(long, value_name = "ID")]
    aggregate_id: Option<String>,
    /// Events of this event type (exact match).
    #[arg(long, value_name = "TYPE")]
    event_type: Option<String>,
    /// Replay every delivered event (needed when no filter is given).
    #[arg(long)]
    all: bool,
    /// Change nothing when more than N events match.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_REPLAY_CAP)]
    max: i64,
    /// Count what would be replayed; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `dispatchbox replay`.
pub async fn run(config: &Config, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let pool = config.database.conninfo.pool(1).with_context(|| {
        format!(
            "cannot connect to {}",
            config.database.conninfo.redacted_url()
        )
    })?;
    let store = Store::new(pool, config.database.names.table().clone());
    let filter = ReplayFilter {
        from_id: args.from_id,
        to_id: args.to_id,
        since: args.since,
        until: args.until,
        aggregate_type: args.aggregate_type.clone(),
        aggregate_id: args.aggregate_id.clone(),
        event_type: args.event_type.clone(),
        all: args.all,
    };
    let who = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned())
    );
    let outcome = match store
        .replay_done(&filter, args.max, args.dry_run, &who)
        .await
    {
        Ok(outcome) => outcome,
        Err(error @ (ReplayError::NothingSelected | ReplayError::Cap(_))) => {
            eprintln!("dispatchbox replay: {error}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(ReplayError::Store(e)) => {
            return Err(e)
                .with_context(|| format!("replaying events in {}", config.database.names.table()))
        }
    };
    if outcome.over_cap {
        eprintln!(
            "dispatchbox replay: more than {} delivered events match; nothing was replayed. \
             Narrow the filter or raise --max",
            args.max
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    if outcome.dry_run {
        println!(
            "{} delivered events would be replayed (dry run; nothing changed)",
            outcome.matched
        );
    } else {
        tracing::info!(
            replayed_by = %who,
            events = outcome.replayed.len(),
            first_id = outcome.replayed.first(),
            last_id = outcome.replayed.last(),
            "events replayed"
        );
        println!(
            "replayed {} events; the running relay delivers them within \
             DISPATCHBOX_SWEEP_INTERVAL",
            outcome.replayed.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
