//! The NSQ V2 wire format, pure: commands are parsed from a byte buffer, frames are encoded
//! into one. No tokio, no broker calls.
//!
//! A command is a line, `VERB [params...]\n`; IDENTIFY, AUTH, PUB, MPUB and DPUB are followed
//! by a body, `[i32 size][bytes]`. Decoding is two-phase: [`decode`] returns `Ok(None)` until
//! the whole command is buffered, and checks every announced size against its limit before
//! waiting for (or allocating) the body. Replies are frames, `[i32 size][i32 type][data]`.
//!
//! Error texts and their order follow nsqd 1.3 (`nsqd/protocol_v2.go`), so that clients that
//! match on them keep working.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::message::{ChannelName, TopicName};

/// The four bytes a V2 client sends first.
pub const MAGIC_V2: &[u8; 4] = b"  V2";
/// A response: `OK`, `CLOSE_WAIT`, `_heartbeat_` or the IDENTIFY JSON.
pub const FRAME_RESPONSE: i32 = 0;
/// An error: `E_CODE description`.
pub const FRAME_ERROR: i32 = 1;
/// A message: timestamp, attempts, id, body.
pub const FRAME_MESSAGE: i32 = 2;
pub const OK: &[u8] = b"OK";
pub const HEARTBEAT: &[u8] = b"_heartbeat_";
pub const CLOSE_WAIT: &[u8] = b"CLOSE_WAIT";
/// Longest command line. nsqd reads lines with a buffer of this size.
pub const MAX_LINE: usize = 16 * 1024;
/// Bytes in a message frame before the body: timestamp, attempts, id.
pub const MESSAGE_HEADER_LEN: usize = 8 + 2 + MSG_ID_LEN;
/// An NSQ message id: 16 bytes, which nsqd fills with hex digits.
pub const MSG_ID_LEN: usize = 16;

/// An error a client is told about: `code` and `text` go on the wire as `"{code} {text}"`. A
/// fatal one closes the connection after it is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {text}")]
pub struct NsqError {
    pub code: &'static str,
    pub text: String,
    pub fatal: bool,
}

impl NsqError {
    /// nsqd's `FatalClientErr`: the connection closes after it is sent.
    pub fn fatal(code: &'static str, text: impl Into<String>) -> NsqError {
        NsqError {
            code,
            text: text.into(),
            fatal: true,
        }
    }

    /// nsqd's `ClientErr`: the connection stays open.
    pub fn soft(code: &'static str, text: impl Into<String>) -> NsqError {
        NsqError {
            code,
            text: text.into(),
            fatal: false,
        }
    }
}

/// Sizes a client may announce.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message body (nsqd `--max-msg-size`).
    pub max_msg_size: u64,
    /// Largest command body: MPUB, IDENTIFY, AUTH (nsqd `--max-body-size`).
    pub max_body_size: u64,
    /// Longest DPUB delay, in milliseconds (nsqd `--max-req-timeout`).
    pub max_defer_ms: u64,
}

/// What a command line starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Identify,
    Auth,
    Sub,
    Rdy,
    Fin,
    Req,
    Touch,
    Pub,
    Mpub,
    Dpub,
    Nop,
    Cls,
    Unknown,
}

impl Verb {
    fn parse(word: &[u8]) -> Verb {
        match word {
            b"IDENTIFY" => Verb::Identify,
            b"AUTH" => Verb::Auth,
            b"SUB" => Verb::Sub,
            b"RDY" => Verb::Rdy,
            b"FIN" => Verb::Fin,
            b"REQ" => Verb::Req,
            b"TOUCH" => Verb::Touch,
            b"PUB" => Verb::Pub,
            b"MPUB" => Verb::Mpub,
            b"DPUB" => Verb::Dpub,
            b"NOP" => Verb::Nop,
            b"CLS" => Verb::Cls,
            _ => Verb::Unknown,
        }
    }
}

/// A message id as NSQ clients see it: the message's offset in its topic's log as 16
/// lowercase hex digits. A connection subscribes to one topic, so the offset alone names
/// the message; the topic's incarnation comes from the subscription.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsqId(pub [u8; MSG_ID_LEN]);

impl NsqId {
    pub fn from_offset(offset: u64) -> NsqId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = [0u8; MSG_ID_LEN];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = HEX[((offset >> (60 - 4 * i)) & 0xf) as usize];
        }
        NsqId(id)
    }

    /// The offset this id names, if it is one this broker handed out.
    pub fn offset(&self) -> Option<u64> {
        let text = std::str::from_utf8(&self.0).ok()?;
        if !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        u64::from_str_radix(text, 16).ok()
    }
}

impl std::fmt::Display for NsqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // nsqd prints ids with %s: the raw bytes.
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Debug for NsqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NsqId({self})")
    }
}

/// A parsed command, validated except for what depends on the connection's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The JSON body, parsed by `identify`.
    Identify(Bytes),
    Auth(Bytes),
    Sub {
        topic: TopicName,
        channel: ChannelName,
    },
    /// The count as sent; the range check needs the connection's limit.
    Rdy(u64),
    Fin(NsqId),
    Req {
        id: NsqId,
        /// As sent; REQ clamps it to the maximum rather than refusing.
        delay_ms: u64,
    },
    Touch(NsqId),
    Pub {
        topic: TopicName,
        body: Bytes,
    },
    Mpub {
        topic: TopicName,
        bodies: Vec<Bytes>,
    },
    Dpub {
        topic: TopicName,
        delay_ms: u64,
        body: Bytes,
    },
    Nop,
    Cls,
}

/// Parses the next command from `buf`, consuming it. `Ok(None)`: more bytes are needed.
///
/// `gate` runs as soon as the verb is known, before the parameters are looked at, with the
/// verb and its raw text: it checks the connection's state, as nsqd does before parsing. Any
/// error is fatal unless it says otherwise; `buf` is then left as it was.
pub fn decode(
    buf: &mut BytesMut,
    limits: &Limits,
    gate: impl FnOnce(Verb, &[u8]) -> Result<(), NsqError>,
) -> Result<Option<Command>, NsqError> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(NsqError::fatal("E_INVALID", "command line too long"));
        }
        return Ok(None);
    };
    let mut line = &buf[..newline];
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    let params = Params::split(line);
    let verb = Verb::parse(params.get(0));
    gate(verb, params.get(0))?;
    let body_at = newline + 1;
    let parsed = match verb {
        Verb::Nop => Some((Command::Nop, body_at)),
        Verb::Cls => Some((Command::Cls, body_at)),
        Verb::Rdy => Some((rdy(&params)?, body_at)),
        Verb::Fin => Some((Command::Fin(id_param(&params, "FIN", 2)?), body_at)),
        Verb::Touch => Some((Command::Touch(id_param(&params, "TOUCH", 2)?), body_at)),
        Verb::Req => Some((req(&params)?, body_at)),
        Verb::Sub => Some((sub(&params)?, body_at)),
        Verb::Identify => body(buf, body_at, "IDENTIFY", "E_BAD_BODY", limits.max_body_size)?
            .map(|(b, end)| (Command::Identify(b), end)),
        Verb::Auth => {
            if params.count != 1 {
                return Err(NsqError::fatal(
                    "E_INVALID",
                    "AUTH invalid number of parameters",
                ));
            }
            body(buf, body_at, "AUTH", "E_BAD_BODY", limits.max_body_size)?
                .map(|(b, end)| (Command::Auth(b), end))
        }
        Verb::Pub => {
            let topic = topic(&params, "PUB", 2)?;
            message_body(buf, body_at, "PUB", limits)?
                .map(|(body, end)| (Command::Pub { topic, body }, end))
        }
        Verb::Dpub => {
            let topic = topic(&params, "DPUB", 3)?;
            let delay_ms = dpub_delay(params.get(2), limits)?;
            message_body(buf, body_at, "DPUB", limits)?.map(|(body, end)| {
                let dpub = Command::Dpub {
                    topic,
                    delay_ms,
                    body,
                };
                (dpub, end)
            })
        }
        Verb::Mpub => {
            if params.count < 2 {
                return Err(insufficient("MPUB", "parameters"));
            }
            // nsqd repeats the code in this one text.
            let what = "E_BAD_TOPIC MPUB topic";
            let topic = name(params.get(1), what, "E_BAD_TOPIC", TopicName::new)?;
            match body(buf, body_at, "MPUB", "E_BAD_BODY", limits.max_body_size)? {
                Some((body, end)) => {
                    let bodies = split_mpub(body, limits)?;
                    Some((Command::Mpub { topic, bodies }, end))
                }
                None => None,
            }
        }
        Verb::Unknown => {
            let word = String::from_utf8_lossy(params.get(0)).into_owned();
            return Err(NsqError::fatal(
                "E_INVALID",
                format!("invalid command {word}"),
            ));
        }
    };
    let Some((command, end)) = parsed else {
        return Ok(None);
    };
    // Body commands split their body off `buf` already; the rest is consumed here.
    let consumed = end.min(buf.len());
    buf.advance(consumed);
    Ok(Some(command))
}

/// Up to 8 space-separated parameters of a line, and how many there were in all.
struct Params<'a> {
    words: [&'a [u8]; 8],
    count: usize,
}

impl<'a> Params<'a> {
    fn split(line: &'a [u8]) -> Params<'a> {
        let mut params = Params {
            words: [&[]; 8],
            count: 0,
        };
        for word in line.split(|&b| b == b' ') {
            if let Some(slot) = params.words.get_mut(params.count) {
                *slot = word;
            }
            params.count += 1;
        }
        params
    }

    fn get(&self, i: usize) -> &'a [u8] {
        self.words.get(i).copied().unwrap_or(&[])
    }
}

fn insufficient(verb: &str, what: &str) -> NsqError {
    NsqError::fatal("E_INVALID", format!("{verb} insufficient number of {what}"))
}

fn rdy(params: &Params<'_>) -> Result<Command, NsqError> {
    if params.count < 2 {
        return Ok(Command::Rdy(1));
    }
    let count = base10(params.get(1)).ok_or_else(|| {
        NsqError::fatal(
            "E_INVALID",
            format!("RDY could not parse count {}", lossy(params.get(1))),
        )
    })?;
    Ok(Command::Rdy(count))
}

fn req(params: &Params<'_>) -> Result<Command, NsqError> {
    let id = id_param(params, "REQ", 3)?;
    let delay_ms = base10(params.get(2)).ok_or_else(|| {
        NsqError::fatal(
            "E_INVALID",
            format!("REQ could not parse timeout {}", lossy(params.get(2))),
        )
    })?;
    Ok(Command::Req { id, delay_ms })
}

fn sub(params: &Params<'_>) -> Result<Command, NsqError> {
    if params.count < 3 {
        return Err(insufficient("SUB", "parameters"));
    }
    let topic = name(params.get(1), "SUB topic", "E_BAD_TOPIC", TopicName::new)?;
    let channel = name(
        params.get(2),
        "SUB channel",
        "E_BAD_CHANNEL",
        ChannelName::new,
    )?;
    Ok(Command::Sub { topic, channel })
}

fn id_param(params: &Params<'_>, verb: &str, needed: usize) -> Result<NsqId, NsqError> {
    if params.count < needed {
        return Err(insufficient(verb, "params"));
    }
    let id: [u8; MSG_ID_LEN] = params
        .get(1)
        .try_into()
        .map_err(|_| NsqError::fatal("E_INVALID", "invalid message ID"))?;
    Ok(NsqId(id))
}

fn topic(params: &Params<'_>, verb: &str, needed: usize) -> Result<TopicName, NsqError> {
    if params.count < needed {
        return Err(insufficient(verb, "parameters"));
    }
    let what = format!("{verb} topic");
    name(params.get(1), &what, "E_BAD_TOPIC", TopicName::new)
}

fn name<T, E>(
    raw: &[u8],
    what: &str,
    code: &'static str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, NsqError> {
    let invalid = || NsqError::fatal(code, format!("{what} name {} is not valid", go_quote(raw)));
    let text = std::str::from_utf8(raw).map_err(|_| invalid())?;
    parse(text).map_err(|_| invalid())
}

fn dpub_delay(raw: &[u8], limits: &Limits) -> Result<u64, NsqError> {
    let delay_ms = base10(raw).ok_or_else(|| {
        NsqError::fatal(
            "E_INVALID",
            format!("DPUB could not parse timeout {}", lossy(raw)),
        )
    })?;
    // Go converts the count to a signed duration; a huge one wraps negative.
    if delay_ms > limits.max_defer_ms || delay_ms > i64::MAX as u64 / 1_000_000 {
        return Err(NsqError::fatal(
            "E_INVALID",
            format!(
                "DPUB timeout {delay_ms} out of range 0-{}",
                limits.max_defer_ms
            ),
        ));
    }
    Ok(delay_ms)
}

/// A PUB or DPUB body: its size is checked against the largest message.
fn message_body(
    buf: &mut BytesMut,
    at: usize,
    verb: &str,
    limits: &Limits,
) -> Result<Option<(Bytes, usize)>, NsqError> {
    let Some(len) = read_len(buf, at) else {
        return Ok(None);
    };
    if len <= 0 {
        return Err(NsqError::fatal(
            "E_BAD_MESSAGE",
            format!("{verb} invalid message body size {len}"),
        ));
    }
    if len as u64 > limits.max_msg_size {
        return Err(NsqError::fatal(
            "E_BAD_MESSAGE",
            format!("{verb} message too big {len} > {}", limits.max_msg_size),
        ));
    }
    Ok(take_body(buf, at, len as usize))
}

/// An IDENTIFY, AUTH or MPUB body, at most `max` bytes.
fn body(
    buf: &mut BytesMut,
    at: usize,
    verb: &str,
    code: &'static str,
    max: u64,
) -> Result<Option<(Bytes, usize)>, NsqError> {
    let Some(len) = read_len(buf, at) else {
        return Ok(None);
    };
    if len as i64 > max as i64 {
        return Err(NsqError::fatal(
            code,
            format!("{verb} body too big {len} > {max}"),
        ));
    }
    if len <= 0 {
        return Err(NsqError::fatal(
            code,
            format!("{verb} invalid body size {len}"),
        ));
    }
    Ok(take_body(buf, at, len as usize))
}

fn read_len(buf: &[u8], at: usize) -> Option<i32> {
    let bytes: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    Some(i32::from_be_bytes(bytes))
}

/// Splits the line and a `len`-byte body off `buf` once all of it is there.
fn take_body(buf: &mut BytesMut, at: usize, len: usize) -> Option<(Bytes, usize)> {
    let end = at + 4 + len;
    if buf.len() < end {
        buf.reserve(end - buf.len());
        return None;
    }
    buf.advance(at + 4);
    Some((buf.split_to(len).freeze(), 0))
}

/// Splits an MPUB body, `[i32 count]([i32 size][bytes])*`, into message bodies that share
/// its buffer.
pub fn split_mpub(mut body: Bytes, limits: &Limits) -> Result<Vec<Bytes>, NsqError> {
    let bad = |code, text: String| NsqError::fatal(code, text);
    let Some(count) = read_len(&body, 0) else {
        return Err(bad(
            "E_BAD_BODY",
            "MPUB failed to read message count".into(),
        ));
    };
    // 4 bytes of count, then at least 5 per message (size and one byte).
    let max_messages = (limits.max_body_size as i64 - 4) / 5;
    if count <= 0 || count as i64 > max_messages {
        return Err(bad(
            "E_BAD_BODY",
            format!("MPUB invalid message count {count}"),
        ));
    }
    body.advance(4);
    let mut bodies = Vec::with_capacity(count as usize);
    for i in 0..count {
        let Some(size) = read_len(&body, 0) else {
            return Err(bad(
                "E_BAD_MESSAGE",
                format!("MPUB failed to read message({i}) body size"),
            ));
        };
        if size <= 0 {
            return Err(bad(
                "E_BAD_MESSAGE",
                format!("MPUB invalid message({i}) body size {size}"),
            ));
        }
        if size as u64 > limits.max_msg_size {
            return Err(bad(
                "E_BAD_MESSAGE",
                format!("MPUB message too big {size} > {}", limits.max_msg_size),
            ));
        }
        let size = size as usize;
        if body.len() < 4 + size {
            return Err(bad(
                "E_BAD_MESSAGE",
                "MPUB failed to read message body".into(),
            ));
        }
        body.advance(4);
        bodies.push(body.split_to(size));
    }
    if !body.is_empty() {
        // nsqd would read the surplus as the next command; here it is refused.
        return Err(bad(
            "E_BAD_BODY",
            format!(
                "MPUB body has {} bytes after its {count} messages",
                body.len()
            ),
        ));
    }
    Ok(bodies)
}

/// nsqd's `ByteToBase10`: decimal digits only (an empty string is 0), wrapping on overflow.
fn base10(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.wrapping_mul(10).wrapping_add(u64::from(d - b'0')))
    })
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Quotes like Go's `%q`: printable characters as they are, the rest escaped.
pub fn go_quote(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() + 2);
    out.push('"');
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

/// Appends a response frame.
pub fn put_response(out: &mut BytesMut, data: &[u8]) {
    put_frame(out, FRAME_RESPONSE, data);
}

/// Appends an error frame: `"{code} {text}"`.
pub fn put_error(out: &mut BytesMut, e: &NsqError) {
    let len = e.code.len() + 1 + e.text.len();
    out.reserve(8 + len);
    out.put_i32((4 + len) as i32);
    out.put_i32(FRAME_ERROR);
    out.put_slice(e.code.as_bytes());
    out.put_u8(b' ');
    out.put_slice(e.text.as_bytes());
}

/// Appends a frame of any kind.
pub fn put_frame(out: &mut BytesMut, kind: i32, data: &[u8]) {
    out.reserve(8 + data.len());
    out.put_i32((4 + data.len()) as i32);
    out.put_i32(kind);
    out.put_slice(data);
}

/// Appends a message frame.
pub fn put_message(out: &mut BytesMut, id: NsqId, timestamp_ns: u64, attempts: u16, body: &[u8]) {
    let len = 4 + MESSAGE_HEADER_LEN + body.len();
    out.reserve(4 + len);
    out.put_i32(len as i32);
    out.put_i32(FRAME_MESSAGE);
    out.put_i64(timestamp_ns as i64);
    out.put_u16(attempts);
    out.put_slice(&id.0);
    out.put_slice(body);
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
