//! The wire codec: bytes to frames, frames to typed commands and replies, and back.
//!
//! This module is pure: no tokio, no quinn, no broker types. `docs/PROTOCOL.md` describes the
//! same format byte by byte for client authors.
//!
//! Every frame is `[u32 length][u8 type][payload]`, big-endian, where `length` counts the type
//! byte and the payload. Decoding runs in two phases: [`split_frame`] checks whether a whole
//! frame is buffered (and refuses a length over [`MAX_FRAME_LEN`] before anything is
//! allocated), then [`Command::decode`] or [`Reply::decode`] parses it. Encoding cannot fail:
//! every value that reaches an encoder was validated when it was built.

mod command;
mod error;
mod reply;
mod wire;

pub use command::{AdminOp, AdminRequest, Command};
pub use error::{ErrorCode, FrameError, WireError};
pub use reply::{encode_message, Reply};

use bytes::{Buf, Bytes, BytesMut};

/// Largest frame (type byte plus payload) either side accepts: NSQ's 5 MiB MPUB limit.
pub const MAX_FRAME_LEN: usize = 5 << 20;

/// Bytes before the payload: the u32 length and the type byte.
pub const FRAME_HEADER_LEN: usize = 5;

/// A frame whose payload has not been parsed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub kind: u8,
    pub payload: Bytes,
}

impl RawFrame {
    /// The sequence number of a publish frame, read even when the rest of its payload is bad,
    /// so that the error can answer the right request. 0 for other frames.
    pub fn publish_seq(&self) -> u64 {
        let is_publish = matches!(self.kind, command::PUB | command::MPUB | command::DPUB);
        match self.payload.get(..8) {
            Some(seq) if is_publish => seq.iter().fold(0, |n, &b| n << 8 | u64::from(b)),
            _ => 0,
        }
    }
}

/// Phase one of decoding: takes one whole frame off the front of `buf`, if one is there.
///
/// Returns `Ok(None)` when more bytes are needed. A length of zero or over [`MAX_FRAME_LEN`]
/// is refused as soon as the four length bytes arrive, before the payload is buffered.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if buf.len() < 4 + len {
        // No reserve for the declared length: memory grows only as bytes actually arrive.
        return Ok(None);
    }
    buf.advance(4);
    let mut frame = buf.split_to(len).freeze();
    let kind = frame.get_u8();
    Ok(Some(RawFrame {
        kind,
        payload: frame,
    }))
}

#[cfg(test)]
mod tests;
