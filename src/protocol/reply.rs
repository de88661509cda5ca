//! Frames the broker sends: publish confirms, deliveries, admin answers and errors.

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{self, Reader};
use super::{ErrorCode, FrameError, RawFrame, WireError};
use crate::message::{Delivery, Headers, MessageId};

pub(super) const PUB_OK: u8 = 0x81;
pub(super) const SUB_OK: u8 = 0x82;
pub(super) const CLOSE_OK: u8 = 0x83;
pub(super) const MESSAGE: u8 = 0x84;
pub(super) const ADMIN_OK: u8 = 0x85;
pub(super) const AUTH_OK: u8 = 0x86;
pub(super) const ERROR: u8 = 0xff;

/// A frame from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The publish with this sequence number is stored as the fsync policy promises.
    /// `duplicates` has one entry per message of the request, true for those that were
    /// duplicates of a message in the topic's dedup window (confirmed, not stored again), or
    /// is empty, as it always is when none was. An empty list adds no bytes, so a reply
    /// without duplicates is the 13-byte frame clients have always decoded.
    PubOk {
        seq: u64,
        duplicates: Vec<bool>,
    },
    /// The SUB was accepted; messages follow as RDY allows.
    SubOk,
    /// After CLS: nothing is in flight any more and the stream ends.
    CloseOk,
    Message(Delivery),
    /// The answer to an admin request: a JSON document.
    AdminOk(Bytes),
    /// AUTH was accepted: a JSON document with `identity`, `method`, `identity_url` and
    /// `permission_count`.
    AuthOk(Bytes),
    Error(WireError),
}

impl Reply {
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Reply::PubOk { seq, duplicates } => {
                let start = wire::begin(dst, PUB_OK);
                dst.put_u64(*seq);
                if !duplicates.is_empty() {
                    put_bitmap(dst, duplicates);
                }
                wire::finish(dst, start);
            }
            Reply::SubOk => wire::empty(dst, SUB_OK),
            Reply::CloseOk => wire::empty(dst, CLOSE_OK),
            Reply::Message(d) => {
                encode_message(dst, d.id, d.timestamp_ns, d.attempts, &d.headers, &d.body)
            }
            Reply::AdminOk(json) => {
                let start = wire::begin(dst, ADMIN_OK);
                dst.put_slice(json);
                wire::finish(dst, start);
            }
            Reply::AuthOk(json) => {
                let start = wire::begin(dst, AUTH_OK);
                dst.put_slice(json);
                wire::finish(dst, start);
            }
            Reply::Error(e) => {
                let start = wire::begin(dst, ERROR);
                dst.put_u16(e.code as u16);
                dst.put_u8(e.fatal.into());
                dst.put_u64(e.seq);
                wire::put_str16(dst, &e.message);
                wire::finish(dst, start);
            }
        }
    }

    pub fn decode(frame: RawFrame) -> Result<Reply, FrameError> {
        let kind = frame.kind;
        let mut r = Reader::new(frame.payload);
        let reply = match kind {
            PUB_OK => Reply::PubOk {
                seq: r.u64("sequence number")?,
                duplicates: if r.is_empty() {
                    Vec::new()
                } else {
                    bitmap(&mut r)?
                },
            },
            SUB_OK => Reply::SubOk,
            CLOSE_OK => Reply::CloseOk,
            MESSAGE => Reply::Message(Delivery {
                id: r.id()?,
                timestamp_ns: r.u64("timestamp")?,
                attempts: r.u16("attempts")?,
                headers: r.headers()?,
                body: r.body()?,
            }),
            ADMIN_OK => return Ok(Reply::AdminOk(r.rest())),
            AUTH_OK => return Ok(Reply::AuthOk(r.rest())),
            ERROR => {
                let raw = r.u16("error code")?;
                let code = ErrorCode::from_u16(raw).ok_or(FrameError::OutOfRange {
                    what: "error code",
                    value: raw.into(),
                })?;
                Reply::Error(WireError {
                    code,
                    fatal: r.u8("fatal flag")? != 0,
                    seq: r.u64("sequence number")?,
                    message: r.str16("error message")?,
                })
            }
            kind => return Err(FrameError::UnknownType { kind }),
        };
        r.end()?;
        Ok(reply)
    }
}

/// The duplicate marks of a PUB_OK: `u32 count`, then `ceil(count / 8)` bytes in which bit
/// `i % 8` (least significant first) of byte `i / 8` is message `i` of the request.
fn put_bitmap(dst: &mut BytesMut, marks: &[bool]) {
    dst.put_u32(marks.len() as u32);
    for chunk in marks.chunks(8) {
        let byte = chunk
            .iter()
            .enumerate()
            .fold(0u8, |b, (i, &m)| b | (u8::from(m) << i));
        dst.put_u8(byte);
    }
}

fn bitmap(r: &mut Reader) -> Result<Vec<bool>, FrameError> {
    let count = r.u32("duplicate count")? as usize;
    // The bytes must be there before anything is allocated for them.
    let bytes = r.bytes(count.div_ceil(8), "duplicate bitmap")?;
    Ok((0..count)
        .map(|i| bytes[i / 8] & (1 << (i % 8)) != 0)
        .collect())
}

/// Appends a MESSAGE frame straight from its parts, so the broker need not build a
/// [`Delivery`] for every send.
pub fn encode_message(
    dst: &mut BytesMut,
    id: MessageId,
    timestamp_ns: u64,
    attempts: u16,
    headers: &Headers,
    body: &[u8],
) {
    let start = wire::begin(dst, MESSAGE);
    dst.put_slice(&id.0);
    dst.put_u64(timestamp_ns);
    dst.put_u16(attempts);
    wire::put_headers(dst, headers);
    dst.put_u32(body.len() as u32);
    dst.put_slice(body);
    wire::finish(dst, start);
}
