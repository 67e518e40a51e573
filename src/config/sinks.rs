//! The sinks: `DISPATCHBOX_SINKS` and each enabled sink's own variables, validated into one
//! [`SinkConfig`] per sink, holding the sink module's own config type.
//!
//! Whatever a sink refuses about its config is found here, through the sink's own
//! `validate` (the rules stay in the sink), and reported with the variable that holds the
//! mistake: `run` and `check` only ever build sinks from configs that passed.
//!
//! Webhook endpoints: `webhook` reads `DISPATCHBOX_WEBHOOK_*`; each named endpoint
//! `webhook:<name>` is a sink of its own reading `DISPATCHBOX_WEBHOOK_<NAME>_*` (see
//! [`webhook`] for which settings fall back to the unnamed ones).

use std::borrow::Cow;
use std::collections::HashMap;

use super::value::{boolean, count, positive_duration, value_or_file};
use super::{ConfigError, DatabaseSettings, RawConfig};
use crate::secret::Secret;
use crate::sink::format::{debezium, CloudEvents, Debezium, Format, FormatError, FormatKind};
use crate::sink::kafka::{KafkaSinkConfig, KafkaSinkError, DEFAULT_TOPIC_TEMPLATE};
use crate::sink::nats::{NatsAuth, NatsSinkConfig, NatsSinkError};
use crate::sink::rabbitmq::{RabbitMqSinkConfig, RabbitMqSinkError, TemplateKind};
use crate::sink::redis::{RedisSinkConfig, RedisSinkError};
use crate::sink::webhook::{self, headers, WebhookSinkConfig, WebhookSinkError};
use crate::sink::SinkConfig;

/// Prefix of the environment variables that carry librdkafka properties.
pub const PROPERTY_ENV_PREFIX: &str = "DISPATCHBOX_KAFKA_PROPERTY_";

/// The sink names `DISPATCHBOX_SINKS` accepts, for its error messages.
const SINK_NAMES: &str =
    "kafka, nats, redis, rabbitmq, webhook, webhook:NAME (a named webhook endpoint), stdout";

/// Longest webhook endpoint name.
const MAX_ENDPOINT_NAME: usize = 32;

/// The sinks `DISPATCHBOX_SINKS` names, as parsed before their settings are read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Kafka,
    /// `webhook` (`None`) or `webhook:<name>`.
    Nats,
    Redis,
    Webhook(Option<String>),
    Stdout,
    RabbitMq,
}

/// `DISPATCHBOX_SINKS`, in its order (a repeated name counts once), each sink with its
/// settings; `vars` supplies the dynamic `DISPATCHBOX_KAFKA_PROPERTY_*` set.
pub(super) fn from_raw(
    raw: &RawConfig,
    database: &DatabaseSettings,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<Vec<SinkConfig>, ConfigError> {
    // The whole list is checked before any sink's settings, so a misspelt name is reported
    // as such rather than as a missing setting of the sink beside it.
    let kinds = kinds(&raw.sinks)?;
    let formats = Formats::from_raw(raw, database)?;
    let vars: HashMap<String, String> = vars.collect();
    let mut properties = Some(kafka_properties_from_env(
        vars.iter()
            .map(|(name, value)| (name.clone(), value.clone())),
    ));
    kinds
        .into_iter()
        .map(|kind| {
            Ok(match kind {
                Kind::Kafka => {
                    let own = set_format("DISPATCHBOX_KAFKA_FORMAT", raw.kafka_format.as_deref());
                    let format = formats.for_sink("kafka", own, &[])?;
                    SinkConfig::Kafka(kafka(raw, format, properties.take().unwrap_or_default())?)
                }
                Kind::Webhook(endpoint) => {
                    // A named endpoint's own format, else the webhooks', else the default.
                    let named = endpoint.as_deref().and_then(|name| {
                        let variable =
                            format!("DISPATCHBOX_WEBHOOK_{}_FORMAT", name.to_ascii_uppercase());
                        let value = vars.get(&variable).map(String::as_str);
                        set_format(&variable, value)
                    });
                    let own = named.or_else(|| {
                        set_format("DISPATCHBOX_WEBHOOK_FORMAT", raw.webhook_format.as_deref())
                    });
                    let format = formats.for_sink("webhook", own, &[DEBEZIUM])?;
                    SinkConfig::Webhook(webhook(raw, &vars, endpoint.as_deref(), format)?)
                }
                Kind::Stdout => {
                    let own = set_format("DISPATCHBOX_STDOUT_FORMAT", raw.stdout_format.as_deref());
                    SinkConfig::Stdout(formats.for_sink("stdout", own, &[DEBEZIUM])?)
                }
                Kind::RabbitMq => {
                    let own = set_format(
                        "DISPATCHBOX_RABBITMQ_FORMAT",
                        raw.rabbitmq_format.as_deref(),
                    );
                    let format = formats.for_sink("rabbitmq", own, &[DEBEZIUM])?;
                    SinkConfig::RabbitMq(rabbitmq(raw, format)?)
                }
                Kind::Nats => {
                    let own = set_format("DISPATCHBOX_NATS_FORMAT", raw.nats_format.as_deref());
                    let format = formats.for_sink("nats", own, &[DEBEZIUM])?;
                    SinkConfig::Nats(nats(raw, format)?)
                }
                Kind::Redis => {
                    let own = set_format("DISPATCHBOX_REDIS_FORMAT", raw.redis_format.as_deref());
                    let format = formats.for_sink("redis", own, &[DEBEZIUM])?;
                    SinkConfig::Redis(redis(raw, format)?)
                }
            })
        })
        .collect()
}

/// A webhook endpoint name: it becomes part of variable names
/// (`DISPATCHBOX_WEBHOOK_<NAME>_URL`), so lower-case letters, digits and `_`, starting with
/// a letter. A name ending in `forward` is refused: its `…_FORWARD_HEADERS` variable would
/// be another endpoint's `…_HEADERS` (`DISPATCHBOX_WEBHOOK_FORWARD_HEADERS` is the unnamed
/// endpoint's allow-list, not the static headers of `webhook:forward`).
fn endpoint_name(name: &str) -> Result<String, ConfigError> {
    let valid = name.len() <= MAX_ENDPOINT_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(ConfigError::new(
            "DISPATCHBOX_SINKS",
            format!(
                "webhook endpoint name {name:?} is not valid; use lower-case letters, digits and \
                 _, starting with a letter, at most {MAX_ENDPOINT_NAME} characters (e.g. \
                 webhook:billing, configured by DISPATCHBOX_WEBHOOK_BILLING_URL)"
            ),
        ));
    }
    if name == "forward" || name.ends_with("_forward") {
        return Err(ConfigError::new(
            "DISPATCHBOX_SINKS",
            format!(
                "webhook endpoint name {name:?} is reserved: its variables would collide with \
                 …_FORWARD_HEADERS; choose another name"
            ),
        ));
    }
    Ok(name.to_owned())
}

fn kinds(list: &str) -> Result<Vec<Kind>, ConfigError> {
    let mut kinds = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind = match name {
            "kafka" => Kind::Kafka,
            "webhook" => Kind::Webhook(None),
            "stdout" => Kind::Stdout,
            "nats" => Kind::Nats,
            "redis" => Kind::Redis,
            "rabbitmq" => Kind::RabbitMq,
            other => match other.strip_prefix("webhook:") {
                Some(endpoint) => Kind::Webhook(Some(endpoint_name(endpoint)?)),
                None => {
                    return Err(ConfigError::new(
                        "DISPATCHBOX_SINKS",
                        format!(
                            "unknown sink {other:?}; use a comma-separated list of {SINK_NAMES}"
                        ),
                    ))
                }
            },
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        return Err(ConfigError::new(
            "DISPATCHBOX_SINKS",
            format!("must name at least one sink ({SINK_NAMES})"),
        ));
    }
    Ok(kinds)
}

/// Why a sink cannot speak Debezium's format.
const DEBEZIUM: (FormatKind, &str) = (
    FormatKind::Debezium,
    "Debezium's outbox event router writes Kafka records; use native or cloudevents",
);

/// A sink's own format variable and its value, when the variable is set and not empty.
fn set_format(variable: &str, value: Option<&str>) -> Option<(String, String)> {
    let value = value.map(str::trim).filter(|v| !v.is_empty())?;
    Some((variable.to_owned(), value.to_owned()))
}

/// `DISPATCHBOX_FORMAT` and the settings of each format, checked once; each sink then picks
/// its format (its own `DISPATCHBOX_<SINK>_FORMAT`, else `DISPATCHBOX_FORMAT`).
struct Formats {
    default: FormatKind,
    cloudevents: CloudEvents,
    debezium: Debezium,
}

impl Formats {
    fn from_raw(raw: &RawConfig, database: &DatabaseSettings) -> Result<Self, ConfigError> {
        let default = parse_format("DISPATCHBOX_FORMAT", &raw.format)?;
        let mode = raw.cloudevents_mode.parse().map_err(|e: FormatError| {
            ConfigError::new("DISPATCHBOX_CLOUDEVENTS_MODE", e.to_string())
        })?;
        let table = database.names.table();
        let source = raw.cloudevents_source.clone().unwrap_or_else(|| {
            crate::sink::format::cloudevents::default_source(
                database.conninfo.dbname(),
                &format!("{}.{}", table.schema(), table.name()),
            )
        });
        let cloudevents = CloudEvents::new(source, mode)
            .map_err(|e| ConfigError::new("DISPATCHBOX_CLOUDEVENTS_SOURCE", e.to_string()))?;
        let debezium =
            Debezium::from_placements(raw.debezium_additional_placement.as_deref().unwrap_or(""))
                .map_err(|e| {
                ConfigError::new("DISPATCHBOX_DEBEZIUM_ADDITIONAL_PLACEMENT", e.to_string())
            })?;
        Ok(Self {
            default,
            cloudevents,
            debezium,
        })
    }

    /// The format of sink `sink`: `own` (its format variable and value) or the default,
    /// refused when it is among the sink's `unsupported` formats.
    fn for_sink(
        &self,
        sink: &'static str,
        own: Option<(String, String)>,
        unsupported: &[(FormatKind, &'static str)],
    ) -> Result<Format, ConfigError> {
        let (variable, kind): (Cow<'static, str>, FormatKind) = match own {
            Some((variable, text)) => {
                let kind = parse_format(variable.clone(), &text)?;
                (variable.into(), kind)
            }
            None => ("DISPATCHBOX_FORMAT".into(), self.default),
        };
        if let Some((_, reason)) = unsupported.iter().find(|(refused, _)| *refused == kind) {
            let error = FormatError::Unsupported {
                format: kind.name(),
                sink,
                reason,
            };
            return Err(ConfigError::new(variable, error.to_string()));
        }
        Ok(match kind {
            FormatKind::Native => Format::Native,
            FormatKind::CloudEvents => Format::CloudEvents(self.cloudevents.clone()),
            FormatKind::Debezium => Format::Debezium(self.debezium.clone()),
        })
    }
}

fn parse_format(
    variable: impl Into<Cow<'static, str>>,
    text: &str,
) -> Result<FormatKind, ConfigError> {
    text.parse()
        .map_err(|e: FormatError| ConfigError::new(variable, e.to_string()))
}

/// `DISPATCHBOX_KAFKA_*`.
fn kafka(
    raw: &RawConfig,
    format: Format,
    properties: Vec<(String, String)>,
) -> Result<KafkaSinkConfig, ConfigError> {
    let brokers = raw
        .kafka_brokers
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                "DISPATCHBOX_KAFKA_BROKERS",
                "is required when DISPATCHBOX_SINKS includes kafka (e.g. kafka-0:9092,kafka-1:9092)",
            )
        })?
        .to_owned();
    let default_topic = match format {
        Format::Debezium(_) => debezium::DEFAULT_TOPIC_TEMPLATE,
        _ => DEFAULT_TOPIC_TEMPLATE,
    };
    let config = KafkaSinkConfig {
        brokers,
        topic_template: raw
            .kafka_topic
            .clone()
            .unwrap_or_else(|| default_topic.to_owned()),
        format,
        properties,
        delivery_timeout: positive_duration(
            "DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT",
            &raw.kafka_delivery_timeout,
        )?,
    };
    config
        .validate()
        .map_err(|error| kafka_error(&config, error))?;
    Ok(config)
}

/// Names the variable behind what the Kafka sink refused.
fn kafka_error(config: &KafkaSinkConfig, error: KafkaSinkError) -> ConfigError {
    let variable: Cow<'static, str> = match &error {
        KafkaSinkError::UnknownPlaceholder { .. }
        | KafkaSinkError::UnclosedPlaceholder { .. }
        | KafkaSinkError::IllegalTemplateCharacter { .. }
        | KafkaSinkError::EmptyTemplate => "DISPATCHBOX_KAFKA_TOPIC".into(),
        KafkaSinkError::DeliveryTimeout => "DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT".into(),
        KafkaSinkError::Property { name, .. }
            if config.properties.iter().any(|(given, _)| given == name) =>
        {
            property_variable(name).into()
        }
        // The sink's own settings are valid; the broker list is the only other input.
        // (`validate` creates no producer, so `Producer` does not come from it.)
        KafkaSinkError::Property { .. } | KafkaSinkError::Producer { .. } => {
            "DISPATCHBOX_KAFKA_BROKERS".into()
        }
    };
    ConfigError::new(variable, error.to_string())
}

/// The variable that sets librdkafka property `name`: the inverse of
/// [`kafka_properties_from_env`] (`log_level` → `DISPATCHBOX_KAFKA_PROPERTY_LOG__LEVEL`).
fn property_variable(name: &str) -> String {
    let name = name
        .replace('_', "__")
        .replace('.', "_")
        .to_ascii_uppercase();
    format!("{PROPERTY_ENV_PREFIX}{name}")
}

/// `DISPATCHBOX_NATS_*`.
fn nats(raw: &RawConfig, format: Format) -> Result<NatsSinkConfig, ConfigError> {
    let url = required(
        &raw.nats_url,
        "DISPATCHBOX_NATS_URL",
        "is required when DISPATCHBOX_SINKS includes nats (e.g. nats://nats-0:4222,nats://nats-1:4222)",
    )?;
    let token = value_or_file(
        "DISPATCHBOX_NATS_TOKEN",
        "DISPATCHBOX_NATS_TOKEN_FILE",
        &raw.nats_token,
        &raw.nats_token_file,
    )?;
    let creds = value_or_file(
        "DISPATCHBOX_NATS_CREDS_FILE",
        "DISPATCHBOX_NATS_CREDS_FILE",
        &None,
        &raw.nats_creds_file,
    )?;
    let auth = match (token, creds) {
        (Some((variable, _)), Some(_)) => {
            return Err(ConfigError::new(
                variable,
                "set either a token or DISPATCHBOX_NATS_CREDS_FILE, not both",
            ))
        }
        (Some((_, token)), None) => NatsAuth::Token(Secret::new(token.trim().to_owned())),
        (None, Some((_, creds))) => NatsAuth::Credentials(Secret::new(creds)),
        (None, None) => NatsAuth::None,
    };
    let config = NatsSinkConfig {
        format,
        url,
        subject_template: raw.nats_subject.clone(),
        auth,
        timeout: positive_duration("DISPATCHBOX_NATS_TIMEOUT", &raw.nats_timeout)?,
        tls_ca_file: path(&raw.nats_tls_ca_file),
    };
    config.validate().map_err(|error| {
        let variable = match &error {
            NatsSinkError::EmptyUrl
            | NatsSinkError::InvalidUrl { .. }
            | NatsSinkError::UnsupportedScheme { .. }
            | NatsSinkError::MixedUrlLogins
            | NatsSinkError::TwoLogins => "DISPATCHBOX_NATS_URL",
            NatsSinkError::Template(_)
            | NatsSinkError::IllegalTemplateCharacter { .. }
            | NatsSinkError::EmptyToken { .. }
            | NatsSinkError::TemplateTooLong { .. } => "DISPATCHBOX_NATS_SUBJECT",
            NatsSinkError::ZeroTimeout => "DISPATCHBOX_NATS_TIMEOUT",
            NatsSinkError::Credentials { .. } => "DISPATCHBOX_NATS_CREDS_FILE",
            NatsSinkError::TlsCa { .. } => "DISPATCHBOX_NATS_TLS_CA_FILE",
        };
        ConfigError::new(variable, error.to_string())
    })?;
    Ok(config)
}

/// `DISPATCHBOX_REDIS_*`.
fn redis(raw: &RawConfig, format: Format) -> Result<RedisSinkConfig, ConfigError> {
    let url = required(
        &raw.redis_url,
        "DISPATCHBOX_REDIS_URL",
        "is required when DISPATCHBOX_SINKS includes redis (e.g. redis://redis:6379 or rediss://redis:6380)",
    )?;
    let password = value_or_file(
        "DISPATCHBOX_REDIS_PASSWORD",
        "DISPATCHBOX_REDIS_PASSWORD_FILE",
        &raw.redis_password,
        &raw.redis_password_file,
    )?
    .map(|(_, password)| Secret::new(password));
    let maxlen = raw
        .redis_maxlen
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| count("DISPATCHBOX_REDIS_MAXLEN", v, 1u64, i64::MAX as u64))
        .transpose()?;
    let config = RedisSinkConfig {
        format,
        url,
        password,
        stream_template: raw.redis_stream.clone(),
        maxlen,
        timeout: positive_duration("DISPATCHBOX_REDIS_TIMEOUT", &raw.redis_timeout)?,
        tls_ca_file: path(&raw.redis_tls_ca_file),
    };
    config.validate().map_err(|error| {
        let variable = match &error {
            RedisSinkError::InvalidUrl { .. } | RedisSinkError::UnsupportedScheme { .. } => {
                "DISPATCHBOX_REDIS_URL"
            }
            RedisSinkError::Template(_) => "DISPATCHBOX_REDIS_STREAM",
            RedisSinkError::ZeroMaxlen => "DISPATCHBOX_REDIS_MAXLEN",
            RedisSinkError::ZeroTimeout => "DISPATCHBOX_REDIS_TIMEOUT",
            RedisSinkError::TlsCa { .. } | RedisSinkError::CaWithoutTls => {
                "DISPATCHBOX_REDIS_TLS_CA_FILE"
            }
        };
        ConfigError::new(variable, error.to_string())
    })?;
    Ok(config)
}

/// A path variable: unset or blank is none.
fn path(value: &Option<String>) -> Option<std::path::PathBuf> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
}

/// The trimmed value of a required variable, or `rule` as the error.
fn required(
    value: &Option<String>,
    variable: &'static str,
    rule: &'static str,
) -> Result<String, ConfigError> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ConfigError::new(variable, rule))
}

/// One webhook endpoint's settings. `webhook` reads `DISPATCHBOX_WEBHOOK_*`;
/// `webhook:<name>` reads `DISPATCHBOX_WEBHOOK_<NAME>_*`. A named endpoint's URL, secrets
/// and static headers are its own (they belong to one receiver: a secret or API key must not
/// reach another by accident); its timeout, concurrency, forward allow-list and
/// allow-private switch fall back to the unnamed variables (with their defaults) when unset.
fn webhook(
    raw: &RawConfig,
    vars: &HashMap<String, String>,
    endpoint: Option<&str>,
    format: Format,
) -> Result<WebhookSinkConfig, ConfigError> {
    let name = match endpoint {
        Some(endpoint) => format!("{}:{endpoint}", webhook::SINK_NAME),
        None => webhook::SINK_NAME.to_owned(),
    };
    let prefix = webhook::variable_prefix(&name);
    let variable = |suffix: &str| format!("{prefix}{suffix}");
    // The unnamed endpoint's values come from RawConfig (the declared variables, with
    // their defaults); a named endpoint's are looked up by name.
    let own = |suffix: &str, unnamed: Option<&String>| match endpoint {
        None => unnamed.cloned(),
        Some(_) => vars.get(&variable(suffix)).cloned(),
    };
    let inherited = |suffix: &str, unnamed: &String| match own(suffix, Some(unnamed)) {
        Some(value) => (variable(suffix), value),
        None => (format!("DISPATCHBOX_WEBHOOK_{suffix}"), unnamed.clone()),
    };

    let url_variable = variable("URL");
    let url = own("URL", raw.webhook_url.as_ref())
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                url_variable.clone(),
                format!(
                    "is required when DISPATCHBOX_SINKS includes {name} (e.g. \
                     https://hooks.example.com/outbox)"
                ),
            )
        })?;
    let (secret_variable, secret_file_variable) = (variable("SECRET"), variable("SECRET_FILE"));
    let (secret_variable, secrets) = match value_or_file(
        &secret_variable,
        &secret_file_variable,
        &own("SECRET", raw.webhook_secret.as_ref()),
        &own("SECRET_FILE", raw.webhook_secret_file.as_ref()),
    )? {
        Some((variable, text)) => (
            variable.to_owned(),
            webhook::parse_secrets(&text)
                .map_err(|e| ConfigError::new(variable.to_owned(), e.to_string()))?,
        ),
        None => (secret_variable.clone(), Vec::new()),
    };
    let (headers_variable, headers_file_variable) = (variable("HEADERS"), variable("HEADERS_FILE"));
    let (headers_variable, static_headers) = match value_or_file(
        &headers_variable,
        &headers_file_variable,
        &own("HEADERS", raw.webhook_headers.as_ref()),
        &own("HEADERS_FILE", raw.webhook_headers_file.as_ref()),
    )? {
        Some((variable, text)) => (
            variable.to_owned(),
            headers::parse_headers(&text)
                .map_err(|e| ConfigError::new(variable.to_owned(), e.to_string()))?,
        ),
        None => (headers_variable.clone(), Vec::new()),
    };
    let (timeout_variable, timeout) = inherited("TIMEOUT", &raw.webhook_timeout);
    let (concurrency_variable, concurrency) = inherited("CONCURRENCY", &raw.webhook_concurrency);
    let (forward_variable, forward) = inherited("FORWARD_HEADERS", &raw.webhook_forward_headers);
    let (allow_variable, allow_private) = inherited("ALLOW_PRIVATE", &raw.webhook_allow_private);
    let config = WebhookSinkConfig {
        name,
        url,
        secrets,
        timeout: positive_duration(&timeout_variable, &timeout)?,
        max_concurrency: count(&concurrency_variable, &concurrency, 1, 10_000)?,
        headers: static_headers,
        forward_headers: headers::parse_forward_headers(&forward),
        allow_private: boolean(&allow_variable, &allow_private)?,
        format,
    };
    config.validate().map_err(|error| {
        let variable = match &error {
            WebhookSinkError::InvalidUrl { .. }
            | WebhookSinkError::UnsupportedScheme { .. }
            | WebhookSinkError::MissingHost
            | WebhookSinkError::RefusedAddress { .. } => &url_variable,
            WebhookSinkError::SecretPrefix { .. }
            | WebhookSinkError::SecretEncoding { .. }
            | WebhookSinkError::SecretLength { .. }
            | WebhookSinkError::NoSecrets => &secret_variable,
            WebhookSinkError::HeadersJson { .. }
            | WebhookSinkError::HeaderNotString { .. }
            | WebhookSinkError::HeaderLine { .. }
            | WebhookSinkError::HeaderName { .. }
            | WebhookSinkError::HeaderValue { .. }
            | WebhookSinkError::DuplicateHeader { .. } => &headers_variable,
            // Static headers are checked first, so a reserved name they hold is theirs.
            WebhookSinkError::ReservedHeader { name }
                if config
                    .headers
                    .iter()
                    .any(|(given, _)| given.eq_ignore_ascii_case(name)) =>
            {
                &headers_variable
            }
            WebhookSinkError::ReservedHeader { .. }
            | WebhookSinkError::ForwardHeaderName { .. } => &forward_variable,
            WebhookSinkError::ZeroTimeout => &timeout_variable,
            WebhookSinkError::ZeroConcurrency => &concurrency_variable,
            // `validate` builds no client, so these do not come from it; the URL is what the
            // client is built for.
            WebhookSinkError::Tls { .. } | WebhookSinkError::Client { .. } => &url_variable,
        };
        ConfigError::new(variable.clone(), error.to_string())
    })?;
    Ok(config)
}

/// `DISPATCHBOX_RABBITMQ_*`.
fn rabbitmq(raw: &RawConfig, format: Format) -> Result<RabbitMqSinkConfig, ConfigError> {
    let (url_variable, url) = value_or_file(
        "DISPATCHBOX_RABBITMQ_URL",
        "DISPATCHBOX_RABBITMQ_URL_FILE",
        &raw.rabbitmq_url,
        &raw.rabbitmq_url_file,
    )?
    .map(|(variable, url)| (variable, url.trim().to_owned()))
    .filter(|(_, url)| !url.is_empty())
    .ok_or_else(|| {
        ConfigError::new(
            "DISPATCHBOX_RABBITMQ_URL",
            "is required when DISPATCHBOX_SINKS includes rabbitmq (e.g. amqp://relay:secret@rabbitmq:5672/%2f)",
        )
    })?;
    let config = RabbitMqSinkConfig {
        url,
        format,
        exchange_template: raw.rabbitmq_exchange.trim().to_owned(),
        routing_key_template: raw.rabbitmq_routing_key.clone(),
        delivery_timeout: positive_duration(
            "DISPATCHBOX_RABBITMQ_DELIVERY_TIMEOUT",
            &raw.rabbitmq_delivery_timeout,
        )?,
        ca_pem: raw
            .rabbitmq_ca_file
            .as_deref()
            .map(|path| {
                std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(
                        "DISPATCHBOX_RABBITMQ_CA_FILE",
                        format!("cannot read file {path:?}: {e}"),
                    )
                })
            })
            .transpose()?,
    };
    config.validate().map_err(|error| {
        let variable = match &error {
            RabbitMqSinkError::InvalidUrl { .. }
            | RabbitMqSinkError::UnsupportedScheme { .. }
            | RabbitMqSinkError::MissingHost
            | RabbitMqSinkError::InvalidUri { .. } => url_variable,
            RabbitMqSinkError::IllegalExchangeCharacter { .. } => "DISPATCHBOX_RABBITMQ_EXCHANGE",
            RabbitMqSinkError::UnknownPlaceholder { kind, .. }
            | RabbitMqSinkError::UnclosedPlaceholder { kind, .. }
            | RabbitMqSinkError::TemplateTooLong { kind, .. } => match kind {
                TemplateKind::Exchange => "DISPATCHBOX_RABBITMQ_EXCHANGE",
                TemplateKind::RoutingKey => "DISPATCHBOX_RABBITMQ_ROUTING_KEY",
            },
            RabbitMqSinkError::ZeroTimeout => "DISPATCHBOX_RABBITMQ_DELIVERY_TIMEOUT",
            RabbitMqSinkError::CaWithoutTls | RabbitMqSinkError::CaCertificates => {
                "DISPATCHBOX_RABBITMQ_CA_FILE"
            }
        };
        ConfigError::new(variable, error.to_string())
    })?;
    Ok(config)
}

/// Collects librdkafka properties from environment variables named
/// `DISPATCHBOX_KAFKA_PROPERTY_<NAME>`: `NAME` is lower-cased and each `_` becomes `.`,
/// except that `__` stands for a literal `_` (for the few properties such as `log_level`).
///
/// `DISPATCHBOX_KAFKA_PROPERTY_SASL_MECHANISMS=PLAIN` → `("sasl.mechanisms", "PLAIN")`;
/// `DISPATCHBOX_KAFKA_PROPERTY_LOG__LEVEL=6` → `("log_level", "6")`. Other variables and an
/// empty `NAME` are ignored. The result is sorted by property name, so it does not depend
/// on the environment's order.
pub fn kafka_properties_from_env(
    vars: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = vars
        .filter_map(|(name, value)| {
            let raw = name.strip_prefix(PROPERTY_ENV_PREFIX)?;
            if raw.is_empty() {
                return None;
            }
            let property = raw
                .to_ascii_lowercase()
                .split("__")
                .map(|part| part.replace('_', "."))
                .collect::<Vec<_>>()
                .join("_");
            Some((property, value))
        })
        .collect();
    properties.sort();
    properties
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_from_env() {
        let vars = [
            ("DISPATCHBOX_KAFKA_PROPERTY_SASL_MECHANISMS", "PLAIN"),
            ("DISPATCHBOX_KAFKA_PROPERTY_LINGER_MS", "5"),
            ("DISPATCHBOX_KAFKA_PROPERTY_LOG__LEVEL", "6"),
            ("DISPATCHBOX_KAFKA_PROPERTY_SSL_CA_LOCATION", "/etc/ca.pem"),
            ("DISPATCHBOX_KAFKA_PROPERTY_", "ignored"),
            ("DISPATCHBOX_KAFKA_BROKERS", "ignored"),
            ("PATH", "/bin"),
        ];
        let parsed =
            kafka_properties_from_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let expected = [
            ("linger.ms", "5"),
            ("log_level", "6"),
            ("sasl.mechanisms", "PLAIN"),
            ("ssl.ca.location", "/etc/ca.pem"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn a_property_names_the_variable_it_came_from() {
        for variable in [
            "DISPATCHBOX_KAFKA_PROPERTY_SASL_MECHANISMS",
            "DISPATCHBOX_KAFKA_PROPERTY_LOG__LEVEL",
            "DISPATCHBOX_KAFKA_PROPERTY_SSL_CA_LOCATION",
        ] {
            let parsed =
                kafka_properties_from_env([(variable.to_owned(), String::new())].into_iter());
            assert_eq!(property_variable(&parsed[0].0), variable);
        }
    }
}
