//! A topic's publish dedup window: the message ids (`quiver-msg-id`) of the client
//! publishes stored in the last `dedup_window`, so that a publish retried after a lost
//! confirmation is confirmed again instead of stored twice.
//!
//! The window is memory only. It holds a 128-bit key per id (two SipHash values under keys
//! chosen at start, never the id itself), the offset its message got, and its publish time:
//! about 64 bytes per id. It is rebuilt from the log's tail when the topic is opened, from
//! the ids stored with the messages (`quiver-msg-id` is an ordinary header), so a restart or
//! a crash loses nothing that was appended, and there is no second store to keep in step.
//! While ids are in the window the topic's log is not trimmed past the oldest one, so that a
//! restart can read them back (`floor`).
//!
//! # Invariants
//! - Every key in `ids` is in `order` once with the time it has in `ids`; `order` may also
//!   hold stale entries (an expired id published again), which are skipped when popped.
//! - Ids are inserted only after their append succeeded, under the topic's publish lock, so
//!   an id in the window always names a stored message, and a publish whose append failed
//!   leaves nothing behind.
//! - At most `max_ids` ids are held; at the cap the oldest is forgotten early and counted in
//!   `evicted`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use crate::message::{StoredMessage, MSG_ID_HEADER};
use crate::storage::TopicLog;

/// Messages read per step when the window is rebuilt from the log's tail.
const REBUILD_STEP: u64 = 4096;

/// A message id reduced to 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key(u64, u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a keyed hash: its first half is the map's hash.
        state.write_u64(self.0);
    }
}

/// The map's hasher: passes a [`Key`]'s first half through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only Key (write_u64) is hashed with this; kept total for safety.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Where and when an id was stored.
#[derive(Debug, Clone, Copy)]
struct Seen {
    offset: u64,
    timestamp_ns: u64,
}

/// Counters of the window since the broker started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct DedupStats {
    /// The window's length; 0 when it is off.
    pub(super) window_ms: u64,
    /// Ids held now.
    pub(super) ids: u64,
    /// Messages confirmed as duplicates and not stored.
    pub(super) duplicates: u64,
    /// Ids forgotten before their time because the window was at its cap.
    pub(super) evicted: u64,
}

/// The window of one topic. Behind the topic's dedup mutex, which is taken under its
/// publish lock.
#[derive(Debug)]
pub(super) struct DedupWindow {
    window: Duration,
    max_ids: usize,
    hashers: (RandomState, RandomState),
    ids: HashMap<Key, Seen, BuildHasherDefault<PassThrough>>,
    /// Keys in insertion order, with their publish time.
    order: VecDeque<(Key, u64)>,
    duplicates: u64,
    evicted: u64,
}

impl DedupWindow {
    /// An empty window; `window` zero turns it off.
    pub(super) fn new(window: Duration, max_ids: usize) -> Self {
        DedupWindow {
            window,
            max_ids: max_ids.max(1),
            hashers: (RandomState::new(), RandomState::new()),
            ids: HashMap::default(),
            order: VecDeque::new(),
            duplicates: 0,
            evicted: 0,
        }
    }

    pub(super) fn is_on(&self) -> bool {
        !self.window.is_zero()
    }

    pub(super) fn window(&self) -> Duration {
        self.window
    }

    pub(super) fn max_ids(&self) -> usize {
        self.max_ids
    }

    /// The key of a message's id, if it has one.
    pub(super) fn key_of(&self, message: &StoredMessage) -> Option<Key> {
        let id = message.headers.get(MSG_ID_HEADER)?;
        Some(Key(
            self.hashers.0.hash_one(id),
            self.hashers.1.hash_one(id),
        ))
    }

    /// The offset of the stored message with this key, if it is in the window.
    pub(super) fn original(&mut self, key: Key, now_ns: u64) -> Option<u64> {
        let seen = self.ids.get(&key)?;
        if seen.timestamp_ns < self.cutoff(now_ns) {
            return None;
        }
        self.duplicates += 1;
        Some(seen.offset)
    }

    /// Records a stored message's id. Call only once its append succeeded.
    pub(super) fn insert(&mut self, key: Key, offset: u64, timestamp_ns: u64) {
        while self.ids.len() >= self.max_ids && !self.ids.contains_key(&key) {
            match self.pop_oldest() {
                Some(true) => self.evicted += 1,
                Some(false) => {}
                None => break,
            }
        }
        self.ids.insert(
            key,
            Seen {
                offset,
                timestamp_ns,
            },
        );
        self.order.push_back((key, timestamp_ns));
    }

    /// Forgets the ids older than the window, oldest first. Amortised: each id is popped
    /// once.
    pub(super) fn expire(&mut self, now_ns: u64) {
        let cutoff = self.cutoff(now_ns);
        while self.order.front().is_some_and(|&(_, t)| t < cutoff) {
            self.pop_oldest();
        }
        // A window whose ids all expired gives its memory back.
        if self.ids.is_empty() && self.order.capacity() > 1024 {
            self.order = VecDeque::new();
            self.ids = HashMap::default();
        }
    }

    /// Removes the oldest entry of `order`, and its id unless the id was stored again
    /// since. Returns whether an id was removed; None when `order` is empty.
    fn pop_oldest(&mut self) -> Option<bool> {
        let (key, t) = self.order.pop_front()?;
        let current = self.ids.get(&key).is_some_and(|s| s.timestamp_ns == t);
        if current {
            self.ids.remove(&key);
        }
        Some(current)
    }

    /// The lowest offset an id in the window names: the log must keep it for a rebuild.
    pub(super) fn floor(&self) -> Option<u64> {
        self.order
            .iter()
            .find_map(|(key, _)| self.ids.get(key))
            .map(|s| s.offset)
    }

    /// Changes the window's length and cap; the ids are read again from the log, so that a
    /// longer window covers what the log holds.
    pub(super) fn reconfigure(
        &mut self,
        window: Duration,
        max_ids: usize,
        log: &dyn TopicLog,
        now_ns: u64,
    ) {
        self.window = window;
        self.max_ids = max_ids.max(1);
        self.rebuild(log, now_ns);
    }

    /// Fills the window from the log's tail: the ids of the messages published in the last
    /// `window`, newest first, up to the cap. Returns how many were read back.
    pub(super) fn rebuild(&mut self, log: &dyn TopicLog, now_ns: u64) -> usize {
        self.ids.clear();
        self.order.clear();
        if !self.is_on() {
            return 0;
        }
        let cutoff = self.cutoff(now_ns);
        // Newest first; the first occurrence of an id is its latest.
        let mut found: Vec<(Key, Seen)> = Vec::new();
        let mut seen: HashSet<Key, BuildHasherDefault<PassThrough>> = HashSet::default();
        let (start, mut hi) = (log.start(), log.end());
        let mut batch: Vec<(u64, Arc<StoredMessage>)> = Vec::new();
        'back: while hi > start && found.len() < self.max_ids {
            let lo = hi.saturating_sub(REBUILD_STEP).max(start);
            batch.clear();
            read_range(log, lo, hi, &mut batch);
            for (offset, message) in batch.iter().rev() {
                if message.timestamp_ns < cutoff {
                    break 'back;
                }
                let Some(key) = self.key_of(message) else {
                    continue;
                };
                if seen.insert(key) {
                    let seen = Seen {
                        offset: *offset,
                        timestamp_ns: message.timestamp_ns,
                    };
                    found.push((key, seen));
                    if found.len() >= self.max_ids {
                        break 'back;
                    }
                }
            }
            hi = lo;
        }
        // Oldest first, as they were inserted; `order` is kept sorted by offset.
        found.sort_by_key(|(_, s)| s.offset);
        for (key, s) in found {
            self.ids.insert(key, s);
            self.order.push_back((key, s.timestamp_ns));
        }
        self.ids.len()
    }

    pub(super) fn stats(&self) -> DedupStats {
        DedupStats {
            window_ms: self.window.as_millis() as u64,
            ids: self.ids.len() as u64,
            duplicates: self.duplicates,
            evicted: self.evicted,
        }
    }

    fn cutoff(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.window.as_nanos() as u64)
    }
}

/// Every retained message in `lo..hi`, in offset order.
fn read_range(log: &dyn TopicLog, lo: u64, hi: u64, out: &mut Vec<(u64, Arc<StoredMessage>)>) {
    let mut from = lo;
    while from < hi {
        let before = out.len();
        log.read(from, (hi - from) as usize, out);
        // Reads may stop early (a segment's end) and skip corrupt records.
        match out[before..].last() {
            Some(&(last, _)) => from = last + 1,
            None => break,
        }
    }
    out.retain(|(o, _)| *o < hi);
}

/// Which messages of one client publish were duplicates, and of what.
#[derive(Debug, Default)]
pub(super) struct Screen {
    /// Messages in the request.
    len: usize,
    /// Per message of the request, in order; empty while none is a duplicate.
    pub(super) duplicates: Vec<bool>,
    /// The highest offset of a stored original: the duplicates' confirmation waits until it
    /// is durable.
    pub(super) original: Option<u64>,
}

impl Screen {
    pub(super) fn new(len: usize) -> Self {
        Screen {
            len,
            ..Screen::default()
        }
    }

    fn mark(&mut self, index: usize) {
        if self.duplicates.is_empty() {
            self.duplicates = vec![false; self.len];
        }
        self.duplicates[index] = true;
    }
}

/// Messages of a publish that are still to be stored, each with its index in the request
/// and its id's key.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub(super) messages: Vec<StoredMessage>,
    pub(super) indexes: Vec<usize>,
    pub(super) keys: Vec<Option<Key>>,
}

impl Batch {
    /// A whole request: message `i` has index `i`.
    pub(super) fn new(messages: Vec<StoredMessage>) -> Self {
        Batch {
            indexes: (0..messages.len()).collect(),
            keys: Vec::new(),
            messages,
        }
    }
}

/// Drops the messages of `batch` whose id is in the window or on an earlier message of the
/// batch, marking them in `screen`. The keys of the rest are left in `batch.keys`, for
/// [`record`] once they are stored.
pub(super) fn screen(
    window: &mut DedupWindow,
    batch: Batch,
    screen: &mut Screen,
    now_ns: u64,
) -> Batch {
    if !window.is_on() {
        return batch;
    }
    let mut kept = Batch::default();
    let mut fresh: HashSet<Key, BuildHasherDefault<PassThrough>> = HashSet::default();
    let Batch {
        messages, indexes, ..
    } = batch;
    for (message, index) in messages.into_iter().zip(indexes) {
        let key = window.key_of(&message);
        if let Some(key) = key {
            if let Some(offset) = window.original(key, now_ns) {
                screen.original = Some(screen.original.map_or(offset, |o| o.max(offset)));
                screen.mark(index);
                continue;
            }
            if !fresh.insert(key) {
                window.duplicates += 1;
                screen.mark(index);
                continue;
            }
        }
        kept.messages.push(message);
        kept.indexes.push(index);
        kept.keys.push(key);
    }
    kept
}

/// Records the ids of a batch appended at `first`, consecutively.
pub(super) fn record(
    window: &mut DedupWindow,
    keys: &[Option<Key>],
    first: u64,
    timestamp_ns: u64,
) {
    if !window.is_on() {
        return;
    }
    window.expire(timestamp_ns);
    for (i, key) in keys.iter().enumerate() {
        if let Some(key) = key {
            window.insert(*key, first + i as u64, timestamp_ns);
        }
    }
}

#[cfg(test)]
#[path = "dedup_tests.rs"]
mod tests;
