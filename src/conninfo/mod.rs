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

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
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
    /// The `sslrootcert` file is not well-formed PEM.
    // The cause is in the message (not a `#[source]`): configuration errors print only
    // the top-level message.
    #[error("sslrootcert file {} is not valid PEM: {reason}", path.display())]
    BadRootCert {
        /// The file.
        path: PathBuf,
        /// Why, in words.
        reason: String,
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

mod parse;
mod tls;

use parse::{
    decode, host_list, listed_host, pair_hosts_and_ports, parse_url, port_list, redact,
    split_host_list, url_host,
};
use tls::build_tls_config;

#[cfg(test)]
mod tests;
