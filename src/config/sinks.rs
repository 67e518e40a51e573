//! The sinks: `DISPATCHBOX_SINKS` and each enabled sink's own variables, validated into one
//! [`SinkConfig`] per sink, holding the sink module's own config type.
//!
//! Whatever a sink refuses about its config is found here, through the sink's own
//! `validate` (the rules stay in the sink), and reported with the variable that holds the
//! mistake: `run` and `check` only ever build sinks from configs that passed.

use std::borrow::Cow;

use super::value::{count, positive_duration, value_or_file};
use super::{ConfigError, RawConfig};
use crate::secret::Secret;
use crate::sink::kafka::{KafkaSinkConfig, KafkaSinkError};
use crate::sink::nats::{NatsAuth, NatsSinkConfig, NatsSinkError};
use crate::sink::redis::{RedisSinkConfig, RedisSinkError};
use crate::sink::webhook::{self, WebhookSinkConfig, WebhookSinkError};
use crate::sink::SinkConfig;

/// Prefix of the environment variables that carry librdkafka properties.
pub const PROPERTY_ENV_PREFIX: &str = "DISPATCHBOX_KAFKA_PROPERTY_";

/// The sinks `DISPATCHBOX_SINKS` names, as parsed before their settings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kafka,
    Nats,
    Redis,
    Webhook,
    Stdout,
}

/// `DISPATCHBOX_SINKS`, in its order (a repeated name counts once), each sink with its
/// settings; `vars` supplies the dynamic `DISPATCHBOX_KAFKA_PROPERTY_*` set.
pub(super) fn from_raw(
    raw: &RawConfig,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<Vec<SinkConfig>, ConfigError> {
    // The whole list is checked before any sink's settings, so a misspelt name is reported
    // as such rather than as a missing setting of the sink beside it.
    let kinds = kinds(&raw.sinks)?;
    let mut properties = Some(kafka_properties_from_env(vars));
    kinds
        .into_iter()
        .map(|kind| {
            Ok(match kind {
                Kind::Kafka => {
                    SinkConfig::Kafka(kafka(raw, properties.take().unwrap_or_default())?)
                }
                Kind::Nats => SinkConfig::Nats(nats(raw)?),
                Kind::Redis => SinkConfig::Redis(redis(raw)?),
                Kind::Webhook => SinkConfig::Webhook(webhook(raw)?),
                Kind::Stdout => SinkConfig::Stdout,
            })
        })
        .collect()
}

fn kinds(list: &str) -> Result<Vec<Kind>, ConfigError> {
    let mut kinds = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind = match name {
            "kafka" => Kind::Kafka,
            "nats" => Kind::Nats,
            "redis" => Kind::Redis,
            "webhook" => Kind::Webhook,
            "stdout" => Kind::Stdout,
            other => {
                return Err(ConfigError::new(
                    "DISPATCHBOX_SINKS",
                    format!(
                    "unknown sink {other:?}; use a comma-separated list of kafka, nats, redis, webhook, stdout"
                ),
                ))
            }
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        return Err(ConfigError::new(
            "DISPATCHBOX_SINKS",
            "must name at least one sink (kafka, nats, redis, webhook, stdout)",
        ));
    }
    Ok(kinds)
}

/// `DISPATCHBOX_KAFKA_*`.
fn kafka(
    raw: &RawConfig,
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
    let config = KafkaSinkConfig {
        brokers,
        topic_template: raw.kafka_topic.clone(),
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
fn nats(raw: &RawConfig) -> Result<NatsSinkConfig, ConfigError> {
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
fn redis(raw: &RawConfig) -> Result<RedisSinkConfig, ConfigError> {
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

/// `DISPATCHBOX_WEBHOOK_*`.
fn webhook(raw: &RawConfig) -> Result<WebhookSinkConfig, ConfigError> {
    let url = raw
        .webhook_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                "DISPATCHBOX_WEBHOOK_URL",
                "is required when DISPATCHBOX_SINKS includes webhook (e.g. https://hooks.example.com/outbox)",
            )
        })?
        .to_owned();
    let (secret_variable, secrets) = match value_or_file(
        "DISPATCHBOX_WEBHOOK_SECRET",
        "DISPATCHBOX_WEBHOOK_SECRET_FILE",
        &raw.webhook_secret,
        &raw.webhook_secret_file,
    )? {
        Some((variable, text)) => (
            variable,
            webhook::parse_secrets(&text).map_err(|e| ConfigError::new(variable, e.to_string()))?,
        ),
        None => ("DISPATCHBOX_WEBHOOK_SECRET", Vec::new()),
    };
    let config = WebhookSinkConfig {
        url,
        secrets,
        timeout: positive_duration("DISPATCHBOX_WEBHOOK_TIMEOUT", &raw.webhook_timeout)?,
        max_concurrency: count(
            "DISPATCHBOX_WEBHOOK_CONCURRENCY",
            &raw.webhook_concurrency,
            1,
            10_000,
        )?,
    };
    config
        .validate()
        .map_err(|error| webhook_error(error, secret_variable))?;
    Ok(config)
}

/// Names the variable behind what the webhook sink refused (the secrets came from
/// `secret_variable`). The messages never echo the URL or a secret.
fn webhook_error(error: WebhookSinkError, secret_variable: &'static str) -> ConfigError {
    let variable = match &error {
        WebhookSinkError::InvalidUrl { .. }
        | WebhookSinkError::UnsupportedScheme { .. }
        | WebhookSinkError::MissingHost => "DISPATCHBOX_WEBHOOK_URL",
        WebhookSinkError::SecretPrefix { .. }
        | WebhookSinkError::SecretEncoding { .. }
        | WebhookSinkError::SecretLength { .. }
        | WebhookSinkError::NoSecrets => secret_variable,
        WebhookSinkError::ZeroTimeout => "DISPATCHBOX_WEBHOOK_TIMEOUT",
        WebhookSinkError::ZeroConcurrency => "DISPATCHBOX_WEBHOOK_CONCURRENCY",
        // `validate` builds no client, so these do not come from it; the URL is what the
        // client is built for.
        WebhookSinkError::Tls { .. } | WebhookSinkError::Client { .. } => "DISPATCHBOX_WEBHOOK_URL",
    };
    ConfigError::new(variable, error.to_string())
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
