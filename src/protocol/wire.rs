//! Primitive readers and writers shared by the command and reply codecs.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::FrameError;
use crate::message::{ChannelName, Headers, MessageId, NewMessage, TopicName, MAX_BODY_LEN};

/// Starts a frame of `kind`; [`finish`] fills in the length once the payload is written.
pub(super) fn begin(dst: &mut BytesMut, kind: u8) -> usize {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u8(kind);
    start
}

pub(super) fn finish(dst: &mut BytesMut, start: usize) {
    let len = (dst.len() - start - 4) as u32;
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a frame with no payload.
pub(super) fn empty(dst: &mut BytesMut, kind: u8) {
    dst.put_u32(1);
    dst.put_u8(kind);
}

pub(super) fn put_str8(dst: &mut BytesMut, s: &str) {
    debug_assert!(s.len() <= u8::MAX as usize);
    dst.put_u8(s.len() as u8);
    dst.put_slice(s.as_bytes());
}

pub(super) fn put_str16(dst: &mut BytesMut, s: &str) {
    let s = &s[..floor_char_boundary(s, u16::MAX as usize)];
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

pub(super) fn put_headers(dst: &mut BytesMut, headers: &Headers) {
    dst.put_u16(headers.len() as u16);
    for (k, v) in headers.iter() {
        put_str16(dst, k);
        put_str16(dst, v);
    }
}

pub(super) fn put_message(dst: &mut BytesMut, message: &NewMessage) {
    put_headers(dst, &message.headers);
    dst.put_u32(message.body.len() as u32);
    dst.put_slice(&message.body);
}

/// A cursor over one frame's payload. Every read checks that enough bytes remain.
pub(super) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(super) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), FrameError> {
        if self.buf.remaining() < n {
            return Err(FrameError::Truncated { what });
        }
        Ok(())
    }

    /// True when every byte has been read.
    pub(super) fn is_empty(&self) -> bool {
        !self.buf.has_remaining()
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64())
    }

    pub(super) fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, FrameError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    pub(super) fn id(&mut self) -> Result<MessageId, FrameError> {
        let raw = self.bytes(16, "message id")?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&raw);
        Ok(MessageId(id))
    }

    fn string(&mut self, n: usize, what: &'static str) -> Result<String, FrameError> {
        let raw = self.bytes(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| FrameError::NotUtf8 { what })
    }

    pub(super) fn str8(&mut self, what: &'static str) -> Result<String, FrameError> {
        let n = self.u8(what)? as usize;
        self.string(n, what)
    }

    pub(super) fn str16(&mut self, what: &'static str) -> Result<String, FrameError> {
        let n = self.u16(what)? as usize;
        self.string(n, what)
    }

    pub(super) fn topic(&mut self) -> Result<TopicName, FrameError> {
        let name = self.str8("topic")?;
        TopicName::new(&name).map_err(FrameError::Invalid)
    }

    pub(super) fn channel(&mut self) -> Result<ChannelName, FrameError> {
        let name = self.str8("channel")?;
        ChannelName::new(&name).map_err(FrameError::Invalid)
    }

    pub(super) fn headers(&mut self) -> Result<Headers, FrameError> {
        let count = self.u16("header count")?;
        let mut pairs = Vec::with_capacity((count as usize).min(self.buf.remaining() / 4));
        for _ in 0..count {
            let key = self.str16("header name")?;
            let value = self.str16("header value")?;
            pairs.push((key, value));
        }
        Headers::from_pairs(pairs).map_err(FrameError::Invalid)
    }

    pub(super) fn body(&mut self) -> Result<Bytes, FrameError> {
        let len = self.u32("body length")? as usize;
        if len > MAX_BODY_LEN {
            return Err(FrameError::Invalid(
                crate::message::InvalidInput::BodyTooLarge {
                    len,
                    max: MAX_BODY_LEN,
                },
            ));
        }
        self.bytes(len, "body")
    }

    pub(super) fn message(&mut self) -> Result<NewMessage, FrameError> {
        let headers = self.headers()?;
        let body = self.body()?;
        Ok(NewMessage { headers, body })
    }

    /// Takes everything that is left.
    pub(super) fn rest(self) -> Bytes {
        self.buf
    }

    /// Ends parsing: a frame with bytes left over is malformed.
    pub(super) fn end(self) -> Result<(), FrameError> {
        match self.buf.remaining() {
            0 => Ok(()),
            extra => Err(FrameError::TrailingBytes { extra }),
        }
    }
}
