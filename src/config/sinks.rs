//! The sinks: `DISPATCHBOX_SINKS` and each enabled sink's own variables, validated into one
//! [`SinkConfig`] per sink, holding the sink module's own config type.
//!
//! Whatever a sink refuses about its config is found here, through the sink's own
//! `validate` (the rules stay in the sink), and reported with the variable that holds the
//! mistake: `run` and `check` only ever build sinks from configs that passed.

use std::borrow::Cow;

use super::value::{count, positive_duration, value_or_file};
use super::{ConfigError, RawConfig};
use crate::sink::kafka::{KafkaSinkConfig, KafkaSinkError};
use crate::sink::rabbitmq::{RabbitMqSinkConfig, RabbitMqSinkError, TemplateKind};
use crate::sink::webhook::{self, WebhookSinkConfig, WebhookSinkError};
use crate::sink::SinkConfig;

/// Prefix of the environment variables that carry librdkafka properties.
pub const PROPERTY_ENV_PREFIX: &str = "DISPATCHBOX_KAFKA_PROPERTY_";

/// The sinks `DISPATCHBOX_SINKS` names, as parsed before their settings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kafka,
    Webhook,
    Stdout,
    RabbitMq,
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
                Kind::Webhook => SinkConfig::Webhook(webhook(raw)?),
                Kind::Stdout => SinkConfig::Stdout,
                Kind::RabbitMq => SinkConfig::RabbitMq(rabbitmq(raw)?),
            })
        })
        .collect()
}

fn kinds(list: &str) -> Result<Vec<Kind>, ConfigError> {
    let mut kinds = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind = match name {
            "kafka" => Kind::Kafka,
            "webhook" => Kind::Webhook,
            "stdout" => Kind::Stdout,
            "rabbitmq" => Kind::RabbitMq,
            other => {
                return Err(ConfigError::new(
                    "DISPATCHBOX_SINKS",
                    format!(
                    "unknown sink {other:?}; use a comma-separated list of kafka, webhook, stdout, rabbitmq"
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
            "must name at least one sink (kafka, webhook, stdout, rabbitmq)",
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

/// `DISPATCHBOX_RABBITMQ_*`.
fn rabbitmq(raw: &RawConfig) -> Result<RabbitMqSinkConfig, ConfigError> {
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
