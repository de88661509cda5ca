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
//! released. Waiting messages cost an entry each, and the window bounds them: [`WINDOW_PER_KEY`]
//! per active key, at least [`WINDOW_MIN`] and at most [`ORDER_WINDOW`].
//!
//! The cursor read each waiting message once already; keeping it (an `Arc` the log's cache
//! may share) saves reading it again when its turn comes, which for a backlog past the cache
//! is a read from disk per message, scattered across the log. [`STASH_BYTES`] bounds what is
//! kept; past it a waiting message is read again when released.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::message::StoredMessage;
use crate::storage::OrderBy;

/// Most messages an ordered channel keeps waiting behind their keys' heads. When its window
/// is reached the cursor stops until keys are released, so a key with a long run of
/// messages (or `ordering = "channel"` on a deep backlog) cannot pull the whole log into
/// memory.
pub const ORDER_WINDOW: usize = 65_536;

/// The window of a channel with few active keys: what it reads ahead to find messages of
/// keys that are free.
pub const WINDOW_MIN: usize = 4096;

/// Waiting messages per active key that the window grows by, up to [`ORDER_WINDOW`]. Past a
/// few messages per key, reading further finds few free keys, and what waits only makes
/// the channel's working set larger than the CPU's caches.
pub const WINDOW_PER_KEY: usize = 16;

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

/// Hashes log offsets for the maps keyed by them: offsets are the broker's own numbers,
/// dense and increasing, so a multiplicative hash spreads them well and costs a multiply
/// (the keys' names, which clients choose, keep the standard keyed hash).
#[derive(Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // The high bits of the product are the well mixed ones; the table uses both ends.
        let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

type ByOffset<V> = HashMap<u64, V, BuildHasherDefault<OffsetHasher>>;

/// A message waiting behind its key's head.
#[derive(Debug)]
struct Waiting {
    offset: u64,
    attempts: u16,
    /// Kept from the cursor's read while the stash has room.
    message: Option<Arc<StoredMessage>>,
}

#[derive(Debug)]
struct Key {
    head: u64,
    /// Messages waiting behind the head, oldest first.
    behind: VecDeque<Waiting>,
}

/// The active keys of one channel.
#[derive(Debug, Default)]
pub struct Keys {
    keys: HashMap<Arc<str>, Key>,
    /// The key each head holds.
    heads: ByOffset<Arc<str>>,
    /// The oldest waiting offset of every key that has one; the first is the channel's
    /// oldest waiting message, since each key's messages wait in offset order.
    fronts: BTreeSet<u64>,
    /// Messages waiting behind their keys' heads.
    waiting: usize,
    /// Kept copies of messages released to be delivered and not taken yet.
    released: ByOffset<Arc<StoredMessage>>,
    /// What the kept copies, waiting and released, cost.
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
            let cost = cost(message);
            let kept = (self.stash_bytes + cost <= STASH_BYTES).then(|| {
                self.stash_bytes += cost;
                message.clone()
            });
            if held.behind.is_empty() {
                self.fronts.insert(offset);
            }
            held.behind.push_back(Waiting {
                offset,
                attempts,
                message: kept,
            });
            self.waiting += 1;
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
                held.head = next.offset;
                self.fronts.remove(&next.offset);
                if let Some(after) = held.behind.front() {
                    self.fronts.insert(after.offset);
                }
                self.waiting -= 1;
                self.heads.insert(next.offset, key);
                if let Some(message) = next.message {
                    self.released.insert(next.offset, message);
                }
                Some((next.offset, next.attempts))
            }
            None => {
                self.keys.remove(&key);
                None
            }
        }
    }

    /// Messages waiting behind their keys' heads, with their attempts, in offset order.
    pub fn waiting(&self) -> Vec<(u64, u16)> {
        let mut all: Vec<(u64, u16)> = self
            .keys
            .values()
            .flat_map(|k| k.behind.iter().map(|w| (w.offset, w.attempts)))
            .collect();
        all.sort_unstable();
        all
    }

    pub fn waiting_count(&self) -> usize {
        self.waiting
    }

    /// How many messages may wait: [`WINDOW_PER_KEY`] per active key, within [`WINDOW_MIN`]
    /// and [`ORDER_WINDOW`].
    pub fn window(&self) -> usize {
        (self.keys.len() * WINDOW_PER_KEY).clamp(WINDOW_MIN, ORDER_WINDOW)
    }

    /// The lowest waiting offset.
    pub fn first_waiting(&self) -> Option<u64> {
        self.fronts.first().copied()
    }

    /// Keys with a message in the channel.
    pub fn active(&self) -> usize {
        self.keys.len()
    }

    /// The kept copy of a released message, if there is one; it is forgotten.
    pub fn take_message(&mut self, offset: u64) -> Option<Arc<StoredMessage>> {
        if self.released.is_empty() {
            // Unordered channels, and ordered ones with nothing kept: no hashing.
            return None;
        }
        let message = self.released.remove(&offset)?;
        self.stash_bytes -= cost(&message);
        Some(message)
    }

    /// Forgets every key; returns what was waiting, in offset order.
    pub fn clear(&mut self) -> Vec<(u64, u16)> {
        let waiting = self.waiting();
        self.keys.clear();
        self.heads.clear();
        self.fronts.clear();
        self.released.clear();
        self.waiting = 0;
        self.stash_bytes = 0;
        waiting
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.heads.len(), self.keys.len());
        let mut behind = 0;
        let mut kept = 0;
        let mut fronts = BTreeSet::new();
        for (key, held) in &self.keys {
            assert_eq!(self.heads.get(&held.head).map(|k| &**k), Some(&**key));
            let mut previous = held.head;
            for w in &held.behind {
                assert!(w.offset > previous, "key {key:?} waits out of order");
                previous = w.offset;
                kept += w.message.as_deref().map_or(0, cost);
            }
            fronts.extend(held.behind.front().map(|w| w.offset));
            behind += held.behind.len();
        }
        assert_eq!(behind, self.waiting);
        assert_eq!(fronts, self.fronts);
        kept += self.released.values().map(|m| cost(m)).sum::<usize>();
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
    fn the_window_grows_with_the_active_keys_within_its_bounds() {
        let mut keys = Keys::default();
        assert_eq!(keys.window(), WINDOW_MIN);
        let n = WINDOW_MIN / WINDOW_PER_KEY + 10;
        for k in 0..n {
            keys.admit(&k.to_string(), k as u64, 0, &message());
        }
        assert_eq!(keys.window(), n * WINDOW_PER_KEY);
        for k in n..ORDER_WINDOW {
            keys.admit(&k.to_string(), k as u64, 0, &message());
        }
        assert_eq!(keys.window(), ORDER_WINDOW);
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
