//! Tests for the wire codec: property-based round trips (whole, back to back and streamed in
//! arbitrary chunks), robustness against arbitrary bytes, a table of malformed inputs with the
//! exact error each one earns, and golden bytes that pin the layout described in
//! `docs/PROTOCOL.md`.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::message::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const ALL_CODES: [ErrorCode; 14] = [
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

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// 1..=max bytes of the name alphabet.
fn name_base(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9._-]{{{min},{max}}}")).expect("valid regex")
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    prop_oneof![
        4 => name_base(1, MAX_NAME_LEN),
        1 => name_base(MAX_NAME_LEN, MAX_NAME_LEN),
        2 => name_base(1, MAX_NAME_LEN - EPHEMERAL_SUFFIX.len())
            .prop_map(|base| format!("{base}{EPHEMERAL_SUFFIX}")),
        // Dead-letter topics, which may run past 64 bytes by their suffix.
        2 => name_base(1, MAX_NAME_LEN)
            .prop_map(|base| topic(&base).dead_letter().as_str().to_string()),
    ]
    .prop_map(|name| topic(&name))
}

fn channel_name() -> impl Strategy<Value = ChannelName> {
    prop_oneof![
        4 => name_base(1, MAX_NAME_LEN),
        1 => name_base(MAX_NAME_LEN, MAX_NAME_LEN),
        2 => name_base(1, MAX_NAME_LEN - EPHEMERAL_SUFFIX.len())
            .prop_map(|base| format!("{base}{EPHEMERAL_SUFFIX}")),
    ]
    .prop_map(|name| channel(&name))
}

fn message_id() -> impl Strategy<Value = MessageId> {
    any::<[u8; 16]>().prop_map(MessageId)
}

/// Arbitrary Unicode, including control characters and NUL.
fn unicode(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), min..=max).prop_map(String::from_iter)
}

fn headers() -> impl Strategy<Value = Headers> {
    proptest::collection::vec((unicode(1, 16), unicode(0, 32)), 0..8)
        .prop_map(|pairs| Headers::from_pairs(pairs).expect("small headers are valid"))
}

fn body(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn new_message() -> impl Strategy<Value = NewMessage> {
    (headers(), body(2048)).prop_map(|(headers, body)| NewMessage { headers, body })
}

/// A duration the wire can carry exactly: whole milliseconds within a u32.
fn millis() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_millis(u32::MAX.into())),
        any::<u32>().prop_map(|ms| Duration::from_millis(ms.into())),
    ]
}

/// A SUB timeout: `None`, or a non-zero whole number of milliseconds (0 on the wire is `None`).
fn msg_timeout() -> impl Strategy<Value = Option<Duration>> {
    proptest::option::of((1..=u32::MAX).prop_map(|ms| Duration::from_millis(ms.into())))
}

fn admin_op() -> impl Strategy<Value = AdminOp> {
    proptest::sample::select(ALL_OPS.to_vec())
}

fn admin_request() -> impl Strategy<Value = AdminRequest> {
    prop_oneof![
        Just(AdminRequest::Stats { topic: None }),
        topic_name().prop_map(|topic| AdminRequest::Stats { topic: Some(topic) }),
        (admin_op(), topic_name()).prop_map(|(op, topic)| AdminRequest::Topic { op, topic }),
        (admin_op(), topic_name(), channel_name())
            .prop_map(|(op, topic, channel)| AdminRequest::Channel { op, topic, channel }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (any::<u64>(), topic_name(), new_message()).prop_map(|(seq, topic, message)| {
            Command::Pub {
                seq,
                topic,
                message,
            }
        }),
        (
            any::<u64>(),
            topic_name(),
            proptest::collection::vec(new_message(), 1..5)
        )
            .prop_map(|(seq, topic, messages)| Command::Mpub {
                seq,
                topic,
                messages
            }),
        (any::<u64>(), topic_name(), millis(), new_message()).prop_map(
            |(seq, topic, delay, message)| Command::Dpub {
                seq,
                topic,
                delay,
                message
            }
        ),
        (topic_name(), channel_name(), msg_timeout()).prop_map(|(topic, channel, msg_timeout)| {
            Command::Sub {
                topic,
                channel,
                msg_timeout,
            }
        }),
        any::<u32>().prop_map(Command::Rdy),
        message_id().prop_map(Command::Fin),
        (message_id(), millis()).prop_map(|(id, delay)| Command::Req { id, delay }),
        message_id().prop_map(Command::Touch),
        Just(Command::Cls),
        Just(Command::Nop),
        admin_request().prop_map(Command::Admin),
    ]
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        message_id(),
        any::<u64>(),
        any::<u16>(),
        headers(),
        body(2048),
    )
        .prop_map(|(id, timestamp_ns, attempts, headers, body)| Delivery {
            id,
            timestamp_ns,
            attempts,
            headers,
            body,
        })
}

fn wire_error() -> impl Strategy<Value = WireError> {
    (
        proptest::sample::select(ALL_CODES.to_vec()),
        any::<bool>(),
        any::<u64>(),
        unicode(0, 64),
    )
        .prop_map(|(code, fatal, seq, message)| WireError {
            code,
            fatal,
            seq,
            message,
        })
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        any::<u64>().prop_map(|seq| Reply::PubOk { seq }),
        Just(Reply::SubOk),
        Just(Reply::CloseOk),
        delivery().prop_map(Reply::Message),
        body(512).prop_map(Reply::AdminOk),
        wire_error().prop_map(Reply::Error),
    ]
}

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

fn any_frame() -> impl Strategy<Value = AnyFrame> {
    prop_oneof![
        command().prop_map(AnyFrame::Command),
        reply().prop_map(AnyFrame::Reply),
    ]
}

// ---------------------------------------------------------------------------------------------
// Round-trip properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn every_command_round_trips_and_split_frame_takes_exactly_its_bytes(
        command in command(),
        trailer in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let encoded = encode_command(&command);
        let declared = u32::from_be_bytes([encoded[0], encoded[1], encoded[2], encoded[3]]);
        prop_assert_eq!(declared as usize, encoded.len() - 4);
        prop_assert!(encoded.len() - 4 <= MAX_FRAME_LEN);

        let mut buf = encoded.clone();
        buf.extend_from_slice(&trailer);
        let frame = split_frame(&mut buf)?.expect("whole frame buffered");
        prop_assert_eq!(&buf[..], &trailer[..]);
        prop_assert_eq!(frame.kind, encoded[4]);
        prop_assert_eq!(Command::decode(frame)?, command);
    }

    #[test]
    fn every_reply_round_trips_and_split_frame_takes_exactly_its_bytes(
        reply in reply(),
        trailer in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let encoded = encode_reply(&reply);
        let declared = u32::from_be_bytes([encoded[0], encoded[1], encoded[2], encoded[3]]);
        prop_assert_eq!(declared as usize, encoded.len() - 4);

        let mut buf = encoded.clone();
        buf.extend_from_slice(&trailer);
        let frame = split_frame(&mut buf)?.expect("whole frame buffered");
        prop_assert_eq!(&buf[..], &trailer[..]);
        prop_assert_eq!(Reply::decode(frame)?, reply);
    }

    #[test]
    fn encode_message_writes_the_same_bytes_as_a_message_reply(delivery in delivery()) {
        let mut direct = BytesMut::new();
        encode_message(
            &mut direct,
            delivery.id,
            delivery.timestamp_ns,
            delivery.attempts,
            &delivery.headers,
            &delivery.body,
        );
        prop_assert_eq!(direct, encode_reply(&Reply::Message(delivery)));
    }

    #[test]
    fn encoding_appends_without_touching_what_is_already_buffered(
        prefix in proptest::collection::vec(any::<u8>(), 0..32),
        command in command(),
    ) {
        let mut buf = BytesMut::from(&prefix[..]);
        command.encode(&mut buf);
        prop_assert_eq!(&buf[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&buf[prefix.len()..], &encode_command(&command)[..]);
    }

    #[test]
    fn frames_encoded_back_to_back_decode_in_order(
        frames in proptest::collection::vec(any_frame(), 1..8),
    ) {
        let mut buf = BytesMut::new();
        frames.iter().for_each(|f| f.encode(&mut buf));
        for expected in &frames {
            let raw = split_frame(&mut buf)?.expect("next frame buffered");
            prop_assert_eq!(&expected.decode_like(raw)?, expected);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(split_frame(&mut buf)?, None);
    }

    #[test]
    fn frames_fed_in_arbitrary_chunks_decode_once_complete(
        frames in proptest::collection::vec(any_frame(), 1..6),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..24),
    ) {
        // Where each frame ends in the stream.
        let mut stream = BytesMut::new();
        let mut ends = Vec::new();
        for frame in &frames {
            frame.encode(&mut stream);
            ends.push(stream.len());
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        points.dedup();

        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut fed = 0;
        for point in points {
            buf.extend_from_slice(&stream[fed..point]);
            fed = point;
            while let Some(raw) = split_frame(&mut buf)? {
                let expected = &frames[decoded.len()];
                decoded.push(expected.decode_like(raw)?);
            }
            // Exactly the frames that are wholly fed have come out; the rest waits.
            let complete = ends.iter().filter(|&&end| end <= fed).count();
            prop_assert_eq!(decoded.len(), complete);
            let consumed = if complete == 0 { 0 } else { ends[complete - 1] };
            prop_assert_eq!(buf.len(), fed - consumed);
        }
        prop_assert_eq!(decoded, frames);
        prop_assert!(buf.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Robustness: arbitrary input never panics
// ---------------------------------------------------------------------------------------------

/// Every type byte either decoder knows, plus a few it doesn't.
const KINDS: [u8; 20] = [
    0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x20, 0x81, 0x82, 0x83, 0x84, 0x85,
    0xff, 0x00, 0x04, 0x86,
];

/// Decodes a frame both ways; whatever decodes must survive another encode/decode unchanged.
fn decode_both_ways(raw: RawFrame) -> Result<(), TestCaseError> {
    if let Ok(command) = Command::decode(raw.clone()) {
        prop_assert_eq!(decode_command(&encode_command(&command)), Ok(command));
    }
    if let Ok(reply) = Reply::decode(raw) {
        prop_assert_eq!(decode_reply(&encode_reply(&reply)), Ok(reply));
    }
    Ok(())
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(raw)) = split_frame(&mut buf) {
            decode_both_ways(raw)?;
        }
    }

    #[test]
    fn decoding_arbitrary_payloads_of_every_type_never_panics(
        kind in proptest::sample::select(KINDS.to_vec()),
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        decode_both_ways(RawFrame { kind, payload: Bytes::from(payload) })?;
    }

    #[test]
    fn decoding_corrupted_valid_frames_never_panics(
        frame in any_frame(),
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = BytesMut::new();
        frame.encode(&mut bytes);
        // Leave the length prefix alone so the corruption reaches the payload parsers.
        let body_len = bytes.len() - 4;
        for (at, value) in flips {
            bytes[4 + at.index(body_len)] = value;
        }
        let mut buf = bytes;
        let raw = split_frame(&mut buf)?.expect("length prefix intact");
        prop_assert!(buf.is_empty());
        decode_both_ways(raw)?;
    }

    #[test]
    fn truncating_a_valid_frame_is_an_error_not_a_panic(
        frame in any_frame(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let mut bytes = BytesMut::new();
        frame.encode(&mut bytes);
        let payload_len = bytes.len() - FRAME_HEADER_LEN;
        if payload_len == 0 {
            // CLS, NOP, SUB_OK, CLOSE_OK: nothing to cut.
            return Ok(());
        }
        let keep = cut.index(payload_len);
        // Re-frame the shortened payload with an honest length prefix.
        let kind = bytes[4];
        let payload = Bytes::copy_from_slice(&bytes[FRAME_HEADER_LEN..FRAME_HEADER_LEN + keep]);
        let raw = RawFrame { kind, payload };
        match (&frame, frame.decode_like(raw)) {
            // ADMIN_OK takes the rest of the frame, so any prefix of it is a valid document.
            (AnyFrame::Reply(Reply::AdminOk(_)), Ok(_)) => {}
            (_, result) => prop_assert!(result.is_err(), "{:?}", result),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed input: the exact error, its wire code and its fatality
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Side {
    Command,
    Reply,
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    side: Side,
    error: FrameError,
    code: ErrorCode,
    fatal: bool,
}

fn case(
    name: &'static str,
    bytes: Vec<u8>,
    side: Side,
    error: FrameError,
    code: ErrorCode,
    fatal: bool,
) -> Case {
    Case {
        name,
        bytes,
        side,
        error,
        code,
        fatal,
    }
}

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

fn truncated(what: &'static str) -> FrameError {
    FrameError::Truncated { what }
}

fn malformed_cases() -> Vec<Case> {
    use ErrorCode::*;
    use Side::{Command as C, Reply as R};
    let pub_head = || Payload::new().u64(1).str8("t");
    let big_value = "v".repeat(40_000);
    let name65 = "x".repeat(65);
    vec![
        // Framing.
        case(
            "zero length",
            vec![0, 0, 0, 0],
            C,
            FrameError::Empty,
            BadFrame,
            true,
        ),
        case(
            "length one over MAX_FRAME_LEN, only the prefix buffered",
            ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec(),
            C,
            FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN,
            },
            FrameTooLarge,
            true,
        ),
        case(
            "length u32::MAX",
            vec![0xff, 0xff, 0xff, 0xff],
            R,
            FrameError::TooLarge {
                len: u32::MAX as usize,
                max: MAX_FRAME_LEN,
            },
            FrameTooLarge,
            true,
        ),
        case(
            "unknown command type",
            Payload::new().frame(0x42),
            C,
            FrameError::UnknownType { kind: 0x42 },
            UnknownFrame,
            true,
        ),
        case(
            "reply type sent as a command",
            Payload::new().frame(SUB_OK),
            C,
            FrameError::UnknownType { kind: SUB_OK },
            UnknownFrame,
            true,
        ),
        case(
            "command type sent as a reply",
            Payload::new().frame(NOP),
            R,
            FrameError::UnknownType { kind: NOP },
            UnknownFrame,
            true,
        ),
        // Truncated PUB, cut in every field.
        case(
            "PUB cut in seq",
            Payload::new().raw(&[0, 0, 0]).frame(PUB),
            C,
            truncated("sequence number"),
            BadFrame,
            true,
        ),
        case(
            "PUB cut in topic",
            Payload::new().u64(1).u8(5).raw(b"ab").frame(PUB),
            C,
            truncated("topic"),
            BadFrame,
            true,
        ),
        case(
            "PUB cut in header count",
            pub_head().u8(0).frame(PUB),
            C,
            truncated("header count"),
            BadFrame,
            true,
        ),
        case(
            "PUB cut in header name",
            pub_head().u16(1).u16(3).raw(b"k").frame(PUB),
            C,
            truncated("header name"),
            BadFrame,
            true,
        ),
        case(
            "PUB cut in header value",
            pub_head().u16(1).str16("k").u16(5).raw(b"v").frame(PUB),
            C,
            truncated("header value"),
            BadFrame,
            true,
        ),
        case(
            "PUB cut in body length",
            pub_head().u16(0).u16(0).frame(PUB),
            C,
            truncated("body length"),
            BadFrame,
            true,
        ),
        case(
            "PUB cut in body",
            pub_head().u16(0).u32(5).raw(b"he").frame(PUB),
            C,
            truncated("body"),
            BadFrame,
            true,
        ),
        // Size limits inside the frame.
        case(
            "body length over MAX_BODY_LEN (checked before the body arrives)",
            pub_head().u16(0).u32(MAX_BODY_LEN as u32 + 1).frame(PUB),
            C,
            FrameError::Invalid(InvalidInput::BodyTooLarge {
                len: MAX_BODY_LEN + 1,
                max: MAX_BODY_LEN,
            }),
            BadMessage,
            false,
        ),
        case(
            "header block over MAX_HEADERS_LEN",
            pub_head()
                .u16(2)
                .str16("a")
                .str16(&big_value)
                .str16("b")
                .str16(&big_value)
                .u32(0)
                .frame(PUB),
            C,
            FrameError::Invalid(InvalidInput::HeadersTooLarge {
                len: 2 + 2 * (4 + 1 + 40_000),
                max: MAX_HEADERS_LEN,
            }),
            BadMessage,
            false,
        ),
        case(
            "empty header name",
            pub_head().u16(1).str16("").str16("v").u32(0).frame(PUB),
            C,
            FrameError::Invalid(InvalidInput::EmptyHeaderName),
            BadMessage,
            false,
        ),
        // UTF-8.
        case(
            "invalid UTF-8 in topic",
            Payload::new()
                .u64(1)
                .u8(2)
                .raw(&[0xff, 0xfe])
                .u16(0)
                .u32(0)
                .frame(PUB),
            C,
            FrameError::NotUtf8 { what: "topic" },
            BadFrame,
            true,
        ),
        case(
            "invalid UTF-8 in header name",
            pub_head()
                .u16(1)
                .u16(2)
                .raw(&[0xc3, 0x28])
                .str16("v")
                .u32(0)
                .frame(PUB),
            C,
            FrameError::NotUtf8 {
                what: "header name",
            },
            BadFrame,
            true,
        ),
        case(
            "invalid UTF-8 in header value",
            pub_head()
                .u16(1)
                .str16("k")
                .u16(1)
                .raw(&[0x80])
                .u32(0)
                .frame(PUB),
            C,
            FrameError::NotUtf8 {
                what: "header value",
            },
            BadFrame,
            true,
        ),
        case(
            "invalid UTF-8 in channel",
            Payload::new()
                .str8("t")
                .u8(1)
                .raw(&[0xc0])
                .u32(0)
                .frame(SUB),
            C,
            FrameError::NotUtf8 { what: "channel" },
            BadFrame,
            true,
        ),
        // Names.
        case(
            "topic with a space",
            Payload::new().str8("a b").str8("c").u32(0).frame(SUB),
            C,
            bad_topic("a b"),
            BadTopic,
            false,
        ),
        case(
            "topic with a slash in a PUB",
            Payload::new().u64(9).str8("a/b").u16(0).u32(0).frame(PUB),
            C,
            bad_topic("a/b"),
            BadTopic,
            false,
        ),
        case(
            "empty topic",
            Payload::new().str8("").str8("c").u32(0).frame(SUB),
            C,
            bad_topic(""),
            BadTopic,
            false,
        ),
        case(
            "topic that is only the ephemeral suffix",
            Payload::new()
                .str8("#ephemeral")
                .str8("c")
                .u32(0)
                .frame(SUB),
            C,
            bad_topic("#ephemeral"),
            BadTopic,
            false,
        ),
        case(
            "channel with an invalid character",
            Payload::new().str8("t").str8("c!").u32(0).frame(SUB),
            C,
            bad_channel("c!"),
            BadChannel,
            false,
        ),
        case(
            "topic of 65 bytes",
            Payload::new().u64(1).str8(&name65).u16(0).u32(0).frame(PUB),
            C,
            bad_topic(&name65),
            BadTopic,
            false,
        ),
        case(
            "channel of 65 bytes",
            Payload::new().str8("t").str8(&name65).u32(0).frame(SUB),
            C,
            bad_channel(&name65),
            BadChannel,
            false,
        ),
        case(
            "channel of 64 bytes plus .dead",
            Payload::new()
                .str8("t")
                .str8(&format!("{}.dead", "x".repeat(64)))
                .u32(0)
                .frame(SUB),
            C,
            bad_channel(&format!("{}.dead", "x".repeat(64))),
            BadChannel,
            false,
        ),
        // MPUB counts.
        case(
            "MPUB with count 0",
            pub_head().u32(0).frame(MPUB),
            C,
            FrameError::OutOfRange {
                what: "MPUB message count",
                value: 0,
            },
            BadFrame,
            true,
        ),
        case(
            "MPUB whose count claims more messages than present",
            pub_head().u32(3).u16(0).u32(1).raw(b"x").frame(MPUB),
            C,
            truncated("header count"),
            BadFrame,
            true,
        ),
        case(
            "MPUB claiming u32::MAX messages",
            pub_head().u32(u32::MAX).frame(MPUB),
            C,
            truncated("header count"),
            BadFrame,
            true,
        ),
        // Fixed-size commands.
        case(
            "trailing bytes after a valid FIN",
            Payload::new().raw(&SAMPLE_ID).u8(0).frame(FIN),
            C,
            FrameError::TrailingBytes { extra: 1 },
            BadFrame,
            true,
        ),
        case(
            "FIN with a 15-byte id",
            Payload::new().raw(&SAMPLE_ID[..15]).frame(FIN),
            C,
            truncated("message id"),
            BadFrame,
            true,
        ),
        case(
            "REQ without its delay",
            Payload::new().raw(&SAMPLE_ID).frame(REQ),
            C,
            truncated("delay"),
            BadFrame,
            true,
        ),
        case(
            "RDY of three bytes",
            Payload::new().raw(&[0, 0, 1]).frame(RDY),
            C,
            truncated("RDY count"),
            BadFrame,
            true,
        ),
        case(
            "NOP with a payload",
            Payload::new().u8(0).frame(NOP),
            C,
            FrameError::TrailingBytes { extra: 1 },
            BadFrame,
            true,
        ),
        case(
            "SUB without its timeout",
            Payload::new().str8("t").str8("c").u16(0).frame(SUB),
            C,
            truncated("message timeout"),
            BadFrame,
            true,
        ),
        case(
            "DPUB cut in delay",
            pub_head().u16(0).frame(DPUB),
            C,
            truncated("delay"),
            BadFrame,
            true,
        ),
        // Admin.
        case(
            "admin op 0x00",
            Payload::new().u8(0x00).str8("t").str8("").frame(ADMIN),
            C,
            FrameError::OutOfRange {
                what: "admin operation",
                value: 0x00,
            },
            BadFrame,
            true,
        ),
        case(
            "admin op 0x16",
            Payload::new().u8(0x16).str8("t").str8("").frame(ADMIN),
            C,
            FrameError::OutOfRange {
                what: "admin operation",
                value: 0x16,
            },
            BadFrame,
            true,
        ),
        case(
            "admin op 0x30",
            Payload::new().u8(0x30).str8("t").str8("c").frame(ADMIN),
            C,
            FrameError::OutOfRange {
                what: "admin operation",
                value: 0x30,
            },
            BadFrame,
            true,
        ),
        case(
            "admin channel op with an empty channel",
            Payload::new().u8(0x21).str8("t").str8("").frame(ADMIN),
            C,
            bad_channel(""),
            BadChannel,
            false,
        ),
        case(
            "admin topic op with an empty topic",
            Payload::new().u8(0x12).str8("").str8("").frame(ADMIN),
            C,
            bad_topic(""),
            BadTopic,
            false,
        ),
        case(
            "admin request without its channel string",
            Payload::new().u8(0x01).str8("").frame(ADMIN),
            C,
            truncated("channel"),
            BadFrame,
            true,
        ),
        // Replies.
        case(
            "ERROR with unknown code 99",
            Payload::new().u16(99).u8(0).u64(0).str16("x").frame(ERROR),
            R,
            FrameError::OutOfRange {
                what: "error code",
                value: 99,
            },
            BadFrame,
            true,
        ),
        case(
            "ERROR with code 0",
            Payload::new().u16(0).u8(1).u64(0).str16("").frame(ERROR),
            R,
            FrameError::OutOfRange {
                what: "error code",
                value: 0,
            },
            BadFrame,
            true,
        ),
        case(
            "ERROR cut in its message",
            Payload::new()
                .u16(8)
                .u8(0)
                .u64(0)
                .u16(4)
                .raw(b"ab")
                .frame(ERROR),
            R,
            truncated("error message"),
            BadFrame,
            true,
        ),
        case(
            "SUB_OK with a payload",
            Payload::new().u8(1).frame(SUB_OK),
            R,
            FrameError::TrailingBytes { extra: 1 },
            BadFrame,
            true,
        ),
        case(
            "MESSAGE cut in attempts",
            Payload::new().raw(&SAMPLE_ID).u64(0).u8(1).frame(MESSAGE),
            R,
            truncated("attempts"),
            BadFrame,
            true,
        ),
        case(
            "MESSAGE with an empty header name",
            Payload::new()
                .raw(&SAMPLE_ID)
                .u64(0)
                .u16(1)
                .u16(1)
                .str16("")
                .str16("v")
                .u32(0)
                .frame(MESSAGE),
            R,
            FrameError::Invalid(InvalidInput::EmptyHeaderName),
            BadMessage,
            false,
        ),
    ]
}

#[test]
fn malformed_input_is_refused_with_the_exact_error_code_and_fatality() {
    let cases = malformed_cases();
    for case in &cases {
        let mut buf = BytesMut::from(&case.bytes[..]);
        let result = match split_frame(&mut buf) {
            Err(e) => Err(e),
            Ok(None) => panic!("{}: split_frame wants more bytes", case.name),
            Ok(Some(raw)) => {
                assert!(buf.is_empty(), "{}: split_frame left bytes", case.name);
                match case.side {
                    Side::Command => Command::decode(raw).map(|c| format!("{c:?}")),
                    Side::Reply => Reply::decode(raw).map(|r| format!("{r:?}")),
                }
            }
        };
        let err = match result {
            Err(err) => err,
            Ok(value) => panic!("{}: decoded as {value}", case.name),
        };
        assert_eq!(err, case.error, "{}", case.name);
        let wire = err.to_wire(0);
        assert_eq!(wire.code, case.code, "{}", case.name);
        assert_eq!(wire.fatal, case.fatal, "{}", case.name);
        assert_eq!(wire.code.is_fatal(), case.fatal, "{}", case.name);
        assert_eq!(wire.seq, 0, "{}", case.name);
        assert_eq!(wire.message, err.to_string(), "{}", case.name);
    }
    assert!(cases.len() >= 40);
}

#[test]
fn oversized_length_is_refused_before_the_payload_arrives() {
    let mut buf = BytesMut::with_capacity(4);
    buf.put_u32(MAX_FRAME_LEN as u32 + 1);
    let capacity = buf.capacity();
    assert_eq!(
        split_frame(&mut buf),
        Err(FrameError::TooLarge {
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        })
    );
    assert_eq!(buf.capacity(), capacity, "buffer grew for a refused frame");
    assert!(buf.capacity() < MAX_FRAME_LEN);
    let wire = FrameError::TooLarge {
        len: MAX_FRAME_LEN + 1,
        max: MAX_FRAME_LEN,
    }
    .to_wire(0);
    assert_eq!((wire.code, wire.fatal), (ErrorCode::FrameTooLarge, true));
}

#[test]
fn zero_length_is_refused_as_soon_as_the_prefix_arrives() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(split_frame(&mut buf), Err(FrameError::Empty));
}

#[test]
fn a_length_of_exactly_max_frame_len_waits_for_the_payload() {
    let mut buf = BytesMut::new();
    buf.put_u32(MAX_FRAME_LEN as u32);
    buf.put_u8(0x01);
    assert_eq!(split_frame(&mut buf), Ok(None));
    assert_eq!(buf.len(), 5, "nothing is consumed while waiting");
}

#[test]
fn a_frame_of_exactly_max_frame_len_is_accepted() {
    let mut bytes = Payload::new()
        .raw(&vec![0u8; MAX_FRAME_LEN - 1])
        .frame(0x85);
    bytes.extend_from_slice(&[0, 0]);
    let mut buf = BytesMut::from(&bytes[..]);
    let raw = split_frame(&mut buf)
        .expect("length within the limit")
        .expect("whole frame buffered");
    assert_eq!(raw.kind, 0x85);
    assert_eq!(raw.payload.len(), MAX_FRAME_LEN - 1);
    assert_eq!(&buf[..], &[0, 0]);
}

#[test]
fn a_partial_length_prefix_or_frame_waits_and_leaves_the_buffer_alone() {
    let bytes = encode_command(&Command::Rdy(7));
    for cut in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert_eq!(split_frame(&mut buf), Ok(None), "cut at {cut}");
        assert_eq!(&buf[..], &bytes[..cut], "cut at {cut}");
    }
}

#[test]
fn a_header_block_of_exactly_max_headers_len_is_accepted_and_one_more_byte_is_not() {
    // 2 (count) + 2 + 1 (key "k") + 2 + value = MAX_HEADERS_LEN.
    let value = "v".repeat(MAX_HEADERS_LEN - 7);
    let message = NewMessage::new(Bytes::new()).with_header("k", value.clone());
    assert_eq!(message.headers.encoded_len(), MAX_HEADERS_LEN);
    let command = Command::Pub {
        seq: 1,
        topic: topic("t"),
        message,
    };
    assert_eq!(decode_command(&encode_command(&command)), Ok(command));

    let over = pub_with_one_header("k", &format!("{value}v"));
    assert_eq!(
        decode_command(&over),
        Err(FrameError::Invalid(InvalidInput::HeadersTooLarge {
            len: MAX_HEADERS_LEN + 1,
            max: MAX_HEADERS_LEN
        }))
    );
}

fn pub_with_one_header(key: &str, value: &str) -> Vec<u8> {
    Payload::new()
        .u64(1)
        .str8("t")
        .u16(1)
        .str16(key)
        .str16(value)
        .u32(0)
        .frame(PUB)
}

#[test]
fn a_body_of_exactly_max_body_len_is_accepted() {
    let command = Command::Pub {
        seq: 1,
        topic: topic("t"),
        message: NewMessage::new(vec![7u8; MAX_BODY_LEN]),
    };
    assert_eq!(decode_command(&encode_command(&command)), Ok(command));
}

#[test]
fn an_mpub_of_several_full_bodies_fits_in_one_frame() {
    let messages = vec![NewMessage::new(vec![1u8; MAX_BODY_LEN]); 4];
    let command = Command::Mpub {
        seq: 3,
        topic: topic("t"),
        messages,
    };
    let bytes = encode_command(&command);
    assert!(bytes.len() - 4 <= MAX_FRAME_LEN);
    assert_eq!(decode_command(&bytes), Ok(command));
}

#[test]
fn a_sub_timeout_of_zero_means_the_broker_default() {
    let bytes = Payload::new().str8("t").str8("c").u32(0).frame(SUB);
    let expected = Command::Sub {
        topic: topic("t"),
        channel: channel("c"),
        msg_timeout: None,
    };
    assert_eq!(decode_command(&bytes), Ok(expected.clone()));
    // A zero timeout can't be sent; it travels as "broker default".
    let zero = Command::Sub {
        topic: topic("t"),
        channel: channel("c"),
        msg_timeout: Some(Duration::ZERO),
    };
    assert_eq!(encode_command(&zero)[..], bytes[..]);
}

#[test]
fn durations_are_whole_milliseconds_and_saturate_at_u32_max() {
    let id = MessageId(SAMPLE_ID);
    let req = |delay| Command::Req { id, delay };
    let decoded = decode_command(&encode_command(&req(Duration::from_micros(1_999))));
    assert_eq!(decoded, Ok(req(Duration::from_millis(1))));
    let decoded = decode_command(&encode_command(&req(Duration::from_secs(u64::MAX))));
    assert_eq!(decoded, Ok(req(Duration::from_millis(u32::MAX.into()))));
}

#[test]
fn any_nonzero_fatal_byte_reads_as_fatal() {
    let bytes = Payload::new().u16(7).u8(2).u64(5).str16("x").frame(ERROR);
    assert_eq!(
        decode_reply(&bytes),
        Ok(Reply::Error(WireError {
            code: ErrorCode::Invalid,
            fatal: true,
            seq: 5,
            message: "x".into()
        }))
    );
}

#[test]
fn an_error_message_too_long_for_str16_is_cut_at_a_char_boundary() {
    // 'é' is two bytes, so 65535 bytes would split one.
    let message = "é".repeat(40_000);
    let reply = Reply::Error(WireError::new(ErrorCode::Internal, 0, message.clone()));
    let Ok(Reply::Error(decoded)) = decode_reply(&encode_reply(&reply)) else {
        panic!("long error does not decode");
    };
    assert_eq!(decoded.message.len(), 65_534);
    assert!(message.starts_with(&decoded.message));
}

#[test]
fn admin_ok_carries_the_rest_of_the_frame_even_when_empty() {
    for json in [&b""[..], b"{}", b"{\"topics\":[]}"] {
        let reply = Reply::AdminOk(Bytes::copy_from_slice(json));
        assert_eq!(decode_reply(&encode_reply(&reply)), Ok(reply));
    }
}

#[test]
fn dead_letter_topics_longer_than_64_bytes_travel_in_sub_and_pub() {
    let base = topic(&"x".repeat(MAX_NAME_LEN));
    let dead = base.dead_letter().dead_letter();
    assert_eq!(dead.as_str().len(), MAX_NAME_LEN + DEAD_LETTER_SUFFIX.len());
    let sub = Command::Sub {
        topic: dead.clone(),
        channel: channel("c"),
        msg_timeout: None,
    };
    assert_eq!(decode_command(&encode_command(&sub)), Ok(sub));
    let publish = Command::Pub {
        seq: 1,
        topic: dead,
        message: NewMessage::new("x"),
    };
    assert_eq!(decode_command(&encode_command(&publish)), Ok(publish));
}

/// A dead-letter topic is its own dead-letter topic, so no chain of `dead_letter` calls makes a
/// name that overflows the str8 it travels in.
#[test]
fn dead_letter_topic_names_stay_within_their_str8_field() {
    let mut name = topic(&"x".repeat(MAX_NAME_LEN));
    for _ in 0..50 {
        name = name.dead_letter();
    }
    assert!(name.as_str().len() <= MAX_NAME_LEN + 5);
    let sub = Command::Sub {
        topic: name,
        channel: channel("c"),
        msg_timeout: None,
    };
    assert_eq!(decode_command(&encode_command(&sub)), Ok(sub));
}

#[test]
fn error_codes_keep_their_numbers_names_and_fatality() {
    // The table in docs/PROTOCOL.md.
    let table: [(u16, &str, bool); 14] = [
        (1, "E_BAD_FRAME", true),
        (2, "E_FRAME_TOO_LARGE", true),
        (3, "E_UNKNOWN_FRAME", true),
        (4, "E_BAD_TOPIC", false),
        (5, "E_BAD_CHANNEL", false),
        (6, "E_BAD_MESSAGE", false),
        (7, "E_INVALID", false),
        (8, "E_FIN_FAILED", false),
        (9, "E_REQ_FAILED", false),
        (10, "E_TOUCH_FAILED", false),
        (11, "E_PUB_FAILED", false),
        (12, "E_NOT_FOUND", false),
        (13, "E_SHUTTING_DOWN", true),
        (14, "E_INTERNAL", false),
    ];
    for (code, (number, name, fatal)) in ALL_CODES.iter().zip(table) {
        assert_eq!(*code as u16, number);
        assert_eq!(ErrorCode::from_u16(number), Some(*code));
        assert_eq!(code.name(), name);
        assert_eq!(code.is_fatal(), fatal, "{name}");
        assert_eq!(WireError::new(*code, 3, "m").fatal, fatal);
    }
    assert_eq!(ErrorCode::from_u16(0), None);
    assert_eq!(ErrorCode::from_u16(15), None);
}

#[test]
fn command_seq_is_the_publish_sequence_number_or_zero() {
    let message = NewMessage::new("x");
    let t = topic("t");
    assert_eq!(
        Command::Pub {
            seq: 4,
            topic: t.clone(),
            message: message.clone()
        }
        .seq(),
        4
    );
    assert_eq!(
        Command::Mpub {
            seq: 5,
            topic: t.clone(),
            messages: vec![message.clone()]
        }
        .seq(),
        5
    );
    assert_eq!(
        Command::Dpub {
            seq: 6,
            topic: t,
            delay: Duration::ZERO,
            message
        }
        .seq(),
        6
    );
    assert_eq!(Command::Rdy(9).seq(), 0);
    assert_eq!(Command::Nop.seq(), 0);
}

// ---------------------------------------------------------------------------------------------
// Golden bytes: the layouts of docs/PROTOCOL.md, written out by hand
// ---------------------------------------------------------------------------------------------

fn assert_command_bytes(command: Command, expected: &[u8]) {
    assert_eq!(
        &encode_command(&command)[..],
        expected,
        "encoding of {command:?}"
    );
    assert_eq!(decode_command(expected), Ok(command));
}

fn assert_reply_bytes(reply: Reply, expected: &[u8]) {
    assert_eq!(&encode_reply(&reply)[..], expected, "encoding of {reply:?}");
    assert_eq!(decode_reply(expected), Ok(reply));
}

fn hello() -> NewMessage {
    NewMessage::new("hello").with_header("k", "v")
}

#[test]
fn golden_pub_with_one_header() {
    let expected = hex(&[
        "0000001c",         // length 28
        "01",               // PUB
        "0000000000000001", // seq 1
        "01 74",            // str8 "t"
        "0001",             // 1 header
        "0001 6b",          // str16 "k"
        "0001 76",          // str16 "v"
        "00000005",         // body length 5
        "68656c6c6f",       // "hello"
    ]);
    assert_command_bytes(
        Command::Pub {
            seq: 1,
            topic: topic("t"),
            message: hello(),
        },
        &expected,
    );
}

#[test]
fn golden_mpub_and_dpub() {
    let expected = hex(&[
        "0000001c",         // length 28
        "02",               // MPUB
        "0000000000000002", // seq 2
        "01 74",            // str8 "t"
        "00000002",         // 2 messages
        "0000 00000001 61", // no headers, body "a"
        "0000 00000000",    // no headers, empty body
    ]);
    assert_command_bytes(
        Command::Mpub {
            seq: 2,
            topic: topic("t"),
            messages: vec![NewMessage::new("a"), NewMessage::new("")],
        },
        &expected,
    );

    let expected = hex(&[
        "00000016",         // length 22
        "03",               // DPUB
        "0000000000000003", // seq 3
        "01 74",            // str8 "t"
        "000003e8",         // delay 1000 ms
        "0000",             // no headers
        "00000001 61",      // body "a"
    ]);
    assert_command_bytes(
        Command::Dpub {
            seq: 3,
            topic: topic("t"),
            delay: Duration::from_secs(1),
            message: NewMessage::new("a"),
        },
        &expected,
    );
}

#[test]
fn golden_sub_and_rdy() {
    let expected = hex(&[
        "00000009", // length 9
        "10",       // SUB
        "01 74",    // str8 "t"
        "01 63",    // str8 "c"
        "00000000", // msg_timeout 0: broker default
    ]);
    assert_command_bytes(
        Command::Sub {
            topic: topic("t"),
            channel: channel("c"),
            msg_timeout: None,
        },
        &expected,
    );

    let expected = hex(&["00000009", "10", "01 74", "01 63", "00007530"]); // 30000 ms
    assert_command_bytes(
        Command::Sub {
            topic: topic("t"),
            channel: channel("c"),
            msg_timeout: Some(Duration::from_secs(30)),
        },
        &expected,
    );

    let expected = hex(&["00000005", "11", "0000000a"]); // RDY 10
    assert_command_bytes(Command::Rdy(10), &expected);
}

#[test]
fn golden_fin_req_touch_cls_nop() {
    let id = "0123456789abcdef 0000000000000001";
    let expected = hex(&["00000011", "12", id]);
    assert_command_bytes(Command::Fin(MessageId(SAMPLE_ID)), &expected);

    let expected = hex(&["00000015", "13", id, "00001388"]); // delay 5000 ms
    assert_command_bytes(
        Command::Req {
            id: MessageId(SAMPLE_ID),
            delay: Duration::from_secs(5),
        },
        &expected,
    );

    let expected = hex(&["00000011", "14", id]);
    assert_command_bytes(Command::Touch(MessageId(SAMPLE_ID)), &expected);

    assert_command_bytes(Command::Cls, &hex(&["00000001", "15"]));
    assert_command_bytes(Command::Nop, &hex(&["00000001", "16"]));
}

#[test]
fn golden_admin_requests() {
    let t = topic("t");
    let c = channel("c");
    // op, str8 topic, str8 channel.
    assert_command_bytes(
        Command::Admin(AdminRequest::Stats { topic: None }),
        &hex(&["00000004", "20", "01", "00", "00"]),
    );
    assert_command_bytes(
        Command::Admin(AdminRequest::Stats {
            topic: Some(t.clone()),
        }),
        &hex(&["00000005", "20", "01", "01 74", "00"]),
    );
    let topic_ops = [
        (AdminOp::Create, "11"),
        (AdminOp::Delete, "12"),
        (AdminOp::Pause, "13"),
    ];
    let topic_ops = topic_ops
        .into_iter()
        .chain([(AdminOp::Unpause, "14"), (AdminOp::Empty, "15")]);
    for (op, code) in topic_ops {
        assert_command_bytes(
            Command::Admin(AdminRequest::Topic {
                op,
                topic: t.clone(),
            }),
            &hex(&["00000005", "20", code, "01 74", "00"]),
        );
    }
    let channel_ops = [
        (AdminOp::Create, "21"),
        (AdminOp::Delete, "22"),
        (AdminOp::Pause, "23"),
        (AdminOp::Unpause, "24"),
        (AdminOp::Empty, "25"),
    ];
    for (op, code) in channel_ops {
        assert_command_bytes(
            Command::Admin(AdminRequest::Channel {
                op,
                topic: t.clone(),
                channel: c.clone(),
            }),
            &hex(&["00000006", "20", code, "01 74", "01 63"]),
        );
    }
}

#[test]
fn golden_pub_ok_sub_ok_close_ok_admin_ok() {
    assert_reply_bytes(
        Reply::PubOk { seq: 1 },
        &hex(&["00000009", "81", "0000000000000001"]),
    );
    assert_reply_bytes(Reply::SubOk, &hex(&["00000001", "82"]));
    assert_reply_bytes(Reply::CloseOk, &hex(&["00000001", "83"]));
    assert_reply_bytes(
        Reply::AdminOk(Bytes::from_static(b"{}")),
        &hex(&["00000003", "85", "7b7d"]),
    );
}

#[test]
fn golden_error() {
    let expected = hex(&[
        "00000011",         // length 17
        "ff",               // ERROR
        "0004",             // code 4 = E_BAD_TOPIC
        "00",               // not fatal
        "0000000000000007", // seq 7
        "0003 626164",      // str16 "bad"
    ]);
    assert_reply_bytes(
        Reply::Error(WireError::new(ErrorCode::BadTopic, 7, "bad")),
        &expected,
    );

    let expected = hex(&[
        "0000000e",         // length 14
        "ff",               // ERROR
        "000d",             // code 13 = E_SHUTTING_DOWN
        "01",               // fatal
        "0000000000000000", // seq 0
        "0000",             // empty message
    ]);
    assert_reply_bytes(
        Reply::Error(WireError::new(ErrorCode::ShuttingDown, 0, "")),
        &expected,
    );
}

#[test]
fn golden_message() {
    let expected = hex(&[
        "0000002c",                          // length 44
        "84",                                // MESSAGE
        "0123456789abcdef 0000000000000001", // id
        "17979cfe362a0000",                  // timestamp_ns 1700000000000000000
        "0001",                              // attempts 1
        "0001",                              // 1 header
        "0001 6b",                           // str16 "k"
        "0001 76",                           // str16 "v"
        "00000005",                          // body length 5
        "68656c6c6f",                        // "hello"
    ]);
    let delivery = Delivery {
        id: MessageId::new(0x0123_4567_89ab_cdef, 1),
        timestamp_ns: 1_700_000_000_000_000_000,
        attempts: 1,
        headers: hello().headers,
        body: Bytes::from_static(b"hello"),
    };
    assert_eq!(delivery.id, MessageId(SAMPLE_ID));
    assert_reply_bytes(Reply::Message(delivery), &expected);
}

/// The worked example of docs/PROTOCOL.md, as one client→broker and one broker→client stream.
#[test]
fn golden_worked_example_streams() {
    let publish =
        hex(&["0000001c 01 0000000000000001 0174 0001 00016b 000176 00000005 68656c6c6f"]);
    let pub_ok = hex(&["00000009 81 0000000000000001"]);
    let sub = hex(&["00000009 10 0174 0163 00000000"]);
    let rdy = hex(&["00000005 11 0000000a"]);
    let message = hex(&[
        "0000002c 84 0123456789abcdef0000000000000001 17979cfe362a0000 0001",
        "0001 00016b 000176 00000005 68656c6c6f",
    ]);
    let fin = hex(&["00000011 12 0123456789abcdef0000000000000001"]);
    assert_eq!(decode_reply(&pub_ok), Ok(Reply::PubOk { seq: 1 }));
    assert!(matches!(
        decode_command(&publish),
        Ok(Command::Pub { seq: 1, .. })
    ));

    let mut client = BytesMut::new();
    client.extend_from_slice(&sub);
    client.extend_from_slice(&rdy);
    client.extend_from_slice(&fin);
    let mut commands = Vec::new();
    while let Some(raw) = split_frame(&mut client).expect("valid stream") {
        commands.push(Command::decode(raw).expect("valid command"));
    }
    assert_eq!(
        commands,
        vec![
            Command::Sub {
                topic: topic("t"),
                channel: channel("c"),
                msg_timeout: None
            },
            Command::Rdy(10),
            Command::Fin(MessageId(SAMPLE_ID)),
        ]
    );

    let mut broker = BytesMut::new();
    broker.extend_from_slice(&hex(&["00000001 82"]));
    broker.extend_from_slice(&message);
    let mut replies = Vec::new();
    while let Some(raw) = split_frame(&mut broker).expect("valid stream") {
        replies.push(Reply::decode(raw).expect("valid reply"));
    }
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0], Reply::SubOk);
    let Reply::Message(delivery) = &replies[1] else {
        panic!("second reply is not a MESSAGE");
    };
    assert_eq!(delivery.id, MessageId(SAMPLE_ID));
    assert_eq!(delivery.attempts, 1);
    assert_eq!(delivery.headers.get("k"), Some("v"));
    assert_eq!(&delivery.body[..], b"hello");
}

/// An ephemeral topic's dead-letter topic (`t.dead#ephemeral`) is a valid name on the wire.
#[test]
fn dead_letter_topic_of_an_ephemeral_topic_travels_in_sub() {
    let dead = topic("t#ephemeral").dead_letter();
    let sub = Command::Sub {
        topic: dead,
        channel: channel("c"),
        msg_timeout: None,
    };
    assert_eq!(decode_command(&encode_command(&sub)), Ok(sub));
}

/// The hex of every code block in section 8 of `docs/PROTOCOL.md`: on each line, the leading
/// two-digit hex tokens, up to the first token that is not one.
fn protocol_md_example_bytes() -> Vec<u8> {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let (_, section) = doc
        .split_once("## 8. Worked example")
        .expect("PROTOCOL.md has a worked example section");
    let mut bytes = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        for token in line.split_whitespace() {
            match u8::from_str_radix(token, 16) {
                Ok(byte) if token.len() == 2 => bytes.push(byte),
                _ => break,
            }
        }
    }
    bytes
}

#[test]
fn worked_example_in_protocol_md_decodes_and_re_encodes_byte_for_byte() {
    let mut buf = BytesMut::from(&protocol_md_example_bytes()[..]);
    let mut frames = Vec::new();
    while !buf.is_empty() {
        let before = buf.clone();
        let raw = split_frame(&mut buf)
            .expect("documented frame is well framed")
            .expect("documented frame is complete");
        let bytes = &before[..before.len() - buf.len()];
        let decoded = if raw.kind < 0x80 {
            AnyFrame::Command(Command::decode(raw).expect("documented command decodes"))
        } else {
            AnyFrame::Reply(Reply::decode(raw).expect("documented reply decodes"))
        };
        let mut again = BytesMut::new();
        decoded.encode(&mut again);
        assert_eq!(&again[..], bytes, "{decoded:?}");
        frames.push(decoded);
    }
    let id = MessageId(SAMPLE_ID);
    let walkthrough = [
        AnyFrame::Command(Command::Pub {
            seq: 1,
            topic: topic("t"),
            message: hello(),
        }),
        AnyFrame::Reply(Reply::PubOk { seq: 1 }),
        AnyFrame::Command(Command::Sub {
            topic: topic("t"),
            channel: channel("c"),
            msg_timeout: None,
        }),
        AnyFrame::Reply(Reply::SubOk),
        AnyFrame::Command(Command::Rdy(10)),
        AnyFrame::Reply(Reply::Message(Delivery {
            id,
            timestamp_ns: 1_700_000_000_000_000_000,
            attempts: 1,
            headers: hello().headers,
            body: Bytes::from_static(b"hello"),
        })),
        AnyFrame::Command(Command::Fin(id)),
    ];
    assert_eq!(frames.len(), walkthrough.len() + 12, "{frames:#?}");
    assert_eq!(frames[..walkthrough.len()], walkthrough[..]);
    let kinds: Vec<&str> = frames[walkthrough.len()..]
        .iter()
        .map(|f| match f {
            AnyFrame::Command(Command::Mpub { .. }) => "MPUB",
            AnyFrame::Command(Command::Dpub { .. }) => "DPUB",
            AnyFrame::Command(Command::Req { .. }) => "REQ",
            AnyFrame::Command(Command::Touch(_)) => "TOUCH",
            AnyFrame::Command(Command::Cls) => "CLS",
            AnyFrame::Command(Command::Nop) => "NOP",
            AnyFrame::Command(Command::Admin(_)) => "ADMIN",
            AnyFrame::Reply(Reply::Error(_)) => "ERROR",
            AnyFrame::Reply(Reply::CloseOk) => "CLOSE_OK",
            AnyFrame::Reply(Reply::AdminOk(_)) => "ADMIN_OK",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ERROR", "ERROR", "MPUB", "DPUB", "REQ", "TOUCH", "CLS", "NOP", "CLOSE_OK", "ADMIN",
            "ADMIN", "ADMIN_OK"
        ]
    );
}
