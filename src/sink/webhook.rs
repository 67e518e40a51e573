//! The webhook sink: one HTTP `POST` per event to a configured URL, signed per the Standard
//! Webhooks specification (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//!
//! Request shape: `content-type: application/json`, `user-agent: dispatchbox/<version>`,
//! `webhook-id` = the event id in decimal (the idempotency key), `webhook-timestamp` = Unix
//! seconds when the request is sent, and, when secrets are configured, `webhook-signature` =
//! one `v1,<base64 HMAC-SHA256>` per secret, space-separated (key rotation: every secret
//! signs). The body, keys in this order, with the payload embedded byte for byte:
//!
//! ```text
//! {"id":42,"type":"order.created","timestamp":"2024-01-02T03:04:05.000006Z",
//!  "aggregate_type":"order","aggregate_id":"o-1","data":{…}}
//! ```
//!
//! With the `cloudevents` format the body is the structured CloudEvents document
//! (`content-type: application/cloudevents+json; charset=utf-8`) or, in binary mode, the
//! payload alone (`application/json`) with the attributes as `ce-` headers, percent-encoded
//! as the CloudEvents HTTP binding says. The Standard Webhooks headers and signature are the
//! same in every format: the signature covers whatever body is sent.
//!
//! Extra headers (see [`headers`]): the operator's static headers
//! (`DISPATCHBOX_WEBHOOK_HEADERS`, e.g. an API key), then the entries of the row's `headers`
//! column whose names are on the forward allow-list (`DISPATCHBOX_WEBHOOK_FORWARD_HEADERS`,
//! default `traceparent,tracestate`). Neither may set the signing headers, `content-type`,
//! `host` or the framing headers; a row header never replaces a header already set (a
//! CloudEvents `ce-` attribute included); a row header whose value is not a valid header
//! value (a line break, non-ASCII) is left out with a WARN naming it (never its value), and
//! the event is sent without it. Headers are not signed: receivers verify the body, id and
//! timestamp.
//!
//! One sink per endpoint: `webhook` and any number of named ones (`webhook:billing`), each
//! with its own URL, secrets, headers, client and concurrency limit; [`WebhookSink::name`]
//! is the name routes, metrics and logs use.
//!
//! Owns: request building and signing, the HTTP client (one pooled `reqwest` client over
//! rustls with the ring provider and the webpki root set), the concurrency limit, and the
//! classification of every answer into retryable or permanent, in `classify`. Must not:
//! log bodies, header values, URLs beyond their origin (paths and queries may carry
//! tokens) or secrets, follow redirects, or retry on its own (the dispatcher owns retries).
//!
//! Ordering: unlike Kafka, nothing reaches the receiver until the returned future is polled,
//! and up to `max_concurrency` requests run in parallel over separate connections, so two
//! outstanding deliveries may arrive in either order. A caller that needs per-aggregate order
//! must keep at most one delivery per aggregate outstanding. Dropping a future cancels its
//! request; the event then counts as "may or may not have arrived", like any error.
//!
//! SSRF guard (see [`guard`]), on unless `allow_private`: every connection goes only to an
//! address outside the loopback, private, link-local (cloud metadata), CGNAT and other
//! special ranges. Host names are resolved by [`guard::GuardedResolver`], so the check
//! covers the address actually connected to, on every new connection; IP-literal URLs are
//! refused by [`WebhookSinkConfig::validate`] (the client does not resolve them). A host
//! that resolves only to refused addresses is a permanent failure (the event is `dead`,
//! the reason names the host, the address, the range and the variable that allows it): the
//! URL is the operator's, and no retry changes where it points until they act.
//!
//! Proxies: with the guard on, proxy variables (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`)
//! are ignored, with a WARN at startup: through a proxy the relay would only ever see the
//! proxy's address, never the receiver's. With `allow_private` they are honoured as before
//! (then an egress proxy is the place to filter destinations).

pub mod guard;
pub mod headers;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use tokio::sync::Semaphore;

use super::format::{cloudevents, CloudEventsMode, Format};
use super::DeliveryError;
use crate::event::OutboxEvent;
use guard::{AddressRefused, GuardedResolver};

/// Request timeout used when none is configured (the Standard Webhooks advice is 15–30 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Requests in flight at once, by default.
pub const DEFAULT_MAX_CONCURRENCY: usize = 32;

/// Longest pause a `Retry-After` header can ask for; larger values are capped to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Prefix of a Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";

/// Decoded secret length bounds, in bytes (Standard Webhooks: 24 to 64 random bytes).
const SECRET_LEN: std::ops::RangeInclusive<usize> = 24..=64;

/// At most this much of a response body is read (to let the connection return to the
/// pool); the rest is discarded with the connection.
const MAX_DRAINED_BODY: usize = 64 * 1024;

/// `user-agent` of every request.
const USER_AGENT_VALUE: &str = concat!("dispatchbox/", env!("CARGO_PKG_VERSION"));

/// Secrets are base64 with or without padding in the wild; both decode.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// Name of the unnamed webhook sink; named endpoints are `webhook:<name>`.
pub const SINK_NAME: &str = "webhook";

/// Proxy variables the HTTP client would read; ignored while the SSRF guard is on.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The prefix of the variables that configure the webhook sink `name`:
/// `DISPATCHBOX_WEBHOOK_` for `webhook`, `DISPATCHBOX_WEBHOOK_BILLING_` for
/// `webhook:billing`. Messages that tell an operator what to set use it.
pub fn variable_prefix(name: &str) -> String {
    match name.strip_prefix("webhook:") {
        Some(endpoint) => format!("DISPATCHBOX_WEBHOOK_{}_", endpoint.to_ascii_uppercase()),
        None => "DISPATCHBOX_WEBHOOK_".to_owned(),
    }
}

/// What the webhook sink needs to start.
#[derive(Clone)]
pub struct WebhookSinkConfig {
    /// The sink's name: [`SINK_NAME`] or `webhook:<endpoint>`. Routes, metrics and logs use
    /// it.
    pub name: String,
    /// Where events are `POST`ed; `http` or `https`. May carry credentials or tokens, so only
    /// its origin is ever printed.
    pub url: String,
    /// Standard Webhooks secrets (`whsec_` + base64 of 24–64 bytes). Empty: requests are not
    /// signed. Several: every one signs (key rotation).
    pub secrets: Vec<String>,
    /// Upper bound for one request: connect, send, and the response (default
    /// [`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// Requests in flight at once (default [`DEFAULT_MAX_CONCURRENCY`]).
    pub max_concurrency: usize,
    /// Static headers sent with every request, in order (values may be secrets: never
    /// printed). See [`headers`] for what they may not set.
    pub headers: Vec<(String, String)>,
    /// Lower-case names of the row headers sent as HTTP headers (default
    /// [`headers::DEFAULT_FORWARD_HEADERS`]).
    pub forward_headers: Vec<String>,
    /// Turns the SSRF guard off: loopback, private, link-local and the other special
    /// addresses may be reached, and proxy variables are honoured. Default false.
    pub allow_private: bool,
    /// The body's shape: native (the module doc) or CloudEvents.
    pub format: Format,
}

impl WebhookSinkConfig {
    /// A config for the sink [`SINK_NAME`] delivering to `url`, without secrets or static
    /// headers, forwarding the trace context, with the SSRF guard on and the default timeout
    /// and concurrency.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            name: SINK_NAME.to_owned(),
            url: url.into(),
            secrets: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            headers: Vec::new(),
            forward_headers: headers::DEFAULT_FORWARD_HEADERS
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
            allow_private: false,
            format: Format::Native,
        }
    }
}

impl WebhookSinkConfig {
    /// Checks everything [`WebhookSink::new`] rejects about this config (the URL, an IP
    /// literal the SSRF guard refuses, each secret, the headers, a zero timeout or
    /// concurrency) without building a client. The configuration
    /// calls it at startup, so a mistake is reported with the variable that holds it and the
    /// sink is only ever built from a config that passed.
    pub fn validate(&self) -> Result<(), WebhookSinkError> {
        self.parse().map(drop)
    }

    /// The URL, one HMAC key per secret and the headers, with the limits checked.
    fn parse(&self) -> Result<Parsed, WebhookSinkError> {
        let url =
            Url::parse(&self.url).map_err(|reason| WebhookSinkError::InvalidUrl { reason })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookSinkError::UnsupportedScheme {
                scheme: url.scheme().to_owned(),
            });
        }
        let ip = match url.host() {
            None => return Err(WebhookSinkError::MissingHost),
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
        };
        // The client connects to an IP literal without asking the resolver, so the guard
        // checks it here, once: the URL does not change while the relay runs.
        if let Some(ip) = ip.filter(|_| !self.allow_private) {
            if let Some(refusal) = guard::refusal(ip) {
                return Err(WebhookSinkError::RefusedAddress {
                    ip,
                    refusal,
                    variable: format!("{}ALLOW_PRIVATE", variable_prefix(&self.name)),
                });
            }
        }
        let keys = self
            .secrets
            .iter()
            .enumerate()
            .map(|(index, secret)| {
                let key = decode_secret(secret, index + 1)?;
                // HMAC accepts keys of any length; the error type only exists for fixed-size
                // MACs, and the length was checked above anyway.
                HmacSha256::new_from_slice(&key).map_err(|_| WebhookSinkError::SecretLength {
                    position: index + 1,
                    len: key.len(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.timeout.is_zero() {
            return Err(WebhookSinkError::ZeroTimeout);
        }
        if self.max_concurrency == 0 {
            return Err(WebhookSinkError::ZeroConcurrency);
        }
        Ok(Parsed {
            url,
            keys,
            headers: headers::header_map(&self.headers)?,
            forward: headers::forward_names(&self.forward_headers)?,
        })
    }
}

/// A config's parts in the form the sink uses them.
struct Parsed {
    url: Url,
    keys: Vec<HmacSha256>,
    headers: HeaderMap,
    forward: Vec<HeaderName>,
}

/// The URL may hold tokens and the secrets are secrets: only the origin and a count print.
impl std::fmt::Debug for WebhookSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = Url::parse(&self.url)
            .map(|url| url.origin().ascii_serialization())
            .unwrap_or_else(|_| "<invalid url>".to_owned());
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("WebhookSinkConfig")
            .field("name", &self.name)
            .field("url", &format_args!("{origin}/…"))
            .field("secrets", &self.secrets.len())
            .field("timeout", &self.timeout)
            .field("max_concurrency", &self.max_concurrency)
            .field("headers", &header_names)
            .field("forward_headers", &self.forward_headers)
            .field("allow_private", &self.allow_private)
            .finish()
    }
}

/// Why the webhook sink could not be built (configuration errors, reported at startup).
/// Messages never echo the URL or a secret: either may hold credentials.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSinkError {
    // The parser's text names the rule broken without quoting the url, so it is inlined:
    // config errors are usually printed without their source chain.
    #[error(
        "webhook url is not a valid url ({reason}); expected e.g. https://hooks.example.com/outbox"
    )]
    InvalidUrl { reason: url::ParseError },
    #[error("webhook url must use http or https, not {scheme:?}")]
    UnsupportedScheme { scheme: String },
    #[error("webhook url has no host")]
    MissingHost,
    #[error(
        "webhook url points at {ip}, a {refusal}; webhooks may not reach such addresses \
         (SSRF guard) unless {variable}=true"
    )]
    RefusedAddress {
        ip: std::net::IpAddr,
        refusal: guard::Refusal,
        /// The variable that turns the guard off for this sink.
        variable: String,
    },
    #[error(
        "webhook secret #{position} does not start with \"whsec_\"; Standard Webhooks secrets \
         are \"whsec_\" followed by base64"
    )]
    SecretPrefix { position: usize },
    #[error("webhook secret #{position} is not valid base64 after \"whsec_\"")]
    SecretEncoding { position: usize },
    #[error(
        "webhook secret #{position} decodes to {len} bytes; it must be 24 to 64 bytes \
         (generate one with `openssl rand -base64 32`, prefixed by \"whsec_\")"
    )]
    SecretLength { position: usize, len: usize },
    #[error(
        "webhook secret list holds no secrets; separate several with spaces or commas, or \
         leave the secret unset to send unsigned webhooks"
    )]
    NoSecrets,
    #[error(
        "webhook headers start with '{{' but are not a JSON object (line {line}, column \
         {column}); use {{\"Name\": \"value\", …}} or one Name: value per line"
    )]
    HeadersJson { line: usize, column: usize },
    #[error("webhook header #{position} of the JSON object is not a string")]
    HeaderNotString { position: usize },
    #[error("webhook headers line {line} is not \"Name: value\"")]
    HeaderLine { line: usize },
    #[error("webhook header #{position} has an invalid name; header names are letters, digits and !#$%&'*+-.^_`|~")]
    HeaderName { position: usize },
    #[error("webhook header {name} has an invalid value; use visible ASCII without line breaks")]
    HeaderValue { name: String },
    #[error("webhook header {name} is given twice; join the values with a comma")]
    DuplicateHeader { name: String },
    #[error(
        "webhook header {name} is set by the relay and cannot be configured or forwarded \
         (reserved: the webhook-* signing headers, content-type, content-length, host and \
         connection headers)"
    )]
    ReservedHeader { name: String },
    #[error("forwarded header name #{position} is not a valid header name")]
    ForwardHeaderName { position: usize },
    #[error("webhook timeout must be greater than zero")]
    ZeroTimeout,
    #[error("webhook concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("webhook tls configuration could not be built")]
    Tls {
        #[source]
        source: rustls::Error,
    },
    #[error("webhook http client could not be built")]
    Client {
        #[source]
        source: reqwest::Error,
    },
}

/// Splits one secret setting (e.g. `DISPATCHBOX_WEBHOOK_SECRET`) into its secrets: separated
/// by spaces and/or commas; several mean key rotation. Every secret is validated; errors name
/// a secret by its 1-based position, never by value. A setting with no secret in it is an
/// error ([`WebhookSinkError::NoSecrets`]): unsigned delivery is chosen by leaving it unset.
pub fn parse_secrets(list: &str) -> Result<Vec<String>, WebhookSinkError> {
    let secrets: Vec<String> = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect();
    if secrets.is_empty() {
        return Err(WebhookSinkError::NoSecrets);
    }
    for (index, secret) in secrets.iter().enumerate() {
        decode_secret(secret, index + 1)?;
    }
    Ok(secrets)
}

/// The HMAC key of one `whsec_…` secret.
fn decode_secret(secret: &str, position: usize) -> Result<Vec<u8>, WebhookSinkError> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(WebhookSinkError::SecretPrefix { position })?;
    let key = SECRET_BASE64
        .decode(encoded)
        .map_err(|_| WebhookSinkError::SecretEncoding { position })?;
    if !SECRET_LEN.contains(&key.len()) {
        return Err(WebhookSinkError::SecretLength {
            position,
            len: key.len(),
        });
    }
    Ok(key)
}

/// Delivers events as signed HTTP `POST`s. See the module doc for the request shape and
/// [`super::Sink`] for the delivery contract.
pub struct WebhookSink {
    inner: Arc<Inner>,
}

/// What every delivery future shares.
struct Inner {
    /// The sink's name (`webhook`, `webhook:billing`).
    name: String,
    client: reqwest::Client,
    url: Url,
    /// `scheme://host[:port]`: what messages name (paths and queries may carry tokens).
    origin: String,
    signer: Signer,
    /// Static headers (values sensitive), sent with every request.
    headers: HeaderMap,
    /// Row headers that may travel as HTTP headers.
    forward: Vec<HeaderName>,
    /// `None`: the SSRF guard is off. Else the variable that turns it off, for messages.
    guard: Option<String>,
    permits: Semaphore,
    timeout: Duration,
    format: Format,
}

/// The client and keys are not printed.
impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.inner.name)
            .field("origin", &self.inner.origin)
            .field("secrets", &self.inner.signer.keys.len())
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// Validates the config and builds the client. Does not contact the receiver (use
    /// [`WebhookSink::check`] for a cheap probe).
    ///
    /// With the SSRF guard on, the client resolves through [`GuardedResolver`] and ignores
    /// proxy variables (a WARN names any that is set).
    pub fn new(config: WebhookSinkConfig) -> Result<Self, WebhookSinkError> {
        let Parsed {
            url,
            keys,
            headers,
            forward,
        } = config.parse()?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.max_concurrency);
        let guard = (!config.allow_private)
            .then(|| format!("{}ALLOW_PRIVATE", variable_prefix(&config.name)));
        if let Some(variable) = &guard {
            builder = builder.dns_resolver(GuardedResolver).no_proxy();
            for proxy in PROXY_VARIABLES {
                if std::env::var_os(proxy).is_some_and(|value| !value.is_empty()) {
                    tracing::warn!(
                        sink = %config.name,
                        variable = proxy,
                        "proxy setting ignored by this webhook sink: the SSRF guard checks the \
                         address of every connection, which through a proxy would be the proxy's; \
                         set {variable}=true to send through the proxy and let it filter \
                         destinations"
                    );
                }
            }
        }
        let client = builder
            .build()
            .map_err(|source| WebhookSinkError::Client { source })?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: config.name,
                client,
                origin: url.origin().ascii_serialization(),
                url,
                signer: Signer { keys },
                headers,
                forward,
                guard,
                permits: Semaphore::new(config.max_concurrency),
                timeout: config.timeout,
                format: config.format,
            }),
        })
    }

    /// The sink's name: `webhook` or `webhook:<endpoint>`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Renders the body now and returns a future that waits for a concurrency permit, sends
    /// the request and resolves to the receiver's verdict. Ok = a 2xx answer. See the module
    /// doc for ordering and [`super::Sink::deliver`] for the contract.
    pub fn deliver(
        &self,
        event: Arc<OutboxEvent>,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send + 'static {
        let rendered = render(&self.inner.format, &event);
        let inner = Arc::clone(&self.inner);
        async move {
            let Rendered {
                body,
                content_type,
                attributes,
            } = rendered?;
            let _permit = inner.permits.acquire().await.map_err(|_| {
                DeliveryError::retryable(format!(
                    "webhook sink for {} was shut down before event {} was sent",
                    inner.origin, event.id
                ))
            })?;
            let id = event.id.to_string();
            // Taken after the permit: a request that queued behind others must not carry an
            // old timestamp, which receivers reject after five minutes.
            let timestamp = chrono::Utc::now().timestamp().to_string();
            let mut headers = inner.headers.clone();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            if !headers.contains_key(USER_AGENT) {
                headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
            }
            // Percent-encoded attribute values are visible ASCII: always valid.
            for (name, value) in attributes {
                if let (Ok(name), Ok(value)) = (
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    headers.insert(name, value);
                }
            }
            // Decimal digits are always a valid header value.
            for (name, value) in [("webhook-id", &id), ("webhook-timestamp", &timestamp)] {
                if let Ok(value) = HeaderValue::from_str(value) {
                    headers.insert(name, value);
                }
            }
            if let Some(signature) = inner.signer.sign(&id, &timestamp, &body) {
                // Base64 and spaces: always a valid header value.
                if let Ok(value) = HeaderValue::from_str(&signature) {
                    headers.insert("webhook-signature", value);
                }
            }
            headers::forward(&mut headers, &event.headers, &inner.forward, |header| {
                tracing::warn!(
                    event_id = event.id,
                    sink = %inner.name,
                    header,
                    "row header not forwarded: its value is not a valid http header value \
                     (visible ASCII without line breaks); the event is sent without it"
                );
            });
            let request = inner.client.post(inner.url.clone()).headers(headers);
            let answer = match request.body(body).send().await {
                Ok(mut response) => {
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| parse_retry_after(value, SystemTime::now()));
                    let status = response.status();
                    drain(&mut response).await;
                    Answer::Status {
                        status,
                        retry_after,
                    }
                }
                Err(error) => match (&inner.guard, refused(&error)) {
                    (Some(variable), Some(refused)) => Answer::Refused {
                        refused,
                        variable: variable.clone(),
                    },
                    _ => Answer::Transport(error),
                },
            };
            classify(answer, &inner.origin, inner.timeout)
        }
    }

    /// Nothing is buffered outside the delivery futures, so there is nothing to flush.
    pub fn close(&self) {}

    /// Readiness: the URL's host resolves within `timeout` (an IP literal always does), and
    /// with the SSRF guard on, to at least one allowed address. No request is sent:
    /// receivers should not see probe traffic.
    pub async fn check(&self, timeout: Duration) -> Result<(), DeliveryError> {
        let Some(url::Host::Domain(domain)) = self.inner.url.host() else {
            return Ok(());
        };
        let port = self.inner.url.port_or_known_default().unwrap_or(443);
        if let Some(variable) = &self.inner.guard {
            return match tokio::time::timeout(timeout, GuardedResolver::lookup(domain, port)).await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(match error.downcast::<AddressRefused>() {
                    Ok(refused) => refused_error(&self.inner.origin, &refused, variable),
                    Err(error) => DeliveryError::retryable(format!(
                        "webhook host {domain:?} could not be resolved: {error}; check DNS and \
                         the webhook url"
                    )),
                }),
                Err(_elapsed) => Err(DeliveryError::retryable(format!(
                    "webhook host {domain:?} did not resolve within {}",
                    humantime::format_duration(timeout)
                ))),
            };
        }
        let lookup = async {
            tokio::net::lookup_host((domain, port))
                .await
                .map(|mut addresses| addresses.next().is_some())
        };
        match tokio::time::timeout(timeout, lookup).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(DeliveryError::retryable(format!(
                "webhook host {domain:?} resolved to no addresses"
            ))),
            Ok(Err(error)) => Err(DeliveryError::retryable(format!(
                "webhook host {domain:?} could not be resolved: {error}; check DNS and the \
                 webhook url"
            ))),
            Err(_elapsed) => Err(DeliveryError::retryable(format!(
                "webhook host {domain:?} did not resolve within {}",
                humantime::format_duration(timeout)
            ))),
        }
    }
}

/// rustls with ring and the webpki root set, HTTP/1.1 only (see [`crate::tls`]).
fn tls_config() -> Result<rustls::ClientConfig, WebhookSinkError> {
    crate::tls::https_client_config().map_err(|source| WebhookSinkError::Tls { source })
}

/// Signs with every configured key (Standard Webhooks, symmetric `v1`).
struct Signer {
    keys: Vec<HmacSha256>,
}

impl Signer {
    /// The `webhook-signature` value for `"{id}.{timestamp}.{body}"`, or `None` without keys.
    fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> Option<String> {
        if self.keys.is_empty() {
            return None;
        }
        let signatures: Vec<String> = self
            .keys
            .iter()
            .map(|key| {
                let mut mac = key.clone();
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.as_bytes());
                mac.update(b".");
                mac.update(body);
                format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
            })
            .collect();
        Some(signatures.join(" "))
    }
}

/// A request's format-dependent parts, rendered once, sent as is, signed as is.
struct Rendered {
    body: Bytes,
    content_type: &'static str,
    /// CloudEvents binary mode: the `ce-` attribute headers, values percent-encoded.
    attributes: Vec<(String, String)>,
}

/// The body, content type and attribute headers of `event` in `format`.
fn render(format: &Format, event: &OutboxEvent) -> Result<Rendered, DeliveryError> {
    let not_json = |err: serde_json::Error| {
        DeliveryError::permanent(format!(
            "payload of event {} is not valid json ({err}); it cannot be sent as a CloudEvent",
            event.id
        ))
    };
    Ok(match format {
        Format::CloudEvents(ce) => match ce.mode {
            CloudEventsMode::Structured => Rendered {
                body: Bytes::from(ce.structured(event).map_err(not_json)?),
                content_type: cloudevents::STRUCTURED_CONTENT_TYPE,
                attributes: Vec::new(),
            },
            CloudEventsMode::Binary => {
                serde_json::from_slice::<&RawValue>(&event.payload).map_err(not_json)?;
                Rendered {
                    body: event.payload.clone(),
                    content_type: cloudevents::DATA_CONTENT_TYPE,
                    attributes: ce
                        .attributes(event)
                        .into_iter()
                        .map(|(name, value)| {
                            (format!("ce-{name}"), cloudevents::http_header_value(&value))
                        })
                        .collect(),
                }
            }
        },
        // The configuration refuses debezium for webhooks; native is the fallback.
        Format::Native | Format::Debezium(_) => Rendered {
            body: render_body(event)?,
            content_type: "application/json",
            attributes: Vec::new(),
        },
    })
}

/// The native request body for `event`.
fn render_body(event: &OutboxEvent) -> Result<Bytes, DeliveryError> {
    let data: &RawValue = serde_json::from_slice(&event.payload).map_err(|err| {
        DeliveryError::permanent(format!(
            "payload of event {} is not valid json ({err}); it cannot be sent as a webhook body",
            event.id
        ))
    })?;
    let body = Body {
        id: event.id,
        event_type: &event.event_type,
        timestamp: event.created_at_rfc3339(),
        aggregate_type: &event.aggregate_type,
        aggregate_id: &event.aggregate_id,
        data,
    };
    let mut bytes = Vec::with_capacity(event.payload.len() + 256);
    serde_json::to_writer(&mut bytes, &body).map_err(|err| {
        DeliveryError::permanent(format!(
            "event {} cannot be rendered as json: {err}",
            event.id
        ))
    })?;
    Ok(Bytes::from(bytes))
}

#[derive(Serialize)]
struct Body<'a> {
    id: i64,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: String,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    data: &'a RawValue,
}

/// Reads (and discards) up to [`MAX_DRAINED_BODY`] of the answer so its connection can be
/// reused. The verdict is already known, so read errors do not matter.
async fn drain(response: &mut reqwest::Response) {
    let mut read = 0;
    while read <= MAX_DRAINED_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => return,
        }
    }
}

/// The pause a `Retry-After` value asks for: delay-seconds or an HTTP date (relative to
/// `now`), capped at [`MAX_RETRY_AFTER`]. Garbage and dates in the past ask for nothing.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let pause = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).ok()?
    };
    Some(pause.min(MAX_RETRY_AFTER))
}

/// What came back from one request.
#[derive(Debug)]
enum Answer {
    /// The receiver answered with a status.
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    /// No answer: connect, timeout, or protocol failure.
    Transport(reqwest::Error),
    /// The SSRF guard refused every address of the host; `variable` turns it off.
    Refused {
        refused: AddressRefused,
        variable: String,
    },
}

/// The guard's refusal behind a failed request, if that is why it failed.
fn refused(error: &reqwest::Error) -> Option<AddressRefused> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<AddressRefused>() {
            return Some(refused.clone());
        }
        source = cause.source();
    }
    None
}

/// The permanent error for a host the guard refused.
fn refused_error(origin: &str, refused: &AddressRefused, variable: &str) -> DeliveryError {
    DeliveryError::permanent(format!(
        "webhook {origin} refused by the SSRF guard: {refused}; fix the webhook url, or set \
         {variable}=true if the receiver is meant to be internal, then retry the dead events"
    ))
}

/// Sorts an answer into delivered, retryable or permanent. The one place that decides this
/// for webhooks.
///
/// - 2xx: delivered.
/// - 408, 429, 5xx: the receiver is slow, throttling or down; retry, not before its
///   `Retry-After`.
/// - 3xx: retryable. Redirects are not followed (a redirect to an internal address must not
///   receive signed events), and a redirect says the endpoint moved, not that the event is
///   bad: once the operator points the URL at the new address, retries go through instead of
///   every event in between being `dead`. Without a fix the attempt limit makes them `dead`.
/// - 410 Gone and every other 4xx: the receiver rejects this event; retrying the same bytes
///   cannot help, so `dead`.
/// - 1xx and codes outside 100–599 (never final in HTTP/1.1): retryable, so a surprise costs
///   attempts, never an event.
/// - No answer at all (timeout, refused, reset, TLS failure): retryable.
/// - The SSRF guard refused the host's addresses: permanent. The URL is the operator's and
///   no retry changes where it points; after a fix, `dead retry` sends the events.
fn classify(answer: Answer, origin: &str, timeout: Duration) -> Result<(), DeliveryError> {
    match answer {
        Answer::Status {
            status,
            retry_after,
        } => match status.as_u16() {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => Err(DeliveryError::Retryable {
                reason: format!("webhook {origin} answered {status}"),
                retry_after,
            }),
            300..=399 => Err(DeliveryError::retryable(format!(
                "webhook {origin} answered {status}; redirects are not followed, point the \
                 webhook url at the final address"
            ))),
            410 => Err(DeliveryError::permanent(format!(
                "webhook {origin} answered {status}: the endpoint is gone; fix the webhook url, \
                 then retry the dead events"
            ))),
            401 | 403 => Err(DeliveryError::permanent(format!(
                "webhook {origin} answered {status}: the receiver refused the request; check the \
                 webhook secret (and any credentials in the url), then retry the dead events"
            ))),
            400..=499 => Err(DeliveryError::permanent(format!(
                "webhook {origin} answered {status}: the receiver rejected the event"
            ))),
            _ => Err(DeliveryError::retryable(format!(
                "webhook {origin} answered with unexpected status {status}"
            ))),
        },
        Answer::Transport(error) if error.is_timeout() => Err(DeliveryError::retryable(format!(
            "webhook {origin} did not answer within {}",
            humantime::format_duration(timeout)
        ))),
        Answer::Transport(error) if error.is_connect() => Err(DeliveryError::retryable(format!(
            "could not connect to webhook {origin}: {}",
            error_chain(error)
        ))),
        Answer::Transport(error) => Err(DeliveryError::retryable(format!(
            "webhook request to {origin} failed: {}",
            error_chain(error)
        ))),
        Answer::Refused { refused, variable } => Err(refused_error(origin, &refused, &variable)),
    }
}

/// The error and its causes, without the URL reqwest would otherwise print (it may hold
/// tokens), e.g. `error sending request: client error (Connect): tcp connect error:
/// Connection refused (os error 111)`.
fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper repeats the inner message in some wrappers; skip exact repeats.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
