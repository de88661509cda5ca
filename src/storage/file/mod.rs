//! The durable segmented log: each topic's messages in append-only segment files, with the
//! fsync policy of [the durability contract](super#durability-contract).
//!
//! # Layout
//! ```text
//! <dir>/LOCK                          held (flock) while a FileStorage has the directory open
//! <dir>/topics/<topic>/
//!     meta.json                       {"incarnation":u64,"paused":bool,"start":u64}
//!     00000000000000000000.log        segments, named by their first offset (20 digits)
//!     00000000000000000000.idx        sparse index of a sealed segment (and of the active
//!                                     one after a clean shutdown)
//!     clean                           present only between a clean shutdown and the next open
//!     channels/<channel>/             each channel's state, owned by `storage::journal`
//! ```
//! `meta.json` is replaced atomically (write `meta.json.tmp`, fsync, rename, fsync the
//! directory). `incarnation` and `paused` appear once the broker saved a [`TopicMeta`];
//! `start` is the log's logical start, written lazily (about once a second, and at close).
//!
//! # Segment file
//! The 8-byte magic `QVSEG001`, then records, little-endian:
//! ```text
//! record  = u32 payload_len, u32 crc32c(payload), payload
//! payload = u8 version (1), u8 flags (0: reserved), u64 offset, u64 timestamp_ns,
//!           u64 deliver_at_ms, u16 header_count,
//!           header_count × (u16 key_len, key, u32 value_len, value), body (the rest)
//! ```
//! A payload is at most 8 MiB (the broker caps bodies at 1 MiB and headers at 64 KiB), so a
//! larger length read from disk is corruption; keys and values must be UTF-8. Offsets
//! increase within and across segments; a gap is a record lost to corruption.
//!
//! Before an append, the active segment is sealed and a new one started (named by the next
//! offset) if it holds a record and the batch would take it past `segment_bytes`; a batch
//! larger than a segment goes whole into one (segments are capped at 2 GiB, since index
//! positions are `u32`). With `max_age`, the active segment is also
//! rolled once its oldest message is older than `max_age / 4`, so that age retention can
//! delete it. A sealed segment is fsynced by the background sync (before `durable` reports
//! anything in it under `always`), and then its `.idx` is written.
//!
//! # Index file
//! An entry `(u64 offset, u32 position)` for the first record of a segment and then for a
//! record about every 4 KiB, kept in memory per segment (the only per-message-ish memory).
//! On disk:
//! ```text
//! "QVIDX001", u64 segment_len, u64 next_offset, u64 min_timestamp_ns, u64 max_timestamp_ns,
//! u32 entry_count, entry_count × (u64 offset, u32 position), u32 crc32c(all after the magic)
//! ```
//! `segment_len` is the segment's length when the index was written: an index whose length
//! differs from the file's is stale and ignored. `next_offset` is one past the last good
//! record (the base when empty); the timestamps serve age retention and rolling.
//!
//! # Clean marker
//! `clean` holds `u64 active_base, u64 active_len, u32 crc32c` and is written by
//! [`Storage::close`] once everything is fsynced. If it matches the active segment on open,
//! every index is trusted and nothing is scanned (a clean shutdown makes the next start
//! fast). It is removed right after it is read, so a later crash is seen as unclean.
//!
//! # Recovery
//! - Unclean start: the active segment is scanned, every CRC checked, and so is each sealed
//!   segment whose `.idx` is missing or stale (its index is then rebuilt). Sealed segments
//!   with a valid index are trusted; their records are still CRC-checked on every read.
//! - A torn tail (a bad or incomplete record with no good record after it) is cut off,
//!   with a warning naming the segment, the position and the bytes cut.
//! - A bad record with good records after it is corruption: nothing is truncated. It is
//!   counted in [`LogStats::corrupt_records`], logged as an error with the offsets lost, and
//!   skipped by resyncing on the next position where a plausible length, a matching CRC and
//!   a higher offset all hold. The lost offsets are a gap: reads skip it, `get` returns None.
//!   Reads detect corruption the same way (a byte flipped after indexing) and report each
//!   bad record once.
//! - A `.log` file without the magic (and longer than it) is not a segment: it is renamed
//!   `<name>.log.corrupt`, counted as corrupt, and its offsets are lost. One torn while being
//!   created (8 bytes or fewer) is repaired as empty.
//! - `end` is one past the last good record (a segment's base if it has none). `start` is the
//!   saved one: since it is saved lazily, an unclean restart may bring back messages trimmed
//!   in the last second, never lose retained ones.
//!
//! # Durability
//! `append` encodes the batch into one buffer and writes it with one `pwrite`, under the
//! log's mutex, on the caller's thread. A failed write is cut back off the file and returns
//! an I/O error ([`StorageError::is_disk_full`] for ENOSPC); no offset is used, and the next
//! append simply retries. Then, by [`FsyncPolicy`]:
//! - `always`: the log is queued for the two `quiver-commit` threads. A commit fsyncs the
//!   sealed-but-unsynced segments and the active one outside the log's mutex, and publishes
//!   the end it covered; `durable(end)` resolves then. Appends during an fsync are covered by
//!   the next one (group commit). A failed fsync fails the `durable` futures of its range.
//! - `interval(d)`: the `quiver-flush` thread fsyncs each log with unsynced writes every `d`.
//! - `never`: no fsync except of sealed segments (before their index is written) and at
//!   close.
//!
//! The `quiver-flush` thread also ticks every 5 ms to flush the channel stores (install
//! checkpoints, and fsync under `always`, every interval under `interval`, never under
//! `never`), and about once a second applies retention and writes a moved start to
//! `meta.json`. The `quiver-write` thread writes the channel stores' buffered events every
//! 5 ms and does nothing else, so no fsync delays those writes.
//!
//! # Reads
//! The newest messages (up to `cache_bytes` of bodies and headers) are kept decoded, one
//! `Arc` each shared by every channel, so consumers that keep up never touch the disk.
//! Older offsets are found through the segment map and the sparse index, read with `pread`
//! outside the log's mutex (in windows of 8 to 256 KiB), CRC-checked and decoded into fresh
//! `Arc`s that nothing keeps: a backlog on disk costs no memory beyond the index. A read
//! that fails with an I/O error is logged and returns what it has.
//!
//! # Trim and retention
//! [`TopicLog::trim`] raises the logical start (never past `end`) and deletes the sealed
//! segments wholly below it. `max_bytes` deletes the oldest sealed segments while the log is
//! larger; `max_age` deletes sealed segments whose newest message is older. Messages they
//! drop above the start are counted in the retention counters (bytes within 4 KiB), and the
//! start moves past them. The active segment is never deleted.
//!
//! [`TopicMeta`]: crate::storage::TopicMeta
//! [`FsyncPolicy`]: crate::storage::FsyncPolicy
//! [`StorageError::is_disk_full`]: crate::storage::StorageError::is_disk_full
//! [`Storage::close`]: crate::storage::Storage::close
//! [`LogStats::corrupt_records`]: crate::storage::LogStats::corrupt_records
//! [`TopicLog::trim`]: crate::storage::TopicLog::trim

mod cache;
mod log;
mod meta;
mod read;
mod reader;
mod record;
pub(crate) use self::record::{from_frames, to_frame};
mod recovery;
mod retention;
mod segment;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use self::log::{lock, Closed, FileLog};
use self::sync::{Committer, Ticker};
use super::memory::MemoryLog;
use super::{Storage, StorageConfig, StorageError, TopicLog};
use crate::message::TopicName;

/// Threads that run group commits for `always` topics.
const COMMIT_THREADS: usize = 2;

/// Topic logs as segment files under a data directory.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    config: StorageConfig,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Holds the directory's lock until the storage is closed or dropped.
    lock: File,
}

/// What the background threads share with the storage.
#[derive(Debug, Default)]
struct Shared {
    topics: Mutex<Topics>,
    committer: Arc<Committer>,
    ticker: Ticker,
}

#[derive(Debug, Default)]
struct Topics {
    open: BTreeMap<TopicName, Arc<FileLog>>,
    /// Found at open and not deleted since.
    found: Vec<TopicName>,
}

impl FileStorage {
    /// Opens (creating if needed) the data directory `dir`, recovers every topic under
    /// `dir/topics/`, and starts the background threads.
    pub fn open(dir: &Path, config: StorageConfig) -> Result<FileStorage, StorageError> {
        let fail = |op| move |e| StorageError::io(dir.display().to_string(), op, e);
        let topics_dir = dir.join("topics");
        std::fs::create_dir_all(&topics_dir).map_err(fail("create data dir"))?;
        let lock_file = lock_dir(dir).map_err(fail("lock data dir"))?;
        let shared = Arc::new(Shared::default());
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&topics_dir).map_err(fail("list topics"))? {
            let entry = entry.map_err(fail("list topics"))?;
            let name = entry.file_name();
            let topic = match name.to_str().map(TopicName::new) {
                Some(Ok(topic)) if !topic.is_ephemeral() && !is_dots(topic.as_str()) => topic,
                _ => {
                    tracing::warn!(dir = %entry.path().display(), "not a topic: ignored");
                    continue;
                }
            };
            if !entry.path().is_dir() {
                continue;
            }
            found.push(topic);
        }
        found.sort();
        let storage = FileStorage {
            dir: dir.to_path_buf(),
            config,
            shared,
            threads: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            lock: lock_file,
        };
        for topic in &found {
            let log = storage.recover(topic)?;
            lock(&storage.shared.topics).open.insert(topic.clone(), log);
        }
        lock(&storage.shared.topics).found = found;
        storage.start_threads().map_err(fail("start threads"))?;
        Ok(storage)
    }

    fn recover(&self, topic: &TopicName) -> Result<Arc<FileLog>, StorageError> {
        let dir = self.topic_dir(topic);
        let recovered = recovery::recover(&dir, topic)?;
        let policy = self.config.for_topic(topic.as_str());
        Ok(FileLog::new(
            topic.clone(),
            dir,
            policy,
            recovered,
            self.shared.committer.clone(),
        ))
    }

    fn topic_dir(&self, topic: &TopicName) -> PathBuf {
        self.dir.join("topics").join(topic.as_str())
    }

    fn start_threads(&self) -> io::Result<()> {
        let mut threads = lock(&self.threads);
        for _ in 0..COMMIT_THREADS {
            let committer = self.shared.committer.clone();
            let thread = std::thread::Builder::new()
                .name("quiver-commit".into())
                .spawn(move || committer.run())?;
            threads.push(thread);
        }
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("quiver-flush".into())
            .spawn(move || {
                let logs = || lock(&shared.topics).open.values().cloned().collect();
                shared.ticker.run(logs)
            })?;
        threads.push(thread);
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("quiver-write".into())
            .spawn(move || {
                let logs = || lock(&shared.topics).open.values().cloned().collect();
                shared.ticker.run_writes(logs)
            })?;
        threads.push(thread);
        Ok(())
    }

    fn stop_threads(&self) {
        self.shared.committer.shutdown();
        self.shared.ticker.stop();
        for thread in lock(&self.threads).drain(..) {
            if thread.join().is_err() {
                tracing::error!("a storage thread panicked");
            }
        }
    }

    fn closed_error(&self, topic: &TopicName) -> StorageError {
        let e = io::Error::other("the storage is closed");
        StorageError::io(topic.as_str(), "open topic", e)
    }

    /// The open log of `topic`, for tests that look inside.
    #[cfg(test)]
    pub(crate) fn file_log(&self, topic: &TopicName) -> Option<Arc<FileLog>> {
        lock(&self.shared.topics).open.get(topic).cloned()
    }
}

/// Takes `dir/LOCK`, so that two processes never write the same logs.
fn lock_dir(dir: &Path) -> io::Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "the data directory is in use by another storage",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// `.` and `..` are valid topic and channel names, but must never become paths.
fn is_dots(name: &str) -> bool {
    matches!(name, "." | "..")
}

/// The error for a name that can't be a directory.
fn unstorable(topic: &str, op: &'static str, name: &str) -> StorageError {
    let e = io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{name:?} can't be stored: it names a directory"),
    );
    StorageError::io(topic, op, e)
}

impl Storage for FileStorage {
    fn open_topic(&self, topic: &TopicName) -> Result<Arc<dyn TopicLog>, StorageError> {
        if topic.is_ephemeral() {
            return Ok(Arc::new(MemoryLog::default()));
        }
        if is_dots(topic.as_str()) {
            return Err(unstorable(topic.as_str(), "open topic", topic.as_str()));
        }
        let mut topics = lock(&self.shared.topics);
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed_error(topic));
        }
        if let Some(log) = topics.open.get(topic) {
            return Ok(log.clone());
        }
        let log = self.recover(topic)?;
        meta::sync_dir(&self.dir.join("topics"))
            .map_err(|e| StorageError::io(topic.as_str(), "create topic dir", e))?;
        topics.open.insert(topic.clone(), log.clone());
        Ok(log)
    }

    fn delete_topic(&self, topic: &TopicName) -> Result<(), StorageError> {
        if topic.is_ephemeral() || is_dots(topic.as_str()) {
            return Ok(());
        }
        let mut topics = lock(&self.shared.topics);
        topics.found.retain(|t| t != topic);
        if let Some(log) = topics.open.remove(topic) {
            log.shut(Closed::Deleted);
        }
        let fail = |e| StorageError::io(topic.as_str(), "delete topic", e);
        match std::fs::remove_dir_all(self.topic_dir(topic)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fail(e)),
            _ => {}
        }
        meta::sync_dir(&self.dir.join("topics")).map_err(fail)
    }

    fn existing_topics(&self) -> Vec<TopicName> {
        lock(&self.shared.topics).found.clone()
    }

    fn close(&self) -> Result<(), StorageError> {
        let logs: Vec<Arc<FileLog>> = {
            let topics = lock(&self.shared.topics);
            if self.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            topics.open.values().cloned().collect()
        };
        let mut first_error = None;
        for log in logs {
            if let Err(e) = log.close() {
                tracing::error!(error = %e, "closing a topic log");
                first_error.get_or_insert(e);
            }
            log.shut(Closed::Closed);
        }
        self.stop_threads();
        // Nothing is written any more: another storage may take the directory.
        if let Err(e) = self.lock.unlock() {
            tracing::warn!(error = %e, "unlocking the data directory");
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for FileStorage {
    /// Stops the threads without marking anything clean; handles still held fail from now on.
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            for log in lock(&self.shared.topics).open.values() {
                log.shut(Closed::Closed);
            }
        }
        self.stop_threads();
    }
}
