//! Configuration: `DISPATCHBOX_*` environment variables, read with `envconfig` into raw
//! strings and validated once at startup into [`Config`]. Every validation error names the
//! variable and the rule it broke. Secrets are wrapped so they never print.
//!
//! This module only parses and validates; it opens no connections.

mod value;

use std::collections::HashMap;
use std::time::Duration;

use envconfig::Envconfig;

use crate::conninfo::ConnInfo;
pub use crate::secret::Secret;
pub use crate::telemetry::LogFormat;

use crate::dispatch::route::Router;
use crate::names::{Identifier, Names, TableName};
use value::{at_most, byte_size, count, duration, positive_duration, value_or_file};

/// Raw variables as `envconfig` reads them; validated by [`Config::from_raw`].
#[derive(Debug, Envconfig)]
pub struct RawConfig {
    #[envconfig(from = "DISPATCHBOX_DATABASE_URL")]
    pub database_url: Option<String>,
    #[envconfig(from = "DISPATCHBOX_DATABASE_URL_FILE")]
    pub database_url_file: Option<String>,
    #[envconfig(from = "DISPATCHBOX_TABLE", default = "public.outbox_event")]
    pub table: String,
    #[envconfig(from = "DISPATCHBOX_PUBLICATION", default = "dispatchbox")]
    pub publication: String,
    #[envconfig(from = "DISPATCHBOX_SLOT", default = "dispatchbox")]
    pub slot: String,
    #[envconfig(from = "DISPATCHBOX_SINKS", default = "stdout")]
    pub sinks: String,
    #[envconfig(from = "DISPATCHBOX_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    #[envconfig(from = "DISPATCHBOX_KAFKA_TOPIC", default = "outbox.{aggregate_type}")]
    pub kafka_topic: String,
    #[envconfig(from = "DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT", default = "30s")]
    pub kafka_delivery_timeout: String,
    #[envconfig(from = "DISPATCHBOX_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    #[envconfig(from = "DISPATCHBOX_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    #[envconfig(from = "DISPATCHBOX_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<String>,
    #[envconfig(from = "DISPATCHBOX_WEBHOOK_TIMEOUT", default = "15s")]
    pub webhook_timeout: String,
    #[envconfig(from = "DISPATCHBOX_WEBHOOK_CONCURRENCY", default = "32")]
    pub webhook_concurrency: String,
    #[envconfig(from = "DISPATCHBOX_MAX_IN_FLIGHT", default = "1000")]
    pub max_in_flight: String,
    #[envconfig(from = "DISPATCHBOX_MAX_IN_FLIGHT_BYTES", default = "64MiB")]
    pub max_in_flight_bytes: String,
    #[envconfig(from = "DISPATCHBOX_STATUS_BATCH_SIZE", default = "1000")]
    pub status_batch_size: String,
    #[envconfig(from = "DISPATCHBOX_STATUS_LINGER", default = "100ms")]
    pub status_linger: String,
    #[envconfig(from = "DISPATCHBOX_STATUS_STALL_TIMEOUT", default = "60s")]
    pub status_stall_timeout: String,
    #[envconfig(from = "DISPATCHBOX_STATUS_INTERVAL", default = "2s")]
    pub status_interval: String,
    #[envconfig(from = "DISPATCHBOX_HEARTBEAT_INTERVAL", default = "30s")]
    pub heartbeat_interval: String,
    #[envconfig(from = "DISPATCHBOX_SHUTDOWN_TIMEOUT", default = "30s")]
    pub shutdown_timeout: String,
    #[envconfig(from = "DISPATCHBOX_RECONNECT_MAX", default = "30s")]
    pub reconnect_max: String,
    #[envconfig(from = "DISPATCHBOX_MAX_MESSAGE_SIZE_MB", default = "1024")]
    pub max_message_size_mb: String,
    #[envconfig(from = "DISPATCHBOX_MAX_ATTEMPTS", default = "5")]
    pub max_attempts: String,
    #[envconfig(from = "DISPATCHBOX_BACKOFF_BASE", default = "1s")]
    pub backoff_base: String,
    #[envconfig(from = "DISPATCHBOX_BACKOFF_MAX", default = "5m")]
    pub backoff_max: String,
    #[envconfig(from = "DISPATCHBOX_ORDERING", default = "aggregate")]
    pub ordering: String,
    #[envconfig(from = "DISPATCHBOX_ROUTES")]
    pub routes: Option<String>,
    #[envconfig(from = "DISPATCHBOX_SWEEP_INTERVAL", default = "5s")]
    pub sweep_interval: String,
    #[envconfig(from = "DISPATCHBOX_SWEEP_GRACE", default = "5m")]
    pub sweep_grace: String,
    #[envconfig(from = "DISPATCHBOX_SWEEP_BATCH", default = "500")]
    pub sweep_batch: String,
    #[envconfig(from = "DISPATCHBOX_SWEEP_LEASE", default = "2m")]
    pub sweep_lease: String,
    #[envconfig(from = "DISPATCHBOX_SLOT_RECREATE_LIMIT", default = "3")]
    pub slot_recreate_limit: String,
    #[envconfig(from = "DISPATCHBOX_HTTP_ADDR", default = "0.0.0.0:8080")]
    pub http_addr: String,
    #[envconfig(from = "DISPATCHBOX_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    #[envconfig(from = "DISPATCHBOX_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<String>,
    #[envconfig(from = "DISPATCHBOX_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[envconfig(from = "DISPATCHBOX_LOG_LEVEL", default = "info")]
    pub log_level: String,
}

/// A configuration error: which variable, and the rule it broke.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {rule}")]
pub struct ConfigError {
    /// The offending variable, e.g. `DISPATCHBOX_MAX_IN_FLIGHT`.
    pub variable: &'static str,
    /// What the value must look like (never echoes a secret).
    pub rule: String,
}

impl ConfigError {
    fn new(variable: &'static str, rule: impl Into<String>) -> Self {
        Self {
            variable,
            rule: rule.into(),
        }
    }
}

/// The sinks a relay can deliver to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Kafka,
    Webhook,
    Stdout,
}

impl SinkKind {
    /// The name used in `DISPATCHBOX_SINKS` and `DISPATCHBOX_ROUTES`.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Kafka => "kafka",
            SinkKind::Webhook => "webhook",
            SinkKind::Stdout => "stdout",
        }
    }
}

/// Kafka settings (present when `kafka` is among the sinks).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `DISPATCHBOX_KAFKA_BROKERS`: comma-separated `host:port` list.
    pub brokers: String,
    /// `DISPATCHBOX_KAFKA_TOPIC`: topic template.
    pub topic_template: String,
    /// `DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT`: librdkafka `message.timeout.ms`.
    pub delivery_timeout: Duration,
    /// `DISPATCHBOX_KAFKA_PROPERTY_*`: any librdkafka property. Values may be secrets.
    pub properties: Secret<Vec<(String, String)>>,
}

/// Webhook settings (present when `webhook` is among the sinks).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `DISPATCHBOX_WEBHOOK_URL`.
    pub url: String,
    /// `DISPATCHBOX_WEBHOOK_SECRET` (or `_FILE`): `whsec_…` secrets; all of them sign.
    pub secrets: Secret<Vec<String>>,
    /// `DISPATCHBOX_WEBHOOK_TIMEOUT`: per request.
    pub timeout: Duration,
    /// `DISPATCHBOX_WEBHOOK_CONCURRENCY`: requests in flight at most.
    pub concurrency: usize,
}

/// Validated configuration of the relay.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DISPATCHBOX_DATABASE_URL` (or `_FILE`), parsed. Prints redacted.
    pub database: ConnInfo,
    /// `DISPATCHBOX_TABLE` (the outbox table, `schema.name`, default schema `public`) and
    /// `DISPATCHBOX_PUBLICATION`, with the names derived from them.
    pub names: Names,
    /// `DISPATCHBOX_SLOT`.
    pub slot: Identifier,
    /// `DISPATCHBOX_SINKS`: enabled sinks, in order.
    pub sinks: Vec<SinkKind>,
    /// Kafka settings when the kafka sink is enabled.
    pub kafka: Option<KafkaConfig>,
    /// Webhook settings when the webhook sink is enabled.
    pub webhook: Option<WebhookConfig>,
    /// `DISPATCHBOX_MAX_IN_FLIGHT`: events decoded but not yet settled, at most.
    pub max_in_flight: usize,
    /// `DISPATCHBOX_MAX_IN_FLIGHT_BYTES`: bytes of events (payload and headers) held at
    /// once between the stream, the dispatcher, the sinks and the sweeper, at most.
    pub max_in_flight_bytes: usize,
    /// `DISPATCHBOX_STATUS_BATCH_SIZE`: rows per status UPDATE, at most.
    pub status_batch_size: usize,
    /// `DISPATCHBOX_STATUS_LINGER`: how long the status writer waits for more outcomes
    /// before writing a batch that is not full (fewer, larger status transactions).
    pub status_linger: Duration,
    /// `DISPATCHBOX_STATUS_STALL_TIMEOUT`: how long the status writer may fail to write
    /// anything before `/ready` turns 503.
    pub status_stall_timeout: Duration,
    /// `DISPATCHBOX_STATUS_INTERVAL`: standby status updates to PostgreSQL, at least this often.
    pub status_interval: Duration,
    /// `DISPATCHBOX_HEARTBEAT_INTERVAL`: `pg_logical_emit_message` heartbeat period.
    pub heartbeat_interval: Duration,
    /// `DISPATCHBOX_SHUTDOWN_TIMEOUT`: how long in-flight deliveries may finish on SIGTERM.
    pub shutdown_timeout: Duration,
    /// `DISPATCHBOX_RECONNECT_MAX`: cap of the reconnect backoff.
    pub reconnect_max: Duration,
    /// `DISPATCHBOX_MAX_MESSAGE_SIZE_MB`: largest replication message accepted.
    pub max_message_size: usize,
    /// `DISPATCHBOX_MAX_ATTEMPTS`: delivery attempts before an event is `dead`.
    pub max_attempts: u32,
    /// `DISPATCHBOX_BACKOFF_BASE`: first retry delay.
    pub backoff_base: Duration,
    /// `DISPATCHBOX_BACKOFF_MAX`: largest retry delay.
    pub backoff_max: Duration,
    /// `DISPATCHBOX_ORDERING`: per-aggregate ordering (`aggregate`, default) or `none`.
    pub ordering: bool,
    /// `DISPATCHBOX_ROUTES`: routing rules (validated against the enabled sinks).
    pub router: Router,
    /// `DISPATCHBOX_SWEEP_INTERVAL`: how often the sweeper looks for due rows.
    pub sweep_interval: Duration,
    /// `DISPATCHBOX_SWEEP_GRACE`: how long a committed `pending` row is left to the stream
    /// (from the sweeper's first sight of it) when the slot does not show it was passed.
    pub sweep_grace: Duration,
    /// `DISPATCHBOX_SWEEP_BATCH`: rows per sweeper claim.
    pub sweep_batch: i64,
    /// `DISPATCHBOX_SWEEP_LEASE`: how long a sweeper claim holds a row.
    pub sweep_lease: Duration,
    /// `DISPATCHBOX_SLOT_RECREATE_LIMIT`: slot recreations allowed per hour.
    pub slot_recreate_limit: u32,
    /// `DISPATCHBOX_HTTP_ADDR`: where the admin HTTP server listens.
    pub http_addr: std::net::SocketAddr,
    /// `DISPATCHBOX_ADMIN_TOKEN` (or `_FILE`): bearer token of `/api/*`; `None` refuses the API.
    pub admin_token: Option<Secret<String>>,
    /// `DISPATCHBOX_LOG_FORMAT`: `json` or `text`; `None` = json unless stdout is a terminal.
    pub log_format: Option<LogFormat>,
    /// `DISPATCHBOX_LOG_LEVEL`: a `tracing` filter (`info`, `debug`, `dispatchbox=debug,warn`).
    pub log_level: String,
}

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars().collect())
    }

    /// Reads and validates a given set of variables (tests use this).
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Self, ConfigError> {
        let raw = RawConfig::init_from_hashmap(&vars).map_err(|e| match e {
            envconfig::Error::EnvVarMissing { name } => ConfigError::new(name, "is required"),
            envconfig::Error::ParseError { name } => ConfigError::new(name, "cannot be parsed"),
        })?;
        Self::from_raw(raw, vars.into_iter())
    }

    /// Validates raw values; `vars` supplies the dynamic `DISPATCHBOX_KAFKA_PROPERTY_*` set.
    pub fn from_raw(
        raw: RawConfig,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let url =
            match value_or_file(
                "DISPATCHBOX_DATABASE_URL",
                "DISPATCHBOX_DATABASE_URL_FILE",
                &raw.database_url,
                &raw.database_url_file,
            )? {
                Some((_, url)) => url,
                None => return Err(ConfigError::new(
                    "DISPATCHBOX_DATABASE_URL",
                    "is required (e.g. postgres://relay:secret@db:5432/app?sslmode=verify-full)",
                )),
            };
        let database = url
            .parse::<ConnInfo>()
            .map_err(|e| ConfigError::new("DISPATCHBOX_DATABASE_URL", e.to_string()))?;
        let table = raw
            .table
            .parse::<TableName>()
            .map_err(|e| ConfigError::new("DISPATCHBOX_TABLE", e.to_string()))?;
        let publication = raw
            .publication
            .parse::<Identifier>()
            .map_err(|e| ConfigError::new("DISPATCHBOX_PUBLICATION", e.to_string()))?;
        let slot = raw
            .slot
            .parse::<Identifier>()
            .map_err(|e| ConfigError::new("DISPATCHBOX_SLOT", e.to_string()))?;

        let mut sinks = Vec::new();
        for name in raw
            .sinks
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let kind = match name {
                "kafka" => SinkKind::Kafka,
                "webhook" => SinkKind::Webhook,
                "stdout" => SinkKind::Stdout,
                other => {
                    return Err(ConfigError::new(
                        "DISPATCHBOX_SINKS",
                        format!(
                            "unknown sink {other:?}; use a comma-separated list of kafka, webhook, stdout"
                        ),
                    ))
                }
            };
            if !sinks.contains(&kind) {
                sinks.push(kind);
            }
        }
        if sinks.is_empty() {
            return Err(ConfigError::new(
                "DISPATCHBOX_SINKS",
                "must name at least one sink (kafka, webhook, stdout)",
            ));
        }

        let kafka = if sinks.contains(&SinkKind::Kafka) {
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
            Some(KafkaConfig {
                brokers,
                topic_template: raw.kafka_topic.clone(),
                delivery_timeout: positive_duration(
                    "DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT",
                    &raw.kafka_delivery_timeout,
                )?,
                properties: Secret::new(kafka_properties_from_env(vars)),
            })
        } else {
            None
        };

        let ordering = match raw.ordering.trim() {
            "aggregate" => true,
            "none" => false,
            other => {
                return Err(ConfigError::new(
                    "DISPATCHBOX_ORDERING",
                    format!(
                    "{other:?} is not valid; use aggregate (per-aggregate commit order) or none"
                ),
                ))
            }
        };
        let sink_names: Vec<&str> = sinks.iter().map(|k| k.name()).collect();
        let router = Router::parse(raw.routes.as_deref(), &sink_names)
            .map_err(|e| ConfigError::new("DISPATCHBOX_ROUTES", e.to_string()))?;
        let sweep_lease = positive_duration("DISPATCHBOX_SWEEP_LEASE", &raw.sweep_lease)?;
        if let Some(kafka) = &kafka {
            if sweep_lease <= kafka.delivery_timeout {
                return Err(ConfigError::new(
                    "DISPATCHBOX_SWEEP_LEASE",
                    format!(
                        "must be longer than DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT ({}), or a slow delivery could be claimed twice",
                        humantime::format_duration(kafka.delivery_timeout)
                    ),
                ));
            }
        }
        let webhook = if sinks.contains(&SinkKind::Webhook) {
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
            let secrets = match value_or_file(
                "DISPATCHBOX_WEBHOOK_SECRET",
                "DISPATCHBOX_WEBHOOK_SECRET_FILE",
                &raw.webhook_secret,
                &raw.webhook_secret_file,
            )? {
                Some((variable, text)) => crate::sink::webhook::parse_secrets(&text)
                    .map_err(|e| ConfigError::new(variable, e.to_string()))?,
                None => Vec::new(),
            };
            Some(WebhookConfig {
                url,
                secrets: Secret::new(secrets),
                timeout: positive_duration("DISPATCHBOX_WEBHOOK_TIMEOUT", &raw.webhook_timeout)?,
                concurrency: count(
                    "DISPATCHBOX_WEBHOOK_CONCURRENCY",
                    &raw.webhook_concurrency,
                    1,
                    10_000,
                )?,
            })
        } else {
            None
        };
        if let Some(webhook) = &webhook {
            if sweep_lease <= webhook.timeout {
                return Err(ConfigError::new(
                    "DISPATCHBOX_SWEEP_LEASE",
                    "must be longer than DISPATCHBOX_WEBHOOK_TIMEOUT, or a slow delivery could be claimed twice",
                ));
            }
        }
        let backoff_base = positive_duration("DISPATCHBOX_BACKOFF_BASE", &raw.backoff_base)?;
        let backoff_max = positive_duration("DISPATCHBOX_BACKOFF_MAX", &raw.backoff_max)?;
        if backoff_max < backoff_base {
            return Err(ConfigError::new(
                "DISPATCHBOX_BACKOFF_MAX",
                "must not be smaller than DISPATCHBOX_BACKOFF_BASE",
            ));
        }
        let log_format = match raw.log_format.as_deref().map(str::trim) {
            None | Some("") => None,
            Some("json") => Some(LogFormat::Json),
            Some("text") => Some(LogFormat::Text),
            Some(other) => {
                return Err(ConfigError::new(
                    "DISPATCHBOX_LOG_FORMAT",
                    format!("{other:?} is not valid; use json or text"),
                ))
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&raw.log_level).is_err() {
            return Err(ConfigError::new(
                "DISPATCHBOX_LOG_LEVEL",
                format!(
                    "{:?} is not a log filter; use error, warn, info, debug, trace or a tracing directive like dispatchbox=debug",
                    raw.log_level
                ),
            ));
        }

        let names = Names::new(table, publication)
            .map_err(|e| ConfigError::new("DISPATCHBOX_TABLE", e.to_string()))?;
        let http_addr = raw.http_addr.trim().parse().map_err(|_| {
            ConfigError::new(
                "DISPATCHBOX_HTTP_ADDR",
                format!(
                    "{:?} is not an address; use IP:PORT, e.g. 0.0.0.0:8080",
                    raw.http_addr
                ),
            )
        })?;
        let admin_token = value_or_file(
            "DISPATCHBOX_ADMIN_TOKEN",
            "DISPATCHBOX_ADMIN_TOKEN_FILE",
            &raw.admin_token,
            &raw.admin_token_file,
        )?
        .map(|(_, token)| token);
        if admin_token.as_deref().is_some_and(|t| t.trim().len() < 16) {
            return Err(ConfigError::new(
                "DISPATCHBOX_ADMIN_TOKEN",
                "must be at least 16 characters (e.g. openssl rand -hex 32)",
            ));
        }
        Ok(Config {
            http_addr,
            admin_token: admin_token.map(|t| Secret::new(t.trim().to_owned())),
            database,
            names,
            slot,
            sinks,
            kafka,
            webhook,
            max_in_flight: count(
                "DISPATCHBOX_MAX_IN_FLIGHT",
                &raw.max_in_flight,
                1,
                1_000_000,
            )?,
            max_in_flight_bytes: byte_size(
                "DISPATCHBOX_MAX_IN_FLIGHT_BYTES",
                &raw.max_in_flight_bytes,
            )?,
            status_batch_size: count(
                "DISPATCHBOX_STATUS_BATCH_SIZE",
                &raw.status_batch_size,
                1,
                100_000,
            )?,
            status_linger: at_most(
                "DISPATCHBOX_STATUS_LINGER",
                duration("DISPATCHBOX_STATUS_LINGER", &raw.status_linger)?,
                Duration::from_secs(1),
            )?,
            status_stall_timeout: positive_duration(
                "DISPATCHBOX_STATUS_STALL_TIMEOUT",
                &raw.status_stall_timeout,
            )?,
            status_interval: positive_duration(
                "DISPATCHBOX_STATUS_INTERVAL",
                &raw.status_interval,
            )?,
            heartbeat_interval: positive_duration(
                "DISPATCHBOX_HEARTBEAT_INTERVAL",
                &raw.heartbeat_interval,
            )?,
            shutdown_timeout: duration("DISPATCHBOX_SHUTDOWN_TIMEOUT", &raw.shutdown_timeout)?,
            reconnect_max: positive_duration("DISPATCHBOX_RECONNECT_MAX", &raw.reconnect_max)?,
            max_message_size: count::<usize>(
                "DISPATCHBOX_MAX_MESSAGE_SIZE_MB",
                &raw.max_message_size_mb,
                1,
                4096,
            )? * 1024
                * 1024
                + 64 * 1024,
            max_attempts: count("DISPATCHBOX_MAX_ATTEMPTS", &raw.max_attempts, 1, 1000)?,
            ordering,
            router,
            sweep_interval: positive_duration("DISPATCHBOX_SWEEP_INTERVAL", &raw.sweep_interval)?,
            sweep_grace: duration("DISPATCHBOX_SWEEP_GRACE", &raw.sweep_grace)?,
            sweep_batch: count("DISPATCHBOX_SWEEP_BATCH", &raw.sweep_batch, 1, 100_000)?,
            sweep_lease,
            slot_recreate_limit: count(
                "DISPATCHBOX_SLOT_RECREATE_LIMIT",
                &raw.slot_recreate_limit,
                1,
                1000,
            )?,
            backoff_base,
            backoff_max,
            log_format,
            log_level: raw.log_level,
        })
    }
}

/// Prefix of the environment variables that carry librdkafka properties.
pub const PROPERTY_ENV_PREFIX: &str = "DISPATCHBOX_KAFKA_PROPERTY_";

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

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry("DISPATCHBOX_DATABASE_URL".into())
            .or_insert_with(|| "postgres://relay:s3cret@db:5432/app".into());
        map
    }

    fn error_for(pairs: &[(&str, &str)]) -> ConfigError {
        Config::from_vars(vars(pairs)).expect_err("config should be rejected")
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_vars(vars(&[])).expect("defaults");
        assert_eq!(config.sinks, vec![SinkKind::Stdout]);
        assert_eq!(config.names.table().to_string(), "public.outbox_event");
        assert_eq!(config.max_attempts, 5);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
        assert!(config.kafka.is_none());
        assert_eq!(config.max_in_flight_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn byte_sizes_take_units_and_name_the_rule() {
        let size = |v: &str| {
            Config::from_vars(vars(&[("DISPATCHBOX_MAX_IN_FLIGHT_BYTES", v)]))
                .map(|c| c.max_in_flight_bytes)
        };
        assert_eq!(size("512MiB").unwrap(), 512 << 20);
        assert_eq!(size("1 GiB").unwrap(), 1 << 30);
        assert_eq!(size("2097152").unwrap(), 2 << 20);
        for bad in ["0", "512KiB", "4GiB", "lots", "-1MiB", "1.5GiB"] {
            let error = size(bad).expect_err(bad).to_string();
            assert!(
                error.contains("DISPATCHBOX_MAX_IN_FLIGHT_BYTES")
                    && error.contains("1MiB to 4095MiB"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn invalid_values_name_the_variable_and_rule() {
        let e = error_for(&[("DISPATCHBOX_MAX_ATTEMPTS", "zero")]);
        assert_eq!(e.variable, "DISPATCHBOX_MAX_ATTEMPTS");
        assert!(e.to_string().contains("whole number"), "{e}");

        let e = error_for(&[("DISPATCHBOX_SHUTDOWN_TIMEOUT", "forever")]);
        assert_eq!(e.variable, "DISPATCHBOX_SHUTDOWN_TIMEOUT");
        assert!(e.to_string().contains("duration"), "{e}");

        let e = error_for(&[("DISPATCHBOX_SINKS", "kafka,pigeon")]);
        assert_eq!(e.variable, "DISPATCHBOX_SINKS");
        assert!(e.to_string().contains("pigeon"), "{e}");

        let e = error_for(&[("DISPATCHBOX_SINKS", "kafka")]);
        assert_eq!(e.variable, "DISPATCHBOX_KAFKA_BROKERS");

        let e = error_for(&[("DISPATCHBOX_MAX_IN_FLIGHT", "0")]);
        assert_eq!(e.variable, "DISPATCHBOX_MAX_IN_FLIGHT");

        let e = error_for(&[("DISPATCHBOX_LOG_FORMAT", "xml")]);
        assert_eq!(e.variable, "DISPATCHBOX_LOG_FORMAT");

        let e = error_for(&[("DISPATCHBOX_TABLE", "Bad-Name")]);
        assert_eq!(e.variable, "DISPATCHBOX_TABLE");

        let e = error_for(&[("DISPATCHBOX_SWEEP_INTERVAL", "forever")]);
        assert_eq!(e.variable, "DISPATCHBOX_SWEEP_INTERVAL");

        let e = error_for(&[("DISPATCHBOX_ORDERING", "strict")]);
        assert_eq!(e.variable, "DISPATCHBOX_ORDERING");

        let e = error_for(&[("DISPATCHBOX_ROUTES", "order.*=kafka")]);
        assert_eq!(e.variable, "DISPATCHBOX_ROUTES");
        assert!(e.to_string().contains("not enabled"), "{e}");

        let e = error_for(&[
            ("DISPATCHBOX_SINKS", "kafka"),
            ("DISPATCHBOX_KAFKA_BROKERS", "k:9092"),
            ("DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT", "5m"),
            ("DISPATCHBOX_SWEEP_LEASE", "1m"),
        ]);
        assert_eq!(e.variable, "DISPATCHBOX_SWEEP_LEASE");
    }

    #[test]
    fn database_url_is_required_and_never_echoed() {
        let mut map = vars(&[]);
        map.remove("DISPATCHBOX_DATABASE_URL");
        let e = Config::from_vars(map).expect_err("missing url");
        assert_eq!(e.variable, "DISPATCHBOX_DATABASE_URL");

        let config = Config::from_vars(vars(&[])).expect("config");
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "password leaked: {printed}");
    }

    #[test]
    fn a_bad_multi_host_url_names_the_variable_and_the_rule() {
        for (url, rule) in [
            (
                "postgres://relay:s3cret@db-a:5432,db-b:5432/app?port=1,2,3",
                "names 2 hosts but 3 ports",
            ),
            (
                "postgres://relay:s3cret@db-a,db-b/app?target_session_attrs=primary",
                "valid values: any (the default), read-write",
            ),
            ("postgres://relay:s3cret@db-a,,db-b/app", "no host"),
        ] {
            let e = error_for(&[("DISPATCHBOX_DATABASE_URL", url)]);
            assert_eq!(e.variable, "DISPATCHBOX_DATABASE_URL");
            let text = e.to_string();
            assert!(text.contains(rule), "{url}: {text}");
            assert!(!text.contains("s3cret"), "password leaked: {text}");
        }
        let config = Config::from_vars(vars(&[(
            "DISPATCHBOX_DATABASE_URL",
            "postgres://relay:s3cret@db-a:5432,db-b:5433/app?target_session_attrs=read-write",
        )]))
        .expect("a multi-host URL");
        assert_eq!(config.database.endpoints().len(), 2);
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn database_url_can_come_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("url");
        std::fs::write(&path, "postgres://relay:pw@db/app\n").expect("write");
        let mut map = vars(&[(
            "DISPATCHBOX_DATABASE_URL_FILE",
            path.to_str().expect("utf8"),
        )]);
        map.remove("DISPATCHBOX_DATABASE_URL");
        Config::from_vars(map).expect("url from file");
    }

    #[test]
    fn webhook_settings_are_validated_without_echoing_secrets() {
        let e = error_for(&[("DISPATCHBOX_SINKS", "webhook")]);
        assert_eq!(e.variable, "DISPATCHBOX_WEBHOOK_URL");
        let e = error_for(&[
            ("DISPATCHBOX_SINKS", "webhook"),
            ("DISPATCHBOX_WEBHOOK_URL", "https://hooks.example.com/x"),
            ("DISPATCHBOX_WEBHOOK_SECRET", "not-a-secret-value"),
        ]);
        assert_eq!(e.variable, "DISPATCHBOX_WEBHOOK_SECRET");
        assert!(!e.to_string().contains("not-a-secret-value"), "{e}");
        let config = Config::from_vars(vars(&[
            ("DISPATCHBOX_SINKS", "webhook"),
            ("DISPATCHBOX_WEBHOOK_URL", "https://hooks.example.com/x"),
            (
                "DISPATCHBOX_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ]))
        .expect("config");
        let webhook = config.webhook.expect("webhook");
        assert_eq!(webhook.secrets.expose().len(), 1);
        assert!(!format!("{webhook:?}").contains("MfKQ9r8"));
    }

    #[test]
    fn kafka_properties_come_from_the_environment() {
        let config = Config::from_vars(vars(&[
            ("DISPATCHBOX_SINKS", "kafka,stdout"),
            ("DISPATCHBOX_KAFKA_BROKERS", "k:9092"),
            ("DISPATCHBOX_KAFKA_PROPERTY_LINGER_MS", "5"),
        ]))
        .expect("config");
        let kafka = config.kafka.expect("kafka");
        assert!(kafka
            .properties
            .expose()
            .contains(&("linger.ms".to_owned(), "5".to_owned())));
        assert_eq!(config.sinks, vec![SinkKind::Kafka, SinkKind::Stdout]);
    }
}
