//! The `dispatchbox` binary: parses the command line, loads the configuration, sets up
//! logging, runs the chosen command and maps the outcome to an exit code. No business logic.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use dispatchbox::cli;
use dispatchbox::config::Config;

/// Transactional-outbox relay for PostgreSQL: streams outbox INSERTs from a logical
/// replication slot to Kafka, NATS JetStream, Redis Streams, webhooks or stdout and writes
/// each event's status back onto its row.
///
/// Configuration comes from DISPATCHBOX_* environment variables: `dispatchbox run --help`
/// lists them with their defaults, README.md explains them.
#[derive(Debug, Parser)]
#[command(
    name = "dispatchbox",
    version,
    about,
    long_about = None,
    after_help = "Settings are DISPATCHBOX_* environment variables: `dispatchbox run --help` lists them with their defaults."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay until SIGTERM or SIGINT.
    #[command(after_help = dispatchbox::config::variables::help())]
    Run,
    /// Create or upgrade the outbox table and the publication (idempotent).
    Migrate,
    /// Check the database and the sinks; say what is wrong and how to fix it.
    Check(cli::check::CheckArgs),
    /// Show the replication slot, lag and row counts.
    Status(cli::status::StatusArgs),
    /// List, inspect, export and retry dead events.
    Dead(cli::dead::DeadArgs),
    /// Return delivered events to pending so the running relay delivers them again.
    Replay(cli::replay::ReplayArgs),
    /// Move old delivered (and optionally dead) rows to the archive table.
    Archive(cli::archive::ArchiveArgs),
    /// Exit 0 when the running relay's /health answers (for container health checks).
    Healthcheck,
}

/// Exit code for invalid configuration.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure while running.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Healthcheck = cli.command {
        // Needs only DISPATCHBOX_HTTP_ADDR: containers run it without the rest.
        return cli::healthcheck::run_blocking();
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("dispatchbox: invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    dispatchbox::telemetry::init_logging(config.log.format, &config.log.level);
    // Spans are exported only by `run`; the exporter's blocking HTTP client is set up and
    // flushed here, outside the async runtime.
    let traces = match (&cli.command, &config.traces) {
        (Command::Run, Some(settings)) => match dispatchbox::telemetry::traces::init(settings) {
            Ok(export) => Some(export),
            Err(error) => {
                eprintln!("dispatchbox: cannot start the OTLP trace export: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        },
        _ => None,
    };

    // One thread runs every async task. The relay's work is hand-offs between its stages
    // (stream → dispatcher → sinks → status writer → feedback); on one thread they cost a
    // queue push, across threads a wake-up each, which at a few thousand events per second
    // was half of the relay's CPU and took cores from PostgreSQL (docs/benchmarks.md). What
    // may block runs on threads of its own: librdkafka's, the stdout sink's writer, and
    // `spawn_blocking`.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dispatchbox: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run => {
                let shutdown = CancellationToken::new();
                tokio::spawn(dispatchbox::shutdown::cancel_on_signal(shutdown.clone()));
                dispatchbox::relay::run(config, shutdown)
                    .await
                    .map(|()| ExitCode::SUCCESS)
                    .map_err(anyhow::Error::from)
            }
            Command::Migrate => cli::migrate::run(&config).await.map(|()| ExitCode::SUCCESS),
            Command::Check(args) => cli::check::run(&config, &args).await,
            Command::Status(args) => cli::status::run(&config, &args).await,
            Command::Dead(args) => cli::dead::run(&config, &args).await,
            Command::Archive(args) => cli::archive::run(&config, &args).await,
            Command::Replay(args) => cli::replay::run(&config, &args).await,
            Command::Healthcheck => Ok(cli::healthcheck::run_blocking()),
        }
    });
    drop(runtime);
    if let Some(export) = traces {
        export.shutdown();
    }
    match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "dispatchbox stopped");
            eprintln!("dispatchbox: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
