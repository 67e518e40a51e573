//! Pure encoding and decoding of the streaming-replication sub-messages carried in
//! CopyData: `'w'` XLogData and `'k'` primary keepalive from the server, `'r'` standby
//! status update from us. No I/O; every length is checked and no input can panic.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::ProtocolError;
use crate::lsn::Lsn;
use crate::source::pgoutput::PG_EPOCH_OFFSET_MICROS;

/// Size of the XLogData header before the pgoutput payload.
pub const XLOG_DATA_HEADER_LEN: usize = 25;
/// Exact size of a primary keepalive message.
pub const PRIMARY_KEEPALIVE_LEN: usize = 18;
/// Payload size of a standby status update (`'r'` through the reply flag).
pub const STANDBY_STATUS_LEN: usize = 34;
/// A standby status update as sent: `'d'`, Int32 length, then the payload.
pub const STANDBY_STATUS_FRAME_LEN: usize = 1 + 4 + STANDBY_STATUS_LEN;

/// One message of a logical replication stream, as sent inside CopyData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL data: exactly one pgoutput message in logical replication.
    XLogData(XLogData),
    /// The server's heartbeat, optionally asking for an immediate status update.
    PrimaryKeepalive(PrimaryKeepalive),
    /// WAL data larger than the maximum message size: the header and the first bytes of
    /// the pgoutput message; the rest was discarded unread.
    OversizedXLogData(OversizedXLogData),
}

/// An XLogData message above the maximum message size, cut short. Its pgoutput message
/// cannot be decoded as a whole; [`OversizedXLogData::prefix`] is enough to tell what it
/// was (e.g. an Insert's relation and leading columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OversizedXLogData {
    /// `dataStart`.
    pub wal_start: Lsn,
    /// `walEnd`.
    pub wal_end: Lsn,
    /// Length of the whole pgoutput message in bytes.
    pub len: usize,
    /// The first bytes of the pgoutput message.
    pub prefix: Bytes,
}

/// `'w'`: one pgoutput message with the walsender's positions.
///
/// The header LSNs are neither unique nor monotonic in logical replication (0/0 for
/// Relation, the change LSN for DML, `end_lsn` for Commit): never report them as progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// `dataStart`.
    pub wal_start: Lsn,
    /// `walEnd`.
    pub wal_end: Lsn,
    /// Server clock, microseconds since 2000-01-01 UTC.
    pub send_time: i64,
    /// The pgoutput message (shares the read buffer; no copy).
    pub data: Bytes,
}

/// `'k'`: sent when the walsender is idle or wants a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The walsender's sent position: every transaction committing at or below it has
    /// already been sent ahead of this message.
    pub wal_end: Lsn,
    /// Server clock, microseconds since 2000-01-01 UTC.
    pub send_time: i64,
    /// The server will drop the connection at `wal_sender_timeout` unless we reply soon.
    pub reply_requested: bool,
}

/// Decodes the payload of one CopyData message of the replication stream.
pub fn parse_copy_data(mut payload: Bytes) -> Result<ReplicationMessage, ProtocolError> {
    let Some(&tag) = payload.first() else {
        return Err(ProtocolError::EmptyCopyData);
    };
    match tag {
        b'w' => {
            if payload.len() < XLOG_DATA_HEADER_LEN {
                return Err(ProtocolError::Length {
                    what: "XLogData",
                    len: payload.len(),
                    expected: "at least 25",
                });
            }
            payload.advance(1);
            let wal_start = Lsn(payload.get_u64());
            let wal_end = Lsn(payload.get_u64());
            let send_time = payload.get_i64();
            Ok(ReplicationMessage::XLogData(XLogData {
                wal_start,
                wal_end,
                send_time,
                data: payload,
            }))
        }
        b'k' => {
            if payload.len() != PRIMARY_KEEPALIVE_LEN {
                return Err(ProtocolError::Length {
                    what: "primary keepalive",
                    len: payload.len(),
                    expected: "exactly 18",
                });
            }
            payload.advance(1);
            let wal_end = Lsn(payload.get_u64());
            let send_time = payload.get_i64();
            let reply_requested = match payload.get_u8() {
                0 => false,
                1 => true,
                value => return Err(ProtocolError::ReplyFlag { value }),
            };
            Ok(ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end,
                send_time,
                reply_requested,
            }))
        }
        tag => Err(ProtocolError::UnknownReplicationMessage {
            tag: char::from(tag),
        }),
    }
}

/// Decodes the kept prefix of a CopyData message of `len` payload bytes that exceeded the
/// maximum message size. Only XLogData can be that large: anything else is an error.
pub fn parse_oversized_copy_data(
    len: usize,
    prefix: Bytes,
) -> Result<ReplicationMessage, ProtocolError> {
    match parse_copy_data(prefix)? {
        ReplicationMessage::XLogData(xlog) => {
            Ok(ReplicationMessage::OversizedXLogData(OversizedXLogData {
                wal_start: xlog.wal_start,
                wal_end: xlog.wal_end,
                len: len.saturating_sub(XLOG_DATA_HEADER_LEN),
                prefix: xlog.data,
            }))
        }
        _ => Err(ProtocolError::Length {
            what: "replication message",
            len,
            expected: "at most the maximum message size (only XLogData may be larger)",
        }),
    }
}

/// Appends a complete standby status update frame (`'d'` + length + `'r'` payload,
/// [`STANDBY_STATUS_FRAME_LEN`] bytes) to `out`.
///
/// For a logical slot the server takes `flush` as the new `confirmed_flush_lsn`.
pub fn encode_standby_status(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    client_time: i64,
    reply_requested: bool,
    out: &mut BytesMut,
) {
    out.reserve(STANDBY_STATUS_FRAME_LEN);
    out.put_u8(b'd');
    // The length counts itself but not the tag: 4 + 34 = 38.
    out.put_u32(4 + STANDBY_STATUS_LEN as u32);
    out.put_u8(b'r');
    out.put_u64(write.0);
    out.put_u64(flush.0);
    out.put_u64(apply.0);
    out.put_i64(client_time);
    out.put_u8(u8::from(reply_requested));
}

/// `time` as microseconds since 2000-01-01 UTC, the protocol's clock.
pub fn pg_epoch_micros(time: SystemTime) -> i64 {
    let unix_micros = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros())
            .map(|m| -m)
            .unwrap_or(i64::MIN),
    };
    unix_micros.saturating_sub(PG_EPOCH_OFFSET_MICROS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn xlog_fixture() -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&0x0000_0000_09D3_6578u64.to_be_bytes());
        v.extend_from_slice(&0x0000_0000_09D3_65A8u64.to_be_bytes());
        v.extend_from_slice(&0x0003_03E7_2F7A_44F7u64.to_be_bytes());
        v.extend_from_slice(b"C\x00payload");
        v
    }

    fn keepalive_fixture(reply: u8) -> Vec<u8> {
        let mut v = vec![b'k'];
        v.extend_from_slice(&0x0000_0001_0000_0010u64.to_be_bytes());
        v.extend_from_slice(&42i64.to_be_bytes());
        v.push(reply);
        v
    }

    #[test]
    fn decodes_xlog_data_without_copying_the_payload() {
        let frame = Bytes::from(xlog_fixture());
        let msg = parse_copy_data(frame.clone()).unwrap();
        let ReplicationMessage::XLogData(x) = msg else {
            panic!("not XLogData: {msg:?}")
        };
        assert_eq!(x.wal_start, "0/9D36578".parse().unwrap());
        assert_eq!(x.wal_end, "0/9D365A8".parse().unwrap());
        assert_eq!(x.send_time, 0x0003_03E7_2F7A_44F7);
        assert_eq!(&x.data[..], b"C\x00payload");
        // Same allocation: the payload is a view into the frame.
        assert_eq!(x.data.as_ptr(), frame[25..].as_ptr());
    }

    #[test]
    fn decodes_an_xlog_data_with_an_empty_payload() {
        let msg = parse_copy_data(Bytes::from(xlog_fixture()[..25].to_vec())).unwrap();
        assert!(matches!(msg, ReplicationMessage::XLogData(x) if x.data.is_empty()));
    }

    #[test]
    fn decodes_keepalives() {
        let msg = parse_copy_data(Bytes::from(keepalive_fixture(1))).unwrap();
        assert_eq!(
            msg,
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(0x1_0000_0010),
                send_time: 42,
                reply_requested: true,
            })
        );
        let msg = parse_copy_data(Bytes::from(keepalive_fixture(0))).unwrap();
        assert!(matches!(
            msg,
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                reply_requested: false,
                ..
            })
        ));
    }

    #[test]
    fn every_prefix_of_a_valid_message_is_an_error() {
        let xlog = xlog_fixture();
        for len in 0..XLOG_DATA_HEADER_LEN {
            assert!(
                parse_copy_data(Bytes::copy_from_slice(&xlog[..len])).is_err(),
                "XLogData prefix of {len} bytes decoded"
            );
        }
        let keepalive = keepalive_fixture(0);
        for len in 0..PRIMARY_KEEPALIVE_LEN {
            assert!(
                parse_copy_data(Bytes::copy_from_slice(&keepalive[..len])).is_err(),
                "keepalive prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn rejects_trailing_bytes_bad_flags_and_unknown_tags() {
        let mut long = keepalive_fixture(0);
        long.push(0);
        assert!(matches!(
            parse_copy_data(Bytes::from(long)),
            Err(ProtocolError::Length { len: 19, .. })
        ));
        assert!(matches!(
            parse_copy_data(Bytes::from(keepalive_fixture(2))),
            Err(ProtocolError::ReplyFlag { value: 2 })
        ));
        assert!(matches!(
            parse_copy_data(Bytes::from_static(b"h\x00")),
            Err(ProtocolError::UnknownReplicationMessage { tag: 'h' })
        ));
        assert!(matches!(
            parse_copy_data(Bytes::new()),
            Err(ProtocolError::EmptyCopyData)
        ));
    }

    #[test]
    fn encodes_a_standby_status_update_byte_for_byte() {
        let mut out = BytesMut::new();
        encode_standby_status(
            Lsn(0x1_0000_0002),
            Lsn(0x3),
            Lsn(0x4),
            0x0102_0304_0506_0708,
            true,
            &mut out,
        );
        assert_eq!(out.len(), 39);
        let mut expected = vec![b'd', 0, 0, 0, 38, b'r'];
        expected.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 4]);
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.push(1);
        assert_eq!(&out[..], &expected[..]);

        out.clear();
        encode_standby_status(Lsn(0), Lsn(0), Lsn(0), 0, false, &mut out);
        assert_eq!(out[38], 0);
    }

    #[test]
    fn converts_to_the_postgres_epoch() {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(pg_epoch_micros(pg_epoch), 0);
        assert_eq!(
            pg_epoch_micros(pg_epoch + Duration::from_micros(1_500)),
            1_500
        );
        assert_eq!(pg_epoch_micros(UNIX_EPOCH), -946_684_800_000_000);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse_copy_data(Bytes::from(bytes));
        }
    }
}
