//! `dispatchbox run`: builds the pipeline and owns its lifecycle.
//!
//! ```text
//! source ──Work (bounded)──▶ dispatcher ──Settlement (bounded)──▶ status writer
//!   ▲  └─ standby status (Progress)                                   │
//!   └──────────────────── Ack::settle (durable outcome) ◀──────────────┘
//! ```
//!
//! Shutdown order (SIGTERM/SIGINT): the source stops reading and closes the work channel;
//! the dispatcher lets in-flight deliveries finish (up to the shutdown timeout) and closes
//! the settlement channel; the status writer flushes; then the source sends a final
//! standby status covering everything settled and leaves the stream cleanly. The admin
//! server answers throughout (`/ready` says 503 from the signal on) and stops last.
//!
//! Wiring only: each section of the validated [`Config`] becomes its stage's config (which
//! adds the runtime handles: store, health, budget, channels). Nothing is checked again
//! here; the configuration did that once, at startup.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminServer, AdminState};
use crate::config::Config;
use crate::dispatch::{self, Deliverer, DispatchConfig};
use crate::flow::budget::ByteBudget;
use crate::flow::ordering::BlockedAggregates;
use crate::lsn::Lsn;
use crate::names::Identifier;
use crate::ops::checks;
use crate::retry::Backoff;
use crate::sink::{Sink, SinkConfig, SinkSetupError};
use crate::source::progress::Progress;
use crate::source::slot::{self, SlotWalStatus};
use crate::source::stream::{self as source, SourceConfig, SourceError};
use crate::status::{StatusWriter, StatusWriterConfig};
use crate::store::Store;
use crate::sweeper::{self, SweepConfig};
use crate::telemetry::events::{Emit, SinkChecked};
use crate::telemetry::health::{Health, SinkHealth};
use crate::telemetry::metrics;

/// How often the replication lag and slot state are read for the metrics.
const SLOT_METRICS_INTERVAL: Duration = Duration::from_secs(5);
/// The dead-row count (a count over the partial dead-letter index) and the backlog (range
/// scans of the partial due index) are refreshed every this many slot readings (every 15 s).
const DEAD_COUNT_EVERY: u32 = 3;
/// The backlog query may take at most this share of the time: when it took longer than
/// 15 s / `BACKLOG_COST_SHARE` (a backlog of millions of rows), it waits that many times its
/// duration before running again, so a large backlog never becomes database load of its own.
const BACKLOG_COST_SHARE: u32 = 100;

/// Why the relay stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    // The check error is the source: `{:#}` (main) appends it once.
    #[error("startup check failed")]
    Check(#[from] checks::CheckError),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] crate::conninfo::SqlConnectError),
    #[error("database error: {0}")]
    Store(#[from] crate::store::StoreError),
    // The setup error is the source: `{:#}` (main) appends it once.
    #[error("cannot set up sink {}", .0.sink())]
    Sink(#[from] SinkSetupError),
    #[error(transparent)]
    Source(Box<SourceError>),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
}

/// Runs the relay until `shutdown` is cancelled (Ok) or a definite error stops it.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    metrics::init();
    let pool = config
        .database
        .conninfo
        .pool_with_setup(8, Some(crate::store::SESSION_SETTINGS))?;
    let store = Store::new(pool, config.database.names.table().clone());
    let sinks = config
        .sinks
        .iter()
        .map(Sink::from_config)
        .collect::<Result<Arc<[Sink]>, _>>()?;
    for sink in sinks.iter() {
        metrics::sink_enabled(sink.name());
    }
    let health = Health::new();
    let admin = AdminServer::start(
        config.admin.http_addr,
        admin::router(
            AdminState::new(
                health.clone(),
                store.clone(),
                sinks.clone(),
                config.database.slot.clone(),
            ),
            config.admin.token.clone(),
        ),
    )
    .await?;
    tokio::spawn({
        let (health, shutdown) = (health.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            health.begin_shutdown();
        }
    });

    // A token of its own: it must also stop when the pipeline fails, which cancels nothing.
    let stop_sink_checks = shutdown.child_token();
    let sink_checks = tokio::spawn(watch_sinks(
        sinks.clone(),
        health.clone(),
        stop_sink_checks.clone(),
    ));

    let result = pipeline(&config, store, sinks, health, &shutdown).await;
    stop_sink_checks.cancel();
    let _ = sink_checks.await;
    admin.stop(Duration::from_secs(1)).await;
    result
}

/// Checks the database, then runs the pipeline until shutdown or a definite error.
async fn pipeline(
    config: &Config,
    store: Store,
    sinks: Arc<[Sink]>,
    health: Health,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    let Some(facts) = preflight(&store, config, shutdown).await? else {
        return Ok(());
    };
    // Every text the relay writes is cut to fit the columns it goes into.
    let store = store.with_text_widths(facts.text_widths());
    let deliverer = Deliverer::new(
        sinks.clone(),
        config.dispatch.router.clone(),
        config.dispatch.retry,
    );
    // Aggregates with events waiting in their rows are loaded by the source each time it
    // starts streaming (not here: a standby that takes over later must see what the
    // leader left), and forgotten by the sweeper once their backlog drained.
    let blocked = BlockedAggregates::default();
    let budget = ByteBudget::new(config.dispatch.max_in_flight_bytes);
    let ordering = config.dispatch.ordering;

    let (settlements, status_writer) = StatusWriter::spawn(
        store.clone(),
        StatusWriterConfig {
            max_batch: config.status.batch_size,
            linger: config.status.linger,
            stall_timeout: config.status.stall_timeout,
            health: health.clone(),
            ..StatusWriterConfig::default()
        },
    );
    let (work_tx, work_rx) = mpsc::channel(config.dispatch.max_in_flight);
    let dispatcher = tokio::spawn(dispatch::run(
        work_rx,
        deliverer.clone(),
        store.clone(),
        blocked.clone(),
        settlements,
        DispatchConfig {
            max_in_flight: config.dispatch.max_in_flight,
            ordering,
            shutdown_timeout: config.shutdown_timeout,
            replay_grace: replay_grace(config),
        },
        shutdown.clone(),
    ));
    let settled = async move {
        let _ = dispatcher.await;
        let _ = status_writer.join().await;
    };
    let heartbeat = tokio::spawn(heartbeat(
        store.clone(),
        config.source.heartbeat_interval,
        shutdown.clone(),
    ));
    let database_metrics = tokio::spawn(database_metrics(
        store.clone(),
        config.database.slot.clone(),
        shutdown.clone(),
    ));
    let progress = Progress::new(Lsn::ZERO);
    let coverage = tokio::spawn(watch_stream_coverage(
        store.clone(),
        config.database.names.clone(),
        progress.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let sweep_now = Arc::new(tokio::sync::Notify::new());
    let sweeper = tokio::spawn(sweeper::run(
        store.clone(),
        deliverer,
        blocked.clone(),
        SweepConfig {
            interval: config.sweeper.interval,
            grace: config.sweeper.grace,
            slot: config.database.slot.as_str().to_owned(),
            batch: config.sweeper.batch,
            lease: config.sweeper.lease,
            ordering,
            budget: budget.clone(),
        },
        sweep_now.clone(),
        shutdown.clone(),
    ));

    let result = source::run(
        SourceConfig {
            conninfo: config.database.conninfo.clone(),
            slot: config.database.slot.clone(),
            publication: config.database.names.publication().clone(),
            table: config.database.names.table().clone(),
            status_interval: config.source.status_interval,
            max_message_size: config.source.max_message_size,
            reconnect_max: config.source.reconnect_max,
            shutdown_timeout: config.shutdown_timeout,
            slot_recreate_limit: config.source.slot_recreate_limit,
            store: store.clone(),
            sweep_now,
            health,
            budget,
            blocked: ordering.then_some(blocked),
        },
        progress,
        work_tx,
        shutdown.clone(),
        settled,
    )
    .await;
    shutdown.cancel();
    let _ = heartbeat.await;
    let _ = database_metrics.await;
    let _ = coverage.await;
    let _ = tokio::time::timeout(config.shutdown_timeout, sweeper).await;
    for sink in sinks.iter() {
        sink.close(Duration::from_secs(5)).await;
    }
    result.map_err(|e| RelayError::Source(Box::new(e)))
}

/// Checks the database and the replication slot before streaming (the judgements of
/// `dispatchbox check`). Unreachable databases are retried (they may be starting);
/// misconfiguration, and a slot of that name that is not the relay's, fail at once with
/// what to fix. Returns what the checks read, or `None` when shutdown came first.
async fn preflight(
    store: &Store,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Option<checks::ServerFacts>, RelayError> {
    let backoff = Backoff {
        base: Duration::from_millis(250),
        max: config.source.reconnect_max,
    };
    let names = &config.database.names;
    let mut attempt = 0;
    loop {
        match checks::preflight_store(store, names, &config.database.slot).await {
            Ok(facts) => {
                for warning in facts.warnings(names) {
                    tracing::warn!(warning = %warning, "database check");
                }
                return Ok((!shutdown.is_cancelled()).then_some(facts));
            }
            Err(error) if error.is_transient() => {
                attempt += 1;
                let delay = backoff.delay(attempt, &mut rand::thread_rng());
                tracing::warn!(error = %error, retry_in = ?delay, "database not reachable yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// How long a replayed event still `pending` waits before the sweeper delivers it (see
/// `DispatchConfig::replay_grace`): the longest delivery a relay that held the slot
/// before may still have had in flight, plus the status linger and a margin.
fn replay_grace(config: &Config) -> Duration {
    let longest_delivery = config
        .sinks
        .iter()
        .filter_map(SinkConfig::delivery_timeout)
        .max()
        .unwrap_or_default();
    longest_delivery + config.status.linger + REPLAY_MARGIN
}

/// Added to the longest delivery for [`replay_grace`]: the status write and its retries.
const REPLAY_MARGIN: Duration = Duration::from_secs(15);

/// Refreshes the gauges read from the database: replication lag and slot state every
/// [`SLOT_METRICS_INTERVAL`], the dead-row count and the backlog every [`DEAD_COUNT_EVERY`]
/// of those (the backlog less often while it is large: [`BACKLOG_COST_SHARE`]).
/// Failures are logged at DEBUG only: an unreachable database is reported elsewhere.
async fn database_metrics(store: Store, slot: Identifier, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(SLOT_METRICS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_backlog = tokio::time::Instant::now();
    for tick in 0u32.. {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match slot::inspect_with(&store, &slot).await {
            Ok(status) if status.exists => metrics::replication_slot(
                status.wal_status.map_or("unknown", SlotWalStatus::as_str),
                status.lag_bytes,
            ),
            Ok(_) => metrics::replication_slot("missing", None),
            Err(error) => {
                tracing::debug!(error = %error, "cannot read the replication slot for metrics")
            }
        }
        if tick % DEAD_COUNT_EVERY == 0 {
            match store.count_dead().await {
                Ok(rows) => metrics::dead_rows(rows),
                Err(error) => tracing::debug!(error = %error, "cannot count dead rows for metrics"),
            }
        }
        if tick % DEAD_COUNT_EVERY == 0 && tokio::time::Instant::now() >= next_backlog {
            let started = tokio::time::Instant::now();
            match store.backlog().await {
                Ok(backlog) => metrics::outbox_backlog(&backlog.by_status, backlog.oldest_age),
                Err(error) => {
                    tracing::debug!(error = %error, "cannot count the backlog for metrics")
                }
            }
            next_backlog = started + started.elapsed() * BACKLOG_COST_SHARE;
        }
    }
}

/// Every [`SLOT_METRICS_INTERVAL`], checks that the stream can still see the outbox's
/// inserts (the table exists under its name and the publication contains it). While it
/// cannot, the flush position is held ([`Progress::hold`]) and `/ready` says why; the hold
/// ends when the check passes again. A failed check (database unreachable) changes
/// nothing: that is reported elsewhere.
async fn watch_stream_coverage(
    store: Store,
    names: crate::names::Names,
    progress: Progress,
    health: Health,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(SLOT_METRICS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match store.stream_coverage(&names).await {
            Ok(Some(problem)) => {
                if !held {
                    tracing::error!(problem = %problem, "the stream cannot see the outbox's inserts; holding the confirmed position");
                }
                progress.hold(true);
                health.set_problem(crate::telemetry::health::OUTBOX_TABLE, Some(problem));
                held = true;
            }
            Ok(None) => {
                // Also ends a hold the source set when it saw the table renamed.
                if held || health.has_problem(crate::telemetry::health::OUTBOX_TABLE) {
                    tracing::info!("the outbox table is published again; confirming again");
                }
                progress.hold(false);
                health.set_problem(crate::telemetry::health::OUTBOX_TABLE, None);
                held = false;
            }
            Err(error) => tracing::debug!(error = %error, "cannot check the outbox table"),
        }
    }
}

/// Checks every sink at start and then every [`SINK_CHECK_INTERVAL`] (a Kafka check is a
/// metadata request: often enough for a gauge, rare enough not to load the brokers), and
/// records the results for `/ready` and `dispatchbox_sink_up`. A sink that fails its check
/// makes nothing stop or wait: deliveries to it fail and are retried from the rows.
async fn watch_sinks(sinks: Arc<[Sink]>, health: Health, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(SINK_CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let checks = sinks
            .iter()
            .map(|sink| async move { (sink.name(), sink.check(SINK_CHECK_TIMEOUT).await) });
        for (sink, result) in futures_util::future::join_all(checks).await {
            let failed = result.err().map(|error| error.to_string());
            let was = health.set_sink(sink, failed.clone().map_or(Ok(()), Err));
            SinkChecked {
                sink,
                failed: failed.as_deref(),
                was_up: match was {
                    SinkHealth::Unknown => None,
                    SinkHealth::Up => Some(true),
                    SinkHealth::Down(_) => Some(false),
                },
            }
            .emit();
        }
    }
}

/// How often [`watch_sinks`] checks the sinks.
const SINK_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Longest one sink check may take before it counts as failed.
const SINK_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Emits a `pg_logical_emit_message` heartbeat every `interval`: it keeps decodable WAL
/// flowing on quiet databases, so the keepalive position (and the slot) keeps advancing.
async fn heartbeat(store: Store, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(error) = store.emit_heartbeat().await {
            tracing::warn!(error = %error, "heartbeat failed");
        }
    }
}
