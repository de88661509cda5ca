//! One channel's durable delivery state: a checkpoint of its whole [`ChannelRecord`] plus a
//! journal of the [`StateEvent`]s recorded since, in a directory of its own.
//!
//! [`FileChannelStore::record`] encodes events into memory. They are written (`write(2)`,
//! which a process crash does not undo) by whichever comes first: the write thread's next
//! `write` (every 5 ms), a `flush` (every 5 ms, and at shutdown), or the first `record` call
//! that finds the oldest unwritten event [`RECORD_WRITES_AFTER`] old. Neither a checkpoint nor an fsync
//! holds up a write: both run without the lock that writes take. Replaying the journal over
//! the checkpoint with [`ChannelRecord::apply`] gives the state as of the last record
//! written. Checkpoints bound both the journal's size and the replay work, and recovery
//! compacts the state into a fresh checkpoint before the channel starts.
//!
//! # Files
//! All integers are little-endian. A *framed record* is `[u32 payload_len][u32
//! crc32c(payload)][payload]`, with `payload_len` at least 1.
//!
//! - `checkpoint`: the 8-byte magic `QVCHKPT2`, then one framed record and nothing after it.
//!   Its payload is `u64 generation, u64 cursor, u8 paused (0 or 1), u16 max_attempts,
//!   u64 msg_timeout_ms, u8 ordering (0 none, 1 channel, 2 key), u16 header_len, header,
//!   u64 count`, then `count` pending entries `(u64 offset, u16 attempts, u64 due_ms)` in
//!   increasing offset order. The payload length must be exactly
//!   `38 + header_len + 18 * count`. Version 1 (`QVCHKPT1`) lacks the three ordering fields
//!   (`35 + 18 * count`) and is still read.
//! - `journal-N` (N decimal, no padding): the journal that follows the checkpoint of
//!   generation N. The 8-byte magic `QVJRNL01`, then framed records of at most 16 MiB. Each
//!   record holds the events of one `record` call, so a batch (say, the settles of one FIN
//!   batch) is replayed all or nothing. An event is a tag byte and its fields:
//!   `1 Cursor(u64 offset)`, `2 Settle(u64 offset)`,
//!   `3 Pending(u64 offset, u16 attempts, u64 due_ms)`, `4 Empty(u64 end)`,
//!   `6 Options(u8 paused, u16 max_attempts, u64 msg_timeout_ms, u8 ordering, u16 header_len,
//!   header)`; `5` is the same without the ordering fields and is still read. An unknown tag
//!   or a cut event makes the record corrupt.
//! - `checkpoint.tmp`: a checkpoint being written; removed by recovery.
//!
//! The last magic byte is the format version. A new channel has no checkpoint and starts at
//! generation 0, whose journal replays over [`ChannelRecord::default`]; so the broker
//! records a new channel's start (`Empty(cursor)`, `Options`) as its first events.
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
//! # Installing a checkpoint
//! A checkpoint asked for at some point of the record stream is installed by a flush:
//! records keep going to the current journal meanwhile (they are valid over the current
//! checkpoint too), and those recorded after the checkpoint are also kept aside. The flush
//! writes `journal-(N+1)` starting with the records kept so far and `checkpoint.tmp`, syncs
//! both, then, under the write lock, appends the records kept since to the new journal and
//! renames the checkpoint into place; after syncing the directory it removes `journal-N`.
//! If that fails, the records kept so far are folded into the checkpoint, which is tried
//! again by the next flush.
//!
//! # Invariants
//! - Journal records reach the file in the order `record` was called, each once. A failed
//!   write is cut off (`set_len`) and retried before any newer record.
//! - The files on disk always replay to the state as of the last record written: the old
//!   checkpoint with its journal (which holds every written record) until the rename, the
//!   new checkpoint with its journal (which holds every written record recorded after it)
//!   from the rename on. So a crash at any point loses at most records not yet written, and
//!   recovery never returns state newer than what was written.
//! - An event is written before any `record` call made [`RECORD_WRITES_AFTER`] or more after
//!   it returns (unless a write fails); [`StateLag`] reports how long events waited.
//! - A written journal record survives a process crash; it survives a power loss once a
//!   `flush(true)` that followed it returns `Ok`. A written checkpoint survives both.
//!
//! [`RECORD_WRITES_AFTER`]: super::RECORD_WRITES_AFTER

mod files;
mod format;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{ChannelRecord, ChannelStore, StateEvent, StateLag, StorageError, RECORD_WRITES_AFTER};
use format::JOURNAL_MAGIC;

/// Journal bytes since the last checkpoint after which the channel should checkpoint.
const CHECKPOINT_AFTER_BYTES: u64 = 1 << 20;
/// Cursor advance since the last checkpoint after which the channel should checkpoint:
/// replaying `Cursor` enumerates every offset it passes, so this bounds replay work.
const CHECKPOINT_AFTER_OFFSETS: u64 = 65_536;

/// One channel's state directory: a checkpoint and the journal that follows it.
///
/// Three locks, always taken in this order: `flushing`, held by `flush` and `delete` for
/// their whole run (so checkpoint files and fsyncs, done under no other lock, never
/// interleave); `writer`, held for `write(2)` calls and the rename that installs a
/// checkpoint, never for an fsync; `buffered`, held only to move bytes in or out.
/// `record`, `checkpoint` and `wants_checkpoint` take `buffered` only, except when `record`
/// finds a write overdue and writes.
pub struct FileChannelStore {
    dir: PathBuf,
    /// "topic/channel name", for errors and logs.
    name: String,
    buffered: Mutex<Buffered>,
    writer: Mutex<Writer>,
    flushing: Mutex<Flushing>,
}

/// What `record` and `checkpoint` leave for the next write.
struct Buffered {
    /// Encoded journal records not yet taken by a write.
    journal: Vec<u8>,
    /// When the oldest record in `journal` was recorded.
    oldest: Option<Instant>,
    /// When the oldest record taken by a write and not written yet was recorded.
    taken: Option<Instant>,
    /// The longest a record waited before it was written.
    max_lag: Duration,
    /// The last write failed: `record` leaves retries to the flush thread.
    failing: bool,
    checkpoint: Asked,
    /// Journal bytes recorded since the last checkpoint, written or not.
    journal_bytes: u64,
    /// Cursor of the last checkpoint, and the highest `Cursor` recorded since.
    checkpoint_cursor: u64,
    max_cursor: u64,
    deleted: bool,
}

/// The checkpoint asked for last, until it is installed.
enum Asked {
    None,
    /// Not yet taken by a write; `journal[at..]` was recorded after it.
    Waiting {
        record: ChannelRecord,
        at: usize,
    },
    /// In `Writer::next`. Later checkpoints are refused until it is installed: the
    /// journal keeps every event meanwhile, so nothing is lost by that.
    Taken,
}

/// The current journal, owned by whichever write is running.
struct Writer {
    generation: u64,
    /// `journal-{generation}`, in append mode; None once deleted. Shared so that an fsync
    /// can run without this lock.
    journal: Option<Arc<File>>,
    /// Length of the journal up to its last complete write.
    len: u64,
    /// Length of the journal that its last fsync covered.
    synced_len: u64,
    /// A failed write may have left bytes past `len` that could not be cut off yet.
    dirty: bool,
    /// Journal records taken from `Buffered` and not yet written, oldest first.
    unwritten: Vec<u8>,
    /// A checkpoint taken from `Buffered` and not yet installed.
    next: Option<NextGeneration>,
}

/// A checkpoint on its way to disk. Records keep going to the current journal meanwhile
/// (which stays valid over the current checkpoint), and are also kept here, as the new
/// journal must start with them.
struct NextGeneration {
    /// None while a flush writes its files.
    record: Option<ChannelRecord>,
    /// The journal records taken since the checkpoint was asked for and not yet handed to
    /// the new journal.
    carry: Vec<u8>,
}

/// A checkpoint whose files are written, ready to be renamed into place.
struct Prepared {
    record: ChannelRecord,
    /// The records the new journal starts with.
    carried: Vec<u8>,
    generation: u64,
    journal: File,
}

/// What only `flush` touches.
#[derive(Default)]
struct Flushing {
    /// The generation the last installed checkpoint replaced: its journal is removed once
    /// the directory is synced, which makes the rename durable.
    replaced: Option<u64>,
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
        files::create_dir(dir, &name)?;
        let recovered = files::recover(dir, &name)?;
        let (generation, journal) = match &recovered {
            Some((generation, record)) => {
                let next = generation
                    .checked_add(1)
                    .ok_or_else(|| StorageError::Corrupt {
                        topic: name.clone(),
                        what: format!("{}: generation out of range", dir.display()),
                    })?;
                let journal = files::write_generation(dir, &name, next, record)?;
                files::remove_journal(dir, &name, *generation);
                (next, journal)
            }
            None => {
                let journal = files::create_journal(dir, 0, &[])
                    .and_then(|journal| files::sync_dir(dir).map(|()| journal))
                    .map_err(|e| StorageError::io(name.clone(), "create channel journal", e))?;
                (0, journal)
            }
        };
        let record = recovered.map(|(_, record)| record);
        let cursor = record.as_ref().map_or(0, |record| record.cursor);
        let magic = JOURNAL_MAGIC.len() as u64;
        let store = FileChannelStore {
            dir: dir.to_path_buf(),
            name,
            buffered: Mutex::new(Buffered {
                journal: Vec::new(),
                oldest: None,
                taken: None,
                max_lag: Duration::ZERO,
                failing: false,
                checkpoint: Asked::None,
                journal_bytes: 0,
                checkpoint_cursor: cursor,
                max_cursor: cursor,
                deleted: false,
            }),
            writer: Mutex::new(Writer {
                generation,
                journal: Some(Arc::new(journal)),
                len: magic,
                synced_len: magic,
                dirty: false,
                unwritten: Vec::new(),
                next: None,
            }),
            flushing: Mutex::new(Flushing::default()),
        };
        Ok((Arc::new(store), record))
    }

    /// Removes the state directory. Later calls do nothing.
    pub fn delete(&self) -> Result<(), StorageError> {
        // Waits for a running flush, so that it can't recreate files in the directory.
        let mut flushing = lock(&self.flushing);
        let mut writer = lock(&self.writer);
        {
            let mut buffered = lock(&self.buffered);
            buffered.deleted = true;
            buffered.checkpoint = Asked::None;
            buffered.journal = Vec::new();
            buffered.oldest = None;
            buffered.taken = None;
        }
        writer.journal = None;
        writer.next = None;
        writer.unwritten = Vec::new();
        flushing.replaced = None;
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
        match mem::replace(&mut buffered.checkpoint, Asked::None) {
            Asked::Waiting { record, at } => {
                let carry = buffered.journal.get(at..).unwrap_or_default().to_vec();
                writer.next = Some(NextGeneration {
                    record: Some(record),
                    carry,
                });
                buffered.checkpoint = Asked::Taken;
            }
            asked => {
                buffered.checkpoint = asked;
                if let Some(next) = &mut writer.next {
                    next.carry.extend_from_slice(&buffered.journal);
                }
            }
        }
        if writer.unwritten.is_empty() {
            // Swapping keeps both allocations: the common case copies nothing.
            mem::swap(&mut writer.unwritten, &mut buffered.journal);
        } else {
            writer.unwritten.extend_from_slice(&buffered.journal);
            buffered.journal.clear();
        }
        if let Some(oldest) = buffered.oldest.take() {
            buffered.taken = Some(buffered.taken.map_or(oldest, |taken| taken.min(oldest)));
        }
        true
    }

    /// Accounts for the end of a write, with `writer` still locked: when `ok`, everything
    /// taken so far is written.
    fn written(&self, ok: bool, now: Instant) {
        let mut buffered = lock(&self.buffered);
        buffered.failing = !ok;
        if !ok {
            return;
        }
        if let Some(taken) = buffered.taken.take() {
            let lag = now.saturating_duration_since(taken);
            buffered.max_lag = buffered.max_lag.max(lag);
        }
    }

    /// Appends `writer.unwritten` to the journal with one write. On failure the journal is
    /// cut back to its last complete write and the bytes stay for the next write.
    fn write_journal(&self, writer: &mut Writer) -> Result<(), StorageError> {
        let Some(file) = writer.journal.as_deref() else {
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
        let mut file: &File = file;
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
        Ok(())
    }

    /// Installs the checkpoint taken from `Buffered`, if any: writes its files without the
    /// write lock, then, under it, hands the new journal the records taken meanwhile and
    /// renames the checkpoint into place. On failure the checkpoint stays, with the records
    /// taken so far folded into it, for the next flush.
    fn install_checkpoint(
        &self,
        flushing: &mut Flushing,
        now: Instant,
    ) -> Result<(), StorageError> {
        match self.prepare_checkpoint()? {
            Some(prepared) => self.finish_checkpoint(prepared, flushing, now),
            None => Ok(()),
        }
    }

    /// The slow half of installing a checkpoint, under no lock but `flushing`: the new
    /// journal, starting with the records taken since the checkpoint was asked for, and
    /// `checkpoint.tmp`, both synced.
    fn prepare_checkpoint(&self) -> Result<Option<Prepared>, StorageError> {
        let (record, carried, generation) = {
            let mut writer = lock(&self.writer);
            let Some(next) = writer.next.as_mut() else {
                return Ok(None);
            };
            let Some(record) = next.record.take() else {
                return Ok(None);
            };
            let carried = mem::take(&mut next.carry);
            // 2^64 checkpoints never happen; wrapping would still name a fresh journal.
            (record, carried, writer.generation.wrapping_add(1))
        };
        match files::prepare_generation(&self.dir, &self.name, generation, &record, &carried) {
            Ok(journal) => Ok(Some(Prepared {
                record,
                carried,
                generation,
                journal,
            })),
            Err(e) => {
                self.keep_checkpoint(record, &carried, Vec::new());
                Err(e)
            }
        }
    }

    /// The quick half, under the write lock: the records taken since `prepare_checkpoint`
    /// go to the new journal too, and the rename makes it current.
    fn finish_checkpoint(
        &self,
        prepared: Prepared,
        flushing: &mut Flushing,
        now: Instant,
    ) -> Result<(), StorageError> {
        let Prepared {
            record,
            carried,
            generation,
            journal,
        } = prepared;
        let mut guard = lock(&self.writer);
        let writer = &mut *guard;
        if !self.take_buffered(writer) {
            return Ok(());
        }
        // The current journal stays complete up to the rename, whatever happens next.
        let _ = self.write_journal(writer);
        let rest = writer
            .next
            .as_mut()
            .map(|next| mem::take(&mut next.carry))
            .unwrap_or_default();
        let installed = (&journal)
            .write_all(&rest)
            .map_err(|e| StorageError::io(self.name.clone(), "write channel journal", e))
            .and_then(|()| files::install_checkpoint(&self.dir, &self.name));
        if let Err(e) = installed {
            drop(guard);
            self.keep_checkpoint(record, &carried, rest);
            return Err(e);
        }
        let magic = JOURNAL_MAGIC.len() as u64;
        let previous = mem::replace(&mut writer.generation, generation);
        writer.journal = Some(Arc::new(journal));
        writer.synced_len = magic + carried.len() as u64;
        writer.len = writer.synced_len + rest.len() as u64;
        writer.dirty = false;
        // What was not written to the old journal is in the checkpoint or the new journal.
        writer.unwritten.clear();
        writer.next = None;
        lock(&self.buffered).checkpoint = Asked::None;
        self.written(true, now);
        drop(guard);
        flushing.replaced = Some(previous);
        self.remove_replaced(flushing)
    }

    /// Puts back a checkpoint that could not be installed: `carried`, then `rest`, are the
    /// records taken since it was asked for. `carried` is folded into it, so that what is
    /// kept does not grow while the disk fails.
    fn keep_checkpoint(&self, mut record: ChannelRecord, carried: &[u8], rest: Vec<u8>) {
        let mut carry = rest;
        if let Err(reason) = files::fold(&mut record, carried) {
            // Never happens: these are records this store encoded.
            tracing::error!(channel = %self.name, reason, "cannot fold journal records into a checkpoint");
            let mut all = carried.to_vec();
            all.append(&mut carry);
            carry = all;
        }
        let mut writer = lock(&self.writer);
        if let Some(next) = writer.next.as_mut() {
            carry.extend_from_slice(&next.carry);
            next.carry = carry;
            next.record = Some(record);
        }
    }

    /// Syncs the directory after an installed checkpoint, then removes the journal it
    /// replaced.
    fn remove_replaced(&self, flushing: &mut Flushing) -> Result<(), StorageError> {
        let Some(previous) = flushing.replaced else {
            return Ok(());
        };
        files::sync_dir(&self.dir)
            .map_err(|e| StorageError::io(self.name.clone(), "fsync channel state directory", e))?;
        files::remove_journal(&self.dir, &self.name, previous);
        flushing.replaced = None;
        Ok(())
    }

    /// fsyncs what the journal holds, without the write lock.
    fn sync_journal(&self) -> Result<(), StorageError> {
        let (file, len) = {
            let writer = lock(&self.writer);
            match &writer.journal {
                Some(file) if writer.synced_len < writer.len => (file.clone(), writer.len),
                _ => return Ok(()),
            }
        };
        file.sync_data()
            .map_err(|e| StorageError::io(self.name.clone(), "fsync channel journal", e))?;
        let mut writer = lock(&self.writer);
        if writer
            .journal
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, &file))
        {
            writer.synced_len = writer.synced_len.max(len);
        }
        Ok(())
    }
}

impl Buffered {
    /// When the oldest record not yet written was recorded.
    fn unwritten_since(&self) -> Option<Instant> {
        match (self.oldest, self.taken) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl ChannelStore for FileChannelStore {
    fn record(&self, events: &mut Vec<StateEvent>, now: Instant) {
        let overdue = {
            let mut buffered = lock(&self.buffered);
            let buffered = &mut *buffered;
            if buffered.deleted {
                events.clear();
                return;
            }
            if !events.is_empty() {
                let before = buffered.journal.len();
                format::encode_events(events, &mut buffered.journal);
                buffered.journal_bytes += (buffered.journal.len() - before) as u64;
                buffered.oldest.get_or_insert(now);
                for event in events.iter() {
                    if let StateEvent::Cursor(cursor) = *event {
                        buffered.max_cursor = buffered.max_cursor.max(cursor);
                    }
                }
                events.clear();
            }
            !buffered.failing
                && buffered.unwritten_since().is_some_and(|since| {
                    now.saturating_duration_since(since) >= RECORD_WRITES_AFTER
                })
        };
        if overdue {
            if let Err(e) = self.write(now) {
                // The flush thread retries, and reports the failure.
                tracing::debug!(channel = %self.name, error = %e, "overdue channel journal write failed");
            }
        }
    }

    fn wants_checkpoint(&self) -> bool {
        let buffered = lock(&self.buffered);
        !buffered.deleted
            && matches!(buffered.checkpoint, Asked::None)
            && (buffered.journal_bytes > CHECKPOINT_AFTER_BYTES
                || buffered
                    .max_cursor
                    .saturating_sub(buffered.checkpoint_cursor)
                    > CHECKPOINT_AFTER_OFFSETS)
    }

    fn checkpoint(&self, record: ChannelRecord) {
        let mut buffered = lock(&self.buffered);
        if buffered.deleted || matches!(buffered.checkpoint, Asked::Taken) {
            return;
        }
        buffered.journal_bytes = 0;
        buffered.checkpoint_cursor = record.cursor;
        buffered.max_cursor = record.cursor;
        let at = buffered.journal.len();
        buffered.checkpoint = Asked::Waiting { record, at };
    }

    fn write(&self, now: Instant) -> Result<(), StorageError> {
        let mut writer = lock(&self.writer);
        if !self.take_buffered(&mut writer) {
            return Ok(());
        }
        let written = self.write_journal(&mut writer);
        self.written(written.is_ok(), now);
        written
    }

    fn flush(&self, sync: bool, now: Instant) -> Result<(), StorageError> {
        let mut flushing = lock(&self.flushing);
        let written = self.write(now);
        self.remove_replaced(&mut flushing)?;
        self.install_checkpoint(&mut flushing, now)?;
        written?;
        if sync {
            self.sync_journal()?;
        }
        Ok(())
    }

    fn lag(&self, now: Instant) -> StateLag {
        let buffered = lock(&self.buffered);
        let current = buffered
            .unwritten_since()
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        StateLag {
            current,
            max: buffered.max_lag.max(current),
        }
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
/// `events` in the journal's framed encoding, the unit a replicated channel update carries
/// between nodes.
pub(crate) fn events_to_bytes(events: &[StateEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    format::encode_events(events, &mut out);
    out
}

/// The events of [`events_to_bytes`], or why they cannot be read.
pub(crate) fn events_from_bytes(mut bytes: &[u8]) -> Result<Vec<StateEvent>, &'static str> {
    let mut events = Vec::new();
    while !bytes.is_empty() {
        let (payload, rest) = format::split_frame(bytes, format::MAX_JOURNAL_RECORD)?;
        format::decode_events(payload, &mut events)?;
        bytes = rest;
    }
    Ok(events)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
