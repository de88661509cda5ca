//! Tests for the wire codec: property-based round trips (whole, back to back and streamed in
//! arbitrary chunks), robustness against arbitrary bytes, a table of malformed inputs with the
//! exact error each one earns, edge cases at the limits, and golden bytes that pin the layout
//! described in `docs/PROTOCOL.md`.
//!
//! This module holds the helpers the submodules share: encoding and decoding one frame, hex
//! literals, a builder for hand-made payloads, name helpers and [`AnyFrame`].

use bytes::BytesMut;

use super::*;
use crate::message::*;

mod edge_cases;
mod golden;
mod malformed;
mod robustness;
mod round_trip;
mod strategies;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const ALL_CODES: [ErrorCode; 20] = [
    ErrorCode::BadFrame,
    ErrorCode::FrameTooLarge,
    ErrorCode::UnknownFrame,
    ErrorCode::BadTopic,
    ErrorCode::BadChannel,
    ErrorCode::BadMessage,
    ErrorCode::Invalid,
    ErrorCode::FinFailed,
    ErrorCode::ReqFailed,
    ErrorCode::TouchFailed,
    ErrorCode::PubFailed,
    ErrorCode::NotFound,
    ErrorCode::ShuttingDown,
    ErrorCode::Internal,
    ErrorCode::DiskFull,
    ErrorCode::Unrouted,
    ErrorCode::Unauthorized,
    ErrorCode::AuthFailed,
    ErrorCode::NotLeader,
    ErrorCode::Unavailable,
];

const ALL_OPS: [AdminOp; 5] = [
    AdminOp::Create,
    AdminOp::Delete,
    AdminOp::Pause,
    AdminOp::Unpause,
    AdminOp::Empty,
];

fn encode_command(command: &Command) -> BytesMut {
    let mut buf = BytesMut::new();
    command.encode(&mut buf);
    buf
}

fn encode_reply(reply: &Reply) -> BytesMut {
    let mut buf = BytesMut::new();
    reply.encode(&mut buf);
    buf
}

/// Splits exactly one frame off `bytes` and decodes it as a command; the buffer must be empty
/// afterwards.
fn decode_command(bytes: &[u8]) -> Result<Command, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let frame = split_frame(&mut buf)?.expect("a whole frame is buffered");
    assert!(buf.is_empty(), "split_frame left {} bytes", buf.len());
    Command::decode(frame)
}

fn decode_reply(bytes: &[u8]) -> Result<Reply, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let frame = split_frame(&mut buf)?.expect("a whole frame is buffered");
    assert!(buf.is_empty(), "split_frame left {} bytes", buf.len());
    Reply::decode(frame)
}

/// Parses hex written as fields, one per slice element; whitespace is ignored.
fn hex(fields: &[&str]) -> Vec<u8> {
    let digits: Vec<u8> = fields
        .concat()
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_digit(16).expect("hex digit") as u8)
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect()
}

/// A payload under construction, for hand-made (often malformed) frames.
#[derive(Default)]
struct Payload(Vec<u8>);

impl Payload {
    fn new() -> Self {
        Payload::default()
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn str8(self, s: &str) -> Self {
        let len = u8::try_from(s.len()).expect("str8 fits");
        self.u8(len).raw(s.as_bytes())
    }
    fn str16(self, s: &str) -> Self {
        let len = u16::try_from(s.len()).expect("str16 fits");
        self.u16(len).raw(s.as_bytes())
    }
    /// Wraps the payload in a frame of `kind`.
    fn frame(self, kind: u8) -> Vec<u8> {
        let len = u32::try_from(self.0.len() + 1).expect("frame fits");
        let mut out = len.to_be_bytes().to_vec();
        out.push(kind);
        out.extend_from_slice(&self.0);
        out
    }
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("valid topic name")
}

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).expect("valid channel name")
}

/// The exact error the name validator gives for a bad topic name.
fn bad_topic(name: &str) -> FrameError {
    let err = TopicName::new(name).expect_err("invalid topic name");
    assert!(matches!(err, InvalidInput::Name { kind: "topic", .. }));
    FrameError::Invalid(err)
}

fn bad_channel(name: &str) -> FrameError {
    let err = ChannelName::new(name).expect_err("invalid channel name");
    assert!(matches!(
        err,
        InvalidInput::Name {
            kind: "channel",
            ..
        }
    ));
    FrameError::Invalid(err)
}

const SAMPLE_ID: [u8; 16] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 0, 0, 0, 0, 0, 0, 1,
];

/// Frame type bytes, for hand-made frames.
const PUB: u8 = 0x01;
const MPUB: u8 = 0x02;
const DPUB: u8 = 0x03;
const SUB: u8 = 0x10;
const RDY: u8 = 0x11;
const FIN: u8 = 0x12;
const REQ: u8 = 0x13;
const NOP: u8 = 0x16;
const ADMIN: u8 = 0x20;
const SUB_OK: u8 = 0x82;
const MESSAGE: u8 = 0x84;
const ERROR: u8 = 0xff;

/// Either side's frame, so streams can mix them in tests that only look at framing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AnyFrame {
    Command(Command),
    Reply(Reply),
}

impl AnyFrame {
    fn encode(&self, dst: &mut BytesMut) {
        match self {
            AnyFrame::Command(c) => c.encode(dst),
            AnyFrame::Reply(r) => r.encode(dst),
        }
    }

    fn decode_like(&self, frame: RawFrame) -> Result<AnyFrame, FrameError> {
        match self {
            AnyFrame::Command(_) => Command::decode(frame).map(AnyFrame::Command),
            AnyFrame::Reply(_) => Reply::decode(frame).map(AnyFrame::Reply),
        }
    }
}
