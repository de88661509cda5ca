//! Malformed input: the exact error, its wire code and its fatality.

use super::*;

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
