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
//! The event's own `headers` column is not forwarded: HTTP headers of arbitrary names could
//! collide with the signing headers, and receivers verify the signed body, not headers.
//!
//! Owns: request building and signing, the HTTP client (one pooled `reqwest` client over
//! rustls with the ring provider and the webpki root set), the concurrency limit, and the
//! classification of every answer into retryable or permanent, in `classify`. Must not:
//! log bodies, URLs beyond their origin (paths and queries may carry tokens) or secrets,
//! follow redirects, or retry on its own (the dispatcher owns retries).
//!
//! Ordering: unlike Kafka, nothing reaches the receiver until the returned future is polled,
//! and up to `max_concurrency` requests run in parallel over separate connections, so two
//! outstanding deliveries may arrive in either order. A caller that needs per-aggregate order
//! must keep at most one delivery per aggregate outstanding. Dropping a future cancels its
//! request; the event then counts as "may or may not have arrived", like any error.
//!
//! Proxies: the standard `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` variables are honoured (the
//! URL is chosen by the operator, not by event producers, so there is no SSRF filter).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use tokio::sync::Semaphore;

use super::format::{cloudevents, CloudEventsMode, Format};
use super::DeliveryError;
use crate::event::OutboxEvent;

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

/// What the webhook sink needs to start.
#[derive(Clone)]
pub struct WebhookSinkConfig {
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
    /// The body's shape: native (the module doc) or CloudEvents.
    pub format: Format,
}

impl WebhookSinkConfig {
    /// A config for `url` without secrets, with the default timeout and concurrency.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secrets: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            format: Format::Native,
        }
    }
}

impl WebhookSinkConfig {
    /// Checks everything [`WebhookSink::new`] rejects about this config (the URL, each
    /// secret, a zero timeout or concurrency) without building a client. The configuration
    /// calls it at startup, so a mistake is reported with the variable that holds it and the
    /// sink is only ever built from a config that passed.
    pub fn validate(&self) -> Result<(), WebhookSinkError> {
        self.parse().map(drop)
    }

    /// The URL and one HMAC key per secret, with the limits checked.
    fn parse(&self) -> Result<(Url, Vec<HmacSha256>), WebhookSinkError> {
        let url =
            Url::parse(&self.url).map_err(|reason| WebhookSinkError::InvalidUrl { reason })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookSinkError::UnsupportedScheme {
                scheme: url.scheme().to_owned(),
            });
        }
        if url.host().is_none() {
            return Err(WebhookSinkError::MissingHost);
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
        Ok((url, keys))
    }
}

/// The URL may hold tokens and the secrets are secrets: only the origin and a count print.
impl std::fmt::Debug for WebhookSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = Url::parse(&self.url)
            .map(|url| url.origin().ascii_serialization())
            .unwrap_or_else(|_| "<invalid url>".to_owned());
        f.debug_struct("WebhookSinkConfig")
            .field("url", &format_args!("{origin}/…"))
            .field("secrets", &self.secrets.len())
            .field("timeout", &self.timeout)
            .field("max_concurrency", &self.max_concurrency)
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
    client: reqwest::Client,
    url: Url,
    /// `scheme://host[:port]`: what messages name (paths and queries may carry tokens).
    origin: String,
    signer: Signer,
    permits: Semaphore,
    timeout: Duration,
    format: Format,
}

/// The client and keys are not printed.
impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("origin", &self.inner.origin)
            .field("secrets", &self.inner.signer.keys.len())
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// Validates the config and builds the client. Does not contact the receiver (use
    /// [`WebhookSink::check`] for a cheap probe).
    pub fn new(config: WebhookSinkConfig) -> Result<Self, WebhookSinkError> {
        let (url, keys) = config.parse()?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.max_concurrency)
            .build()
            .map_err(|source| WebhookSinkError::Client { source })?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                origin: url.origin().ascii_serialization(),
                url,
                signer: Signer { keys },
                permits: Semaphore::new(config.max_concurrency),
                timeout: config.timeout,
                format: config.format,
            }),
        })
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
            let mut request = inner
                .client
                .post(inner.url.clone())
                .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
                .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
                .header("webhook-id", &id)
                .header("webhook-timestamp", &timestamp);
            for (name, value) in attributes {
                request = request.header(name, value);
            }
            if let Some(signature) = inner.signer.sign(&id, &timestamp, &body) {
                request = request.header("webhook-signature", signature);
            }
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
                Err(error) => Answer::Transport(error),
            };
            classify(answer, &inner.origin, inner.timeout)
        }
    }

    /// Nothing is buffered outside the delivery futures, so there is nothing to flush.
    pub fn close(&self) {}

    /// Readiness: the URL's host resolves within `timeout` (an IP literal always does). No
    /// request is sent: receivers should not see probe traffic.
    pub async fn check(&self, timeout: Duration) -> Result<(), DeliveryError> {
        let Some(url::Host::Domain(domain)) = self.inner.url.host() else {
            return Ok(());
        };
        let port = self.inner.url.port_or_known_default().unwrap_or(443);
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
