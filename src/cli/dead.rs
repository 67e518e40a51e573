//! `dispatchbox dead list|stats|show|retry|export`: dead-letter management from a shell.
//!
//! Parses flags into a [`DeadFilter`], calls [`crate::ops::dead`] (where every query
//! lives, shared with the HTTP API) and prints the answer as an aligned table for humans,
//! or as JSON / CSV for scripts. Exit codes: 0 done, 1 failed, 2 usage error (including a
//! retry that selects nothing explicitly).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};

use super::{time_arg, EXIT_USAGE};
use crate::config::Config;
use crate::ops::dead::{
    DeadEvent, DeadFilter, DeadPage, DeadStats, Detail, Page, RetryError, RetrySelection,
    DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT,
};
use crate::store::Store;

/// Longest `last_error` shown in a table cell, in characters.
const TABLE_ERROR_CHARS: usize = 72;
/// CSV columns of a listing; `export` adds `payload` and `headers`, and both end with
/// `unreadable` (empty unless columns of the row cannot be read).
const CSV_SUMMARY_HEADER: [&str; 8] = [
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "attempts",
    "last_error",
    "last_error_at",
    "created_at",
];

/// Arguments of `dispatchbox dead`.
#[derive(Debug, clap::Args)]
pub struct DeadArgs {
    #[command(subcommand)]
    command: DeadCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DeadCommand {
    /// List dead events (without payloads), oldest id first, one page at a time.
    List(ListArgs),
    /// Count dead events per event type and aggregate type.
    Stats(StatsArgs),
    /// Show one dead event with its payload, headers and last error.
    Show(ShowArgs),
    /// Make dead events due for delivery again; the running relay delivers them within
    /// DISPATCHBOX_SWEEP_INTERVAL.
    Retry(RetryArgs),
    /// Write every matching dead event, payload included, as a JSON array or CSV.
    Export(ExportArgs),
}

/// Filters shared by every subcommand that selects several events.
#[derive(Debug, Clone, Default, clap::Args)]
struct FilterArgs {
    /// Only events of this aggregate type (exact match).
    #[arg(long, value_name = "TYPE")]
    aggregate_type: Option<String>,
    /// Only events of this event type (exact match).
    #[arg(long, value_name = "TYPE")]
    event_type: Option<String>,
    /// Only events that failed at or after TIME: RFC 3339, a date (UTC midnight) or an age
    /// such as 24h or 7d (that long ago).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    since: Option<DateTime<Utc>>,
    /// Only events that failed before TIME (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    until: Option<DateTime<Utc>>,
    /// Only this event id (repeatable).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<i64>,
    /// Only events whose last error contains TEXT (ignoring case).
    #[arg(long, value_name = "TEXT")]
    error: Option<String>,
}

impl FilterArgs {
    fn to_filter(&self) -> DeadFilter {
        DeadFilter {
            aggregate_type: self.aggregate_type.clone(),
            event_type: self.event_type.clone(),
            since: self.since,
            until: self.until,
            ids: (!self.ids.is_empty()).then(|| self.ids.clone()),
            error: self.error.clone(),
        }
    }
}

/// Output of `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ListFormat {
    /// Aligned columns for a terminal, long errors cut.
    Table,
    /// `{"events": [...], "next_after_id": N|null}`, as the HTTP API answers.
    Json,
    /// A header row, then one row per event.
    Csv,
}

/// Output of `stats`, `show` and `retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    /// Readable text.
    Table,
    /// The same JSON the HTTP API answers.
    Json,
}

/// Output of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// One JSON array of events.
    Json,
    /// A header row, then one row per event; payload and headers as JSON text.
    Csv,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Events per page (1 to 1000).
    #[arg(long, default_value_t = DEFAULT_PAGE_LIMIT,
          value_parser = clap::value_parser!(i64).range(1..=MAX_PAGE_LIMIT))]
    limit: i64,
    /// Start after this id (the `next_after_id` of the previous page).
    #[arg(long, value_name = "ID")]
    after_id: Option<i64>,
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

#[derive(Debug, clap::Args)]
struct StatsArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// The event id.
    id: i64,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,
}

#[derive(Debug, clap::Args)]
struct RetryArgs {
    /// Event ids to retry.
    #[arg(value_name = "ID")]
    event_ids: Vec<i64>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Retry every dead event matching the filters (at least one filter is required).
    #[arg(long, conflicts_with = "event_ids")]
    all_matching: bool,
    /// Retry every dead event.
    #[arg(long, conflicts_with_all = [
        "event_ids", "ids", "all_matching", "aggregate_type", "event_type", "since", "until",
        "error"
    ])]
    all: bool,
    /// Show what would be retried; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
    format: ExportFormat,
    /// Write to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Runs `dispatchbox dead …`.
pub async fn run(config: &Config, args: &DeadArgs) -> anyhow::Result<ExitCode> {
    let pool = config.database.conninfo.pool(1).with_context(|| {
        format!(
            "cannot connect to {}",
            config.database.conninfo.redacted_url()
        )
    })?;
    let store = Store::new(pool, config.database.names.table().clone());
    let table = config.database.names.table();
    match &args.command {
        DeadCommand::List(a) => {
            let page = Page::new(a.limit, a.after_id)?;
            let page = store
                .list_dead(&a.filter.to_filter(), &page, Detail::Summary)
                .await
                .with_context(|| format!("listing dead events in {table}"))?;
            print_list(&page, a.format)?;
        }
        DeadCommand::Stats(a) => {
            let stats = store
                .dead_stats(&a.filter.to_filter())
                .await
                .with_context(|| format!("counting dead events in {table}"))?;
            match a.format {
                ReportFormat::Json => print_json(&stats)?,
                ReportFormat::Table => print_stats(&stats)?,
            }
        }
        DeadCommand::Show(a) => {
            let event = store
                .show_dead(a.id)
                .await
                .with_context(|| format!("reading dead event {} in {table}", a.id))?
                .with_context(|| {
                    format!(
                        "no dead event with id {} in {table} (it does not exist or is not dead)",
                        a.id
                    )
                })?;
            match a.format {
                ReportFormat::Json => print_json(&event)?,
                ReportFormat::Table => print_event(&event)?,
            }
        }
        DeadCommand::Retry(a) => {
            let selection = match retry_selection(a) {
                Ok(selection) => selection,
                Err(reason) => {
                    eprintln!("dispatchbox dead retry: {reason}");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            };
            let ids = match store.retry_dead(&selection, a.dry_run).await {
                Ok(ids) => ids,
                Err(RetryError::NothingSelected) => {
                    eprintln!("dispatchbox dead retry: {}", RetryError::NothingSelected);
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
                Err(RetryError::Store(e)) => {
                    return Err(e).with_context(|| format!("retrying dead events in {table}"))
                }
            };
            print_retry(&ids, a.dry_run, a.format)?;
        }
        DeadCommand::Export(a) => {
            let count = match &a.output {
                Some(path) => {
                    let file = File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut out = BufWriter::new(file);
                    let count = export(&store, &a.filter.to_filter(), a.format, &mut out).await?;
                    out.flush()
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("exported {count} dead events to {}", path.display());
                    count
                }
                None => {
                    let mut out = BufWriter::new(io::stdout().lock());
                    let count = export(&store, &a.filter.to_filter(), a.format, &mut out).await?;
                    out.flush()?;
                    count
                }
            };
            tracing::debug!(count, "dead events exported");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `retry` applies to, or why the command line selects nothing explicitly.
fn retry_selection(a: &RetryArgs) -> Result<RetrySelection, &'static str> {
    let mut filter = a.filter.to_filter();
    let mut ids = a.event_ids.clone();
    ids.extend(filter.ids.take().unwrap_or_default());
    if a.all {
        return Ok(RetrySelection::All);
    }
    if !ids.is_empty() {
        filter.ids = Some(ids.clone());
        return Ok(
            if filter
                == (DeadFilter {
                    ids: Some(ids.clone()),
                    ..DeadFilter::default()
                })
            {
                RetrySelection::Ids(ids)
            } else {
                // Ids together with filters: the ids that also match the filters.
                RetrySelection::Matching(filter)
            },
        );
    }
    match (a.all_matching, filter.is_empty()) {
        (true, false) => Ok(RetrySelection::Matching(filter)),
        (true, true) => Err(
            "--all-matching needs at least one filter (--aggregate-type, --event-type, --since, \
             --until); use --all to retry every dead event",
        ),
        (false, false) => Err(
            "filters alone do not select events to retry; add --all-matching to retry every \
             dead event matching them (try --dry-run first)",
        ),
        (false, true) => Err(
            "nothing selected; give event ids (retry 12 13), filters with --all-matching, or \
             --all to retry every dead event",
        ),
    }
}

/// Writes every matching dead event (payloads included) to `out`; returns how many.
async fn export(
    store: &Store,
    filter: &DeadFilter,
    format: ExportFormat,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    match format {
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            let mut header = CSV_SUMMARY_HEADER.to_vec();
            header.extend(["payload", "headers", "unreadable"]);
            w.write_record(&header)?;
            let count = for_each_dead(store, filter, |event| {
                Ok(w.write_record(csv_record(event, true))?)
            })
            .await?;
            w.flush()?;
            Ok(count)
        }
        ExportFormat::Json => {
            out.write_all(b"[")?;
            let mut first = true;
            let count = for_each_dead(store, filter, |event| {
                out.write_all(if first { b"\n" } else { b",\n" })?;
                first = false;
                Ok(serde_json::to_writer(&mut *out, event)?)
            })
            .await?;
            out.write_all(b"\n]\n")?;
            Ok(count)
        }
    }
}

/// Calls `write` for every matching dead event, page by page (memory holds one page);
/// returns how many there were.
async fn for_each_dead(
    store: &Store,
    filter: &DeadFilter,
    mut write: impl FnMut(&DeadEvent) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut count = 0_u64;
    let mut after_id = None;
    loop {
        let page = Page::new(MAX_PAGE_LIMIT, after_id)?;
        let DeadPage {
            events,
            next_after_id,
        } = store
            .list_dead(filter, &page, Detail::Full)
            .await
            .with_context(|| format!("exporting dead events from {}", store.table()))?;
        for event in &events {
            write(event)?;
            count += 1;
        }
        match next_after_id {
            Some(next) => after_id = Some(next),
            None => return Ok(count),
        }
    }
}

fn time_text(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

fn csv_record(event: &DeadEvent, full: bool) -> Vec<String> {
    let mut record = vec![
        event.id.to_string(),
        event.aggregate_type.clone(),
        event.aggregate_id.clone(),
        event.event_type.clone(),
        event.attempts.to_string(),
        event.last_error.clone().unwrap_or_default(),
        time_text(event.last_error_at),
        time_text(event.created_at),
    ];
    if full {
        for raw in [&event.payload, &event.headers] {
            record.push(raw.as_ref().map_or("null", |r| r.get()).to_owned());
        }
    }
    record.push(event.unreadable.clone().unwrap_or_default());
    record
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn print_list(page: &DeadPage, format: ListFormat) -> anyhow::Result<()> {
    match format {
        ListFormat::Json => print_json(page)?,
        ListFormat::Csv => {
            let mut w = csv::Writer::from_writer(io::stdout().lock());
            let mut header = CSV_SUMMARY_HEADER.to_vec();
            header.push("unreadable");
            w.write_record(&header)?;
            for event in &page.events {
                w.write_record(csv_record(event, false))?;
            }
            w.flush()?;
        }
        ListFormat::Table => {
            let mut out = io::stdout().lock();
            if page.events.is_empty() {
                writeln!(out, "no dead events match")?;
            } else {
                let rows: Vec<[String; 6]> = page
                    .events
                    .iter()
                    .map(|e| {
                        [
                            e.id.to_string(),
                            format!("{}/{}", e.aggregate_type, e.aggregate_id),
                            e.event_type.clone(),
                            e.attempts.to_string(),
                            e.last_error_at
                                .or(e.created_at)
                                .map(short_time)
                                .unwrap_or_default(),
                            match &e.unreadable {
                                Some(why) => {
                                    one_line(&format!("unreadable: {why}"), TABLE_ERROR_CHARS)
                                }
                                None => one_line(
                                    e.last_error.as_deref().unwrap_or("-"),
                                    TABLE_ERROR_CHARS,
                                ),
                            },
                        ]
                    })
                    .collect();
                write_table(
                    &mut out,
                    [
                        "ID",
                        "AGGREGATE",
                        "EVENT TYPE",
                        "ATTEMPTS",
                        "FAILED AT",
                        "LAST ERROR",
                    ],
                    &rows,
                )?;
            }
            if let Some(next) = page.next_after_id {
                eprintln!("more dead events follow: repeat with --after-id {next}");
            }
        }
    }
    Ok(())
}

fn print_stats(stats: &DeadStats) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    write!(out, "dead events: {}", stats.total)?;
    if let (Some(oldest), Some(newest)) = (stats.oldest_failed_at, stats.newest_failed_at) {
        write!(
            out,
            " (failed between {} and {})",
            short_time(oldest),
            short_time(newest)
        )?;
    }
    writeln!(out)?;
    for (title, groups) in [
        ("EVENT TYPE", &stats.by_event_type),
        ("AGGREGATE TYPE", &stats.by_aggregate_type),
        ("LAST ERROR (most frequent)", &stats.by_last_error),
    ] {
        if groups.is_empty() {
            continue;
        }
        writeln!(out)?;
        let rows: Vec<[String; 2]> = groups
            .iter()
            .map(|g| [one_line(&g.name, TABLE_ERROR_CHARS), g.count.to_string()])
            .collect();
        write_table(&mut out, [title, "COUNT"], &rows)?;
    }
    Ok(())
}

fn print_event(event: &DeadEvent) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "id:             {}", event.id)?;
    writeln!(
        out,
        "aggregate:      {}/{}",
        event.aggregate_type, event.aggregate_id
    )?;
    writeln!(out, "event type:     {}", event.event_type)?;
    writeln!(out, "attempts:       {}", event.attempts)?;
    writeln!(out, "created at:     {}", time_text(event.created_at))?;
    if let Some(unreadable) = &event.unreadable {
        writeln!(out, "unreadable:     {unreadable}")?;
    }
    writeln!(out, "last error at:  {}", time_text(event.last_error_at))?;
    writeln!(
        out,
        "last error:     {}",
        event.last_error.as_deref().unwrap_or("-")
    )?;
    writeln!(out, "headers:        {}", raw_text(&event.headers))?;
    writeln!(out, "payload:")?;
    // Pretty-printed for reading; `--format json` gives the stored text unchanged.
    let pretty = event
        .payload
        .as_ref()
        .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    writeln!(
        out,
        "{}",
        pretty.unwrap_or_else(|| raw_text(&event.payload))
    )?;
    Ok(())
}

fn print_retry(ids: &[i64], dry_run: bool, format: ReportFormat) -> anyhow::Result<()> {
    match format {
        ReportFormat::Json => print_json(&serde_json::json!({"retried": ids, "dry_run": dry_run})),
        ReportFormat::Table => {
            let list = ids
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let mut out = io::stdout().lock();
            match (dry_run, ids.is_empty()) {
                (_, true) => writeln!(out, "no dead events matched; nothing to retry")?,
                (true, false) => writeln!(
                    out,
                    "dry run: would retry {} dead events: {list}\nnothing was changed",
                    ids.len()
                )?,
                (false, false) => writeln!(
                    out,
                    "retried {} dead events: {list}\nthe running relay delivers them within \
                     DISPATCHBOX_SWEEP_INTERVAL",
                    ids.len()
                )?,
            }
            Ok(())
        }
    }
}

fn raw_text(raw: &Option<Box<serde_json::value::RawValue>>) -> String {
    raw.as_ref().map_or("null", |r| r.get()).to_owned()
}

fn short_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// `text` on one line, cut to `max` characters with an ellipsis.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn write_table<const N: usize>(
    out: &mut impl Write,
    header: [&str; N],
    rows: &[[String; N]],
) -> io::Result<()> {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
