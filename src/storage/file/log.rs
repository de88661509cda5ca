//! One topic's file log: appends, the recent cache, metadata and channel stores.
//!
//! # Invariants
//! - `LogState::active` is the only segment written to; every key of `LogState::sealed` is
//!   below its base, and segment `b` holds offsets in `[b, next segment's base)`.
//! - `start <= end`; offsets below `start` are never returned; `end` is the next offset.
//! - Bytes below a segment's `len` are whole, CRC-checked records (or a corrupt region that
//!   reads skip); bytes above it are never read, so a failed append leaves nothing readable.
//! - A sealed segment's `.idx` is written only after the segment was fsynced.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
#[cfg(test)]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::cache::RecentCache;
use super::meta::MetaFile;
use super::record::{self, FRAME_HEADER, SEGMENT_MAGIC};
use super::recovery::Recovered;
use super::segment::{self, Segment, Summary};
use super::sync::{Committer, SyncState};
use crate::message::{ChannelName, StoredMessage, TopicName};
use crate::storage::journal::FileChannelStore;
use crate::storage::policy::TopicPolicy;
use crate::storage::{
    ChannelRecord, ChannelStore, Durable, FsyncPolicy, LogStats, NoChannelStore, StorageError,
    TopicLog, TopicMeta,
};

/// Largest segment: index positions are `u32`, and a segment may exceed `segment_bytes` by
/// one batch.
pub(super) const MAX_SEGMENT_BYTES: u64 = 1 << 31;

/// A topic log in segment files. See the [module docs](super) for the formats.
#[derive(Debug)]
pub(crate) struct FileLog {
    pub(super) topic: TopicName,
    pub(super) dir: PathBuf,
    pub(super) policy: TopicPolicy,
    pub(super) state: Mutex<LogState>,
    pub(super) sync: SyncState,
    pub(super) counters: Counters,
    meta: Mutex<MetaState>,
    channels: Mutex<Channels>,
    /// Records read by the recovery scan at open: 0 after a clean shutdown.
    #[cfg(test)]
    scanned_at_open: u64,
    /// This log, for the commit queue.
    pub(super) me: Weak<FileLog>,
    /// Makes the next append write half its batch and fail with ENOSPC.
    #[cfg(test)]
    pub(super) fail_next_write: AtomicBool,
}

/// What the log's mutex guards.
#[derive(Debug)]
pub(super) struct LogState {
    pub(super) sealed: BTreeMap<u64, Segment>,
    pub(super) active: Segment,
    pub(super) start: u64,
    pub(super) end: u64,
    /// Everything below this offset has been fsynced.
    pub(super) synced_end: u64,
    /// Sealed segments not yet fsynced, whose index files are still to be written.
    pub(super) sealing: Vec<Sealing>,
    /// A segment file was created since the last directory fsync.
    pub(super) dir_dirty: bool,
    /// Sum of the segment file lengths.
    pub(super) bytes: u64,
    pub(super) cache: RecentCache,
    pub(super) closed: Option<Closed>,
    /// Length the active segment must be cut back to before the next write: set when a
    /// failed append could not undo its partial write.
    truncate_to: Option<u64>,
    /// Reused encode buffer and per-message payload lengths.
    buf: Vec<u8>,
    lens: Vec<usize>,
}

/// Why a log takes no more appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    Closed,
    Deleted,
}

/// A sealed segment waiting for its fsync and index file.
#[derive(Debug)]
pub(super) struct Sealing {
    pub(super) base: u64,
    pub(super) file: Arc<File>,
    pub(super) len: u64,
    pub(super) summary: Summary,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) corrupt_records: AtomicU64,
    pub(super) dropped_messages: AtomicU64,
    pub(super) dropped_bytes: AtomicU64,
    /// Corrupt records already reported by reads, by (segment base, position).
    pub(super) reported: Mutex<HashSet<(u64, u64)>>,
}

#[derive(Debug)]
struct MetaState {
    file: MetaFile,
    /// Whether `file` holds a saved [`TopicMeta`].
    saved: bool,
}

#[derive(Debug, Default)]
struct Channels {
    open: BTreeMap<ChannelName, Arc<FileChannelStore>>,
    /// Found on disk at open (and not deleted since), opened or not.
    found: Vec<ChannelName>,
    /// A flush failure is being reported; the next success is logged.
    failing: bool,
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data
/// consistent at each step that can panic (none should), so the data is still usable.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl FileLog {
    pub(super) fn new(
        topic: TopicName,
        dir: PathBuf,
        policy: TopicPolicy,
        recovered: Recovered,
        committer: Arc<Committer>,
    ) -> Arc<FileLog> {
        let end = recovered
            .active
            .summary
            .next_offset
            .max(recovered.active.base);
        let bytes = recovered.sealed.values().map(|s| s.len).sum::<u64>() + recovered.active.len;
        let state = LogState {
            sealed: recovered.sealed,
            active: recovered.active,
            start: recovered.start,
            end,
            synced_end: end,
            sealing: Vec::new(),
            dir_dirty: false,
            bytes,
            cache: RecentCache::new(end, policy.cache_bytes),
            closed: None,
            truncate_to: None,
            buf: Vec::new(),
            lens: Vec::new(),
        };
        if recovered.scanned > 0 {
            tracing::info!(
                topic = %topic,
                records = recovered.scanned,
                end,
                "recovered after an unclean shutdown",
            );
        }
        let counters = Counters::default();
        counters
            .corrupt_records
            .store(recovered.corrupt, Ordering::Relaxed);
        Arc::new_cyclic(|me| FileLog {
            topic,
            dir,
            policy,
            state: Mutex::new(state),
            sync: SyncState::new(end, committer),
            counters,
            meta: Mutex::new(MetaState {
                saved: recovered.meta.incarnation.is_some(),
                file: recovered.meta,
            }),
            channels: Mutex::new(Channels {
                found: recovered.channels,
                ..Channels::default()
            }),
            #[cfg(test)]
            scanned_at_open: recovered.scanned,
            me: me.clone(),
            #[cfg(test)]
            fail_next_write: AtomicBool::new(false),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, LogState> {
        lock(&self.state)
    }

    pub(super) fn io_error(&self, op: &'static str, e: io::Error) -> StorageError {
        StorageError::io(self.topic.as_str(), op, e)
    }

    /// Records read by the recovery scan when this log was opened.
    #[cfg(test)]
    pub(crate) fn scanned_at_open(&self) -> u64 {
        self.scanned_at_open
    }

    /// Encodes and writes one batch: the whole append path, under the log's mutex.
    fn append_locked(
        &self,
        st: &mut LogState,
        messages: &[StoredMessage],
    ) -> Result<Range<u64>, StorageError> {
        if let Some(closed) = st.closed {
            let why = match closed {
                Closed::Closed => "the log is closed",
                Closed::Deleted => "the topic was deleted",
            };
            return Err(self.io_error("append", io::Error::other(why)));
        }
        if let Some(len) = st.truncate_to {
            st.active
                .file
                .set_len(len)
                .map_err(|e| self.io_error("append", e))?;
            st.truncate_to = None;
        }
        let first = st.end;
        if messages.is_empty() {
            return Ok(first..first);
        }
        st.encode(first, messages)
            .map_err(|e| self.io_error("append", e))?;
        if self.should_roll(st, st.buf.len() as u64) {
            self.roll(st)?;
        }
        let at = st.active.len;
        if at + st.buf.len() as u64 > MAX_SEGMENT_BYTES {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "batch larger than a segment");
            return Err(self.io_error("append", e));
        }
        if let Err(e) = self.write(&st.active.file, &st.buf, at) {
            if let Err(undo) = st.active.file.set_len(at) {
                tracing::error!(topic = %self.topic, error = %undo, "undoing a failed append");
                st.truncate_to = Some(at);
            }
            return Err(self.io_error("append", e));
        }
        let mut position = at;
        for ((offset, message), len) in (first..).zip(messages).zip(&st.lens) {
            st.active
                .summary
                .add(offset, position, message.timestamp_ns);
            position += (FRAME_HEADER + len) as u64;
        }
        let written = st.buf.len() as u64;
        st.active.len += written;
        st.bytes += written;
        st.end = first + messages.len() as u64;
        Ok(first..st.end)
    }

    fn write(&self, file: &File, buf: &[u8], at: u64) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_next_write.swap(false, Ordering::Relaxed) {
            file.write_all_at(&buf[..buf.len() / 2], at)?;
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        file.write_all_at(buf, at)
    }

    /// Whether the active segment must be sealed before `incoming` more bytes: it would grow
    /// past `segment_bytes`, or (with `max_age`) its oldest message is older than a quarter
    /// of it, so that age retention can delete it soon.
    pub(super) fn should_roll(&self, st: &LogState, incoming: u64) -> bool {
        let active = &st.active;
        if active.len <= SEGMENT_MAGIC.len() as u64 {
            return false;
        }
        let segment_bytes = self.policy.segment_bytes.min(MAX_SEGMENT_BYTES);
        if active.len + incoming > segment_bytes {
            return true;
        }
        self.policy.max_age.is_some_and(|age| {
            let limit = now_ns().saturating_sub(age.as_nanos() as u64 / 4);
            !active.summary.is_empty() && active.summary.min_timestamp_ns < limit
        })
    }

    /// Seals the active segment and starts a new one named by the next offset. The sealed
    /// one is fsynced and indexed by the background sync.
    pub(super) fn roll(&self, st: &mut LogState) -> Result<(), StorageError> {
        let fresh = Segment::create(&self.dir, st.end).map_err(|e| self.io_error("roll", e))?;
        st.bytes += fresh.len;
        let old = std::mem::replace(&mut st.active, fresh);
        st.sealing.push(Sealing {
            base: old.base,
            file: old.file.clone(),
            len: old.len,
            summary: old.summary.clone(),
        });
        st.sealed.insert(old.base, old);
        st.dir_dirty = true;
        Ok(())
    }

    /// Writes every open channel store's buffered events: no checkpoint, no fsync, so that
    /// nothing slow delays any channel's writes. Failures are left to `flush_channels`.
    pub(super) fn write_channels(&self) {
        for store in self.channel_stores() {
            // The time of this write, not of the tick: it measures the store's lag.
            let _ = store.write(Instant::now());
        }
    }

    /// Flushes every open channel store; failures are logged when they start and stop.
    pub(super) fn flush_channels(&self, sync: bool) -> Result<(), StorageError> {
        let mut first_error = None;
        for store in self.channel_stores() {
            if let Err(e) = store.flush(sync, Instant::now()) {
                first_error.get_or_insert(e);
            }
        }
        let mut channels = lock(&self.channels);
        match &first_error {
            Some(e) if !channels.failing => {
                tracing::error!(topic = %self.topic, error = %e, "channel state flush failed");
                channels.failing = true;
            }
            None if channels.failing => {
                tracing::info!(topic = %self.topic, "channel state flushes work again");
                channels.failing = false;
            }
            _ => {}
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The open channel stores, taken out of the lock so that opening a channel never waits
    /// for their writes. A store deleted meanwhile does nothing when flushed.
    fn channel_stores(&self) -> Vec<Arc<FileChannelStore>> {
        lock(&self.channels).open.values().cloned().collect()
    }

    /// Writes `start` to meta.json if it moved since it was last written.
    pub(super) fn persist_start(&self) -> Result<(), StorageError> {
        let mut meta = lock(&self.meta);
        let start = {
            let st = self.lock();
            if st.closed == Some(Closed::Deleted) {
                return Ok(());
            }
            st.start
        };
        if meta.file.start == start {
            return Ok(());
        }
        let mut file = meta.file.clone();
        file.start = start;
        file.write(&self.dir)
            .map_err(|e| self.io_error("write meta.json", e))?;
        meta.file = file;
        Ok(())
    }

    /// Stops taking appends because the storage closes (or is dropped) or the topic is
    /// deleted, and fails the `durable` futures nothing will resolve any more.
    pub(super) fn shut(&self, why: Closed) {
        self.lock().closed.get_or_insert(why);
        if why == Closed::Deleted {
            let stores = std::mem::take(&mut lock(&self.channels).open);
            // Waits for a flush in progress (the flush thread works on its own list), so that
            // it writes no file into a removed directory.
            for store in stores.into_values() {
                let _ = store.delete();
            }
            // Waits for a meta.json write in progress; later ones see the deletion.
            drop(lock(&self.meta));
            // Waits for a sync in progress, so that it writes no file into a removed
            // directory.
            drop(lock(&self.sync.serial));
        }
        self.sync.close();
    }

    /// Clean shutdown of this log: channel stores, data, index files, start, clean marker.
    pub(super) fn close(&self) -> Result<(), StorageError> {
        self.lock().closed.get_or_insert(Closed::Closed);
        let channels = self.flush_channels(true);
        self.sync_all()?;
        let (base, len, summary) = {
            let st = self.lock();
            (st.active.base, st.active.len, st.active.summary.clone())
        };
        Segment::write_index(&self.dir, base, len, &summary)
            .map_err(|e| self.io_error("write index", e))?;
        self.persist_start()?;
        channels?;
        let marker = super::meta::CleanMarker {
            active_base: base,
            active_len: len,
        };
        marker
            .write(&self.dir)
            .map_err(|e| self.io_error("write clean marker", e))?;
        self.sync.close();
        Ok(())
    }

    /// Flushes the channel stores and syncs the log on the policy's schedule; called by the
    /// flush thread every tick.
    pub(super) fn tick(&self, now: Instant) {
        let channel_sync = match self.policy.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => {
                let due = self.sync.interval_due(now, every);
                if due {
                    let _ = self.sync_all();
                }
                due
            }
            FsyncPolicy::Never => {
                let _ = self.sync_sealed();
                false
            }
        };
        let _ = self.flush_channels(channel_sync);
    }
}

impl LogState {
    /// Encodes `messages` as records from offset `first` into the reusable buffer.
    fn encode(&mut self, first: u64, messages: &[StoredMessage]) -> io::Result<()> {
        self.buf.clear();
        self.lens.clear();
        for (offset, message) in (first..).zip(messages) {
            let Some(len) = record::payload_len(message) else {
                let e = "message too large to store (payload over 8 MiB, or a header key over \
                         64 KiB, or over 65535 headers)";
                return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
            };
            record::encode(offset, message, len, &mut self.buf);
            self.lens.push(len);
        }
        Ok(())
    }

    /// The segment holding `offset` (or the first one after a gap), its read limit, and the
    /// bound its offsets stay below.
    pub(super) fn locate(&self, offset: u64) -> (&Segment, u64) {
        if offset >= self.active.base {
            return (&self.active, self.end);
        }
        let found = self
            .sealed
            .range(..=offset)
            .next_back()
            .or_else(|| self.sealed.iter().next());
        match found {
            Some((&base, segment)) => (segment, self.next_base(base)),
            None => (&self.active, self.end),
        }
    }

    /// Base of the segment after the one at `base`.
    pub(super) fn next_base(&self, base: u64) -> u64 {
        self.sealed
            .range(base + 1..)
            .next()
            .map_or(self.active.base, |(&b, _)| b)
    }
}

impl TopicLog for FileLog {
    fn append(&self, messages: Vec<StoredMessage>) -> Result<Range<u64>, StorageError> {
        let range = {
            let mut st = self.lock();
            let range = self.append_locked(&mut st, &messages)?;
            if !range.is_empty() {
                st.cache.push(range.start, messages);
            }
            range
        };
        if self.policy.fsync == FsyncPolicy::Always && !range.is_empty() {
            self.sync.request(&self.me);
        }
        Ok(range)
    }

    fn durable(&self, end: u64) -> Durable {
        if self.policy.fsync != FsyncPolicy::Always {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.sync.durable(self.topic.as_str(), end)
    }

    fn read(&self, from: u64, max: usize, out: &mut Vec<(u64, Arc<StoredMessage>)>) {
        self.read_into(from, max, out);
    }

    fn get(&self, offset: u64) -> Option<Arc<StoredMessage>> {
        {
            let st = self.lock();
            if offset < st.start || offset >= st.end {
                return None;
            }
            if let Some(message) = st.cache.get(offset) {
                return Some(message);
            }
        }
        let mut out = Vec::with_capacity(1);
        self.read_into(offset, 1, &mut out);
        out.pop().filter(|(o, _)| *o == offset).map(|(_, m)| m)
    }

    fn start(&self) -> u64 {
        self.lock().start
    }

    fn end(&self) -> u64 {
        self.lock().end
    }

    fn trim(&self, offset: u64) {
        self.trim_to(offset);
    }

    fn restart_at(&self, offset: u64) -> Result<(), StorageError> {
        self.restart_empty_at(offset)
    }

    fn stats(&self) -> LogStats {
        let (bytes, segments) = {
            let st = self.lock();
            (st.bytes, st.sealed.len() as u64 + 1)
        };
        let (fsyncs, fsync_p50_us, fsync_p99_us) = self.sync.latency();
        LogStats {
            bytes,
            segments,
            fsyncs,
            fsync_p50_us,
            fsync_p99_us,
            retention_dropped_messages: self.counters.dropped_messages.load(Ordering::Relaxed),
            retention_dropped_bytes: self.counters.dropped_bytes.load(Ordering::Relaxed),
            corrupt_records: self.counters.corrupt_records.load(Ordering::Relaxed),
        }
    }

    fn meta(&self) -> Option<TopicMeta> {
        let meta = lock(&self.meta);
        meta.saved.then(|| meta.file.topic_meta()).flatten()
    }

    fn save_meta(&self, topic_meta: TopicMeta) -> Result<(), StorageError> {
        let mut meta = lock(&self.meta);
        let start = {
            let st = self.lock();
            if st.closed == Some(Closed::Deleted) {
                let e = io::Error::other("the topic was deleted");
                return Err(self.io_error("write meta.json", e));
            }
            st.start
        };
        let file = MetaFile {
            incarnation: Some(topic_meta.incarnation),
            paused: topic_meta.paused,
            start,
        };
        file.write(&self.dir)
            .map_err(|e| self.io_error("write meta.json", e))?;
        meta.file = file;
        meta.saved = true;
        Ok(())
    }

    fn existing_channels(&self) -> Vec<ChannelName> {
        lock(&self.channels).found.clone()
    }

    fn open_channel(
        &self,
        channel: &ChannelName,
    ) -> Result<(Arc<dyn ChannelStore>, Option<ChannelRecord>), StorageError> {
        if channel.is_ephemeral() {
            return Ok((Arc::new(NoChannelStore), None));
        }
        if super::is_dots(channel.as_str()) {
            return Err(super::unstorable(
                self.topic.as_str(),
                "open channel",
                channel.as_str(),
            ));
        }
        let mut channels = lock(&self.channels);
        if self.lock().closed.is_some() {
            let e = io::Error::other("the log is closed");
            return Err(self.io_error("open channel", e));
        }
        if let Some(store) = channels.open.get(channel) {
            return Ok((store.clone(), None));
        }
        let dir = self.dir.join("channels").join(channel.as_str());
        let (store, record) = FileChannelStore::open(&dir, self.topic.as_str(), channel.as_str())?;
        channels.open.insert(channel.clone(), store.clone());
        Ok((store, record))
    }

    fn delete_channel(&self, channel: &ChannelName) -> Result<(), StorageError> {
        if super::is_dots(channel.as_str()) {
            return Ok(());
        }
        let store = {
            let mut channels = lock(&self.channels);
            channels.found.retain(|c| c != channel);
            channels.open.remove(channel)
        };
        if let Some(store) = store {
            return store.delete();
        }
        let dir = self.dir.join("channels").join(channel.as_str());
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(self.io_error("delete channel", e))
            }
            _ => Ok(()),
        }
    }
}

/// Unlinks a deleted segment's files; the log has already forgotten them.
pub(super) fn remove_segment_files(log: &FileLog, bases: &[u64]) {
    for &base in bases {
        for path in [
            segment::log_path(&log.dir, base),
            segment::index_path(&log.dir, base),
        ] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(file = %path.display(), error = %e, "removing a segment");
                }
                _ => {}
            }
        }
    }
}
