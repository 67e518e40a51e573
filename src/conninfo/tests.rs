#![allow(clippy::unwrap_used)]

use super::*;

fn tcp(host: &str, port: u16) -> Endpoint {
    Endpoint {
        host: Host::Tcp(host.into()),
        port,
    }
}

#[test]
fn parses_a_full_url() {
    let info = ConnInfo::parse(
        "postgresql://relay:s%40cr%2Ft%3Apw@db.example.com:6543/app%20db?sslmode=require&connect_timeout=7&application_name=relay-1",
    )
    .unwrap();
    assert_eq!(info.endpoints(), [tcp("db.example.com", 6543)]);
    assert_eq!(info.user(), "relay");
    assert_eq!(info.password(), Some("s@cr/t:pw"));
    assert_eq!(info.dbname(), "app db");
    assert_eq!(info.ssl_mode(), SslMode::Require);
    assert_eq!(info.connect_timeout(), Some(Duration::from_secs(7)));
    assert_eq!(info.application_name(), "relay-1");
    assert_eq!(info.target_session_attrs(), TargetSessionAttrs::Any);
    assert!(info.tls_config_for(&info.endpoints()[0]).is_some());
}

#[test]
fn applies_libpq_defaults() {
    let info = ConnInfo::parse("postgres://alice@localhost").unwrap();
    assert_eq!(info.endpoints(), [tcp("localhost", DEFAULT_PORT)]);
    assert_eq!(info.dbname(), "alice");
    assert_eq!(info.password(), None);
    assert_eq!(info.ssl_mode(), SslMode::Prefer);
    assert_eq!(info.connect_timeout(), None);
    assert_eq!(info.application_name(), DEFAULT_APPLICATION_NAME);
    assert!(
        info.tls_config_for(&info.endpoints()[0]).is_some(),
        "prefer needs a TLS config"
    );

    let info = ConnInfo::parse("postgres://alice@localhost/x?connect_timeout=0").unwrap();
    assert_eq!(info.connect_timeout(), None);
}

#[test]
fn unwraps_ipv6_literals() {
    let info = ConnInfo::parse("postgres://u@[::1]:5433/d").unwrap();
    assert_eq!(info.endpoints(), [tcp("::1", 5433)]);
    assert_eq!(info.endpoints()[0].target(), "[::1]:5433");
}

#[test]
fn disable_builds_no_tls() {
    let info = ConnInfo::parse("postgres://u:p@h/d?sslmode=disable").unwrap();
    assert!(info.tls_config_for(&info.endpoints()[0]).is_none());
    assert_eq!(
        info.sql_config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Disable
    );
}

#[test]
fn maps_verify_modes_to_require_for_the_sql_plane() {
    for mode in ["require", "verify-ca", "verify-full"] {
        let info = ConnInfo::parse(&format!("postgres://u:p@localhost/d?sslmode={mode}")).unwrap();
        let config = info.sql_config();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require,
            "{mode}"
        );
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_password(), Some(&b"p"[..]));
        assert_eq!(config.get_dbname(), Some("d"));
    }
}

#[test]
fn accepts_a_unix_socket_directory() {
    let info =
        ConnInfo::parse("postgres://u@/d?host=%2Fvar%2Frun%2Fpostgresql&sslmode=verify-full")
            .unwrap();
    assert_eq!(
        info.endpoints(),
        [Endpoint {
            host: Host::Unix("/var/run/postgresql".into()),
            port: DEFAULT_PORT
        }]
    );
    assert!(
        info.tls_config_for(&info.endpoints()[0]).is_none(),
        "TLS is never used on a Unix socket"
    );
}

#[test]
fn lists_several_hosts_in_the_authority() {
    let info = ConnInfo::parse(
        "postgres://relay:pw@10.0.0.1:5432,db-b:5433,[::1]/app?target_session_attrs=read-write&sslmode=disable",
    )
    .unwrap();
    assert_eq!(
        info.endpoints(),
        [
            tcp("10.0.0.1", 5432),
            tcp("db-b", 5433),
            tcp("::1", DEFAULT_PORT)
        ]
    );
    assert_eq!(info.user(), "relay");
    assert_eq!(info.password(), Some("pw"));
    assert_eq!(info.dbname(), "app");
    assert_eq!(info.target_session_attrs(), TargetSessionAttrs::ReadWrite);
    assert_eq!(
        info.redacted_url(),
        "postgres://relay:***@10.0.0.1:5432,db-b:5433,[::1]/app?target_session_attrs=read-write&sslmode=disable"
    );
    assert!(!format!("{info:?}").contains("pw\""));
}

#[test]
fn lists_several_hosts_in_parameters() {
    let info = ConnInfo::parse("postgres://u@/d?host=a,b,%2Frun%2Fpg&port=6000,,6002").unwrap();
    assert_eq!(
        info.endpoints(),
        [
            tcp("a", 6000),
            tcp("b", DEFAULT_PORT),
            Endpoint {
                host: Host::Unix("/run/pg".into()),
                port: 6002
            }
        ]
    );
    // One port for every host, from the parameter or from the URL.
    let info = ConnInfo::parse("postgres://u@/d?host=a,b&port=6000").unwrap();
    assert_eq!(info.endpoints(), [tcp("a", 6000), tcp("b", 6000)]);
    let info = ConnInfo::parse("postgres://u@:6001/d?host=a,b").unwrap();
    assert_eq!(info.endpoints(), [tcp("a", 6001), tcp("b", 6001)]);
    // The port parameter overrides the URL's ports.
    let info = ConnInfo::parse("postgres://u@a:1,b:2/d?port=7,8").unwrap();
    assert_eq!(info.endpoints(), [tcp("a", 7), tcp("b", 8)]);
    // TLS is per host: never on a Unix socket.
    let info = ConnInfo::parse("postgres://u@/d?host=a,/run/pg&sslmode=require").unwrap();
    assert!(info.tls_config_for(&info.endpoints()[0]).is_some());
    assert!(info.tls_config_for(&info.endpoints()[1]).is_none());
}

#[test]
fn gives_tokio_postgres_every_host_in_order() {
    let info = ConnInfo::parse(
        "postgres://u:p@127.0.0.1:5432,127.0.0.1:5433/d?target_session_attrs=read-write",
    )
    .unwrap();
    let config = info.sql_config();
    assert_eq!(
        config.get_hosts(),
        [
            tokio_postgres::config::Host::Tcp("127.0.0.1".into()),
            tokio_postgres::config::Host::Tcp("127.0.0.1".into())
        ]
    );
    assert_eq!(config.get_ports(), [5432, 5433]);
    assert_eq!(
        config.get_target_session_attrs(),
        tokio_postgres::config::TargetSessionAttrs::ReadWrite
    );
}

#[test]
fn target_session_attrs_decide_by_read_only() {
    assert!(TargetSessionAttrs::Any.accepts(true) && TargetSessionAttrs::Any.accepts(false));
    assert!(TargetSessionAttrs::ReadWrite.accepts(false));
    assert!(!TargetSessionAttrs::ReadWrite.accepts(true));
    assert!(TargetSessionAttrs::ReadOnly.accepts(true));
    assert!(!TargetSessionAttrs::ReadOnly.accepts(false));
    for attrs in ["any", "read-write", "read-only"] {
        assert_eq!(attrs.parse::<TargetSessionAttrs>().unwrap().as_str(), attrs);
    }
}

#[test]
fn rejects_bad_input_with_a_named_reason() {
    let cases: &[(&str, &str)] = &[
        ("mysql://u@h/d", "scheme \"mysql\""),
        ("postgres://h/d", "no user name"),
        ("postgres://u@/d", "no host"),
        ("postgres://u@:5432/d", "no host"),
        (
            "postgres://u@h/d?sslmdoe=require",
            "unknown database URL parameter \"sslmdoe\"",
        ),
        (
            "postgres://u@h/d?sslmode=strict",
            "valid values: disable, prefer, require, verify-ca, verify-full",
        ),
        (
            "postgres://u@h/d?connect_timeout=-1",
            "invalid connect_timeout \"-1\"",
        ),
        ("postgres://u:%FF@h/d", "password is not valid"),
        (
            "postgres://u@h/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
            "cannot read sslrootcert file /nonexistent/ca.pem",
        ),
        ("not a url", "not a valid URL"),
        ("postgres://u@a,,b/d", "no host"),
        ("postgres://u@a,:5433/d", "no host"),
        ("postgres://u@a:1,b:x/d", "invalid port \"x\""),
        ("postgres://u@a,b/d?port=1,2,3", "names 2 hosts but 3 ports"),
        ("postgres://u@/d?host=a,b&port=0", "invalid port \"0\""),
        ("postgres://u@/d?host=a,", "no host"),
        (
            "postgres://u@a,b/d?target_session_attrs=primary",
            "invalid target_session_attrs \"primary\"; valid values: any",
        ),
    ];
    for (url, expected) in cases {
        let err = ConnInfo::parse(url).unwrap_err().to_string();
        assert!(err.contains(expected), "{url}: {err:?} lacks {expected:?}");
    }
}

#[test]
fn never_prints_the_password() {
    let info = ConnInfo::parse("postgres://relay:hunter2@db:5432/app?sslmode=disable").unwrap();
    let shown = [
        info.redacted_url(),
        info.to_string(),
        format!("{info:?}"),
        format!("{:?}", info.sql_config().get_hosts()),
    ];
    for text in &shown {
        assert!(!text.contains("hunter2"), "password leaked: {text}");
    }
    assert_eq!(
        info.redacted_url(),
        "postgres://relay:***@db:5432/app?sslmode=disable"
    );
    assert!(format!("{info:?}").contains("password: Some(\"***\")"));

    let info = ConnInfo::parse("postgres://relay@db/app").unwrap();
    assert_eq!(info.redacted_url(), "postgres://relay@db/app");

    // An unencoded '@' in the password: the last '@' ends the user info.
    let info = ConnInfo::parse("postgres://relay:p@ss@db/app").unwrap();
    assert_eq!(info.password(), Some("p@ss"));
    assert_eq!(info.redacted_url(), "postgres://relay:***@db/app");

    let info = ConnInfo::parse("postgres://relay:pw@/app?host=/run/pg").unwrap();
    assert_eq!(
        info.redacted_url(),
        "postgres://relay:***@/app?host=/run/pg"
    );
}

#[test]
fn rejects_a_root_cert_file_without_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.pem");
    std::fs::write(&path, "not a certificate\n").unwrap();
    let err = ConnInfo::parse(&format!(
        "postgres://u@h/d?sslmode=verify-full&sslrootcert={}",
        path.display()
    ))
    .unwrap_err();
    assert!(matches!(err, ConnInfoError::NoRootCert { .. }), "{err}");
}

#[test]
fn rejects_a_malformed_root_cert_file_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.pem");
    std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
    let err = ConnInfo::parse(&format!(
        "postgres://u@h/d?sslmode=verify-full&sslrootcert={}",
        path.display()
    ))
    .unwrap_err();
    assert!(matches!(err, ConnInfoError::BadRootCert { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("cut.pem"), "{message}");
    assert!(message.contains("END CERTIFICATE"), "{message}");
}

#[test]
fn loads_a_root_cert_bundle() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    for mode in ["require", "verify-ca", "verify-full"] {
        let info = ConnInfo::parse(&format!(
            "postgres://u@127.0.0.1/d?sslmode={mode}&sslrootcert={}",
            path.display()
        ))
        .unwrap();
        assert_eq!(info.ssl_root_cert(), Some(path.as_path()));
        assert!(info.tls_config_for(&info.endpoints()[0]).is_some());
    }
}
