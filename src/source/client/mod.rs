//! Our own small replication-protocol client (tokio-postgres cannot open a
//! `replication=database` connection or do CopyBoth): connect and authenticate, run
//! replication commands over the simple-query protocol, and stream WAL through
//! `START_REPLICATION` as a reader half and a writer half.
//!
//! Owns the bytes on the wire only. It must not decide which LSN is safe to confirm
//! (`replication::progress` does), must not decode pgoutput (`replication::pgoutput`
//! does), and never issues SQL that changes data.
//!
//! ```text
//! ReplicationClient::connect ──▶ identify_system / create_replication_slot / simple_query
//!        │
//!        └─ start_replication ──▶ (ReplicationReader: XLogData, keepalives)
//!                                 (ReplicationWriter: status updates, finish)
//! ```

mod channel_binding;
mod connect;
mod error;
mod frame;
mod protocol;
mod stream;

use std::fmt;
use std::sync::Arc;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

pub use error::{ClientError, HostFailure, ProtocolError, ServerError};
pub use frame::{DEFAULT_MAX_FRAME_LEN, OVERSIZED_PREFIX_LEN};
pub use protocol::{
    encode_standby_status, parse_copy_data, parse_oversized_copy_data, pg_epoch_micros,
    OversizedXLogData, PrimaryKeepalive, ReplicationMessage, XLogData, PRIMARY_KEEPALIVE_LEN,
    STANDBY_STATUS_FRAME_LEN, STANDBY_STATUS_LEN, XLOG_DATA_HEADER_LEN,
};
pub use stream::{ReplicationReader, ReplicationWriter};

use crate::conninfo::{ConnInfo, Endpoint, TargetSessionAttrs};
use crate::lsn::Lsn;
use connect::{log_notice, unexpected, BoxedTransport, SessionInfo};
use frame::{Frame, FrameReader};

/// Settings of the client itself (the target comes from [`ConnInfo`]).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Largest backend message accepted, tag included; bigger ones end the connection
    /// with [`ProtocolError::FrameTooLarge`], except WAL data, which the stream reports as
    /// [`ReplicationMessage::OversizedXLogData`]. Default [`DEFAULT_MAX_FRAME_LEN`].
    pub max_frame_len: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }
}

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    /// The cluster's system identifier; a new value means a restore or another cluster.
    pub systemid: u64,
    /// The current timeline; a new value means failover or point-in-time recovery.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database this connection is bound to.
    pub dbname: Option<String>,
}

/// Result of `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// Earliest position streaming can start from; transactions committed before it are
    /// never decoded from this slot.
    pub consistent_point: Lsn,
    /// Exported snapshot name (always `None` with `SNAPSHOT 'nothing'`).
    pub snapshot_name: Option<String>,
    /// The output plugin (`pgoutput`).
    pub output_plugin: Option<String>,
}

/// One row of a simple-query result, all values as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleRow {
    columns: Arc<[String]>,
    values: Vec<Option<String>>,
}

impl SimpleRow {
    /// The value at `index`; `None` for NULL or out of range.
    pub fn get(&self, index: usize) -> Option<&str> {
        self.values.get(index).and_then(|v| v.as_deref())
    }

    /// The value of the first column called `name`; `None` for NULL or no such column.
    pub fn get_by_name(&self, name: &str) -> Option<&str> {
        let index = self.columns.iter().position(|c| c == name)?;
        self.get(index)
    }
}

/// A `replication=database` connection before streaming starts.
pub struct ReplicationClient {
    frames: FrameReader<BoxedTransport>,
    session: SessionInfo,
    /// The host of the URL this connection reached.
    endpoint: Endpoint,
}

impl ReplicationClient {
    /// Connects with default [`ClientOptions`]. Honours `connect_timeout` for the whole
    /// of TCP connect, TLS and authentication, per host.
    pub async fn connect(info: &ConnInfo) -> Result<Self, ClientError> {
        Self::connect_with(info, ClientOptions::default()).await
    }

    /// Connects with explicit options.
    ///
    /// Tries the URL's hosts in order, as libpq does, and keeps the first that accepts the
    /// connection and qualifies for `target_session_attrs`. With one host its error is
    /// returned as it is; with several, [`ClientError::NoHost`] lists every host's.
    pub async fn connect_with(
        info: &ConnInfo,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let mut failures = Vec::new();
        for endpoint in info.endpoints() {
            match Self::connect_to(info, endpoint, &options).await {
                Ok(client) => return Ok(client),
                Err(error) => {
                    if info.endpoints().len() > 1 {
                        tracing::debug!(target = %endpoint, error = %error, "replication connection: this host cannot be used; trying the next");
                    }
                    failures.push(HostFailure {
                        target: endpoint.target(),
                        error,
                    });
                }
            }
        }
        match <[HostFailure; 1]>::try_from(failures) {
            Ok([only]) => Err(only.error),
            Err(failures) => Err(ClientError::NoHost { failures }),
        }
    }

    /// Connects to one host and checks `target_session_attrs` there.
    async fn connect_to(
        info: &ConnInfo,
        endpoint: &Endpoint,
        options: &ClientOptions,
    ) -> Result<Self, ClientError> {
        let establish = connect::establish(info, endpoint, options.max_frame_len);
        let (frames, session) = match info.connect_timeout() {
            Some(timeout) => tokio::time::timeout(timeout, establish)
                .await
                .map_err(|_| ClientError::ConnectTimeout {
                    target: endpoint.target(),
                    timeout,
                })??,
            None => establish.await?,
        };
        let mut client = ReplicationClient {
            frames,
            session,
            endpoint: endpoint.clone(),
        };
        let wanted = info.target_session_attrs();
        if wanted != TargetSessionAttrs::Any {
            let read_only = client.read_only().await?;
            if !wanted.accepts(read_only) {
                client.close().await;
                return Err(ClientError::SessionAttrs {
                    target: endpoint.target(),
                    wanted,
                    read_only,
                });
            }
        }
        Ok(client)
    }

    /// The host of the URL this connection reached.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether the server's sessions are read-only (a hot standby, or
    /// `default_transaction_read_only = on`), decided as libpq decides it for
    /// `target_session_attrs`: from what the server reported at startup (PostgreSQL 14 and
    /// later report both settings), else by asking `SHOW transaction_read_only`.
    pub async fn read_only(&mut self) -> Result<bool, ClientError> {
        if let Some(read_only) = reported_read_only(
            self.parameter("default_transaction_read_only"),
            self.parameter("in_hot_standby"),
        ) {
            return Ok(read_only);
        }
        const COMMAND: &str = "SHOW transaction_read_only";
        let row = single_row(COMMAND, self.simple_query(COMMAND).await?)?;
        parse_column(COMMAND, &row, "transaction_read_only", |v| match v {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        })
    }

    /// A parameter the server reported at startup (`server_version`, `TimeZone`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.session.parameters.get(name).map(String::as_str)
    }

    /// The walsender's process id (for `pg_stat_replication` / `pg_terminate_backend`).
    pub fn backend_pid(&self) -> Option<i32> {
        self.session.backend_pid
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.session.tls
    }

    /// Runs one or more commands with the simple-query protocol and returns every row
    /// as text. An ErrorResponse becomes `Err(ClientError::Server)` after the server is
    /// ready again, so the connection stays usable.
    pub async fn simple_query(&mut self, query: &str) -> Result<Vec<SimpleRow>, ClientError> {
        const CONTEXT: &str = "running a simple query";
        self.send_query(query).await?;
        let mut columns: Option<Arc<[String]>> = None;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let message = match self.frames.expect(CONTEXT).await? {
                Frame::Message(message) => message,
                other => return Err(unexpected(&other, CONTEXT)),
            };
            match message {
                Message::RowDescription(body) => {
                    let names = body
                        .fields()
                        .map(|field| Ok(field.name().to_owned()))
                        .collect::<Vec<_>>()
                        .map_err(|source| ProtocolError::Malformed {
                            what: "RowDescription",
                            source,
                        })?;
                    columns = Some(names.into());
                }
                Message::DataRow(body) => {
                    let Some(columns) = &columns else {
                        return Err(unexpected(&Frame::Message(Message::DataRow(body)), CONTEXT));
                    };
                    rows.push(SimpleRow {
                        columns: Arc::clone(columns),
                        values: data_row_values(&body)?,
                    });
                }
                Message::CommandComplete(_) | Message::EmptyQueryResponse => {}
                Message::ErrorResponse(body) => {
                    error = Some(ServerError::from_fields(body.fields())?);
                }
                Message::NoticeResponse(body) => log_notice(body.fields()),
                Message::ParameterStatus(_) => {}
                Message::ReadyForQuery(_) => {
                    return match error {
                        Some(error) => Err(error.into()),
                        None => Ok(rows),
                    }
                }
                other => return Err(unexpected(&Frame::Message(other), CONTEXT)),
            }
        }
    }

    /// `IDENTIFY_SYSTEM`: the cluster id, timeline and current WAL position.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, ClientError> {
        const COMMAND: &str = "IDENTIFY_SYSTEM";
        let row = single_row(COMMAND, self.simple_query(COMMAND).await?)?;
        Ok(IdentifySystem {
            systemid: parse_column(COMMAND, &row, "systemid", |v| v.parse().ok())?,
            timeline: parse_column(COMMAND, &row, "timeline", |v| v.parse().ok())?,
            xlogpos: parse_column(COMMAND, &row, "xlogpos", |v| v.parse().ok())?,
            dbname: row.get_by_name("dbname").map(str::to_owned),
        })
    }

    /// `CREATE_REPLICATION_SLOT "name" LOGICAL pgoutput (SNAPSHOT 'nothing')`: a
    /// permanent logical slot. Waits for transactions running at the time to finish.
    pub async fn create_replication_slot(
        &mut self,
        slot_name: &str,
    ) -> Result<CreatedSlot, ClientError> {
        const COMMAND: &str = "CREATE_REPLICATION_SLOT";
        let query = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing')",
            quote_identifier(slot_name)?
        );
        let row = single_row(COMMAND, self.simple_query(&query).await?)?;
        Ok(CreatedSlot {
            slot_name: parse_column(COMMAND, &row, "slot_name", |v| Some(v.to_owned()))?,
            consistent_point: parse_column(COMMAND, &row, "consistent_point", |v| v.parse().ok())?,
            snapshot_name: row.get_by_name("snapshot_name").map(str::to_owned),
            output_plugin: row.get_by_name("output_plugin").map(str::to_owned),
        })
    }

    /// `DROP_REPLICATION_SLOT "name"`. Fails with 55006 if the slot is in use and 42704
    /// if it does not exist.
    pub async fn drop_replication_slot(&mut self, slot_name: &str) -> Result<(), ClientError> {
        let query = format!("DROP_REPLICATION_SLOT {}", quote_identifier(slot_name)?);
        self.simple_query(&query).await.map(drop)
    }

    /// `START_REPLICATION SLOT "slot" LOGICAL <start> (proto_version '1',
    /// publication_names '"pub",…', messages 'true')`, returning the two halves of the
    /// stream. The server resumes at the later of `start` and the slot's
    /// `confirmed_flush_lsn` (`Lsn::ZERO` means "where the slot is").
    ///
    /// Consumes the client: on error (42704 missing slot, 55000 invalidated slot, 55006
    /// slot active elsewhere) the connection is closed; reconnect to try again.
    pub async fn start_replication(
        mut self,
        slot_name: &str,
        start: Lsn,
        publications: &[&str],
    ) -> Result<(ReplicationReader, ReplicationWriter), ClientError> {
        const CONTEXT: &str = "starting replication";
        let names = publications
            .iter()
            .map(|name| quote_identifier(name))
            .collect::<Result<Vec<_>, _>>()?
            .join(",");
        let query = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {}, messages 'true')",
            quote_identifier(slot_name)?,
            quote_literal(&names)?,
        );
        self.send_query(&query).await?;
        loop {
            match self.frames.expect(CONTEXT).await? {
                Frame::CopyBothResponse => break,
                Frame::Message(Message::ErrorResponse(body)) => {
                    let error = ServerError::from_fields(body.fields())?;
                    self.close().await;
                    return Err(error.into());
                }
                Frame::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
                Frame::Message(Message::ParameterStatus(_)) => {}
                other => return Err(unexpected(&other, CONTEXT)),
            }
        }
        let (io, buffered, max_frame_len) = self.frames.into_parts();
        let (read, write) = tokio::io::split(io);
        Ok((
            ReplicationReader::new(FrameReader::with_buffer(read, buffered, max_frame_len)),
            ReplicationWriter::new(write),
        ))
    }

    /// Sends Terminate and closes the socket. Best effort: errors are ignored because
    /// the connection is being discarded anyway.
    pub async fn close(mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let io = self.frames.get_mut();
        if io.write_all(&buf).await.is_ok() {
            let _ = io.shutdown().await;
        }
    }

    async fn send_query(&mut self, query: &str) -> Result<(), ClientError> {
        let mut buf = BytesMut::new();
        frontend::query(query, &mut buf).map_err(|_| ClientError::InvalidArgument {
            what: "query",
            value: query.to_owned(),
        })?;
        connect::send(&mut self.frames, &buf, "sending a query").await
    }
}

impl fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("endpoint", &self.endpoint)
            .field("backend_pid", &self.session.backend_pid)
            .field("tls", &self.session.tls)
            .finish_non_exhaustive()
    }
}

/// Read-only or not from the `default_transaction_read_only` and `in_hot_standby`
/// parameters a server reports at startup; `None` when it did not report both (before
/// PostgreSQL 14).
fn reported_read_only(
    default_transaction_read_only: Option<&str>,
    in_hot_standby: Option<&str>,
) -> Option<bool> {
    match (default_transaction_read_only?, in_hot_standby?) {
        ("off", "off") => Some(false),
        ("on", _) | (_, "on") => Some(true),
        _ => None,
    }
}

/// Quotes an identifier (slot or publication name) for a replication command: wraps it
/// in `"` and doubles any `"` inside.
pub fn quote_identifier(name: &str) -> Result<String, ClientError> {
    reject_nul("identifier", name)?;
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// Quotes a string literal for a replication command: wraps it in `'` and doubles any
/// `'` inside. The replication lexer treats backslashes literally, so no `E''` form.
pub fn quote_literal(value: &str) -> Result<String, ClientError> {
    reject_nul("string literal", value)?;
    Ok(format!("'{}'", value.replace('\'', "''")))
}

fn reject_nul(what: &'static str, value: &str) -> Result<(), ClientError> {
    if value.contains('\0') {
        return Err(ClientError::InvalidArgument {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

fn data_row_values(
    body: &postgres_protocol::message::backend::DataRowBody,
) -> Result<Vec<Option<String>>, ClientError> {
    let malformed = |source| ProtocolError::Malformed {
        what: "DataRow",
        source,
    };
    let buffer = body.buffer();
    body.ranges()
        .map_err(malformed)
        .map(|range| {
            let Some(range) = range else {
                return Ok(None);
            };
            let bytes = buffer.get(range).ok_or_else(|| {
                malformed(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "value range outside the message",
                ))
            })?;
            std::str::from_utf8(bytes)
                .map(|s| Some(s.to_owned()))
                .map_err(|e| malformed(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
        })
        .collect()
        .map_err(ClientError::from)
}

fn single_row(command: &'static str, rows: Vec<SimpleRow>) -> Result<SimpleRow, ClientError> {
    <[SimpleRow; 1]>::try_from(rows)
        .map(|[row]| row)
        .map_err(|rows| {
            ProtocolError::UnexpectedResult {
                command,
                detail: format!("{} rows instead of 1", rows.len()),
            }
            .into()
        })
}

fn parse_column<T>(
    command: &'static str,
    row: &SimpleRow,
    column: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ClientError> {
    let value = row.get_by_name(column);
    value.and_then(parse).ok_or_else(|| {
        ProtocolError::UnexpectedResult {
            command,
            detail: format!("column {column} is {value:?}"),
        }
        .into()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_read_only_from_the_reported_parameters() {
        assert_eq!(reported_read_only(Some("off"), Some("off")), Some(false));
        assert_eq!(reported_read_only(Some("off"), Some("on")), Some(true));
        assert_eq!(reported_read_only(Some("on"), Some("off")), Some(true));
        // Before PostgreSQL 14, or something unexpected: ask the server.
        assert_eq!(reported_read_only(None, Some("off")), None);
        assert_eq!(reported_read_only(Some("off"), None), None);
        assert_eq!(reported_read_only(Some("off"), Some("maybe")), None);
    }

    #[test]
    fn quotes_identifiers_and_literals_by_doubling() {
        assert_eq!(quote_identifier("slot").unwrap(), "\"slot\"");
        assert_eq!(quote_identifier("we\"ird").unwrap(), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert_eq!(quote_literal(r"back\slash").unwrap(), r"'back\slash'");
        // publication_names is a literal holding quoted identifiers.
        let names = quote_identifier("o'ut\"box").unwrap();
        assert_eq!(quote_literal(&names).unwrap(), "'\"o''ut\"\"box\"'");
        assert!(quote_identifier("a\0b").is_err());
        assert!(quote_literal("a\0b").is_err());
    }
}
