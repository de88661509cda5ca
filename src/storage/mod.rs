//! Where messages live: one append-only log per topic, shared by all of the topic's channels,
//! and beside it each channel's durable delivery state.
//!
//! The broker sees storage only through [`Storage`], [`TopicLog`] and [`ChannelStore`].
//! Channels keep their own cursor and in-flight state and read messages from the log by
//! offset, so a message is stored once however many channels deliver it.
//!
//! # Durability contract
//! - When [`TopicLog::append`] returns `Ok(range)`, the messages are readable at those offsets
//!   by every later [`TopicLog::read`]. An append that returns `Err` stored nothing.
//! - When the future from [`TopicLog::durable`] for that range resolves `Ok`, the messages are
//!   as durable as the topic's [`FsyncPolicy`] promises. The broker sends PUB-OK only then:
//!   - [`FsyncPolicy::Always`]: the future resolves after an `fdatasync` that covers the
//!     range. Concurrent publishers share one fsync (group commit). A PUB-OK'd message
//!     survives a process crash and a power loss.
//!   - [`FsyncPolicy::Interval`]: the future resolves once the messages are written to the
//!     operating system; an fsync follows within the interval. A PUB-OK'd message survives a
//!     process crash (SIGKILL); a power loss may lose the last interval.
//!   - [`FsyncPolicy::Never`]: as `Interval`, but the operating system decides when to write
//!     back. A power loss may lose anything not yet written back.
//!   - [`MemoryStorage`] promises nothing across a restart: its `durable` resolves at once.
//! - Offsets increase by one per message. A corrupt record leaves a gap: reads skip it.
//!   [`TopicLog::trim`] and retention only drop whole prefixes; reads below
//!   [`TopicLog::start`] return nothing.
//! - Channel state ([`ChannelStore`]) is written within [`WRITE_WITHIN`] (10 ms) of the
//!   change while the broker runs, whoever's thread does it (see the store's write
//!   deadline), and fsynced on the topic's policy. It errs only toward redelivery: a lost
//!   record can bring back a message that was finished, never drop one that was not.

pub mod file;
pub mod journal;
mod memory;
mod policy;

pub use file::FileStorage;
pub use memory::MemoryStorage;
pub use policy::{FsyncPolicy, StorageConfig, TopicStorageConfig};

pub use crate::message::{HeaderName, OrderBy};
use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::message::{ChannelName, StoredMessage, TopicName};

/// A storage failure, with what was being done when it happened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("topic {topic}: {op} failed")]
    Io {
        topic: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("topic {topic}: {what}")]
    Corrupt { topic: String, what: String },
    /// In a cluster: this node does not lead the topic; its leader serves it.
    #[error("topic {topic} is served by its leader, {leader}")]
    NotLeader { topic: String, leader: LeaderHint },
    /// In a cluster: the topic has no leader right now (an election, or it is being
    /// created); retrying shortly can succeed.
    #[error("topic {topic} is not available right now ({reason}); retry")]
    Unavailable { topic: String, reason: String },
}

/// Where the leader of a topic serves clients: what a redirect names.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaderHint {
    pub node: u64,
    /// The leader's QUIC address, once it has advertised it.
    pub quic: Option<String>,
    pub nsq_tcp: Option<String>,
    pub http: Option<String>,
}

impl std::fmt::Display for LeaderHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}", self.node)?;
        if let Some(quic) = &self.quic {
            write!(f, " at {quic}")?;
        }
        Ok(())
    }
}

/// Called by a log whose appends become readable later than they return (a replicated log:
/// once they are committed), so that the topic wakes its channels then.
pub type AppendWaker = Arc<dyn Fn() + Send + Sync>;

impl StorageError {
    pub fn io(topic: impl Into<String>, op: &'static str, source: std::io::Error) -> Self {
        StorageError::Io {
            topic: topic.into(),
            op,
            source,
        }
    }

    /// True when the disk (or its quota) is full: the publish can be retried once space
    /// returns.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) || source.raw_os_error() == Some(27)
            } // EFBIG: file size limit
            StorageError::Corrupt { .. }
            | StorageError::NotLeader { .. }
            | StorageError::Unavailable { .. } => false,
        }
    }
}

/// Resolves when a topic can be opened (see [`Storage::prepare_topic`]).
pub type Preparing<'a> = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send + 'a>>;

/// Resolves when an appended range is durable.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send>>;

/// A backend that opens topic logs.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Opens the log of `topic`, creating it empty if it doesn't exist.
    fn open_topic(&self, topic: &TopicName) -> Result<Arc<dyn TopicLog>, StorageError>;
    /// Removes a topic's log, its channels' state and everything in it.
    fn delete_topic(&self, topic: &TopicName) -> Result<(), StorageError>;
    /// Makes `topic` ready to be opened here, when that takes a round trip (a cluster
    /// creates it through its meta group and waits for its leader). None: nothing to wait
    /// for, as with local storage.
    fn prepare_topic<'a>(&'a self, _topic: &'a TopicName) -> Option<Preparing<'a>> {
        None
    }
    /// The topics found when the storage was opened, in name order.
    fn existing_topics(&self) -> Vec<TopicName>;
    /// Clean shutdown: writes every buffered channel record, fsyncs every log and marks the
    /// data directory clean so that the next start needs no scan. Later calls do nothing.
    fn close(&self) -> Result<(), StorageError>;
}

/// Facts about a topic that survive restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMeta {
    /// Random per topic incarnation; the high half of every message id.
    pub incarnation: u64,
    pub paused: bool,
}

/// What a topic log reports for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes the log holds: on disk for a file log, in memory for the memory log.
    pub bytes: u64,
    /// Segment files (0 for the memory log).
    pub segments: u64,
    /// fsyncs done, and their latency percentiles in microseconds (0 when none).
    pub fsyncs: u64,
    pub fsync_p50_us: u64,
    pub fsync_p99_us: u64,
    /// Messages and bytes dropped by `max_age` or `max_bytes` retention before every channel
    /// had finished them.
    pub retention_dropped_messages: u64,
    pub retention_dropped_bytes: u64,
    /// Records found corrupt (on recovery or on read) and skipped.
    pub corrupt_records: u64,
}

/// One topic's append-only log.
pub trait TopicLog: Send + Sync + std::fmt::Debug + 'static {
    /// Appends `messages` atomically (all or none) and returns their offsets.
    fn append(&self, messages: Vec<StoredMessage>) -> Result<Range<u64>, StorageError>;
    /// Resolves once everything below `end` is durable per this log's policy, or with the
    /// error that made that impossible.
    fn durable(&self, end: u64) -> Durable;
    /// Up to `max` messages from `from` onward, in offset order, appended to `out`. Corrupt
    /// records are skipped (and counted), so offsets may have gaps.
    fn read(&self, from: u64, max: usize, out: &mut Vec<(u64, Arc<StoredMessage>)>);
    /// The message at `offset`, if it is still retained and readable.
    fn get(&self, offset: u64) -> Option<Arc<StoredMessage>>;
    /// Offset of the oldest retained message.
    fn start(&self) -> u64;
    /// Offset the next append gets.
    fn end(&self) -> u64;
    /// Drops every message below `offset` (never past `end`): reads below it return nothing
    /// from now on, and whole segments below it are deleted.
    fn trim(&self, offset: u64);
    /// Continues an empty log (start = end) at `offset`, at or past its end: a cluster
    /// replica catching up from a snapshot starts where the leader's log starts. Logs that
    /// cannot do this refuse.
    fn restart_at(&self, offset: u64) -> Result<(), StorageError> {
        Err(StorageError::Corrupt {
            topic: String::new(),
            what: format!("this log cannot restart at {offset}"),
        })
    }
    /// Size, segments, fsync latency and retention counters.
    fn stats(&self) -> LogStats;

    /// The topic's metadata, if it was saved before (a topic recovered from disk).
    fn meta(&self) -> Option<TopicMeta>;
    /// Saves the topic's metadata, replacing what was there.
    fn save_meta(&self, meta: TopicMeta) -> Result<(), StorageError>;
    /// The channels whose state was found on disk when the log was opened, in name order.
    fn existing_channels(&self) -> Vec<ChannelName>;
    /// Opens (creating if needed) the durable state of a channel, and returns what was
    /// recovered for it. `#ephemeral` channels get a store that keeps nothing.
    fn open_channel(
        &self,
        channel: &ChannelName,
    ) -> Result<(Arc<dyn ChannelStore>, Option<ChannelRecord>), StorageError>;
    /// Removes a channel's saved state.
    fn delete_channel(&self, channel: &ChannelName) -> Result<(), StorageError>;
    /// Registers what to call when appended messages become readable after `append`
    /// returned. Logs whose appends are readable at once ignore it.
    fn set_append_waker(&self, _waker: AppendWaker) {}
}

/// Options of a channel that survive restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelOptions {
    pub paused: bool,
    /// 0 means unlimited.
    pub max_attempts: u16,
    /// Message timeout for consumers that ask for none, in milliseconds; 0 means the broker's
    /// default.
    pub msg_timeout_ms: u64,
    pub ordering: OrderBy,
}

/// A message of a channel that was taken from the log but is not settled: in flight,
/// requeued, deferred, or on its way to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingEntry {
    /// Deliveries so far on this channel.
    pub attempts: u16,
    /// Not deliverable before this wall-clock time, in milliseconds since the Unix epoch;
    /// 0 means at once.
    pub due_ms: u64,
}

/// The whole durable state of a channel: what a checkpoint saves and recovery returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelRecord {
    /// Every offset below the cursor has been taken from the log at least once.
    pub cursor: u64,
    pub options: ChannelOptions,
    /// The unsettled offsets below the cursor. Every other offset below it is settled
    /// (finished, or dead-lettered with the copy durable).
    pub pending: BTreeMap<u64, PendingEntry>,
}

/// A change to a channel's state, recorded in its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateEvent {
    /// The cursor moved to this offset: each offset it passed that has no entry yet is
    /// pending with 1 attempt, due at once.
    Cursor(u64),
    /// Finished, or dead-lettered with the copy durable: no longer pending.
    Settle(u64),
    /// Pending with this many attempts and this due time (REQ, timeout, disconnect, a DPUB
    /// message not yet due, or a redelivery).
    Pending { offset: u64, entry: PendingEntry },
    /// Every offset below this one is settled, and the cursor is at least here.
    Empty(u64),
    /// The channel's options changed.
    Options(ChannelOptions),
}

impl ChannelRecord {
    /// Applies one event. Replaying a checkpoint's journal in order gives the state at the
    /// last record written.
    pub fn apply(&mut self, event: &StateEvent) {
        match *event {
            StateEvent::Cursor(cursor) => {
                for offset in self.cursor..cursor {
                    self.pending.entry(offset).or_insert(PendingEntry {
                        attempts: 1,
                        due_ms: 0,
                    });
                }
                self.cursor = self.cursor.max(cursor);
            }
            StateEvent::Settle(offset) => {
                self.pending.remove(&offset);
            }
            StateEvent::Pending { offset, entry } => {
                self.pending.insert(offset, entry);
            }
            StateEvent::Empty(end) => {
                self.pending = self.pending.split_off(&end);
                self.cursor = self.cursor.max(end);
            }
            StateEvent::Options(options) => self.options = options,
        }
    }
}

/// A channel's durable state: a journal of [`StateEvent`]s since the last checkpoint.
///
/// # Write deadline
/// A recorded event is written (to the operating system, which keeps it across a process
/// crash) within [`WRITE_WITHIN`] of being recorded while the broker runs: a write thread
/// calls [`write`] every few milliseconds, and [`record`] itself writes what is buffered
/// when the oldest unwritten event is [`RECORD_WRITES_AFTER`] old. Every access to a
/// channel's state ends with a `record` call, so a busy channel cannot fall behind however
/// late the write thread runs. Only a broker that gets no CPU at all (or whose writes the
/// operating system holds up) can trail longer, and [`lag`] reports how far it does.
///
/// [`write`]: ChannelStore::write
/// [`record`]: ChannelStore::record
/// [`lag`]: ChannelStore::lag
pub trait ChannelStore: Send + Sync + std::fmt::Debug + 'static {
    /// Buffers `events` (draining the vector), recorded at `now`. If the oldest event not yet
    /// written was recorded [`RECORD_WRITES_AFTER`] or longer before `now`, writes what is
    /// buffered before returning. May be called with no events, to enforce that deadline.
    fn record(&self, events: &mut Vec<StateEvent>, now: Instant);
    /// True when the journal has grown enough that the caller should call [`checkpoint`]
    /// with the channel's current state.
    ///
    /// [`checkpoint`]: ChannelStore::checkpoint
    fn wants_checkpoint(&self) -> bool;
    /// Replaces everything recorded so far with `record`, the channel's whole current state.
    /// The write happens in the background; events recorded after this call follow it. While
    /// an earlier checkpoint is still being installed the call may do nothing: the journal
    /// keeps every event meanwhile, and `wants_checkpoint` asks again later.
    fn checkpoint(&self, record: ChannelRecord);
    /// Writes the buffered events (no checkpoint, no fsync); `now` is the time for [`lag`].
    ///
    /// [`lag`]: ChannelStore::lag
    fn write(&self, now: Instant) -> Result<(), StorageError>;
    /// Writes what is buffered now and any checkpoint asked for, fsyncing if `sync`.
    fn flush(&self, sync: bool, now: Instant) -> Result<(), StorageError>;
    /// How far the written state trails the recorded one at `now`.
    fn lag(&self, now: Instant) -> StateLag;
}

/// Events recorded this long ago and not yet written are written by the next
/// [`ChannelStore::record`] call.
pub const RECORD_WRITES_AFTER: Duration = Duration::from_millis(8);
/// The bound the broker states: a recorded event is written within this time while the
/// broker runs (the write thread writes every 5 ms, and `record` enforces
/// [`RECORD_WRITES_AFTER`]).
pub const WRITE_WITHIN: Duration = Duration::from_millis(10);

/// How far a channel's written state trails its recorded (in-memory) state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateLag {
    /// Age of the oldest event not yet written; zero when everything is written.
    pub current: Duration,
    /// The longest any event has waited to be written since the store was opened, the
    /// current one included.
    pub max: Duration,
}

/// A channel store that keeps nothing: for `#ephemeral` channels and the memory log.
#[derive(Debug, Default)]
pub struct NoChannelStore;

impl ChannelStore for NoChannelStore {
    fn record(&self, events: &mut Vec<StateEvent>, _now: Instant) {
        events.clear();
    }

    fn wants_checkpoint(&self) -> bool {
        false
    }

    fn checkpoint(&self, _record: ChannelRecord) {}

    fn write(&self, _now: Instant) -> Result<(), StorageError> {
        Ok(())
    }

    fn flush(&self, _sync: bool, _now: Instant) -> Result<(), StorageError> {
        Ok(())
    }

    fn lag(&self, _now: Instant) -> StateLag {
        StateLag::default()
    }
}
