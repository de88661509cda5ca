//! The leader's view of a replicated topic, behind the storage traits the broker core uses:
//! appends and channel events become proposals of the topic's group, and reads come from
//! the local log, which holds what is committed.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::command::TopicCommand;
use super::group::TopicGroup;
use crate::message::{ChannelName, StoredMessage};
use crate::storage::journal::events_to_bytes;
use crate::storage::{
    AppendWaker, ChannelRecord, ChannelStore, Durable, LogStats, NoChannelStore, StateEvent,
    StateLag, StorageError, TopicLog, TopicMeta, RECORD_WRITES_AFTER,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A replicated topic's log, as its leader's broker uses it.
///
/// `end` is the offset the next append gets; `read` and `get` see only what is committed
/// (the local log), so a channel reads up to the commit point and is woken (the append
/// waker) as it moves.
#[derive(Debug)]
pub struct ReplicatedLog {
    group: Arc<TopicGroup>,
}

impl ReplicatedLog {
    pub fn new(group: Arc<TopicGroup>) -> ReplicatedLog {
        ReplicatedLog { group }
    }

    fn local(&self) -> Arc<dyn TopicLog> {
        self.group.machine.log()
    }
}

impl TopicLog for ReplicatedLog {
    fn append(&self, messages: Vec<StoredMessage>) -> Result<Range<u64>, StorageError> {
        self.group.propose_append(messages)
    }

    fn durable(&self, end: u64) -> Durable {
        self.group.durable(end)
    }

    fn read(&self, from: u64, max: usize, out: &mut Vec<(u64, Arc<StoredMessage>)>) {
        self.local().read(from, max, out)
    }

    fn get(&self, offset: u64) -> Option<Arc<StoredMessage>> {
        self.local().get(offset)
    }

    fn start(&self) -> u64 {
        self.local().start()
    }

    fn end(&self) -> u64 {
        self.group.next_offset()
    }

    fn trim(&self, offset: u64) {
        if offset > self.local().start() {
            // Not leading any more: the next leader trims.
            let _ = self.group.propose_now(TopicCommand::Trim { offset });
        }
    }

    fn stats(&self) -> LogStats {
        self.local().stats()
    }

    fn meta(&self) -> Option<TopicMeta> {
        self.group.machine.meta()
    }

    fn save_meta(&self, meta: TopicMeta) -> Result<(), StorageError> {
        self.group.propose_now(TopicCommand::Meta {
            incarnation: meta.incarnation,
            paused: meta.paused,
        })
    }

    fn existing_channels(&self) -> Vec<ChannelName> {
        self.group.machine.channel_names()
    }

    fn open_channel(
        &self,
        channel: &ChannelName,
    ) -> Result<(Arc<dyn ChannelStore>, Option<ChannelRecord>), StorageError> {
        if channel.is_ephemeral() {
            return Ok((Arc::new(NoChannelStore), None));
        }
        let record = self.group.machine.channel_record(channel);
        if record.is_none() {
            // The replicas learn of the channel even before it has events.
            self.group.propose_now(TopicCommand::Channel {
                name: channel.to_string(),
                events: Vec::new(),
            })?;
        }
        let proxy = Arc::new(ChannelProxy {
            name: channel.clone(),
            group: Arc::downgrade(&self.group),
            buffer: Mutex::new(Buffer::default()),
        });
        self.group.add_channel(&proxy);
        Ok((proxy, record))
    }

    fn delete_channel(&self, channel: &ChannelName) -> Result<(), StorageError> {
        self.group.propose_now(TopicCommand::DeleteChannel {
            name: channel.to_string(),
        })
    }

    fn set_append_waker(&self, waker: AppendWaker) {
        self.group.set_waker(waker);
    }
}

#[derive(Debug, Default)]
struct Buffer {
    events: Vec<StateEvent>,
    /// When the oldest buffered event was recorded.
    oldest: Option<Instant>,
    /// The longest any event waited to be shipped.
    max_wait: Duration,
}

/// A channel of a replicated topic, as its leader's broker records it: events are buffered
/// and shipped as one proposal every few milliseconds (or sooner when the oldest has waited
/// [`RECORD_WRITES_AFTER`]); the replicas' state machines write them to their journals.
#[derive(Debug)]
pub struct ChannelProxy {
    name: ChannelName,
    group: Weak<TopicGroup>,
    buffer: Mutex<Buffer>,
}

impl ChannelProxy {
    /// Proposes what is buffered. Events of a leader that is no longer ready are dropped:
    /// its broker is letting the topic go.
    pub(super) fn ship(&self) {
        let events = {
            let mut buffer = lock(&self.buffer);
            if buffer.events.is_empty() {
                return;
            }
            if let Some(oldest) = buffer.oldest.take() {
                buffer.max_wait = buffer.max_wait.max(oldest.elapsed());
            }
            std::mem::take(&mut buffer.events)
        };
        if let Some(group) = self.group.upgrade() {
            let _ = group.propose_now(TopicCommand::Channel {
                name: self.name.to_string(),
                events: events_to_bytes(&events),
            });
        }
    }
}

impl ChannelStore for ChannelProxy {
    fn record(&self, events: &mut Vec<StateEvent>, now: Instant) {
        let due = {
            let mut buffer = lock(&self.buffer);
            if !events.is_empty() {
                buffer.oldest.get_or_insert(now);
                buffer.events.append(events);
            }
            buffer
                .oldest
                .is_some_and(|t| now.saturating_duration_since(t) >= RECORD_WRITES_AFTER)
        };
        if due {
            self.ship();
        }
    }

    fn wants_checkpoint(&self) -> bool {
        // The replicas checkpoint their own journals.
        false
    }

    fn checkpoint(&self, _record: ChannelRecord) {}

    fn write(&self, _now: Instant) -> Result<(), StorageError> {
        self.ship();
        Ok(())
    }

    fn flush(&self, _sync: bool, _now: Instant) -> Result<(), StorageError> {
        self.ship();
        Ok(())
    }

    fn lag(&self, now: Instant) -> StateLag {
        let buffer = lock(&self.buffer);
        let current = buffer
            .oldest
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        StateLag {
            current,
            max: buffer.max_wait.max(current),
        }
    }
}
