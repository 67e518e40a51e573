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
//! standby status covering everything settled and leaves the stream cleanly.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SinkKind};
use crate::dispatch::backoff::Backoff;
use crate::dispatch::ordering::BlockedAggregates;
use crate::dispatch::{self, Deliverer, DispatchConfig, RetryPolicy};
use crate::replication::lsn::Lsn;
use crate::replication::progress::Progress;
use crate::replication::source::{self, SourceConfig, SourceError};
use crate::sink::kafka::{KafkaSink, KafkaSinkConfig};
use crate::sink::stdout::StdoutSink;
use crate::sink::webhook::{WebhookSink, WebhookSinkConfig};
use crate::sink::Sink;
use crate::store::status::{StatusWriter, StatusWriterConfig};
use crate::store::{checks, Store};
use crate::sweeper::{self, SweepConfig};

/// Why the relay stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("startup check failed: {0}")]
    Check(#[from] checks::CheckError),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] crate::conninfo::SqlConnectError),
    #[error("database error: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot set up sink {sink}: {reason}")]
    Sink { sink: &'static str, reason: String },
    #[error(transparent)]
    Source(Box<SourceError>),
}

/// Runs the relay until `shutdown` is cancelled (Ok) or a definite error stops it.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    let pool = config.database.pool(8)?;
    let store = Store::new(pool, config.names.table().clone());

    preflight(&store, &config, &shutdown).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }

    let sinks: Arc<[Sink]> = build_sinks(&config)?.into();
    let deliverer = Deliverer::new(
        sinks.clone(),
        config.router.clone(),
        RetryPolicy {
            max_attempts: config.max_attempts,
            backoff: Backoff {
                base: config.backoff_base,
                max: config.backoff_max,
            },
        },
    );
    let blocked = BlockedAggregates::default();
    if config.ordering {
        // Aggregates with events already waiting in their rows (from before a restart)
        // stay blocked until their backlog drained.
        for key in store.backlogged_aggregates().await? {
            blocked.block(key);
        }
    }

    let (settlements, status_writer) = StatusWriter::spawn(
        store.clone(),
        StatusWriterConfig {
            max_batch: config.status_batch_size,
            ..StatusWriterConfig::default()
        },
    );
    let (work_tx, work_rx) = mpsc::channel(config.max_in_flight);
    let dispatcher = tokio::spawn(dispatch::run(
        work_rx,
        deliverer.clone(),
        store.clone(),
        blocked.clone(),
        settlements,
        DispatchConfig {
            max_in_flight: config.max_in_flight,
            ordering: config.ordering,
            shutdown_timeout: config.shutdown_timeout,
        },
        shutdown.clone(),
    ));
    let settled = async move {
        let _ = dispatcher.await;
        let _ = status_writer.join().await;
    };
    let heartbeat = tokio::spawn(heartbeat(
        store.clone(),
        config.heartbeat_interval,
        shutdown.clone(),
    ));
    let (catch_up_tx, catch_up_rx) = tokio::sync::watch::channel(None);
    let sweeper = tokio::spawn(sweeper::run(
        store.clone(),
        deliverer,
        blocked,
        SweepConfig {
            interval: config.sweep_interval,
            grace: config.sweep_grace,
            batch: config.sweep_batch,
            lease: config.sweep_lease,
            ordering: config.ordering,
        },
        catch_up_rx,
        shutdown.clone(),
    ));

    let progress = Progress::new(Lsn::ZERO);
    let result = source::run(
        SourceConfig {
            conninfo: config.database.clone(),
            slot: config.slot.clone(),
            publication: config.names.publication().clone(),
            table: config.names.table().clone(),
            status_interval: config.status_interval,
            max_message_size: config.max_message_size,
            reconnect_max: config.reconnect_max,
            shutdown_timeout: config.shutdown_timeout,
            slot_recreate_limit: config.slot_recreate_limit,
            store: store.clone(),
            catch_up: catch_up_tx,
        },
        progress,
        work_tx,
        shutdown.clone(),
        settled,
    )
    .await;
    shutdown.cancel();
    let _ = heartbeat.await;
    let _ = tokio::time::timeout(config.shutdown_timeout, sweeper).await;
    for sink in sinks.iter() {
        sink.close(Duration::from_secs(5)).await;
    }
    result.map_err(|e| RelayError::Source(Box::new(e)))
}

/// Checks the database before streaming. Unreachable databases are retried (they may be
/// starting); misconfiguration fails at once with what to fix.
async fn preflight(
    store: &Store,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    let backoff = Backoff {
        base: Duration::from_millis(250),
        max: config.reconnect_max,
    };
    let mut attempt = 0;
    loop {
        match store.preflight(&config.names).await {
            Ok(facts) => {
                for warning in facts.warnings() {
                    tracing::warn!(warning = %warning, "database check");
                }
                return Ok(());
            }
            Err(error) if error.is_transient() => {
                attempt += 1;
                let delay = backoff.delay(attempt, &mut rand::thread_rng());
                tracing::warn!(error = %error, retry_in = ?delay, "database not reachable yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

pub(crate) fn build_sinks(config: &Config) -> Result<Vec<Sink>, RelayError> {
    config
        .sinks
        .iter()
        .map(|kind| match kind {
            SinkKind::Stdout => Ok(Sink::Stdout(StdoutSink::new())),
            SinkKind::Webhook => {
                let webhook = config.webhook.as_ref().ok_or(RelayError::Sink {
                    sink: "webhook",
                    reason: "DISPATCHBOX_WEBHOOK_URL is not set".into(),
                })?;
                WebhookSink::new(WebhookSinkConfig {
                    url: webhook.url.clone(),
                    secrets: webhook.secrets.expose().clone(),
                    timeout: webhook.timeout,
                    max_concurrency: webhook.concurrency,
                })
                .map(Sink::Webhook)
                .map_err(|e| RelayError::Sink {
                    sink: "webhook",
                    reason: e.to_string(),
                })
            }
            SinkKind::Kafka => {
                let kafka = config.kafka.as_ref().ok_or(RelayError::Sink {
                    sink: "kafka",
                    reason: "DISPATCHBOX_KAFKA_BROKERS is not set".into(),
                })?;
                KafkaSink::new(KafkaSinkConfig {
                    brokers: kafka.brokers.clone(),
                    topic_template: kafka.topic_template.clone(),
                    properties: kafka.properties.expose().clone(),
                    delivery_timeout: kafka.delivery_timeout,
                })
                .map(Sink::Kafka)
                .map_err(|e| RelayError::Sink {
                    sink: "kafka",
                    reason: e.to_string(),
                })
            }
        })
        .collect()
}

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
