//! The in-memory log: a deque of shared messages per topic. Nothing survives a restart.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    ChannelRecord, ChannelStore, Durable, LogStats, NoChannelStore, Storage, StorageError,
    TopicLog, TopicMeta,
};
use crate::message::{ChannelName, StoredMessage, TopicName};

/// Storage that keeps every topic's log in memory.
#[derive(Debug, Default)]
pub struct MemoryStorage;

impl Storage for MemoryStorage {
    fn open_topic(&self, _topic: &TopicName) -> Result<Arc<dyn TopicLog>, StorageError> {
        Ok(Arc::new(MemoryLog::default()))
    }

    fn delete_topic(&self, _topic: &TopicName) -> Result<(), StorageError> {
        Ok(())
    }

    fn existing_topics(&self) -> Vec<TopicName> {
        Vec::new()
    }

    fn close(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// A topic log in memory. Also used by the file storage for `#ephemeral` topics.
#[derive(Debug, Default)]
pub(crate) struct MemoryLog {
    inner: Mutex<Inner>,
    meta: Mutex<Option<TopicMeta>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Offset of `messages[0]`.
    start: u64,
    messages: VecDeque<Arc<StoredMessage>>,
    bytes: u64,
}

impl Inner {
    fn end(&self) -> u64 {
        self.start + self.messages.len() as u64
    }
}

fn size(m: &StoredMessage) -> u64 {
    (m.body.len() + m.headers.encoded_len() + 16) as u64
}

impl MemoryLog {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves the deque consistent (every mutation is a
        // single push or pop), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TopicLog for MemoryLog {
    fn append(&self, messages: Vec<StoredMessage>) -> Result<Range<u64>, StorageError> {
        let mut inner = self.lock();
        let first = inner.end();
        for m in messages {
            inner.bytes += size(&m);
            inner.messages.push_back(Arc::new(m));
        }
        Ok(first..inner.end())
    }

    fn durable(&self, _end: u64) -> Durable {
        Box::pin(std::future::ready(Ok(())))
    }

    fn read(&self, from: u64, max: usize, out: &mut Vec<(u64, Arc<StoredMessage>)>) {
        let inner = self.lock();
        let from = from.max(inner.start);
        let skip = (from - inner.start) as usize;
        let taken = inner.messages.iter().skip(skip).take(max);
        out.extend((from..).zip(taken.cloned()));
    }

    fn get(&self, offset: u64) -> Option<Arc<StoredMessage>> {
        let inner = self.lock();
        let index = offset.checked_sub(inner.start)?;
        inner.messages.get(index as usize).cloned()
    }

    fn start(&self) -> u64 {
        self.lock().start
    }

    fn end(&self) -> u64 {
        self.lock().end()
    }

    fn trim(&self, offset: u64) {
        let mut inner = self.lock();
        while inner.start < offset {
            let Some(m) = inner.messages.pop_front() else {
                break;
            };
            inner.bytes -= size(&m);
            inner.start += 1;
        }
    }

    fn stats(&self) -> LogStats {
        LogStats {
            bytes: self.lock().bytes,
            ..LogStats::default()
        }
    }

    fn meta(&self) -> Option<TopicMeta> {
        *self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save_meta(&self, meta: TopicMeta) -> Result<(), StorageError> {
        *self.meta.lock().unwrap_or_else(|e| e.into_inner()) = Some(meta);
        Ok(())
    }

    fn existing_channels(&self) -> Vec<ChannelName> {
        Vec::new()
    }

    fn open_channel(
        &self,
        _channel: &ChannelName,
    ) -> Result<(Arc<dyn ChannelStore>, Option<ChannelRecord>), StorageError> {
        Ok((Arc::new(NoChannelStore), None))
    }

    fn delete_channel(&self, _channel: &ChannelName) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Headers;

    fn msg(body: &'static str) -> StoredMessage {
        StoredMessage {
            timestamp_ns: 1,
            deliver_at_ms: 0,
            headers: Headers::new(),
            body: body.into(),
            route: None,
        }
    }

    #[test]
    fn offsets_are_dense_and_survive_trimming() {
        let log = MemoryLog::default();
        assert_eq!(log.append(vec![msg("a"), msg("b")]).unwrap(), 0..2);
        assert_eq!(log.append(vec![msg("c")]).unwrap(), 2..3);
        log.trim(2);
        assert_eq!(log.start(), 2);
        assert!(log.get(1).is_none());
        assert_eq!(log.get(2).unwrap().body, "c");
        let mut out = Vec::new();
        log.read(0, 10, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 2);
        log.trim(100);
        assert_eq!((log.start(), log.end(), log.stats().bytes), (3, 3, 0));
    }
}
