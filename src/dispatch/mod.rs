//! Dispatch: takes decoded events, hands each to every enabled sink, and turns the results
//! into outcomes for the status writer. It never sees LSNs (it carries the event's
//! [`Ack`] through untouched) and never touches the database.
//!
//! Concurrency is bounded by `max_in_flight`: when that many deliveries are outstanding the
//! dispatcher stops reading its input, which backs up the bounded channel to the
//! replication reader. Deliveries are started in arrival (commit) order, and every sink
//! hands an event to its transport synchronously when the delivery starts, so events of one
//! aggregate reach a sink in commit order.

pub mod backoff;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::OutboxEvent;
use crate::replication::progress::Ack;
use crate::sink::{DeliveryError, Sink};
use crate::store::status::{Outcome, Settlement};
use backoff::Backoff;

/// Work handed from the replication stream to the dispatcher.
#[derive(Debug)]
pub enum Work {
    /// Deliver this event; settle `ack` once its outcome is durable.
    Deliver { event: Arc<OutboxEvent>, ack: Ack },
    /// A row that cannot become an event (e.g. a malformed `headers` value): it is marked
    /// `dead` with `reason` and never delivered.
    Unusable { id: i64, reason: String, ack: Ack },
}

/// Dispatcher settings.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Deliveries outstanding at once, at most.
    pub max_in_flight: usize,
    /// Delivery attempts before an event is `dead`.
    pub max_attempts: u32,
    /// Delay policy for `retry` rows.
    pub backoff: Backoff,
    /// After shutdown begins, how long outstanding deliveries may still finish.
    pub shutdown_timeout: Duration,
}

/// Runs until `input` closes, then waits for outstanding deliveries (bounded by
/// `shutdown_timeout` counted from `shutdown`), and returns. Deliveries still outstanding
/// at the deadline are abandoned: their events stay unsettled, so the flush position does
/// not pass them and they are delivered again after a restart.
pub async fn run(
    mut input: mpsc::Receiver<Work>,
    sinks: Arc<[Sink]>,
    settlements: mpsc::Sender<Settlement>,
    config: DispatchConfig,
    shutdown: CancellationToken,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut input_open = true;
    // Runs until shutdown (intake stops at once: queued events stay unsettled and are
    // streamed again after a restart) or until the input closes and everything settled.
    while input_open || !in_flight.is_empty() {
        let can_take = input_open && in_flight.len() < config.max_in_flight;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(delivered) = in_flight.next(), if !in_flight.is_empty() => {
                if !settle(&settlements, delivered, &config).await {
                    return;
                }
            }
            work = input.recv(), if can_take => match work {
                Some(Work::Deliver { event, ack }) => {
                    in_flight.push(deliver(&sinks, event, ack));
                }
                Some(Work::Unusable { id, reason, ack }) => {
                    tracing::warn!(event_id = id, error = %reason, "outbox row cannot be delivered; marking it dead");
                    let settlement = Settlement { id, outcome: Outcome::Dead { error: reason }, ack: Some(ack), written: None };
                    if settlements.send(settlement).await.is_err() {
                        return;
                    }
                }
                None => input_open = false,
            },
        }
    }
    if in_flight.is_empty() {
        return;
    }
    // Shutdown with deliveries outstanding: let them finish up to the timeout.
    tracing::info!(
        outstanding = in_flight.len(),
        timeout = ?config.shutdown_timeout,
        "waiting for in-flight deliveries"
    );
    let drain = async {
        while let Some(delivered) = in_flight.next().await {
            if !settle(&settlements, delivered, &config).await {
                return;
            }
        }
    };
    if tokio::time::timeout(config.shutdown_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown timeout reached with deliveries outstanding; they will be delivered again after restart"
        );
    }
}

type Delivered = (Arc<OutboxEvent>, Ack, Result<(), DeliveryError>);

/// Hands the outcome of a finished delivery to the status writer; false when it is gone.
async fn settle(
    settlements: &mpsc::Sender<Settlement>,
    (event, ack, result): Delivered,
    config: &DispatchConfig,
) -> bool {
    let outcome = outcome(&event, result, config);
    let settlement = Settlement {
        id: event.id,
        outcome,
        ack: Some(ack),
        written: None,
    };
    settlements.send(settlement).await.is_ok()
}

/// Starts the delivery of `event` to every sink now (in call order), and returns a future
/// with the combined result: Ok only when every sink accepted it.
fn deliver(
    sinks: &[Sink],
    event: Arc<OutboxEvent>,
    ack: Ack,
) -> impl std::future::Future<Output = Delivered> + Send + 'static {
    let started: Vec<_> = sinks
        .iter()
        .map(|sink| {
            let name = sink.name();
            let delivery = sink.deliver(event.clone());
            async move { (name, delivery.await) }
        })
        .collect();
    async move {
        let mut combined = Ok(());
        for (sink, result) in futures_util::future::join_all(started).await {
            let Err(error) = result else { continue };
            tracing::warn!(event_id = event.id, event_type = %event.event_type, sink, error = %error, "delivery failed");
            // A permanent failure on any sink decides the outcome.
            if !matches!(combined, Err(DeliveryError::Permanent { .. })) {
                combined = Err(error);
            }
        }
        (event, ack, combined)
    }
}

fn outcome(
    event: &OutboxEvent,
    result: Result<(), DeliveryError>,
    config: &DispatchConfig,
) -> Outcome {
    // Events from the stream are on their first attempt.
    let attempt = 1;
    match result {
        Ok(()) => Outcome::Done,
        Err(DeliveryError::Permanent { reason }) => Outcome::Dead { error: reason },
        Err(DeliveryError::Retryable { reason, .. }) if attempt >= config.max_attempts => {
            tracing::warn!(
                event_id = event.id,
                attempt,
                "attempts exhausted; marking dead"
            );
            Outcome::Dead { error: reason }
        }
        Err(DeliveryError::Retryable {
            reason,
            retry_after,
        }) => {
            let delay = config
                .backoff
                .delay(attempt, &mut rand::thread_rng())
                .max(retry_after.unwrap_or_default());
            let next_run_at = Utc::now()
                + chrono::Duration::from_std(delay)
                    .unwrap_or_else(|_| chrono::Duration::seconds(1));
            Outcome::Retry {
                error: reason,
                next_run_at,
            }
        }
    }
}
