//! fsyncs: group commit for `always`, the interval flush, and the `durable` futures.
//!
//! A sync takes the log's written end and the files to sync under the log's mutex, fsyncs
//! them outside it, then publishes the end as synced. Syncs of one log are serialized
//! (`serial`), so appends that arrive during an fsync are covered by the next one: under
//! load, one fsync covers everything its predecessor's wait accumulated (group commit).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::watch;

use super::log::{lock, Closed, FileLog, Sealing};
use super::meta::sync_dir;
use super::segment::Segment;
use crate::storage::{Durable, StorageError};

/// Failed fsync ranges remembered for `durable` futures that have not looked yet.
const MAX_FAILURES: usize = 16;

/// A log's sync bookkeeping.
#[derive(Debug)]
pub(super) struct SyncState {
    /// Held for the whole of a sync: one at a time per log.
    pub(super) serial: Mutex<()>,
    status: watch::Sender<Status>,
    /// The log is in the commit queue (or about to be): appends need not queue it again.
    queued: AtomicBool,
    committer: Arc<Committer>,
    /// fsync latencies in microseconds.
    latency: Mutex<Histogram<u64>>,
    /// When the interval policy last synced.
    last_interval: Mutex<Instant>,
    /// An fsync failure is being reported; the next success is logged.
    failing: AtomicBool,
    /// Makes the next sync fail with EIO.
    #[cfg(test)]
    pub(super) fail_next: AtomicBool,
    /// Makes every sync take at least this long (µs), as on a slow disk.
    #[cfg(test)]
    pub(super) slow_us: std::sync::atomic::AtomicU64,
}

/// What `durable` futures watch.
#[derive(Debug)]
struct Status {
    /// Everything below is fsynced.
    synced: u64,
    /// Ranges an fsync failed to cover: never reported durable.
    failed: VecDeque<(Range<u64>, Arc<io::Error>)>,
    /// The log was closed or deleted: no more syncs will come.
    closed: bool,
}

impl Status {
    fn failure(&self, end: u64) -> Option<&Arc<io::Error>> {
        let last = end.checked_sub(1)?;
        self.failed
            .iter()
            .find(|(range, _)| range.contains(&last))
            .map(|(_, e)| e)
    }

    fn settled(&self, end: u64) -> bool {
        self.failure(end).is_some() || self.synced >= end || self.closed
    }

    fn outcome(&self, topic: &str, end: u64) -> Result<(), StorageError> {
        if let Some(e) = self.failure(end) {
            return Err(StorageError::io(topic, "fsync", copy_error(e)));
        }
        if self.synced >= end {
            return Ok(());
        }
        let e = io::Error::other("the log was closed before the fsync");
        Err(StorageError::io(topic, "fsync", e))
    }
}

/// An `io::Error` for each waiter of a failed fsync (they can't share one).
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Which files a sync covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Sealed segments, the active one and the directory: makes everything written durable.
    All,
    /// Sealed segments only, so that their index files can be written (`never` policy).
    Sealed,
}

/// What one sync does, taken under the log's mutex.
#[derive(Debug)]
struct Job {
    end: u64,
    synced: u64,
    sealing: Vec<Sealing>,
    active: Option<Arc<File>>,
    dir: bool,
}

impl SyncState {
    pub(super) fn new(end: u64, committer: Arc<Committer>) -> Self {
        let status = Status {
            synced: end,
            failed: VecDeque::new(),
            closed: false,
        };
        SyncState {
            serial: Mutex::new(()),
            status: watch::Sender::new(status),
            queued: AtomicBool::new(false),
            committer,
            latency: Mutex::new(new_histogram()),
            last_interval: Mutex::new(Instant::now()),
            failing: AtomicBool::new(false),
            #[cfg(test)]
            fail_next: AtomicBool::new(false),
            #[cfg(test)]
            slow_us: Default::default(),
        }
    }

    /// Resolves once an fsync covers everything below `end`, or with the error that kept it
    /// from doing so.
    pub(super) fn durable(&self, topic: &str, end: u64) -> Durable {
        let mut status = self.status.subscribe();
        let topic = topic.to_owned();
        Box::pin(async move {
            match status.wait_for(|s| s.settled(end)).await {
                Ok(s) => s.outcome(&topic, end),
                Err(_) => Err(StorageError::io(
                    topic,
                    "fsync",
                    io::Error::other("the log was dropped before the fsync"),
                )),
            }
        })
    }

    /// Queues `log` for the commit threads, unless it is queued already.
    pub(super) fn request(&self, log: &Weak<FileLog>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.committer.push(log.clone());
        }
    }

    /// Whether the `interval` policy's next sync is due; if so, starts the next interval.
    pub(super) fn interval_due(&self, now: Instant, every: Duration) -> bool {
        let mut last = lock(&self.last_interval);
        if now.duration_since(*last) < every {
            return false;
        }
        *last = now;
        true
    }

    /// fsyncs done, and their p50 and p99 in microseconds.
    pub(super) fn latency(&self) -> (u64, u64, u64) {
        let h = lock(&self.latency);
        if h.is_empty() {
            return (0, 0, 0);
        }
        (h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    }

    /// Wakes every `durable` future: no sync will come any more.
    pub(super) fn close(&self) {
        self.status.send_modify(|s| s.closed = true);
    }

    fn time<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let began = Instant::now();
        let result = f();
        let us = began.elapsed().as_micros() as u64;
        lock(&self.latency).saturating_record(us.max(1));
        result
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 2 significant digits: a few KiB per log.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("constant bounds are valid")
}

impl FileLog {
    /// Makes everything written so far durable and publishes it to `durable` futures.
    pub(super) fn sync_all(&self) -> Result<(), StorageError> {
        self.sync_scope(Scope::All)
    }

    /// fsyncs the sealed segments and writes their index files.
    pub(super) fn sync_sealed(&self) -> Result<(), StorageError> {
        if self.lock().sealing.is_empty() {
            return Ok(());
        }
        self.sync_scope(Scope::Sealed)
    }

    fn sync_scope(&self, scope: Scope) -> Result<(), StorageError> {
        let _serial = lock(&self.sync.serial);
        let job = {
            let mut st = self.lock();
            if st.closed == Some(Closed::Deleted) {
                return Ok(());
            }
            let all = scope == Scope::All;
            Job {
                end: st.end,
                synced: st.synced_end,
                active: (all && st.synced_end < st.end).then(|| st.active.file.clone()),
                sealing: std::mem::take(&mut st.sealing),
                dir: all && std::mem::take(&mut st.dir_dirty),
            }
        };
        if job.sealing.is_empty() && job.active.is_none() && !job.dir {
            return Ok(());
        }
        match self.run(&job) {
            Ok(()) => {
                self.synced(job, scope);
                Ok(())
            }
            Err(e) => Err(self.sync_failed(job, scope, e)),
        }
    }

    /// The fsyncs of a job: sealed segments first, then the active one, then the directory.
    fn run(&self, job: &Job) -> io::Result<()> {
        #[cfg(test)]
        if self.sync.fail_next.swap(false, Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        #[cfg(test)]
        std::thread::sleep(Duration::from_micros(
            self.sync.slow_us.load(Ordering::Relaxed),
        ));
        for sealed in &job.sealing {
            self.sync.time(|| sealed.file.sync_data())?;
        }
        if let Some(active) = &job.active {
            self.sync.time(|| active.sync_data())?;
        }
        if job.dir {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn synced(&self, job: Job, scope: Scope) {
        if self.sync.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(topic = %self.topic, "fsyncs work again");
        }
        if scope == Scope::All {
            {
                let mut st = self.lock();
                st.synced_end = st.synced_end.max(job.end);
            }
            self.sync
                .status
                .send_modify(|s| s.synced = s.synced.max(job.end));
        }
        for sealed in &job.sealing {
            // A segment deleted meanwhile gets no index file.
            if !self.lock().sealed.contains_key(&sealed.base) {
                continue;
            }
            let written = Segment::write_index(&self.dir, sealed.base, sealed.len, &sealed.summary);
            if let Err(e) = written {
                // Only costs a scan of this segment after an unclean shutdown.
                tracing::warn!(
                    topic = %self.topic,
                    base = sealed.base,
                    error = %e,
                    "writing an index file",
                );
            }
        }
    }

    fn sync_failed(&self, job: Job, scope: Scope, e: io::Error) -> StorageError {
        {
            let mut st = self.lock();
            let mut sealing = job.sealing;
            sealing.append(&mut st.sealing);
            st.sealing = sealing;
            st.dir_dirty |= job.dir;
        }
        if scope == Scope::All && job.synced < job.end {
            let e = Arc::new(copy_error(&e));
            self.sync.status.send_modify(|s| {
                if s.failed.len() == MAX_FAILURES {
                    s.failed.pop_front();
                }
                s.failed.push_back((job.synced..job.end, e));
            });
        }
        if !self.sync.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                topic = %self.topic,
                offsets = ?(job.synced..job.end),
                error = %e,
                "fsync failed: these offsets are not reported durable",
            );
        } else {
            tracing::debug!(topic = %self.topic, error = %e, "fsync failed again");
        }
        self.io_error("fsync", e)
    }
}

/// The queue of logs waiting for a group commit, served by the commit threads.
#[derive(Debug, Default)]
pub(super) struct Committer {
    queue: Mutex<CommitQueue>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct CommitQueue {
    logs: VecDeque<Weak<FileLog>>,
    shutdown: bool,
}

impl Committer {
    fn push(&self, log: Weak<FileLog>) {
        lock(&self.queue).logs.push_back(log);
        self.ready.notify_one();
    }

    /// A commit thread: syncs each queued log until shutdown.
    pub(super) fn run(&self) {
        loop {
            let next = {
                let mut queue = lock(&self.queue);
                loop {
                    if queue.shutdown {
                        return;
                    }
                    if let Some(log) = queue.logs.pop_front() {
                        break log;
                    }
                    queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
            };
            let Some(log) = next.upgrade() else {
                continue;
            };
            // Cleared first, so that an append during this sync queues the next one.
            log.sync.queued.store(false, Ordering::Release);
            let _ = log.sync_all();
        }
    }

    pub(super) fn shutdown(&self) {
        lock(&self.queue).shutdown = true;
        self.ready.notify_all();
    }
}

/// Tells the flush and write threads to stop, and when they should wake.
#[derive(Debug, Default)]
pub(super) struct Ticker {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// How often the flush thread runs.
pub(super) const TICK: Duration = Duration::from_millis(5);
/// How often the write thread writes the channel stores' buffered events: well inside
/// [`RECORD_WRITES_AFTER`](crate::storage::RECORD_WRITES_AFTER), so that channels rarely
/// have to write themselves.
pub(super) const WRITE_TICK: Duration = Duration::from_millis(5);
/// How often retention runs and a moved start is written to meta.json.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

impl Ticker {
    /// The flush thread: every [`TICK`], each log's [`FileLog::tick`] (fsyncs, channel
    /// checkpoints); every second, retention and meta.json.
    pub(super) fn run(&self, logs: impl Fn() -> Vec<Arc<FileLog>>) {
        let mut housekept = Instant::now();
        while self.sleep(TICK) {
            let now = Instant::now();
            let housekeeping = now.duration_since(housekept) >= HOUSEKEEPING_EVERY;
            if housekeeping {
                housekept = now;
            }
            for log in logs() {
                log.tick(now);
                if housekeeping {
                    log.enforce_retention();
                    log.expire_cache();
                    if let Err(e) = log.persist_start() {
                        tracing::warn!(error = %e, "saving the log start");
                    }
                }
            }
        }
    }

    /// The write thread: every [`WRITE_TICK`], each log's channel writes. It never waits
    /// for an fsync or a checkpoint, so the flush thread's slow work does not delay them.
    pub(super) fn run_writes(&self, logs: impl Fn() -> Vec<Arc<FileLog>>) {
        while self.sleep(WRITE_TICK) {
            for log in logs() {
                log.write_channels();
            }
        }
    }

    /// Sleeps for `period` or until stopped; false once stopped.
    fn sleep(&self, period: Duration) -> bool {
        let stopped = lock(&self.stopped);
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, period, |s| !*s)
            .unwrap_or_else(|e| e.into_inner());
        !*stopped
    }

    pub(super) fn stop(&self) {
        *lock(&self.stopped) = true;
        self.wake.notify_all();
    }
}
