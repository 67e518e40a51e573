//! Every `DISPATCHBOX_*` variable, once: its name, its default and a line of help. The
//! `variables!` table below generates both [`RawConfig`] (what `envconfig` reads) and
//! [`VARIABLES`] (what `dispatchbox run --help` lists), so a name or a default cannot
//! differ between the two. `tests/help.rs` checks that the README's Configuration table
//! documents the same variables with the same defaults.
//!
//! Adding a variable is one entry: `field: "DISPATCHBOX_NAME" = "default", "help";` (a
//! `String` field), or without `= "default"` for an optional one (an `Option<String>`
//! field), with `(default text)` in place of the default when unset means something
//! worth saying. Then validate it in the section that uses it and add its README row.

use envconfig::Envconfig;

/// How a variable's default shows in `--help` and in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableDefault {
    /// This value (`envconfig` applies it when the variable is unset).
    Value(&'static str),
    /// None; unset means what the text says (e.g. "required", "unsigned").
    Unset(&'static str),
}

/// One documented variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    /// `DISPATCHBOX_…`; a name ending in `<NAME>` stands for a family of variables.
    pub name: &'static str,
    pub default: VariableDefault,
    /// One line: what it sets.
    pub help: &'static str,
}

macro_rules! variables {
    // A parenthesised text is one token tree too: it must be matched first.
    (@default ($text:tt)) => { VariableDefault::Unset($text) };
    (@default $default:tt) => { VariableDefault::Value($default) };
    (@default) => { VariableDefault::Unset("") };
    // RawConfig's fields, one entry at a time (envconfig tells optional fields by the
    // spelling `Option<…>`, so the type must be written out, not produced by a macro).
    (@raw [$($fields:tt)*]) => {
        /// Raw variables as `envconfig` reads them; validated by
        /// [`super::Config::from_raw`]. Generated from the table in `config/variables.rs`.
        #[derive(Debug, Envconfig)]
        pub struct RawConfig { $($fields)* }
    };
    (@raw [$($fields:tt)*] $field:ident : $name:tt = $default:tt, $help:tt; $($rest:tt)*) => {
        variables!(@raw [$($fields)*
            #[envconfig(from = $name, default = $default)]
            pub $field: String,
        ] $($rest)*);
    };
    (@raw [$($fields:tt)*] $field:ident : $name:tt $(($unset:tt))?, $help:tt; $($rest:tt)*) => {
        variables!(@raw [$($fields)*
            #[envconfig(from = $name)]
            pub $field: Option<String>,
        ] $($rest)*);
    };
    (
        $(
            $field:ident : $name:tt $(= $default:tt)? $(($unset:tt))?, $help:tt;
        )*
    ) => {
        variables!(@raw [] $($field : $name $(= $default)? $(($unset))?, $help;)*);

        /// Every variable [`RawConfig`] reads, in the table's order, plus the
        /// librdkafka property family.
        pub const VARIABLES: &[Variable] = &[
            $(
                Variable {
                    name: $name,
                    default: variables!(@default $($default)? $(($unset))?),
                    help: $help,
                },
            )*
            Variable {
                name: "DISPATCHBOX_WEBHOOK_<NAME>_URL",
                default: VariableDefault::Unset("required for webhook:<name>"),
                help: "a named webhook endpoint webhook:<name>: _URL, _SECRET(_FILE), \
                       _HEADERS(_FILE), _TIMEOUT, _CONCURRENCY, _FORWARD_HEADERS, \
                       _ALLOW_PRIVATE, _FORMAT as for the unnamed webhook",
            },
            Variable {
                name: "DISPATCHBOX_KAFKA_PROPERTY_<NAME>",
                default: VariableDefault::Unset(""),
                help: "any librdkafka property: NAME upper-cased, '.' as '_', '_' as '__' \
                       (DISPATCHBOX_KAFKA_PROPERTY_SASL_MECHANISMS=PLAIN)",
            },
        ];
    };
}

variables! {
    database_url: "DISPATCHBOX_DATABASE_URL" ("required"),
        "postgres://user:password@host:port/dbname?sslmode=…; never logged";
    database_url_file: "DISPATCHBOX_DATABASE_URL_FILE",
        "read the database URL from this file instead";
    table: "DISPATCHBOX_TABLE" = "public.outbox_event",
        "the outbox table, schema.name or name";
    publication: "DISPATCHBOX_PUBLICATION" = "dispatchbox",
        "publication streamed from (created by migrate)";
    slot: "DISPATCHBOX_SLOT" = "dispatchbox",
        "logical replication slot (created by run when missing); one per database";
    sinks: "DISPATCHBOX_SINKS" = "stdout",
        "comma-separated: kafka, nats, redis, rabbitmq, webhook, webhook:<name>, stdout";
    routes: "DISPATCHBOX_ROUTES" ("every event to every sink"),
        "routing rules PATTERN=SINK[,SINK…] separated by ';', first match wins";
    kafka_brokers: "DISPATCHBOX_KAFKA_BROKERS" ("required for kafka"),
        "bootstrap servers, host:port,…";
    kafka_topic: "DISPATCHBOX_KAFKA_TOPIC"
        ("outbox.{aggregate_type}; outbox.event.{aggregate_type} with the debezium format"),
        "topic template; placeholders {aggregate_type}, {event_type}";
    kafka_delivery_timeout: "DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT" = "30s",
        "how long librdkafka keeps trying one message before the attempt fails";
    format: "DISPATCHBOX_FORMAT" = "native",
        "what every sink sends: native, cloudevents or debezium (Kafka only)";
    kafka_format: "DISPATCHBOX_KAFKA_FORMAT" ("DISPATCHBOX_FORMAT"),
        "the Kafka sink's format";
    cloudevents_source: "DISPATCHBOX_CLOUDEVENTS_SOURCE" ("/dispatchbox/<database>/<schema.table>"),
        "the CloudEvents source attribute";
    cloudevents_mode: "DISPATCHBOX_CLOUDEVENTS_MODE" = "structured",
        "structured (one application/cloudevents+json document) or binary (ce- headers)";
    debezium_additional_placement: "DISPATCHBOX_DEBEZIUM_ADDITIONAL_PLACEMENT",
        "further columns as Kafka headers in the debezium format, column:header[:alias],…";
    nats_url: "DISPATCHBOX_NATS_URL" ("required for nats"),
        "comma-separated server URLs, nats://host:4222 or tls://host:4222";
    nats_subject: "DISPATCHBOX_NATS_SUBJECT" = "outbox.{aggregate_type}",
        "subject template; placeholders {aggregate_type}, {event_type}";
    nats_timeout: "DISPATCHBOX_NATS_TIMEOUT" = "10s",
        "how long one publish may take, acknowledgement included";
    nats_token: "DISPATCHBOX_NATS_TOKEN",
        "a token to log in with; never logged";
    nats_token_file: "DISPATCHBOX_NATS_TOKEN_FILE",
        "read the NATS token from this file instead";
    nats_creds_file: "DISPATCHBOX_NATS_CREDS_FILE",
        "a .creds file (user JWT and NKey seed) to log in with";
    nats_tls_ca_file: "DISPATCHBOX_NATS_TLS_CA_FILE" ("the system's trust store"),
        "PEM bundle of the CAs that sign the servers' certificates";
    nats_format: "DISPATCHBOX_NATS_FORMAT" ("DISPATCHBOX_FORMAT"),
        "the NATS sink's format (native or cloudevents)";
    redis_url: "DISPATCHBOX_REDIS_URL" ("required for redis"),
        "redis://[user:password@]host:6379[/db] or rediss://… (TLS)";
    redis_password: "DISPATCHBOX_REDIS_PASSWORD" ("the URL's"),
        "a password that replaces the URL's; never logged";
    redis_password_file: "DISPATCHBOX_REDIS_PASSWORD_FILE",
        "read the Redis password from this file instead";
    redis_stream: "DISPATCHBOX_REDIS_STREAM" = "outbox.{aggregate_type}",
        "stream (key) template; placeholders {aggregate_type}, {event_type}";
    redis_maxlen: "DISPATCHBOX_REDIS_MAXLEN" ("no trimming"),
        "trim each stream to about this many entries (XADD MAXLEN ~)";
    redis_timeout: "DISPATCHBOX_REDIS_TIMEOUT" = "10s",
        "how long one XADD may take, connecting included";
    redis_tls_ca_file: "DISPATCHBOX_REDIS_TLS_CA_FILE" ("the system's trust store"),
        "PEM bundle of the CAs that sign the server's certificate";
    redis_format: "DISPATCHBOX_REDIS_FORMAT" ("DISPATCHBOX_FORMAT"),
        "the Redis sink's format (native or cloudevents)";
    rabbitmq_url: "DISPATCHBOX_RABBITMQ_URL" ("required for rabbitmq"),
        "AMQP URI amqp://user:password@host:port/vhost, amqps:// for TLS";
    rabbitmq_url_file: "DISPATCHBOX_RABBITMQ_URL_FILE",
        "read the RabbitMQ URL from this file instead";
    rabbitmq_exchange: "DISPATCHBOX_RABBITMQ_EXCHANGE" = "outbox",
        "exchange template; empty for the default exchange";
    rabbitmq_routing_key: "DISPATCHBOX_RABBITMQ_ROUTING_KEY" = "{aggregate_type}.{event_type}",
        "routing-key template; placeholders {aggregate_type}, {event_type}";
    rabbitmq_delivery_timeout: "DISPATCHBOX_RABBITMQ_DELIVERY_TIMEOUT" = "30s",
        "from hand-off to the broker's confirm, at most";
    rabbitmq_ca_file: "DISPATCHBOX_RABBITMQ_CA_FILE",
        "PEM certificates trusted for amqps:// besides the Mozilla roots";
    rabbitmq_format: "DISPATCHBOX_RABBITMQ_FORMAT" ("DISPATCHBOX_FORMAT"),
        "the RabbitMQ sink's format (native or cloudevents)";
    webhook_url: "DISPATCHBOX_WEBHOOK_URL" ("required for webhook"),
        "http:// or https:// endpoint that receives the POSTs";
    webhook_secret: "DISPATCHBOX_WEBHOOK_SECRET" ("unsigned"),
        "whsec_… signing secrets, separated by spaces or commas; never logged";
    webhook_secret_file: "DISPATCHBOX_WEBHOOK_SECRET_FILE",
        "read the webhook secrets from this file instead";
    webhook_timeout: "DISPATCHBOX_WEBHOOK_TIMEOUT" = "15s",
        "per-request timeout (then the attempt is retried)";
    webhook_concurrency: "DISPATCHBOX_WEBHOOK_CONCURRENCY" = "32",
        "webhook requests in flight, at most";
    webhook_headers: "DISPATCHBOX_WEBHOOK_HEADERS" ("none"),
        "static headers for every request: Name: value per line, or a JSON object";
    webhook_headers_file: "DISPATCHBOX_WEBHOOK_HEADERS_FILE",
        "read the static webhook headers from this file instead";
    webhook_forward_headers: "DISPATCHBOX_WEBHOOK_FORWARD_HEADERS" = "traceparent,tracestate",
        "names of the row's headers entries sent as HTTP headers; empty: none";
    webhook_allow_private: "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE" = "false",
        "true turns the SSRF guard off (loopback, private, link-local, metadata addresses)";
    webhook_format: "DISPATCHBOX_WEBHOOK_FORMAT" ("DISPATCHBOX_FORMAT"),
        "the webhook sinks' format (native or cloudevents)";
    stdout_format: "DISPATCHBOX_STDOUT_FORMAT" ("DISPATCHBOX_FORMAT"),
        "the stdout sink's format (native or cloudevents)";
    max_in_flight: "DISPATCHBOX_MAX_IN_FLIGHT" = "1000",
        "events decoded but not yet delivered, at most";
    max_in_flight_bytes: "DISPATCHBOX_MAX_IN_FLIGHT_BYTES" = "64MiB",
        "bytes of events held at once, 1MiB to 4095MiB";
    status_batch_size: "DISPATCHBOX_STATUS_BATCH_SIZE" = "1000",
        "rows per status UPDATE, at most";
    status_stall_timeout: "DISPATCHBOX_STATUS_STALL_TIMEOUT" = "60s",
        "how long the status writer may write nothing before /ready turns 503";
    status_linger: "DISPATCHBOX_STATUS_LINGER" = "100ms",
        "how long the status writer waits to fill a batch, 0s to 1s";
    status_interval: "DISPATCHBOX_STATUS_INTERVAL" = "2s",
        "standby status updates to PostgreSQL, at least this often";
    heartbeat_interval: "DISPATCHBOX_HEARTBEAT_INTERVAL" = "30s",
        "period of the pg_logical_emit_message heartbeat";
    shutdown_timeout: "DISPATCHBOX_SHUTDOWN_TIMEOUT" = "30s",
        "on SIGTERM, how long in-flight deliveries may finish";
    reconnect_max: "DISPATCHBOX_RECONNECT_MAX" = "30s",
        "cap of the reconnect backoff";
    max_message_size_mb: "DISPATCHBOX_MAX_MESSAGE_SIZE_MB" = "1024",
        "largest replication message received whole, in MiB, 1 to 4096";
    max_attempts: "DISPATCHBOX_MAX_ATTEMPTS" = "5",
        "attempts before an event is dead, 1 to 1000";
    backoff_base: "DISPATCHBOX_BACKOFF_BASE" = "1s",
        "ceiling of the first retry delay";
    backoff_max: "DISPATCHBOX_BACKOFF_MAX" = "5m",
        "cap of every retry delay";
    ordering: "DISPATCHBOX_ORDERING" = "aggregate",
        "aggregate (per-aggregate commit order) or none";
    sweep_interval: "DISPATCHBOX_SWEEP_INTERVAL" = "5s",
        "how often the sweeper looks for due rows";
    sweep_grace: "DISPATCHBOX_SWEEP_GRACE" = "5m",
        "how long a committed pending row is left to the stream";
    sweep_batch: "DISPATCHBOX_SWEEP_BATCH" = "500",
        "rows claimed per sweeper statement";
    sweep_lease: "DISPATCHBOX_SWEEP_LEASE" = "2m",
        "how long a claimed row is held; longer than every sink's timeout";
    slot_recreate_limit: "DISPATCHBOX_SLOT_RECREATE_LIMIT" = "3",
        "replication slot creations allowed per hour before the relay stops";
    http_addr: "DISPATCHBOX_HTTP_ADDR" = "0.0.0.0:8080",
        "IP:PORT of the admin HTTP server (probes, /metrics, /api)";
    admin_token: "DISPATCHBOX_ADMIN_TOKEN" ("API refused"),
        "bearer token for /api/*, at least 16 characters; never logged";
    admin_token_file: "DISPATCHBOX_ADMIN_TOKEN_FILE",
        "read the admin token from this file instead";
    log_format: "DISPATCHBOX_LOG_FORMAT" ("json unless stderr is a terminal"),
        "json or text";
    log_level: "DISPATCHBOX_LOG_LEVEL" = "info",
        "error, warn, info, debug, trace, or TARGET=LEVEL directives (dispatchbox=debug,warn)";
    dispatchbox_otel_endpoint: "DISPATCHBOX_OTEL_EXPORTER_OTLP_ENDPOINT" ("no export"),
        "OTLP/HTTP receiver of the send spans, as OTEL_EXPORTER_OTLP_ENDPOINT (which also works)";
}

/// The `Environment:` section of `dispatchbox run --help`: every variable with its
/// default, in the style of clap's own `[default: …]`.
pub fn help() -> String {
    let mut text = String::from(
        "Environment (every setting is a variable; an invalid value exits 2 naming it):\n",
    );
    for variable in VARIABLES {
        let default = match variable.default {
            VariableDefault::Value(value) => format!(" [default: {value}]"),
            VariableDefault::Unset("") => String::new(),
            VariableDefault::Unset(text) if text.starts_with("required") => format!(" [{text}]"),
            VariableDefault::Unset(text) => format!(" [unset: {text}]"),
        };
        text.push_str(&format!(
            "  {}{default}\n          {}\n",
            variable.name, variable.help
        ));
    }
    text.push_str(
        "\nDurations are written like 500ms, 30s, 5m. Secrets may come from the *_FILE variants.",
    );
    text
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut seen = HashSet::new();
        for variable in VARIABLES {
            assert!(variable.name.starts_with("DISPATCHBOX_"), "{variable:?}");
            assert!(seen.insert(variable.name), "{} twice", variable.name);
            assert!(!variable.help.is_empty(), "{variable:?}");
        }
    }

    #[test]
    fn the_table_defaults_are_what_envconfig_applies() {
        let raw = RawConfig::init_from_hashmap(&HashMap::new()).expect("all optional");
        assert_eq!(raw.table, "public.outbox_event");
        assert_eq!(raw.log_level, "info");
        assert_eq!(raw.database_url, None);
        let default_of = |name| VARIABLES.iter().find(|v| v.name == name).map(|v| v.default);
        assert_eq!(
            default_of("DISPATCHBOX_TABLE"),
            Some(VariableDefault::Value("public.outbox_event"))
        );
        assert_eq!(
            default_of("DISPATCHBOX_DATABASE_URL"),
            Some(VariableDefault::Unset("required"))
        );
        assert_eq!(
            default_of("DISPATCHBOX_DATABASE_URL_FILE"),
            Some(VariableDefault::Unset(""))
        );
    }

    #[test]
    fn help_lists_every_variable_with_its_default() {
        let text = help();
        for variable in VARIABLES {
            assert!(text.contains(variable.name), "{} missing", variable.name);
        }
        assert!(text.contains("DISPATCHBOX_TABLE [default: public.outbox_event]"));
        assert!(text.contains("DISPATCHBOX_DATABASE_URL [required]"));
        assert!(text.contains("DISPATCHBOX_ROUTES [unset: every event to every sink]"));
    }
}
