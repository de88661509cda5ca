//! One segment file: what is known of it in memory, its sparse index file, and the scan that
//! rebuilds both from the records after an unclean shutdown.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::reader::{Reader, Step};
use super::record::{self, SEGMENT_MAGIC};

/// Segment bytes between two sparse index entries.
pub(super) const INDEX_EVERY: u64 = 4096;
/// The first 8 bytes of every index file.
const INDEX_MAGIC: &[u8; 8] = b"QVIDX001";
/// Bytes of the summary after the index magic: segment length, next offset, two timestamps
/// and the entry count.
const INDEX_SUMMARY: usize = 8 + 8 + 8 + 8 + 4;
/// Bytes of one index entry: an offset and a position.
const INDEX_ENTRY: usize = 8 + 4;
/// Segment windows read by a recovery scan.
const SCAN_CHUNK: usize = 1 << 20;

/// `<dir>/<20-digit base>.log`.
pub(super) fn log_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// `<dir>/<20-digit base>.idx`.
pub(super) fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

/// The base offset named by a segment or index file name with this extension.
pub(super) fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// What the log knows of one segment. Everything here is also derivable from the file.
#[derive(Debug)]
pub(super) struct Segment {
    /// Offset the segment was named for: its first record's offset, or higher if that record
    /// was lost.
    pub(super) base: u64,
    pub(super) file: Arc<File>,
    /// Bytes written and readable, magic included.
    pub(super) len: u64,
    pub(super) summary: Summary,
}

/// The part of a segment's description that its index file stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Summary {
    /// One past the last good record's offset; the base when the segment has no record.
    pub(super) next_offset: u64,
    /// Oldest and newest message timestamps (0 when empty), for age retention and rolling.
    pub(super) min_timestamp_ns: u64,
    pub(super) max_timestamp_ns: u64,
    /// `(offset, position)` of a record about every [`INDEX_EVERY`] bytes, first record
    /// included, in order.
    pub(super) index: Vec<(u64, u32)>,
}

impl Summary {
    pub(super) fn empty(base: u64) -> Self {
        Summary {
            next_offset: base,
            ..Summary::default()
        }
    }

    /// Notes a record written or found at `position`.
    pub(super) fn add(&mut self, offset: u64, position: u64, timestamp_ns: u64) {
        let first = match self.index.last() {
            Some(&(_, last)) => {
                if position >= u64::from(last) + INDEX_EVERY {
                    // Segment lengths stay under 4 GiB (see `log::MAX_SEGMENT_BYTES`).
                    self.index.push((offset, position as u32));
                }
                false
            }
            None => {
                self.index.push((offset, position as u32));
                true
            }
        };
        if first {
            self.min_timestamp_ns = timestamp_ns;
            self.max_timestamp_ns = timestamp_ns;
        } else {
            self.min_timestamp_ns = self.min_timestamp_ns.min(timestamp_ns);
            self.max_timestamp_ns = self.max_timestamp_ns.max(timestamp_ns);
        }
        self.next_offset = offset + 1;
    }

    /// True when no record has been written or found.
    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Where to start reading to find `offset` in the segment based at `base`: the last
    /// indexed record at or below it, as (its offset, its position), or the first byte after
    /// the magic.
    pub(super) fn seek(&self, base: u64, offset: u64) -> (u64, u64) {
        let i = self.index.partition_point(|&(o, _)| o <= offset);
        match i.checked_sub(1) {
            Some(i) => (self.index[i].0, u64::from(self.index[i].1)),
            None => (base, SEGMENT_MAGIC.len() as u64),
        }
    }
}

impl Segment {
    /// Creates an empty segment file named for `base`.
    pub(super) fn create(dir: &Path, base: u64) -> io::Result<Segment> {
        let path = log_path(dir, base);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        if let Err(e) = file.write_all(SEGMENT_MAGIC) {
            // A stray empty file would later be taken for a segment.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Segment {
            base,
            file: Arc::new(file),
            len: SEGMENT_MAGIC.len() as u64,
            summary: Summary::empty(base),
        })
    }

    /// Writes this segment's index file, describing its current length. Not fsynced: a torn
    /// or lost index is detected by its CRC or length and costs only a scan.
    pub(super) fn write_index(
        dir: &Path,
        base: u64,
        len: u64,
        summary: &Summary,
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(
            INDEX_MAGIC.len() + INDEX_SUMMARY + summary.index.len() * INDEX_ENTRY + 4,
        );
        buf.extend_from_slice(INDEX_MAGIC);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&summary.next_offset.to_le_bytes());
        buf.extend_from_slice(&summary.min_timestamp_ns.to_le_bytes());
        buf.extend_from_slice(&summary.max_timestamp_ns.to_le_bytes());
        buf.extend_from_slice(&(summary.index.len() as u32).to_le_bytes());
        for &(offset, position) in &summary.index {
            buf.extend_from_slice(&offset.to_le_bytes());
            buf.extend_from_slice(&position.to_le_bytes());
        }
        let crc = crc32c::crc32c(&buf[INDEX_MAGIC.len()..]);
        buf.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(index_path(dir, base), &buf)
    }
}

/// Reads `base`'s index file. None when it is missing, damaged, or was written for another
/// length of the segment (`len`): the segment must then be scanned.
pub(super) fn read_index(dir: &Path, base: u64, len: u64) -> Option<Summary> {
    let bytes = std::fs::read(index_path(dir, base)).ok()?;
    let body = bytes.strip_prefix(INDEX_MAGIC.as_slice())?;
    let (body, crc) = body.split_at_checked(body.len().checked_sub(4)?)?;
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let (head, entries) = body.split_at_checked(INDEX_SUMMARY)?;
    let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap_or_default());
    let count = u32::from_le_bytes(head[32..36].try_into().ok()?) as usize;
    if u64_at(0) != len || entries.len() != count.checked_mul(INDEX_ENTRY)? {
        return None;
    }
    let index: Vec<(u64, u32)> = entries
        .chunks_exact(INDEX_ENTRY)
        .map(|e| {
            let offset = u64::from_le_bytes(e[..8].try_into().unwrap_or_default());
            let position = u32::from_le_bytes(e[8..].try_into().unwrap_or_default());
            (offset, position)
        })
        .collect();
    let ordered = index.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
    let in_bounds = index
        .iter()
        .all(|&(o, p)| o >= base && u64::from(p) < len && p as usize >= SEGMENT_MAGIC.len());
    if !ordered || !in_bounds {
        return None;
    }
    Some(Summary {
        next_offset: u64_at(8),
        min_timestamp_ns: u64_at(16),
        max_timestamp_ns: u64_at(24),
        index,
    })
}

/// What a scan of one segment found.
#[derive(Debug)]
pub(super) struct Scan {
    pub(super) summary: Summary,
    /// Length of the good prefix: the file is truncated to it when shorter than the file.
    pub(super) len: u64,
    pub(super) records: u64,
    /// Bad regions that had good records after them.
    pub(super) corrupt: u64,
}

/// Reads every record of a segment file, checking each CRC, and rebuilds its summary.
///
/// Offsets must lie in `offsets` and increase. A bad record with a good one after it is
/// skipped (and logged with the offsets it lost); a bad tail with nothing good after it is
/// a torn write, cut off by the caller at `Scan::len`.
pub(super) fn scan(
    file: &File,
    path: &Path,
    base: u64,
    file_len: u64,
    offsets: std::ops::Range<u64>,
) -> io::Result<Scan> {
    let mut reader = Reader::new(file, file_len, SCAN_CHUNK, SCAN_CHUNK);
    let mut summary = Summary::empty(base);
    let mut pos = SEGMENT_MAGIC.len() as u64;
    let (mut records, mut corrupt) = (0, 0);
    let mut lowest = offsets.start;
    loop {
        match reader.step(pos)? {
            Step::End => break,
            Step::Record { offset, next } if offset >= lowest && offset < offsets.end => {
                let timestamp = record::payload_timestamp(reader.payload()?);
                summary.add(offset, pos, timestamp);
                records += 1;
                lowest = offset + 1;
                pos = next;
            }
            Step::Record { .. } | Step::Bad => {
                let Some(found) = reader.resync(pos + 1, lowest..offsets.end)? else {
                    break;
                };
                let lost_until = match reader.step(found)? {
                    Step::Record { offset, .. } => offset,
                    _ => lowest,
                };
                tracing::error!(
                    segment = %path.display(),
                    position = pos,
                    skipped_bytes = found - pos,
                    lost_offsets = ?(lowest..lost_until),
                    "corrupt record in the middle of a segment: skipped",
                );
                corrupt += 1;
                pos = found;
            }
        }
    }
    Ok(Scan {
        summary,
        len: pos,
        records,
        corrupt,
    })
}

/// Reads the magic of a segment file; false if it is missing or wrong.
pub(super) fn has_magic(file: &File) -> io::Result<bool> {
    let mut magic = [0u8; 8];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(&magic == SEGMENT_MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}
