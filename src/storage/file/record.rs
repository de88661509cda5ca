//! The record codec: how one message is framed in a segment file. Pure: no I/O.
//!
//! A frame is `[u32 payload_len][u32 crc32c(payload)][payload]`, little-endian, and the
//! payload is `u8 version, u8 flags, u64 offset, u64 timestamp_ns, u64 deliver_at_ms,
//! u16 header_count, header_count × (u16 key_len, key, u32 value_len, value), [route], body`.
//! The route is there only when flags bit 0 ([`FLAG_ROUTED`]) is set: `u16 count, count ×
//! (u8 len, channel name)`, the channels the topic's router chose.
//! Decoding trusts nothing: every length is checked against the bytes at hand before it is
//! used, and anything that doesn't add up is reported as corrupt, never a panic.

use bytes::Bytes;

use crate::message::{ChannelName, Headers, Route, StoredMessage};

/// The first 8 bytes of every segment file.
pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"QVSEG001";
/// Length and CRC before each payload.
pub(super) const FRAME_HEADER: usize = 8;
/// Version, flags, offset, two timestamps and the header count.
pub(super) const MIN_PAYLOAD: usize = 1 + 1 + 8 + 8 + 8 + 2;
/// Largest payload accepted on write or on read. The broker caps bodies at 1 MiB and headers
/// at 64 KiB, so a larger length read from disk can only be corruption.
pub(super) const MAX_PAYLOAD: usize = 8 << 20;
/// The payload version this code writes and reads.
pub(super) const VERSION: u8 = 1;
/// Flags bit: a router chose the message's channels, and the route follows the headers.
pub(super) const FLAG_ROUTED: u8 = 1;

/// Why a payload could not be decoded, although its CRC matched (or was not checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("payload too short")]
    Short,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("header is not UTF-8")]
    Utf8,
    #[error("invalid channel name in the route")]
    Route,
}

/// Payload length of `message`, or None if it can't be framed (too many headers, a key over
/// 64 KiB, or a payload over [`MAX_PAYLOAD`]).
pub(super) fn payload_len(message: &StoredMessage) -> Option<usize> {
    if message.headers.len() > usize::from(u16::MAX) {
        return None;
    }
    let mut len = MIN_PAYLOAD + message.body.len();
    for (key, value) in message.headers.iter() {
        if key.len() > usize::from(u16::MAX) || value.len() > MAX_PAYLOAD {
            return None;
        }
        len += 2 + key.len() + 4 + value.len();
    }
    if let Some(route) = &message.route {
        if route.len() > usize::from(u16::MAX) {
            return None;
        }
        // Channel names are at most 64 bytes, so each length fits its u8.
        len += 2 + route.iter().map(|c| 1 + c.as_str().len()).sum::<usize>();
    }
    (len <= MAX_PAYLOAD).then_some(len)
}

/// Appends the frame of `message` at `offset` to `buf`. The caller has checked
/// [`payload_len`], so every length fits its field.
pub(super) fn encode(offset: u64, message: &StoredMessage, payload_len: usize, buf: &mut Vec<u8>) {
    let frame_start = buf.len();
    buf.reserve(FRAME_HEADER + payload_len);
    buf.extend_from_slice(&(payload_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]); // CRC, patched below
    let payload_start = buf.len();
    buf.push(VERSION);
    buf.push(if message.route.is_some() {
        FLAG_ROUTED
    } else {
        0
    });
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&message.timestamp_ns.to_le_bytes());
    buf.extend_from_slice(&message.deliver_at_ms.to_le_bytes());
    buf.extend_from_slice(&(message.headers.len() as u16).to_le_bytes());
    for (key, value) in message.headers.iter() {
        buf.extend_from_slice(&(key.len() as u16).to_le_bytes());
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
    }
    if let Some(route) = &message.route {
        buf.extend_from_slice(&(route.len() as u16).to_le_bytes());
        for channel in route.iter() {
            buf.push(channel.as_str().len() as u8);
            buf.extend_from_slice(channel.as_str().as_bytes());
        }
    }
    buf.extend_from_slice(&message.body);
    let crc = crc32c::crc32c(&buf[payload_start..]);
    buf[frame_start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
}

/// `message` as one self-checking frame (offset field 0), the unit a replicated batch
/// carries between nodes; None if it cannot be framed.
pub(crate) fn to_frame(message: &StoredMessage) -> Option<Vec<u8>> {
    let len = payload_len(message)?;
    let mut buf = Vec::with_capacity(FRAME_HEADER + len);
    encode(0, message, len, &mut buf);
    Some(buf)
}

/// Splits the frames of a replicated batch: each message, or None at the first frame that
/// is cut short or fails its checksum.
pub(crate) fn from_frames(mut bytes: &[u8]) -> Option<Vec<StoredMessage>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = frame_len(bytes)?;
        let frame = bytes.get(..FRAME_HEADER + len)?;
        check_frame(frame)?;
        out.push(decode(&frame[FRAME_HEADER..]).ok()?.1);
        bytes = &bytes[FRAME_HEADER + len..];
    }
    Some(out)
}

/// The payload length a frame header announces, if it is plausible.
pub(super) fn frame_len(header: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(header.get(..4)?.try_into().ok()?) as usize;
    (MIN_PAYLOAD..=MAX_PAYLOAD).contains(&len).then_some(len)
}

/// The offset of a whole frame (`header` + payload) if its CRC and version check out.
pub(super) fn check_frame(frame: &[u8]) -> Option<u64> {
    let crc = u32::from_le_bytes(frame.get(4..8)?.try_into().ok()?);
    let payload = frame.get(FRAME_HEADER..)?;
    if payload.len() < MIN_PAYLOAD || payload[0] != VERSION {
        return None;
    }
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    peek(payload).map(|(_, offset)| offset)
}

/// The version byte and offset field of a payload prefix, read without checking the CRC
/// (resync uses them to rule out candidates cheaply).
pub(super) fn peek(payload: &[u8]) -> Option<(u8, u64)> {
    Some((*payload.first()?, le_u64(payload.get(2..10)?)))
}

/// Decodes a payload whose CRC has been checked.
pub(super) fn decode(payload: &[u8]) -> Result<(u64, StoredMessage), DecodeError> {
    let mut p = Parser(payload);
    let version = p.u8()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let flags = p.u8()?;
    let offset = p.u64()?;
    let timestamp_ns = p.u64()?;
    let deliver_at_ms = p.u64()?;
    let count = p.u16()?;
    let mut headers = Headers::new();
    for _ in 0..count {
        let key_len = usize::from(p.u16()?);
        let key = p.str(key_len)?;
        let value_len = p.u32()? as usize;
        let value = p.str(value_len)?;
        headers.push(key, value);
    }
    let route = if flags & FLAG_ROUTED != 0 {
        let count = p.u16()?;
        let mut channels = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let len = usize::from(p.u8()?);
            let name = p.str(len)?;
            channels.push(ChannelName::new(name).map_err(|_| DecodeError::Route)?);
        }
        Some(Route::from(channels))
    } else {
        None
    };
    let message = StoredMessage {
        timestamp_ns,
        deliver_at_ms,
        headers,
        body: Bytes::copy_from_slice(p.0),
        route,
    };
    Ok((offset, message))
}

/// The timestamp field of a payload of at least [`MIN_PAYLOAD`] bytes.
pub(super) fn payload_timestamp(payload: &[u8]) -> u64 {
    payload.get(10..18).map_or(0, le_u64)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

/// Reads fields off the front of a payload, failing on a short one.
struct Parser<'a>(&'a [u8]);

impl<'a> Parser<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Short);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(le_u64(self.take(8)?))
    }

    fn str(&mut self, n: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Utf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> StoredMessage {
        let mut headers = Headers::new();
        headers.push("k", "v");
        headers.push("é", "");
        StoredMessage {
            timestamp_ns: 7,
            deliver_at_ms: 9,
            headers,
            body: Bytes::from_static(b"body"),
            route: None,
        }
    }

    #[test]
    fn frame_round_trips() {
        let m = message();
        let len = payload_len(&m).unwrap();
        let mut buf = Vec::new();
        encode(42, &m, len, &mut buf);
        assert_eq!(buf.len(), FRAME_HEADER + len);
        assert_eq!(frame_len(&buf), Some(len));
        assert_eq!(check_frame(&buf), Some(42));
        assert_eq!(payload_timestamp(&buf[FRAME_HEADER..]), 7);
        assert_eq!(decode(&buf[FRAME_HEADER..]).unwrap(), (42, m));
    }

    #[test]
    fn routed_frame_round_trips() {
        let mut m = message();
        let names = ["a", "billing#ephemeral", &"x".repeat(64)];
        m.route = Some(Route::from(
            names.map(|n| ChannelName::new(n).unwrap()).to_vec(),
        ));
        let len = payload_len(&m).unwrap();
        let mut buf = Vec::new();
        encode(3, &m, len, &mut buf);
        assert_eq!(buf.len(), FRAME_HEADER + len);
        assert_eq!(buf[FRAME_HEADER + 1], FLAG_ROUTED);
        assert_eq!(decode(&buf[FRAME_HEADER..]).unwrap(), (3, m.clone()));
        // An empty route (routed to no channel of this topic) is not "every channel".
        m.route = Some(Route::from(Vec::new()));
        let len = payload_len(&m).unwrap();
        let mut buf = Vec::new();
        encode(4, &m, len, &mut buf);
        assert_eq!(decode(&buf[FRAME_HEADER..]).unwrap(), (4, m));
    }

    #[test]
    fn damage_is_detected_not_panicked_on() {
        let m = message();
        let len = payload_len(&m).unwrap();
        let mut buf = Vec::new();
        encode(1, &m, len, &mut buf);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            if i >= 4 {
                assert_eq!(check_frame(&bad), None, "byte {i}");
            }
            let _ = decode(&bad[FRAME_HEADER.min(bad.len())..]);
        }
        for cut in 0..buf.len() {
            assert_eq!(check_frame(&buf[..cut]), None);
            let _ = decode(&buf[FRAME_HEADER.min(cut)..cut]);
        }
        assert_eq!(frame_len(&(MAX_PAYLOAD as u32 + 1).to_le_bytes()), None);
    }

    #[test]
    fn oversized_messages_are_refused() {
        let mut m = message();
        m.body = Bytes::from(vec![0; MAX_PAYLOAD]);
        assert_eq!(payload_len(&m), None);
    }
}
