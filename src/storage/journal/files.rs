//! The files of one channel's state directory: recovering a checkpoint and its journal,
//! removing strays, and writing the files of a new generation.
//!
//! A new generation is made in two steps, so that the slow part (its fsyncs) runs without
//! the store's write lock: [`prepare_generation`] writes the new journal and
//! `checkpoint.tmp`, both synced, and [`install_checkpoint`] renames the checkpoint into
//! place. Until that rename, recovery reads the old checkpoint and its journal and removes
//! the new files as strays.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::format::{self, JOURNAL_MAGIC};
use crate::storage::{ChannelRecord, StateEvent, StorageError};

pub(super) const CHECKPOINT: &str = "checkpoint";
pub(super) const CHECKPOINT_TMP: &str = "checkpoint.tmp";
const JOURNAL_PREFIX: &str = "journal-";

/// Creates `dir` if missing, making its entry in the parent durable.
pub(super) fn create_dir(dir: &Path, name: &str) -> Result<(), StorageError> {
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
pub(super) fn recover(
    dir: &Path,
    name: &str,
) -> Result<Option<(u64, ChannelRecord)>, StorageError> {
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
        match decode_record(rest, &mut events) {
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

/// Decodes the first journal record of `bytes` into `events` and returns the bytes after it.
fn decode_record<'a>(
    bytes: &'a [u8],
    events: &mut Vec<StateEvent>,
) -> Result<&'a [u8], format::Reason> {
    let (payload, tail) = format::split_frame(bytes, format::MAX_JOURNAL_RECORD)?;
    format::decode_events(payload, events)?;
    Ok(tail)
}

/// Applies the journal records `records` (without a file header) to `record`: all of them,
/// or, if one does not decode, none.
pub(super) fn fold(record: &mut ChannelRecord, mut records: &[u8]) -> Result<(), format::Reason> {
    let mut events = Vec::new();
    while !records.is_empty() {
        records = decode_record(records, &mut events)?;
    }
    for event in &events {
        record.apply(event);
    }
    Ok(())
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

pub(super) fn remove_journal(dir: &Path, name: &str, generation: u64) {
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

pub(super) fn journal_name(generation: u64) -> String {
    format!("{JOURNAL_PREFIX}{generation}")
}

/// Makes `record` the checkpoint of `generation` with an empty journal, durably, and returns
/// that journal.
pub(super) fn write_generation(
    dir: &Path,
    name: &str,
    generation: u64,
    record: &ChannelRecord,
) -> Result<File, StorageError> {
    let journal = prepare_generation(dir, name, generation, record, &[])?;
    install_checkpoint(dir, name)?;
    sync_dir(dir).map_err(|e| StorageError::io(name, "fsync channel state directory", e))?;
    Ok(journal)
}

/// Writes `journal-{generation}` holding `records` (encoded journal records that follow
/// `record`) and `checkpoint.tmp` holding `record`, both synced, and returns the journal
/// open for appending. The journal exists before the checkpoint names it, so no crash
/// leaves a checkpoint without its journal.
pub(super) fn prepare_generation(
    dir: &Path,
    name: &str,
    generation: u64,
    record: &ChannelRecord,
    records: &[u8],
) -> Result<File, StorageError> {
    let bytes = format::encode_checkpoint(generation, record).ok_or_else(|| {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "too many pending entries");
        StorageError::io(name, "encode channel checkpoint", e)
    })?;
    let journal = create_journal(dir, generation, records)
        .map_err(|e| StorageError::io(name, "create channel journal", e))?;
    write_synced(&dir.join(CHECKPOINT_TMP), &bytes)
        .map_err(|e| StorageError::io(name, "write channel checkpoint", e))?;
    Ok(journal)
}

/// Renames `checkpoint.tmp` over the checkpoint. The rename survives a power loss only once
/// the directory is synced.
pub(super) fn install_checkpoint(dir: &Path, name: &str) -> Result<(), StorageError> {
    fs::rename(dir.join(CHECKPOINT_TMP), dir.join(CHECKPOINT))
        .map_err(|e| StorageError::io(name, "rename channel checkpoint", e))
}

/// Creates (or empties) `journal-{generation}` holding its magic and `records`, synced, and
/// returns it open for appending.
pub(super) fn create_journal(dir: &Path, generation: u64, records: &[u8]) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(journal_name(generation)))?;
    file.set_len(0)?;
    let mut bytes = Vec::with_capacity(JOURNAL_MAGIC.len() + records.len());
    bytes.extend_from_slice(&JOURNAL_MAGIC);
    bytes.extend_from_slice(records);
    file.write_all(&bytes)?;
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
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
pub(super) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
