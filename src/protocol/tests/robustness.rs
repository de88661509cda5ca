//! Robustness: arbitrary input never panics.

use bytes::Bytes;
use proptest::prelude::*;

use super::strategies::any_frame;
use super::*;

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
            // ADMIN_OK and AUTH_OK take the rest of the frame, so any prefix of it is a valid
            // document.
            (AnyFrame::Reply(Reply::AdminOk(_) | Reply::AuthOk(_)), Ok(_)) => {}
            // An optional tail cut off whole leaves the frame without it: PUB_OK without its
            // duplicate bitmap, a channel create without its settings.
            (_, Ok(decoded)) if decoded == without_optional_tail(&frame) => {}
            (_, result) => prop_assert!(result.is_err(), "{:?}", result),
        }
    }
}

/// `frame` as it decodes when its optional tail is cut off whole.
fn without_optional_tail(frame: &AnyFrame) -> AnyFrame {
    match frame {
        AnyFrame::Reply(Reply::PubOk { seq, .. }) => AnyFrame::Reply(Reply::PubOk {
            seq: *seq,
            duplicates: Vec::new(),
        }),
        AnyFrame::Command(Command::Admin(AdminRequest::Channel {
            op, topic, channel, ..
        })) => AnyFrame::Command(Command::Admin(AdminRequest::Channel {
            op: *op,
            topic: topic.clone(),
            channel: channel.clone(),
            settings: Default::default(),
        })),
        other => other.clone(),
    }
}
