//! Edge cases at the limits: frame, header and body sizes, partial input, durations, error
//! fields, dead-letter topic names, the error code table and command sequence numbers.

use std::time::Duration;

use bytes::{BufMut, Bytes};

use super::*;

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
    let table: [(u16, &str, bool); 20] = [
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
        (15, "E_DISK_FULL", false),
        (16, "E_UNROUTED", false),
        (17, "E_UNAUTHORIZED", false),
        (18, "E_AUTH_FAILED", true),
        (19, "E_NOT_LEADER", false),
        (20, "E_UNAVAILABLE", false),
    ];
    assert_eq!(ALL_CODES.len(), table.len());
    for (code, (number, name, fatal)) in ALL_CODES.iter().zip(table) {
        assert_eq!(*code as u16, number);
        assert_eq!(ErrorCode::from_u16(number), Some(*code));
        assert_eq!(code.name(), name);
        assert_eq!(code.is_fatal(), fatal, "{name}");
        assert_eq!(WireError::new(*code, 3, "m").fatal, fatal);
    }
    assert_eq!(ErrorCode::from_u16(0), None);
    assert_eq!(ErrorCode::from_u16(21), None);
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
