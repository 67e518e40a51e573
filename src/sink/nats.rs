//! The NATS JetStream sink: publishes each event to a subject rendered from a template and
//! waits for the JetStream publish acknowledgement (the stream stored it).
//!
//! Message shape ([`message`]): payload = the payload bytes exactly; headers `Nats-Msg-Id`
//! (the row id, so the stream's duplicate window drops re-deliveries), `id`, `event_type`,
//! `aggregate_type`, `aggregate_id`, `created_at` (RFC 3339), then the event's own headers in
//! column order. An event header whose name collides with one of those six is dropped (a
//! consumer must never see a forged idempotency key), and so is one that NATS cannot carry
//! (a name with `:`, spaces, control or non-ASCII characters; a value with a line break).
//!
//! Owns: subject templates and NATS subject rules, the client's connect options, and the
//! classification of every publish failure into retryable or permanent, in `classify`. Must
//! not: log payloads or header values, touch the database, or retry on its own — with one
//! bounded exception: a subject no stream listens on is published again for half the
//! delivery timeout before it counts as permanent, like the Kafka sink's wait for a topic
//! missing from metadata, so a stream that is being created or recovered (a JetStream
//! server restarting, a stream leader election) does not turn events `dead`.
//!
//! The client connects in the background on first use and reconnects forever; while it is
//! disconnected, publishes wait and fail as retryable when the delivery timeout passes.
//! A publish starts when its future is first polled (not inside `deliver`), so like the
//! webhook sink, outstanding deliveries carry no order between them; the dispatcher keeps
//! at most one delivery per aggregate outstanding.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context};
use async_nats::{ConnectOptions, ServerAddr};
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::format::{cloudevents, CloudEvents, CloudEventsMode, Format};
use super::template::{Template, TemplateError};
use super::DeliveryError;
use crate::event::OutboxEvent;
use crate::secret::Secret;
use address::{
    parse_servers, parse_subject_template, redact_servers, url_login, validate_subject, Login,
};

/// Subject template used when none is configured.
pub const DEFAULT_SUBJECT_TEMPLATE: &str = "outbox.{aggregate_type}";

/// How long one delivery may take by default: sending, and waiting for the acknowledgement.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest subject published. The server closes a connection whose protocol line exceeds
/// `max_control_line` (4 KiB by default), which would fail every delivery in flight; a
/// subject this long is refused before it is sent.
pub const MAX_SUBJECT_LEN: usize = 1024;

/// Pause between publishes while no stream listens on a subject (see the module doc).
const NO_STREAM_PAUSE: Duration = Duration::from_millis(250);

/// Names of the headers the sink sets itself; event headers with these names are dropped.
const RESERVED_HEADERS: [&str; 6] = [
    "Nats-Msg-Id",
    "id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "created_at",
];

/// How the client authenticates, besides a `user:password@` in the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials beyond the URL's.
    #[default]
    None,
    /// A token (`authorization { token: … }` on the server).
    Token(Secret<String>),
    /// The contents of a `.creds` file (a user JWT and its NKey seed), as `nsc` and the `nats`
    /// CLI write them: decentralised JWT authentication.
    Credentials(Secret<String>),
}

/// What the NATS sink needs to start.
#[derive(Clone)]
pub struct NatsSinkConfig {
    /// Comma-separated server URLs: `nats://host:4222`, `tls://host:4222` (TLS required,
    /// verified against the system's roots) or `host:port`; `user:password@` allowed.
    pub url: String,
    /// Subject template with `{aggregate_type}` / `{event_type}` placeholders (default
    /// [`DEFAULT_SUBJECT_TEMPLATE`]).
    pub subject_template: String,
    /// Token or credentials.
    pub auth: NatsAuth,
    /// Upper bound for one delivery (default [`DEFAULT_TIMEOUT`]); also the connect timeout.
    pub timeout: Duration,
    /// A PEM bundle of the CAs that sign the servers' certificates, instead of the
    /// system's trust store.
    pub tls_ca_file: Option<PathBuf>,
    /// Native (the module doc) or CloudEvents (the NATS protocol binding).
    pub format: Format,
}

impl NatsSinkConfig {
    /// A config for `url` with the default template and timeout and no credentials.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            subject_template: DEFAULT_SUBJECT_TEMPLATE.to_owned(),
            auth: NatsAuth::None,
            timeout: DEFAULT_TIMEOUT,
            tls_ca_file: None,
            format: Format::Native,
        }
    }

    /// Checks everything [`NatsSink::new`] checks: the URLs, the subject template, the
    /// timeout and the credentials. The configuration calls it at startup.
    pub fn validate(&self) -> Result<(), NatsSinkError> {
        self.parse().map(drop)
    }

    fn parse(&self) -> Result<(Vec<ServerAddr>, Template, Login), NatsSinkError> {
        let servers = parse_servers(&self.url)?;
        let template = parse_subject_template(&self.subject_template)?;
        if self.timeout.is_zero() {
            return Err(NatsSinkError::ZeroTimeout);
        }
        if let NatsAuth::Credentials(creds) = &self.auth {
            ConnectOptions::new()
                .credentials(creds.expose())
                .map_err(|e| NatsSinkError::Credentials {
                    reason: e.to_string(),
                })?;
        }
        if let Some(path) = &self.tls_ca_file {
            super::tls::read_ca_bundle(path).map_err(|reason| NatsSinkError::TlsCa { reason })?;
        }
        let login = match (url_login(&servers)?, &self.auth) {
            (Login::None, NatsAuth::None) => Login::None,
            (Login::None, NatsAuth::Token(token)) => Login::Token(token.clone()),
            (Login::None, NatsAuth::Credentials(creds)) => Login::Credentials(creds.clone()),
            (from_url, NatsAuth::None) => from_url,
            (_, NatsAuth::Token(_) | NatsAuth::Credentials(_)) => {
                return Err(NatsSinkError::TwoLogins)
            }
        };
        Ok((servers, template, login))
    }
}

/// The URL may hold a password, so it prints redacted; credentials print as `Secret(***)`.
impl std::fmt::Debug for NatsSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSinkConfig")
            .field("url", &redact_servers(&self.url))
            .field("subject_template", &self.subject_template)
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

/// Why the NATS sink could not be built (configuration errors, reported at startup). The
/// messages never echo a URL (it may hold a password) or a credential.
#[derive(Debug, thiserror::Error)]
pub enum NatsSinkError {
    #[error("nats url is empty; use nats://host:4222 (several servers separated by commas)")]
    EmptyUrl,
    #[error(
        "nats server {position} of the url is not a valid url ({reason}); use nats://host:4222, \
         tls://host:4222 or host:4222"
    )]
    InvalidUrl { position: usize, reason: String },
    #[error("nats server {position} of the url uses scheme {scheme:?}; use nats:// or tls://")]
    UnsupportedScheme { position: usize, scheme: String },
    #[error("nats subject {0}")]
    Template(#[from] TemplateError),
    #[error(
        "nats subject template {template:?} contains {found:?}, which is not allowed in a \
         subject to publish to (no spaces, control characters or wildcards '*' and '>')"
    )]
    IllegalTemplateCharacter { template: String, found: char },
    #[error(
        "nats subject template {template:?} makes subjects with an empty token ('..', or a \
         '.' at the start or end)"
    )]
    EmptyToken { template: String },
    #[error("nats subject template {template:?} is longer than {MAX_SUBJECT_LEN} bytes")]
    TemplateTooLong { template: String },
    #[error("nats timeout must be greater than zero")]
    ZeroTimeout,
    #[error(
        "nats credentials are not a valid .creds file (a user JWT and an NKey seed): {reason}"
    )]
    Credentials { reason: String },
    #[error(
        "nats servers in the url carry different credentials; give every server the same \
         user:password@ (or token@), or none"
    )]
    MixedUrlLogins,
    #[error("nats tls ca bundle: {reason}")]
    TlsCa { reason: String },
    #[error(
        "nats url carries credentials (user:password@ or token@) and a token or credentials \
         file is set too; use one of them"
    )]
    TwoLogins,
}

/// Publishes events to NATS JetStream. See the module doc for the message shape and
/// [`super::Sink`] for the delivery contract.
pub struct NatsSink {
    shared: Arc<Shared>,
    template: Template,
    format: Format,
}

/// What every delivery needs, shared with the futures `deliver` returns.
struct Shared {
    /// The servers, for messages (passwords redacted).
    servers: String,
    addrs: Vec<ServerAddr>,
    login: Login,
    tls_ca_file: Option<PathBuf>,
    timeout: Duration,
    /// Connected (in the background) on first use.
    context: OnceCell<Context>,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("servers", &self.shared.servers)
            .field("subject_template", &self.template.source())
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// Validates the config. Contacts nothing: the client connects on first use (use
    /// [`NatsSink::check`] to find out whether the servers answer).
    pub fn new(config: NatsSinkConfig) -> Result<Self, NatsSinkError> {
        let (addrs, template, login) = config.parse()?;
        Ok(Self {
            shared: Arc::new(Shared {
                servers: redact_servers(&config.url),
                addrs,
                login,
                tls_ca_file: config.tls_ca_file,
                timeout: config.timeout,
                context: OnceCell::new(),
            }),
            template,
            format: config.format,
        })
    }

    /// The subject `event` goes to (the rendered template, not yet validated).
    pub fn subject_for(&self, event: &OutboxEvent) -> String {
        self.template.render(event)
    }

    /// Publishes `event` and resolves once JetStream acknowledged it (Ok: stored by the
    /// stream, or recognised as a duplicate of a stored message by its `Nats-Msg-Id`).
    pub fn deliver(
        &self,
        event: Arc<OutboxEvent>,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send + 'static {
        let prepared = self.prepare(&event);
        let shared = Arc::clone(&self.shared);
        async move {
            let (subject, message) = prepared?;
            let timeout = shared.timeout;
            tokio::time::timeout(timeout, shared.publish(&subject, message))
                .await
                .unwrap_or_else(|_elapsed| {
                    Err(classify(
                        &Failure::Timeout,
                        &subject,
                        &shared.servers,
                        timeout,
                    ))
                })
        }
    }

    /// The synchronous half of `deliver`: the subject and the message, or why the event can
    /// never be published.
    fn prepare(&self, event: &OutboxEvent) -> Result<(String, Message), DeliveryError> {
        let subject = self.subject_for(event);
        if let Err(problem) = validate_subject(&subject) {
            return Err(DeliveryError::permanent(format!(
                "nats subject {subject:?} rendered from template {:?} for event {} is not a \
                 legal subject ({problem}); change the template or the event's aggregate/event \
                 type",
                self.template.source(),
                event.id
            )));
        }
        let message = match &self.format {
            Format::CloudEvents(ce) => cloudevent_message(event, ce).map_err(|err| {
                DeliveryError::permanent(format!(
                    "payload of event {} is not valid json ({err}); it cannot be sent as a \
                     CloudEvent",
                    event.id
                ))
            })?,
            // The configuration refuses debezium for NATS.
            Format::Native | Format::Debezium(_) => message(event).map_err(|header| {
                DeliveryError::permanent(format!(
                    "nats subject {subject:?}: the {header} of event {} contains a line break \
                     (CR or LF), which a NATS header cannot carry",
                    event.id
                ))
            })?,
        };
        Ok((subject, message))
    }

    /// Waits up to `timeout` for what was published to be written to the server.
    /// Deliveries still waiting for their acknowledgement afterwards fail as retryable.
    pub async fn close(&self, timeout: Duration) {
        let Some(context) = self.shared.context.get() else {
            return;
        };
        // Without a connection there is nothing to flush (and a flush would wait for one):
        // deliveries still waiting fail as retryable.
        if context.client().connection_state() != async_nats::connection::State::Connected {
            return;
        }
        match tokio::time::timeout(timeout, context.client().flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                sink = "nats",
                servers = %self.shared.servers,
                error = %error,
                "nats client could not flush on shutdown; unconfirmed events will be retried"
            ),
            Err(_elapsed) => tracing::warn!(
                sink = "nats",
                servers = %self.shared.servers,
                "nats client did not flush within the shutdown timeout; unconfirmed events \
                 will be retried"
            ),
        }
    }

    /// Readiness: JetStream answers an account-info request (`$JS.API.INFO`) within
    /// `timeout`: the server is reachable, the credentials are accepted and JetStream is
    /// enabled for the account. The answer is only checked for an error, not parsed whole,
    /// so servers older or newer than the client's own account type pass.
    pub async fn check(&self, timeout: Duration) -> Result<(), DeliveryError> {
        let servers = &self.shared.servers;
        let failed = |why: String| {
            DeliveryError::retryable(format!(
                "nats servers {servers} did not answer a jetstream account request: {why}"
            ))
        };
        let answered = tokio::time::timeout(timeout, async {
            let context = self.shared.context().await?;
            let reply = context
                .client()
                .request(ACCOUNT_INFO_SUBJECT, Bytes::new())
                .await
                .map_err(|error| match error.kind() {
                    async_nats::RequestErrorKind::NoResponders => failed(
                        "no responders: jetstream is not enabled for this account (start the \
                         server with -js)"
                            .to_owned(),
                    ),
                    _ => failed(format!("{error}{}", self.connection_note())),
                })?;
            match serde_json::from_slice::<AccountInfoReply>(&reply.payload) {
                Ok(AccountInfoReply { error: None }) => Ok(()),
                Ok(AccountInfoReply { error: Some(error) }) => {
                    Err(failed(error.description.unwrap_or_default()))
                }
                Err(error) => Err(failed(format!("unreadable answer: {error}"))),
            }
        })
        .await;
        match answered {
            Ok(result) => result,
            Err(_elapsed) => Err(failed(format!(
                "no answer within {}{}",
                humantime::format_duration(timeout),
                self.connection_note()
            ))),
        }
    }

    /// `" (not connected: …)"` while the client has no connection, for messages.
    fn connection_note(&self) -> &'static str {
        use async_nats::connection::State;
        match self
            .shared
            .context
            .get()
            .map(|c| c.client().connection_state())
        {
            Some(State::Connected) => "",
            Some(State::Pending) => {
                " (not connected yet; the client's warnings in the log say why)"
            }
            Some(State::Disconnected) => {
                " (disconnected; reconnecting, the client's warnings in the log say why)"
            }
            None => " (the client was not started)",
        }
    }
}

/// The JetStream API subject of the account-info request (default API prefix).
const ACCOUNT_INFO_SUBJECT: &str = "$JS.API.INFO";

/// The part of a JetStream API answer `check` reads.
#[derive(serde::Deserialize)]
struct AccountInfoReply {
    error: Option<ApiError>,
}

#[derive(serde::Deserialize)]
struct ApiError {
    description: Option<String>,
}

/// One message as published: headers and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The headers, `Nats-Msg-Id` first.
    pub headers: HeaderMap,
    /// The payload bytes.
    pub payload: Bytes,
}

/// Builds the message of `event` (see the module doc). Kept apart from the transport so
/// another body format can replace it. Fails with the name of a fixed header whose value
/// NATS cannot carry.
pub fn message(event: &OutboxEvent) -> Result<Message, &'static str> {
    let id = event.id.to_string();
    let created_at = event.created_at_rfc3339();
    let fixed = [
        ("id", id.as_str()),
        ("event_type", event.event_type.as_str()),
        ("aggregate_type", event.aggregate_type.as_str()),
        ("aggregate_id", event.aggregate_id.as_str()),
        ("created_at", created_at.as_str()),
    ];
    let mut headers = HeaderMap::new();
    headers.insert(
        NATS_MESSAGE_ID,
        HeaderValue::from_str(&id).map_err(|_| "id")?,
    );
    for (name, value) in fixed {
        let name_value = HeaderName::from_str(name).map_err(|_| name)?;
        headers.insert(name_value, HeaderValue::from_str(value).map_err(|_| name)?);
    }
    for (name, value) in &event.headers {
        if RESERVED_HEADERS
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(name), HeaderValue::from_str(value)) {
            headers.append(name, value);
        }
    }
    Ok(Message {
        headers,
        payload: event.payload.clone(),
    })
}

/// The message of `event` as a CloudEvent (the NATS protocol binding): in binary mode the
/// payload with `ce-` attribute headers (values percent-encoded as in HTTP) and
/// `content-type: application/json`; in structured mode the `application/cloudevents+json`
/// document. `Nats-Msg-Id` is the row id either way (JetStream's dedup), and the row's own
/// headers follow, except names the format sets.
pub fn cloudevent_message(
    event: &OutboxEvent,
    ce: &CloudEvents,
) -> Result<Message, serde_json::Error> {
    let mut headers = HeaderMap::new();
    let mut set = |name: &str, value: &str| {
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(name), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    };
    set("Nats-Msg-Id", &event.id.to_string());
    let payload = match ce.mode {
        CloudEventsMode::Binary => {
            set("content-type", cloudevents::DATA_CONTENT_TYPE);
            for (name, value) in ce.attributes(event) {
                set(
                    &format!("ce-{name}"),
                    &cloudevents::http_header_value(&value),
                );
            }
            serde_json::from_slice::<&serde_json::value::RawValue>(&event.payload)?;
            event.payload.clone()
        }
        CloudEventsMode::Structured => {
            set("content-type", cloudevents::STRUCTURED_CONTENT_TYPE);
            Bytes::from(ce.structured(event)?)
        }
    };
    for (name, value) in &event.headers {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("ce-") || lower == "content-type" || lower == "nats-msg-id" {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(name), HeaderValue::from_str(value)) {
            headers.append(name, value);
        }
    }
    Ok(Message { headers, payload })
}

impl Shared {
    /// The JetStream context, creating the client on first use. The client connects in the
    /// background (and reconnects forever), so this does not wait for the network.
    async fn context(&self) -> Result<&Context, DeliveryError> {
        self.context
            .get_or_try_init(|| async {
                // With `retry_on_initial_connect` connecting happens in the background; this
                // only fails on inputs `validate` checked already.
                let client =
                    async_nats::connect_with_options(self.addrs.clone(), self.connect_options())
                        .await
                        .map_err(|error| {
                            DeliveryError::retryable(format!(
                                "nats client for servers {} could not be started: {error}",
                                self.servers
                            ))
                        })?;
                Ok(jetstream::ContextBuilder::new()
                    .timeout(self.timeout)
                    .build(client))
            })
            .await
    }

    fn connect_options(&self) -> ConnectOptions {
        let options = match &self.login {
            Login::None => ConnectOptions::new(),
            Login::Token(token) => ConnectOptions::with_token(token.expose().clone()),
            Login::UserPassword(user, password) => {
                ConnectOptions::with_user_and_password(user.clone(), password.expose().clone())
            }
            // Checked by `validate`; a failure here leaves the client unauthenticated, which
            // the server refuses (and `check` reports).
            Login::Credentials(creds) => ConnectOptions::new()
                .credentials(creds.expose())
                .unwrap_or_else(|_| ConnectOptions::new()),
        };
        let options = match &self.tls_ca_file {
            Some(path) => options.add_root_certificates(path.clone()),
            None => options,
        };
        let servers = self.servers.clone();
        options
            .name("dispatchbox")
            .retry_on_initial_connect()
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            .event_callback(move |event| {
                let servers = servers.clone();
                async move { log_event(&servers, event) }
            })
    }

    /// Publishes and waits for the acknowledgement; while no stream listens on the subject,
    /// publishes again for half the timeout (see the module doc).
    async fn publish(&self, subject: &str, message: Message) -> Result<(), DeliveryError> {
        let context = self.context().await?;
        let no_stream_until = tokio::time::Instant::now() + self.timeout / 2;
        loop {
            let publish = PublishMessage::build()
                .payload(message.payload.clone())
                .headers(message.headers.clone());
            let acked = match context.send_publish(subject.to_owned(), publish).await {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            };
            let failure = match acked {
                Ok(_ack) => return Ok(()),
                Err(error) => Failure::from_publish(&error, context),
            };
            if failure == Failure::NoStream
                && tokio::time::Instant::now() + NO_STREAM_PAUSE < no_stream_until
            {
                tokio::time::sleep(NO_STREAM_PAUSE).await;
                continue;
            }
            return Err(classify(&failure, subject, &self.servers, self.timeout));
        }
    }
}

/// Connection events, logged with the sink's name. Server errors (a permissions violation,
/// an authorisation failure) arrive here, not at the publish that caused them.
fn log_event(servers: &str, event: async_nats::Event) {
    use async_nats::Event as E;
    match event {
        E::Connected => tracing::info!(sink = "nats", servers, "nats client connected"),
        E::Disconnected => tracing::warn!(
            sink = "nats",
            servers,
            "nats client disconnected; reconnecting"
        ),
        E::LameDuckMode => tracing::warn!(
            sink = "nats",
            servers,
            "nats server entered lame duck mode; the client will move to another server"
        ),
        E::ServerError(error) => tracing::warn!(
            sink = "nats",
            servers,
            error = %error,
            "nats server reported an error (a permissions violation shows as publish timeouts)"
        ),
        E::ClientError(error) => {
            tracing::warn!(sink = "nats", servers, error = %error, "nats client error")
        }
        E::Draining | E::Closed | E::SlowConsumer(_) => {
            tracing::debug!(sink = "nats", servers, event = %event, "nats client event")
        }
    }
}

/// A publish failure, reduced to what classification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No subscriber on the subject: no stream covers it (the server's 503).
    NoStream,
    /// Message (headers and payload) larger than the server's `max_payload`.
    TooLarge { max_payload: usize },
    /// No acknowledgement within the timeout (also: the server is unreachable).
    Timeout,
    /// The connection went away before the acknowledgement.
    ConnectionLost,
    /// Too many publishes waiting for acknowledgements in this client.
    TooManyPending,
    /// JetStream answered with an error.
    JetStream { code: u64, description: String },
    /// Anything else.
    Other(String),
}

impl Failure {
    fn from_publish(error: &PublishError, context: &Context) -> Self {
        match error.kind() {
            PublishErrorKind::StreamNotFound => Failure::NoStream,
            PublishErrorKind::MaxPayloadExceeded => Failure::TooLarge {
                max_payload: context.client().server_info().max_payload,
            },
            PublishErrorKind::TimedOut => Failure::Timeout,
            PublishErrorKind::BrokenPipe => Failure::ConnectionLost,
            PublishErrorKind::MaxAckPending => Failure::TooManyPending,
            PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
            | PublishErrorKind::Other => {
                match std::error::Error::source(error)
                    .and_then(|source| source.downcast_ref::<jetstream::Error>())
                {
                    Some(js) => Failure::JetStream {
                        code: js.error_code().0,
                        description: js.to_string(),
                    },
                    None => Failure::Other(error.to_string()),
                }
            }
        }
    }
}

/// JetStream error codes `classify` tells apart (the server's `err_code`).
const MESSAGE_TOO_LARGE: u64 = jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM.0;
const HEADERS_TOO_LARGE: u64 = jetstream::ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM.0;
/// A stream at a limit with `discard: new` ("maximum messages exceeded" and the like).
const STREAM_FULL: u64 = jetstream::ErrorCode::STREAM_STORE_FAILED.0;
const STORAGE_EXCEEDED: u64 = jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED.0;
const MEMORY_EXCEEDED: u64 = jetstream::ErrorCode::MEMORY_RESOURCES_EXCEEDED.0;
const ACCOUNT_EXCEEDED: u64 = jetstream::ErrorCode::ACCOUNT_RESOURCES_EXCEEDED.0;
const INSUFFICIENT_RESOURCES: u64 = jetstream::ErrorCode::INSUFFICIENT_RESOURCES.0;

/// Sorts a failure into retryable or permanent. The one place that decides this for NATS.
///
/// Permanent: the event (or its subject) can never be accepted as configured — larger than
/// the server or the stream allows, or no stream covers its subject (after the grace of the
/// module doc; consistent with the Kafka sink's unknown topic: an operator creates or
/// widens the stream and retries the dead events, nothing is lost). Retryable: the server is
/// unreachable, slow, or the stream is full with `discard: new` (consumers or limits free
/// room); unknown JetStream errors are retryable too, so a surprise costs attempts, never an
/// event.
pub(crate) fn classify(
    failure: &Failure,
    subject: &str,
    servers: &str,
    timeout: Duration,
) -> DeliveryError {
    let permanent =
        |why: String| DeliveryError::permanent(format!("nats subject {subject:?}: {why}"));
    let retryable =
        |why: String| DeliveryError::retryable(format!("nats subject {subject:?}: {why}"));
    match failure {
        Failure::NoStream => permanent(
            "no jetstream stream covers this subject (the server answered 'no responders'); \
             create a stream whose subjects include it (or fix the subject template), then \
             retry the dead event"
                .to_owned(),
        ),
        Failure::TooLarge { max_payload } => permanent(format!(
            "message is larger than the server's max_payload ({max_payload} bytes); raise \
             max_payload on the server, then retry the dead event"
        )),
        Failure::JetStream {
            code: MESSAGE_TOO_LARGE | HEADERS_TOO_LARGE,
            description,
        } => permanent(format!(
            "the stream refused the message as too large ({description}); raise the stream's \
             max_msg_size, then retry the dead event"
        )),
        Failure::JetStream {
            code:
                STREAM_FULL
                | STORAGE_EXCEEDED
                | MEMORY_EXCEEDED
                | ACCOUNT_EXCEEDED
                | INSUFFICIENT_RESOURCES,
            description,
        } => retryable(format!(
            "the stream is full or out of resources ({description})"
        )),
        Failure::JetStream { description, .. } => {
            retryable(format!("jetstream refused the message: {description}"))
        }
        Failure::Timeout => retryable(format!(
            "no acknowledgement from nats servers {servers} within {} (unreachable, slow, or \
             not permitted to publish to this subject)",
            humantime::format_duration(timeout)
        )),
        Failure::ConnectionLost => retryable(format!(
            "the connection to nats servers {servers} was lost before the acknowledgement"
        )),
        Failure::TooManyPending => retryable(format!(
            "too many publishes are waiting for acknowledgements from nats servers {servers}"
        )),
        Failure::Other(error) => retryable(format!("publish failed: {error}")),
    }
}

mod address;
#[cfg(test)]
mod tests;
