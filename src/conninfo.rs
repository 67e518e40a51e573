//! The database URL (`DISPATCHBOX_DATABASE_URL`): parsing, redaction, and the TLS policy
//! shared by both connections to PostgreSQL, the SQL plane (tokio-postgres /
//! deadpool-postgres) and the replication plane (`replication::client`).
//!
//! Owns the meaning of `sslmode`, which follows libpq so operators can reuse the URLs they
//! already have:
//!
//! | sslmode | TLS | certificate chain | host name |
//! |---|---|---|---|
//! | `disable` | never | – | – |
//! | `prefer` (default) | if the server offers it, else plain | only with `sslrootcert` | no |
//! | `require` | always | only with `sslrootcert` | no |
//! | `verify-ca` | always | `sslrootcert`, else the Mozilla roots | no |
//! | `verify-full` | always | `sslrootcert`, else the Mozilla roots | yes (IPs via SAN) |
//!
//! Both planes use the one `rustls::ClientConfig` built here, so they cannot disagree.
//!
//! Also owns libpq's multi-host URLs (`postgres://u@a:5432,b:5433/db`, or `?host=a,b&port=…`)
//! and `target_session_attrs`: both planes try the hosts in the order given and take the first
//! one that accepts the connection and has the session properties asked for (`read-write`: not
//! a standby and not `default_transaction_read_only`), so after a failover they find the new
//! primary by themselves. The SQL plane gets the list through tokio-postgres' own
//! multi-host support ([`ConnInfo::sql_config`]); the replication client walks
//! [`ConnInfo::endpoints`] with the same rule.
//! Must not log or print the password: `Debug`, `Display` and [`ConnInfo::redacted_url`]
//! all redact it. Opens no connections except in the explicit `connect_sql`/`pool` helpers.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::task::JoinHandle;
use tokio_postgres_rustls::MakeRustlsConnect;

/// PostgreSQL's default port.
pub const DEFAULT_PORT: u16 = 5432;

/// `application_name` sent when the URL names none.
pub const DEFAULT_APPLICATION_NAME: &str = "dispatchbox";

/// What is printed instead of the password.
const REDACTED: &str = "***";

/// The query parameters we understand; anything else is rejected so a typo
/// (`sslmdoe=require`) cannot silently weaken TLS.
const KNOWN_PARAMS: &str =
    "sslmode, sslrootcert, connect_timeout, application_name, host, port, target_session_attrs";

/// How strictly the connection must use TLS (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it; plain TCP when it answers `N` to the SSLRequest.
    #[default]
    Prefer,
    /// TLS or fail; the certificate is not checked unless `sslrootcert` is given.
    Require,
    /// TLS with the certificate chain verified; the host name is not checked.
    VerifyCa,
    /// TLS with the chain and the host name (or IP address) verified.
    VerifyFull,
}

impl SslMode {
    /// The spelling used in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(ConnInfoError::InvalidSslMode {
                value: other.to_owned(),
            }),
        }
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// A directory holding the server's Unix socket (`.s.PGSQL.<port>`); never uses TLS.
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(name) => f.write_str(name),
            Host::Unix(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// One server address of the URL: a host and the port it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The TCP host or Unix socket directory.
    pub host: Host,
    /// The TCP port (also names the Unix socket file).
    pub port: u16,
}

impl Endpoint {
    /// `host:port` (IPv6 in brackets) or the socket file's path, for messages. Never has
    /// credentials.
    pub fn target(&self) -> String {
        match &self.host {
            Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", self.port),
            Host::Tcp(name) => format!("{name}:{}", self.port),
            Host::Unix(dir) => dir
                .join(format!(".s.PGSQL.{}", self.port))
                .display()
                .to_string(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.target())
    }
}

/// Which server a session must reach (libpq's `target_session_attrs`): with several hosts,
/// the first one whose sessions qualify is used. Whether a server's sessions are read-only
/// is what `SHOW transaction_read_only` says: a hot standby, or a server with
/// `default_transaction_read_only = on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// Any server that accepts the connection.
    #[default]
    Any,
    /// A server whose sessions can write: the primary.
    ReadWrite,
    /// A server whose sessions are read-only.
    ReadOnly,
}

impl TargetSessionAttrs {
    /// The spelling used in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
        }
    }

    /// Whether a server whose sessions are read-only (`read_only`) or not qualifies.
    pub fn accepts(self, read_only: bool) -> bool {
        match self {
            TargetSessionAttrs::Any => true,
            TargetSessionAttrs::ReadWrite => !read_only,
            TargetSessionAttrs::ReadOnly => read_only,
        }
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(TargetSessionAttrs::Any),
            "read-write" => Ok(TargetSessionAttrs::ReadWrite),
            "read-only" => Ok(TargetSessionAttrs::ReadOnly),
            other => Err(ConnInfoError::InvalidTargetSessionAttrs {
                value: other.to_owned(),
            }),
        }
    }
}

/// Why a database URL was rejected. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnInfoError {
    /// Not a URL at all.
    #[error(
        "database URL is not a valid URL ({0}); expected postgres://user:password@host:port/dbname"
    )]
    InvalidUrl(#[source] url::ParseError),
    /// A scheme other than postgres/postgresql.
    #[error("database URL scheme {scheme:?} is not supported; use postgres:// or postgresql://")]
    UnsupportedScheme {
        /// The scheme found.
        scheme: String,
    },
    /// No user name in the URL.
    #[error("database URL has no user name; write postgres://USER:PASSWORD@host/dbname")]
    MissingUser,
    /// Neither a host in the URL nor a `host` parameter.
    #[error(
        "database URL has no host; write postgres://user@HOST/dbname or add ?host=/socket/dir"
    )]
    MissingHost,
    /// A part that is not valid percent-encoded UTF-8.
    #[error("database URL {part} is not valid percent-encoded UTF-8")]
    InvalidEncoding {
        /// Which part (user name, password, database name, parameter).
        part: &'static str,
    },
    /// A query parameter we do not support.
    #[error("unknown database URL parameter {name:?}; supported: {KNOWN_PARAMS}")]
    UnknownParameter {
        /// The parameter name.
        name: String,
    },
    /// An `sslmode` we do not know.
    #[error(
        "invalid sslmode {value:?}; valid values: disable, prefer, require, verify-ca, verify-full"
    )]
    InvalidSslMode {
        /// The value found.
        value: String,
    },
    /// A `port` (in the URL or the `port` parameter) that is not a TCP port number.
    #[error("invalid port {value:?} in the database URL; expected a number from 1 to 65535")]
    InvalidPort {
        /// The value found.
        value: String,
    },
    /// A port list that fits neither one port for all hosts nor one port per host.
    #[error(
        "database URL names {hosts} hosts but {ports} ports; give one port for all hosts or \
         one per host (an empty entry means 5432)"
    )]
    PortCount {
        /// Hosts named.
        hosts: usize,
        /// Ports named.
        ports: usize,
    },
    /// A `target_session_attrs` we do not support.
    #[error(
        "invalid target_session_attrs {value:?}; valid values: any (the default), read-write \
         (the primary: what the relay needs with several hosts), read-only"
    )]
    InvalidTargetSessionAttrs {
        /// The value found.
        value: String,
    },
    /// `connect_timeout` that is not a whole number of seconds.
    #[error(
        "invalid connect_timeout {value:?}; expected a whole number of seconds (0 = wait forever)"
    )]
    InvalidConnectTimeout {
        /// The value found.
        value: String,
    },
    /// The `sslrootcert` file could not be read.
    #[error("cannot read sslrootcert file {}", path.display())]
    ReadRootCert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `sslrootcert` file holds no usable certificate.
    #[error("sslrootcert file {} contains no usable PEM certificate", path.display())]
    NoRootCert {
        /// The file.
        path: PathBuf,
    },
    /// `verify-full` against a host name rustls cannot check.
    #[error("host {host:?} is not a valid DNS name or IP address for sslmode=verify-full")]
    InvalidServerName {
        /// The host.
        host: String,
    },
    /// rustls refused the TLS configuration.
    #[error("cannot build the TLS configuration for the database connection")]
    Tls(#[source] rustls::Error),
}

/// Why the SQL plane could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlConnectError {
    /// tokio-postgres failed (network, TLS, authentication, server error).
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        /// Redacted URL of the target.
        target: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// deadpool refused the pool settings.
    #[error("cannot build the PostgreSQL connection pool for {target}")]
    Pool {
        /// Redacted URL of the target.
        target: String,
        /// The pool's error.
        #[source]
        source: deadpool_postgres::BuildError,
    },
}

/// A parsed database URL plus the TLS configuration it implies.
///
/// Cheap to clone (the TLS configuration is shared). Printing it never shows the password.
#[derive(Clone)]
pub struct ConnInfo {
    /// The URL as given, with the password replaced by `***`.
    redacted: String,
    /// Never empty; tried in this order.
    endpoints: Vec<Endpoint>,
    target_session_attrs: TargetSessionAttrs,
    user: String,
    password: Option<String>,
    dbname: String,
    ssl_mode: SslMode,
    ssl_root_cert: Option<PathBuf>,
    connect_timeout: Option<Duration>,
    application_name: Option<String>,
    /// Implements `sslmode`; built even when TLS is never used, because tokio-postgres'
    /// connector type needs one. [`ConnInfo::tls_config_for`] hides it in that case.
    tls: Arc<ClientConfig>,
}

impl ConnInfo {
    /// Parses a `postgres://` / `postgresql://` URL and builds its TLS configuration
    /// (reading `sslrootcert`, so a bad file is reported at startup, not at first connect).
    ///
    /// Several hosts follow libpq: `postgres://u@a:5432,b:5433/db`, or the `host` and `port`
    /// parameters as comma-separated lists (`?host=a,b&port=5432,5433`). A single port
    /// applies to every host; an empty entry means 5432.
    pub fn parse(input: &str) -> Result<Self, ConnInfoError> {
        // The url crate knows one host per URL: a host list is taken out and parsed piece by
        // piece, and the rest of the URL parsed with a placeholder in its place.
        let (input_one_host, listed) = match split_host_list(input) {
            Some((patched, pieces)) => (patched, Some(pieces)),
            None => (input.to_owned(), None),
        };
        let url = parse_url(&input_one_host)?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(ConnInfoError::UnsupportedScheme {
                scheme: url.scheme().to_owned(),
            });
        }
        let user = decode(url.username(), "user name")?;
        if user.is_empty() {
            return Err(ConnInfoError::MissingUser);
        }
        let password = url.password().map(|p| decode(p, "password")).transpose()?;
        let dbname = decode(url.path().trim_start_matches('/'), "database name")?;
        let dbname = if dbname.is_empty() {
            user.clone()
        } else {
            dbname
        };

        // (host, port) as the URL's authority gives them; the host is `None` when empty.
        let authority: Vec<(Option<Host>, Option<u16>)> = match listed {
            Some(pieces) => pieces
                .iter()
                .map(|piece| listed_host(piece))
                .collect::<Result<_, _>>()?,
            None => vec![(url_host(&url), url.port())],
        };
        let mut host_param = None;
        let mut port_param = None;
        let mut ssl_mode = SslMode::default();
        let mut ssl_root_cert = None;
        let mut connect_timeout = None;
        let mut application_name = None;
        let mut target_session_attrs = TargetSessionAttrs::default();
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "sslmode" => ssl_mode = value.parse()?,
                "sslrootcert" => ssl_root_cert = Some(PathBuf::from(value.as_ref())),
                "connect_timeout" => {
                    let secs: u64 =
                        value
                            .parse()
                            .map_err(|_| ConnInfoError::InvalidConnectTimeout {
                                value: value.to_string(),
                            })?;
                    connect_timeout = (secs > 0).then(|| Duration::from_secs(secs));
                }
                "application_name" => application_name = Some(value.into_owned()),
                "host" => host_param = Some(host_list(&value)?),
                "port" => port_param = Some(port_list(&value)?),
                "target_session_attrs" => target_session_attrs = value.parse()?,
                other => {
                    return Err(ConnInfoError::UnknownParameter {
                        name: other.to_owned(),
                    })
                }
            }
        }
        let hosts = match host_param {
            Some(hosts) => hosts,
            None => authority
                .iter()
                .map(|(host, _)| host.clone())
                .collect::<Option<Vec<_>>>()
                .ok_or(ConnInfoError::MissingHost)?,
        };
        let ports = port_param
            .unwrap_or_else(|| authority.iter().map(|&(_, port)| port).collect::<Vec<_>>());
        let endpoints = pair_hosts_and_ports(hosts, ports)?;
        for endpoint in &endpoints {
            if let Host::Tcp(name) = &endpoint.host {
                if ssl_mode == SslMode::VerifyFull && ServerName::try_from(name.as_str()).is_err() {
                    return Err(ConnInfoError::InvalidServerName { host: name.clone() });
                }
            }
        }
        let tls = build_tls_config(ssl_mode, ssl_root_cert.as_deref())?;
        Ok(ConnInfo {
            redacted: redact(input),
            endpoints,
            target_session_attrs,
            user,
            password,
            dbname,
            ssl_mode,
            ssl_root_cert,
            connect_timeout,
            application_name,
            tls,
        })
    }

    /// The servers to try, in order (never empty).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// What a server must be for a session to use it (`target_session_attrs`).
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// The role to log in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password, if the URL has one. Never log it.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The database name (defaults to the user name, as in libpq).
    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The TLS policy.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The CA bundle given with `sslrootcert`.
    pub fn ssl_root_cert(&self) -> Option<&Path> {
        self.ssl_root_cert.as_deref()
    }

    /// How long connecting may take in total; `None` waits for the OS.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// `application_name` to report (`dispatchbox` unless the URL sets one).
    pub fn application_name(&self) -> &str {
        self.application_name
            .as_deref()
            .unwrap_or(DEFAULT_APPLICATION_NAME)
    }

    /// The rustls configuration implementing `sslmode` for connections to `endpoint`;
    /// `None` when TLS is never attempted (`sslmode=disable`, or a Unix socket, on which
    /// libpq never uses TLS either).
    pub fn tls_config_for(&self, endpoint: &Endpoint) -> Option<&Arc<ClientConfig>> {
        let tcp = matches!(endpoint.host, Host::Tcp(_));
        (tcp && self.ssl_mode != SslMode::Disable).then_some(&self.tls)
    }

    /// The URL with the password replaced by `***`, for logs and error messages.
    pub fn redacted_url(&self) -> String {
        self.redacted.clone()
    }

    /// A tokio-postgres configuration with the same hosts (tried in order, as libpq does),
    /// `target_session_attrs`, credentials and `sslmode`.
    ///
    /// Use it with [`ConnInfo::tls_connector`]: tokio-postgres only knows
    /// disable/prefer/require, so verify-ca/verify-full map to `Require` and the
    /// certificate checks live in our rustls verifier.
    pub fn sql_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(self.application_name())
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .target_session_attrs(match self.target_session_attrs {
                TargetSessionAttrs::Any => tokio_postgres::config::TargetSessionAttrs::Any,
                TargetSessionAttrs::ReadWrite => {
                    tokio_postgres::config::TargetSessionAttrs::ReadWrite
                }
                TargetSessionAttrs::ReadOnly => {
                    tokio_postgres::config::TargetSessionAttrs::ReadOnly
                }
            });
        // One port per host, so tokio-postgres pairs them as we did.
        for endpoint in &self.endpoints {
            match &endpoint.host {
                Host::Tcp(name) => config.host(name),
                Host::Unix(dir) => config.host_path(dir),
            };
            config.port(endpoint.port);
        }
        if let Some(password) = &self.password {
            config.password(password);
        }
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout(timeout);
        }
        config.ssl_mode(match self.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        config
    }

    /// The TLS connector for [`ConnInfo::sql_config`], sharing this URL's rustls policy.
    pub fn tls_connector(&self) -> MakeRustlsConnect {
        MakeRustlsConnect::new(ClientConfig::clone(&self.tls))
    }

    /// Opens one SQL connection and drives it on a spawned task. The task ends when the
    /// client is dropped or the connection fails (the failure is logged at WARN).
    pub async fn connect_sql(
        &self,
    ) -> Result<(tokio_postgres::Client, JoinHandle<()>), SqlConnectError> {
        let (client, connection) = self
            .sql_config()
            .connect(self.tls_connector())
            .await
            .map_err(|source| SqlConnectError::Connect {
                target: self.redacted_url(),
                source,
            })?;
        let target = self.redacted_url();
        let handle = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(target = %target, error = %error, "SQL connection closed with an error");
            }
        });
        Ok((client, handle))
    }

    /// A connection pool of at most `max_size` SQL connections, opened lazily.
    pub fn pool(&self, max_size: usize) -> Result<deadpool_postgres::Pool, SqlConnectError> {
        self.pool_with_setup(max_size, None)
    }

    /// Like [`ConnInfo::pool`], running `setup` (e.g. `SET` statements) on every new
    /// connection before it is handed out; a connection whose setup fails is discarded.
    pub fn pool_with_setup(
        &self,
        max_size: usize,
        setup: Option<&'static str>,
    ) -> Result<deadpool_postgres::Pool, SqlConnectError> {
        let manager = deadpool_postgres::Manager::from_config(
            self.sql_config(),
            self.tls_connector(),
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let mut builder = deadpool_postgres::Pool::builder(manager)
            .max_size(max_size)
            .runtime(deadpool_postgres::Runtime::Tokio1);
        if let Some(setup) = setup {
            builder = builder.post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(setup)
                        .await
                        .map_err(deadpool_postgres::HookError::Backend)
                })
            }));
        }
        builder.build().map_err(|source| SqlConnectError::Pool {
            target: self.redacted_url(),
            source,
        })
    }
}

impl FromStr for ConnInfo {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnInfo::parse(s)
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_url())
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("endpoints", &self.endpoints)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("dbname", &self.dbname)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("connect_timeout", &self.connect_timeout)
            .field("application_name", &self.application_name)
            .finish_non_exhaustive()
    }
}

/// Stands in for an empty host (Unix socket URLs) while the url crate parses.
const PLACEHOLDER_HOST: &str = "dispatchbox-unix-socket.invalid";

/// Byte range of the URL's user info (`user[:password]`), if it has any.
fn user_info(input: &str) -> Option<std::ops::Range<usize>> {
    let start = input.find("://")? + 3;
    let rest = &input[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_len].rfind('@')?;
    Some(start..start + at)
}

fn with_placeholder_host(input: &str) -> Option<String> {
    let info = user_info(input)?;
    let host_at = info.end + 1;
    let mut patched = input.to_owned();
    patched.insert_str(host_at, PLACEHOLDER_HOST);
    Some(patched)
}

/// Parses a URL that names at most one host, accepting libpq's empty host
/// (`postgres://user@/db?host=/socket/dir`), which the url crate refuses after user info:
/// the placeholder stands in for it, and the `host` parameter must then replace it.
fn parse_url(input: &str) -> Result<url::Url, ConnInfoError> {
    match url::Url::parse(input) {
        Err(url::ParseError::EmptyHost) => {
            let patched = with_placeholder_host(input).ok_or(ConnInfoError::MissingHost)?;
            url::Url::parse(&patched).map_err(ConnInfoError::InvalidUrl)
        }
        other => other.map_err(ConnInfoError::InvalidUrl),
    }
}

/// The URL's host, `None` for the placeholder (no host given).
fn url_host(url: &url::Url) -> Option<Host> {
    url.host().and_then(|h| match h {
        url::Host::Domain(PLACEHOLDER_HOST) => None,
        // Strip the brackets the URL syntax needs around IPv6 literals.
        url::Host::Ipv6(ip) => Some(Host::Tcp(ip.to_string())),
        other => Some(Host::Tcp(other.to_string())),
    })
}

/// When the URL's authority lists several hosts (`a:1,b:2`): the URL with the list replaced
/// by the placeholder host, and the list's pieces.
fn split_host_list(input: &str) -> Option<(String, Vec<String>)> {
    let start = input.find("://")? + 3;
    let rest = &input[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let hosts_start = rest[..authority_len].rfind('@').map_or(0, |at| at + 1);
    let hosts = &rest[hosts_start..authority_len];
    if !hosts.contains(',') {
        return None;
    }
    let range = start + hosts_start..start + authority_len;
    let mut patched = input.to_owned();
    patched.replace_range(range, PLACEHOLDER_HOST);
    Some((patched, hosts.split(',').map(str::to_owned).collect()))
}

/// One `host[:port]` piece of a host list, parsed by the url crate like a lone host.
fn listed_host(piece: &str) -> Result<(Option<Host>, Option<u16>), ConnInfoError> {
    if piece.is_empty() || piece.starts_with(':') {
        return Err(ConnInfoError::MissingHost);
    }
    let url = url::Url::parse(&format!("postgres://{piece}/")).map_err(|error| match error {
        url::ParseError::InvalidPort => ConnInfoError::InvalidPort {
            value: piece.rsplit(':').next().unwrap_or(piece).to_owned(),
        },
        other => ConnInfoError::InvalidUrl(other),
    })?;
    Ok((url_host(&url), url.port()))
}

/// The `host` parameter: comma-separated names or addresses, or Unix socket directories
/// (anything starting with `/`).
fn host_list(value: &str) -> Result<Vec<Host>, ConnInfoError> {
    value
        .split(',')
        .map(|host| match host {
            "" => Err(ConnInfoError::MissingHost),
            dir if dir.starts_with('/') => Ok(Host::Unix(PathBuf::from(dir))),
            name => Ok(Host::Tcp(name.to_owned())),
        })
        .collect()
}

/// The `port` parameter: comma-separated ports; an empty entry means the default.
fn port_list(value: &str) -> Result<Vec<Option<u16>>, ConnInfoError> {
    value
        .split(',')
        .map(|port| match port.trim() {
            "" => Ok(None),
            port => match port.parse::<u16>() {
                Ok(0) | Err(_) => Err(ConnInfoError::InvalidPort {
                    value: port.to_owned(),
                }),
                Ok(port) => Ok(Some(port)),
            },
        })
        .collect()
}

/// libpq's pairing: one port for every host, or one port per host.
fn pair_hosts_and_ports(
    hosts: Vec<Host>,
    ports: Vec<Option<u16>>,
) -> Result<Vec<Endpoint>, ConnInfoError> {
    let port_of = |index: usize| match ports.as_slice() {
        [one] => one.unwrap_or(DEFAULT_PORT),
        many => many.get(index).copied().flatten().unwrap_or(DEFAULT_PORT),
    };
    if ports.len() > 1 && ports.len() != hosts.len() {
        return Err(ConnInfoError::PortCount {
            hosts: hosts.len(),
            ports: ports.len(),
        });
    }
    let endpoints: Vec<Endpoint> = hosts
        .into_iter()
        .enumerate()
        .map(|(index, host)| Endpoint {
            host,
            port: port_of(index),
        })
        .collect();
    for endpoint in &endpoints {
        if matches!(&endpoint.host, Host::Tcp(name) if name.is_empty()) {
            return Err(ConnInfoError::MissingHost);
        }
    }
    if endpoints.is_empty() {
        return Err(ConnInfoError::MissingHost);
    }
    Ok(endpoints)
}

/// Replaces the password in the URL text; works on the raw input so that whatever the
/// operator typed is what they see, minus the secret.
fn redact(input: &str) -> String {
    let Some(info) = user_info(input) else {
        return input.to_owned();
    };
    match input[info.clone()].find(':') {
        Some(colon) => {
            let password_start = info.start + colon + 1;
            format!(
                "{}{REDACTED}{}",
                &input[..password_start],
                &input[info.end..]
            )
        }
        None => input.to_owned(),
    }
}

fn decode(raw: &str, part: &'static str) -> Result<String, ConnInfoError> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ConnInfoError::InvalidEncoding { part })
}

/// ring explicitly, so no process-wide default provider has to be installed first.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_roots(path: Option<&Path>) -> Result<RootCertStore, ConnInfoError> {
    let Some(path) = path else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let read_err = |source| ConnInfoError::ReadRootCert {
        path: path.to_owned(),
        source,
    };
    let pem = std::fs::read(path).map_err(read_err)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ConnInfoError::NoRootCert {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// The one place `sslmode` becomes certificate checks (see the module table).
///
/// For `disable` the result is never used for a handshake (see `ConnInfo::tls`).
fn build_tls_config(
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<Arc<ClientConfig>, ConnInfoError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root_cert) {
        (SslMode::Disable, _) => Arc::new(NoCertificateVerification {
            provider: Arc::clone(&provider),
        }),
        // libpq: with a root certificate, prefer/require verify the chain like verify-ca.
        (SslMode::Prefer | SslMode::Require, Some(path)) => {
            Arc::new(ChainOnlyVerifier::new(load_roots(Some(path))?, &provider)?)
        }
        (SslMode::Prefer | SslMode::Require, None) => Arc::new(NoCertificateVerification {
            provider: Arc::clone(&provider),
        }),
        (SslMode::VerifyCa, path) => {
            Arc::new(ChainOnlyVerifier::new(load_roots(path)?, &provider)?)
        }
        (SslMode::VerifyFull, path) => WebPkiServerVerifier::builder_with_provider(
            Arc::new(load_roots(path)?),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| ConnInfoError::Tls(rustls::Error::General(e.to_string())))?,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ConnInfoError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `sslmode=require` without a CA: encryption against passive eavesdroppers only, as in
/// libpq. Handshake signatures are still checked so the session keys belong to the
/// presented certificate.
#[derive(Debug)]
struct NoCertificateVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoCertificateVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the full webpki chain check, minus the host name. webpki checks the name
/// last, after chain, validity and usage, so forgiving only the name error forgives
/// nothing else.
#[derive(Debug)]
struct ChainOnlyVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ChainOnlyVerifier {
    fn new(roots: RootCertStore, provider: &Arc<CryptoProvider>) -> Result<Self, ConnInfoError> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                .build()
                .map_err(|e| ConnInfoError::Tls(rustls::Error::General(e.to_string())))?;
        Ok(ChainOnlyVerifier { inner })
    }
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
            let info =
                ConnInfo::parse(&format!("postgres://u:p@localhost/d?sslmode={mode}")).unwrap();
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
}
