//! The bytes of `quiver-peer/1`, pure: no I/O, no async. `docs/PROTOCOL.md` ("Peer
//! protocol") is the reference; the golden tests below check its examples.
//!
//! Every message is a frame: a big-endian `u32` length, then that many bytes. A frame's
//! length is checked against its limit before anything is allocated
//! ([`frame_len`]), and encoding cannot fail.
//!
//! - The first stream of a connection carries the handshake: the dialer's [`Hello`], then
//!   the answer, [`Answer::Welcome`] or [`Answer::Refused`].
//! - Every later stream carries one call: the request frame (opaque bytes), then the
//!   response frame, whose first byte is a status ([`Response`]).

use bytes::{BufMut, Bytes};

use crate::cluster::NodeId;

/// Opens every Hello and answer: not a quiver peer otherwise.
pub const MAGIC: [u8; 4] = *b"QVPR";
/// The protocol version this node speaks.
pub const VERSION: u16 = 1;
/// The largest request or response body: a call that needs more is refused with a clear
/// error on the side that notices (the caller before sending, the callee on reading).
pub const MAX_BODY: usize = 64 << 20;
/// The largest handshake frame.
pub const MAX_HANDSHAKE: usize = 4096;
/// The length prefix.
pub const HEADER_LEN: usize = 4;

/// Response status: the body is the handler's answer.
pub const STATUS_OK: u8 = 0;
/// Response status: the body is the handler's error, UTF-8.
pub const STATUS_ERROR: u8 = 1;

const KIND_WELCOME: u8 = 0;
const KIND_REFUSED: u8 = 1;

/// The dialer's introduction, on the first stream of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The cluster the dialer belongs to (at most 255 bytes).
    pub cluster_id: String,
    /// The node id the dialer claims; its certificate must name the same.
    pub node_id: NodeId,
    /// Random per start of the dialer: tells a second node with the same id from a
    /// reconnect of the first.
    pub nonce: u64,
    /// Where peers dial the dialer, `HOST:PORT` (at most 255 bytes).
    pub advertise: String,
}

/// The answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Accepted: the answering node's id and nonce.
    Welcome { node_id: NodeId, nonce: u64 },
    /// Refused, and why (at most 1024 bytes).
    Refused { reason: String },
}

/// The answer to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Ok(Bytes),
    Error(String),
}

/// Bytes that are not `quiver-peer/1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("bad magic {found:02x?} (expected \"QVPR\"): not a quiver peer")]
    BadMagic { found: Vec<u8> },
    #[error("peer protocol version {0}; this node speaks version {VERSION}")]
    Version(u16),
    #[error("the {what} ends early")]
    Truncated { what: &'static str },
    #[error("the {what} is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("the {what} has unknown kind {kind}")]
    UnknownKind { what: &'static str, kind: u8 },
    #[error("the {what} has {extra} bytes after its end")]
    Trailing { what: &'static str, extra: usize },
}

/// Phase one: the length a frame header announces, if it is within `max`.
pub fn frame_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(len)
}

/// The length prefix of a frame of `len` bytes. Callers keep `len` within [`MAX_BODY`] + 1,
/// far below `u32::MAX`.
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    (len.min(u32::MAX as usize) as u32).to_be_bytes()
}

/// A whole frame: the prefix and `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(payload.len()));
    out.extend_from_slice(payload);
    out
}

/// The prefix and status byte of a response frame whose body is `body_len` bytes.
pub fn response_head(status: u8, body_len: usize) -> [u8; HEADER_LEN + 1] {
    let [a, b, c, d] = header(body_len + 1);
    [a, b, c, d, status]
}

impl Hello {
    /// The Hello's payload (without the frame prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.cluster_id.len() + self.advertise.len());
        out.extend_from_slice(&MAGIC);
        out.put_u16(VERSION);
        out.put_u64(self.node_id);
        out.put_u64(self.nonce);
        put_str8(&mut out, &self.cluster_id);
        put_str8(&mut out, &self.advertise);
        out
    }

    /// Reads a Hello payload. A version other than [`VERSION`] is [`WireError::Version`],
    /// which the receiver answers with a refusal rather than a disconnect.
    pub fn decode(payload: &[u8]) -> Result<Hello, WireError> {
        let mut r = Reader::new(payload, "Hello");
        r.magic()?;
        let version = r.u16()?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let hello = Hello {
            node_id: r.u64()?,
            nonce: r.u64()?,
            cluster_id: r.str8()?,
            advertise: r.str8()?,
        };
        r.end()?;
        Ok(hello)
    }
}

impl Answer {
    /// The answer's payload (without the frame prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&MAGIC);
        out.put_u16(VERSION);
        match self {
            Answer::Welcome { node_id, nonce } => {
                out.put_u8(KIND_WELCOME);
                out.put_u64(*node_id);
                out.put_u64(*nonce);
            }
            Answer::Refused { reason } => {
                out.put_u8(KIND_REFUSED);
                let reason = truncate(reason, 1024);
                out.put_u16(reason.len() as u16);
                out.extend_from_slice(reason.as_bytes());
            }
        }
        out
    }

    pub fn decode(payload: &[u8]) -> Result<Answer, WireError> {
        let mut r = Reader::new(payload, "answer to the Hello");
        r.magic()?;
        let version = r.u16()?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let answer = match r.u8()? {
            KIND_WELCOME => Answer::Welcome {
                node_id: r.u64()?,
                nonce: r.u64()?,
            },
            KIND_REFUSED => {
                let len = r.u16()? as usize;
                Answer::Refused {
                    reason: r.string(len)?,
                }
            }
            kind => {
                return Err(WireError::UnknownKind {
                    what: "answer to the Hello",
                    kind,
                })
            }
        };
        r.end()?;
        Ok(answer)
    }
}

impl Response {
    /// Reads a response payload: the status byte, then the body.
    pub fn decode(mut payload: Bytes) -> Result<Response, WireError> {
        let Some(&status) = payload.first() else {
            return Err(WireError::Truncated { what: "response" });
        };
        let body = payload.split_off(1);
        match status {
            STATUS_OK => Ok(Response::Ok(body)),
            STATUS_ERROR => String::from_utf8(body.to_vec())
                .map(Response::Error)
                .map_err(|_| WireError::NotUtf8 {
                    what: "error response",
                }),
            kind => Err(WireError::UnknownKind {
                what: "response",
                kind,
            }),
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn put_str8(out: &mut Vec<u8>, text: &str) {
    let text = truncate(text, u8::MAX as usize);
    out.put_u8(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

/// Reads a payload front to back, naming it in its errors.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated { what: self.what });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn magic(&mut self) -> Result<(), WireError> {
        let found = &self.buf[..self.buf.len().min(MAGIC.len())];
        if found != MAGIC {
            return Err(WireError::BadMagic {
                found: found.to_vec(),
            });
        }
        self.take(MAGIC.len()).map(|_| ())
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let mut out = [0u8; 8];
        out.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(out))
    }

    fn string(&mut self, len: usize) -> Result<String, WireError> {
        let what = self.what;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| WireError::NotUtf8 { what })
    }

    fn str8(&mut self) -> Result<String, WireError> {
        let len = self.u8()? as usize;
        self.string(len)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        Err(WireError::Trailing {
            what: self.what,
            extra: self.buf.len(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            cluster_id: "c1".into(),
            node_id: 2,
            nonce: 0x0102_0304_0506_0708,
            advertise: "h:1".into(),
        }
    }

    #[test]
    fn hello_has_the_documented_bytes() {
        let bytes = frame(&hello().encode());
        let expected: Vec<u8> = [
            &[0, 0, 0, 29][..],
            b"QVPR",
            &[0, 1],
            &[0, 0, 0, 0, 0, 0, 0, 2],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[2],
            b"c1",
            &[3],
            b"h:1",
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(Hello::decode(&bytes[4..]).unwrap(), hello());
    }

    #[test]
    fn answers_have_the_documented_bytes() {
        let welcome = Answer::Welcome {
            node_id: 1,
            nonce: 9,
        };
        let expected: Vec<u8> = [
            &b"QVPR"[..],
            &[0, 1, 0],
            &[0, 0, 0, 0, 0, 0, 0, 1],
            &[0, 0, 0, 0, 0, 0, 0, 9],
        ]
        .concat();
        assert_eq!(welcome.encode(), expected);
        assert_eq!(Answer::decode(&expected).unwrap(), welcome);
        let refused = Answer::Refused {
            reason: "no".into(),
        };
        let expected: Vec<u8> = [&b"QVPR"[..], &[0, 1, 1, 0, 2], b"no"].concat();
        assert_eq!(refused.encode(), expected);
        assert_eq!(Answer::decode(&expected).unwrap(), refused);
    }

    /// The peer section's example block of docs/PROTOCOL.md, whitespace collapsed.
    fn documented_examples() -> String {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        let section = doc
            .split("## Peer protocol (quiver-peer/1)")
            .nth(1)
            .and_then(|s| s.split("### Example bytes").nth(1))
            .unwrap();
        section.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn hex(bytes: &[u8]) -> String {
        let pairs: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        pairs.join(" ")
    }

    #[test]
    fn the_examples_in_protocol_md_are_the_codecs_bytes() {
        let doc = documented_examples();
        let welcome = Answer::Welcome {
            node_id: 1,
            nonce: 9,
        };
        let refused = Answer::Refused {
            reason: "no".into(),
        };
        let frames = [
            frame(&hello().encode()),
            frame(&welcome.encode()),
            frame(&refused.encode()),
            frame(b"ping"),
            [&response_head(STATUS_OK, 4)[..], b"pong"].concat(),
            [&response_head(STATUS_ERROR, 2)[..], b"no"].concat(),
        ];
        for bytes in frames {
            assert!(
                doc.contains(&hex(&bytes)),
                "{} is not in PROTOCOL.md",
                hex(&bytes)
            );
        }
    }

    #[test]
    fn responses_carry_a_status_byte() {
        assert_eq!(response_head(STATUS_OK, 3), [0, 0, 0, 4, 0]);
        assert_eq!(
            Response::decode(Bytes::from_static(b"\x00abc")).unwrap(),
            Response::Ok(Bytes::from_static(b"abc"))
        );
        assert_eq!(
            Response::decode(Bytes::from_static(b"\x01bad")).unwrap(),
            Response::Error("bad".into())
        );
        assert!(Response::decode(Bytes::new()).is_err());
        assert!(Response::decode(Bytes::from_static(b"\x07")).is_err());
        assert!(Response::decode(Bytes::from_static(b"\x01\xff")).is_err());
    }

    #[test]
    fn frame_lengths_are_checked_before_reading() {
        assert_eq!(frame_len([0, 0, 1, 0], 256).unwrap(), 256);
        assert_eq!(
            frame_len([0, 0, 1, 1], 256),
            Err(WireError::TooLarge { len: 257, max: 256 })
        );
        assert!(frame_len([0xff; 4], MAX_BODY).is_err());
    }

    #[test]
    fn garbage_is_named() {
        let err = Hello::decode(b"GET / HTTP/1.1").unwrap_err();
        assert!(matches!(err, WireError::BadMagic { .. }), "{err}");
        assert!(err.to_string().contains("not a quiver peer"));
        let mut payload = hello().encode();
        payload[5] = 2;
        assert_eq!(Hello::decode(&payload), Err(WireError::Version(2)));
        let payload = hello().encode();
        for cut in 0..payload.len() {
            assert!(Hello::decode(&payload[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = payload.clone();
        long.push(0);
        assert!(matches!(
            Hello::decode(&long),
            Err(WireError::Trailing { extra: 1, .. })
        ));
        let mut bad_kind = Answer::Refused { reason: "x".into() }.encode();
        bad_kind[6] = 9;
        assert!(matches!(
            Answer::decode(&bad_kind),
            Err(WireError::UnknownKind { kind: 9, .. })
        ));
    }

    #[test]
    fn long_strings_are_cut_on_a_character_boundary() {
        let mut h = hello();
        h.advertise = "é".repeat(200);
        let decoded = Hello::decode(&h.encode()).unwrap();
        assert_eq!(decoded.advertise.len(), 254);
        assert_eq!(truncate("aé", 2), "a");
    }
}
