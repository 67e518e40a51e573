//! Configuration: `DISPATCHBOX_*` environment variables, read with `envconfig` into raw
//! strings and validated once at startup into a [`Config`] tree: one section per stage of
//! the pipeline, and one [`SinkConfig`] per enabled sink, built from that sink's own
//! variables. Every validation error names the variable and the rule it broke, and
//! whatever a sink would refuse at construction is found here (see [`sinks`]). Secrets
//! never print: they are wrapped in [`Secret`], or their type prints them redacted.
//!
//! This module only parses and validates; it opens no connections. It sits above the
//! stages: its sections hold stage types ([`Router`], [`RetryPolicy`], the sinks' configs),
//! and no stage reads it. The relay turns each section into the stage's own config (which
//! also carries runtime handles) without checking anything again.

mod sinks;
mod value;
pub mod variables;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use envconfig::Envconfig;

use crate::conninfo::ConnInfo;
use crate::dispatch::route::Router;
use crate::dispatch::RetryPolicy;
use crate::names::{Identifier, Names, TableName};
use crate::retry::Backoff;
pub use crate::secret::Secret;
pub use crate::sink::SinkConfig;
pub use crate::telemetry::traces::TraceSettings;
pub use crate::telemetry::LogFormat;
pub use sinks::{kafka_properties_from_env, PROPERTY_ENV_PREFIX};
use value::{at_most, byte_size, count, duration, positive_duration, value_or_file};
pub use variables::{RawConfig, Variable, VARIABLES};

/// A configuration error: which variable, and the rule it broke.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {rule}")]
pub struct ConfigError {
    /// The offending variable, e.g. `DISPATCHBOX_MAX_IN_FLIGHT` (or the
    /// `DISPATCHBOX_KAFKA_PROPERTY_…` variable of a refused librdkafka property).
    pub variable: Cow<'static, str>,
    /// What the value must look like (never echoes a secret).
    pub rule: String,
}

impl ConfigError {
    fn new(variable: impl Into<Cow<'static, str>>, rule: impl Into<String>) -> Self {
        Self {
            variable: variable.into(),
            rule: rule.into(),
        }
    }
}

/// Validated configuration of the relay, one section per stage.
///
/// ```text
/// Config
/// ├── database          url, table and publication names, slot
/// ├── source            replication stream: status interval, heartbeat, reconnect, limits
/// ├── dispatch          in-flight bounds, ordering, routes, retry policy
/// ├── sinks             [SinkConfig::Kafka | Nats | Redis | Webhook (one per endpoint) |
/// │                     Stdout | RabbitMq], in DISPATCHBOX_SINKS order
/// ├── status            status writer: batch size, linger, stall timeout
/// ├── sweeper           interval, grace, batch, lease
/// ├── admin             HTTP address, API token
/// ├── log               format, level
/// ├── traces            OTLP span export (OpenTelemetry's OTEL_* variables), when on
/// └── shutdown_timeout
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the outbox lives and which slot streams it.
    pub database: DatabaseSettings,
    /// The replication stream.
    pub source: SourceSettings,
    /// Delivery: how much is in flight, ordering, routing and retries.
    pub dispatch: DispatchSettings,
    /// `DISPATCHBOX_SINKS` (default `stdout`): the enabled sinks, in that order (a repeated
    /// name counts once), each with its own validated settings. [`DispatchSettings::router`]
    /// refers to them by position.
    pub sinks: Vec<SinkConfig>,
    /// Writing outcomes back onto the rows.
    pub status: StatusSettings,
    /// Delivering what the stream cannot: retries, expired leases, missed rows.
    pub sweeper: SweeperSettings,
    /// The admin HTTP server.
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
    /// OTLP trace export (`OTEL_EXPORTER_OTLP_ENDPOINT` …); `None` when off.
    pub traces: Option<TraceSettings>,
    /// `DISPATCHBOX_SHUTDOWN_TIMEOUT` (default 30 s): on SIGTERM, how long in-flight
    /// deliveries may finish.
    pub shutdown_timeout: Duration,
}

/// The database, the outbox's names, and the replication slot.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DISPATCHBOX_DATABASE_URL` (or `_FILE`), required, parsed. Prints redacted.
    pub conninfo: ConnInfo,
    /// `DISPATCHBOX_TABLE` (the outbox table, `schema.name`, default `public.outbox_event`)
    /// and `DISPATCHBOX_PUBLICATION` (default `dispatchbox`), with the names derived from
    /// them.
    pub names: Names,
    /// `DISPATCHBOX_SLOT` (default `dispatchbox`).
    pub slot: Identifier,
}

/// The replication stream.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// `DISPATCHBOX_STATUS_INTERVAL` (default 2 s): standby status updates to PostgreSQL, at
    /// least this often.
    pub status_interval: Duration,
    /// `DISPATCHBOX_HEARTBEAT_INTERVAL` (default 30 s): `pg_logical_emit_message` heartbeat
    /// period.
    pub heartbeat_interval: Duration,
    /// `DISPATCHBOX_RECONNECT_MAX` (default 30 s): cap of the reconnect backoff.
    pub reconnect_max: Duration,
    /// `DISPATCHBOX_MAX_MESSAGE_SIZE_MB` (default 1024, 1–4096): largest replication
    /// message accepted, in bytes (the MiB given plus 64 KiB for the message's framing).
    pub max_message_size: usize,
    /// `DISPATCHBOX_SLOT_RECREATE_LIMIT` (default 3): slot recreations allowed per hour.
    pub slot_recreate_limit: u32,
}

/// Delivery: how much is in flight, ordering, routing and retries (shared by the
/// dispatcher and the sweeper).
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// `DISPATCHBOX_MAX_IN_FLIGHT` (default 1000): events decoded but not yet settled, at
    /// most.
    pub max_in_flight: usize,
    /// `DISPATCHBOX_MAX_IN_FLIGHT_BYTES` (default 64 MiB): bytes of events (payload and
    /// headers) held at once between the stream, the dispatcher, the sinks and the
    /// sweeper, at most.
    pub max_in_flight_bytes: usize,
    /// `DISPATCHBOX_ORDERING`: per-aggregate ordering (`aggregate`, the default: true) or
    /// none (`none`: false).
    pub ordering: bool,
    /// `DISPATCHBOX_ROUTES` (default: every event to every sink): routing rules, validated
    /// against the enabled sinks; they name sinks by their position in [`Config::sinks`].
    pub router: Router,
    /// `DISPATCHBOX_MAX_ATTEMPTS` (default 5): delivery attempts before an event is `dead`;
    /// `DISPATCHBOX_BACKOFF_BASE` (default 1 s) and `DISPATCHBOX_BACKOFF_MAX` (default 5 m):
    /// the first and the largest retry delay.
    pub retry: RetryPolicy,
}

/// The status writer.
#[derive(Debug, Clone)]
pub struct StatusSettings {
    /// `DISPATCHBOX_STATUS_BATCH_SIZE` (default 1000): rows per status UPDATE, at most.
    pub batch_size: usize,
    /// `DISPATCHBOX_STATUS_LINGER` (default 100 ms, at most 1 s): how long the status writer
    /// waits for more outcomes before writing a batch that is not full (fewer, larger
    /// status transactions).
    pub linger: Duration,
    /// `DISPATCHBOX_STATUS_STALL_TIMEOUT` (default 60 s): how long the status writer may
    /// fail to write anything before `/ready` turns 503.
    pub stall_timeout: Duration,
}

/// The sweeper.
#[derive(Debug, Clone)]
pub struct SweeperSettings {
    /// `DISPATCHBOX_SWEEP_INTERVAL` (default 5 s): how often the sweeper looks for due rows.
    pub interval: Duration,
    /// `DISPATCHBOX_SWEEP_GRACE` (default 5 m): how long a committed `pending` row is left
    /// to the stream (from the sweeper's first sight of it) when the slot does not show it
    /// was passed.
    pub grace: Duration,
    /// `DISPATCHBOX_SWEEP_BATCH` (default 500): rows per sweeper claim.
    pub batch: i64,
    /// `DISPATCHBOX_SWEEP_LEASE` (default 2 m): how long a sweeper claim holds a row; longer
    /// than every sink's delivery timeout.
    pub lease: Duration,
}

/// The admin HTTP server.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// `DISPATCHBOX_HTTP_ADDR` (default `0.0.0.0:8080`): where the server listens.
    pub http_addr: SocketAddr,
    /// `DISPATCHBOX_ADMIN_TOKEN` (or `_FILE`): bearer token of `/api/*`, at least 16
    /// characters; `None` (the default) refuses the API.
    pub token: Option<Secret<String>>,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// `DISPATCHBOX_LOG_FORMAT`: `json` or `text`; `None` (unset) = json unless stdout is a
    /// terminal.
    pub format: Option<LogFormat>,
    /// `DISPATCHBOX_LOG_LEVEL` (default `info`): a `tracing` filter (`info`, `debug`,
    /// `dispatchbox=debug,warn`).
    pub level: String,
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

    /// Validates raw values; `vars` supplies the dynamic sets (`DISPATCHBOX_KAFKA_PROPERTY_*`,
    /// named webhook endpoints) and OpenTelemetry's own `OTEL_*` variables.
    pub fn from_raw(
        raw: RawConfig,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = vars.collect();
        let database = DatabaseSettings::from_raw(&raw)?;
        let traces = traces(&raw, &vars)?;
        let sinks = sinks::from_raw(&raw, &database, vars.into_iter())?;
        let dispatch = DispatchSettings::from_raw(&raw, &sinks)?;
        let sweeper = SweeperSettings::from_raw(&raw, &sinks)?;
        Ok(Config {
            source: SourceSettings::from_raw(&raw)?,
            status: StatusSettings::from_raw(&raw)?,
            admin: AdminSettings::from_raw(&raw)?,
            log: LogSettings::from_raw(&raw)?,
            traces,
            shutdown_timeout: duration("DISPATCHBOX_SHUTDOWN_TIMEOUT", &raw.shutdown_timeout)?,
            database,
            dispatch,
            sinks,
            sweeper,
        })
    }
}

impl DatabaseSettings {
    fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
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
        let conninfo = url
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
        let names = Names::new(table, publication)
            .map_err(|e| ConfigError::new("DISPATCHBOX_TABLE", e.to_string()))?;
        Ok(Self {
            conninfo,
            names,
            slot,
        })
    }
}

impl SourceSettings {
    fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            status_interval: positive_duration(
                "DISPATCHBOX_STATUS_INTERVAL",
                &raw.status_interval,
            )?,
            heartbeat_interval: positive_duration(
                "DISPATCHBOX_HEARTBEAT_INTERVAL",
                &raw.heartbeat_interval,
            )?,
            reconnect_max: positive_duration("DISPATCHBOX_RECONNECT_MAX", &raw.reconnect_max)?,
            max_message_size: count::<usize>(
                "DISPATCHBOX_MAX_MESSAGE_SIZE_MB",
                &raw.max_message_size_mb,
                1,
                4096,
            )? * 1024
                * 1024
                + 64 * 1024,
            slot_recreate_limit: count(
                "DISPATCHBOX_SLOT_RECREATE_LIMIT",
                &raw.slot_recreate_limit,
                1,
                1000,
            )?,
        })
    }
}

impl DispatchSettings {
    /// `sinks` are the enabled sinks the routes may name.
    fn from_raw(raw: &RawConfig, sinks: &[SinkConfig]) -> Result<Self, ConfigError> {
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
        let sink_names: Vec<&str> = sinks.iter().map(SinkConfig::name).collect();
        let router = Router::parse(raw.routes.as_deref(), &sink_names)
            .map_err(|e| ConfigError::new("DISPATCHBOX_ROUTES", e.to_string()))?;
        let base = positive_duration("DISPATCHBOX_BACKOFF_BASE", &raw.backoff_base)?;
        let max = positive_duration("DISPATCHBOX_BACKOFF_MAX", &raw.backoff_max)?;
        if max < base {
            return Err(ConfigError::new(
                "DISPATCHBOX_BACKOFF_MAX",
                "must not be smaller than DISPATCHBOX_BACKOFF_BASE",
            ));
        }
        Ok(Self {
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
            ordering,
            router,
            retry: RetryPolicy {
                max_attempts: count("DISPATCHBOX_MAX_ATTEMPTS", &raw.max_attempts, 1, 1000)?,
                backoff: Backoff { base, max },
            },
        })
    }
}

impl StatusSettings {
    fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            batch_size: count(
                "DISPATCHBOX_STATUS_BATCH_SIZE",
                &raw.status_batch_size,
                1,
                100_000,
            )?,
            linger: at_most(
                "DISPATCHBOX_STATUS_LINGER",
                duration("DISPATCHBOX_STATUS_LINGER", &raw.status_linger)?,
                Duration::from_secs(1),
            )?,
            stall_timeout: positive_duration(
                "DISPATCHBOX_STATUS_STALL_TIMEOUT",
                &raw.status_stall_timeout,
            )?,
        })
    }
}

impl SweeperSettings {
    /// `sinks`: the lease must outlast each one's delivery timeout.
    fn from_raw(raw: &RawConfig, sinks: &[SinkConfig]) -> Result<Self, ConfigError> {
        let lease = positive_duration("DISPATCHBOX_SWEEP_LEASE", &raw.sweep_lease)?;
        for sink in sinks {
            let (variable, timeout): (Cow<'_, str>, Duration) = match sink {
                SinkConfig::Kafka(kafka) => (
                    "DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT".into(),
                    kafka.delivery_timeout,
                ),
                SinkConfig::Nats(nats) => ("DISPATCHBOX_NATS_TIMEOUT".into(), nats.timeout),
                SinkConfig::Redis(redis) => ("DISPATCHBOX_REDIS_TIMEOUT".into(), redis.timeout),
                SinkConfig::RabbitMq(rabbitmq) => (
                    "DISPATCHBOX_RABBITMQ_DELIVERY_TIMEOUT".into(),
                    rabbitmq.delivery_timeout,
                ),
                SinkConfig::Webhook(webhook) => (
                    format!(
                        "{}TIMEOUT",
                        crate::sink::webhook::variable_prefix(&webhook.name)
                    )
                    .into(),
                    webhook.timeout,
                ),
                SinkConfig::Stdout(_) => continue,
            };
            if lease <= timeout {
                return Err(ConfigError::new(
                    "DISPATCHBOX_SWEEP_LEASE",
                    format!(
                        "must be longer than {variable} ({}), or a slow delivery could be claimed twice",
                        humantime::format_duration(timeout)
                    ),
                ));
            }
        }
        Ok(Self {
            interval: positive_duration("DISPATCHBOX_SWEEP_INTERVAL", &raw.sweep_interval)?,
            grace: duration("DISPATCHBOX_SWEEP_GRACE", &raw.sweep_grace)?,
            batch: count("DISPATCHBOX_SWEEP_BATCH", &raw.sweep_batch, 1, 100_000)?,
            lease,
        })
    }
}

impl AdminSettings {
    fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        let http_addr = raw.http_addr.trim().parse().map_err(|_| {
            ConfigError::new(
                "DISPATCHBOX_HTTP_ADDR",
                format!(
                    "{:?} is not an address; use IP:PORT, e.g. 0.0.0.0:8080",
                    raw.http_addr
                ),
            )
        })?;
        let token = value_or_file(
            "DISPATCHBOX_ADMIN_TOKEN",
            "DISPATCHBOX_ADMIN_TOKEN_FILE",
            &raw.admin_token,
            &raw.admin_token_file,
        )?
        .map(|(_, token)| token);
        if token.as_deref().is_some_and(|t| t.trim().len() < 16) {
            return Err(ConfigError::new(
                "DISPATCHBOX_ADMIN_TOKEN",
                "must be at least 16 characters (e.g. openssl rand -hex 32)",
            ));
        }
        Ok(Self {
            http_addr,
            token: token.map(|t| Secret::new(t.trim().to_owned())),
        })
    }
}

impl LogSettings {
    fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        let format = match raw.log_format.as_deref().map(str::trim) {
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
        let level = raw.log_level.trim();
        if let Err(problem) = check_log_filter(level) {
            return Err(ConfigError::new(
                "DISPATCHBOX_LOG_LEVEL",
                format!(
                    "{level:?} is not valid ({problem}); use error, warn, info, debug or trace, \
                     or TARGET=LEVEL directives after an optional default level, e.g. \
                     info,dispatchbox=debug"
                ),
            ));
        }
        Ok(Self {
            format,
            level: level.to_owned(),
        })
    }
}

/// Levels `DISPATCHBOX_LOG_LEVEL` accepts, alone or after `TARGET=`.
const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// A `tracing` filter whose every directive is a level or `TARGET=LEVEL`. `EnvFilter`
/// itself takes any word as a target name to log at every level, so a misspelt level
/// (`inof`, `verbose`) would silently log nothing of the relay's; here it is an error.
fn check_log_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("empty".into());
    }
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => return Err(format!("{directive:?} names no target")),
            None => directive,
        };
        if !LOG_LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
            return Err(format!("{:?} is not a level", level.trim()));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;

/// OTLP trace export, from OpenTelemetry's own variables: on when an endpoint is set
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, or `OTEL_EXPORTER_OTLP_ENDPOINT` /
/// `DISPATCHBOX_OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/traces`) and `OTEL_SDK_DISABLED` is
/// not `true`. Only OTLP/HTTP with protobuf is spoken.
fn traces(
    raw: &RawConfig,
    vars: &HashMap<String, String>,
) -> Result<Option<TraceSettings>, ConfigError> {
    let set = |value: Option<&str>| {
        value
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    // OpenTelemetry's own variables are not DISPATCHBOX_* ones: read from the environment.
    let otel = |name: &str| set(vars.get(name).map(String::as_str));
    if otel("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let endpoint = if let Some(url) = otel("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url))
    } else if let Some(base) = set(raw.dispatchbox_otel_endpoint.as_deref()) {
        Some(("DISPATCHBOX_OTEL_EXPORTER_OTLP_ENDPOINT", traces_url(&base)))
    } else {
        otel("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|base| ("OTEL_EXPORTER_OTLP_ENDPOINT", traces_url(&base)))
    };
    let Some((variable, endpoint)) = endpoint else {
        return Ok(None);
    };
    match url::Url::parse(&endpoint) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        _ => {
            return Err(ConfigError::new(
                variable,
                "must be an http:// or https:// URL of an OTLP/HTTP receiver (e.g. \
                 http://otel-collector:4318)",
            ))
        }
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = otel(name) {
            if protocol != "http/protobuf" {
                return Err(ConfigError::new(
                    name,
                    format!("{protocol:?} is not supported; dispatchbox exports http/protobuf"),
                ));
            }
        }
    }
    let timeout = match [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .into_iter()
    .find_map(|name| otel(name).map(|v| (name, v)))
    {
        Some((name, millis)) => match millis.parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                return Err(ConfigError::new(
                    name,
                    format!("{millis:?} is not valid; use a whole number of milliseconds above 0"),
                ))
            }
        },
        None => Duration::from_secs(10),
    };
    let names_service = otel("OTEL_SERVICE_NAME").is_some()
        || otel("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs
                .split(',')
                .any(|pair| pair.trim_start().starts_with("service.name="))
        });
    Ok(Some(TraceSettings {
        endpoint,
        timeout,
        default_service_name: (!names_service).then(|| "dispatchbox".to_owned()),
    }))
}

/// The traces URL under an OTLP base endpoint, as the OTLP exporter specification says.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}
