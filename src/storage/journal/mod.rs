//! One channel's durable delivery state: a checkpoint of its whole [`ChannelRecord`] plus a
//! journal of the [`StateEvent`]s recorded since, in a directory of its own.
//!
//! [`FileChannelStore::record`] only encodes events into memory; a background flush (every
//! ~10 ms, and at shutdown) writes them. Replaying the journal over the checkpoint with
//! [`ChannelRecord::apply`] gives the state as of the last record written. Checkpoints bound
//! both the journal's size and the replay work, and recovery compacts the state into a fresh
//! checkpoint before the channel starts.
//!
//! # Files
//! All integers are little-endian. A *framed record* is `[u32 payload_len][u32
//! crc32c(payload)][payload]`, with `payload_len` at least 1.
//!
//! - `checkpoint`: the 8-byte magic `QVCHKPT1`, then one framed record and nothing after it.
//!   Its payload is `u64 generation, u64 cursor, u8 paused (0 or 1), u16 max_attempts,
//!   u64 msg_timeout_ms, u64 count`, then `count` pending entries `(u64 offset, u16 attempts,
//!   u64 due_ms)` in increasing offset order. The payload length must be exactly
//!   `35 + 18 * count`.
//! - `journal-N` (N decimal, no padding): the journal that follows the checkpoint of
//!   generation N. The 8-byte magic `QVJRNL01`, then framed records of at most 16 MiB. Each
//!   record holds the events of one `record` call, so a batch (say, the settles of one FIN
//!   batch) is replayed all or nothing. An event is a tag byte and its fields:
//!   `1 Cursor(u64 offset)`, `2 Settle(u64 offset)`,
//!   `3 Pending(u64 offset, u16 attempts, u64 due_ms)`, `4 Empty(u64 end)`,
//!   `5 Options(u8 paused, u16 max_attempts, u64 msg_timeout_ms)`. An unknown tag or a cut
//!   event makes the record corrupt.
//! - `checkpoint.tmp`: a checkpoint being written; removed by recovery.
//!
//! The last magic byte is the format version. A new channel has no checkpoint and starts at
//! generation 0, whose journal replays over [`ChannelRecord::default`].
//!
//! # Recovery
//! A checkpoint that fails its magic, version, checksum or length checks is an error
//! ([`StorageError::Corrupt`]): starting over would redeliver every message of the topic, and
//! the operator should decide that. The journal is replayed record by record; at the first
//! torn or corrupt record replay stops with a warning and the rest is ignored, as a torn tail
//! is what a crash during a write leaves. Then the recovered state is written as the
//! checkpoint of the next generation with an empty journal, which also drops the ignored
//! tail.
//!
//! # Invariants
//! - Journal records reach the file in the order `record` was called, each once. A failed
//!   write is cut off (`set_len`) and retried before any newer record.
//! - Events recorded after [`checkpoint`] go to the next generation's journal, which is
//!   created (empty, synced) before the checkpoint naming it is renamed into place. A crash at
//!   any point leaves either the old checkpoint with its journal, or the new checkpoint with
//!   an empty or newer journal: recovery never returns state newer than what was written.
//! - A written journal record survives a process crash; it survives a power loss once a
//!   `flush(true)` that followed it returns `Ok`. A written checkpoint survives both.
//!
//! [`checkpoint`]: ChannelStore::checkpoint

mod format;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{ChannelRecord, ChannelStore, StateEvent, StorageError};
use format::JOURNAL_MAGIC;

const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
const JOURNAL_PREFIX: &str = "journal-";
/// Journal bytes since the last checkpoint after which the channel should checkpoint.
const CHECKPOINT_AFTER_BYTES: u64 = 1 << 20;
/// Cursor advance since the last checkpoint after which the channel should checkpoint:
/// replaying `Cursor` enumerates every offset it passes, so this bounds replay work.
const CHECKPOINT_AFTER_OFFSETS: u64 = 65_536;

/// One channel's state directory: a checkpoint and the journal that follows it.
///
/// `record`, `checkpoint` and `wants_checkpoint` take a short lock and do no I/O, so the
/// channel may call them while holding its own lock. `flush` takes the buffered bytes from
/// under that lock with a swap and does its I/O under a second lock, which they never take;
/// that second lock also keeps concurrent flushes from interleaving.
pub struct FileChannelStore {
    dir: PathBuf,
    /// "topic/channel name", for errors and logs.
    name: String,
    buffered: Mutex<Buffered>,
    writer: Mutex<Writer>,
}

/// What `record` and `checkpoint` leave for the next flush.
struct Buffered {
    /// A checkpoint not yet taken by a flush; `journal` follows it.
    checkpoint: Option<ChannelRecord>,
    /// Encoded journal records not yet taken by a flush.
    journal: Vec<u8>,
    /// Journal bytes recorded since the last checkpoint, written or not.
    journal_bytes: u64,
    /// Cursor of the last checkpoint, and the highest `Cursor` recorded since.
    checkpoint_cursor: u64,
    max_cursor: u64,
    deleted: bool,
}

/// The files, owned by whichever flush is running.
struct Writer {
    generation: u64,
    /// `journal-{generation}`, in append mode; None once deleted.
    journal: Option<File>,
    /// Length of the journal up to its last complete write.
    len: u64,
    /// A failed write may have left bytes past `len` that could not be cut off yet.
    dirty: bool,
    /// Nothing was written since the last `sync_data`.
    synced: bool,
    /// A checkpoint taken from `Buffered` and not yet written; `unwritten` follows it.
    checkpoint: Option<ChannelRecord>,
    /// Journal records taken from `Buffered` and not yet written, oldest first.
    unwritten: Vec<u8>,
}

impl FileChannelStore {
    /// Opens the state directory `dir` of channel `channel` in topic `topic` (both used only in
    /// errors and logs), creating it if missing, and recovers it. Returns the store and the
    /// recovered record: None when the directory held no state (a new channel).
    ///
    /// Recovered state is compacted at once into a new checkpoint, synchronously.
    pub fn open(
        dir: &Path,
        topic: &str,
        channel: &str,
    ) -> Result<(Arc<FileChannelStore>, Option<ChannelRecord>), StorageError> {
        let name = format!("{topic}/channel {channel}");
        create_dir(dir, &name)?;
        let recovered = recover(dir, &name)?;
        let (generation, journal) = match &recovered {
            Some((generation, record)) => {
                let next = generation
                    .checked_add(1)
                    .ok_or_else(|| StorageError::Corrupt {
                        topic: name.clone(),
                        what: format!(
                            "{}: generation out of range",
                            dir.join(CHECKPOINT).display()
                        ),
                    })?;
                let journal = write_generation(dir, &name, next, record)?;
                remove_journal(dir, &name, *generation);
                (next, journal)
            }
            None => {
                let journal = create_journal(dir, 0)
                    .and_then(|journal| sync_dir(dir).map(|()| journal))
                    .map_err(|e| StorageError::io(name.clone(), "create channel journal", e))?;
                (0, journal)
            }
        };
        let record = recovered.map(|(_, record)| record);
        let cursor = record.as_ref().map_or(0, |record| record.cursor);
        let store = FileChannelStore {
            dir: dir.to_path_buf(),
            name,
            buffered: Mutex::new(Buffered {
                checkpoint: None,
                journal: Vec::new(),
                journal_bytes: 0,
                checkpoint_cursor: cursor,
                max_cursor: cursor,
                deleted: false,
            }),
            writer: Mutex::new(Writer {
                generation,
                journal: Some(journal),
                len: JOURNAL_MAGIC.len() as u64,
                dirty: false,
                synced: true,
                checkpoint: None,
                unwritten: Vec::new(),
            }),
        };
        Ok((Arc::new(store), record))
    }

    /// Removes the state directory. Later record/checkpoint/flush calls do nothing.
    pub fn delete(&self) -> Result<(), StorageError> {
        // Waits for a running flush, so that it can't recreate files in the directory.
        let mut writer = lock(&self.writer);
        {
            let mut buffered = lock(&self.buffered);
            buffered.deleted = true;
            buffered.checkpoint = None;
            buffered.journal = Vec::new();
        }
        writer.journal = None;
        writer.checkpoint = None;
        writer.unwritten = Vec::new();
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io(
                self.name.clone(),
                "remove channel state directory",
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Moves what `record` and `checkpoint` left into `writer`; false once deleted.
    fn take_buffered(&self, writer: &mut Writer) -> bool {
        let mut buffered = lock(&self.buffered);
        let buffered = &mut *buffered;
        if buffered.deleted {
            return false;
        }
        if let Some(record) = buffered.checkpoint.take() {
            // The new checkpoint supersedes an older one and every record taken before it.
            writer.checkpoint = Some(record);
            writer.unwritten.clear();
        }
        if writer.unwritten.is_empty() {
            // Swapping keeps both allocations: the common case copies nothing.
            mem::swap(&mut writer.unwritten, &mut buffered.journal);
        } else {
            writer.unwritten.extend_from_slice(&buffered.journal);
            buffered.journal.clear();
        }
        true
    }

    /// Writes `record` as the next generation's checkpoint and switches to its empty journal.
    fn start_generation(
        &self,
        writer: &mut Writer,
        record: &ChannelRecord,
    ) -> Result<(), StorageError> {
        // 2^64 checkpoints never happen; wrapping would still name a fresh journal.
        let next = writer.generation.wrapping_add(1);
        let journal = write_generation(&self.dir, &self.name, next, record)?;
        let previous = mem::replace(&mut writer.generation, next);
        writer.journal = Some(journal);
        writer.len = JOURNAL_MAGIC.len() as u64;
        writer.dirty = false;
        writer.synced = true;
        remove_journal(&self.dir, &self.name, previous);
        Ok(())
    }

    /// Appends `writer.unwritten` to the journal with one write. On failure the journal is
    /// cut back to its last complete write and the bytes stay for the next flush.
    fn write_journal(&self, writer: &mut Writer) -> Result<(), StorageError> {
        let Some(file) = writer.journal.as_mut() else {
            return Ok(());
        };
        if writer.unwritten.is_empty() {
            return Ok(());
        }
        if writer.dirty {
            file.set_len(writer.len)
                .map_err(|e| StorageError::io(self.name.clone(), "truncate channel journal", e))?;
            writer.dirty = false;
        }
        if let Err(e) = file.write_all(&writer.unwritten) {
            // The file is in append mode, so the retry lands at the new end.
            if let Err(truncate) = file.set_len(writer.len) {
                tracing::warn!(
                    channel = %self.name,
                    error = %truncate,
                    "cannot cut a failed write off the channel journal; retrying on next flush"
                );
                writer.dirty = true;
            }
            return Err(StorageError::io(
                self.name.clone(),
                "write channel journal",
                e,
            ));
        }
        writer.len += writer.unwritten.len() as u64;
        writer.unwritten.clear();
        writer.synced = false;
        Ok(())
    }
}

impl ChannelStore for FileChannelStore {
    fn record(&self, events: &mut Vec<StateEvent>) {
        if events.is_empty() {
            return;
        }
        let mut buffered = lock(&self.buffered);
        let buffered = &mut *buffered;
        if !buffered.deleted {
            let before = buffered.journal.len();
            format::encode_events(events, &mut buffered.journal);
            buffered.journal_bytes += (buffered.journal.len() - before) as u64;
            for event in events.iter() {
                if let StateEvent::Cursor(cursor) = *event {
                    buffered.max_cursor = buffered.max_cursor.max(cursor);
                }
            }
        }
        events.clear();
    }

    fn wants_checkpoint(&self) -> bool {
        let buffered = lock(&self.buffered);
        !buffered.deleted
            && (buffered.journal_bytes > CHECKPOINT_AFTER_BYTES
                || buffered
                    .max_cursor
                    .saturating_sub(buffered.checkpoint_cursor)
                    > CHECKPOINT_AFTER_OFFSETS)
    }

    fn checkpoint(&self, record: ChannelRecord) {
        let mut buffered = lock(&self.buffered);
        if buffered.deleted {
            return;
        }
        buffered.journal.clear();
        buffered.journal_bytes = 0;
        buffered.checkpoint_cursor = record.cursor;
        buffered.max_cursor = record.cursor;
        buffered.checkpoint = Some(record);
    }

    fn flush(&self, sync: bool) -> Result<(), StorageError> {
        let mut writer = lock(&self.writer);
        let writer = &mut *writer;
        if !self.take_buffered(writer) {
            return Ok(());
        }
        if let Some(record) = writer.checkpoint.take() {
            if let Err(e) = self.start_generation(writer, &record) {
                writer.checkpoint = Some(record);
                return Err(e);
            }
        }
        self.write_journal(writer)?;
        if sync && !writer.synced {
            if let Some(file) = &writer.journal {
                file.sync_data()
                    .map_err(|e| StorageError::io(self.name.clone(), "fsync channel journal", e))?;
            }
            writer.synced = true;
        }
        Ok(())
    }
}

impl fmt::Debug for FileChannelStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileChannelStore")
            .field("dir", &self.dir)
            .field("channel", &self.name)
            .finish_non_exhaustive()
    }
}

/// Every critical section leaves its state consistent (none panics on bad input), so the
/// data behind a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Creates `dir` if missing, making its entry in the parent durable.
fn create_dir(dir: &Path, name: &str) -> Result<(), StorageError> {
    let existed = dir.is_dir();
    fs::create_dir_all(dir)
        .map_err(|e| StorageError::io(name, "create channel state directory", e))?;
    if existed {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sync_dir(parent).map_err(|e| StorageError::io(name, "fsync channel state directory", e))
}

/// Reads the checkpoint and replays its journal; None when neither held any state. Removes
/// stray files of unfinished checkpoints.
fn recover(dir: &Path, name: &str) -> Result<Option<(u64, ChannelRecord)>, StorageError> {
    let checkpoint = read_checkpoint(dir, name)?;
    let found = checkpoint.is_some();
    let (generation, mut record) = checkpoint.unwrap_or_default();
    let replayed = replay_journal(dir, name, generation, &mut record)?;
    remove_strays(dir, name, generation)?;
    Ok((found || replayed > 0).then_some((generation, record)))
}

fn read_checkpoint(dir: &Path, name: &str) -> Result<Option<(u64, ChannelRecord)>, StorageError> {
    let path = dir.join(CHECKPOINT);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(name, "read channel checkpoint", e)),
    };
    format::decode_checkpoint(&bytes)
        .map(Some)
        .map_err(|reason| StorageError::Corrupt {
            topic: name.to_string(),
            what: format!("{}: {reason}", path.display()),
        })
}

/// Applies `journal-{generation}` to `record` up to its first torn or corrupt record, and
/// returns how many records it applied.
fn replay_journal(
    dir: &Path,
    name: &str,
    generation: u64,
    record: &mut ChannelRecord,
) -> Result<u64, StorageError> {
    let path = dir.join(journal_name(generation));
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if generation > 0 {
                tracing::warn!(channel = %name, path = %path.display(), "channel journal missing");
            }
            return Ok(0);
        }
        Err(e) => return Err(StorageError::io(name, "read channel journal", e)),
    };
    let Some((header, mut rest)) = bytes.split_first_chunk::<8>() else {
        warn_ignored(name, &path, 0, bytes.len(), "torn file header");
        return Ok(0);
    };
    format::check_magic(header, &JOURNAL_MAGIC).map_err(|reason| StorageError::Corrupt {
        topic: name.to_string(),
        what: format!("{}: {reason}", path.display()),
    })?;
    let mut applied = 0;
    let mut events = Vec::new();
    while !rest.is_empty() {
        events.clear();
        let decoded = format::split_frame(rest, format::MAX_JOURNAL_RECORD)
            .and_then(|(payload, tail)| format::decode_events(payload, &mut events).map(|()| tail));
        match decoded {
            Ok(tail) => {
                for event in &events {
                    record.apply(event);
                }
                applied += 1;
                rest = tail;
            }
            Err(reason) => {
                warn_ignored(name, &path, bytes.len() - rest.len(), rest.len(), reason);
                break;
            }
        }
    }
    Ok(applied)
}

fn warn_ignored(name: &str, path: &Path, position: usize, ignored: usize, reason: &str) {
    tracing::warn!(
        channel = %name,
        path = %path.display(),
        position,
        ignored_bytes = ignored,
        reason,
        "channel journal: torn or corrupt record, ignoring the rest of the file"
    );
}

/// Removes `checkpoint.tmp` and journals of other generations than `generation`. A file
/// that can't be removed is only logged: recovery never reads it, and a later generation
/// with its name truncates it.
fn remove_strays(dir: &Path, name: &str, generation: u64) -> Result<(), StorageError> {
    let entries =
        fs::read_dir(dir).map_err(|e| StorageError::io(name, "list channel state directory", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(name, "list channel state directory", e))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let stray = file_name == CHECKPOINT_TMP
            || file_name
                .strip_prefix(JOURNAL_PREFIX)
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n != generation);
        if stray {
            remove_file(name, &entry.path());
        }
    }
    Ok(())
}

fn remove_journal(dir: &Path, name: &str, generation: u64) {
    remove_file(name, &dir.join(journal_name(generation)));
}

fn remove_file(name: &str, path: &Path) {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(channel = %name, path = %path.display(), error = %e, "cannot remove stale channel state file");
        }
        _ => {}
    }
}

fn journal_name(generation: u64) -> String {
    format!("{JOURNAL_PREFIX}{generation}")
}

/// Makes `record` the checkpoint of `generation` with an empty journal, durably, and returns
/// that journal. The journal exists before the checkpoint names it, so no crash leaves a
/// checkpoint without its journal.
fn write_generation(
    dir: &Path,
    name: &str,
    generation: u64,
    record: &ChannelRecord,
) -> Result<File, StorageError> {
    let bytes = format::encode_checkpoint(generation, record).ok_or_else(|| {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "too many pending entries");
        StorageError::io(name, "encode channel checkpoint", e)
    })?;
    let journal = create_journal(dir, generation)
        .map_err(|e| StorageError::io(name, "create channel journal", e))?;
    let tmp = dir.join(CHECKPOINT_TMP);
    write_synced(&tmp, &bytes)
        .map_err(|e| StorageError::io(name, "write channel checkpoint", e))?;
    fs::rename(&tmp, dir.join(CHECKPOINT))
        .map_err(|e| StorageError::io(name, "rename channel checkpoint", e))?;
    sync_dir(dir).map_err(|e| StorageError::io(name, "fsync channel state directory", e))?;
    Ok(journal)
}

/// Creates (or empties) `journal-{generation}` holding just its magic, synced, and returns it
/// open for appending.
fn create_journal(dir: &Path, generation: u64) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(journal_name(generation)))?;
    file.set_len(0)?;
    file.write_all(&JOURNAL_MAGIC)?;
    file.sync_all()?;
    Ok(file)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes the directory's entries (creations, renames) durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
