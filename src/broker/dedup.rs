//! A topic's publish dedup window: the message ids (`quiver-msg-id`) of the client
//! publishes stored in the last `dedup_window`, so that a publish retried after a lost
//! confirmation is confirmed again instead of stored twice.
//!
//! The window is memory only. It holds a 128-bit key per id (SipHash-1-3 with its 128-bit
//! output, under keys chosen when the process starts; never the id itself), the offset its
//! message got, and its publish time. The key is computed when a publish's batch is built,
//! before the topic's publish lock is taken; under the lock the window only looks it up and
//! records it.
//! It is rebuilt from the log's tail when the topic is opened, from the ids stored with the
//! messages (`quiver-msg-id` is an ordinary header), so a restart or a crash loses nothing
//! that was appended, and there is no second store to keep in step. While ids are in the
//! window the topic's log is not trimmed past the oldest one, so that a restart can read
//! them back (`floor`).
//!
//! # Layout
//! The ids are entries of a ring (`ring`, 32 bytes each, in chunks of 64 KiB) in the order
//! they were stored, so that expiry and the cap pop them from its front. Each entry has a
//! sequence number, which counts the entries ever pushed (`first` is the front's). An
//! open-addressing table with linear probing (`slots`, 8 bytes a slot) finds an entry by
//! key: a slot holds the low 32 bits of the key's first value (never all zero: a zero slot
//! is empty; they also give the key's home slot) and the low 32 bits of the entry's
//! sequence number. A slot whose entry left the ring is stale: it is never removed, only
//! reused by a later insert on its probe path, and dropped when the table is rebuilt, which
//! happens once five eighths of the slots are taken (live or stale), at twice the live ids
//! rounded up to a power of two. So an id costs 32 bytes in the ring and 13 to 32 bytes of
//! table: about 50 bytes per id (48 MB at the default cap of a million ids: 32 MB of ring
//! and 16 MB of table).
//!
//! A publish's ids are looked up once: [`screen`] keeps, for each id it let through, the
//! slot it would go to (a `Hint`), and [`record`] puts the id there if the table changed
//! only by that batch's own inserts and the slot is still free; else it walks the path
//! again.
//!
//! # Invariants
//! - Every id held has one entry in `ring` that is not `DEAD`, and one slot naming it; an
//!   id stored again (after its earlier store expired) marks its earlier entry `DEAD`, which
//!   keeps only its place in the order. The front of `ring` is never `DEAD`.
//! - A slot that names an entry in the ring, with the entry's key bits, is that entry's
//!   slot or a stale one; lookups check the entry's whole key, so a stale slot is never
//!   taken for an id.
//! - At most five eighths of the slots are taken, so every probe ends at an empty slot (and
//!   a probe for an absent key walks about two and a half slots on average).
//! - Ids are inserted only after their append succeeded, under the topic's publish lock, so
//!   an id in the window always names a stored message, and a publish whose append failed
//!   leaves nothing behind.
//! - At most `max_ids` ids are held; at the cap the oldest is forgotten early and counted in
//!   `evicted`.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use siphasher::sip128::{Hash128, Hasher128, SipHasher13};

use crate::message::{StoredMessage, MSG_ID_HEADER};
use crate::storage::TopicLog;

/// Messages read per step when the window is rebuilt from the log's tail.
const REBUILD_STEP: u64 = 4096;
/// Slots of the smallest table (a power of two).
const MIN_SLOTS: usize = 64;
/// The most ids a window holds whatever its cap, so that the ring's sequence numbers are
/// told apart by their low 32 bits.
const MAX_IDS: usize = 1 << 30;
/// The offset of an entry whose id was stored again later.
const DEAD: u64 = u64::MAX;
/// The key bits of a slot.
const TAG_BITS: u64 = 0xffff_ffff_0000_0000;
/// How far sequence numbers may run past `clean_from` before the table is rebuilt from the
/// ring: below 2^32, so that the low halves in the slots never alias.
const CLEAN_EVERY: u64 = 1 << 31;

/// A message id reduced to 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key(u64, u64);

impl Key {
    /// The key of a message's id, if it has one: SipHash-1-3 with its 128-bit output, in
    /// one pass over the id. The hash keys are chosen once per process, so a key is the
    /// same for every topic and can be computed before any lock is taken.
    pub(super) fn of(message: &StoredMessage) -> Option<Key> {
        static KEYS: OnceLock<(u64, u64)> = OnceLock::new();
        let id = message.headers.get(MSG_ID_HEADER)?;
        let &(k0, k1) = KEYS.get_or_init(|| {
            let random = RandomState::new();
            (random.hash_one(0u8), random.hash_one(1u8))
        });
        let mut hasher = SipHasher13::new_with_keys(k0, k1);
        hasher.write(id.as_bytes());
        let Hash128 { h1, h2 } = hasher.finish128();
        // The low half of the first value is the key's tag (see `tag`), never zero.
        Some(Key(h1 | u64::from(h1 as u32 == 0), h2))
    }

    /// The key's bits in its slot: the top half of the slot, never zero (so that a slot
    /// with a key is never empty).
    fn tag(self) -> u64 {
        self.0 << 32
    }

    /// Where the key's probe starts in a table of `mask + 1` slots: its tag's low bits, so
    /// that a slot tells its key's home without the ring (see `reindex_slots`).
    fn home(self, mask: usize) -> usize {
        home(self.tag(), mask)
    }
}

/// Where the probe of the key in `slot` started, in a table of `mask + 1` slots.
fn home(slot: u64, mask: usize) -> usize {
    (slot >> 32) as usize & mask
}

#[path = "dedup_ring.rs"]
mod ring;
use ring::{empty_table, Entry, Ring};

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

/// The outcome of a probe for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// The key's slot, and its entry's place in the ring.
    Found { slot: usize, index: usize },
    /// Where the key would go: the first stale slot on its path, or the empty slot that
    /// ended it (`empty`).
    Absent { slot: usize, empty: bool },
}

/// Where a key absent from the window would go, found by [`screen`] so that [`record`] need
/// not walk the key's probe path again. It holds while the table changed only by the
/// inserts of the key's batch and its slot is as it was (still empty, or still stale): the
/// slots before it on the path were taken then, and a taken slot is never emptied but by a
/// new table.
#[derive(Debug, Clone, Copy)]
struct Hint {
    key: Key,
    slot: usize,
    empty: bool,
}

/// The window of one topic. Behind the topic's dedup mutex, which is taken under its
/// publish lock.
pub(super) struct DedupWindow {
    window: Duration,
    max_ids: usize,
    /// The ids in the order they were stored, oldest first.
    ring: Ring,
    /// The sequence number of the ring's front; wraps.
    first: u64,
    /// `DEAD` entries in `ring`.
    dead: usize,
    /// The index: 0 (empty), or a key's tag and the low half of its entry's sequence
    /// number. Empty (no table) or a power of two long.
    slots: Vec<u64>,
    /// Slots not empty: live and stale.
    used: usize,
    /// Every slot names a sequence number from this one on: the ring's front when the table
    /// was last built from the ring.
    clean_from: u64,
    /// [`screen`]'s table of the ids of one batch: 0, or a position in the batch plus one.
    batch_slots: Vec<u32>,
    /// Counts the changes to the table: inserts, and new tables.
    version: u64,
    /// Where [`screen`] found that the ids it kept would go, in order, and `version` then.
    hints: Vec<Hint>,
    hints_version: u64,
    duplicates: u64,
    evicted: u64,
}

impl std::fmt::Debug for DedupWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupWindow")
            .field("window", &self.window)
            .field("max_ids", &self.max_ids)
            .field("ids", &self.ids())
            .field("slots", &self.slots.len())
            .field("used", &self.used)
            .field("duplicates", &self.duplicates)
            .field("evicted", &self.evicted)
            .finish()
    }
}

impl DedupWindow {
    /// An empty window; `window` zero turns it off.
    pub(super) fn new(window: Duration, max_ids: usize) -> Self {
        DedupWindow {
            window,
            max_ids: max_ids.max(1),
            ring: Ring::default(),
            first: 0,
            dead: 0,
            slots: Vec::new(),
            used: 0,
            clean_from: 0,
            batch_slots: Vec::new(),
            version: 0,
            hints: Vec::new(),
            hints_version: 0,
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

    /// Ids held.
    fn ids(&self) -> usize {
        self.ring.len() - self.dead
    }

    /// The cap in force.
    fn cap(&self) -> usize {
        self.max_ids.min(MAX_IDS)
    }

    /// The offset of the stored message with this key, if it is in the window.
    #[cfg(test)]
    pub(super) fn original(&mut self, key: Key, now_ns: u64) -> Option<u64> {
        self.lookup(key, now_ns).ok()
    }

    /// The offset of the stored message with this key, if it is in the window; else where
    /// the key would go, once the table exists.
    fn lookup(&mut self, key: Key, now_ns: u64) -> Result<u64, Option<Hint>> {
        if self.slots.is_empty() {
            return Err(None);
        }
        match self.probe(key) {
            Probe::Found { index, .. } => {
                let entry = &self.ring[index];
                if entry.timestamp_ns < self.cutoff(now_ns) {
                    // Stored again once recorded: its entry must be found then.
                    return Err(None);
                }
                self.duplicates += 1;
                Ok(entry.offset)
            }
            Probe::Absent { slot, empty } => Err(Some(Hint { key, slot, empty })),
        }
    }

    /// Whether a hint's slot is still as [`screen`] found it. Only while the table is the
    /// one it was found in.
    fn holds(&self, hint: &Hint) -> bool {
        let slot = self.slots[hint.slot];
        if hint.empty {
            slot == 0
        } else {
            slot != 0 && self.index_of(slot) >= self.ring.len()
        }
    }

    /// Walks the key's probe path. The table must not be empty.
    #[inline]
    fn probe(&self, key: Key) -> Probe {
        let mask = self.slots.len() - 1;
        let tag = key.tag();
        let mut i = key.home(mask);
        let mut stale = None;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return match stale {
                    Some(slot) => Probe::Absent { slot, empty: false },
                    None => Probe::Absent {
                        slot: i,
                        empty: true,
                    },
                };
            }
            let index = self.index_of(slot);
            if index >= self.ring.len() {
                stale = stale.or(Some(i));
            } else if slot & TAG_BITS == tag {
                let entry = &self.ring[index];
                if entry.key == key && entry.offset != DEAD {
                    return Probe::Found { slot: i, index };
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// The place in the ring of the entry a slot names; the ring's length or more when the
    /// entry left it (the slot is stale).
    fn index_of(&self, slot: u64) -> usize {
        (slot as u32).wrapping_sub(self.first as u32) as usize
    }

    /// The slot naming the entry with this key and sequence number.
    fn slot(key: Key, seq: u64) -> u64 {
        key.tag() | u64::from(seq as u32)
    }

    /// Reads the home slots of `keys` all at once, so that the probes that follow find them
    /// in the cache instead of waiting on each miss in turn.
    fn prefetch(&self, keys: &[Option<Key>]) {
        if self.slots.is_empty() {
            return;
        }
        let mask = self.slots.len() - 1;
        let mut any = 0;
        for key in keys.iter().flatten() {
            any |= self.slots[key.home(mask)];
        }
        std::hint::black_box(any);
    }

    /// Records a stored message's id. Call only once its append succeeded.
    #[cfg(test)]
    pub(super) fn insert(&mut self, key: Key, offset: u64, timestamp_ns: u64) {
        self.insert_hinted(key, None, offset, timestamp_ns);
    }

    /// [`DedupWindow::insert`], at the hint's slot if it still holds.
    fn insert_hinted(&mut self, key: Key, hint: Option<&Hint>, offset: u64, timestamp_ns: u64) {
        if self.slots.is_empty() {
            self.slots = vec![0; MIN_SLOTS];
            self.clean_from = self.first;
            self.version += 1;
        }
        let entry = Entry {
            key,
            offset,
            timestamp_ns,
        };
        let probe = match hint {
            Some(hint) if self.holds(hint) => Probe::Absent {
                slot: hint.slot,
                empty: hint.empty,
            },
            _ => self.probe(key),
        };
        match probe {
            Probe::Found { slot, index } => {
                // Stored again once its earlier store expired: the id moves to the back.
                self.ring[index].offset = DEAD;
                self.dead += 1;
                let seq = self.push_back(entry);
                self.slots[slot] = Self::slot(key, seq);
                self.pop_dead();
            }
            Probe::Absent { slot, empty } => {
                while self.ids() >= self.cap() {
                    self.pop_front();
                    self.evicted += 1;
                }
                let seq = self.push_back(entry);
                self.slots[slot] = Self::slot(key, seq);
                self.used += usize::from(empty);
            }
        }
        self.version += 1;
        self.maybe_reindex();
    }

    fn push_back(&mut self, entry: Entry) -> u64 {
        let seq = self.first.wrapping_add(self.ring.len() as u64);
        self.ring.push_back(entry);
        seq
    }

    /// Drops the oldest entry (never `DEAD`), and the `DEAD` ones behind it.
    fn pop_front(&mut self) {
        if self.ring.pop_front().is_some() {
            self.first = self.first.wrapping_add(1);
        }
        self.pop_dead();
    }

    /// Drops the `DEAD` entries at the front.
    fn pop_dead(&mut self) {
        while self.ring.front().is_some_and(|e| e.offset == DEAD) {
            self.ring.pop_front();
            self.first = self.first.wrapping_add(1);
            self.dead -= 1;
        }
    }

    /// Rebuilds the table once too many slots are taken, or from the ring once too many of
    /// its entries are `DEAD` or the sequence numbers ran `CLEAN_EVERY` past `clean_from`.
    fn maybe_reindex(&mut self) {
        let next = self.first.wrapping_add(self.ring.len() as u64);
        if self.dead > self.ring.len() / 2 || next.wrapping_sub(self.clean_from) >= CLEAN_EVERY {
            self.reindex_ring();
        } else if self.used * 8 > self.slots.len() * 5 {
            self.reindex_slots();
        }
    }

    /// The size of a new table for the ids held.
    fn table_len(&self) -> usize {
        (self.ids() * 2).max(MIN_SLOTS).next_power_of_two()
    }

    /// A new table from the old one's live slots, without the stale ones. Reads the old
    /// table in order and writes the new one about in order: no cache miss per id.
    fn reindex_slots(&mut self) {
        let len = self.table_len();
        let mask = len - 1;
        let mut slots = empty_table(len);
        let mut used = 0;
        for &slot in &self.slots {
            if slot == 0 || self.index_of(slot) >= self.ring.len() {
                continue;
            }
            let mut i = home(slot, mask);
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = slot;
            used += 1;
        }
        self.slots = slots;
        self.used = used;
        self.version += 1;
    }

    /// Drops the `DEAD` entries, and builds a new table from the ring.
    fn reindex_ring(&mut self) {
        if self.dead > 0 {
            self.ring.retain(|e| e.offset != DEAD);
            self.dead = 0;
        }
        let len = self.table_len();
        let mask = len - 1;
        self.slots = empty_table(len);
        let mut seq = self.first;
        for entry in self.ring.iter() {
            let mut i = entry.key.home(mask);
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = Self::slot(entry.key, seq);
            seq = seq.wrapping_add(1);
        }
        self.used = self.ring.len();
        self.clean_from = self.first;
        self.version += 1;
    }

    /// Forgets the ids older than the window, oldest first. Amortised: each id is popped
    /// once; their slots go stale.
    pub(super) fn expire(&mut self, now_ns: u64) {
        let cutoff = self.cutoff(now_ns);
        while self.ring.front().is_some_and(|e| e.timestamp_ns < cutoff) {
            self.pop_front();
        }
        // A window whose ids all expired gives its memory back.
        if self.ring.is_empty() && (self.ring.capacity() > 0 || self.slots.len() > MIN_SLOTS) {
            self.ring = Ring::default();
            self.slots = Vec::new();
            self.used = 0;
            self.version += 1;
        }
    }

    /// The lowest offset an id in the window names: the log must keep it for a rebuild.
    pub(super) fn floor(&self) -> Option<u64> {
        self.ring.front().map(|e| e.offset)
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

    /// Forgets every id.
    fn clear(&mut self) {
        self.ring = Ring::default();
        self.slots = Vec::new();
        self.first = 0;
        self.dead = 0;
        self.used = 0;
        self.version += 1;
    }

    /// Fills the window from the log's tail: the ids of the messages published in the last
    /// `window`, newest first, up to the cap. Returns how many were read back.
    pub(super) fn rebuild(&mut self, log: &dyn TopicLog, now_ns: u64) -> usize {
        self.clear();
        if !self.is_on() {
            return 0;
        }
        self.slots = vec![0; MIN_SLOTS];
        self.clean_from = self.first;
        let cutoff = self.cutoff(now_ns);
        let (start, mut hi) = (log.start(), log.end());
        let mut batch: Vec<(u64, Arc<StoredMessage>)> = Vec::new();
        'back: while hi > start && self.ids() < self.cap() {
            let lo = hi.saturating_sub(REBUILD_STEP).max(start);
            batch.clear();
            read_range(log, lo, hi, &mut batch);
            for (offset, message) in batch.iter().rev() {
                if message.timestamp_ns < cutoff {
                    break 'back;
                }
                let Some(key) = Key::of(message) else {
                    continue;
                };
                // Newest first: the first occurrence of an id is its latest.
                if let Probe::Absent { slot, empty } = self.probe(key) {
                    // Pushed in front of the newer ones, so that the ring stays in the
                    // order the ids were stored.
                    self.first = self.first.wrapping_sub(1);
                    self.ring.push_front(Entry {
                        key,
                        offset: *offset,
                        timestamp_ns: message.timestamp_ns,
                    });
                    self.slots[slot] = Self::slot(key, self.first);
                    self.used += usize::from(empty);
                    self.maybe_reindex();
                    if self.ids() >= self.cap() {
                        break 'back;
                    }
                }
            }
            hi = lo;
        }
        // The entries were pushed in front of `clean_from`.
        self.clean_from = self.first;
        self.ids()
    }

    pub(super) fn stats(&self) -> DedupStats {
        DedupStats {
            window_ms: self.window.as_millis() as u64,
            ids: self.ids() as u64,
            duplicates: self.duplicates,
            evicted: self.evicted,
        }
    }

    fn cutoff(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.window.as_nanos() as u64)
    }

    /// Empties the table of one batch's ids, sized for `len` of them.
    fn batch_clear(&mut self, len: usize) {
        let want = (len * 2).max(16).next_power_of_two();
        self.batch_slots.clear();
        self.batch_slots.resize(want, 0);
    }

    /// Adds the key at `position` of `keys` to the batch's table; false if an earlier
    /// position has the same key.
    fn batch_insert(&mut self, keys: &[Option<Key>], position: usize) -> bool {
        let Some(key) = keys[position] else {
            return true;
        };
        let mask = self.batch_slots.len() - 1;
        let mut i = key.home(mask);
        loop {
            match self.batch_slots[i] {
                0 => {
                    self.batch_slots[i] = position as u32 + 1;
                    return true;
                }
                p if keys[p as usize - 1] == Some(key) => return false,
                _ => i = (i + 1) & mask,
            }
        }
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
/// and its id's key. `keys` is empty until the keys are computed, then as long as
/// `messages`.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub(super) messages: Vec<StoredMessage>,
    pub(super) indexes: Vec<usize>,
    pub(super) keys: Vec<Option<Key>>,
}

impl Batch {
    /// A whole request: message `i` has index `i`. The keys are left for [`screen`].
    pub(super) fn new(messages: Vec<StoredMessage>) -> Self {
        Batch {
            indexes: (0..messages.len()).collect(),
            keys: Vec::new(),
            messages,
        }
    }

    /// A whole request with its keys, computed now: before the publish lock is taken.
    pub(super) fn keyed(messages: Vec<StoredMessage>) -> Self {
        Batch {
            keys: messages.iter().map(Key::of).collect(),
            ..Batch::new(messages)
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
    let Batch {
        messages,
        indexes,
        mut keys,
    } = batch;
    if keys.len() != messages.len() {
        keys = messages.iter().map(Key::of).collect();
    }
    window.prefetch(&keys);
    window.batch_clear(keys.len());
    window.hints.clear();
    window.hints_version = window.version;
    // Positions in the batch of the duplicates; usually none, and then the batch is kept
    // whole.
    let mut dropped = Vec::new();
    for (position, key) in keys.iter().enumerate() {
        let Some(key) = *key else {
            continue;
        };
        match window.lookup(key, now_ns) {
            Ok(offset) => {
                screen.original = Some(screen.original.map_or(offset, |o| o.max(offset)));
                screen.mark(indexes[position]);
                dropped.push(position);
            }
            Err(_) if !window.batch_insert(&keys, position) => {
                window.duplicates += 1;
                screen.mark(indexes[position]);
                dropped.push(position);
            }
            Err(hint) => window.hints.extend(hint),
        }
    }
    if dropped.is_empty() {
        return Batch {
            messages,
            indexes,
            keys,
        };
    }
    let mut kept = Batch::default();
    let mut dropped = dropped.into_iter().peekable();
    for (position, ((message, index), key)) in
        messages.into_iter().zip(indexes).zip(keys).enumerate()
    {
        if dropped.next_if_eq(&position).is_some() {
            continue;
        }
        kept.messages.push(message);
        kept.indexes.push(index);
        kept.keys.push(key);
    }
    kept
}

/// Records the ids of a batch appended at `first`, consecutively. Where the batch is the one
/// [`screen`] kept last, and nothing else changed the table since, each id goes where
/// `screen` found it would.
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
    window.prefetch(keys);
    let hints = std::mem::take(&mut window.hints);
    let mut next = hints.iter().peekable();
    let mut version = window.hints_version;
    for (i, key) in keys.iter().enumerate() {
        if let Some(key) = *key {
            let hint = next
                .next_if(|h| h.key == key)
                .filter(|_| window.version == version);
            window.insert_hinted(key, hint, first + i as u64, timestamp_ns);
            version += 1;
        }
    }
    window.hints = hints;
    window.hints.clear();
}

#[cfg(test)]
#[path = "dedup_tests.rs"]
mod tests;
