//! The Redis Streams sink: appends each event to a stream whose key is rendered from a
//! template, with `XADD key [MAXLEN ~ N] * field value …`, and counts it delivered once
//! Redis answered with the entry id.
//!
//! Entry shape ([`fields`]): `id` (the row id, decimal), `event_type`, `aggregate_type`,
//! `aggregate_id`, `created_at` (RFC 3339), `payload` (the payload bytes exactly), then one
//! `header.<name>` field per string entry of the event's `headers` column, in column order
//! (the prefix keeps them from colliding with the fixed fields). Redis cannot drop a repeated
//! append the way a Kafka idempotent producer or JetStream's `Nats-Msg-Id` can: a
//! re-delivery after a timeout or a crash is a second entry, and consumers dedupe by `id`.
//!
//! Owns: stream-name templates, the connection (one multiplexed connection that reconnects
//! on the next command after an I/O error) and the classification of every Redis failure
//! into retryable or permanent, in `classify`. Must not: log payloads or field values, touch
//! the database, or retry on its own. Standalone Redis (or Valkey, or anything speaking its
//! protocol to one node); Redis Cluster redirections (`MOVED`) are not followed.
//!
//! A command is sent when its future is first polled (not inside `deliver`), so like the
//! webhook sink, outstanding deliveries carry no order between them; the dispatcher keeps
//! at most one delivery per aggregate outstanding.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ErrorKind, IntoConnectionInfo, RedisError};
use bytes::Bytes;

use super::format::{cloudevents, CloudEvents, Format};
use super::template::{Template, TemplateError};
use super::DeliveryError;
use crate::event::OutboxEvent;
use crate::secret::Secret;

/// Stream-name template used when none is configured.
pub const DEFAULT_STREAM_TEMPLATE: &str = "outbox.{aggregate_type}";

/// How long one delivery may take by default (connecting included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause suggested to the caller when Redis is out of memory, loading or busy.
const BUSY_PAUSE: Duration = Duration::from_secs(1);

/// What the Redis sink needs to start.
#[derive(Clone)]
pub struct RedisSinkConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS (verified against
    /// the system's roots).
    pub url: String,
    /// A password that replaces the URL's (from a secret file).
    pub password: Option<Secret<String>>,
    /// Stream-name template with `{aggregate_type}` / `{event_type}` placeholders (default
    /// [`DEFAULT_STREAM_TEMPLATE`]).
    pub stream_template: String,
    /// Approximate cap of each stream's length (`MAXLEN ~ N`); `None`: no trimming.
    pub maxlen: Option<u64>,
    /// Upper bound for one delivery (default [`DEFAULT_TIMEOUT`]); also the connect and
    /// response timeout.
    pub timeout: Duration,
    /// A PEM bundle of the CAs that sign the server's certificate, instead of the system's
    /// trust store (`rediss://` only).
    pub tls_ca_file: Option<PathBuf>,
    /// Native (the module doc) or CloudEvents (structured: Redis has no binding of its own).
    pub format: Format,
}

impl RedisSinkConfig {
    /// A config for `url` with the default template and timeout, no trimming, and the URL's
    /// own password.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password: None,
            stream_template: DEFAULT_STREAM_TEMPLATE.to_owned(),
            maxlen: None,
            timeout: DEFAULT_TIMEOUT,
            tls_ca_file: None,
            format: Format::Native,
        }
    }

    /// Checks everything [`RedisSink::new`] checks: the URL, the template, the limits. The
    /// configuration calls it at startup.
    pub fn validate(&self) -> Result<(), RedisSinkError> {
        self.parse().map(drop)
    }

    fn parse(&self) -> Result<(Client, Template), RedisSinkError> {
        let url = url::Url::parse(self.url.trim()).map_err(|e| RedisSinkError::InvalidUrl {
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(RedisSinkError::UnsupportedScheme {
                scheme: url.scheme().to_owned(),
            });
        }
        let mut info =
            self.url
                .trim()
                .into_connection_info()
                .map_err(|e| RedisSinkError::InvalidUrl {
                    // The client's own words, without its detail (which may quote the URL).
                    reason: e.category().to_owned(),
                })?;
        if let Some(password) = &self.password {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(settings);
        }
        let client = match &self.tls_ca_file {
            None => Client::open(info),
            Some(_) if url.scheme() != "rediss" => return Err(RedisSinkError::CaWithoutTls),
            Some(path) => {
                let root_cert = super::tls::read_ca_bundle(path)
                    .map_err(|reason| RedisSinkError::TlsCa { reason })?;
                Client::build_with_tls(
                    info,
                    ::redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
            }
        }
        .map_err(|e| RedisSinkError::InvalidUrl {
            reason: e.category().to_owned(),
        })?;
        let template = Template::parse(&self.stream_template)?;
        if self.maxlen == Some(0) {
            return Err(RedisSinkError::ZeroMaxlen);
        }
        if self.timeout.is_zero() {
            return Err(RedisSinkError::ZeroTimeout);
        }
        Ok((client, template))
    }
}

/// The URL may hold a password, so only where it points is printed.
impl std::fmt::Debug for RedisSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSinkConfig")
            .field("server", &server_of(&self.url))
            .field("password", &self.password)
            .field("stream_template", &self.stream_template)
            .field("maxlen", &self.maxlen)
            .field("timeout", &self.timeout)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

/// Why the Redis sink could not be built (configuration errors, reported at startup). The
/// messages never echo the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    #[error(
        "redis url is not a valid url ({reason}); use redis://host:6379 or rediss://host:6380"
    )]
    InvalidUrl { reason: String },
    #[error("redis url uses scheme {scheme:?}; use redis:// or rediss:// (TLS)")]
    UnsupportedScheme { scheme: String },
    #[error("redis stream {0}")]
    Template(#[from] TemplateError),
    #[error("redis maxlen must be at least 1 (leave it unset for no trimming)")]
    ZeroMaxlen,
    #[error("redis timeout must be greater than zero")]
    ZeroTimeout,
    #[error("redis tls ca bundle: {reason}")]
    TlsCa { reason: String },
    #[error("a redis tls ca bundle needs a rediss:// url")]
    CaWithoutTls,
}

/// Appends events to Redis streams. See the module doc for the entry shape and
/// [`super::Sink`] for the delivery contract.
pub struct RedisSink {
    shared: Arc<Shared>,
    template: Template,
    format: Format,
}

struct Shared {
    client: Client,
    /// `host:port` (no credentials), for messages.
    server: String,
    maxlen: Option<u64>,
    timeout: Duration,
    /// Created on first use; connects lazily and reconnects after I/O errors. Replaced
    /// after a refused login (see `needs_new_connection`).
    connection: Mutex<Option<ConnectionManager>>,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("server", &self.shared.server)
            .field("stream_template", &self.template.source())
            .field("maxlen", &self.shared.maxlen)
            .finish_non_exhaustive()
    }
}

impl RedisSink {
    /// Validates the config. Contacts nothing: the connection is made on first use (use
    /// [`RedisSink::check`] to find out whether the server answers).
    pub fn new(config: RedisSinkConfig) -> Result<Self, RedisSinkError> {
        let (client, template) = config.parse()?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                server: server_of(&config.url),
                maxlen: config.maxlen,
                timeout: config.timeout,
                connection: Mutex::new(None),
            }),
            template,
            format: config.format,
        })
    }

    /// The stream `event` goes to.
    pub fn stream_for(&self, event: &OutboxEvent) -> String {
        self.template.render(event)
    }

    /// Appends `event` and resolves once Redis answered with the new entry's id.
    pub fn deliver(
        &self,
        event: Arc<OutboxEvent>,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send + 'static {
        let stream = self.stream_for(&event);
        let entry = match &self.format {
            Format::CloudEvents(ce) => cloudevent_fields(&event, ce).map_err(|err| {
                DeliveryError::permanent(format!(
                    "payload of event {} is not valid json ({err}); it cannot be sent as a \
                     CloudEvent",
                    event.id
                ))
            }),
            // The configuration refuses debezium for Redis.
            Format::Native | Format::Debezium(_) => Ok(fields(&event)),
        };
        let command = entry.map(|entry| xadd(&stream, self.shared.maxlen, &entry));
        let shared = Arc::clone(&self.shared);
        async move {
            let command = command?;
            let timeout = shared.timeout;
            let appended = tokio::time::timeout(timeout, async {
                let mut connection = shared.connection()?;
                command
                    .query_async::<String>(&mut connection)
                    .await
                    .map_err(|error| shared.failed(&error, &stream))
            })
            .await;
            match appended {
                Ok(result) => result.map(drop),
                Err(_elapsed) => Err(DeliveryError::retryable(format!(
                    "redis stream {stream:?}: no answer from {} within {}",
                    shared.server,
                    humantime::format_duration(timeout)
                ))),
            }
        }
    }

    /// Nothing is buffered: every delivery's command is written when it is polled.
    pub fn close(&self) {}

    /// Readiness: the server answers `PING` within `timeout` (reachable, and the
    /// credentials accepted).
    pub async fn check(&self, timeout: Duration) -> Result<(), DeliveryError> {
        let server = &self.shared.server;
        let answered = tokio::time::timeout(timeout, async {
            let mut connection = self.shared.connection()?;
            ::redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map_err(|error| {
                    self.shared.failed(&error, "");
                    DeliveryError::retryable(format!("redis {server} did not answer PING: {error}"))
                })
        })
        .await;
        match answered {
            Ok(result) => result.map(drop),
            Err(_elapsed) => Err(DeliveryError::retryable(format!(
                "redis {server} did not answer PING within {}",
                humantime::format_duration(timeout)
            ))),
        }
    }
}

impl Shared {
    /// The connection, created on first use (without connecting: the first command does).
    /// A handle is a cheap clone sharing one multiplexed connection.
    fn connection(&self) -> Result<ConnectionManager, DeliveryError> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        // One connection attempt per command: the dispatcher owns retries, and a refused
        // login surfaces at once instead of as a timeout.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0);
        let connection = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|error| {
                DeliveryError::retryable(format!(
                    "redis connection to {} could not be set up: {error}",
                    self.server
                ))
            })?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Classifies `error` of a command on `stream`, and drops the connection when its login
    /// was refused: the manager reconnects by itself only after I/O errors, and would
    /// otherwise answer with the same refusal until the process restarts.
    fn failed(&self, error: &RedisError, stream: &str) -> DeliveryError {
        if needs_new_connection(error) {
            *self
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        classify(error, stream, &self.server)
    }
}

/// A refused login: the connection must be made afresh.
fn needs_new_connection(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
        || is_unauthenticated(error.code(), error.detail().unwrap_or(""))
}

/// Redis closes the connection of an unauthenticated client that sends a long command with
/// `ERR Protocol error: unauthenticated multibulk length` (an `XADD` has more than ten
/// arguments): a missing password.
fn is_unauthenticated(code: Option<&str>, detail: &str) -> bool {
    code == Some("ERR") && detail.contains("unauthenticated")
}

/// The fields of `event`'s stream entry, in order (see the module doc). Kept apart from the
/// transport so another body format can replace it.
pub fn fields(event: &OutboxEvent) -> Vec<(String, Bytes)> {
    let text = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let mut fields = vec![
        ("id".to_owned(), Bytes::from(event.id.to_string())),
        ("event_type".to_owned(), text(&event.event_type)),
        ("aggregate_type".to_owned(), text(&event.aggregate_type)),
        ("aggregate_id".to_owned(), text(&event.aggregate_id)),
        (
            "created_at".to_owned(),
            Bytes::from(event.created_at_rfc3339()),
        ),
        ("payload".to_owned(), event.payload.clone()),
    ];
    fields.extend(
        event
            .headers
            .iter()
            .map(|(name, value)| (format!("header.{name}"), text(value))),
    );
    fields
}

/// The fields of `event`'s entry as a CloudEvent: `id` (the row id, for consumers'
/// dedup), `content-type` (`application/cloudevents+json`) and `cloudevent`, the structured
/// document (Redis has no CloudEvents binding, so the mode setting does not apply); the
/// row's headers follow as `header.<name>` fields.
pub fn cloudevent_fields(
    event: &OutboxEvent,
    ce: &CloudEvents,
) -> Result<Vec<(String, Bytes)>, serde_json::Error> {
    let mut fields = vec![
        ("id".to_owned(), Bytes::from(event.id.to_string())),
        (
            "content-type".to_owned(),
            Bytes::from_static(cloudevents::STRUCTURED_CONTENT_TYPE.as_bytes()),
        ),
        ("cloudevent".to_owned(), Bytes::from(ce.structured(event)?)),
    ];
    fields.extend(event.headers.iter().map(|(name, value)| {
        (
            format!("header.{name}"),
            Bytes::copy_from_slice(value.as_bytes()),
        )
    }));
    Ok(fields)
}

/// `XADD stream [MAXLEN ~ maxlen] * field value …`.
fn xadd(stream: &str, maxlen: Option<u64>, fields: &[(String, Bytes)]) -> ::redis::Cmd {
    let mut command = ::redis::cmd("XADD");
    command.arg(stream);
    if let Some(maxlen) = maxlen {
        command.arg("MAXLEN").arg("~").arg(maxlen);
    }
    command.arg("*");
    for (name, value) in fields {
        command.arg(name.as_str()).arg(value.as_ref());
    }
    command
}

/// Sorts a failure into retryable or permanent. The one place that decides this for Redis.
fn classify(error: &RedisError, stream: &str, server: &str) -> DeliveryError {
    match error.code() {
        Some(code) => classify_reply(code, error.detail().unwrap_or(""), stream, server),
        None => {
            let why = match error.kind() {
                ErrorKind::AuthenticationFailed => format!(
                    "{server} refused the credentials ({error}); check the password in \
                     DISPATCHBOX_REDIS_URL or DISPATCHBOX_REDIS_PASSWORD_FILE"
                ),
                _ if error.is_timeout() => format!("no answer from {server} in time"),
                _ if error.is_io_error() || error.is_connection_dropped() => {
                    format!("{server} is unreachable or closed the connection ({error})")
                }
                _ => format!("XADD to {server} failed: {error}"),
            };
            DeliveryError::retryable(format!("redis stream {stream:?}: {why}"))
        }
    }
}

/// Classifies an error reply by its code (the first word of the reply).
///
/// Permanent: the entry can never be appended as configured — the key holds another type
/// (`WRONGTYPE`), the user may not run `XADD` on it (`NOPERM`, consistent with the Kafka
/// sink's authorisation failure). Retryable: the server is out of memory (`OOM`: memory
/// frees up as consumers trim, or `maxmemory` is raised), loading, busy with a script,
/// read-only (a replica during failover), or not authenticated (`NOAUTH`/`WRONGPASS`:
/// fixed by the operator without touching the events, like Kafka's SASL failures); `ERR`
/// and unknown codes are retryable too (`ERR max number of clients reached` passes), so a
/// surprise costs attempts, never an event.
pub(crate) fn classify_reply(
    code: &str,
    detail: &str,
    stream: &str,
    server: &str,
) -> DeliveryError {
    let permanent =
        |why: String| DeliveryError::permanent(format!("redis stream {stream:?}: {why}"));
    let retryable =
        |why: String| DeliveryError::retryable(format!("redis stream {stream:?}: {why}"));
    let busy = |why: String| DeliveryError::Retryable {
        reason: format!("redis stream {stream:?}: {why}"),
        retry_after: Some(BUSY_PAUSE),
    };
    if is_unauthenticated(Some(code), detail) {
        return retryable(format!(
            "{server} refused the command of an unauthenticated client; set the password in \
             DISPATCHBOX_REDIS_URL or DISPATCHBOX_REDIS_PASSWORD_FILE"
        ));
    }
    match code {
        "WRONGTYPE" => permanent(
            "the key exists and is not a stream; rename or delete it (or change \
             DISPATCHBOX_REDIS_STREAM), then retry the dead event"
                .to_owned(),
        ),
        "NOPERM" => permanent(format!(
            "the user may not run XADD on this key ({detail}); grant it (+xadd ~key), then \
             retry the dead event"
        )),
        "OOM" => busy(format!(
            "{server} is out of memory (maxmemory reached); trim streams or raise maxmemory"
        )),
        "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" => busy(format!(
            "{server} is temporarily unavailable ({code} {detail})"
        )),
        "READONLY" => retryable(format!(
            "{server} is a read-only replica (failover in progress?)"
        )),
        "NOAUTH" | "WRONGPASS" => retryable(format!(
            "{server} refused the credentials ({code}); check the password in \
             DISPATCHBOX_REDIS_URL or DISPATCHBOX_REDIS_PASSWORD_FILE"
        )),
        other => retryable(format!("{server} answered {other} {detail}")),
    }
}

/// `host:port` of a Redis URL, without credentials, path or query.
fn server_of(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(parsed) => format!(
            "{}://{}:{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or(""),
            parsed.port().unwrap_or(6379)
        ),
        Err(_) => "(invalid url)".to_owned(),
    }
}

#[cfg(test)]
mod tests;
