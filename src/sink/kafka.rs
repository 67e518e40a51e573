//! The Kafka sink: an idempotent librdkafka producer (`enable.idempotence=true`, `acks=all`)
//! publishing each event to a topic rendered from a template, keyed by `aggregate_id`.
//!
//! Record shape: key = `aggregate_id`; value = the payload bytes exactly; headers `id`
//! (decimal), `event_type`, `aggregate_type`, `aggregate_id`, `created_at` (RFC 3339), then
//! the event's own headers in column order. An event header whose name collides with one of
//! those five is dropped: consumers that read the last header of a name must never see a
//! forged idempotency key.
//!
//! That is the native format. With `cloudevents` the value is the structured document
//! (header `content-type: application/cloudevents+json`) or, in binary mode, the payload
//! with `ce_`-prefixed attribute headers and `content-type: application/json`; with
//! `debezium` the headers are `id` and the placed columns (see [`super::format`]). The key
//! is the aggregate id in every format, and the row's headers follow the format's own.
//!
//! Owns: topic templates, producer configuration, and the classification of every librdkafka
//! failure into retryable or permanent, in `classify`. Must not: log payloads or header
//! values, touch the database, or retry on its own (the dispatcher owns retries; librdkafka
//! retries internally within `delivery_timeout`).
//!
//! Queue-full handling: the enqueue is not retried inside the returned future, because a
//! later `deliver` of the same key could then overtake it. The producer queue keeps
//! librdkafka's default bounds (100 000 messages, 1 GiB), far above what the dispatcher keeps
//! in flight, so `QueueFull` only surfaces as a retryable error under misconfiguration.
//!
//! Fatal producer errors (idempotence sequence violations) make a librdkafka producer
//! unusable for good; the sink notices on the next `deliver` and builds a fresh producer.

use std::borrow::Cow;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::format::{cloudevents, CloudEventsMode, Format};
use super::template::{Template, TemplateError};
use super::DeliveryError;
use crate::event::OutboxEvent;

/// Topic template used when none is configured.
pub const DEFAULT_TOPIC_TEMPLATE: &str = "outbox.{aggregate_type}";

/// Largest message the producer accepts by default (`message.max.bytes`): 16 MiB.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// How long librdkafka may keep trying one message (`message.timeout.ms`) by default.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause suggested to the caller when the producer queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(500);

/// Names of the headers the sink sets itself; event headers with these names are dropped.
const RESERVED_HEADERS: [&str; 5] = [
    "id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "created_at",
];

/// Longest legal Kafka topic name.
const MAX_TOPIC_LEN: usize = 249;

/// What the Kafka sink needs to start.
#[derive(Clone)]
pub struct KafkaSinkConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// Topic template with `{aggregate_type}` / `{event_type}` placeholders
    /// (default [`DEFAULT_TOPIC_TEMPLATE`]).
    pub topic_template: String,
    /// Extra librdkafka properties (SASL, SSL, `linger.ms`, `compression.type`, …), applied
    /// after the sink's defaults so they can override them. Values may be secrets.
    pub properties: Vec<(String, String)>,
    /// Upper bound for one delivery, including librdkafka's internal retries
    /// (`message.timeout.ms`, default [`DEFAULT_DELIVERY_TIMEOUT`]). While no broker is
    /// reachable, librdkafka notices expired messages only between reconnect attempts, so an
    /// outcome can arrive up to `reconnect.backoff.max.ms` (10 s) later. A topic missing from
    /// the cluster fails as permanent after half of this (`topic.metadata.propagation.max.ms`).
    pub delivery_timeout: Duration,
    /// What a record looks like (default [`Format::Native`], the shape in the module doc).
    pub format: Format,
}

impl KafkaSinkConfig {
    /// A config for `brokers` with the default template, timeout and format and no extra
    /// properties.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_template: DEFAULT_TOPIC_TEMPLATE.to_owned(),
            properties: Vec::new(),
            delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
            format: Format::Native,
        }
    }
}

impl KafkaSinkConfig {
    /// Checks everything about this config that [`KafkaSink::new`] can check on its own: the
    /// topic template, the delivery timeout, and each property's name and value (librdkafka's
    /// own check, without creating a client). The configuration calls it at startup, so a
    /// mistake is reported with the variable that holds it. Combinations of properties that
    /// librdkafka refuses only show when the producer is created.
    pub fn validate(&self) -> Result<(), KafkaSinkError> {
        let (_, client_config) = self.parse()?;
        client_config
            .create_native_config()
            .map_err(|source| config_error(source, &self.brokers))?;
        Ok(())
    }

    /// The parsed template and the producer's settings: the sink's defaults, then the
    /// configured properties.
    fn parse(&self) -> Result<(TopicTemplate, ClientConfig), KafkaSinkError> {
        let template = TopicTemplate::parse(&self.topic_template)?;
        let timeout_ms = i32::try_from(self.delivery_timeout.as_millis())
            .ok()
            .filter(|&ms| ms > 0)
            .ok_or(KafkaSinkError::DeliveryTimeout)?;
        let mut client_config = ClientConfig::new();
        client_config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "dispatchbox")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", timeout_ms.to_string())
            // librdkafka waits this long for a topic missing from metadata before failing
            // its messages as unknown; it must end before the delivery timeout, or a missing
            // topic (auto-creation off) would only ever show up as a retryable timeout.
            .set(
                "topic.metadata.propagation.max.ms",
                (timeout_ms / 2).clamp(1, 30_000).to_string(),
            )
            // An outbox relay is latency-bound at ordinary rates: librdkafka's default of
            // 5 ms was most of the commit → broker-ack time. Under load batches still fill
            // while earlier requests are in flight.
            .set("linger.ms", "1")
            // Same key → same partition as the Java client, so mixed producers agree.
            .set("partitioner", "murmur2_random")
            // Outbox payloads of a few MiB are legitimate; librdkafka's own default (1 MB)
            // would make them dead letters before a broker is even asked. Brokers still
            // enforce their own limit (a rejection there is permanent).
            .set("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES.to_string());
        for (name, value) in &self.properties {
            client_config.set(name, value);
        }
        Ok((template, client_config))
    }
}

/// Property values can hold passwords, so only the names are printed.
impl std::fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.properties.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", &self.brokers)
            .field("topic_template", &self.topic_template)
            .field("properties", &names)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("format", &self.format)
            .finish()
    }
}

/// Why the Kafka sink could not be built (configuration errors, reported at startup).
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error(
        "kafka topic template {template:?} uses unknown placeholder {{{placeholder}}}; \
         the placeholders are {{aggregate_type}} and {{event_type}}"
    )]
    UnknownPlaceholder {
        template: String,
        placeholder: String,
    },
    #[error("kafka topic template {template:?} has a '{{' without a closing '}}'")]
    UnclosedPlaceholder { template: String },
    #[error(
        "kafka topic template {template:?} contains {found:?}, which is not allowed in a topic \
         name; use ASCII letters, digits, '.', '_' and '-'"
    )]
    IllegalTemplateCharacter { template: String, found: char },
    #[error("kafka topic template is empty")]
    EmptyTemplate,
    #[error("kafka delivery timeout must be at least 1ms and at most {max_ms}ms", max_ms = i32::MAX)]
    DeliveryTimeout,
    // The value is deliberately left out: it may be a password.
    #[error("kafka property {name:?} was rejected by librdkafka: {reason}")]
    Property { name: String, reason: String },
    #[error("kafka producer for brokers {brokers:?} could not be created")]
    Producer {
        brokers: String,
        #[source]
        source: KafkaError,
    },
}

/// Publishes events to Kafka. See the module doc for the record shape and [`super::Sink`]
/// for the delivery contract.
pub struct KafkaSink {
    /// Shared with every in-flight delivery (for error messages) without copying.
    brokers: Arc<str>,
    template: TopicTemplate,
    format: Format,
    client_config: ClientConfig,
    /// Replaced only when the current producer reports a fatal error; cloning is cheap.
    producer: Mutex<FutureProducer>,
}

/// The client config can hold secrets, so it is not printed.
impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("brokers", &self.brokers)
            .field("topic_template", &self.template.source)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Validates the config and builds the producer. Does not contact the brokers (use
    /// [`KafkaSink::check`] for that).
    pub fn new(config: KafkaSinkConfig) -> Result<Self, KafkaSinkError> {
        let (template, client_config) = config.parse()?;
        let producer = create_producer(&client_config, &config.brokers)?;
        warm_up(&producer);
        Ok(Self {
            brokers: config.brokers.into(),
            template,
            format: config.format,
            client_config,
            producer: Mutex::new(producer),
        })
    }

    /// The topic `event` goes to (the rendered template, not yet validated).
    pub fn topic_for(&self, event: &OutboxEvent) -> String {
        self.template.render(event)
    }

    /// Enqueues `event` in librdkafka now and returns a future resolving to the broker's
    /// verdict. Ok = acknowledged with `acks=all`. See [`super::Sink::deliver`].
    pub fn deliver(
        &self,
        event: Arc<OutboxEvent>,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send + 'static {
        let topic = self.topic_for(&event);
        let handoff = self.enqueue(&event, &topic);
        let brokers = Arc::clone(&self.brokers);
        async move {
            match handoff?.await {
                Ok(Ok(_delivery)) => Ok(()),
                Ok(Err((error, _message))) => Err(classify(&error, &topic, &brokers)),
                Err(_canceled) => Err(classify(&KafkaError::Canceled, &topic, &brokers)),
            }
        }
    }

    /// The synchronous half of `deliver`: validation and the librdkafka enqueue.
    fn enqueue(&self, event: &OutboxEvent, topic: &str) -> Result<DeliveryFuture, DeliveryError> {
        if let Err(problem) = validate_topic_name(topic) {
            return Err(DeliveryError::permanent(format!(
                "kafka topic {topic:?} rendered from template {:?} for event {} is not a legal \
                 topic name ({problem}); change the template or the event's aggregate/event type",
                self.template.source, event.id
            )));
        }
        let (value, headers) = self.render(event)?;
        let producer = self.producer()?;
        let record = FutureRecord::to(topic)
            .key(event.aggregate_id.as_bytes())
            .payload(value.as_ref())
            .headers(headers);
        producer
            .send_result(record)
            .map_err(|(error, _record)| classify(&error, topic, &self.brokers))
    }

    /// The record's value and headers in the sink's format. The key is the aggregate id in
    /// every format (CloudEvents' `partitionkey`, Debezium's key).
    fn render<'e>(
        &self,
        event: &'e OutboxEvent,
    ) -> Result<(Cow<'e, [u8]>, OwnedHeaders), DeliveryError> {
        let payload = Cow::Borrowed(event.payload.as_ref());
        Ok(match &self.format {
            Format::Native => (payload, native_headers(event)),
            Format::CloudEvents(ce) => match ce.mode {
                CloudEventsMode::Structured => {
                    let document = ce.structured(event).map_err(|err| {
                        DeliveryError::permanent(format!(
                            "payload of event {} is not valid json ({err}); it cannot be \
                             sent as a CloudEvent",
                            event.id
                        ))
                    })?;
                    let fixed = [(CONTENT_TYPE_HEADER, cloudevents::STRUCTURED_CONTENT_TYPE)];
                    (
                        Cow::Owned(document),
                        with_row_headers(fixed, event, is_ce_header),
                    )
                }
                CloudEventsMode::Binary => {
                    let attributes: Vec<(String, String)> = ce
                        .attributes(event)
                        .into_iter()
                        .map(|(name, value)| (format!("ce_{name}"), value))
                        .collect();
                    let fixed =
                        std::iter::once((CONTENT_TYPE_HEADER, cloudevents::DATA_CONTENT_TYPE))
                            .chain(attributes.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                    (payload, with_row_headers(fixed, event, is_ce_header))
                }
            },
            Format::Debezium(debezium) => {
                let headers = debezium.headers(event);
                let fixed = headers.iter().map(|(name, value)| (*name, value.as_str()));
                (
                    payload,
                    with_row_headers(fixed, event, |name| debezium.reserves(name)),
                )
            }
        })
    }

    /// The current producer, replaced first if librdkafka declared it unusable.
    fn producer(&self) -> Result<FutureProducer, DeliveryError> {
        let mut producer = self.producer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::error!(
                sink = "kafka",
                error = %reason,
                code = ?code,
                "kafka producer hit a fatal error; replacing it (in-flight events will be retried)"
            );
            let fresh = create_producer(&self.client_config, &self.brokers).map_err(|err| {
                DeliveryError::retryable(format!(
                    "kafka producer for brokers {:?} could not be recreated after a fatal \
                     error: {err}",
                    self.brokers
                ))
            })?;
            warm_up(&fresh);
            let broken = std::mem::replace(&mut *producer, fresh);
            // Dropping a producer purges and flushes for up to 500 ms: keep that off the
            // caller's thread when a runtime is there to take it.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(broken))),
                Err(_) => drop(broken),
            }
        }
        Ok(producer.clone())
    }

    /// Waits up to `timeout` for queued messages to be acknowledged. Events still
    /// unconfirmed afterwards resolve as retryable errors when the sink is dropped.
    pub async fn close(&self, timeout: Duration) {
        let producer = self
            .producer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                sink = "kafka",
                brokers = %self.brokers,
                error = %error,
                "kafka producer did not flush within the shutdown timeout; \
                 unconfirmed events will be retried"
            ),
            Err(error) => tracing::warn!(sink = "kafka", error = %error, "kafka flush task failed"),
        }
    }

    /// Readiness: the cluster answers a metadata request within `timeout`.
    pub async fn check(&self, timeout: Duration) -> Result<(), DeliveryError> {
        let producer = self.producer()?;
        let answered = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).map(drop)
        })
        .await;
        match answered {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(DeliveryError::retryable(format!(
                "kafka brokers {:?} did not answer a metadata request within {}: {error}",
                self.brokers,
                humantime::format_duration(timeout)
            ))),
            Err(error) => Err(DeliveryError::retryable(format!(
                "kafka metadata check for brokers {:?} failed: {error}",
                self.brokers
            ))),
        }
    }
}

/// Gets the producer ready now instead of at the first delivery. The idempotent producer
/// needs a producer id before it sends anything; librdkafka asks for one after each metadata
/// answer, but only from a broker that is already connected, and otherwise on a 500 ms
/// timer. librdkafka connects to brokers only when it needs one, so left alone the first
/// events of a run waited 0.5–1 s. Here, on a background thread: a first metadata request
/// (over the bootstrap connection) names the brokers and makes librdkafka connect to them;
/// a second one, a moment later, is answered while they are up, and the producer id
/// follows at once. The results do not matter here: failures show in deliveries.
fn warm_up(producer: &FutureProducer) {
    let producer = producer.clone();
    let spawned = std::thread::Builder::new()
        .name("kafka-warm-up".into())
        .spawn(move || {
            let client = producer.client();
            if client.fetch_metadata(None, Duration::from_secs(10)).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
                let _ = client.fetch_metadata(None, Duration::from_secs(10));
            }
        });
    if let Err(error) = spawned {
        tracing::debug!(sink = "kafka", error = %error, "cannot start the kafka warm-up thread");
    }
}

fn create_producer(config: &ClientConfig, brokers: &str) -> Result<FutureProducer, KafkaSinkError> {
    config
        .create()
        .map_err(|source| config_error(source, brokers))
}

/// A property librdkafka refused (named, its value left out: it may be a password), or
/// another failure to create the producer.
fn config_error(source: KafkaError, brokers: &str) -> KafkaSinkError {
    match source {
        KafkaError::ClientConfig(_, reason, name, _value) => {
            KafkaSinkError::Property { name, reason }
        }
        source => KafkaSinkError::Producer {
            brokers: brokers.to_owned(),
            source,
        },
    }
}

/// Sorts a failure into retryable or permanent. The one place that decides this for Kafka.
///
/// Permanent: the event (or its topic) can never be accepted as configured — too large,
/// illegal or unknown topic (auto-creation off), not authorised, rejected by policy.
/// Retryable: the cluster is unreachable, slow, overloaded or electing leaders, or the
/// producer needs replacing; unknown codes are retryable too, so a surprise costs attempts
/// (and eventually `dead` through the attempt limit), never an event.
fn classify(error: &KafkaError, topic: &str, brokers: &str) -> DeliveryError {
    use RDKafkaErrorCode as C;
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        KafkaError::Canceled => {
            return DeliveryError::retryable(format!(
                "kafka producer for topic {topic:?} was shut down before the broker confirmed"
            ))
        }
        other => {
            return DeliveryError::retryable(format!(
                "kafka produce to topic {topic:?} failed: {other}"
            ))
        }
    };
    let permanent = |why: &str| DeliveryError::permanent(format!("kafka topic {topic:?}: {why}"));
    let retryable = |why: &str| DeliveryError::retryable(format!("kafka topic {topic:?}: {why}"));
    match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => permanent(
            "message is larger than the producer or broker allows (message.max.bytes / \
             max.message.bytes); raise the limit, then retry the dead event",
        ),
        C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition => permanent(
            "topic does not exist and the cluster did not create it (auto-creation is off?); \
             create the topic, then retry the dead event",
        ),
        C::InvalidTopic => permanent("the broker rejected the topic name as invalid"),
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => permanent(
            "the producer is not authorised to write to this topic; grant WRITE (and \
             IDEMPOTENT_WRITE on the cluster), then retry the dead event",
        ),
        C::PolicyViolation | C::InvalidRecord | C::InvalidTimestamp => {
            permanent(&format!("the broker rejected the record: {code}"))
        }
        C::UnsupportedForMessageFormat | C::UnsupportedVersion | C::InvalidRequiredAcks => {
            permanent(&format!(
                "the broker cannot accept this record as configured ({code}); check the \
                 broker version and the producer properties"
            ))
        }
        C::BadMessage | C::InvalidArgument => {
            permanent(&format!("librdkafka refused the record: {code}"))
        }

        C::QueueFull => DeliveryError::Retryable {
            reason: format!(
                "kafka topic {topic:?}: the producer queue is full (queue.buffering.max.messages \
                 / .kbytes); brokers {brokers:?} are not keeping up"
            ),
            retry_after: Some(QUEUE_FULL_PAUSE),
        },
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
            retryable(&format!(
                "no acknowledgement from brokers {brokers:?} within the delivery timeout"
            ))
        }
        C::AllBrokersDown
        | C::BrokerTransportFailure
        | C::NetworkException
        | C::Resolve
        | C::BrokerNotAvailable => {
            retryable(&format!("brokers {brokers:?} are unreachable ({code})"))
        }
        C::InvalidMessage => {
            retryable("the broker saw a corrupt record (checksum mismatch in transit)")
        }
        C::NotEnoughReplicas | C::NotEnoughReplicasAfterAppend | C::ISRInsufficient => {
            retryable("not enough in-sync replicas to satisfy acks=all")
        }
        C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::FencedLeaderEpoch
        | C::KafkaStorageError
        | C::ThrottlingQuotaExceeded => retryable(&format!(
            "the partition is temporarily unavailable ({code})"
        )),
        C::Authentication | C::SaslAuthenticationFailed | C::SSL => retryable(&format!(
            "brokers {brokers:?} rejected the connection ({code}); check the SASL/SSL properties"
        )),
        C::Fatal
        | C::OutOfOrderSequenceNumber
        | C::DuplicateSequenceNumber
        | C::InvalidProducerEpoch
        | C::UnknownProducerId
        | C::ProducerFenced
        | C::PurgeQueue
        | C::PurgeInflight => retryable(&format!(
            "the producer was reset before the broker confirmed ({code})"
        )),
        _ => retryable(&format!("produce failed: {code}")),
    }
}

/// Checks Kafka's topic name rules: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".to_owned());
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "it is {} characters long, the limit is {MAX_TOPIC_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are reserved".to_owned());
    }
    match name.chars().find(|&c| !is_topic_char(c)) {
        Some(c) => Err(format!(
            "{c:?} is not allowed; use ASCII letters, digits, '.', '_' and '-'"
        )),
        None => Ok(()),
    }
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The native record headers (see the module doc for the list and the collision rule).
fn native_headers(event: &OutboxEvent) -> OwnedHeaders {
    let id = event.id.to_string();
    let created_at = event.created_at_rfc3339();
    let fixed = [
        ("id", id.as_str()),
        ("event_type", event.event_type.as_str()),
        ("aggregate_type", event.aggregate_type.as_str()),
        ("aggregate_id", event.aggregate_id.as_str()),
        ("created_at", created_at.as_str()),
    ];
    with_row_headers(fixed, event, |name| RESERVED_HEADERS.contains(&name))
}

/// The `content-type` header of the CloudEvents Kafka binding.
const CONTENT_TYPE_HEADER: &str = "content-type";

/// Headers the CloudEvents formats set: `content-type` and every `ce_` attribute.
fn is_ce_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) || name.starts_with("ce_")
}

/// The format's own headers, then the row's headers, except those whose names the format
/// `reserves`: consumers that read the last header of a name must never see a forged
/// idempotency key or attribute.
/// Borrows every name and value: librdkafka copies them once, into the record.
fn with_row_headers<'a>(
    fixed: impl IntoIterator<Item = (&'a str, &'a str)>,
    event: &'a OutboxEvent,
    reserves: impl Fn(&str) -> bool,
) -> OwnedHeaders {
    let row = event
        .headers
        .iter()
        .filter(|(name, _)| !reserves(name))
        .map(|(name, value)| (name.as_str(), value.as_str()));
    fixed.into_iter().chain(row).fold(
        OwnedHeaders::new_with_capacity(8 + event.headers.len()),
        |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        },
    )
}

/// A parsed topic template: the shared placeholder syntax ([`Template`]) with Kafka's
/// character rule checked on its fixed text.
#[derive(Debug, Clone)]
struct TopicTemplate {
    source: String,
    template: Template,
}

impl TopicTemplate {
    fn parse(source: &str) -> Result<Self, KafkaSinkError> {
        let template = Template::parse(source).map_err(|error| match error {
            TemplateError::Empty => KafkaSinkError::EmptyTemplate,
            TemplateError::UnknownPlaceholder {
                template,
                placeholder,
            } => KafkaSinkError::UnknownPlaceholder {
                template,
                placeholder,
            },
            TemplateError::Unclosed { template } => {
                KafkaSinkError::UnclosedPlaceholder { template }
            }
            TemplateError::Unopened { template } => KafkaSinkError::IllegalTemplateCharacter {
                template,
                found: '}',
            },
        })?;
        if let Some(found) = template.first_literal_char_not(is_topic_char) {
            return Err(KafkaSinkError::IllegalTemplateCharacter {
                template: source.to_owned(),
                found,
            });
        }
        Ok(Self {
            source: source.to_owned(),
            template,
        })
    }

    fn render(&self, event: &OutboxEvent) -> String {
        self.template.render(event)
    }
}

#[cfg(test)]
mod tests;
