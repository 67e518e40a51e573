//! Errors of the replication connection, classified where they are produced: the server's
//! own errors keep their SQLSTATE so the relay can tell a missing slot (42704) from an
//! invalidated one (55000) or one held by another replica (55006).

use std::fmt;
use std::io;
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;

use crate::conninfo::{SslMode, TargetSessionAttrs};

/// An `ErrorResponse` from the server, with the fields operators and the relay act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL` or `PANIC` (the non-localized severity).
    pub severity: String,
    /// The SQLSTATE, e.g. `42704`.
    pub code: String,
    /// The primary message, e.g. `replication slot "x" does not exist`.
    pub message: String,
    /// Optional detail (e.g. why a slot was invalidated).
    pub detail: Option<String>,
    /// Optional hint from the server.
    pub hint: Option<String>,
}

impl ServerError {
    /// Decodes the fields of an ErrorResponse or NoticeResponse.
    pub(crate) fn from_fields(mut fields: ErrorFields<'_>) -> Result<Self, ProtocolError> {
        let mut error = ServerError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        let mut localized_severity = String::new();
        while let Some(field) = fields.next().map_err(|source| ProtocolError::Malformed {
            what: "ErrorResponse",
            source,
        })? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => error.severity = value,
                b'S' => localized_severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
        }
        if error.severity.is_empty() {
            error.severity = localized_severity;
        }
        Ok(error)
    }

    /// Whether retrying the same thing later can succeed: the connection broke, the
    /// server is shutting down or starting, or it ran short of a resource (class 53:
    /// disk full while decoding spills a large transaction to disk, out of memory, too
    /// many connections, a configured limit such as `max_replication_slots` reached).
    /// Those pass or can be fixed while the relay waits, and the same WAL is decoded again
    /// after reconnecting. Slot and permission problems are definite.
    pub fn is_transient(&self) -> bool {
        self.code.starts_with("08")
            || self.code.starts_with("53")
            || matches!(self.code.as_str(), "57P01" | "57P02" | "57P03")
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (SQLSTATE {}, {})",
            self.message, self.code, self.severity
        )?;
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// The server sent bytes we cannot accept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message header with a length below 4 (the length counts itself).
    #[error("invalid message length from the server (the minimum is 4)")]
    InvalidLength(#[source] io::Error),
    /// A message larger than the configured maximum.
    #[error("message of {len} bytes from the server exceeds the maximum frame size of {max} bytes; raise the limit if rows this large are expected")]
    FrameTooLarge {
        /// Declared size including the tag.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// CopyData without a sub-message tag.
    #[error("empty CopyData message in the replication stream")]
    EmptyCopyData,
    /// A CopyData sub-message other than `'w'`/`'k'`.
    #[error("unknown replication message type {tag:?} in the replication stream")]
    UnknownReplicationMessage {
        /// The tag.
        tag: char,
    },
    /// A replication message of the wrong size.
    #[error("{what} message is {len} bytes; expected {expected}")]
    Length {
        /// Which message.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The rule.
        expected: &'static str,
    },
    /// A keepalive whose reply flag is neither 0 nor 1.
    #[error(
        "invalid reply-requested flag {value} in a primary keepalive message (expected 0 or 1)"
    )]
    ReplyFlag {
        /// The byte.
        value: u8,
    },
    /// A message that does not belong at this point of the conversation.
    #[error("unexpected message {tag:?} from the server while {context}")]
    UnexpectedMessage {
        /// The message tag.
        tag: char,
        /// What we were doing.
        context: &'static str,
    },
    /// A message whose body does not parse.
    #[error("malformed {what} message from the server")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: io::Error,
    },
    /// Neither `S` nor `N` in answer to SSLRequest.
    #[error("unexpected answer {byte:#04x} to SSLRequest (expected 'S' or 'N'); is this a PostgreSQL server?")]
    SslResponse {
        /// The byte.
        byte: u8,
    },
    /// A replication command answered with an unexpected shape.
    #[error("unexpected result of {command}: {detail}")]
    UnexpectedResult {
        /// The command.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Anything that can go wrong on the replication connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No address of the host accepted a connection.
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        /// `host:port` or the socket path.
        target: String,
        /// The last connect error.
        #[source]
        source: io::Error,
    },
    /// `connect_timeout` expired (TCP, TLS, authentication together).
    #[error("connecting to PostgreSQL at {target} timed out after {timeout:?} (connect_timeout)")]
    ConnectTimeout {
        /// `host:port` or the socket path.
        target: String,
        /// The limit.
        timeout: Duration,
    },
    /// The server answered `N` to SSLRequest but the URL demands TLS.
    #[error("PostgreSQL at {target} does not accept TLS connections but sslmode={mode} requires TLS; enable ssl on the server or lower sslmode")]
    TlsRefused {
        /// `host:port`.
        target: String,
        /// The URL's sslmode.
        mode: SslMode,
    },
    /// The TLS handshake failed (certificate rejected, or the connection broke).
    #[error("TLS handshake with PostgreSQL at {target} failed")]
    Tls {
        /// `host:port`.
        target: String,
        /// Wraps the `rustls::Error` when the certificate was refused.
        #[source]
        source: io::Error,
    },
    /// The server wants a password and the URL has none.
    #[error("PostgreSQL asked for a password for user {user:?} but the database URL has none")]
    PasswordMissing {
        /// The role.
        user: String,
    },
    /// An authentication method we do not implement.
    #[error("PostgreSQL requested authentication method {method}, which is not supported; use scram-sha-256, md5 or password in pg_hba.conf")]
    UnsupportedAuth {
        /// The method's name.
        method: String,
    },
    /// The SCRAM exchange failed on our side (bad server proof or malformed messages).
    #[error("SCRAM-SHA-256 authentication with the server failed")]
    Scram(#[source] io::Error),
    /// An ErrorResponse from the server (SQLSTATE kept).
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Reading or writing the socket failed.
    #[error("i/o error on the replication connection while {context}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// EOF without an ErrorResponse.
    #[error("the server closed the replication connection while {context} without an error; a common cause is wal_sender_timeout expiring because no status update arrived in time")]
    Closed {
        /// What we were doing.
        context: &'static str,
    },
    /// The server sent bytes we cannot accept.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A name or value that cannot be sent (contains a NUL byte).
    #[error("{what} {value:?} cannot be sent to PostgreSQL: it contains a NUL byte")]
    InvalidArgument {
        /// What it is (slot name, publication name, parameter).
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The server accepted the connection but is not what `target_session_attrs` asks for
    /// (e.g. a standby not yet promoted, for `read-write`).
    #[error(
        "PostgreSQL at {target} {}, but the database URL asks for target_session_attrs={wanted}",
        describe_read_only(*read_only)
    )]
    SessionAttrs {
        /// `host:port` or the socket path.
        target: String,
        /// The URL's `target_session_attrs`.
        wanted: TargetSessionAttrs,
        /// Whether the server's sessions are read-only.
        read_only: bool,
    },
    /// No host of a URL with several hosts could be used; one failure per host, in order.
    #[error(
        "no host of the database URL could be used: {}",
        describe_failures(failures)
    )]
    NoHost {
        /// Why each host was not used.
        failures: Vec<HostFailure>,
    },
}

/// Why one host of a multi-host URL was not used.
#[derive(Debug)]
pub struct HostFailure {
    /// `host:port` or the socket path.
    pub target: String,
    /// What happened there.
    pub error: ClientError,
}

fn describe_read_only(read_only: bool) -> &'static str {
    if read_only {
        "accepts only read-only sessions (a standby, or default_transaction_read_only = on)"
    } else {
        "accepts writes (a primary)"
    }
}

/// `target: error: cause: …` for every failure, `;`-separated.
fn describe_failures(failures: &[HostFailure]) -> String {
    failures
        .iter()
        .map(|failure| {
            let mut text = format!("{}: {}", failure.target, failure.error);
            let mut source = std::error::Error::source(&failure.error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl ClientError {
    /// Whether reconnecting and retrying can succeed without anyone changing anything:
    /// network trouble, EOF, timeouts, a server restarting or out of connections.
    /// Everything else (auth, TLS certificates, missing/invalidated/busy slots, protocol
    /// violations) is definite and needs the caller's or an operator's decision.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Io { .. }
            | ClientError::Closed { .. } => true,
            // A rustls error inside means the certificate or parameters were refused:
            // retrying gets the same answer.
            ClientError::Tls { source, .. } => !source
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()),
            ClientError::Server(error) => error.is_transient(),
            // A standby is promoted, a primary comes back: asking again may find one.
            ClientError::SessionAttrs { .. } => true,
            ClientError::NoHost { failures } => {
                failures.iter().any(|failure| failure.error.is_transient())
            }
            ClientError::TlsRefused { .. }
            | ClientError::PasswordMissing { .. }
            | ClientError::UnsupportedAuth { .. }
            | ClientError::Scram(_)
            | ClientError::Protocol(_)
            | ClientError::InvalidArgument { .. } => false,
        }
    }

    /// The server's error, when there is one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ClientError::Server(error) => Some(error),
            _ => None,
        }
    }

    /// The SQLSTATE of the server's error, when there is one.
    pub fn sqlstate(&self) -> Option<&str> {
        self.server_error().map(|e| e.code.as_str())
    }

    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> ClientError {
        move |source| ClientError::Io { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> ClientError {
        ClientError::Server(ServerError {
            severity: "ERROR".into(),
            code: code.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        })
    }

    #[test]
    fn classifies_by_what_the_caller_can_do() {
        for code in ["57P01", "08006", "08P01", "53300"] {
            assert!(server(code).is_transient(), "{code}");
        }
        for code in ["42704", "55000", "55006", "28P01", "42501"] {
            assert!(!server(code).is_transient(), "{code}");
        }
        assert!(ClientError::Closed { context: "x" }.is_transient());
        let cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        );
        assert!(!ClientError::Tls {
            target: "h".into(),
            source: cert
        }
        .is_transient());
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(ClientError::Tls {
            target: "h".into(),
            source: reset
        }
        .is_transient());
    }

    /// Class 53 (insufficient resources) is the server running short, not a wrong
    /// request: disk full while decoding spills to disk (53100), out of memory (53200),
    /// too many connections (53300), a configured limit (53400). Back off and reconnect.
    #[test]
    fn class_53_resource_errors_are_transient() {
        for code in ["53000", "53100", "53200", "53300", "53400"] {
            assert!(server(code).is_transient(), "{code}");
        }
        // Neighbouring classes stay definite.
        for code in ["54000", "55000", "52000", "42501"] {
            assert!(!server(code).is_transient(), "{code}");
        }
    }

    #[test]
    fn a_host_list_fails_transiently_when_any_host_might_recover() {
        let wrong_role = ClientError::SessionAttrs {
            target: "b:5433".into(),
            wanted: TargetSessionAttrs::ReadWrite,
            read_only: true,
        };
        assert!(wrong_role.is_transient(), "a standby may be promoted");
        let all = ClientError::NoHost {
            failures: vec![
                HostFailure {
                    target: "a:5432".into(),
                    error: server("28P01"),
                },
                HostFailure {
                    target: "b:5433".into(),
                    error: wrong_role,
                },
            ],
        };
        assert!(all.is_transient());
        let text = all.to_string();
        assert!(text.contains("a:5432: m (SQLSTATE 28P01"), "{text}");
        assert!(
            text.contains("b:5433: PostgreSQL at b:5433 accepts only read-only sessions"),
            "{text}"
        );
        assert!(text.contains("target_session_attrs=read-write"), "{text}");
        let definite = ClientError::NoHost {
            failures: vec![HostFailure {
                target: "a:5432".into(),
                error: server("28P01"),
            }],
        };
        assert!(!definite.is_transient());
    }

    #[test]
    fn shows_sqlstate_detail_and_hint() {
        let error = ServerError {
            severity: "ERROR".into(),
            code: "55000".into(),
            message: "cannot read from logical replication slot \"s\"".into(),
            detail: Some("This slot has been invalidated.".into()),
            hint: Some("Recreate it.".into()),
        };
        assert_eq!(
            error.to_string(),
            "cannot read from logical replication slot \"s\" (SQLSTATE 55000, ERROR); \
             detail: This slot has been invalidated.; hint: Recreate it."
        );
    }
}
