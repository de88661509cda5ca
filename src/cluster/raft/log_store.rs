//! A Raft group's log on disk: one file of checksummed records, replayed into memory at
//! open, and a vote file replaced atomically. Entries stay in memory until openraft purges
//! them (after a snapshot), so a group's log holds at most a few thousand entries.
//!
//! # Format
//! `log` is a sequence of records `[u32 len][u32 crc32c of the body][body]`, little-endian,
//! where the body is a postcard `Record`: an entry, a truncation (`TruncateAfter`), a
//! purge, or the committed log id. Replaying them in order gives the log. A record cut short
//! or failing its checksum ends the file: it was being written when the node stopped, and
//! its append was never acknowledged (the callback runs after the fsync), so the tail is cut
//! there. `vote` holds one record with the vote, written to `vote.tmp`, fsynced and renamed.
//!
//! With `sync` (the meta group, and topics whose fsync policy is `always`) every append is
//! fsynced before openraft is told it is durable, so that it survives a power loss; without
//! it an append is durable once written (it survives a crash of the process, as a single
//! node's `interval` policy promises). When purged records make up most of the file it
//! is rewritten (to `log.tmp`, fsynced, renamed).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::{OptionalSend, RaftLogReader, RaftTypeConfig};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest record accepted when reading the log back.
const MAX_RECORD: usize = 256 << 20;

/// Rewrite the log once it holds this many bytes and over half of them are purged.
const COMPACT_AT: u64 = if cfg!(test) { 64 << 10 } else { 4 << 20 };

#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
enum Record<C: RaftTypeConfig> {
    Entry(EntryOf<C>),
    TruncateAfter(Option<LogIdOf<C>>),
    Purge(LogIdOf<C>),
    Committed(Option<LogIdOf<C>>),
}

#[derive(Debug)]
struct Inner<C: RaftTypeConfig> {
    dir: PathBuf,
    file: File,
    file_len: u64,
    /// fsync every change before it is acknowledged.
    sync: bool,
    entries: BTreeMap<u64, EntryOf<C>>,
    vote: Option<VoteOf<C>>,
    purged: Option<LogIdOf<C>>,
    committed: Option<LogIdOf<C>>,
    /// Bytes of the file that records of purged or truncated entries take.
    dead_bytes: u64,
    /// The encoded size of each live entry's record.
    sizes: BTreeMap<u64, u64>,
}

/// A group's log: entries in memory, every change appended to the file first.
#[derive(Debug)]
pub struct FileLogStore<C: RaftTypeConfig> {
    inner: Arc<Mutex<Inner<C>>>,
}

impl<C: RaftTypeConfig> Clone for FileLogStore<C> {
    fn clone(&self) -> Self {
        FileLogStore {
            inner: self.inner.clone(),
        }
    }
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let body = postcard::to_stdvec(value).map_err(invalid)?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads the records of `bytes` until the end or the first damaged one; returns them with
/// the length of the good prefix.
fn decode_all<T: DeserializeOwned>(bytes: &[u8]) -> (Vec<(T, u64)>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        if len > MAX_RECORD || bytes.len() - at - 8 < len {
            break;
        }
        let body = &bytes[at + 8..at + 8 + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(record) = postcard::from_bytes(body) else {
            break;
        };
        records.push((record, (len + 8) as u64));
        at += len + 8;
    }
    (records, at)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dir/name` atomically: a temporary file, fsynced, renamed.
fn replace(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

impl<C: RaftTypeConfig> FileLogStore<C>
where
    C::Entry: Clone,
{
    /// Opens (or creates) the log in `dir`, replaying it; `sync` fsyncs every change.
    pub fn open(dir: &Path, sync: bool) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join("log");
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(&path)?.read_to_end(&mut bytes)?;
        }
        let (records, good) = decode_all::<Record<C>>(&bytes);
        if good < bytes.len() {
            tracing::warn!(log = %path.display(), kept = good, cut = bytes.len() - good, "Raft log has a damaged or unfinished tail; cutting it (it was never acknowledged)");
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.set_len(good as u64)?;
        file.sync_all()?;
        let vote = match fs::read(dir.join("vote")) {
            Ok(bytes) => decode_all::<VoteOf<C>>(&bytes)
                .0
                .into_iter()
                .next()
                .map(|(v, _)| v),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            file,
            file_len: good as u64,
            sync,
            entries: BTreeMap::new(),
            vote,
            purged: None,
            committed: None,
            dead_bytes: 0,
            sizes: BTreeMap::new(),
        };
        for (record, size) in records {
            inner.apply(record, size);
        }
        Ok(FileLogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<C>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when nothing was ever written: no entry, no vote.
    pub fn is_pristine(&self) -> bool {
        let inner = self.lock();
        inner.entries.is_empty() && inner.purged.is_none() && inner.vote.is_none()
    }
}

impl<C: RaftTypeConfig> Inner<C>
where
    C::Entry: Clone,
{
    fn apply(&mut self, record: Record<C>, size: u64) {
        match record {
            Record::Entry(entry) => {
                let index = openraft::entry::RaftEntry::index(&entry);
                if let Some(old) = self.sizes.insert(index, size) {
                    self.dead_bytes += old;
                }
                self.entries.insert(index, entry);
            }
            Record::TruncateAfter(last) => {
                let from = last.map_or(0, |l| l.index + 1);
                let cut = self.sizes.split_off(&from);
                self.dead_bytes += cut.values().sum::<u64>() + size;
                self.entries.split_off(&from);
            }
            Record::Purge(upto) => {
                let keep = self.sizes.split_off(&(upto.index + 1));
                let gone = std::mem::replace(&mut self.sizes, keep);
                self.dead_bytes += gone.values().sum::<u64>();
                self.entries = self.entries.split_off(&(upto.index + 1));
                self.purged = Some(upto);
            }
            Record::Committed(committed) => {
                self.dead_bytes += size;
                self.committed = committed;
            }
        }
    }

    fn write(&mut self, records: Vec<Record<C>>) -> io::Result<()> {
        let mut bytes = Vec::new();
        let mut sized = Vec::with_capacity(records.len());
        for record in records {
            let encoded = encode(&record)?;
            bytes.extend_from_slice(&encoded);
            sized.push((record, encoded.len() as u64));
        }
        self.file.write_all(&bytes)?;
        if self.sync {
            self.file.sync_data()?;
        }
        self.file_len += bytes.len() as u64;
        for (record, size) in sized {
            self.apply(record, size);
        }
        if self.file_len >= COMPACT_AT && self.dead_bytes * 2 >= self.file_len {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with only what it still needs.
    fn compact(&mut self) -> io::Result<()> {
        let mut bytes = Vec::new();
        if let Some(purged) = &self.purged {
            bytes.extend(encode(&Record::<C>::Purge(purged.clone()))?);
        }
        if self.committed.is_some() {
            bytes.extend(encode(&Record::<C>::Committed(self.committed.clone()))?);
        }
        for entry in self.entries.values() {
            bytes.extend(encode(&Record::<C>::Entry(entry.clone()))?);
        }
        replace(&self.dir, "log", &bytes)?;
        self.file = OpenOptions::new().append(true).open(self.dir.join("log"))?;
        self.file_len = bytes.len() as u64;
        self.dead_bytes = 0;
        Ok(())
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for FileLogStore<C>
where
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.lock().vote.clone())
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for FileLogStore<C>
where
    C::Entry: Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(openraft::entry::RaftEntry::log_id);
        Ok(LogState {
            last_purged_log_id: inner.purged.clone(),
            last_log_id: last.or_else(|| inner.purged.clone()),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        let mut inner = self.lock();
        replace(&inner.dir, "vote", &encode(vote)?)?;
        inner.vote = Some(vote.clone());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        // Not fsynced on its own: it is a hint that saves re-applying after a restart, and
        // the next append's fsync carries it.
        let mut inner = self.lock();
        let encoded = encode(&Record::<C>::Committed(committed.clone()))?;
        inner.file.write_all(&encoded)?;
        inner.file_len += encoded.len() as u64;
        inner.apply(Record::Committed(committed), encoded.len() as u64);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.lock().committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records = entries.into_iter().map(Record::Entry).collect();
        let result = self.lock().write(records);
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.lock().write(vec![Record::TruncateAfter(last)])
    }

    async fn purge(&mut self, upto: LogIdOf<C>) -> Result<(), io::Error> {
        self.lock().write(vec![Record::Purge(upto)])
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::testing::{blank_ent, log_id};
    use openraft::{RaftLogReader, StorageError};

    use super::*;
    use crate::cluster::raft::meta::MetaMachine;
    use crate::cluster::raft::MetaConfig as C;

    type FileLogStore = super::FileLogStore<C>;

    struct Builder;

    impl StoreBuilder<C, FileLogStore, MetaMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, FileLogStore, MetaMachine), StorageError<C>> {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = FileLogStore::open(dir.path(), true).expect("open log");
            let sm = MetaMachine::open(dir.path()).expect("open machine");
            Ok((dir, log, sm))
        }
    }

    #[tokio::test]
    async fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).await.expect("storage suite");
    }

    async fn append(log: &mut FileLogStore, indexes: std::ops::Range<u64>) {
        let entries: Vec<_> = indexes.map(|i| blank_ent::<C>(1, 1, i)).collect();
        log.append(entries, IOFlushed::noop())
            .await
            .expect("append");
    }

    async fn indexes(log: &mut FileLogStore) -> Vec<u64> {
        let entries = log.try_get_log_entries(0..u64::MAX).await.expect("read");
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn reopening_replays_appends_truncations_purges_and_the_vote() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = FileLogStore::open(dir.path(), true).expect("open");
            assert!(log.is_pristine());
            append(&mut log, 0..10).await;
            log.truncate_after(Some(log_id::<C>(1, 1, 6)))
                .await
                .expect("truncate");
            append(&mut log, 7..9).await;
            log.purge(log_id::<C>(1, 1, 2)).await.expect("purge");
            let vote = openraft::impls::Vote::new(3, 2);
            log.save_vote(&vote).await.expect("vote");
        }
        let mut log = FileLogStore::open(dir.path(), true).expect("reopen");
        assert!(!log.is_pristine());
        assert_eq!(indexes(&mut log).await, vec![3, 4, 5, 6, 7, 8]);
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id::<C>(1, 1, 2)));
        assert_eq!(state.last_log_id, Some(log_id::<C>(1, 1, 8)));
        assert_eq!(
            log.read_vote().await.expect("vote"),
            Some(openraft::impls::Vote::new(3, 2))
        );
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_what_came_before_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = FileLogStore::open(dir.path(), true).expect("open");
            append(&mut log, 0..5).await;
        }
        // Half a record, as a crash in the middle of a write leaves it.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("log"))
            .expect("log file");
        file.write_all(&[40, 0, 0, 0, 1, 2, 3]).expect("write");
        drop(file);
        let mut log = FileLogStore::open(dir.path(), true).expect("reopen");
        assert_eq!(indexes(&mut log).await, vec![0, 1, 2, 3, 4]);
        append(&mut log, 5..6).await;
        drop(log);
        let mut log = FileLogStore::open(dir.path(), true).expect("reopen again");
        assert_eq!(indexes(&mut log).await, vec![0, 1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_log_mostly_purged_is_rewritten_smaller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = FileLogStore::open(dir.path(), true).expect("open");
        let mut next = 0;
        while std::fs::metadata(dir.path().join("log"))
            .expect("log")
            .len()
            < COMPACT_AT / 2
        {
            append(&mut log, next..next + 1000).await;
            next += 1000;
        }
        log.purge(log_id::<C>(1, 1, next - 10))
            .await
            .expect("purge");
        let purged_at = next - 10;
        let mut len = std::fs::metadata(dir.path().join("log"))
            .expect("log")
            .len();
        let mut shrank = false;
        for _ in 0..100 {
            append(&mut log, next..next + 100).await;
            next += 100;
            let now = std::fs::metadata(dir.path().join("log"))
                .expect("log")
                .len();
            if now < len {
                shrank = true;
                break;
            }
            len = now;
        }
        assert!(shrank, "the log was not rewritten");
        drop(log);
        let mut log = FileLogStore::open(dir.path(), true).expect("reopen");
        let kept = indexes(&mut log).await;
        assert_eq!(
            kept.first(),
            Some(&(purged_at + 1)),
            "purged entries stay purged"
        );
        assert_eq!(kept.last(), Some(&(next - 1)));
    }
}
