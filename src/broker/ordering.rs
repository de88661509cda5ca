//! The keys of an ordered channel: which message holds each key, and which wait behind it.
//!
//! A channel with `ordering = "key"` delivers at most one message of a key at a time, across
//! all its consumers. The first message of a key that the cursor reaches becomes the key's
//! *head*: it is delivered, requeued, deferred or dead-lettered like any message, and the key
//! stays held by it until it is finished or its dead-letter copy is durable. Messages of the
//! key that the cursor reaches meanwhile *wait* here, in offset order, and the oldest becomes
//! the head when the key is released. So a key's head is always its oldest unfinished
//! message, which is what makes recovery simple: restoring the pending offsets in offset
//! order gives back the same heads.
//!
//! A key costs memory only while it has a head: it is forgotten when its last message is
//! released. Waiting messages cost an entry each, and [`ORDER_WINDOW`] bounds them.
//!
//! The cursor read each waiting message once already; keeping it (an `Arc` the log's cache
//! may share) saves reading it again when its turn comes, which for a backlog past the cache
//! is a read from disk per message, scattered across the log. [`STASH_BYTES`] bounds what is
//! kept; past it a waiting message is read again when released.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::message::StoredMessage;
use crate::storage::OrderBy;

/// Most messages an ordered channel keeps waiting behind their keys' heads. When it is
/// reached the cursor stops until keys are released, so a key with a long run of messages
/// (or `ordering = "channel"` on a deep backlog) cannot pull the whole log into memory.
pub const ORDER_WINDOW: usize = 65_536;

/// Most bytes of waiting and released messages an ordered channel keeps in memory.
pub const STASH_BYTES: usize = 32 << 20;

/// What a message costs to keep: its body, headers and bookkeeping.
fn cost(message: &StoredMessage) -> usize {
    message.body.len() + message.headers.encoded_len() + 128
}

/// The key a message is ordered by on a channel, if any.
pub fn key_of(order: OrderBy, message: &StoredMessage) -> Option<&str> {
    match order {
        OrderBy::Unordered => None,
        OrderBy::Channel => Some(""),
        OrderBy::Key(header) => message.headers.get(header.as_str()),
    }
}

#[derive(Debug)]
struct Key {
    head: u64,
    /// Offsets waiting behind the head, oldest first.
    behind: VecDeque<u64>,
}

/// The active keys of one channel.
#[derive(Debug, Default)]
pub struct Keys {
    keys: HashMap<Arc<str>, Key>,
    /// The key each head holds.
    heads: HashMap<u64, Arc<str>>,
    /// Every waiting offset with its attempts so far.
    waiting: BTreeMap<u64, u16>,
    /// Waiting and released messages kept in memory, and their cost.
    stash: HashMap<u64, Arc<StoredMessage>>,
    stash_bytes: usize,
}

impl Keys {
    /// The cursor (or a restore) reached `offset` of `key`. Returns true when it is the key's
    /// head and may be delivered; otherwise it now waits behind the head.
    /// A message that waits is kept in memory while the stash has room.
    pub fn admit(
        &mut self,
        key: &str,
        offset: u64,
        attempts: u16,
        message: &Arc<StoredMessage>,
    ) -> bool {
        if let Some(held) = self.keys.get_mut(key) {
            held.behind.push_back(offset);
            self.waiting.insert(offset, attempts);
            let cost = cost(message);
            if self.stash_bytes + cost <= STASH_BYTES {
                self.stash.insert(offset, message.clone());
                self.stash_bytes += cost;
            }
            return false;
        }
        let key: Arc<str> = Arc::from(key);
        self.heads.insert(offset, key.clone());
        self.keys.insert(
            key,
            Key {
                head: offset,
                behind: VecDeque::new(),
            },
        );
        true
    }

    /// `offset` is done with (finished, or its dead-letter copy is durable). If it held a
    /// key, the next message of that key becomes the head and is returned with its attempts,
    /// ready to deliver.
    pub fn release(&mut self, offset: u64) -> Option<(u64, u16)> {
        let key = self.heads.remove(&offset)?;
        let held = self.keys.get_mut(&key)?;
        match held.behind.pop_front() {
            Some(next) => {
                held.head = next;
                self.heads.insert(next, key);
                let attempts = self.waiting.remove(&next).unwrap_or(0);
                Some((next, attempts))
            }
            None => {
                self.keys.remove(&key);
                None
            }
        }
    }

    /// Messages waiting behind their keys' heads, with their attempts, in offset order.
    pub fn waiting(&self) -> impl Iterator<Item = (u64, u16)> + '_ {
        self.waiting
            .iter()
            .map(|(&offset, &attempts)| (offset, attempts))
    }

    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// The lowest waiting offset.
    pub fn first_waiting(&self) -> Option<u64> {
        self.waiting.keys().next().copied()
    }

    /// Keys with a message in the channel.
    pub fn active(&self) -> usize {
        self.keys.len()
    }

    /// The kept copy of a released message, if there is one; it is forgotten.
    pub fn take_message(&mut self, offset: u64) -> Option<Arc<StoredMessage>> {
        if self.stash.is_empty() {
            // Unordered channels, and ordered ones with nothing kept: no hashing.
            return None;
        }
        let message = self.stash.remove(&offset)?;
        self.stash_bytes -= cost(&message);
        Some(message)
    }

    /// Forgets every key; returns what was waiting, in offset order.
    pub fn clear(&mut self) -> Vec<(u64, u16)> {
        self.keys.clear();
        self.heads.clear();
        self.stash.clear();
        self.stash_bytes = 0;
        std::mem::take(&mut self.waiting).into_iter().collect()
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.heads.len(), self.keys.len());
        let mut behind = 0;
        for (key, held) in &self.keys {
            assert_eq!(self.heads.get(&held.head).map(|k| &**k), Some(&**key));
            let mut previous = held.head;
            for &offset in &held.behind {
                assert!(offset > previous, "key {key:?} waits out of order");
                assert!(self.waiting.contains_key(&offset));
                previous = offset;
            }
            behind += held.behind.len();
        }
        assert_eq!(behind, self.waiting.len());
        let kept: usize = self.stash.values().map(|m| cost(m)).sum();
        assert_eq!(kept, self.stash_bytes);
        assert!(self.stash_bytes <= STASH_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            timestamp_ns: 1,
            deliver_at_ms: 0,
            headers: crate::message::Headers::new(),
            body: "m".into(),
            route: None,
        })
    }

    #[test]
    fn a_key_is_held_by_its_oldest_message_and_forgotten_when_empty() {
        let mut keys = Keys::default();
        assert!(keys.admit("a", 1, 0, &message()));
        assert!(keys.admit("b", 2, 0, &message()));
        assert!(!keys.admit("a", 3, 0, &message()));
        assert!(!keys.admit("a", 4, 2, &message()));
        keys.check_invariants();
        assert_eq!((keys.active(), keys.waiting_count()), (2, 2));
        assert_eq!(keys.first_waiting(), Some(3));
        assert_eq!(keys.release(3), None, "3 waits, it holds nothing");
        assert_eq!(keys.release(1), Some((3, 0)));
        assert_eq!(keys.release(3), Some((4, 2)));
        assert_eq!(keys.release(2), None);
        assert_eq!(keys.active(), 1);
        assert_eq!(keys.release(4), None);
        keys.check_invariants();
        assert_eq!((keys.active(), keys.waiting_count()), (0, 0));
        assert!(
            keys.admit("a", 9, 0, &message()),
            "a released key is free again"
        );
    }

    #[test]
    fn clear_returns_the_waiting_in_offset_order() {
        let mut keys = Keys::default();
        keys.admit("b", 1, 0, &message());
        keys.admit("a", 2, 0, &message());
        keys.admit("a", 5, 1, &message());
        keys.admit("b", 3, 0, &message());
        assert_eq!(keys.clear(), vec![(3, 0), (5, 1)]);
        assert_eq!(keys.active(), 0);
        keys.check_invariants();
    }
}
