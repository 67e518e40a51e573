//! The RabbitMQ sink: AMQP 0-9-1 through `lapin`, one connection with one channel in
//! publisher-confirm mode, publishing each event to an exchange and routing key rendered
//! from templates.
//!
//! Message shape (built in [`message`], the one function a format would replace):
//! `mandatory` set; properties `delivery_mode` = 2 (persistent), `message_id` = the row id
//! in decimal (the idempotency key), `content_type` = `application/json`, `type` = the
//! event type, `timestamp` = `created_at` (Unix seconds), `app_id` = `dispatchbox`; headers
//! `id`, `event_type`, `aggregate_type`, `aggregate_id`, `created_at` (RFC 3339), then the
//! event's own headers (how `traceparent`/`tracestate` travel). An event header whose name
//! collides with one of those five is dropped, as in the Kafka sink, and so is one whose name
//! is longer than an AMQP short string (255 bytes). Body = the payload bytes exactly.
//!
//! The relay declares nothing: exchanges, queues and bindings belong to the operator. What
//! the broker says about them is classified in `classify_error` and `classify_confirmation`:
//! - a missing exchange (the broker closes the channel with 404) and an unroutable message
//!   (returned with 312 NO_ROUTE because `mandatory` is set) are **permanent**, like an
//!   unknown Kafka topic: the topology is an operator's to fix, and retrying the same
//!   message against it cannot help. The reason says what to declare or bind; once it is
//!   fixed, `dispatchbox dead retry` sends the dead events again.
//! - 403 on an exchange (no write permission) and a message over the broker's
//!   `max_message_size` are permanent too.
//! - A broker nack, connection loss, a missed heartbeat, a refused or failed connect and a
//!   missing confirm within the delivery timeout are **retryable**; so is anything
//!   unexpected, so a surprise costs attempts, never an event.
//!
//! Ordering: `deliver` renders the message and queues it on the sink's publisher task
//! synchronously, in call order; that task publishes one message after another on the one
//! channel, and RabbitMQ keeps a channel's order into each queue. So the type-level contract
//! of [`super::Sink`] holds as for Kafka: events handed off in order are published in order,
//! among those that succeed. Confirms are awaited concurrently, so many deliveries can be in
//! flight.
//!
//! Returned messages are matched to their events by `message_id` (the row id), never by the
//! confirm lapin attaches them to. lapin (4.12) hands the oldest returned message of a
//! channel to whichever confirm it completes next, and a `multiple` ack completes its
//! confirms in hash-map order, so `Confirmation::Ack(Some(returned))` can sit on a routed
//! message's confirm while the unroutable one gets a bare `Ack(None)`: trusting it would
//! mark the routed event `dead` and the dropped one `done`. The broker sends a message's
//! `basic.return` before its `basic.ack`, so once a message's confirm has resolved, its
//! return sits on a confirm that has resolved too (its own, one of the same ack frame, or an
//! earlier one). The publisher task's confirm pump (`Confirms`, bookkeeping in `Ledger`)
//! therefore takes the returns out of every resolved confirm, files them by message id and
//! judges a delivery only when every confirm resolved before its own has been seen.
//!
//! TLS (`amqps://`): rustls with ring, verifying the broker against the webpki root set plus
//! the certificates of `ca_pem` (a private CA), for the host named in the URL.
//!
//! Connection loss: the channel and connection are replaced on the next publish after one
//! breaks (broker closed the channel, socket error, missed heartbeat, or a confirm that did
//! not come within the delivery timeout while the broker was not blocking publishers). A
//! failed connect makes the events queued in the next second fail at once instead of each
//! waiting for its own connect attempt, so a dead broker never holds events up for longer
//! than one connect attempt.
//!
//! Owns: templates, the connection, the message shape, and the classification of every
//! broker answer. Must not: declare or delete anything on the broker, log payloads, header
//! values or the URL's password, touch the database, or retry on its own.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    PublisherConfirm,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::format::{cloudevents, CloudEventsMode, Format};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use super::template as shared;
use super::DeliveryError;
use crate::event::OutboxEvent;

/// Exchange used when none is configured: one topic exchange the operator declares once,
/// that queues bind to by pattern (`order.#`, `*.order.created`).
pub const DEFAULT_EXCHANGE_TEMPLATE: &str = "outbox";

/// Routing key used when none is configured.
pub const DEFAULT_ROUTING_KEY_TEMPLATE: &str = "{aggregate_type}.{event_type}";

/// Upper bound for one delivery (queueing, connecting, publishing, the confirm) by default.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages queued for the publisher task at most; beyond that `deliver` fails as
/// retryable. Far above what the dispatcher keeps in flight.
const QUEUE_CAPACITY: usize = 65_536;

/// After a failed connect, how long events fail at once with that error before the next
/// connect attempt.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Longest connect (TCP, TLS, AMQP handshake, channel, confirm mode).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest AMQP short string: exchange names, routing keys, header names, `message_id`.
const MAX_SHORT_STRING: usize = 255;

/// Names of the headers the sink sets itself; event headers with these names are dropped.
const RESERVED_HEADERS: [&str; 5] = [
    "id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "created_at",
];

/// `delivery_mode` of a persistent message.
const PERSISTENT: u8 = 2;

/// What the RabbitMQ sink needs to start.
#[derive(Clone)]
pub struct RabbitMqSinkConfig {
    /// AMQP URI: `amqp://user:password@host:port/vhost` (`amqps://` for TLS, verified against
    /// the webpki root set; the vhost percent-encoded, `%2f` for `/`). Holds a password, so
    /// only scheme, host, port and vhost are ever printed.
    pub url: String,
    /// Exchange template with `{aggregate_type}` / `{event_type}` placeholders (default
    /// [`DEFAULT_EXCHANGE_TEMPLATE`]); empty means the default exchange.
    pub exchange_template: String,
    /// Routing-key template, same placeholders (default [`DEFAULT_ROUTING_KEY_TEMPLATE`]).
    pub routing_key_template: String,
    /// Upper bound for one delivery, from `deliver` to the broker's confirm (default
    /// [`DEFAULT_DELIVERY_TIMEOUT`]).
    pub delivery_timeout: Duration,
    /// PEM certificates trusted for `amqps` besides the webpki root set (a private CA).
    pub ca_pem: Option<String>,
    /// Native (the module doc) or CloudEvents (the RabbitMQ protocol binding).
    pub format: Format,
}

impl RabbitMqSinkConfig {
    /// A config for `url` with the default templates and timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            exchange_template: DEFAULT_EXCHANGE_TEMPLATE.to_owned(),
            routing_key_template: DEFAULT_ROUTING_KEY_TEMPLATE.to_owned(),
            delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
            ca_pem: None,
            format: Format::Native,
        }
    }

    /// Checks everything [`RabbitMqSink::new`] rejects (the URL, both templates, a zero
    /// timeout) without connecting. The configuration calls it at startup, so a mistake is
    /// reported with the variable that holds it.
    pub fn validate(&self) -> Result<(), RabbitMqSinkError> {
        self.parse().map(drop)
    }

    /// `amqp://host:port/vhost`: the URL without credentials, for messages.
    pub fn endpoint(&self) -> String {
        parse_url(&self.url)
            .map(|(_, endpoint)| endpoint)
            .unwrap_or_else(|_| "<invalid url>".to_owned())
    }

    fn parse(&self) -> Result<Parsed, RabbitMqSinkError> {
        let (uri, endpoint) = parse_url(&self.url)?;
        let exchange = Template::parse(&self.exchange_template, TemplateKind::Exchange)?;
        let routing_key = Template::parse(&self.routing_key_template, TemplateKind::RoutingKey)?;
        if self.delivery_timeout.is_zero() {
            return Err(RabbitMqSinkError::ZeroTimeout);
        }
        if let Some(pem) = &self.ca_pem {
            if uri.scheme != AMQPScheme::AMQPS {
                return Err(RabbitMqSinkError::CaWithoutTls);
            }
            let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| RabbitMqSinkError::CaCertificates)?;
            if certificates.is_empty() {
                return Err(RabbitMqSinkError::CaCertificates);
            }
        }
        Ok(Parsed {
            uri,
            endpoint,
            exchange,
            routing_key,
        })
    }
}

/// The URL holds a password: only its endpoint prints.
impl std::fmt::Debug for RabbitMqSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSinkConfig")
            .field("url", &self.endpoint())
            .field("exchange_template", &self.exchange_template)
            .field("routing_key_template", &self.routing_key_template)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("ca_pem", &self.ca_pem.is_some())
            .finish()
    }
}

/// A validated config.
struct Parsed {
    uri: AMQPUri,
    endpoint: String,
    exchange: Template,
    routing_key: Template,
}

/// Why the RabbitMQ sink could not be built (configuration errors, reported at startup).
/// Messages never echo the URL: it holds a password.
#[derive(Debug, thiserror::Error)]
pub enum RabbitMqSinkError {
    #[error(
        "rabbitmq url is not a valid url ({reason}); expected e.g. \
         amqp://user:password@rabbitmq:5672/%2f"
    )]
    InvalidUrl { reason: url::ParseError },
    #[error("rabbitmq url must use amqp or amqps, not {scheme:?}")]
    UnsupportedScheme { scheme: String },
    #[error("rabbitmq url has no host")]
    MissingHost,
    #[error(
        "rabbitmq url is not a valid AMQP URI: {reason} (query parameters frame_max, \
         channel_max, heartbeat and connection_timeout take whole numbers, auth_mechanism \
         PLAIN, AMQPLAIN, RABBIT-CR-DEMO or EXTERNAL)"
    )]
    InvalidUri { reason: &'static str },
    #[error(
        "rabbitmq {kind} template {template:?} uses unknown placeholder {{{placeholder}}}; \
         the placeholders are {{aggregate_type}} and {{event_type}}"
    )]
    UnknownPlaceholder {
        kind: TemplateKind,
        template: String,
        placeholder: String,
    },
    #[error("rabbitmq {kind} template {template:?} has a '{{' without a closing '}}'")]
    UnclosedPlaceholder {
        kind: TemplateKind,
        template: String,
    },
    #[error(
        "rabbitmq exchange template {template:?} contains {found:?}, which is not allowed in an \
         exchange name; use ASCII letters, digits, '-', '_', '.' and ':'"
    )]
    IllegalExchangeCharacter { template: String, found: char },
    #[error(
        "rabbitmq {kind} template {template:?} is longer than {MAX_SHORT_STRING} bytes before \
         its placeholders are even filled in"
    )]
    TemplateTooLong {
        kind: TemplateKind,
        template: String,
    },
    #[error("rabbitmq delivery timeout must be greater than zero")]
    ZeroTimeout,
    #[error("rabbitmq ca certificates are only used with amqps://; the url uses amqp://")]
    CaWithoutTls,
    #[error("rabbitmq ca file holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    CaCertificates,
}

/// Which template an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    Exchange,
    RoutingKey,
}

impl std::fmt::Display for TemplateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TemplateKind::Exchange => "exchange",
            TemplateKind::RoutingKey => "routing key",
        })
    }
}

/// The AMQP URI and its printable endpoint (`amqp://host:port/vhost`, no credentials).
fn parse_url(text: &str) -> Result<(AMQPUri, String), RabbitMqSinkError> {
    let url = url::Url::parse(text).map_err(|reason| RabbitMqSinkError::InvalidUrl { reason })?;
    if !matches!(url.scheme(), "amqp" | "amqps") {
        return Err(RabbitMqSinkError::UnsupportedScheme {
            scheme: url.scheme().to_owned(),
        });
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or(RabbitMqSinkError::MissingHost)?
        .to_owned();
    // The parser's own messages can quote the whole URL, password included: not shown.
    let mut uri: AMQPUri = text.parse().map_err(|_| RabbitMqSinkError::InvalidUri {
        reason: "a query parameter or the vhost could not be parsed",
    })?;
    // amq-protocol-uri takes the host from `Url::domain`, which is empty for IP addresses
    // (it then falls back to "localhost"); the host as written is what the operator meant.
    uri.authority.host = match url.host() {
        Some(url::Host::Domain(domain)) => percent_encoding::percent_decode_str(domain)
            .decode_utf8_lossy()
            .into_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(RabbitMqSinkError::MissingHost),
    };
    let scheme = match uri.scheme {
        AMQPScheme::AMQP => "amqp",
        AMQPScheme::AMQPS => "amqps",
    };
    let endpoint = format!(
        "{scheme}://{host}:{}/{}",
        uri.authority.port,
        percent_encoding::utf8_percent_encode(&uri.vhost, percent_encoding::NON_ALPHANUMERIC)
    );
    Ok((uri, endpoint))
}

/// Publishes events to RabbitMQ. See the module doc for the message shape and the error
/// classification, and [`super::Sink`] for the delivery contract.
pub struct RabbitMqSink {
    shared: Arc<Shared>,
    /// The publisher task's queue; the task is started on first use (it needs a runtime)
    /// and again if it ever went away.
    queue: Mutex<Option<mpsc::Sender<Command>>>,
}

/// What the sink, its publisher task and every delivery share.
struct Shared {
    uri: AMQPUri,
    /// `amqp://host:port/vhost`: what messages name.
    endpoint: String,
    exchange: Template,
    routing_key: Template,
    delivery_timeout: Duration,
    /// Extra trusted roots for `amqps`.
    tls: OwnedTLSConfig,
    format: Format,
}

impl Shared {
    /// What a delivery that reached its deadline reports (the delivery future and the
    /// publisher task race to say it; both say the same).
    fn timed_out(&self, exchange: &str) -> DeliveryError {
        DeliveryError::retryable(format!(
            "rabbitmq exchange {exchange:?}: no confirm from {} within {}",
            self.endpoint,
            humantime::format_duration(self.delivery_timeout)
        ))
    }
}

/// The URI holds a password: only the endpoint prints.
impl std::fmt::Debug for RabbitMqSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSink")
            .field("endpoint", &self.shared.endpoint)
            .field("exchange", &self.shared.exchange.source)
            .field("routing_key", &self.shared.routing_key.source)
            .finish_non_exhaustive()
    }
}

impl RabbitMqSink {
    /// Validates the config. Contacts nothing: the connection is opened by the first
    /// delivery or [`RabbitMqSink::check`].
    pub fn new(config: RabbitMqSinkConfig) -> Result<Self, RabbitMqSinkError> {
        let parsed = config.parse()?;
        Ok(Self {
            shared: Arc::new(Shared {
                uri: parsed.uri,
                endpoint: parsed.endpoint,
                exchange: parsed.exchange,
                routing_key: parsed.routing_key,
                delivery_timeout: config.delivery_timeout,
                tls: OwnedTLSConfig {
                    identity: None,
                    cert_chain: config.ca_pem,
                },
                format: config.format,
            }),
            queue: Mutex::new(None),
        })
    }

    /// The exchange and routing key `event` is published with (not yet validated).
    pub fn destination_for(&self, event: &OutboxEvent) -> (String, String) {
        (
            self.shared.exchange.render(event),
            self.shared.routing_key.render(event),
        )
    }

    /// Queues `event` on the publisher task now and returns a future resolving to the
    /// broker's verdict. Ok = confirmed (acked) by the broker and routed to at least one
    /// queue. See [`super::Sink::deliver`].
    pub fn deliver(
        &self,
        event: Arc<OutboxEvent>,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send + 'static {
        let deadline = Instant::now() + self.shared.delivery_timeout;
        let queued = self.enqueue(&event, deadline);
        let shared = Arc::clone(&self.shared);
        async move {
            let (answer, exchange) = queued?;
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_dropped)) => Err(DeliveryError::retryable(format!(
                    "rabbitmq sink for {} stopped before the broker confirmed event {}",
                    shared.endpoint, event.id
                ))),
                Err(_elapsed) => Err(shared.timed_out(&exchange)),
            }
        }
    }

    /// The synchronous half of `deliver`: render, validate, queue.
    fn enqueue(
        &self,
        event: &OutboxEvent,
        deadline: Instant,
    ) -> Result<(oneshot::Receiver<Result<(), DeliveryError>>, String), DeliveryError> {
        let (exchange, routing_key) = self.destination_for(event);
        if let Err(problem) = validate_exchange_name(&exchange) {
            return Err(DeliveryError::permanent(format!(
                "rabbitmq exchange {exchange:?} rendered from template {:?} for event {} is not a \
                 legal exchange name ({problem}); change the template or the event's \
                 aggregate/event type",
                self.shared.exchange.source, event.id
            )));
        }
        if routing_key.len() > MAX_SHORT_STRING {
            return Err(DeliveryError::permanent(format!(
                "rabbitmq routing key rendered from template {:?} for event {} is {} bytes long, \
                 the limit is {MAX_SHORT_STRING}; change the template or the event's \
                 aggregate/event type",
                self.shared.routing_key.source,
                event.id,
                routing_key.len()
            )));
        }
        let (properties, body) = message(event, &self.shared.format)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            exchange: exchange.clone(),
            routing_key,
            properties,
            body,
            deadline,
            reply,
        };
        self.send(Command::Publish(Box::new(job)))?;
        Ok((answer, exchange))
    }

    /// Queues `command` on the publisher task, starting the task if needed.
    fn send(&self, command: Command) -> Result<(), DeliveryError> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = match queue.as_ref().filter(|sender| !sender.is_closed()) {
            Some(sender) => sender.clone(),
            None => {
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                    DeliveryError::retryable(
                        "rabbitmq sink used outside a tokio runtime; this is a bug",
                    )
                })?;
                let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
                let publisher = Publisher {
                    shared: Arc::clone(&self.shared),
                    session: None,
                    down: None,
                    generations: 0,
                };
                runtime.spawn(publisher.run(receiver));
                *queue = Some(sender.clone());
                sender
            }
        };
        sender.try_send(command).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => DeliveryError::Retryable {
                reason: format!(
                    "rabbitmq sink for {}: {QUEUE_CAPACITY} messages are waiting to be \
                     published; the broker is not keeping up",
                    self.shared.endpoint
                ),
                retry_after: Some(RECONNECT_PAUSE),
            },
            mpsc::error::TrySendError::Closed(_) => DeliveryError::retryable(format!(
                "rabbitmq sink for {} has stopped",
                self.shared.endpoint
            )),
        })
    }

    /// Waits up to `timeout` for outstanding confirms, then closes the connection. Events
    /// still unconfirmed resolve as retryable errors.
    pub async fn close(&self, timeout: Duration) {
        let (reply, done) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        if self.send(Command::Close { deadline, reply }).is_ok()
            && tokio::time::timeout_at(deadline + Duration::from_millis(500), done)
                .await
                .is_err()
        {
            tracing::warn!(
                sink = "rabbitmq",
                endpoint = %self.shared.endpoint,
                "rabbitmq connection did not close within the shutdown timeout; \
                 unconfirmed events will be retried"
            );
        }
    }

    /// Readiness: a connection is open (opened now if needed) and the broker answers a
    /// channel open within `timeout`.
    pub async fn check(&self, timeout: Duration) -> Result<(), DeliveryError> {
        let deadline = Instant::now() + timeout;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Probe { deadline, reply })?;
        let endpoint = &self.shared.endpoint;
        let probe = async {
            let connection = answer.await.map_err(|_| {
                DeliveryError::retryable(format!("rabbitmq sink for {endpoint} has stopped"))
            })??;
            let channel = connection
                .create_channel()
                .await
                .map_err(|error| connection_error(&error, endpoint))?;
            let _ = channel.close(200, "readiness probe".into()).await;
            Ok(())
        };
        tokio::time::timeout_at(deadline, probe)
            .await
            .unwrap_or_else(|_elapsed| {
                Err(DeliveryError::retryable(format!(
                    "rabbitmq broker {endpoint} did not answer within {}",
                    humantime::format_duration(timeout)
                )))
            })
    }
}

/// The properties and body of `event`'s message in `format` (see the module doc for the
/// native shape). The one place a message format is decided.
///
/// CloudEvents follow the RabbitMQ protocol binding (as the CloudEvents SDKs read it): in
/// binary mode the attributes are `ce-` headers and `content_type` is the data's media
/// type; in structured mode the body is the `application/cloudevents+json` document. Either
/// way the row's own headers follow (a `ce-` name excepted), and `message_id`, persistence,
/// `type` and `timestamp` are set as in the native format.
pub fn message(
    event: &OutboxEvent,
    format: &Format,
) -> Result<(BasicProperties, Bytes), DeliveryError> {
    let ce = match format {
        Format::CloudEvents(ce) => ce,
        // The configuration refuses debezium for RabbitMQ.
        Format::Native | Format::Debezium(_) => return Ok(native_message(event)),
    };
    let mut headers = FieldTable::default();
    let (content_type, body) = match ce.mode {
        CloudEventsMode::Binary => {
            for (name, value) in ce.attributes(event) {
                headers.insert(format!("ce-{name}").into(), long_string(&value));
            }
            (cloudevents::DATA_CONTENT_TYPE, event.payload.clone())
        }
        CloudEventsMode::Structured => {
            let document = ce.structured(event).map_err(|err| {
                DeliveryError::permanent(format!(
                    "payload of event {} is not valid json ({err}); it cannot be sent as a \
                     CloudEvent",
                    event.id
                ))
            })?;
            (cloudevents::STRUCTURED_CONTENT_TYPE, Bytes::from(document))
        }
    };
    for (name, value) in &event.headers {
        if !name.to_ascii_lowercase().starts_with("ce-") && name.len() <= MAX_SHORT_STRING {
            headers.insert(name.as_str().into(), long_string(value));
        }
    }
    Ok((
        properties(event, event.id.to_string(), content_type, headers),
        body,
    ))
}

/// The native message: see the module doc.
fn native_message(event: &OutboxEvent) -> (BasicProperties, Bytes) {
    let mut headers = FieldTable::default();
    let id = event.id.to_string();
    let fixed = [
        ("id", id.as_str()),
        ("event_type", event.event_type.as_str()),
        ("aggregate_type", event.aggregate_type.as_str()),
        ("aggregate_id", event.aggregate_id.as_str()),
    ];
    for (name, value) in fixed {
        headers.insert(name.into(), long_string(value));
    }
    headers.insert(
        "created_at".into(),
        long_string(&event.created_at_rfc3339()),
    );
    for (name, value) in &event.headers {
        if !RESERVED_HEADERS.contains(&name.as_str()) && name.len() <= MAX_SHORT_STRING {
            headers.insert(name.as_str().into(), long_string(value));
        }
    }
    (
        properties(event, id, "application/json", headers),
        event.payload.clone(),
    )
}

/// The properties every message of `event` carries, whatever its format: persistent, the
/// row id (`id`, already in text) as `message_id`, the event type as `type`, `created_at` as
/// `timestamp`.
fn properties(
    event: &OutboxEvent,
    id: String,
    content_type: &str,
    headers: FieldTable,
) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(content_type.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(id.into())
        .with_type(short_string(&event.event_type))
        .with_timestamp(u64::try_from(event.created_at.timestamp()).unwrap_or(0))
        .with_app_id("dispatchbox".into())
        .with_headers(headers)
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// `value` cut to the short-string limit at a character boundary (only `type` can be
/// longer: event types are free text).
fn short_string(value: &str) -> ShortString {
    let mut end = value.len().min(MAX_SHORT_STRING);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].into()
}

/// RabbitMQ's exchange name rules: at most 255 bytes of `[A-Za-z0-9-_.:]`; empty is the
/// default exchange.
fn validate_exchange_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_SHORT_STRING {
        return Err(format!(
            "it is {} bytes long, the limit is {MAX_SHORT_STRING}",
            name.len()
        ));
    }
    match name.chars().find(|&c| !is_exchange_char(c)) {
        Some(c) => Err(format!(
            "{c:?} is not allowed; use ASCII letters, digits, '-', '_', '.' and ':'"
        )),
        None => Ok(()),
    }
}

fn is_exchange_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// What the publisher task is asked to do.
enum Command {
    // Boxed: properties make a job several hundred bytes, and the queue holds commands.
    Publish(Box<Job>),
    /// Open the connection if needed and hand it out for a probe.
    Probe {
        deadline: Instant,
        reply: oneshot::Sender<Result<Arc<Connection>, DeliveryError>>,
    },
    /// Wait for outstanding confirms (until `deadline`), then close the connection.
    Close {
        deadline: Instant,
        reply: oneshot::Sender<()>,
    },
}

/// One message to publish.
struct Job {
    exchange: String,
    routing_key: String,
    properties: BasicProperties,
    body: Bytes,
    /// When the delivery future gives up; a job still queued then is not published.
    deadline: Instant,
    reply: oneshot::Sender<Result<(), DeliveryError>>,
}

/// An open connection and its confirm-mode channel.
struct Session {
    connection: Arc<Connection>,
    channel: Channel,
    /// Numbers the channels the publisher opened: returned messages are matched to
    /// publications of the same channel only.
    generation: u64,
    /// Set when a confirm did not arrive in time while the broker was not blocking
    /// publishers: the connection is presumed dead and replaced before the next publish.
    stale: Arc<AtomicBool>,
}

/// The task that owns the connection and publishes in queue order; its confirm pump
/// ([`Confirms`]) answers the published messages.
struct Publisher {
    shared: Arc<Shared>,
    session: Option<Session>,
    /// The last failed connect: until when events fail at once, and why.
    down: Option<(Instant, DeliveryError)>,
    /// Channels opened so far (the last one's generation).
    generations: u64,
}

impl Publisher {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut confirms = Confirms::new(Arc::clone(&self.shared));
        while let Some(command) = alongside(&mut confirms, commands.recv(), |_, _| {}).await {
            match command {
                Command::Publish(job) => {
                    alongside(&mut confirms, self.publish(*job), |confirms, published| {
                        if let Some(published) = published.take() {
                            confirms.admit(published);
                        }
                    })
                    .await;
                }
                Command::Probe { deadline, reply } => {
                    let connection = alongside(&mut confirms, self.session(deadline), |_, _| {})
                        .await
                        .map(|session| Arc::clone(&session.connection));
                    let _ = reply.send(connection);
                }
                Command::Close { deadline, reply } => {
                    let all_answered = std::future::poll_fn(|cx| {
                        confirms.observe(cx);
                        confirms.settle(cx);
                        if confirms.unanswered == 0 {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    });
                    let _ = tokio::time::timeout_at(deadline, all_answered).await;
                    if let Some(session) = self.session.take() {
                        let close = tokio::time::timeout_at(
                            deadline,
                            session
                                .connection
                                .close(200, "dispatchbox shutting down".into()),
                        );
                        let _ = alongside(&mut confirms, close, |_, _| {}).await;
                    }
                    let _ = reply.send(());
                }
            }
        }
        // The sink was dropped: nothing more will be published (deliveries still waiting
        // for a confirm report that the sink stopped).
        if let Some(session) = self.session.take() {
            drop_session(session);
        }
    }

    /// Publishes `job`; what the pump is to wait for, unless `job` was answered already.
    async fn publish(&mut self, job: Job) -> Option<Published> {
        if Instant::now() >= job.deadline {
            // Not published: the delivery future is reporting a timeout.
            let _ = job.reply.send(Err(self.shared.timed_out(&job.exchange)));
            return None;
        }
        let endpoint = self.shared.endpoint.clone();
        let (channel, generation) = match self.session(job.deadline).await {
            Ok(session) => (session.channel.clone(), session.generation),
            Err(error) => {
                let _ = job.reply.send(Err(error));
                return None;
            }
        };
        let id = job
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        let Job {
            exchange,
            routing_key,
            properties,
            body,
            deadline,
            reply,
        } = job;
        let publish = channel.basic_publish(
            exchange.as_str().into(),
            routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &body,
            properties,
        );
        let confirm = match tokio::time::timeout_at(deadline, publish).await {
            Ok(Ok(confirm)) => confirm,
            Ok(Err(error)) => {
                let _ = reply.send(Err(classify_error(
                    &error,
                    &exchange,
                    body.len(),
                    &endpoint,
                )));
                return None;
            }
            Err(_elapsed) => {
                let _ = reply.send(Err(self.shared.timed_out(&exchange)));
                // The socket did not take the frames in time: the connection is stuck.
                if let Some(session) = self.session.take() {
                    tracing::warn!(
                        sink = "rabbitmq",
                        endpoint = %endpoint,
                        "rabbitmq connection did not accept a message within the delivery \
                         timeout; reconnecting"
                    );
                    drop_session(session);
                }
                return None;
            }
        };
        let link = self
            .session
            .as_ref()
            .map(|session| (Arc::clone(&session.stale), Arc::clone(&session.connection)));
        Some(Published {
            channel,
            generation,
            id,
            exchange,
            routing_key,
            body_len: body.len(),
            deadline,
            reply,
            confirm,
            link,
        })
    }

    /// The open session, replacing a broken one first; connects if there is none (unless a
    /// connect failed less than [`RECONNECT_PAUSE`] ago).
    async fn session(&mut self, deadline: Instant) -> Result<&Session, DeliveryError> {
        let endpoint = self.shared.endpoint.clone();
        if let Some(session) = self.session.take() {
            let connection_ok =
                session.connection.status().connected() && !session.stale.load(Ordering::Relaxed);
            if connection_ok && session.channel.status().connected() {
                return Ok(self.session.insert(session));
            }
            if connection_ok {
                // The broker closed the channel (e.g. a missing exchange); the connection
                // is fine, so only the channel is replaced.
                match tokio::time::timeout_at(deadline, open_channel(&session.connection)).await {
                    Ok(Ok(channel)) => {
                        self.generations += 1;
                        return Ok(self.session.insert(Session {
                            channel,
                            generation: self.generations,
                            ..session
                        }));
                    }
                    Ok(Err(_)) | Err(_) => drop_session(session),
                }
            } else {
                tracing::warn!(
                    sink = "rabbitmq",
                    endpoint = %endpoint,
                    "rabbitmq connection lost; reconnecting (unconfirmed events will be retried)"
                );
                drop_session(session);
            }
        }
        if let Some((until, error)) = &self.down {
            if Instant::now() < *until {
                return Err(error.clone());
            }
        }
        let generation = self.generations + 1;
        let connect = async {
            let properties =
                ConnectionProperties::default().with_connection_name("dispatchbox".into());
            let runtime = lapin::runtime::default_runtime()
                .map_err(|error| connection_error(&error, &endpoint))?;
            let connection = Connection::connect_uri_with_config(
                self.shared.uri.clone(),
                properties,
                self.shared.tls.clone(),
                runtime,
            )
            .await
            .map_err(|error| connection_error(&error, &endpoint))?;
            let channel = open_channel(&connection)
                .await
                .map_err(|error| connection_error(&error, &endpoint))?;
            Ok::<_, DeliveryError>(Session {
                connection: Arc::new(connection),
                channel,
                generation,
                stale: Arc::new(AtomicBool::new(false)),
            })
        };
        let bound = deadline.min(Instant::now() + CONNECT_TIMEOUT);
        let connected = tokio::time::timeout_at(bound, connect)
            .await
            .unwrap_or_else(|_elapsed| {
                Err(DeliveryError::retryable(format!(
                    "rabbitmq broker {endpoint} did not complete a connection in time"
                )))
            });
        match connected {
            Ok(session) => {
                tracing::info!(sink = "rabbitmq", endpoint = %endpoint, "rabbitmq connected");
                self.generations = generation;
                self.down = None;
                Ok(self.session.insert(session))
            }
            Err(error) => {
                tracing::warn!(
                    sink = "rabbitmq",
                    endpoint = %endpoint,
                    error = %error,
                    "rabbitmq connect failed"
                );
                self.down = Some((Instant::now() + RECONNECT_PAUSE, error.clone()));
                Err(error)
            }
        }
    }
}

/// A new channel in confirm mode.
async fn open_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Closes a session in the background (a broken one may never answer).
fn drop_session(session: Session) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            session
                .connection
                .close(320, "dispatchbox reconnecting".into()),
        )
        .await;
    });
}

/// A failure to connect or open a channel: always retryable, with a hint when the broker
/// refused the credentials or the vhost.
fn connection_error(error: &lapin::Error, endpoint: &str) -> DeliveryError {
    let hint = match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.get_id() {
            403 => "; check the user and password in the url",
            530 => "; check that the vhost exists and the user may access it",
            _ => "",
        },
        _ => "",
    };
    DeliveryError::retryable(format!(
        "cannot connect to rabbitmq broker {endpoint}: {error}{hint}"
    ))
}

/// Sorts a publication's verdict into delivered, retryable or permanent. Ok only for an ack
/// of a message that was not returned.
fn classify_verdict(
    verdict: Verdict,
    exchange: &str,
    routing_key: &str,
    body_len: usize,
    endpoint: &str,
) -> Result<(), DeliveryError> {
    match verdict {
        Verdict::Delivered => Ok(()),
        Verdict::Returned { reply_code, .. } if reply_code == AMQPSoftError::NOROUTE.get_id() => {
            Err(DeliveryError::permanent(format!(
                "rabbitmq exchange {exchange:?} on {endpoint} routed routing key \
                 {routing_key:?} to no queue (unroutable, returned as mandatory); bind a queue \
                 for it (the relay declares nothing), then retry the dead event"
            )))
        }
        Verdict::Returned {
            reply_code,
            reply_text,
        } => Err(DeliveryError::permanent(format!(
            "rabbitmq exchange {exchange:?} on {endpoint} returned the message with routing key \
             {routing_key:?}: {reply_code} {reply_text}"
        ))),
        Verdict::Nacked => Err(DeliveryError::retryable(format!(
            "rabbitmq broker {endpoint} refused (nacked) the message for exchange {exchange:?}; \
             a queue may be full (overflow reject-publish) or unavailable"
        ))),
        Verdict::NotRequested => Err(DeliveryError::retryable(format!(
            "rabbitmq channel to {endpoint} is not in confirm mode; this is a bug"
        ))),
        Verdict::Failed(error) => Err(classify_error(&error, exchange, body_len, endpoint)),
    }
}

/// Sorts a lapin error from a publish or its confirm. The one place that decides this for
/// channel and connection failures.
///
/// The broker closes the whole channel for a message it refuses, and every message still
/// unconfirmed on it fails with the same error: only a message the error is about (its
/// exchange is named, or it is larger than the limit named) is permanent; the others were
/// caught up in it and are retryable.
fn classify_error(
    error: &lapin::Error,
    exchange: &str,
    body_len: usize,
    endpoint: &str,
) -> DeliveryError {
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return DeliveryError::retryable(format!(
            "rabbitmq exchange {exchange:?}: connection to {endpoint} failed before the broker \
             confirmed: {error}"
        ));
    };
    let text = amqp.get_message().as_str();
    let names_exchange = text.contains(&format!("exchange '{exchange}'"));
    match amqp.kind() {
        AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) if names_exchange => {
            DeliveryError::permanent(format!(
                "rabbitmq exchange {exchange:?} does not exist on {endpoint}; declare it (the \
                 relay declares nothing), then retry the dead event"
            ))
        }
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) if names_exchange => {
            DeliveryError::permanent(format!(
                "rabbitmq user may not publish to exchange {exchange:?} on {endpoint} ({text}); \
                 grant write permission, then retry the dead event"
            ))
        }
        AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            if max_size_in(text).is_some_and(|max| body_len > max) =>
        {
            DeliveryError::permanent(format!(
                "rabbitmq broker {endpoint} refused a {body_len}-byte message for exchange \
                 {exchange:?} ({text}); raise max_message_size, then retry the dead event"
            ))
        }
        _ => DeliveryError::retryable(format!(
            "rabbitmq exchange {exchange:?}: the broker {endpoint} closed the channel or \
             connection before confirming ({} {text})",
            amqp.get_id()
        )),
    }
}

/// The limit in RabbitMQ's "message size N is larger than configured max size M".
fn max_size_in(text: &str) -> Option<usize> {
    let (_, rest) = text.split_once("max size ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// How one publication ended, its returned message (if any) matched to it by message id.
#[derive(Debug)]
enum Verdict {
    /// Acked, and no returned message carries its id.
    Delivered,
    /// A returned message carries its id (whatever the confirm said).
    Returned { reply_code: u16, reply_text: String },
    /// Nacked, and not returned.
    Nacked,
    /// The channel was not in confirm mode.
    NotRequested,
    /// The channel or connection failed before the confirm.
    Failed(lapin::Error),
}

/// A resolved confirm with its returned message taken out.
#[derive(Debug)]
enum Resolution {
    Ack,
    Nack,
    NotRequested,
    Failed(lapin::Error),
}

/// Which publications carry which returned messages.
///
/// lapin hands each returned message to whichever confirm it completes next (the front of
/// the channel's queue of returns goes to the next confirm resolved, and a `multiple` ack
/// resolves its confirms in hash-map order), so `Confirmation::Ack(Some(returned))` may sit
/// on another message's confirm while the message it belongs to gets `Ack(None)`. The
/// broker sends a message's `basic.return` before its `basic.ack`, so by the time a
/// message's own confirm has resolved, its return sits on a confirm that has resolved too
/// (possibly an earlier message's, resolved before this one's publish even came back to the
/// publisher task). The ledger therefore takes every return out of every resolved confirm
/// and files it by its `message_id` (the row id, unique per event) and channel generation;
/// a publication is judged only once every confirm resolved before it has been seen.
///
/// Pure bookkeeping (no I/O): the confirm pump feeds it and acts on its verdicts.
#[derive(Default)]
struct Ledger {
    /// Publications not yet removed: key → its channel generation, message id and state.
    open: HashMap<u64, Open>,
    /// Resolved, unanswered publications waiting to be judged, in the order seen.
    resolved: Vec<(u64, Resolution)>,
    /// How many of `resolved` (from the front) may be judged now.
    ready: usize,
    /// Returned messages not yet claimed, by (channel generation, message id).
    returns: HashMap<(u64, String), VecDeque<(u16, String)>>,
    /// How many open publications carry each (channel generation, message id).
    owners: HashMap<(u64, String), usize>,
    /// Returned messages that matched no open publication (should stay 0).
    strays: u64,
}

struct Open {
    generation: u64,
    id: String,
    /// Already answered (timed out); kept until its confirm resolves, for the returns
    /// that confirm may carry.
    answered: bool,
}

/// What [`Ledger::resolve`] did with a publication.
#[derive(Debug, PartialEq, Eq)]
enum Filed {
    /// Waits to be judged.
    Pending,
    /// It had already been answered; it is gone now.
    Closed,
    /// Not an open publication, or already resolved.
    Unknown,
}

impl Ledger {
    /// A publication on channel `generation` whose message carries `id`.
    fn open(&mut self, key: u64, generation: u64, id: String) {
        *self.owners.entry((generation, id.clone())).or_default() += 1;
        self.open.insert(
            key,
            Open {
                generation,
                id,
                answered: false,
            },
        );
    }

    /// `key`'s confirm resolved as `confirmation`: files the returned message it carries
    /// (whoever it belongs to) and, unless the publication was answered already, queues it
    /// to be judged.
    fn resolve(&mut self, key: u64, confirmation: Result<Confirmation, lapin::Error>) -> Filed {
        let Some(open) = self.open.get(&key) else {
            return Filed::Unknown;
        };
        let generation = open.generation;
        let (resolution, returned) = match confirmation {
            Ok(Confirmation::Ack(returned)) => (Resolution::Ack, returned),
            Ok(Confirmation::Nack(returned)) => (Resolution::Nack, returned),
            Ok(Confirmation::NotRequested) => (Resolution::NotRequested, None),
            Err(error) => (Resolution::Failed(error), None),
        };
        if let Some(returned) = returned {
            self.file_return(generation, &returned);
        }
        if self.open.get(&key).is_some_and(|open| open.answered) {
            let id = self
                .open
                .get(&key)
                .map(|open| open.id.clone())
                .unwrap_or_default();
            let claimed = self.claim(generation, &id);
            self.close(key);
            if let Some((reply_code, _)) = claimed {
                tracing::debug!(
                    sink = "rabbitmq",
                    reply_code,
                    "rabbitmq returned a message whose delivery had timed out already; it \
                     will be retried"
                );
            }
            return Filed::Closed;
        }
        self.resolved.push((key, resolution));
        Filed::Pending
    }

    /// Files a returned message under its message id on channel `generation`. Its
    /// publication may not be open yet: a return can ride on an earlier message's confirm
    /// before the publish it belongs to has even finished on the publisher's side. What
    /// still has no publication when the publisher is between publishes is swept away
    /// ([`Ledger::sweep`]).
    fn file_return(&mut self, generation: u64, returned: &BasicReturnMessage) {
        let id = returned
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        self.returns
            .entry((generation, id))
            .or_default()
            .push_back((returned.reply_code, returned.reply_text.as_str().to_owned()));
    }

    /// Drops (and logs) returned messages that no open publication carries: called when
    /// every completed publish has been opened, so these can only be strays.
    fn sweep(&mut self) {
        let strays: Vec<(u64, String)> = self
            .returns
            .keys()
            .filter(|owner| !self.owners.contains_key(*owner))
            .cloned()
            .collect();
        for owner in strays {
            let count = self.returns.remove(&owner).map_or(0, |queue| queue.len());
            self.strays += count as u64;
            let (_, id) = owner;
            tracing::warn!(
                sink = "rabbitmq",
                message_id = if id.is_empty() { "<none>" } else { id.as_str() },
                count,
                "rabbitmq returned a message that matches no unconfirmed event; ignored"
            );
        }
    }

    /// Marks the unresolved publication `key` answered (its delivery timed out). False when
    /// it is not open, already answered or already resolved (then it will be judged).
    fn expire(&mut self, key: u64) -> bool {
        if self.resolved.iter().any(|(resolved, _)| *resolved == key) {
            return false;
        }
        match self.open.get_mut(&key) {
            Some(open) if !open.answered => {
                open.answered = true;
                true
            }
            _ => false,
        }
    }

    /// Removes `key`, and the returns filed for its message id once no open publication
    /// carries that id.
    fn close(&mut self, key: u64) -> Option<Open> {
        let open = self.open.remove(&key)?;
        let owner = (open.generation, open.id.clone());
        if let Some(count) = self.owners.get_mut(&owner) {
            *count -= 1;
            if *count == 0 {
                self.owners.remove(&owner);
                self.returns.remove(&owner);
            }
        }
        Some(open)
    }

    /// Takes one returned message filed for `id` on channel `generation`, if any.
    fn claim(&mut self, generation: u64, id: &str) -> Option<(u16, String)> {
        let owner = (generation, id.to_owned());
        let queue = self.returns.get_mut(&owner)?;
        let claimed = queue.pop_front();
        if queue.is_empty() {
            self.returns.remove(&owner);
        }
        claimed
    }

    /// Everything resolved so far may be judged (every confirm resolved before them has been
    /// filed).
    fn all_ready(&mut self) {
        self.ready = self.resolved.len();
    }

    /// The first `count` resolved publications may be judged.
    fn ready_up_to(&mut self, count: usize) {
        self.ready = self.ready.max(count.min(self.resolved.len()));
    }

    /// How many resolved publications have been seen (a mark for [`Ledger::ready_up_to`]).
    fn resolved_count(&self) -> usize {
        self.resolved.len()
    }

    /// Judges the publications that may be judged, removing them.
    fn judge(&mut self) -> Vec<(u64, Verdict)> {
        let ready = std::mem::take(&mut self.ready);
        let judged: Vec<(u64, Resolution)> = self.resolved.drain(..ready).collect();
        judged
            .into_iter()
            .filter_map(|(key, resolution)| {
                let open = self.open.get(&key)?;
                let (generation, id) = (open.generation, open.id.clone());
                let returned = self.claim(generation, &id);
                self.close(key);
                let verdict = match (returned, resolution) {
                    (Some((reply_code, reply_text)), Resolution::Ack | Resolution::Nack) => {
                        Verdict::Returned {
                            reply_code,
                            reply_text,
                        }
                    }
                    (_, Resolution::Ack) => Verdict::Delivered,
                    (_, Resolution::Nack) => Verdict::Nacked,
                    (_, Resolution::NotRequested) => Verdict::NotRequested,
                    (_, Resolution::Failed(error)) => Verdict::Failed(error),
                };
                Some((key, verdict))
            })
            .collect()
    }
}

/// How many times one pass of the pump goes through lapin's confirm lock before it leaves
/// the confirms seen last for the next pass.
const MAX_BARRIERS: usize = 4;

/// A message published and not yet judged, as the pump keeps it.
struct Published {
    /// The channel it went out on, and that channel's generation.
    channel: Channel,
    generation: u64,
    /// `message_id`: the row id.
    id: String,
    exchange: String,
    routing_key: String,
    body_len: usize,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), DeliveryError>>,
    confirm: PublisherConfirm,
    /// The session's stale flag and connection, marked on a missed confirm.
    link: Option<(Arc<AtomicBool>, Arc<Connection>)>,
}

/// A publication the pump is waiting on.
struct Outstanding {
    generation: u64,
    exchange: String,
    routing_key: String,
    body_len: usize,
    /// None once answered (timed out): it is kept until its confirm resolves, for the
    /// returned messages that confirm may carry.
    reply: Option<oneshot::Sender<Result<(), DeliveryError>>>,
    confirm: PublisherConfirm,
    /// Wakes the pump with this publication's key when its confirm resolves.
    waker: Waker,
    resolved: bool,
    link: Option<(Arc<AtomicBool>, Arc<Connection>)>,
}

/// Keys of publications whose confirms may have resolved, and the task to wake for them.
#[derive(Default)]
struct Woken(Mutex<(Vec<u64>, Option<Waker>)>);

impl Woken {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<u64>, Option<Waker>)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, key: u64) {
        let task = {
            let mut woken = self.lock();
            woken.0.push(key);
            woken.1.take()
        };
        if let Some(task) = task {
            task.wake();
        }
    }

    /// Registers the pump's task, then takes the keys pushed so far (in this order, so a key
    /// pushed after the take wakes the task).
    fn take(&self, task: &Waker) -> Vec<u64> {
        let mut woken = self.lock();
        if !woken.1.as_ref().is_some_and(|old| old.will_wake(task)) {
            woken.1 = Some(task.clone());
        }
        std::mem::take(&mut woken.0)
    }
}

/// The waker of one publication's confirm.
struct KeyWaker {
    key: u64,
    woken: Arc<Woken>,
}

impl std::task::Wake for KeyWaker {
    fn wake(self: Arc<Self>) {
        self.woken.push(self.key);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.push(self.key);
    }
}

/// The confirm pump: every unconfirmed publication of the publisher task, on whichever
/// channel, answered once its confirm resolves (or its deadline passes), with returned
/// messages matched by message id (see [`Ledger`]).
///
/// It runs inside the publisher task, polled around whatever that task awaits
/// ([`alongside`]), so a message whose publish has completed is always known to the pump
/// before the pump judges anything: its confirm may already carry another message's return,
/// and its own return may already sit on an earlier confirm. Confirms are polled only when
/// lapin wakes them, so many in flight cost nothing extra; decisions are made as confirms
/// resolve, in no particular order (a slow confirm holds up no other answer).
struct Confirms {
    shared: Arc<Shared>,
    ledger: Ledger,
    outstanding: HashMap<u64, Outstanding>,
    next_key: u64,
    woken: Arc<Woken>,
    /// Channels with outstanding publications, by generation, and how many each has.
    channels: HashMap<u64, (Channel, usize)>,
    /// Generations with confirms seen resolved since the pump last went through their
    /// channel's confirm lock.
    unbarriered: Vec<u64>,
    /// Unanswered publications by deadline (in publication order, so nearly sorted).
    deadlines: VecDeque<(Instant, u64)>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Publications not answered yet.
    unanswered: usize,
}

impl Confirms {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            ledger: Ledger::default(),
            outstanding: HashMap::new(),
            next_key: 0,
            woken: Arc::new(Woken::default()),
            channels: HashMap::new(),
            unbarriered: Vec::new(),
            deadlines: VecDeque::new(),
            timer: None,
            unanswered: 0,
        }
    }

    /// Takes over a publication; it is polled on the next pass.
    fn admit(&mut self, published: Published) {
        let key = self.next_key;
        self.next_key += 1;
        let waker = Waker::from(Arc::new(KeyWaker {
            key,
            woken: Arc::clone(&self.woken),
        }));
        self.ledger.open(key, published.generation, published.id);
        self.channels
            .entry(published.generation)
            .or_insert_with(|| (published.channel, 0))
            .1 += 1;
        self.deadlines.push_back((published.deadline, key));
        self.outstanding.insert(
            key,
            Outstanding {
                generation: published.generation,
                exchange: published.exchange,
                routing_key: published.routing_key,
                body_len: published.body_len,
                reply: Some(published.reply),
                confirm: published.confirm,
                waker,
                resolved: false,
                link: published.link,
            },
        );
        self.unanswered += 1;
        self.woken.push(key);
    }

    /// Polls the confirms lapin has woken (and new ones), filing what resolved, until every
    /// confirm resolved so far has been seen; then lets the ledger judge those it safely can.
    ///
    /// A `multiple` ack completes its confirms one after another while holding lapin's
    /// confirm lock, handing out returned messages as it goes; a confirm seen resolved may
    /// be followed by one of the same ack that carries its return. Going through that lock
    /// (`wait_for_confirms` takes it before anything else) waits for the ack to finish; the
    /// confirms it resolved meanwhile have pushed their keys by then.
    fn observe(&mut self, cx: &mut Context<'_>) {
        let mut mark = None;
        let mut barriers = 0;
        loop {
            for key in self.woken.take(cx.waker()) {
                self.poll_one(key);
            }
            if let Some(mark) = mark {
                self.ledger.ready_up_to(mark);
            }
            if self.unbarriered.is_empty() {
                self.ledger.all_ready();
                return;
            }
            if barriers == MAX_BARRIERS {
                // Confirms keep arriving: judge the rest on the next pass.
                cx.waker().wake_by_ref();
                return;
            }
            barriers += 1;
            mark = Some(self.ledger.resolved_count());
            for generation in std::mem::take(&mut self.unbarriered) {
                let Some((channel, _)) = self.channels.get(&generation) else {
                    continue;
                };
                if let Some(Ok(returned)) = channel.wait_for_confirms().now_or_never() {
                    // Returns lapin kept for confirms dropped unawaited (none of ours).
                    for message in &returned {
                        self.ledger.file_return(generation, message);
                    }
                }
            }
        }
    }

    fn poll_one(&mut self, key: u64) {
        let Some(outstanding) = self.outstanding.get_mut(&key) else {
            return;
        };
        if outstanding.resolved {
            return;
        }
        let waker = outstanding.waker.clone();
        let mut context = Context::from_waker(&waker);
        let Poll::Ready(result) = Pin::new(&mut outstanding.confirm).poll(&mut context) else {
            return;
        };
        outstanding.resolved = true;
        let generation = outstanding.generation;
        if !self.unbarriered.contains(&generation) {
            self.unbarriered.push(generation);
        }
        if self.ledger.resolve(key, result) == Filed::Closed {
            self.remove(key);
        }
    }

    fn remove(&mut self, key: u64) -> Option<Outstanding> {
        let outstanding = self.outstanding.remove(&key)?;
        if let Some((_, count)) = self.channels.get_mut(&outstanding.generation) {
            *count -= 1;
            if *count == 0 {
                self.channels.remove(&outstanding.generation);
            }
        }
        Some(outstanding)
    }

    /// Answers what the ledger judged, then every unanswered publication past its deadline;
    /// arms the timer for the next deadline. Only called when every completed publish has
    /// been admitted (returns that match no publication then are strays).
    fn settle(&mut self, cx: &mut Context<'_>) {
        self.ledger.sweep();
        let endpoint = self.shared.endpoint.clone();
        for (key, verdict) in self.ledger.judge() {
            let Some(outstanding) = self.remove(key) else {
                continue;
            };
            let Some(reply) = outstanding.reply else {
                continue;
            };
            self.unanswered -= 1;
            let _ = reply.send(classify_verdict(
                verdict,
                &outstanding.exchange,
                &outstanding.routing_key,
                outstanding.body_len,
                &endpoint,
            ));
        }
        while let Some(&(deadline, key)) = self.deadlines.front() {
            let waiting = self
                .outstanding
                .get(&key)
                .is_some_and(|outstanding| outstanding.reply.is_some() && !outstanding.resolved);
            if !waiting {
                self.deadlines.pop_front();
                continue;
            }
            if Instant::now() < deadline {
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return;
                }
            }
            self.deadlines.pop_front();
            if !self.ledger.expire(key) {
                continue;
            }
            let Some(outstanding) = self.outstanding.get_mut(&key) else {
                continue;
            };
            if let Some((stale, connection)) = &outstanding.link {
                // A blocked broker (memory or disk alarm) holds publishes on purpose; a new
                // connection would be blocked too.
                if !connection.status().blocked() {
                    stale.store(true, Ordering::Relaxed);
                }
            }
            if let Some(reply) = outstanding.reply.take() {
                self.unanswered -= 1;
                let _ = reply.send(Err(self.shared.timed_out(&outstanding.exchange)));
            }
        }
    }
}

/// Runs `op` in the publisher task while the pump answers confirms. `admit` hands what `op`
/// produced to the pump (a published message) before anything is judged.
async fn alongside<T>(
    confirms: &mut Confirms,
    op: impl Future<Output = T>,
    mut admit: impl FnMut(&mut Confirms, &mut T),
) -> T {
    let mut op = std::pin::pin!(op);
    std::future::poll_fn(move |cx| {
        confirms.observe(cx);
        // Polled after the confirms: a publish that completed before any confirm seen
        // resolved is admitted (and its confirm seen) before the judging.
        match op.as_mut().poll(cx) {
            Poll::Ready(mut value) => {
                admit(confirms, &mut value);
                confirms.observe(cx);
                confirms.settle(cx);
                Poll::Ready(value)
            }
            Poll::Pending => {
                confirms.settle(cx);
                Poll::Pending
            }
        }
    })
    .await
}

/// A parsed exchange or routing-key template: the sinks' shared placeholder syntax
/// ([`shared::Template`]) with AMQP's rules on top: empty is allowed (the default exchange),
/// the fixed text fits a short string, and an exchange's holds only exchange-name characters.
#[derive(Debug, Clone)]
struct Template {
    source: String,
    /// `None` for the empty template.
    parsed: Option<shared::Template>,
}

impl Template {
    fn parse(template: &str, kind: TemplateKind) -> Result<Self, RabbitMqSinkError> {
        if template.is_empty() {
            return Ok(Self {
                source: String::new(),
                parsed: None,
            });
        }
        let parsed = shared::Template::parse(template).map_err(|error| match error {
            shared::TemplateError::UnknownPlaceholder { placeholder, .. } => {
                RabbitMqSinkError::UnknownPlaceholder {
                    kind,
                    template: template.to_owned(),
                    placeholder,
                }
            }
            // A stray '}' is not an exchange-name character; in a routing key it is refused
            // as a broken placeholder.
            shared::TemplateError::Unopened { .. } if kind == TemplateKind::Exchange => {
                RabbitMqSinkError::IllegalExchangeCharacter {
                    template: template.to_owned(),
                    found: '}',
                }
            }
            shared::TemplateError::Empty
            | shared::TemplateError::Unclosed { .. }
            | shared::TemplateError::Unopened { .. } => RabbitMqSinkError::UnclosedPlaceholder {
                kind,
                template: template.to_owned(),
            },
        })?;
        let literal_len: usize = parsed.literals().map(str::len).sum();
        if literal_len > MAX_SHORT_STRING {
            return Err(RabbitMqSinkError::TemplateTooLong {
                kind,
                template: template.to_owned(),
            });
        }
        if kind == TemplateKind::Exchange {
            if let Some(found) = parsed.first_literal_char_not(is_exchange_char) {
                return Err(RabbitMqSinkError::IllegalExchangeCharacter {
                    template: template.to_owned(),
                    found,
                });
            }
        }
        Ok(Self {
            source: template.to_owned(),
            parsed: Some(parsed),
        })
    }

    fn render(&self, event: &OutboxEvent) -> String {
        self.parsed
            .as_ref()
            .map(|parsed| parsed.render(event))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
