//! Sinks: where events go. Each sink hands one [`OutboxEvent`] to its transport and reports
//! whether the transport durably accepted it, classified as [`DeliveryError::Retryable`] or
//! [`DeliveryError::Permanent`] where the failure is produced.
//!
//! Sinks never touch the database, never decide about retries or backoff (the dispatcher
//! does), and never log payloads or header values.
//!
//! The set of sinks is closed, so [`Sink`] is an enum with plain methods rather than a trait
//! object; adding a sink means adding a variant and one arm per method, and a variant of
//! [`SinkConfig`]. Each sink module owns its config type and the rules for it
//! (`validate`); [`Sink::from_config`] is the one place a sink is built from its config.

pub mod format;
pub mod kafka;
#[cfg(test)]
pub mod memory;
pub mod nats;
pub mod rabbitmq;
pub mod redis;
pub mod stdout;
pub mod template;
mod tls;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt as _};

use crate::event::OutboxEvent;

pub use self::redis::{RedisSink, RedisSinkConfig, RedisSinkError};
pub use kafka::{KafkaSink, KafkaSinkConfig, KafkaSinkError};
pub use nats::{NatsSink, NatsSinkConfig, NatsSinkError};
pub use rabbitmq::{RabbitMqSink, RabbitMqSinkConfig, RabbitMqSinkError};
pub use stdout::StdoutSink;
pub use webhook::{WebhookSink, WebhookSinkConfig, WebhookSinkError};

/// The settings of one sink: what [`Sink::from_config`] builds a sink from. The
/// configuration fills one per enabled sink, from that sink's variables, and validates it.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    Kafka(KafkaSinkConfig),
    Nats(NatsSinkConfig),
    Redis(RedisSinkConfig),
    Webhook(WebhookSinkConfig),
    /// Stdout with its format (`native` or `cloudevents`, always structured).
    Stdout(format::Format),
    RabbitMq(RabbitMqSinkConfig),
}

impl SinkConfig {
    /// The sink's name, as `DISPATCHBOX_SINKS` and `DISPATCHBOX_ROUTES` spell it and as
    /// [`Sink::name`] reports it (`webhook:<endpoint>` for a named webhook endpoint).
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Nats(_) => "nats",
            SinkConfig::Redis(_) => "redis",
            SinkConfig::Webhook(webhook) => &webhook.name,
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::RabbitMq(_) => "rabbitmq",
        }
    }

    /// How long one delivery may take before it counts as failed, where the sink bounds it
    /// (Kafka: the delivery timeout; webhook: the request timeout). Stdout has no bound of
    /// its own: a write lasts as long as the reader takes.
    pub fn delivery_timeout(&self) -> Option<Duration> {
        match self {
            SinkConfig::Kafka(kafka) => Some(kafka.delivery_timeout),
            SinkConfig::Nats(nats) => Some(nats.timeout),
            SinkConfig::Redis(redis) => Some(redis.timeout),
            SinkConfig::Webhook(webhook) => Some(webhook.timeout),
            SinkConfig::Stdout(_) => None,
            SinkConfig::RabbitMq(rabbitmq) => Some(rabbitmq.delivery_timeout),
        }
    }
}

/// Why a sink could not be built from its config. A config that passed its sink's
/// `validate` fails here only for reasons of the environment (TLS setup, the producer's
/// threads) or for combinations of Kafka properties that librdkafka checks on creation.
#[derive(Debug, thiserror::Error)]
pub enum SinkSetupError {
    #[error(transparent)]
    Kafka(#[from] KafkaSinkError),
    #[error(transparent)]
    Nats(#[from] NatsSinkError),
    #[error(transparent)]
    Redis(#[from] RedisSinkError),
    #[error(transparent)]
    Webhook(#[from] WebhookSinkError),
    #[error(transparent)]
    RabbitMq(#[from] RabbitMqSinkError),
}

impl SinkSetupError {
    /// The kind of sink that could not be built (`webhook` for every webhook endpoint: what
    /// fails here fails for all of them alike).
    pub fn sink(&self) -> &'static str {
        match self {
            SinkSetupError::Kafka(_) => "kafka",
            SinkSetupError::Nats(_) => "nats",
            SinkSetupError::Redis(_) => "redis",
            SinkSetupError::Webhook(_) => "webhook",
            SinkSetupError::RabbitMq(_) => "rabbitmq",
        }
    }
}

/// One configured sink.
///
/// # Contract
///
/// - **Concurrency.** Every method takes `&self`; callers may share a `Sink` (e.g. in an
///   `Arc`) and call [`Sink::deliver`] from many tasks at once, and may keep many deliveries
///   in flight.
/// - **Ordering.** The hand-off to the transport happens synchronously inside
///   [`Sink::deliver`], before it returns the future. Events whose `deliver` calls happen in
///   a given order (on one task, or serialised by the caller) reach the transport in that
///   order, and Kafka keeps that order per key (idempotent producer). The returned futures
///   may be polled in any order without affecting it. Ordering is only promised among events
///   that succeed: if an event fails, events handed off after it may already have been
///   delivered, so a caller that pipelines several events of one aggregate must hold back
///   or re-deliver the later ones itself.
///   **Exception: webhook, nats, redis.** A request (HTTP request, JetStream publish, `XADD`)
///   starts only when its future is polled (webhook requests also run in parallel over
///   several connections), so outstanding deliveries of these sinks may arrive in any
///   order; per-aggregate order needs at most one outstanding delivery per aggregate, which
///   is what the dispatcher keeps.
///   RabbitMQ keeps the contract through its publisher task: `deliver` queues the message
///   synchronously, and the task publishes in queue order on one channel.
/// - **Ok** means the transport durably accepted the event (Kafka: acknowledged by the
///   broker with `acks=all`; RabbitMQ: a publisher confirm (ack) for a message that was
///   routed to a queue; NATS: acknowledged by the JetStream stream; Redis: `XADD` answered
///   with the entry id; stdout: written and flushed). The caller may settle the event
///   as `done`.
/// - **Err** means the event may or may not have reached the transport (a timed-out Kafka
///   produce can still land): re-delivering it is allowed and is how at-least-once holds.
///   Consumers dedupe by the `id` header (webhook: `webhook-id`; Redis: the `id` field;
///   NATS: JetStream itself drops a re-delivery within the stream's duplicate window, by
///   `Nats-Msg-Id`).
/// - Futures are `'static` and do not borrow the sink: dropping one does not cancel the
///   hand-off; it only discards the outcome (webhook, nats, redis: dropping a future before
///   it was polled cancels its request, see the ordering exception).
#[derive(Debug)]
pub enum Sink {
    Kafka(KafkaSink),
    Nats(NatsSink),
    Redis(RedisSink),
    Stdout(StdoutSink),
    Webhook(WebhookSink),
    RabbitMq(RabbitMqSink),
    /// Unit tests only: records hand-offs and answers as scripted.
    #[cfg(test)]
    Memory(memory::MemorySink),
}

impl Sink {
    /// Builds the sink `config` describes. Contacts nothing (use [`Sink::check`] for that).
    pub fn from_config(config: &SinkConfig) -> Result<Self, SinkSetupError> {
        Ok(match config {
            SinkConfig::Kafka(kafka) => Sink::Kafka(KafkaSink::new(kafka.clone())?),
            SinkConfig::Nats(nats) => Sink::Nats(NatsSink::new(nats.clone())?),
            SinkConfig::Redis(redis) => Sink::Redis(RedisSink::new(redis.clone())?),
            SinkConfig::Webhook(webhook) => Sink::Webhook(WebhookSink::new(webhook.clone())?),
            SinkConfig::Stdout(format) => Sink::Stdout(StdoutSink::new(format.clone())),
            SinkConfig::RabbitMq(rabbitmq) => Sink::RabbitMq(RabbitMqSink::new(rabbitmq.clone())?),
        })
    }

    /// Label for logs and metrics, as `DISPATCHBOX_SINKS` spells it: `"kafka"`, `"stdout"`,
    /// `"webhook"` or `"webhook:<endpoint>"`.
    pub fn name(&self) -> &str {
        match self {
            Sink::Kafka(_) => "kafka",
            Sink::Nats(_) => "nats",
            Sink::Redis(_) => "redis",
            Sink::Stdout(_) => "stdout",
            Sink::Webhook(sink) => sink.name(),
            Sink::RabbitMq(_) => "rabbitmq",
            #[cfg(test)]
            Sink::Memory(_) => "memory",
        }
    }

    /// Where `event` goes inside the transport, for trace spans: the Kafka topic; `None`
    /// for sinks without named destinations (a webhook's URL is not one, stdout has one).
    pub fn destination(&self, event: &OutboxEvent) -> Option<String> {
        match self {
            Sink::Kafka(sink) => Some(sink.topic_for(event)),
            Sink::Nats(sink) => Some(sink.subject_for(event)),
            Sink::Redis(sink) => Some(sink.stream_for(event)),
            Sink::RabbitMq(sink) => Some(sink.destination_for(event).0),
            Sink::Stdout(_) | Sink::Webhook(_) => None,
            #[cfg(test)]
            Sink::Memory(_) => None,
        }
    }

    /// Hands `event` to the transport now and returns a future that resolves once the outcome
    /// is known. See the type-level contract for ordering and what `Ok` allows.
    pub fn deliver(
        &self,
        event: Arc<OutboxEvent>,
    ) -> BoxFuture<'static, Result<(), DeliveryError>> {
        // One allocation per delivery buys a flat match over every sink (next to a
        // transport round trip it does not show).
        match self {
            Sink::Kafka(sink) => sink.deliver(event).boxed(),
            Sink::Nats(sink) => sink.deliver(event).boxed(),
            Sink::Redis(sink) => sink.deliver(event).boxed(),
            Sink::Stdout(sink) => sink.deliver(&event).boxed(),
            Sink::Webhook(sink) => sink.deliver(event).boxed(),
            Sink::RabbitMq(sink) => sink.deliver(event).boxed(),
            #[cfg(test)]
            Sink::Memory(sink) => sink.deliver(&event).boxed(),
        }
    }

    /// Flushes what is still buffered, waiting at most `timeout`. Called once on shutdown,
    /// after the last `deliver`; outcomes not known by then resolve as retryable errors.
    pub async fn close(&self, timeout: Duration) {
        match self {
            Sink::Kafka(sink) => sink.close(timeout).await,
            Sink::Nats(sink) => sink.close(timeout).await,
            Sink::Redis(sink) => sink.close(),
            Sink::Stdout(sink) => sink.close(),
            Sink::Webhook(sink) => sink.close(),
            Sink::RabbitMq(sink) => sink.close(timeout).await,
            #[cfg(test)]
            Sink::Memory(_) => {}
        }
    }

    /// Cheap readiness probe (for `/ready` and `dispatchbox check`), bounded by `timeout`.
    /// Kafka: a cluster metadata request; stdout: always ready; webhook: the URL's host
    /// resolves (no request is sent).
    pub async fn check(&self, timeout: Duration) -> Result<(), DeliveryError> {
        match self {
            Sink::Kafka(sink) => sink.check(timeout).await,
            Sink::Nats(sink) => sink.check(timeout).await,
            Sink::Redis(sink) => sink.check(timeout).await,
            Sink::Stdout(_) => Ok(()),
            Sink::Webhook(sink) => sink.check(timeout).await,
            Sink::RabbitMq(sink) => sink.check(timeout).await,
            #[cfg(test)]
            Sink::Memory(_) => Ok(()),
        }
    }
}

/// Why a delivery failed, classified by what the caller should do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The event itself is fine; the transport is unavailable, slow or overloaded. Retry
    /// later (not before `retry_after` when the transport asked for a pause).
    #[error("{reason}")]
    Retryable {
        /// Lower-case, names the destination (topic, broker); stored as `last_error`.
        reason: String,
        /// Minimum pause the transport asked for, when it did.
        retry_after: Option<Duration>,
    },
    /// This event can never be delivered as it is (illegal topic, too large, not
    /// authorised, …): mark it `dead` without further attempts.
    #[error("{reason}")]
    Permanent {
        /// Lower-case, names the destination and how an operator can fix it.
        reason: String,
    },
}

impl DeliveryError {
    /// A retryable error without a transport-requested pause.
    pub fn retryable(reason: impl Into<String>) -> Self {
        DeliveryError::Retryable {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A permanent error.
    pub fn permanent(reason: impl Into<String>) -> Self {
        DeliveryError::Permanent {
            reason: reason.into(),
        }
    }

    /// True for [`DeliveryError::Permanent`].
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Permanent { .. })
    }

    /// The human-readable reason (what goes into `last_error`).
    pub fn reason(&self) -> &str {
        match self {
            DeliveryError::Retryable { reason, .. } | DeliveryError::Permanent { reason } => reason,
        }
    }
}
