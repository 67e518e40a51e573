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

fn sink_names(config: &Config) -> Vec<&'static str> {
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
