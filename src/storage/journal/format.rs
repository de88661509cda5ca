//! The byte layout of checkpoint and journal files, as pure functions: no I/O, so that every
//! decoding path can be tested on byte slices. The layout itself is documented on the parent
//! module.
//!
//! Decoding never trusts a length read from disk: a frame's length is checked against the
//! limit and against the bytes actually present before anything is sliced or allocated.

use crate::storage::{
    ChannelOptions, ChannelRecord, HeaderName, OrderBy, PendingEntry, StateEvent,
};

pub(super) const CHECKPOINT_MAGIC: [u8; 8] = *b"QVCHKPT2";
/// Checkpoints written before channels could be ordered: no ordering after the options.
const CHECKPOINT_MAGIC_V1: [u8; 8] = *b"QVCHKPT1";
pub(super) const JOURNAL_MAGIC: [u8; 8] = *b"QVJRNL01";
/// `[u32 payload_len][u32 crc32c(payload)]`, before every payload.
const FRAME_HEADER: usize = 8;
/// Largest journal record payload accepted, and so the most replay ever reads at once.
pub(super) const MAX_JOURNAL_RECORD: usize = 16 << 20;
/// Largest encoded event (`Ordered options`: tag, u8, u16, u64, u8, u16, a header name).
const MAX_EVENT_BYTES: usize = 1 + ORDERED_OPTIONS_FIXED + HeaderName::MAX_LEN;
/// Options with their ordering, before the header name: paused, max_attempts,
/// msg_timeout_ms, mode, name length.
const ORDERED_OPTIONS_FIXED: usize = 1 + 2 + 8 + 1 + 2;
/// Events per journal record, so that an encoded record never exceeds the limit.
const EVENTS_PER_RECORD: usize = MAX_JOURNAL_RECORD / MAX_EVENT_BYTES;
/// Checkpoint payload before its entries, options aside: generation, cursor, count.
const CHECKPOINT_FIXED: usize = 8 + 8 + 8;
/// One checkpoint entry: offset, attempts, due_ms.
const CHECKPOINT_ENTRY: usize = 8 + 2 + 8;

const TAG_CURSOR: u8 = 1;
const TAG_SETTLE: u8 = 2;
const TAG_PENDING: u8 = 3;
const TAG_EMPTY: u8 = 4;
/// Options without an ordering, as written before channels could be ordered; still read.
const TAG_OPTIONS: u8 = 5;
const TAG_ORDERED_OPTIONS: u8 = 6;
const ORDER_UNORDERED: u8 = 0;
const ORDER_CHANNEL: u8 = 1;
const ORDER_KEY: u8 = 2;

/// Why bytes could not be decoded; becomes a log field or the text of a `Corrupt` error.
pub(super) type Reason = &'static str;

/// Appends `events` to `out` as framed journal records: one record for the whole batch, so
/// that replay applies the batch all or nothing. Only a batch too large for one record (about
/// 880 000 events) is split.
pub(super) fn encode_events(events: &[StateEvent], out: &mut Vec<u8>) {
    for batch in events.chunks(EVENTS_PER_RECORD) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        for event in batch {
            encode_event(event, out);
        }
        seal_frame(out, start);
    }
}

fn encode_event(event: &StateEvent, out: &mut Vec<u8>) {
    match *event {
        StateEvent::Cursor(offset) => {
            out.push(TAG_CURSOR);
            out.extend_from_slice(&offset.to_le_bytes());
        }
        StateEvent::Settle(offset) => {
            out.push(TAG_SETTLE);
            out.extend_from_slice(&offset.to_le_bytes());
        }
        StateEvent::Pending { offset, entry } => {
            out.push(TAG_PENDING);
            encode_entry(offset, entry, out);
        }
        StateEvent::Empty(end) => {
            out.push(TAG_EMPTY);
            out.extend_from_slice(&end.to_le_bytes());
        }
        StateEvent::Options(options) => {
            out.push(TAG_ORDERED_OPTIONS);
            encode_options(options, out);
        }
    }
}

fn encode_entry(offset: u64, entry: PendingEntry, out: &mut Vec<u8>) {
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&entry.attempts.to_le_bytes());
    out.extend_from_slice(&entry.due_ms.to_le_bytes());
}

fn encode_options(options: ChannelOptions, out: &mut Vec<u8>) {
    out.push(u8::from(options.paused));
    out.extend_from_slice(&options.max_attempts.to_le_bytes());
    out.extend_from_slice(&options.msg_timeout_ms.to_le_bytes());
    let (mode, header) = match options.ordering {
        OrderBy::Unordered => (ORDER_UNORDERED, ""),
        OrderBy::Channel => (ORDER_CHANNEL, ""),
        OrderBy::Key(header) => (ORDER_KEY, header.as_str()),
    };
    out.push(mode);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
}

/// The encoded size of `options`.
fn options_len(options: ChannelOptions) -> usize {
    let header = match options.ordering {
        OrderBy::Key(header) => header.as_str().len(),
        _ => 0,
    };
    ORDERED_OPTIONS_FIXED + header
}

/// Fills in the header reserved at `start` for the payload that follows it. Callers keep the
/// payload within `u32`: journal records by `EVENTS_PER_RECORD`, checkpoints by checking
/// their size first.
fn seal_frame(out: &mut [u8], start: usize) {
    let payload = &out[start + FRAME_HEADER..];
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The whole checkpoint file for `record` at `generation`; None if the record has too many
/// pending entries for one frame (more than 200 million).
pub(super) fn encode_checkpoint(generation: u64, record: &ChannelRecord) -> Option<Vec<u8>> {
    let payload_len = record
        .pending
        .len()
        .checked_mul(CHECKPOINT_ENTRY)?
        .checked_add(CHECKPOINT_FIXED + options_len(record.options))?;
    u32::try_from(payload_len).ok()?;
    let mut out = Vec::with_capacity(CHECKPOINT_MAGIC.len() + FRAME_HEADER + payload_len);
    out.extend_from_slice(&CHECKPOINT_MAGIC);
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&record.cursor.to_le_bytes());
    encode_options(record.options, &mut out);
    out.extend_from_slice(&(record.pending.len() as u64).to_le_bytes());
    for (&offset, &entry) in &record.pending {
        encode_entry(offset, entry, &mut out);
    }
    seal_frame(&mut out, start);
    Some(out)
}

/// Checks an 8-byte file header: 7 bytes naming the kind of file, then the format version.
pub(super) fn check_magic(header: &[u8; 8], expected: &[u8; 8]) -> Result<(), Reason> {
    if header[..7] != expected[..7] {
        return Err("bad magic: not a file of this kind");
    }
    if header[7] != expected[7] {
        return Err("unsupported format version");
    }
    Ok(())
}

/// Splits the first frame off `bytes`: its verified payload and the bytes after it.
pub(super) fn split_frame(bytes: &[u8], max_len: usize) -> Result<(&[u8], &[u8]), Reason> {
    let mut header = Fields(bytes);
    let (Some(len), Some(crc)) = (header.u32(), header.u32()) else {
        return Err("torn record header");
    };
    let rest = header.0;
    // A zero length would make a zero-filled tail (a common crash artifact) look like
    // endless valid records: the checksum of nothing is 0.
    if len == 0 {
        return Err("zero-length record");
    }
    let len = usize::try_from(len).map_err(|_| "record length over the limit")?;
    if len > max_len {
        return Err("record length over the limit");
    }
    if len > rest.len() {
        return Err("torn record");
    }
    let (payload, rest) = rest.split_at(len);
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch");
    }
    Ok((payload, rest))
}

/// Decodes one journal record's payload into `events` (appended). On error `events` may hold
/// part of the record: the caller must drop them, as the record is applied all or nothing.
pub(super) fn decode_events(payload: &[u8], events: &mut Vec<StateEvent>) -> Result<(), Reason> {
    let mut fields = Fields(payload);
    while let Some(tag) = fields.u8() {
        let event = match tag {
            TAG_CURSOR => fields.u64().map(StateEvent::Cursor),
            TAG_SETTLE => fields.u64().map(StateEvent::Settle),
            TAG_PENDING => fields
                .entry()
                .map(|(offset, entry)| StateEvent::Pending { offset, entry }),
            TAG_EMPTY => fields.u64().map(StateEvent::Empty),
            TAG_OPTIONS => fields.options()?.map(StateEvent::Options),
            TAG_ORDERED_OPTIONS => fields.ordered_options()?.map(StateEvent::Options),
            _ => return Err("unknown event tag"),
        };
        events.push(event.ok_or("event cut short")?);
    }
    Ok(())
}

/// Decodes a whole checkpoint file into its generation and record.
pub(super) fn decode_checkpoint(bytes: &[u8]) -> Result<(u64, ChannelRecord), Reason> {
    let (header, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or("shorter than the file header")?;
    let ordered = check_magic(header, &CHECKPOINT_MAGIC_V1).is_err();
    if ordered {
        check_magic(header, &CHECKPOINT_MAGIC)?;
    }
    // The file is already in memory, so its own size bounds the frame.
    let (payload, rest) = split_frame(rest, usize::MAX)?;
    if !rest.is_empty() {
        return Err("bytes after the record");
    }
    let mut fields = Fields(payload);
    let short = "record cut short";
    let generation = fields.u64().ok_or(short)?;
    let cursor = fields.u64().ok_or(short)?;
    let options = if ordered {
        fields.ordered_options()?
    } else {
        fields.options()?
    };
    let options = options.ok_or(short)?;
    let count = fields.u64().ok_or(short)?;
    let options_len = if ordered { options_len(options) } else { 11 };
    let expected = usize::try_from(count)
        .ok()
        .and_then(|count| count.checked_mul(CHECKPOINT_ENTRY))
        .and_then(|len| len.checked_add(CHECKPOINT_FIXED + options_len));
    if expected != Some(payload.len()) {
        return Err("entry count does not match the record length");
    }
    let mut record = ChannelRecord {
        cursor,
        options,
        ..ChannelRecord::default()
    };
    let mut previous = None;
    while let Some((offset, entry)) = fields.entry() {
        if previous.is_some_and(|previous| offset <= previous) {
            return Err("entries out of offset order");
        }
        previous = Some(offset);
        record.pending.insert(offset, entry);
    }
    Ok((generation, record))
}

/// Reads little-endian fields from the front of a slice; None when too few bytes are left.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[byte]| byte)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    fn entry(&mut self) -> Option<(u64, PendingEntry)> {
        let offset = self.u64()?;
        let attempts = self.u16()?;
        let due_ms = self.u64()?;
        Some((offset, PendingEntry { attempts, due_ms }))
    }

    /// Ok(None) when cut short; Err when the paused flag is neither 0 nor 1.
    fn options(&mut self) -> Result<Option<ChannelOptions>, Reason> {
        let (Some(paused), Some(max_attempts), Some(msg_timeout_ms)) =
            (self.u8(), self.u16(), self.u64())
        else {
            return Ok(None);
        };
        let paused = match paused {
            0 => false,
            1 => true,
            _ => return Err("paused flag is neither 0 nor 1"),
        };
        Ok(Some(ChannelOptions {
            paused,
            max_attempts,
            msg_timeout_ms,
            ordering: OrderBy::Unordered,
        }))
    }

    /// [`Fields::options`] followed by the ordering: `u8 mode, u16 len, header name`.
    fn ordered_options(&mut self) -> Result<Option<ChannelOptions>, Reason> {
        let Some(options) = self.options()? else {
            return Ok(None);
        };
        let (Some(mode), Some(len)) = (self.u8(), self.u16()) else {
            return Ok(None);
        };
        let len = usize::from(len);
        if len > self.0.len() {
            return Ok(None);
        }
        let (name, rest) = self.0.split_at(len);
        self.0 = rest;
        let ordering = match (mode, len) {
            (ORDER_UNORDERED, 0) => OrderBy::Unordered,
            (ORDER_CHANNEL, 0) => OrderBy::Channel,
            (ORDER_KEY, _) => {
                let name =
                    std::str::from_utf8(name).map_err(|_| "order key header is not UTF-8")?;
                OrderBy::Key(HeaderName::new(name).ok_or("bad order key header name")?)
            }
            _ => return Err("unknown ordering"),
        };
        Ok(Some(ChannelOptions {
            ordering,
            ..options
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<StateEvent> {
        vec![
            StateEvent::Cursor(u64::MAX),
            StateEvent::Settle(7),
            StateEvent::Pending {
                offset: 3,
                entry: PendingEntry {
                    attempts: u16::MAX,
                    due_ms: 1_700_000_000_000,
                },
            },
            StateEvent::Empty(2),
            StateEvent::Options(ChannelOptions {
                paused: true,
                max_attempts: 5,
                msg_timeout_ms: 60_000,
                ordering: OrderBy::Key(HeaderName::new("user-id").unwrap()),
            }),
            StateEvent::Options(ChannelOptions {
                ordering: OrderBy::Channel,
                ..ChannelOptions::default()
            }),
        ]
    }

    #[test]
    fn events_round_trip_in_one_record() {
        let events = every_kind();
        let mut bytes = Vec::new();
        encode_events(&events, &mut bytes);
        let (payload, rest) = split_frame(&bytes, MAX_JOURNAL_RECORD).unwrap();
        assert!(rest.is_empty());
        let mut decoded = Vec::new();
        decode_events(payload, &mut decoded).unwrap();
        assert_eq!(decoded, events);
    }

    #[test]
    fn unknown_tag_and_cut_event_are_corrupt() {
        let mut out = Vec::new();
        assert_eq!(
            decode_events(&[9, 0, 0], &mut out),
            Err("unknown event tag")
        );
        assert_eq!(
            decode_events(&[TAG_CURSOR, 1, 2], &mut out),
            Err("event cut short")
        );
        assert_eq!(
            decode_events(&[TAG_OPTIONS, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &mut out),
            Err("paused flag is neither 0 nor 1")
        );
    }

    #[test]
    fn bad_frames_are_rejected_before_slicing() {
        assert_eq!(split_frame(&[1, 0, 0], 100), Err("torn record header"));
        assert_eq!(split_frame(&[0; 16], 100), Err("zero-length record"));
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1];
        assert_eq!(
            split_frame(&huge, MAX_JOURNAL_RECORD),
            Err("record length over the limit")
        );
        let mut bytes = Vec::new();
        encode_events(&[StateEvent::Settle(1)], &mut bytes);
        assert_eq!(
            split_frame(&bytes[..bytes.len() - 1], 100),
            Err("torn record")
        );
        *bytes.last_mut().unwrap() ^= 1;
        assert_eq!(split_frame(&bytes, 100), Err("checksum mismatch"));
    }

    fn sample_record() -> ChannelRecord {
        let mut record = ChannelRecord::default();
        for event in every_kind().iter().skip(1) {
            record.apply(event);
        }
        record.apply(&StateEvent::Cursor(10));
        record
    }

    #[test]
    fn checkpoint_round_trips() {
        let record = sample_record();
        let bytes = encode_checkpoint(42, &record).unwrap();
        assert_eq!(decode_checkpoint(&bytes), Ok((42, record)));
        let empty = encode_checkpoint(0, &ChannelRecord::default()).unwrap();
        assert_eq!(decode_checkpoint(&empty), Ok((0, ChannelRecord::default())));
    }

    #[test]
    fn files_from_before_ordering_still_read() {
        // A version 1 checkpoint: options without an ordering, one entry.
        let mut payload = Vec::new();
        payload.extend_from_slice(&3u64.to_le_bytes()); // generation
        payload.extend_from_slice(&9u64.to_le_bytes()); // cursor
        payload.extend_from_slice(&[1, 5, 0]); // paused, max_attempts 5
        payload.extend_from_slice(&1000u64.to_le_bytes()); // msg_timeout_ms
        payload.extend_from_slice(&1u64.to_le_bytes()); // count
        payload.extend_from_slice(&4u64.to_le_bytes());
        payload.extend_from_slice(&[2, 0]);
        payload.extend_from_slice(&0u64.to_le_bytes());
        let mut file = CHECKPOINT_MAGIC_V1.to_vec();
        file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        file.extend_from_slice(&payload);
        let (generation, record) = decode_checkpoint(&file).unwrap();
        assert_eq!((generation, record.cursor), (3, 9));
        let options = ChannelOptions {
            paused: true,
            max_attempts: 5,
            msg_timeout_ms: 1000,
            ordering: OrderBy::Unordered,
        };
        assert_eq!(record.options, options);
        assert_eq!(record.pending[&4].attempts, 2);
        // A tag 5 event: options without an ordering.
        let mut event = vec![TAG_OPTIONS, 0, 7, 0];
        event.extend_from_slice(&0u64.to_le_bytes());
        let mut events = Vec::new();
        decode_events(&event, &mut events).unwrap();
        let expected = ChannelOptions {
            max_attempts: 7,
            ..ChannelOptions::default()
        };
        assert_eq!(events, vec![StateEvent::Options(expected)]);
    }

    #[test]
    fn checkpoint_checks_magic_version_length_and_count() {
        let bytes = encode_checkpoint(1, &sample_record()).unwrap();
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(
            decode_checkpoint(&bad),
            Err("bad magic: not a file of this kind")
        );
        bad = bytes.clone();
        bad[7] = b'9';
        assert_eq!(decode_checkpoint(&bad), Err("unsupported format version"));
        assert_eq!(
            decode_checkpoint(&bytes[..5]),
            Err("shorter than the file header")
        );
        assert_eq!(
            decode_checkpoint(&bytes[..bytes.len() - 1]),
            Err("torn record")
        );
        bad = bytes.clone();
        bad.push(0);
        assert_eq!(decode_checkpoint(&bad), Err("bytes after the record"));

        // A count that disagrees with the length, with a valid checksum: rejected, and
        // nothing allocated for it.
        bad = bytes.clone();
        // After the magic, the frame header, generation, cursor and options.
        let count_at = 8 + FRAME_HEADER + 16 + options_len(sample_record().options);
        bad[count_at..count_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&bad[16..]);
        bad[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_checkpoint(&bad),
            Err("entry count does not match the record length")
        );
    }
}
