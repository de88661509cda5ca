//! The recent cache: the newest messages of a log, kept decoded, so that channels that keep
//! up with publishers never touch the disk.
//!
//! It holds one `Arc` per message, shared by every channel that reads it, and is bounded by
//! bytes: a backlog of any size on disk costs no memory here.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::message::StoredMessage;

/// The newest messages, contiguous and ending at the log's end.
#[derive(Debug)]
pub(super) struct RecentCache {
    /// Offset of `messages[0]`.
    start: u64,
    messages: VecDeque<Arc<StoredMessage>>,
    bytes: u64,
    max_bytes: u64,
}

/// Memory a cached message costs besides its body and headers: the `Arc` with the
/// `StoredMessage` in it, the body's and the headers' allocations, and the deque slot.
const OVERHEAD: u64 = 128;

/// What the cache counts of a message: an estimate of the memory it holds.
fn size(message: &StoredMessage) -> u64 {
    (message.body.len() + message.headers.encoded_len()) as u64 + OVERHEAD
}

impl RecentCache {
    /// An empty cache for a log whose next offset is `end`.
    pub(super) fn new(end: u64, max_bytes: u64) -> Self {
        RecentCache {
            start: end,
            messages: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Offset of the oldest cached message (the log's end when empty).
    #[cfg(test)]
    pub(super) fn start(&self) -> u64 {
        self.start
    }

    /// Adds the messages just appended at `first..`, evicting the oldest beyond the budget.
    /// A message that would be evicted at once is never wrapped in an `Arc`.
    pub(super) fn push(&mut self, first: u64, messages: Vec<StoredMessage>) {
        if first != self.start + self.messages.len() as u64 {
            self.clear(first);
        }
        // How many of the newest messages fit on their own.
        let mut keep_bytes = 0;
        let keep = messages
            .iter()
            .rev()
            .take_while(|m| {
                keep_bytes += size(m);
                keep_bytes <= self.max_bytes
            })
            .count();
        let skip = messages.len() - keep;
        if skip > 0 {
            self.clear(first + skip as u64);
        }
        for message in messages.into_iter().skip(skip) {
            self.bytes += size(&message);
            self.messages.push_back(Arc::new(message));
        }
        while self.bytes > self.max_bytes {
            self.pop();
        }
    }

    /// Drops the oldest messages while they were published before `timestamp_ns`, so that
    /// a topic that went quiet gives its memory back.
    pub(super) fn expire(&mut self, timestamp_ns: u64) {
        while self
            .messages
            .front()
            .is_some_and(|m| m.timestamp_ns < timestamp_ns)
        {
            self.pop();
        }
    }

    /// Drops every message below `offset`.
    pub(super) fn trim(&mut self, offset: u64) {
        while self.start < offset && !self.messages.is_empty() {
            self.pop();
        }
    }

    /// Up to `max` messages from `from` onward, if `from` is cached (or is the end).
    pub(super) fn read(
        &self,
        from: u64,
        max: usize,
        out: &mut Vec<(u64, Arc<StoredMessage>)>,
    ) -> bool {
        let Some(skip) = from.checked_sub(self.start) else {
            return false;
        };
        let taken = self.messages.iter().skip(skip as usize).take(max);
        out.extend((from..).zip(taken.cloned()));
        true
    }

    pub(super) fn get(&self, offset: u64) -> Option<Arc<StoredMessage>> {
        let index = offset.checked_sub(self.start)?;
        self.messages.get(index as usize).cloned()
    }

    fn pop(&mut self) {
        if let Some(message) = self.messages.pop_front() {
            self.bytes -= size(&message);
            self.start += 1;
        }
    }

    fn clear(&mut self, start: u64) {
        self.messages.clear();
        self.bytes = 0;
        self.start = start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Headers;

    fn msg(len: usize) -> StoredMessage {
        StoredMessage {
            timestamp_ns: 0,
            deliver_at_ms: 0,
            headers: Headers::new(),
            body: vec![0; len].into(),
            route: None,
        }
    }

    #[test]
    fn keeps_the_newest_messages_within_budget() {
        // Each message counts 10 + 2 (the empty header block) bytes plus the overhead.
        let mut cache = RecentCache::new(0, 3 * (12 + OVERHEAD));
        cache.push(0, vec![msg(10), msg(10)]);
        cache.push(2, vec![msg(10), msg(10)]);
        assert_eq!(cache.start(), 1);
        let mut out = Vec::new();
        assert!(!cache.read(0, 10, &mut out));
        assert!(cache.read(1, 10, &mut out));
        assert_eq!(out.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2, 3]);
        cache.push(4, vec![msg(10); 5]);
        assert_eq!(cache.start(), 6);
        assert!(cache.get(5).is_none());
        assert!(cache.get(8).is_some());
        cache.trim(8);
        assert_eq!(cache.start(), 8);
        assert!(cache.read(9, 1, &mut out));
    }

    #[test]
    fn old_messages_expire() {
        let mut cache = RecentCache::new(0, 1 << 20);
        let at = |ts| StoredMessage {
            timestamp_ns: ts,
            ..msg(1)
        };
        cache.push(0, vec![at(10), at(20), at(30)]);
        cache.expire(20);
        assert_eq!(cache.start(), 1);
        cache.expire(100);
        assert_eq!(cache.start(), 3);
        assert!(cache.get(2).is_none());
    }

    #[test]
    fn a_zero_budget_caches_nothing() {
        let mut cache = RecentCache::new(5, 0);
        cache.push(5, vec![msg(1)]);
        assert_eq!(cache.start(), 6);
        assert!(cache.get(5).is_none());
    }
}
