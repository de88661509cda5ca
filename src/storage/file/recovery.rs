//! Opening a topic's directory: finding its segments, trusting what can be trusted and
//! scanning the rest.
//!
//! After a clean shutdown every index file is trusted and nothing is scanned. After an
//! unclean one, the active (last) segment is scanned record by record, and so is every
//! sealed segment whose index file is missing or stale; other sealed segments were fsynced
//! before their index was written, so they are trusted (their records are still
//! CRC-checked by every read).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::meta::{self, CleanMarker, MetaFile};
use super::record::SEGMENT_MAGIC;
use super::segment::{self, Segment, Summary};
use crate::message::{ChannelName, TopicName};
use crate::storage::StorageError;

/// A topic's log as found on disk.
#[derive(Debug)]
pub(super) struct Recovered {
    pub(super) sealed: BTreeMap<u64, Segment>,
    pub(super) active: Segment,
    pub(super) start: u64,
    pub(super) meta: MetaFile,
    /// Records read by scans (0 after a clean shutdown).
    pub(super) scanned: u64,
    /// Corrupt regions found by scans.
    pub(super) corrupt: u64,
    pub(super) channels: Vec<ChannelName>,
}

/// Opens (creating if needed) the topic directory `dir` and recovers its log.
pub(super) fn recover(dir: &Path, topic: &TopicName) -> Result<Recovered, StorageError> {
    let fail = |op: &'static str| move |e: io::Error| StorageError::io(topic.as_str(), op, e);
    std::fs::create_dir_all(dir).map_err(fail("create topic dir"))?;
    meta::remove_tmp(dir);
    let meta = MetaFile::read(dir)
        .map_err(fail("read meta.json"))?
        .unwrap_or_default();
    let clean = CleanMarker::take(dir).map_err(fail("read clean marker"))?;
    let bases = list_segments(dir).map_err(fail("list segments"))?;
    let channels = list_channels(dir).map_err(fail("list channels"))?;

    let mut found = Found {
        topic,
        dir,
        clean,
        scanned: 0,
        corrupt: 0,
    };
    let mut sealed = BTreeMap::new();
    let mut active = None;
    // Records of a segment follow the previous segment's.
    let mut lowest = 0;
    // Offsets below this were used: one past the last good record, the base of a segment
    // set aside as unreadable, or the saved start.
    let mut used = meta.start;
    for (i, &base) in bases.iter().enumerate() {
        let next = bases.get(i + 1).copied();
        let Some(segment) = found.open(base, lowest, next)? else {
            used = used.max(base);
            continue;
        };
        lowest = segment.summary.next_offset.max(base);
        used = used.max(lowest);
        match next {
            Some(_) => sealed.insert(base, segment),
            None => active.replace(segment),
        };
    }
    let active = match active {
        Some(active) => active,
        None => {
            // A new topic, or one whose last segment was set aside.
            let active = Segment::create(dir, used).map_err(fail("create segment"))?;
            meta::sync_dir(dir).map_err(fail("create segment"))?;
            active
        }
    };
    let first = sealed.keys().next().copied().unwrap_or(active.base);
    let end = active.summary.next_offset.max(active.base);
    Ok(Recovered {
        start: meta.start.max(first).min(end),
        sealed,
        active,
        meta,
        scanned: found.scanned,
        corrupt: found.corrupt,
        channels,
    })
}

/// What recovery knows while it walks the segments.
struct Found<'a> {
    topic: &'a TopicName,
    dir: &'a Path,
    clean: Option<CleanMarker>,
    scanned: u64,
    corrupt: u64,
}

impl Found<'_> {
    fn error(&self, op: &'static str, e: io::Error) -> StorageError {
        StorageError::io(self.topic.as_str(), op, e)
    }

    /// Opens the segment at `base`, whose records have offsets from `lowest` up to `next`
    /// (the next segment's base; None for the active segment). None if it is not a segment
    /// file at all: it is then set aside.
    fn open(
        &mut self,
        base: u64,
        lowest: u64,
        next: Option<u64>,
    ) -> Result<Option<Segment>, StorageError> {
        let path = segment::log_path(self.dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| self.error("open segment", e))?;
        let mut len = file
            .metadata()
            .map_err(|e| self.error("open segment", e))?
            .len();
        if !segment::has_magic(&file).map_err(|e| self.error("read segment", e))? {
            if len > SEGMENT_MAGIC.len() as u64 {
                self.set_aside(&path);
                return Ok(None);
            }
            // Torn while being created (or emptied by a power loss): it holds nothing.
            file.set_len(0)
                .and_then(|()| file.write_all_at(SEGMENT_MAGIC, 0))
                .map_err(|e| self.error("repair segment", e))?;
            len = SEGMENT_MAGIC.len() as u64;
        }
        let trusted = match (next, self.clean) {
            (Some(_), _) => true,
            (None, Some(marker)) => marker.active_base == base && marker.active_len == len,
            (None, None) => false,
        };
        let upper = next.unwrap_or(u64::MAX);
        let indexed = trusted
            .then(|| segment::read_index(self.dir, base, len))
            .flatten()
            .filter(|s| s.next_offset >= base && s.next_offset <= upper);
        let summary = match indexed {
            Some(summary) => summary,
            None => {
                let (summary, cut_len) =
                    self.scan(&file, &path, base, len, lowest.max(base)..upper)?;
                len = cut_len;
                if next.is_some() {
                    self.index_sealed(&file, base, len, &summary);
                }
                summary
            }
        };
        Ok(Some(Segment {
            base,
            file: Arc::new(file),
            len,
            summary,
        }))
    }

    /// Renames a file with a bad magic to `<name>.corrupt`, out of the log but kept for
    /// inspection; its offsets are lost.
    fn set_aside(&mut self, path: &Path) {
        self.corrupt += 1;
        let mut aside = path.as_os_str().to_owned();
        aside.push(".corrupt");
        let renamed = std::fs::rename(path, &aside);
        tracing::error!(
            segment = %path.display(),
            renamed = renamed.is_ok(),
            "not a segment file (bad magic): set aside as .corrupt, its messages are lost",
        );
    }

    /// Scans a segment and cuts off a torn tail; returns its summary and new length.
    fn scan(
        &mut self,
        file: &File,
        path: &Path,
        base: u64,
        len: u64,
        offsets: std::ops::Range<u64>,
    ) -> Result<(Summary, u64), StorageError> {
        let scan = segment::scan(file, path, base, len, offsets)
            .map_err(|e| self.error("scan segment", e))?;
        self.scanned += scan.records;
        self.corrupt += scan.corrupt;
        if scan.len < len {
            tracing::warn!(
                segment = %path.display(),
                position = scan.len,
                cut_bytes = len - scan.len,
                "torn write at the end of a segment: truncated",
            );
            file.set_len(scan.len)
                .and_then(|()| file.sync_data())
                .map_err(|e| self.error("truncate torn tail", e))?;
        }
        Ok((scan.summary, scan.len))
    }

    /// fsyncs a scanned sealed segment and writes its index, so the next unclean start
    /// need not scan it again. A failure only costs that scan.
    fn index_sealed(&self, file: &File, base: u64, len: u64, summary: &Summary) {
        let result = file
            .sync_data()
            .and_then(|()| Segment::write_index(self.dir, base, len, summary));
        if let Err(e) = result {
            tracing::warn!(topic = %self.topic, base, error = %e, "writing an index file");
        }
    }
}

/// Bases of the segment files in `dir`, ascending. Removes index files without a segment
/// (left by a crash between a segment's deletion and its index's).
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut logs = Vec::new();
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if let Some(base) = segment::parse_name(name, "log") {
            logs.push(base);
        } else if let Some(base) = segment::parse_name(name, "idx") {
            indexes.push(base);
        }
    }
    logs.sort_unstable();
    for base in indexes {
        if logs.binary_search(&base).is_err() {
            let _ = std::fs::remove_file(segment::index_path(dir, base));
        }
    }
    Ok(logs)
}

/// The channels with a state directory under `dir/channels`, in name order.
fn list_channels(dir: &Path) -> io::Result<Vec<ChannelName>> {
    let entries = match std::fs::read_dir(dir.join("channels")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut channels = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name();
        match name.to_str().map(ChannelName::new) {
            Some(Ok(channel)) if !channel.is_ephemeral() && !super::is_dots(channel.as_str()) => {
                channels.push(channel)
            }
            _ => {
                tracing::warn!(dir = %entry.path().display(), "ignoring a channel dir with an invalid name")
            }
        }
    }
    channels.sort();
    Ok(channels)
}
