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
}

impl WebhookSinkConfig {
    /// A config for `url` without secrets, with the default timeout and concurrency.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secrets: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
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
        let body = render_body(&event);
        let inner = Arc::clone(&self.inner);
        async move {
            let body = body?;
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
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
                .header("webhook-id", &id)
                .header("webhook-timestamp", &timestamp);
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

/// rustls with ring and the webpki root set, HTTP/1.1 only. Built here rather than by
/// reqwest so no process-wide crypto provider has to be installed.
fn tls_config() -> Result<rustls::ClientConfig, WebhookSinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| WebhookSinkError::Tls { source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
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

/// The request body for `event`: rendered once, sent as is, signed as is.
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn event(id: i64, payload: &str) -> OutboxEvent {
        OutboxEvent {
            id,
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            event_type: "order.created".into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            headers: vec![("traceparent".into(), "00-abc-01".into())],
            created_at: chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
                + chrono::Duration::microseconds(6),
            next_run_at: None,
        }
    }

    fn signer(secrets: &[&str]) -> Signer {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| HmacSha256::new_from_slice(&decode_secret(s, i + 1).unwrap()).unwrap())
            .collect();
        Signer { keys }
    }

    fn status(code: u16, retry_after: Option<Duration>) -> Answer {
        Answer::Status {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after,
        }
    }

    #[test]
    fn spec_test_vector_signs_identically() {
        let signature = signer(&[SPEC_SECRET])
            .sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                br#"{"test": 2432232314}"#,
            )
            .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_secret_of_a_rotation_signs_space_separated() {
        let other = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        let both = signer(&[SPEC_SECRET, &other])
            .sign("1", "1614265330", b"{}")
            .unwrap();
        let first = signer(&[SPEC_SECRET])
            .sign("1", "1614265330", b"{}")
            .unwrap();
        let second = signer(&[&other]).sign("1", "1614265330", b"{}").unwrap();
        assert_eq!(both, format!("{first} {second}"));
        assert_ne!(first, second);
        assert!(signer(&[]).sign("1", "1", b"{}").is_none());
    }

    #[test]
    fn body_has_the_documented_shape_in_order() {
        let body = render_body(&event(42, r#"{"total": 10, "items": [1, 2]}"#)).unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "id": 42,
                "type": "order.created",
                "timestamp": "2024-01-02T03:04:05.000006Z",
                "aggregate_type": "order",
                "aggregate_id": "o-1",
                "data": {"total": 10, "items": [1, 2]},
            })
        );
        let keys = [
            "\"id\"",
            "\"type\"",
            "\"timestamp\"",
            "\"aggregate_type\"",
            "\"aggregate_id\"",
            "\"data\"",
        ];
        let positions: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "key order: {text}"
        );
        assert!(
            !text.contains("traceparent"),
            "event headers are not sent: {text}"
        );
    }

    #[test]
    fn payload_is_embedded_byte_for_byte() {
        #[derive(serde::Deserialize)]
        struct Data<'a> {
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let payloads = [
            r#"[1, "two", {"three": 3.0}]"#,
            r#""just a string""#,
            "12345678901234567890.5",
            "-0.0",
            "null",
            r#"{"unicode": "grüße 🚀 \u00e9", "escaped": "a\"b\\c\n"}"#,
        ];
        for (i, payload) in payloads.iter().enumerate() {
            let body = render_body(&event(i as i64, payload)).unwrap();
            let parsed: Data<'_> = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed.data.get(), *payload, "payload #{i} changed");
        }
    }

    #[test]
    fn invalid_payload_is_permanent_and_named() {
        let err = render_body(&event(7, "{not json")).unwrap_err();
        assert!(err.is_permanent());
        assert!(err.reason().contains("event 7"), "{}", err.reason());
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 07:28:00
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(parse_retry_after("2", now), secs(2));
        assert_eq!(parse_retry_after(" 120 ", now), secs(120));
        assert_eq!(parse_retry_after("0", now), secs(0));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            secs(30)
        );
        // RFC 850 and asctime forms are legal HTTP dates too.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            secs(60)
        );
        assert_eq!(parse_retry_after("Wed Oct 21 07:28:10 2015", now), secs(10));
        // Capped.
        assert_eq!(parse_retry_after("999999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Fri, 21 Oct 2016 07:28:00 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        // Ignored.
        for garbage in [
            "",
            "soon",
            "-5",
            "1.5",
            "2 s",
            "Wed, 21 Oct 2015 07:27:00 GMT",
        ] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }

    #[test]
    fn statuses_are_classified_by_what_the_caller_should_do() {
        let origin = "https://hooks.example.com";
        let timeout = Duration::from_secs(1);
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(
                classify(status(code, None), origin, timeout),
                Ok(()),
                "{code}"
            );
        }
        for code in [408, 429, 500, 502, 503, 504, 599] {
            let err = classify(status(code, None), origin, timeout).unwrap_err();
            assert!(!err.is_permanent(), "{code} must be retryable");
        }
        for code in [301, 302, 303, 307, 308] {
            let err = classify(status(code, None), origin, timeout).unwrap_err();
            assert!(!err.is_permanent(), "{code} must be retryable");
            assert!(
                err.reason().contains("redirects are not followed"),
                "{}",
                err.reason()
            );
        }
        for code in [400, 401, 403, 404, 405, 409, 410, 413, 422, 451] {
            let err = classify(status(code, None), origin, timeout).unwrap_err();
            assert!(err.is_permanent(), "{code} must be permanent");
        }
        for code in [101, 600, 999] {
            let err = classify(status(code, None), origin, timeout).unwrap_err();
            assert!(!err.is_permanent(), "{code} must be retryable");
        }
    }

    #[test]
    fn retryable_statuses_carry_retry_after_and_name_origin_and_status() {
        let pause = Some(Duration::from_secs(2));
        let err = classify(
            status(429, pause),
            "https://hooks.example.com",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(
            err,
            DeliveryError::Retryable {
                reason: "webhook https://hooks.example.com answered 429 Too Many Requests".into(),
                retry_after: pause,
            }
        );
        let err = classify(
            status(500, None),
            "https://hooks.example.com",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(
            err.reason(),
            "webhook https://hooks.example.com answered 500 Internal Server Error"
        );
        let err = classify(
            status(410, pause),
            "https://h.example",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err
            .reason()
            .starts_with("webhook https://h.example answered 410 Gone"));
    }

    fn config(url: &str, secrets: &[&str]) -> WebhookSinkConfig {
        WebhookSinkConfig {
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            ..WebhookSinkConfig::new(url)
        }
    }

    /// What `new` rejects the config for, checking that `validate` says the same.
    fn build_error(config: WebhookSinkConfig) -> String {
        let invalid = config.validate().unwrap_err().to_string();
        let rejected = WebhookSink::new(config).unwrap_err().to_string();
        assert_eq!(invalid, rejected, "validate and new disagree");
        rejected
    }

    #[test]
    fn config_is_validated_without_echoing_secrets_or_urls() {
        assert!(WebhookSink::new(config(
            "https://hooks.example.com/x?token=t",
            &[SPEC_SECRET]
        ))
        .is_ok());
        assert!(WebhookSink::new(config("http://127.0.0.1:9/", &[])).is_ok());

        let msg = build_error(config("hooks.example.com/x?token=s3cr3t", &[]));
        assert!(
            msg.starts_with("webhook url is not a valid url (relative URL without a base)"),
            "{msg}"
        );
        assert!(!msg.contains("s3cr3t"), "{msg}");
        let msg = build_error(config("ftp://hooks.example.com/", &[]));
        assert_eq!(msg, "webhook url must use http or https, not \"ftp\"");

        let short = format!("whsec_{}", STANDARD.encode([1u8; 16]));
        let long = format!("whsec_{}", STANDARD.encode([1u8; 65]));
        let cases = [
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "secret #2 does not start with \"whsec_\"",
            ),
            ("whsec_!!!notbase64!!!", "secret #2 is not valid base64"),
            (
                short.as_str(),
                "secret #2 decodes to 16 bytes; it must be 24 to 64 bytes",
            ),
            (long.as_str(), "secret #2 decodes to 65 bytes"),
        ];
        for (bad, expected) in cases {
            let msg = build_error(config("https://h.example/", &[SPEC_SECRET, bad]));
            assert!(msg.contains(expected), "{msg}");
            assert!(!msg.contains(bad), "secret echoed: {msg}");
        }
        let max = format!("whsec_{}", STANDARD.encode([1u8; 64]));
        assert!(WebhookSink::new(config("https://h.example/", &[&max])).is_ok());

        let zero_timeout = WebhookSinkConfig {
            timeout: Duration::ZERO,
            ..config("https://h.example/", &[])
        };
        assert_eq!(
            build_error(zero_timeout),
            "webhook timeout must be greater than zero"
        );
        let zero_concurrency = WebhookSinkConfig {
            max_concurrency: 0,
            ..config("https://h.example/", &[])
        };
        assert_eq!(
            build_error(zero_concurrency),
            "webhook concurrency must be at least 1"
        );
    }

    #[test]
    fn debug_output_hides_secrets_and_url_paths() {
        let config = config(
            "https://user:pw@hooks.example.com/hook?token=t0k",
            &[SPEC_SECRET],
        );
        let printed = format!("{config:?}");
        assert!(printed.contains("https://hooks.example.com"), "{printed}");
        for hidden in ["t0k", "pw", "MfKQ9r8"] {
            assert!(!printed.contains(hidden), "{printed}");
        }
        let sink = WebhookSink::new(config).unwrap();
        let printed = format!("{sink:?}");
        for hidden in ["t0k", "pw", "MfKQ9r8"] {
            assert!(!printed.contains(hidden), "{printed}");
        }
    }

    #[test]
    fn secret_lists_split_on_spaces_and_commas() {
        let other = format!("whsec_{}", STANDARD.encode([9u8; 32]));
        assert_eq!(parse_secrets(SPEC_SECRET).unwrap(), vec![SPEC_SECRET]);
        for list in [
            format!("{SPEC_SECRET} {other}"),
            format!("{SPEC_SECRET},{other}"),
            format!("  {SPEC_SECRET} ,\n {other},"),
        ] {
            assert_eq!(
                parse_secrets(&list).unwrap(),
                vec![SPEC_SECRET, other.as_str()]
            );
        }
        for empty in ["", "  ", " , ,"] {
            assert!(matches!(
                parse_secrets(empty),
                Err(WebhookSinkError::NoSecrets)
            ));
        }
        let err = parse_secrets(&format!("{SPEC_SECRET}, whsec_short")).unwrap_err();
        assert!(
            matches!(
                err,
                WebhookSinkError::SecretLength { position: 2, .. }
                    | WebhookSinkError::SecretEncoding { position: 2 }
            ),
            "{err:?}"
        );
        assert!(!err.to_string().contains("short"), "{err}");
    }

    #[tokio::test]
    async fn check_resolves_the_host_without_sending() {
        let sink = WebhookSink::new(config("http://127.0.0.1:9/", &[])).unwrap();
        sink.check(Duration::from_secs(1)).await.unwrap();
        let sink = WebhookSink::new(config("http://localhost:9/", &[])).unwrap();
        sink.check(Duration::from_secs(5)).await.unwrap();
        let sink = WebhookSink::new(config("http://no-such-host.invalid/", &[])).unwrap();
        let err = sink.check(Duration::from_secs(5)).await.unwrap_err();
        assert!(!err.is_permanent());
        assert!(
            err.reason().contains("no-such-host.invalid"),
            "{}",
            err.reason()
        );
    }
}
