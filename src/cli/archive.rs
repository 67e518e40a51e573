//! `dispatchbox archive`: moves old `done` (optionally `dead`) rows to the archive table in
//! small batches ([`crate::ops::archive`]), or with `--dry-run` only counts them. Never
//! touches `pending`, `retry` or `processing` rows.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::ops::archive::{self, ArchiveCounts, ArchiveOptions, DEFAULT_BATCH_SIZE};

/// Arguments of `dispatchbox archive`.
#[derive(Debug, clap::Args)]
pub struct ArchiveArgs {
    /// Archive rows older than this, e.g. 7d, 12h, 30m: `done` rows by delivered_at, `dead`
    /// rows by last_error_at (created_at when those are empty).
    #[arg(long, value_parser = parse_age)]
    pub older_than: Duration,
    /// Archive old `dead` rows too.
    #[arg(long)]
    pub include_dead: bool,
    /// Rows moved per transaction (1 to 100000); small batches keep locks short.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch_size: i64,
    /// Only count the rows that would be moved.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_age(value: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(value.trim())
        .map_err(|e| format!("{value:?} is not an age ({e}); use e.g. 7d, 12h or 30m"))?;
    if age.is_zero() {
        return Err("must be greater than zero (e.g. 7d)".to_owned());
    }
    Ok(age)
}

fn describe(counts: &ArchiveCounts) -> String {
    let rows = if counts.total() == 1 { "row" } else { "rows" };
    format!(
        "{} {rows} ({} done, {} dead)",
        counts.total(),
        counts.done,
        counts.dead
    )
}

/// Runs the command.
pub async fn run(config: &Config, args: &ArchiveArgs) -> anyhow::Result<ExitCode> {
    let (client, connection) = super::connect(config).await?;
    let options = ArchiveOptions {
        older_than: args.older_than,
        include_dead: args.include_dead,
        batch_size: args.batch_size,
    };
    let table = config.database.names.table();
    let archive_table = format!(
        "{}.{}",
        table.schema(),
        config.database.names.archive_table()
    );
    let older_than = humantime::format_duration(args.older_than);
    let what = if args.include_dead {
        "done and dead"
    } else {
        "done"
    };

    if args.dry_run {
        let counts = archive::count(&client, &config.database.names, &options)
            .await
            .with_context(|| format!("counting archivable rows of {table}"))?;
        println!(
            "dry run: would move {} older than {older_than} from {table} to {archive_table}",
            describe(&counts)
        );
    } else {
        let mut progress = ArchiveCounts::default();
        let moved = archive::archive(&client, &config.database.names, &options, |totals| {
            progress = *totals;
            tracing::debug!(
                done = totals.done,
                dead = totals.dead,
                batches = totals.batches,
                "archive batch committed"
            );
        })
        .await
        .with_context(|| {
            format!(
                "archiving {what} rows of {table} stopped after moving {}; the moved rows \
                 are committed, run the command again to continue",
                describe(&progress)
            )
        })?;
        println!(
            "moved {} older than {older_than} from {table} to {archive_table} in {} {}",
            describe(&moved),
            moved.batches,
            if moved.batches == 1 {
                "batch"
            } else {
                "batches"
            }
        );
    }
    drop(client);
    connection.abort();
    Ok(ExitCode::SUCCESS)
}
