//! Opening a replication connection to one host of the URL: TCP (with keepalives and
//! `TCP_USER_TIMEOUT`) or a Unix socket, SSLRequest + rustls per `sslmode`, the
//! StartupMessage with `replication=database` and pinned output GUCs, and password
//! authentication (cleartext, MD5, SCRAM-SHA-256[-PLUS]) through postgres-protocol.
//! Walking the host list and checking `target_session_attrs` is the caller's
//! ([`super::ReplicationClient::connect_with`]).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::error::{ClientError, ProtocolError, ServerError};
use super::frame::{Frame, FrameReader};
use crate::conninfo::{ConnInfo, Endpoint, Host, SslMode};

/// Idle time before the first TCP keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel drops the connection.
const KEEPALIVE_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the kernel drops the connection, so
/// a vanished server is noticed even while we are only writing status updates.
#[cfg(any(target_os = "linux", target_os = "android"))]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Startup parameters fixing how the walsender renders values as text: pgoutput calls
/// each type's output function in the walsender session, so these decide what the
/// decoder sees (e.g. `+00` timestamps, hex bytea).
const OUTPUT_GUCS: [(&str, &str); 6] = [
    ("client_encoding", "UTF8"),
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// A bidirectional byte stream: plain TCP, TLS over TCP, or a Unix socket.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Transport for T {}

/// The boxed transport, so reader and writer halves have one concrete type.
pub(crate) type BoxedTransport = Box<dyn Transport>;

/// What the server told us during startup.
#[derive(Debug, Default)]
pub(crate) struct SessionInfo {
    pub(crate) parameters: HashMap<String, String>,
    pub(crate) backend_pid: Option<i32>,
    pub(crate) tls: bool,
}

/// Connects, negotiates TLS, sends the StartupMessage and authenticates, leaving the
/// session ready for a query.
pub(crate) async fn establish(
    info: &ConnInfo,
    endpoint: &Endpoint,
    max_frame_len: usize,
) -> Result<(FrameReader<BoxedTransport>, SessionInfo), ClientError> {
    let (transport, binding) = open_transport(info, endpoint).await?;
    let mut session = SessionInfo {
        tls: binding.is_some(),
        ..SessionInfo::default()
    };
    let mut reader = FrameReader::new(transport, max_frame_len);
    send_startup(&mut reader, info).await?;
    authenticate(&mut reader, info, binding.unwrap_or(TlsBinding::None)).await?;
    wait_until_ready(&mut reader, &mut session).await?;
    Ok((reader, session))
}

/// What SCRAM may bind to: nothing (plain or Unix), or a TLS session with or without
/// usable `tls-server-end-point` data.
enum TlsBinding {
    None,
    TlsWithoutData,
    ServerEndPoint(Vec<u8>),
}

async fn open_transport(
    info: &ConnInfo,
    endpoint: &Endpoint,
) -> Result<(BoxedTransport, Option<TlsBinding>), ClientError> {
    let target = endpoint.target();
    let name = match &endpoint.host {
        Host::Unix(_) => {
            let stream = UnixStream::connect(&target)
                .await
                .map_err(|source| ClientError::Connect { target, source })?;
            return Ok((Box::new(stream), None));
        }
        Host::Tcp(name) => name,
    };
    let mut tcp = connect_tcp(name, endpoint.port, &target).await?;
    let Some(config) = info.tls_config_for(endpoint) else {
        return Ok((Box::new(tcp), None));
    };

    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request)
        .await
        .map_err(ClientError::io("sending SSLRequest"))?;
    // Exactly one byte: anything the server sends after 'S' belongs to TLS, and reading
    // more here would let a man in the middle inject plaintext (CVE-2021-23222).
    let answer = tcp
        .read_u8()
        .await
        .map_err(ClientError::io("reading the SSLRequest answer"))?;
    match answer {
        b'S' => {}
        b'N' if info.ssl_mode() == SslMode::Prefer => return Ok((Box::new(tcp), None)),
        b'N' => {
            return Err(ClientError::TlsRefused {
                target,
                mode: info.ssl_mode(),
            })
        }
        byte => return Err(ProtocolError::SslResponse { byte }.into()),
    }
    let server_name = ServerName::try_from(name.clone()).map_err(|e| ClientError::Tls {
        target: target.clone(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(server_name, tcp)
        .await
        .map_err(|source| ClientError::Tls { target, source })?;
    let binding = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| super::channel_binding::tls_server_end_point(cert.as_ref()))
        .map_or(TlsBinding::TlsWithoutData, TlsBinding::ServerEndPoint);
    Ok((Box::new(tls), Some(binding)))
}

/// Tries every address the name resolves to, in order (e.g. `localhost` → ::1, 127.0.0.1).
async fn connect_tcp(name: &str, port: u16, target: &str) -> Result<TcpStream, ClientError> {
    let connect_err = |source| ClientError::Connect {
        target: target.to_owned(),
        source,
    };
    let mut last_error =
        io::Error::new(io::ErrorKind::NotFound, "host name resolved to no address");
    for addr in tokio::net::lookup_host((name, port))
        .await
        .map_err(connect_err)?
    {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                tune_socket(&stream).map_err(connect_err)?;
                return Ok(stream);
            }
            Err(error) => last_error = error,
        }
    }
    Err(connect_err(last_error))
}

fn tune_socket(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = SockRef::from(stream);
    socket.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES),
    )?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT))?;
    Ok(())
}

/// Writes `buf` and flushes it.
pub(super) async fn send(
    reader: &mut FrameReader<BoxedTransport>,
    buf: &[u8],
    context: &'static str,
) -> Result<(), ClientError> {
    let io = reader.get_mut();
    io.write_all(buf).await.map_err(ClientError::io(context))?;
    io.flush().await.map_err(ClientError::io(context))
}

async fn send_startup(
    reader: &mut FrameReader<BoxedTransport>,
    info: &ConnInfo,
) -> Result<(), ClientError> {
    let mut params = vec![
        ("user", info.user()),
        ("database", info.dbname()),
        // Logical walsender: replication commands plus SQL, in that database.
        ("replication", "database"),
        ("application_name", info.application_name()),
    ];
    params.extend(OUTPUT_GUCS);
    for (name, value) in &params {
        if value.contains('\0') {
            return Err(ClientError::InvalidArgument {
                what: name,
                value: (*value).to_owned(),
            });
        }
    }
    let mut buf = BytesMut::new();
    frontend::startup_message(params, &mut buf).map_err(|_| ClientError::InvalidArgument {
        what: "startup parameter",
        value: String::new(),
    })?;
    send(reader, &buf, "sending the startup message").await
}

async fn authenticate(
    reader: &mut FrameReader<BoxedTransport>,
    info: &ConnInfo,
    binding: TlsBinding,
) -> Result<(), ClientError> {
    const CONTEXT: &str = "authenticating";
    loop {
        let message = match reader.expect(CONTEXT).await? {
            Frame::Message(message) => message,
            other => return Err(unexpected(&other, CONTEXT)),
        };
        let password = || {
            info.password().ok_or_else(|| ClientError::PasswordMissing {
                user: info.user().to_owned(),
            })
        };
        let mut buf = BytesMut::new();
        match message {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?.as_bytes(), &mut buf)
                    .map_err(|_| nul_in_password())?;
                send(reader, &buf, "sending the password").await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    info.user().as_bytes(),
                    password()?.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut buf)
                    .map_err(|_| nul_in_password())?;
                send(reader, &buf, "sending the MD5 password hash").await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let (mut scram, mut scram_plus) = (false, false);
                while let Some(mechanism) =
                    mechanisms
                        .next()
                        .map_err(|source| ProtocolError::Malformed {
                            what: "AuthenticationSASL",
                            source,
                        })?
                {
                    match mechanism {
                        sasl::SCRAM_SHA_256 => scram = true,
                        sasl::SCRAM_SHA_256_PLUS => scram_plus = true,
                        _ => {}
                    }
                }
                return scram_exchange(reader, password()?, scram, scram_plus, binding).await;
            }
            Message::ErrorResponse(body) => {
                return Err(ServerError::from_fields(body.fields())?.into())
            }
            Message::NoticeResponse(body) => log_notice(body.fields()),
            Message::AuthenticationKerberosV5 => return Err(unsupported("Kerberos V5")),
            Message::AuthenticationScmCredential => return Err(unsupported("SCM credentials")),
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                return Err(unsupported("GSSAPI"))
            }
            Message::AuthenticationSspi => return Err(unsupported("SSPI")),
            other => return Err(unexpected(&Frame::Message(other), CONTEXT)),
        }
    }
}

/// SCRAM with tokio-postgres' channel-binding rule: bind (`-PLUS`) when both sides can;
/// say `y` ("I could, you can't") only when the server offers no `-PLUS`, because
/// claiming that while the server does offer it is what a downgrade attack looks like.
async fn scram_exchange(
    reader: &mut FrameReader<BoxedTransport>,
    password: &str,
    scram: bool,
    scram_plus: bool,
    binding: TlsBinding,
) -> Result<(), ClientError> {
    const CONTEXT: &str = "authenticating with SCRAM-SHA-256";
    let (mechanism, channel_binding) = choose_sasl_mechanism(scram, scram_plus, binding)
        .ok_or_else(|| unsupported("SASL without SCRAM-SHA-256"))?;
    tracing::debug!(mechanism, "authenticating with SASL");
    let mut exchange = ScramSha256::new(password.as_bytes(), channel_binding);
    let mut buf = BytesMut::new();
    frontend::sasl_initial_response(mechanism, exchange.message(), &mut buf)
        .map_err(ClientError::Scram)?;
    send(reader, &buf, CONTEXT).await?;

    match next_auth_message(reader, CONTEXT).await? {
        Message::AuthenticationSaslContinue(body) => {
            exchange.update(body.data()).map_err(ClientError::Scram)?;
        }
        other => return Err(unexpected(&Frame::Message(other), CONTEXT)),
    }
    buf.clear();
    frontend::sasl_response(exchange.message(), &mut buf).map_err(ClientError::Scram)?;
    send(reader, &buf, CONTEXT).await?;

    match next_auth_message(reader, CONTEXT).await? {
        // Verifies the server's signature: proof that it knows the password too.
        Message::AuthenticationSaslFinal(body) => {
            exchange.finish(body.data()).map_err(ClientError::Scram)?;
        }
        other => return Err(unexpected(&Frame::Message(other), CONTEXT)),
    }
    match next_auth_message(reader, CONTEXT).await? {
        Message::AuthenticationOk => Ok(()),
        other => Err(unexpected(&Frame::Message(other), CONTEXT)),
    }
}

/// The mechanism and GS2 channel-binding flag for what the server offers and what our
/// TLS session can bind to; `None` when the server offers no SCRAM-SHA-256 at all.
fn choose_sasl_mechanism(
    scram: bool,
    scram_plus: bool,
    binding: TlsBinding,
) -> Option<(&'static str, ChannelBinding)> {
    match (scram_plus, binding) {
        (true, TlsBinding::ServerEndPoint(data)) => Some((
            sasl::SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(data),
        )),
        (false, TlsBinding::ServerEndPoint(_)) if scram => {
            Some((sasl::SCRAM_SHA_256, ChannelBinding::unrequested()))
        }
        _ if scram => Some((sasl::SCRAM_SHA_256, ChannelBinding::unsupported())),
        _ => None,
    }
}

/// The next message during authentication, with ErrorResponse turned into an error and
/// notices logged.
async fn next_auth_message(
    reader: &mut FrameReader<BoxedTransport>,
    context: &'static str,
) -> Result<Message, ClientError> {
    loop {
        match reader.expect(context).await? {
            Frame::Message(Message::ErrorResponse(body)) => {
                return Err(ServerError::from_fields(body.fields())?.into())
            }
            Frame::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
            Frame::Message(message) => return Ok(message),
            other => return Err(unexpected(&other, context)),
        }
    }
}

async fn wait_until_ready(
    reader: &mut FrameReader<BoxedTransport>,
    session: &mut SessionInfo,
) -> Result<(), ClientError> {
    const CONTEXT: &str = "waiting for the session to become ready";
    loop {
        match next_auth_message(reader, CONTEXT).await? {
            Message::ReadyForQuery(_) => return Ok(()),
            Message::ParameterStatus(body) => {
                let malformed = |source| ProtocolError::Malformed {
                    what: "ParameterStatus",
                    source,
                };
                let name = body.name().map_err(malformed)?.to_owned();
                let value = body.value().map_err(malformed)?.to_owned();
                session.parameters.insert(name, value);
            }
            Message::BackendKeyData(body) => session.backend_pid = Some(body.process_id()),
            other => return Err(unexpected(&Frame::Message(other), CONTEXT)),
        }
    }
}

pub(crate) fn unexpected(frame: &Frame, context: &'static str) -> ClientError {
    ProtocolError::UnexpectedMessage {
        tag: frame.tag(),
        context,
    }
    .into()
}

fn unsupported(method: &str) -> ClientError {
    ClientError::UnsupportedAuth {
        method: method.to_owned(),
    }
}

fn nul_in_password() -> ClientError {
    ClientError::InvalidArgument {
        what: "password",
        value: "***".to_owned(),
    }
}

/// Notices are informational (e.g. deprecation warnings); log them, never their absence.
pub(crate) fn log_notice(fields: postgres_protocol::message::backend::ErrorFields<'_>) {
    match ServerError::from_fields(fields) {
        Ok(notice) => tracing::info!(
            severity = %notice.severity,
            sqlstate = %notice.code,
            notice = %notice.message,
            "notice from PostgreSQL on the replication connection"
        ),
        Err(error) => tracing::warn!(error = %error, "malformed notice from PostgreSQL"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The GS2 header our client-first message would carry.
    fn gs2(scram: bool, plus: bool, binding: TlsBinding) -> Option<(&'static str, String)> {
        let (mechanism, channel_binding) = choose_sasl_mechanism(scram, plus, binding)?;
        let first = ScramSha256::new(b"pw", channel_binding);
        let message = String::from_utf8(first.message().to_vec()).unwrap();
        let header = message.split(",,").next().unwrap().to_owned();
        Some((mechanism, header))
    }

    #[test]
    fn picks_the_channel_binding_like_libpq() {
        let data = || TlsBinding::ServerEndPoint(vec![1; 32]);
        assert_eq!(
            gs2(true, true, data()),
            Some(("SCRAM-SHA-256-PLUS", "p=tls-server-end-point".into()))
        );
        // The server cannot bind (no -PLUS) but we could: say so with 'y'.
        assert_eq!(
            gs2(true, false, data()),
            Some(("SCRAM-SHA-256", "y".into()))
        );
        // We cannot bind: 'n', whatever the server offers.
        for binding in [TlsBinding::None, TlsBinding::TlsWithoutData] {
            assert_eq!(
                gs2(true, true, binding),
                Some(("SCRAM-SHA-256", "n".into()))
            );
        }
        assert_eq!(
            gs2(true, false, TlsBinding::None),
            Some(("SCRAM-SHA-256", "n".into()))
        );
        assert_eq!(gs2(false, true, TlsBinding::None), None);
        assert_eq!(gs2(false, false, data()), None);
    }
}
