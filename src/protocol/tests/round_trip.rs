//! Round-trip properties: every command and reply survives encode/decode, whole, back to back
//! and streamed in arbitrary chunks.

use proptest::prelude::*;

use super::strategies::{any_frame, command, delivery, reply};
use super::*;

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
