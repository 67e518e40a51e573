use super::*;
use crate::sink::kafka::KafkaSinkConfig;
use crate::sink::webhook::WebhookSinkConfig;

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

fn sink_names(config: &Config) -> Vec<&str> {
    config.sinks.iter().map(SinkConfig::name).collect()
}

fn kafka(config: &Config) -> Option<&KafkaSinkConfig> {
    config.sinks.iter().find_map(|sink| match sink {
        SinkConfig::Kafka(kafka) => Some(kafka),
        _ => None,
    })
}

fn webhook(config: &Config) -> Option<&WebhookSinkConfig> {
    config.sinks.iter().find_map(|sink| match sink {
        SinkConfig::Webhook(webhook) => Some(webhook),
        _ => None,
    })
}

#[test]
fn defaults_are_valid() {
    let config = Config::from_vars(vars(&[])).expect("defaults");
    assert_eq!(sink_names(&config), vec!["stdout"]);
    assert_eq!(
        config.database.names.table().to_string(),
        "public.outbox_event"
    );
    assert_eq!(config.dispatch.retry.max_attempts, 5);
    assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
    assert!(kafka(&config).is_none());
    assert_eq!(config.dispatch.max_in_flight_bytes, 64 * 1024 * 1024);
}

#[test]
fn byte_sizes_take_units_and_name_the_rule() {
    let size = |v: &str| {
        Config::from_vars(vars(&[("DISPATCHBOX_MAX_IN_FLIGHT_BYTES", v)]))
            .map(|c| c.dispatch.max_in_flight_bytes)
    };
    assert_eq!(size("512MiB").unwrap(), 512 << 20);
    assert_eq!(size("1 GiB").unwrap(), 1 << 30);
    assert_eq!(size("2097152").unwrap(), 2 << 20);
    for bad in ["0", "512KiB", "4GiB", "lots", "-1MiB", "1.5GiB"] {
        let error = size(bad).expect_err(bad).to_string();
        assert!(
            error.contains("DISPATCHBOX_MAX_IN_FLIGHT_BYTES") && error.contains("1MiB to 4095MiB"),
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
    assert_eq!(config.database.conninfo.endpoints().len(), 2);
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
    let webhook = webhook(&config).expect("webhook");
    assert_eq!(webhook.secrets.len(), 1);
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
    let kafka = kafka(&config).expect("kafka");
    assert!(kafka
        .properties
        .contains(&("linger.ms".to_owned(), "5".to_owned())));
    assert_eq!(sink_names(&config), vec!["kafka", "stdout"]);
}

/// What a sink would refuse when it is built is refused here, naming the variable.
#[test]
fn sink_settings_are_validated_as_the_sink_would() {
    let webhook = |url: &str| {
        error_for(&[
            ("DISPATCHBOX_SINKS", "webhook"),
            ("DISPATCHBOX_WEBHOOK_URL", url),
        ])
    };
    let e = webhook("hooks.example.com/x?token=s3cr3t");
    assert_eq!(e.variable, "DISPATCHBOX_WEBHOOK_URL");
    assert!(e.to_string().contains("not a valid url"), "{e}");
    assert!(!e.to_string().contains("s3cr3t"), "url echoed: {e}");
    let e = webhook("ftp://hooks.example.com/");
    assert_eq!(e.variable, "DISPATCHBOX_WEBHOOK_URL");
    assert!(e.to_string().contains("http or https"), "{e}");

    let kafka = |pairs: &[(&str, &str)]| {
        let mut all = vec![
            ("DISPATCHBOX_SINKS", "kafka"),
            ("DISPATCHBOX_KAFKA_BROKERS", "k:9092"),
        ];
        all.extend_from_slice(pairs);
        error_for(&all)
    };
    for template in ["outbox/{aggregate_type}", "outbox.{aggregate}", ""] {
        let e = kafka(&[("DISPATCHBOX_KAFKA_TOPIC", template)]);
        assert_eq!(e.variable, "DISPATCHBOX_KAFKA_TOPIC", "{template}: {e}");
    }
    let e = kafka(&[
        ("DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT", "30days"),
        ("DISPATCHBOX_SWEEP_LEASE", "60days"),
    ]);
    assert_eq!(e.variable, "DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT");
    let e = kafka(&[("DISPATCHBOX_KAFKA_PROPERTY_NO_SUCH_THING", "s3cret")]);
    assert_eq!(e.variable, "DISPATCHBOX_KAFKA_PROPERTY_NO_SUCH_THING");
    assert!(e.to_string().contains("\"no.such.thing\""), "{e}");
    assert!(!e.to_string().contains("s3cret"), "value echoed: {e}");
    let e = kafka(&[("DISPATCHBOX_KAFKA_PROPERTY_ACKS", "s3cret")]);
    assert_eq!(e.variable, "DISPATCHBOX_KAFKA_PROPERTY_ACKS");
    assert!(!e.to_string().contains("s3cret"), "value echoed: {e}");
}

#[test]
fn formats_default_to_native_and_follow_the_sinks_own_variable() {
    use crate::sink::format::{CloudEventsMode, Format};
    let config = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "kafka,webhook,stdout"),
        ("DISPATCHBOX_KAFKA_BROKERS", "k:9092"),
        ("DISPATCHBOX_WEBHOOK_URL", "https://hooks.example.com/x"),
        ("DISPATCHBOX_FORMAT", "cloudevents"),
        ("DISPATCHBOX_CLOUDEVENTS_MODE", "binary"),
        ("DISPATCHBOX_KAFKA_FORMAT", "debezium"),
        (
            "DISPATCHBOX_DEBEZIUM_ADDITIONAL_PLACEMENT",
            "event_type:header:eventType",
        ),
    ]))
    .expect("valid");
    let kafka = kafka(&config).unwrap();
    let Format::Debezium(debezium) = &kafka.format else {
        panic!("kafka format {:?}", kafka.format);
    };
    assert_eq!(debezium.describe(), "event_type:header:eventType");
    assert_eq!(kafka.topic_template, "outbox.event.{aggregate_type}");
    let Format::CloudEvents(ce) = &webhook(&config).unwrap().format else {
        panic!("webhook format");
    };
    assert_eq!(ce.mode, CloudEventsMode::Binary);
    assert_eq!(ce.source, "/dispatchbox/app/public.outbox_event");
    assert!(matches!(
        config.sinks.last(),
        Some(SinkConfig::Stdout(Format::CloudEvents(_)))
    ));

    let native = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "kafka"),
        ("DISPATCHBOX_KAFKA_BROKERS", "k:9092"),
    ]))
    .unwrap();
    let kafka = self::kafka(&native).unwrap();
    assert_eq!(kafka.format, Format::Native);
    assert_eq!(kafka.topic_template, "outbox.{aggregate_type}");

    // An explicit topic wins over the debezium default.
    let explicit = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "kafka"),
        ("DISPATCHBOX_KAFKA_BROKERS", "k:9092"),
        ("DISPATCHBOX_FORMAT", "debezium"),
        ("DISPATCHBOX_KAFKA_TOPIC", "events"),
        (
            "DISPATCHBOX_CLOUDEVENTS_SOURCE",
            "https://orders.example.com",
        ),
    ]))
    .unwrap();
    assert_eq!(self::kafka(&explicit).unwrap().topic_template, "events");
}

#[test]
fn format_mistakes_name_their_variable() {
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("DISPATCHBOX_FORMAT", "avro")], "DISPATCHBOX_FORMAT"),
        (
            &[("DISPATCHBOX_STDOUT_FORMAT", "xml")],
            "DISPATCHBOX_STDOUT_FORMAT",
        ),
        (
            &[("DISPATCHBOX_CLOUDEVENTS_MODE", "batched")],
            "DISPATCHBOX_CLOUDEVENTS_MODE",
        ),
        (
            &[("DISPATCHBOX_CLOUDEVENTS_SOURCE", "a b")],
            "DISPATCHBOX_CLOUDEVENTS_SOURCE",
        ),
        (
            &[(
                "DISPATCHBOX_DEBEZIUM_ADDITIONAL_PLACEMENT",
                "payload:header",
            )],
            "DISPATCHBOX_DEBEZIUM_ADDITIONAL_PLACEMENT",
        ),
        // stdout cannot speak debezium: the variable that chose it is named.
        (&[("DISPATCHBOX_FORMAT", "debezium")], "DISPATCHBOX_FORMAT"),
    ];
    for (pairs, variable) in cases {
        let error = error_for(pairs);
        assert_eq!(error.variable, variable, "{pairs:?}: {error}");
    }
    let error = error_for(&[
        ("DISPATCHBOX_SINKS", "webhook"),
        ("DISPATCHBOX_WEBHOOK_URL", "https://hooks.example.com/x"),
        ("DISPATCHBOX_WEBHOOK_FORMAT", "debezium"),
    ]);
    assert_eq!(error.variable, "DISPATCHBOX_WEBHOOK_FORMAT");
    assert!(error.rule.contains("Kafka records"), "{error}");
}

#[test]
fn trace_export_follows_opentelemetrys_variables() {
    let traces = |pairs: &[(&str, &str)]| Config::from_vars(vars(pairs)).map(|c| c.traces);
    assert_eq!(traces(&[]).unwrap(), None);
    let on = traces(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
        .unwrap()
        .unwrap();
    assert_eq!(on.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(on.timeout, Duration::from_secs(10));
    assert_eq!(on.default_service_name.as_deref(), Some("dispatchbox"));
    // The signal's own endpoint is used as is and wins; the prefixed alias is a base URL.
    let signal = traces(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://b/otlp/traces",
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_SERVICE_NAME", "orders-relay"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(signal.endpoint, "https://b/otlp/traces");
    assert_eq!(signal.timeout, Duration::from_millis(2500));
    assert_eq!(signal.default_service_name, None);
    let alias = traces(&[("DISPATCHBOX_OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
        .unwrap()
        .unwrap();
    assert_eq!(alias.endpoint, "http://c:4318/v1/traces");
    assert_eq!(
        traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap(),
        None
    );
    for (pairs, variable) in [
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")][..],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ][..],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ][..],
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
    ] {
        assert_eq!(error_for(pairs).variable, variable);
    }
}
fn webhooks(config: &Config) -> Vec<&WebhookSinkConfig> {
    config
        .sinks
        .iter()
        .filter_map(|sink| match sink {
            SinkConfig::Webhook(webhook) => Some(webhook),
            _ => None,
        })
        .collect()
}

#[test]
fn named_webhook_endpoints_are_sinks_of_their_own() {
    let other = "whsec_CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC";
    let config = Config::from_vars(vars(&[
        (
            "DISPATCHBOX_SINKS",
            "webhook, webhook:billing ,webhook:audit_eu,webhook:billing",
        ),
        (
            "DISPATCHBOX_WEBHOOK_URL",
            "https://hooks.example.com/default",
        ),
        (
            "DISPATCHBOX_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
        ("DISPATCHBOX_WEBHOOK_HEADERS", "X-Api-Key: default-key"),
        ("DISPATCHBOX_WEBHOOK_TIMEOUT", "20s"),
        ("DISPATCHBOX_WEBHOOK_CONCURRENCY", "8"),
        ("DISPATCHBOX_WEBHOOK_FORWARD_HEADERS", "traceparent"),
        (
            "DISPATCHBOX_WEBHOOK_BILLING_URL",
            "https://billing.example.com/in",
        ),
        ("DISPATCHBOX_WEBHOOK_BILLING_SECRET", other),
        ("DISPATCHBOX_WEBHOOK_BILLING_TIMEOUT", "5s"),
        (
            "DISPATCHBOX_WEBHOOK_BILLING_FORWARD_HEADERS",
            "traceparent, X-Tenant",
        ),
        (
            "DISPATCHBOX_WEBHOOK_BILLING_HEADERS",
            r#"{"Authorization": "Bearer a,b", "X-Region": "eu"}"#,
        ),
        ("DISPATCHBOX_WEBHOOK_AUDIT_EU_URL", "http://10.0.0.7/audit"),
        ("DISPATCHBOX_WEBHOOK_AUDIT_EU_ALLOW_PRIVATE", "true"),
        (
            "DISPATCHBOX_ROUTES",
            "invoice.*=webhook:billing,webhook:audit_eu; *=webhook",
        ),
    ]))
    .expect("config");
    assert_eq!(
        sink_names(&config),
        vec!["webhook", "webhook:billing", "webhook:audit_eu"]
    );
    assert_eq!(
        config.dispatch.router.route("invoice.paid"),
        Some(&[1, 2][..])
    );
    assert_eq!(config.dispatch.router.route("order.placed"), Some(&[0][..]));

    let [default, billing, audit] = webhooks(&config)[..] else {
        panic!("three webhooks");
    };
    assert_eq!(default.timeout, Duration::from_secs(20));
    assert_eq!(
        default.headers,
        vec![("X-Api-Key".to_owned(), "default-key".to_owned())]
    );
    assert!(!default.allow_private);

    // Own values where given.
    assert_eq!(billing.url, "https://billing.example.com/in");
    assert_eq!(billing.secrets, vec![other.to_owned()]);
    assert_eq!(billing.timeout, Duration::from_secs(5));
    assert_eq!(billing.forward_headers, vec!["traceparent", "x-tenant"]);
    assert_eq!(
        billing.headers,
        vec![
            ("Authorization".to_owned(), "Bearer a,b".to_owned()),
            ("X-Region".to_owned(), "eu".to_owned()),
        ]
    );
    // Fallbacks: timeout, concurrency, forward list, allow-private; never the secrets or
    // static headers of another receiver.
    assert_eq!(billing.max_concurrency, 8);
    assert!(!billing.allow_private);
    assert!(audit.secrets.is_empty());
    assert!(audit.headers.is_empty());
    assert_eq!(audit.timeout, Duration::from_secs(20));
    assert_eq!(audit.forward_headers, vec!["traceparent"]);
    assert!(audit.allow_private);

    let printed = format!("{config:?}");
    for hidden in ["default-key", "Bearer a,b", "CCCCCCCC", "MfKQ9r8"] {
        assert!(!printed.contains(hidden), "{hidden} printed: {printed}");
    }
}

#[test]
fn named_webhook_errors_name_the_exact_variable() {
    let named = |pairs: &[(&str, &str)]| {
        let mut all = vec![
            ("DISPATCHBOX_SINKS", "webhook:billing"),
            (
                "DISPATCHBOX_WEBHOOK_BILLING_URL",
                "https://billing.example.com/in",
            ),
        ];
        all.extend_from_slice(pairs);
        error_for(&all)
    };
    let e = error_for(&[("DISPATCHBOX_SINKS", "webhook:billing")]);
    assert_eq!(e.variable, "DISPATCHBOX_WEBHOOK_BILLING_URL");
    assert!(e.to_string().contains("webhook:billing"), "{e}");
    // The unnamed URL is not a fallback.
    let e = error_for(&[
        ("DISPATCHBOX_SINKS", "webhook:billing"),
        ("DISPATCHBOX_WEBHOOK_URL", "https://hooks.example.com/"),
    ]);
    assert_eq!(e.variable, "DISPATCHBOX_WEBHOOK_BILLING_URL");

    for (variable, value) in [
        ("DISPATCHBOX_WEBHOOK_BILLING_SECRET", "nope-s3cret"),
        ("DISPATCHBOX_WEBHOOK_BILLING_TIMEOUT", "0s"),
        ("DISPATCHBOX_WEBHOOK_BILLING_CONCURRENCY", "0"),
        (
            "DISPATCHBOX_WEBHOOK_BILLING_HEADERS",
            "Content-Type: text/plain",
        ),
        ("DISPATCHBOX_WEBHOOK_BILLING_HEADERS", "no colon s3cret"),
        (
            "DISPATCHBOX_WEBHOOK_BILLING_FORWARD_HEADERS",
            "traceparent,webhook-id",
        ),
        ("DISPATCHBOX_WEBHOOK_BILLING_ALLOW_PRIVATE", "maybe"),
    ] {
        let e = named(&[(variable, value)]);
        assert_eq!(e.variable, variable, "{value}: {e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
    // An inherited value's mistake names the variable it came from.
    let e = named(&[("DISPATCHBOX_WEBHOOK_TIMEOUT", "soon")]);
    assert_eq!(e.variable, "DISPATCHBOX_WEBHOOK_TIMEOUT");
    let e = named(&[
        (
            "DISPATCHBOX_WEBHOOK_BILLING_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
        (
            "DISPATCHBOX_WEBHOOK_BILLING_SECRET_FILE",
            "/run/secrets/billing",
        ),
    ]);
    assert_eq!(e.variable, "DISPATCHBOX_WEBHOOK_BILLING_SECRET");
    assert!(e.to_string().contains("not both"), "{e}");
    let e = named(&[("DISPATCHBOX_WEBHOOK_BILLING_URL", "http://192.168.1.10/in")]);
    assert_eq!(e.variable, "DISPATCHBOX_WEBHOOK_BILLING_URL");
    assert!(
        e.to_string()
            .contains("unless DISPATCHBOX_WEBHOOK_BILLING_ALLOW_PRIVATE=true"),
        "{e}"
    );
    let e = named(&[
        ("DISPATCHBOX_WEBHOOK_BILLING_TIMEOUT", "3m"),
        ("DISPATCHBOX_SWEEP_LEASE", "2m"),
    ]);
    assert_eq!(e.variable, "DISPATCHBOX_SWEEP_LEASE");
    assert!(
        e.to_string()
            .contains("DISPATCHBOX_WEBHOOK_BILLING_TIMEOUT"),
        "{e}"
    );

    for bad in [
        "webhook:",
        "webhook:Billing",
        "webhook:9lives",
        "webhook:bill-ing",
        "webhook:a.b",
        "webhook:forward",
        "webhook:eu_forward",
    ] {
        let e = error_for(&[("DISPATCHBOX_SINKS", bad)]);
        assert_eq!(e.variable, "DISPATCHBOX_SINKS", "{bad}: {e}");
    }
    let e = error_for(&[
        ("DISPATCHBOX_SINKS", "webhook:billing"),
        (
            "DISPATCHBOX_WEBHOOK_BILLING_URL",
            "https://billing.example.com/in",
        ),
        ("DISPATCHBOX_ROUTES", "*=webhook"),
    ]);
    assert_eq!(e.variable, "DISPATCHBOX_ROUTES");
}

#[test]
fn webhook_guard_headers_and_files() {
    // The SSRF guard refuses IP literals at startup, unless allowed.
    let e = error_for(&[
        ("DISPATCHBOX_SINKS", "webhook"),
        ("DISPATCHBOX_WEBHOOK_URL", "http://127.0.0.1:9000/hook"),
    ]);
    assert_eq!(e.variable, "DISPATCHBOX_WEBHOOK_URL");
    assert!(
        e.to_string().contains("loopback address (127.0.0.0/8)"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE=true"),
        "{e}"
    );
    let config = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "webhook"),
        ("DISPATCHBOX_WEBHOOK_URL", "http://127.0.0.1:9000/hook"),
        ("DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true"),
    ]))
    .expect("allowed");
    assert!(webhook(&config).expect("webhook").allow_private);
    // Host names are checked when connecting, not here (no DNS in the configuration).
    Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "webhook"),
        ("DISPATCHBOX_WEBHOOK_URL", "http://localhost:9000/hook"),
    ]))
    .expect("a host name");

    // Defaults: trace context forwarded, no static headers.
    let config = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "webhook"),
        ("DISPATCHBOX_WEBHOOK_URL", "https://hooks.example.com/"),
    ]))
    .expect("config");
    let hook = webhook(&config).expect("webhook");
    assert_eq!(hook.forward_headers, vec!["traceparent", "tracestate"]);
    assert!(hook.headers.is_empty());
    assert!(!hook.allow_private);
    // Set but empty: nothing is forwarded.
    let config = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "webhook"),
        ("DISPATCHBOX_WEBHOOK_URL", "https://hooks.example.com/"),
        ("DISPATCHBOX_WEBHOOK_FORWARD_HEADERS", ""),
    ]))
    .expect("config");
    assert!(webhook(&config)
        .expect("webhook")
        .forward_headers
        .is_empty());

    // Static headers from a file, lines with commas.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("headers");
    std::fs::write(&path, "Authorization: Bearer s3cret,x\nX-Tenant: acme\n").expect("write");
    let config = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "webhook"),
        ("DISPATCHBOX_WEBHOOK_URL", "https://hooks.example.com/"),
        (
            "DISPATCHBOX_WEBHOOK_HEADERS_FILE",
            path.to_str().expect("utf8"),
        ),
    ]))
    .expect("headers file");
    assert_eq!(
        webhook(&config).expect("webhook").headers,
        vec![
            ("Authorization".to_owned(), "Bearer s3cret,x".to_owned()),
            ("X-Tenant".to_owned(), "acme".to_owned()),
        ]
    );
    assert!(!format!("{config:?}").contains("s3cret"));
    std::fs::write(&path, "Host: s3cret.example\n").expect("write");
    let e = error_for(&[
        ("DISPATCHBOX_SINKS", "webhook"),
        ("DISPATCHBOX_WEBHOOK_URL", "https://hooks.example.com/"),
        (
            "DISPATCHBOX_WEBHOOK_HEADERS_FILE",
            path.to_str().expect("utf8"),
        ),
    ]);
    assert_eq!(e.variable, "DISPATCHBOX_WEBHOOK_HEADERS_FILE");
    assert!(!e.to_string().contains("s3cret"), "{e}");
}

#[test]
fn a_named_webhook_endpoint_has_its_own_format() {
    use crate::sink::format::Format;
    let config = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "webhook,webhook:billing,webhook:audit"),
        ("DISPATCHBOX_WEBHOOK_URL", "https://a.example.com/x"),
        ("DISPATCHBOX_WEBHOOK_BILLING_URL", "https://b.example.com/x"),
        ("DISPATCHBOX_WEBHOOK_AUDIT_URL", "https://c.example.com/x"),
        ("DISPATCHBOX_WEBHOOK_FORMAT", "cloudevents"),
        ("DISPATCHBOX_WEBHOOK_BILLING_FORMAT", "native"),
    ]))
    .unwrap();
    let formats: Vec<(&str, &str)> = config
        .sinks
        .iter()
        .map(|sink| match sink {
            SinkConfig::Webhook(webhook) => (webhook.name.as_str(), webhook.format.name()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        formats,
        [
            ("webhook", "cloudevents"),
            ("webhook:billing", "native"),
            ("webhook:audit", "cloudevents")
        ]
    );
    let error = error_for(&[
        ("DISPATCHBOX_SINKS", "webhook:billing"),
        ("DISPATCHBOX_WEBHOOK_BILLING_URL", "https://b.example.com/x"),
        ("DISPATCHBOX_WEBHOOK_BILLING_FORMAT", "debezium"),
    ]);
    assert_eq!(error.variable, "DISPATCHBOX_WEBHOOK_BILLING_FORMAT");
    assert!(matches!(Format::default(), Format::Native));
}

fn rabbitmq(config: &Config) -> Option<&crate::sink::RabbitMqSinkConfig> {
    config.sinks.iter().find_map(|sink| match sink {
        SinkConfig::RabbitMq(rabbitmq) => Some(rabbitmq),
        _ => None,
    })
}

#[test]
fn rabbitmq_settings_have_defaults_and_a_url_file() {
    let config = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "rabbitmq,stdout"),
        (
            "DISPATCHBOX_RABBITMQ_URL",
            "amqp://relay:s3cret@rabbit:5672/%2f",
        ),
    ]))
    .expect("config");
    assert_eq!(sink_names(&config), vec!["rabbitmq", "stdout"]);
    let settings = rabbitmq(&config).expect("rabbitmq");
    assert_eq!(settings.exchange_template, "outbox");
    assert_eq!(
        settings.routing_key_template,
        "{aggregate_type}.{event_type}"
    );
    assert_eq!(settings.delivery_timeout, Duration::from_secs(30));
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "password printed"
    );
    Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "rabbitmq"),
        ("DISPATCHBOX_RABBITMQ_URL", "amqp://rabbit"),
        ("DISPATCHBOX_ROUTES", "order.*=rabbitmq"),
    ]))
    .expect("rabbitmq is a route target");

    // The default exchange, chosen by an empty setting.
    let config = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "rabbitmq"),
        ("DISPATCHBOX_RABBITMQ_URL", "amqp://rabbit"),
        ("DISPATCHBOX_RABBITMQ_EXCHANGE", ""),
        (
            "DISPATCHBOX_RABBITMQ_ROUTING_KEY",
            "outbox.{aggregate_type}",
        ),
    ]))
    .expect("config");
    assert_eq!(rabbitmq(&config).expect("rabbitmq").exchange_template, "");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("url");
    std::fs::write(&path, "amqps://relay:s3cret@rabbit/prod\n").expect("write");
    let config = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "rabbitmq"),
        (
            "DISPATCHBOX_RABBITMQ_URL_FILE",
            path.to_str().expect("utf8"),
        ),
    ]))
    .expect("url from a file");
    assert_eq!(
        rabbitmq(&config).expect("rabbitmq").url,
        "amqps://relay:s3cret@rabbit/prod"
    );
}

#[test]
fn rabbitmq_settings_are_validated_naming_the_variable() {
    let e = error_for(&[("DISPATCHBOX_SINKS", "rabbitmq")]);
    assert_eq!(e.variable, "DISPATCHBOX_RABBITMQ_URL");
    assert!(e.to_string().contains("is required"), "{e}");

    let refused = |pairs: &[(&str, &str)]| {
        let mut all = vec![
            ("DISPATCHBOX_SINKS", "rabbitmq"),
            (
                "DISPATCHBOX_RABBITMQ_URL",
                "amqp://relay:s3cret@rabbit:5672/%2f",
            ),
        ];
        all.extend_from_slice(pairs);
        error_for(&all)
    };
    for (url, rule) in [
        ("http://relay:s3cret@rabbit/", "amqp or amqps"),
        ("rabbit:5672", "amqp or amqps"),
        (
            "amqp://relay:s3cret@rabbit/%2f?heartbeat=x",
            "not a valid AMQP URI",
        ),
    ] {
        let e = refused(&[("DISPATCHBOX_RABBITMQ_URL", url)]);
        assert_eq!(e.variable, "DISPATCHBOX_RABBITMQ_URL", "{url}: {e}");
        assert!(e.to_string().contains(rule), "{url}: {e}");
        assert!(!e.to_string().contains("s3cret"), "password echoed: {e}");
    }
    for template in ["out box", "outbox.{aggregate}", "x.{event_type"] {
        let e = refused(&[("DISPATCHBOX_RABBITMQ_EXCHANGE", template)]);
        assert_eq!(
            e.variable, "DISPATCHBOX_RABBITMQ_EXCHANGE",
            "{template}: {e}"
        );
    }
    let long = "k".repeat(300);
    for template in ["{aggregate}.x", "{event_type", long.as_str()] {
        let e = refused(&[("DISPATCHBOX_RABBITMQ_ROUTING_KEY", template)]);
        assert_eq!(
            e.variable, "DISPATCHBOX_RABBITMQ_ROUTING_KEY",
            "{template}: {e}"
        );
    }
    let e = refused(&[("DISPATCHBOX_RABBITMQ_DELIVERY_TIMEOUT", "0s")]);
    assert_eq!(e.variable, "DISPATCHBOX_RABBITMQ_DELIVERY_TIMEOUT");
    let e = refused(&[
        ("DISPATCHBOX_RABBITMQ_DELIVERY_TIMEOUT", "5m"),
        ("DISPATCHBOX_SWEEP_LEASE", "1m"),
    ]);
    assert_eq!(e.variable, "DISPATCHBOX_SWEEP_LEASE");
    let e = error_for(&[
        ("DISPATCHBOX_SINKS", "rabbitmq"),
        ("DISPATCHBOX_RABBITMQ_URL", "amqp://rabbit"),
        ("DISPATCHBOX_RABBITMQ_URL_FILE", "/nonexistent"),
    ]);
    assert_eq!(e.variable, "DISPATCHBOX_RABBITMQ_URL");
    assert!(e.to_string().contains("not both"), "{e}");

    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").expect("write");
    let not_pem = not_pem.to_str().expect("utf8");
    let e = error_for(&[
        ("DISPATCHBOX_SINKS", "rabbitmq"),
        ("DISPATCHBOX_RABBITMQ_URL", "amqps://rabbit"),
        ("DISPATCHBOX_RABBITMQ_CA_FILE", not_pem),
    ]);
    assert_eq!(e.variable, "DISPATCHBOX_RABBITMQ_CA_FILE");
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
    let e = error_for(&[
        ("DISPATCHBOX_SINKS", "rabbitmq"),
        ("DISPATCHBOX_RABBITMQ_URL", "amqps://rabbit"),
        ("DISPATCHBOX_RABBITMQ_CA_FILE", "/nonexistent/ca.pem"),
    ]);
    assert_eq!(e.variable, "DISPATCHBOX_RABBITMQ_CA_FILE");
    assert!(e.to_string().contains("cannot read"), "{e}");
}

#[test]
fn nats_settings_are_validated_naming_the_variable() {
    let nats = |pairs: &[(&str, &str)]| {
        let mut all = vec![("DISPATCHBOX_SINKS", "nats")];
        all.extend_from_slice(pairs);
        Config::from_vars(vars(&all))
    };
    let e = nats(&[]).expect_err("url required");
    assert_eq!(e.variable, "DISPATCHBOX_NATS_URL");
    let e = nats(&[("DISPATCHBOX_NATS_URL", "http://relay:s3cret@n:4222")]).expect_err("scheme");
    assert_eq!(e.variable, "DISPATCHBOX_NATS_URL");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    for template in [
        "outbox.*",
        "outbox..{aggregate_type}",
        "out box",
        "outbox.{nope}",
    ] {
        let e = nats(&[
            ("DISPATCHBOX_NATS_URL", "nats://n:4222"),
            ("DISPATCHBOX_NATS_SUBJECT", template),
        ])
        .expect_err(template);
        assert_eq!(e.variable, "DISPATCHBOX_NATS_SUBJECT", "{template}: {e}");
    }
    let e = nats(&[
        ("DISPATCHBOX_NATS_URL", "nats://n:4222"),
        ("DISPATCHBOX_NATS_TIMEOUT", "0s"),
    ])
    .expect_err("zero timeout");
    assert_eq!(e.variable, "DISPATCHBOX_NATS_TIMEOUT");
    let e = nats(&[
        ("DISPATCHBOX_NATS_URL", "nats://n:4222"),
        ("DISPATCHBOX_NATS_TIMEOUT", "5m"),
    ])
    .expect_err("timeout over the lease");
    assert_eq!(e.variable, "DISPATCHBOX_SWEEP_LEASE");
    assert!(e.to_string().contains("DISPATCHBOX_NATS_TIMEOUT"), "{e}");

    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("bad.creds");
    std::fs::write(&creds, "SUAsecretseed not a creds file").expect("write");
    let e = nats(&[
        ("DISPATCHBOX_NATS_URL", "nats://n:4222"),
        ("DISPATCHBOX_NATS_CREDS_FILE", creds.to_str().expect("utf8")),
    ])
    .expect_err("bad creds");
    assert_eq!(e.variable, "DISPATCHBOX_NATS_CREDS_FILE");
    assert!(!e.to_string().contains("SUAsecretseed"), "{e}");
    let e = nats(&[
        ("DISPATCHBOX_NATS_URL", "nats://n:4222"),
        ("DISPATCHBOX_NATS_TOKEN", "t0ken"),
        ("DISPATCHBOX_NATS_CREDS_FILE", creds.to_str().expect("utf8")),
    ])
    .expect_err("token and creds");
    assert_eq!(e.variable, "DISPATCHBOX_NATS_TOKEN");

    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken-from-file\n").expect("write");
    let config = nats(&[
        ("DISPATCHBOX_NATS_URL", "nats://n:4222"),
        ("DISPATCHBOX_NATS_TOKEN_FILE", token.to_str().expect("utf8")),
        ("DISPATCHBOX_ROUTES", "order.*=nats"),
    ])
    .expect("config");
    assert_eq!(sink_names(&config), vec!["nats"]);
    let SinkConfig::Nats(nats) = &config.sinks[0] else {
        panic!("not nats")
    };
    assert_eq!(
        nats.auth,
        crate::sink::nats::NatsAuth::Token(Secret::new("t0ken-from-file".into()))
    );
    assert_eq!(nats.subject_template, "outbox.{aggregate_type}");
    assert_eq!(nats.timeout, Duration::from_secs(10));
    assert_eq!(nats.tls_ca_file, None);
    let e = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "nats"),
        ("DISPATCHBOX_NATS_URL", "tls://n:4222"),
        ("DISPATCHBOX_NATS_TLS_CA_FILE", "/nonexistent/ca.pem"),
    ]))
    .expect_err("missing ca file");
    assert_eq!(e.variable, "DISPATCHBOX_NATS_TLS_CA_FILE");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let e = Config::from_vars(vars(&[
        ("DISPATCHBOX_SINKS", "nats"),
        ("DISPATCHBOX_NATS_URL", "tls://n:4222"),
        (
            "DISPATCHBOX_NATS_TLS_CA_FILE",
            not_pem.to_str().expect("utf8"),
        ),
    ]))
    .expect_err("not a pem file");
    assert_eq!(e.variable, "DISPATCHBOX_NATS_TLS_CA_FILE");
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
    assert!(!format!("{config:?}").contains("t0ken"));
}

#[test]
fn redis_settings_are_validated_naming_the_variable() {
    let redis = |pairs: &[(&str, &str)]| {
        let mut all = vec![("DISPATCHBOX_SINKS", "stdout,redis")];
        all.extend_from_slice(pairs);
        Config::from_vars(vars(&all))
    };
    let e = redis(&[]).expect_err("url required");
    assert_eq!(e.variable, "DISPATCHBOX_REDIS_URL");
    let e = redis(&[("DISPATCHBOX_REDIS_URL", "redis-host:6379")]).expect_err("scheme");
    assert_eq!(e.variable, "DISPATCHBOX_REDIS_URL");
    let e = redis(&[
        ("DISPATCHBOX_REDIS_URL", "redis://r"),
        ("DISPATCHBOX_REDIS_STREAM", "outbox.{aggregate"),
    ])
    .expect_err("template");
    assert_eq!(e.variable, "DISPATCHBOX_REDIS_STREAM");
    for maxlen in ["0", "-5", "lots"] {
        let e = redis(&[
            ("DISPATCHBOX_REDIS_URL", "redis://r"),
            ("DISPATCHBOX_REDIS_MAXLEN", maxlen),
        ])
        .expect_err(maxlen);
        assert_eq!(e.variable, "DISPATCHBOX_REDIS_MAXLEN", "{maxlen}: {e}");
    }
    let e = redis(&[
        ("DISPATCHBOX_REDIS_URL", "redis://r"),
        ("DISPATCHBOX_REDIS_TIMEOUT", "never"),
    ])
    .expect_err("timeout");
    assert_eq!(e.variable, "DISPATCHBOX_REDIS_TIMEOUT");
    let e = redis(&[
        ("DISPATCHBOX_REDIS_URL", "redis://r"),
        ("DISPATCHBOX_REDIS_PASSWORD", "pw"),
        ("DISPATCHBOX_REDIS_PASSWORD_FILE", "/nonexistent"),
    ])
    .expect_err("both");
    assert_eq!(e.variable, "DISPATCHBOX_REDIS_PASSWORD");

    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("pw");
    std::fs::write(&password, "s3cret-from-file\n").expect("write");
    let config = redis(&[
        ("DISPATCHBOX_REDIS_URL", "rediss://relay:s3cret@r:6380/1"),
        (
            "DISPATCHBOX_REDIS_PASSWORD_FILE",
            password.to_str().expect("utf8"),
        ),
        ("DISPATCHBOX_REDIS_MAXLEN", "100000"),
        ("DISPATCHBOX_ROUTES", "order.*=redis;*=stdout"),
    ])
    .expect("config");
    assert_eq!(sink_names(&config), vec!["stdout", "redis"]);
    let SinkConfig::Redis(settings) = &config.sinks[1] else {
        panic!("not redis")
    };
    assert_eq!(settings.maxlen, Some(100_000));
    assert_eq!(
        settings.password.as_ref().map(|p| p.expose().as_str()),
        Some("s3cret-from-file")
    );
    let printed = format!("{config:?}");
    assert!(!printed.contains("s3cret"), "{printed}");

    let e = redis(&[
        ("DISPATCHBOX_REDIS_URL", "redis://r:6379"),
        (
            "DISPATCHBOX_REDIS_TLS_CA_FILE",
            password.to_str().expect("utf8"),
        ),
    ])
    .expect_err("a ca without tls");
    assert_eq!(e.variable, "DISPATCHBOX_REDIS_TLS_CA_FILE");
    let e = redis(&[
        ("DISPATCHBOX_REDIS_URL", "rediss://r:6380"),
        (
            "DISPATCHBOX_REDIS_TLS_CA_FILE",
            password.to_str().expect("utf8"),
        ),
    ])
    .expect_err("not a pem file");
    assert_eq!(e.variable, "DISPATCHBOX_REDIS_TLS_CA_FILE");
}

#[test]
fn log_level_takes_levels_and_target_directives_only() {
    for good in [
        "info",
        "DEBUG",
        " warn ",
        "off",
        "dispatchbox=debug",
        "info,dispatchbox=debug",
        "warn,dispatchbox::sink=trace,tokio_postgres=info",
    ] {
        let config = Config::from_vars(vars(&[("DISPATCHBOX_LOG_LEVEL", good)]))
            .unwrap_or_else(|e| panic!("{good:?}: {e}"));
        assert_eq!(config.log.level, good.trim());
    }
    for bad in [
        "verbose",
        "inof",
        "",
        "dispatchbox=loud",
        "info,=debug",
        "info,dispatchbox",
    ] {
        let error = error_for(&[("DISPATCHBOX_LOG_LEVEL", bad)]);
        assert_eq!(error.variable, "DISPATCHBOX_LOG_LEVEL", "{bad:?}");
        assert!(error.rule.contains("use error, warn, info"), "{error}");
    }
}
