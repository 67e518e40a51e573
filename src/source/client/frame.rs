//! Buffered framing of backend messages. postgres-protocol's `Message::parse` does not
//! know CopyBothResponse (`'W'`) and copies nothing out of CopyData cheaply, so this layer
//! splits frames itself: CopyData becomes a zero-copy `Bytes`, `'W'` is recognised here,
//! and everything else goes to `Message::parse`.
//!
//! Never trusts a length before the bytes arrive: memory grows with bytes received, and
//! a declared length above the maximum frame size is refused before reading it. The one
//! exception is CopyData: the replication stream cannot skip a message the server already
//! sent, so an oversized CopyData message is returned as its first
//! [`OVERSIZED_PREFIX_LEN`] bytes ([`Frame::OversizedCopyData`]) and the rest is discarded
//! as it arrives, never buffered. The caller decides what the prefix is worth.

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::backend::{Header, Message};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::{ClientError, ProtocolError};

/// Largest frame accepted by default: a 1 GiB value (PostgreSQL's field limit) plus
/// headroom for the row and message headers around it.
pub const DEFAULT_MAX_FRAME_LEN: usize = (1 << 30) + (64 << 10);

/// Read at least this much per syscall so small frames are batched.
const READ_CHUNK: usize = 64 << 10;
/// Grow towards a large frame at most this much per read (bounded by what arrives).
const MAX_RESERVE_STEP: usize = 8 << 20;
/// Tag (1) + Int32 length.
const HEADER_LEN: usize = 5;
/// How much of an oversized CopyData message is kept (at most the maximum frame size):
/// enough for the XLogData header, an Insert's header and the leading columns of its
/// tuple, where an outbox table keeps its `id`.
pub const OVERSIZED_PREFIX_LEN: usize = 64 << 10;

/// One backend message.
pub(crate) enum Frame {
    /// CopyData payload (after the 5-byte header), sharing the read buffer.
    CopyData(Bytes),
    /// CopyData larger than the maximum frame size: its first bytes only. The reader
    /// discards the rest of the message as it arrives.
    OversizedCopyData {
        /// The payload's declared length (after the 5-byte header).
        len: usize,
        /// The first `min(len, OVERSIZED_PREFIX_LEN, max frame size)` payload bytes.
        prefix: Bytes,
    },
    /// `'W'`: the server entered CopyBoth mode.
    CopyBothResponse,
    /// Any other message, parsed by postgres-protocol.
    Message(Message),
}

impl Frame {
    /// The message tag, for "unexpected message" errors.
    pub(crate) fn tag(&self) -> char {
        match self {
            Frame::CopyData(_) | Frame::OversizedCopyData { .. } => 'd',
            Frame::CopyBothResponse => 'W',
            Frame::Message(message) => char::from(message_tag(message)),
        }
    }
}

fn message_tag(message: &Message) -> u8 {
    use postgres_protocol::message::backend as b;
    match message {
        Message::AuthenticationCleartextPassword
        | Message::AuthenticationGss
        | Message::AuthenticationKerberosV5
        | Message::AuthenticationMd5Password(_)
        | Message::AuthenticationOk
        | Message::AuthenticationScmCredential
        | Message::AuthenticationSspi
        | Message::AuthenticationGssContinue(_)
        | Message::AuthenticationSasl(_)
        | Message::AuthenticationSaslContinue(_)
        | Message::AuthenticationSaslFinal(_) => b::AUTHENTICATION_TAG,
        Message::BackendKeyData(_) => b::BACKEND_KEY_DATA_TAG,
        Message::BindComplete => b::BIND_COMPLETE_TAG,
        Message::CloseComplete => b::CLOSE_COMPLETE_TAG,
        Message::CommandComplete(_) => b::COMMAND_COMPLETE_TAG,
        Message::CopyData(_) => b::COPY_DATA_TAG,
        Message::CopyDone => b::COPY_DONE_TAG,
        Message::CopyInResponse(_) => b::COPY_IN_RESPONSE_TAG,
        Message::CopyOutResponse(_) => b::COPY_OUT_RESPONSE_TAG,
        Message::DataRow(_) => b::DATA_ROW_TAG,
        Message::EmptyQueryResponse => b::EMPTY_QUERY_RESPONSE_TAG,
        Message::ErrorResponse(_) => b::ERROR_RESPONSE_TAG,
        Message::NoData => b::NO_DATA_TAG,
        Message::NoticeResponse(_) => b::NOTICE_RESPONSE_TAG,
        Message::NotificationResponse(_) => b::NOTIFICATION_RESPONSE_TAG,
        Message::ParameterDescription(_) => b::PARAMETER_DESCRIPTION_TAG,
        Message::ParameterStatus(_) => b::PARAMETER_STATUS_TAG,
        Message::ParseComplete => b::PARSE_COMPLETE_TAG,
        Message::PortalSuspended => b::PORTAL_SUSPENDED_TAG,
        Message::ReadyForQuery(_) => b::READY_FOR_QUERY_TAG,
        Message::RowDescription(_) => b::ROW_DESCRIPTION_TAG,
        _ => b'?',
    }
}

/// Splits a byte stream into backend messages.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_frame_len: usize,
    /// Bytes of an oversized CopyData message still to be thrown away as they arrive.
    discard: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame_len: usize) -> Self {
        Self::with_buffer(io, BytesMut::with_capacity(READ_CHUNK), max_frame_len)
    }

    /// Continues with bytes already read from the same stream (after splitting it).
    pub(crate) fn with_buffer(io: R, buf: BytesMut, max_frame_len: usize) -> Self {
        FrameReader {
            io,
            buf,
            max_frame_len,
            discard: 0,
        }
    }

    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// The transport, the bytes read ahead, and the maximum frame size. Only between
    /// messages: the rest of an oversized message being discarded is not carried over
    /// (no caller splits a stream in the middle of one).
    pub(crate) fn into_parts(self) -> (R, BytesMut, usize) {
        (self.io, self.buf, self.max_frame_len)
    }

    /// The next message; `Ok(None)` on EOF between messages. Cancel-safe: bytes read
    /// before a cancellation stay buffered for the next call.
    pub(crate) async fn next(
        &mut self,
        context: &'static str,
    ) -> Result<Option<Frame>, ClientError> {
        loop {
            self.discard_buffered();
            if self.discard == 0 {
                if let Some(frame) = self.try_parse()? {
                    if let Frame::OversizedCopyData { len, prefix } = &frame {
                        self.discard = len - prefix.len();
                        self.discard_buffered();
                    }
                    return Ok(Some(frame));
                }
            }
            let missing = self.missing_bytes();
            self.buf
                .reserve(missing.clamp(READ_CHUNK, MAX_RESERVE_STEP));
            let read = self
                .io
                .read_buf(&mut self.buf)
                .await
                .map_err(ClientError::io(context))?;
            if read == 0 {
                return if self.buf.is_empty() && self.discard == 0 {
                    Ok(None)
                } else {
                    Err(ClientError::Closed { context })
                };
            }
        }
    }

    /// Like [`FrameReader::next`], but EOF is an error.
    pub(crate) async fn expect(&mut self, context: &'static str) -> Result<Frame, ClientError> {
        self.next(context)
            .await?
            .ok_or(ClientError::Closed { context })
    }

    /// Drops buffered bytes of an oversized message being discarded.
    fn discard_buffered(&mut self) {
        let n = self.discard.min(self.buf.len());
        self.buf.advance(n);
        self.discard -= n;
    }

    /// How many more bytes the next frame needs (at least 1 when called after a miss).
    fn missing_bytes(&self) -> usize {
        if self.discard > 0 {
            // Read it in small chunks: it is thrown away, never held.
            return self.discard.min(READ_CHUNK);
        }
        match Header::parse(&self.buf) {
            Ok(Some(header)) => usize::try_from(header.len())
                .map_or(0, |len| {
                    let total = len + 1;
                    if header.tag() == b'd' && total > self.max_frame_len {
                        HEADER_LEN + oversized_prefix_len(len - 4, self.max_frame_len)
                    } else {
                        total
                    }
                })
                .saturating_sub(self.buf.len()),
            _ => HEADER_LEN.saturating_sub(self.buf.len()),
        }
    }

    fn try_parse(&mut self) -> Result<Option<Frame>, ProtocolError> {
        parse_frame(&mut self.buf, self.max_frame_len)
    }
}

/// How much of an oversized CopyData payload of `len` bytes is kept.
fn oversized_prefix_len(len: usize, max_frame_len: usize) -> usize {
    len.min(OVERSIZED_PREFIX_LEN).min(max_frame_len)
}

/// Takes one complete frame off the front of `buf`, or returns `None` if more bytes are
/// needed. Checks the declared length against the limits before waiting for the body.
///
/// A CopyData message above `max_frame_len` becomes [`Frame::OversizedCopyData`] once its
/// prefix is buffered; only the prefix is taken off `buf`, the caller discards the rest of
/// the payload (`len - prefix.len()` bytes). Any other oversized message is an error.
pub(crate) fn parse_frame(
    buf: &mut BytesMut,
    max_frame_len: usize,
) -> Result<Option<Frame>, ProtocolError> {
    let Some(header) = Header::parse(buf).map_err(ProtocolError::InvalidLength)? else {
        return Ok(None);
    };
    // Header::parse has rejected lengths below 4, so this is positive.
    let len = usize::try_from(header.len()).unwrap_or(0);
    let total = len + 1;
    if total > max_frame_len && header.tag() == b'd' {
        let len = len - 4;
        let keep = oversized_prefix_len(len, max_frame_len);
        if buf.len() < HEADER_LEN + keep {
            return Ok(None);
        }
        let mut prefix = buf.split_to(HEADER_LEN + keep);
        prefix.advance(HEADER_LEN);
        return Ok(Some(Frame::OversizedCopyData {
            len,
            prefix: prefix.freeze(),
        }));
    }
    if total > max_frame_len {
        return Err(ProtocolError::FrameTooLarge {
            len: total,
            max: max_frame_len,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    match header.tag() {
        b'd' => {
            let mut frame = buf.split_to(total);
            frame.advance(HEADER_LEN);
            Ok(Some(Frame::CopyData(frame.freeze())))
        }
        b'W' => {
            let mut body = buf.split_to(total);
            body.advance(HEADER_LEN);
            check_copy_both_response(&body)?;
            Ok(Some(Frame::CopyBothResponse))
        }
        _ => match Message::parse(buf) {
            Ok(Some(message)) => Ok(Some(Frame::Message(message))),
            // Unreachable: the whole frame is buffered. Reported rather than assumed.
            Ok(None) => Err(ProtocolError::Malformed {
                what: "backend",
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            }),
            Err(source) => Err(ProtocolError::Malformed {
                what: "backend",
                source,
            }),
        },
    }
}

/// `Int8 format | Int16 ncols | Int16[ncols]`; replication always sends `00 0000`.
fn check_copy_both_response(body: &[u8]) -> Result<(), ProtocolError> {
    let malformed = |len| ProtocolError::Length {
        what: "CopyBothResponse",
        len,
        expected: "3 + 2 × column count",
    };
    let [_format, hi, lo, columns @ ..] = body else {
        return Err(malformed(body.len()));
    };
    let ncols = usize::from(u16::from_be_bytes([*hi, *lo]));
    if columns.len() != ncols * 2 {
        return Err(malformed(body.len()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn copy_data(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![b'd'];
        v.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn splits_copy_data_and_keeps_the_rest() {
        let mut bytes = copy_data(b"kabc");
        bytes.extend_from_slice(&[b'W', 0, 0, 0, 7, 0, 0, 0]);
        bytes.extend_from_slice(&[b'c', 0, 0, 0, 4]);
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(Frame::CopyData(payload)) = parse_frame(&mut buf, 1024).unwrap() else {
            panic!("expected CopyData")
        };
        assert_eq!(&payload[..], b"kabc");
        assert!(matches!(
            parse_frame(&mut buf, 1024).unwrap(),
            Some(Frame::CopyBothResponse)
        ));
        assert!(matches!(
            parse_frame(&mut buf, 1024).unwrap(),
            Some(Frame::Message(Message::CopyDone))
        ));
        assert!(buf.is_empty());
        assert!(parse_frame(&mut buf, 1024).unwrap().is_none());
    }

    #[test]
    fn waits_for_every_prefix() {
        let bytes = copy_data(b"w0123456789");
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            assert!(parse_frame(&mut buf, 1024).unwrap().is_none(), "{len}");
            assert_eq!(buf.len(), len, "a partial frame must stay buffered");
        }
    }

    #[test]
    fn refuses_bad_lengths_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(matches!(
            parse_frame(&mut buf, 1024),
            Err(ProtocolError::InvalidLength(_))
        ));
        let mut buf = BytesMut::from(&[b'T', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            parse_frame(&mut buf, 1024),
            Err(ProtocolError::FrameTooLarge { max: 1024, .. })
        ));
        let mut buf = BytesMut::from(&[b'd', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(parse_frame(&mut buf, 1024).is_err());
    }

    #[test]
    fn rejects_a_malformed_copy_both_response() {
        let mut buf = BytesMut::from(&[b'W', 0, 0, 0, 6, 0, 0][..]);
        assert!(parse_frame(&mut buf, 1024).is_err());
        let mut buf = BytesMut::from(&[b'W', 0, 0, 0, 7, 0, 0, 1][..]);
        assert!(parse_frame(&mut buf, 1024).is_err());
        let mut buf = BytesMut::from(&[b'W', 0, 0, 0, 9, 0, 0, 1, 0, 0][..]);
        assert!(parse_frame(&mut buf, 1024).unwrap().is_some());
    }

    #[test]
    fn oversized_copy_data_yields_its_prefix_once_buffered() {
        let mut bytes = vec![b'd'];
        bytes.extend_from_slice(&(4u32 + 5000).to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, 5000));
        for len in 0..HEADER_LEN + 1024 {
            let mut buf = BytesMut::from(&bytes[..len]);
            assert!(parse_frame(&mut buf, 1024).unwrap().is_none(), "{len}");
        }
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(Frame::OversizedCopyData { len, prefix }) = parse_frame(&mut buf, 1024).unwrap()
        else {
            panic!("expected an oversized CopyData")
        };
        assert_eq!((len, prefix.len()), (5000, 1024));
        assert_eq!(
            buf.len(),
            5000 - 1024,
            "the rest stays for the reader to discard"
        );
    }

    /// The reader throws the rest of an oversized message away in small reads (never
    /// holding it) and carries on with the next message.
    #[tokio::test]
    async fn reader_discards_the_rest_of_an_oversized_message() {
        let mut bytes = vec![b'd'];
        bytes.extend_from_slice(&(4u32 + 300_000).to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, 300_000));
        bytes.extend(copy_data(b"k1"));
        let (mut client, server) = tokio::io::duplex(4096);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client.write_all(&bytes).await.unwrap();
        });
        let mut reader = FrameReader::new(server, 1024);
        let Some(Frame::OversizedCopyData { len, prefix }) = reader.next("t").await.unwrap() else {
            panic!("expected an oversized CopyData")
        };
        assert_eq!((len, prefix.len()), (300_000, 1024));
        let Some(Frame::CopyData(next)) = reader.next("t").await.unwrap() else {
            panic!("expected the next CopyData")
        };
        assert_eq!(&next[..], b"k1");
        assert!(reader.buf.capacity() < 300_000, "{}", reader.buf.capacity());
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn reads_many_frames_from_one_read_and_reports_truncation() {
        let mut bytes = Vec::new();
        for _ in 0..100 {
            bytes.extend(copy_data(b"k0"));
        }
        bytes.extend_from_slice(&[b'd', 0, 0]);
        let mut reader = FrameReader::new(&bytes[..], 1024);
        for _ in 0..100 {
            assert!(matches!(
                reader.next("t").await.unwrap(),
                Some(Frame::CopyData(_))
            ));
        }
        assert!(matches!(
            reader.next("t").await,
            Err(ClientError::Closed { context: "t" })
        ));
        let mut reader = FrameReader::new(&b""[..], 1024);
        assert!(reader.next("t").await.unwrap().is_none());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = parse_frame(&mut buf, 128) {}
        }
    }
}
