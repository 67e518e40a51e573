//! The CopyBoth phase of a replication connection, split into a reader half (WAL and
//! keepalives in) and a writer half (standby status updates out). The halves are meant
//! for different tasks: the status timer must keep running while the reader is stalled
//! by backpressure, or the walsender drops us at `wal_sender_timeout`.
//!
//! Neither half decides which LSNs to report; that is `replication::progress`'s job.

use std::fmt;
use std::time::SystemTime;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

use super::connect::{log_notice, unexpected, BoxedTransport};
use super::error::{ClientError, ServerError};
use super::frame::{Frame, FrameReader};
use super::protocol::{
    encode_standby_status, parse_copy_data, parse_oversized_copy_data, pg_epoch_micros,
    ReplicationMessage,
};
use crate::lsn::Lsn;

const READ_CONTEXT: &str = "streaming WAL";

/// Receives the replication stream. Lives in one task; see [`ReplicationWriter`] for the
/// other direction.
pub struct ReplicationReader {
    frames: FrameReader<ReadHalf<BoxedTransport>>,
    finished: bool,
}

impl ReplicationReader {
    pub(crate) fn new(frames: FrameReader<ReadHalf<BoxedTransport>>) -> Self {
        ReplicationReader {
            frames,
            finished: false,
        }
    }

    /// The next XLogData or keepalive. XLogData above the maximum message size arrives as
    /// [`ReplicationMessage::OversizedXLogData`] (its first bytes; the rest is discarded).
    ///
    /// - `Ok(None)`: the server ended the stream with CopyDone (normally after
    ///   [`ReplicationWriter::finish`]); every later call returns `Ok(None)` too.
    /// - `Err(ClientError::Server(_))`: the server ended the stream with an error
    ///   (e.g. 57P01 when the walsender was terminated).
    /// - `Err(ClientError::Closed { .. })`: EOF without an error, typically
    ///   `wal_sender_timeout` after status updates stopped.
    ///
    /// Notices and parameter changes between messages are logged and skipped.
    /// Cancel-safe: dropping the future loses no bytes, so it can sit in `select!`.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, ClientError> {
        while !self.finished {
            let Some(frame) = self.frames.next(READ_CONTEXT).await? else {
                self.finished = true;
                return Err(ClientError::Closed {
                    context: READ_CONTEXT,
                });
            };
            match frame {
                Frame::CopyData(payload) => return Ok(Some(parse_copy_data(payload)?)),
                Frame::OversizedCopyData { len, prefix } => {
                    return Ok(Some(parse_oversized_copy_data(len, prefix)?))
                }
                Frame::Message(Message::CopyDone) => self.finished = true,
                // A walsender that ends the copy on its own (seen during a fast shutdown of
                // the server) may go straight to CommandComplete/ReadyForQuery: the stream
                // is over either way.
                Frame::Message(Message::CommandComplete(_) | Message::ReadyForQuery(_)) => {
                    self.finished = true
                }
                Frame::Message(Message::ErrorResponse(body)) => {
                    self.finished = true;
                    return Err(ServerError::from_fields(body.fields())?.into());
                }
                Frame::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
                Frame::Message(Message::ParameterStatus(_)) => {}
                other => return Err(unexpected(&other, READ_CONTEXT)),
            }
        }
        Ok(None)
    }
}

impl fmt::Debug for ReplicationReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationReader")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// Sends standby status updates and ends the stream. Lives in its own task so that
/// feedback never waits on the reader or on sinks.
pub struct ReplicationWriter {
    io: WriteHalf<BoxedTransport>,
    buf: BytesMut,
}

impl ReplicationWriter {
    pub(crate) fn new(io: WriteHalf<BoxedTransport>) -> Self {
        ReplicationWriter {
            io,
            buf: BytesMut::with_capacity(64),
        }
    }

    /// Sends a standby status update (`'r'`) stamped with the current time.
    ///
    /// For a logical slot PostgreSQL takes `flush` as the new `confirmed_flush_lsn`:
    /// pass only positions whose transactions are settled (Commit `end_lsn` values, or
    /// the keepalive `wal_end` when idle). `reply_requested` asks for a keepalive back.
    /// Not cancel-safe: a cancelled call may leave a partial message on the wire.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ClientError> {
        self.buf.clear();
        encode_standby_status(
            write,
            flush,
            apply,
            pg_epoch_micros(SystemTime::now()),
            reply_requested,
            &mut self.buf,
        );
        self.write_buf("sending a standby status update").await
    }

    /// Ends streaming: CopyDone, then Terminate, then closes our side of the socket.
    /// Best effort: the connection is gone afterwards either way. Send the final status
    /// update first. The reader then sees `Ok(None)` (or EOF).
    pub async fn finish(mut self) -> Result<(), ClientError> {
        self.buf.clear();
        frontend::copy_done(&mut self.buf);
        frontend::terminate(&mut self.buf);
        self.write_buf("ending the replication stream").await?;
        self.io
            .shutdown()
            .await
            .map_err(ClientError::io("closing the replication connection"))
    }

    async fn write_buf(&mut self, context: &'static str) -> Result<(), ClientError> {
        self.io
            .write_all(&self.buf)
            .await
            .map_err(ClientError::io(context))?;
        self.io.flush().await.map_err(ClientError::io(context))
    }
}

impl fmt::Debug for ReplicationWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationWriter").finish_non_exhaustive()
    }
}
