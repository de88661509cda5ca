//! The dedup window's memory: its ids in insertion order, a ring of fixed-size entries in
//! chunks, and its tables.

use std::collections::VecDeque;
use std::ops::{Index, IndexMut};

use super::{Key, DEAD};

/// An id stored: its key, where and when.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub(super) key: Key,
    /// `DEAD` once the id was stored again.
    pub(super) offset: u64,
    pub(super) timestamp_ns: u64,
}

impl Entry {
    /// What a chunk of the ring holds where it holds no entry.
    const NONE: Entry = Entry {
        key: Key(0, 0),
        offset: DEAD,
        timestamp_ns: 0,
    };
}

/// Entries per chunk of the ring: 64 KiB.
pub(super) const CHUNK: usize = 2048;

/// A double-ended queue of entries in fixed chunks: it grows without copying what it holds
/// or touching memory twice, and gives chunks back as its front moves on (but one, kept for
/// the back).
#[derive(Debug, Default)]
pub(super) struct Ring {
    pub(super) chunks: VecDeque<Box<[Entry]>>,
    /// The front's place in the first chunk.
    pub(super) head: usize,
    pub(super) len: usize,
    pub(super) spare: Option<Box<[Entry]>>,
}

impl Ring {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries the chunks held could take.
    pub(super) fn capacity(&self) -> usize {
        (self.chunks.len() + usize::from(self.spare.is_some())) * CHUNK
    }

    pub(super) fn chunk(&mut self) -> Box<[Entry]> {
        self.spare
            .take()
            .unwrap_or_else(|| vec![Entry::NONE; CHUNK].into_boxed_slice())
    }

    pub(super) fn front(&self) -> Option<&Entry> {
        (self.len > 0).then(|| &self[0])
    }

    pub(super) fn push_back(&mut self, entry: Entry) {
        let at = self.head + self.len;
        if at / CHUNK == self.chunks.len() {
            let chunk = self.chunk();
            self.chunks.push_back(chunk);
        }
        self.chunks[at / CHUNK][at % CHUNK] = entry;
        self.len += 1;
    }

    pub(super) fn push_front(&mut self, entry: Entry) {
        if self.head == 0 {
            let chunk = self.chunk();
            self.chunks.push_front(chunk);
            self.head = CHUNK;
        }
        self.head -= 1;
        self.chunks[0][self.head] = entry;
        self.len += 1;
    }

    pub(super) fn pop_front(&mut self) -> Option<Entry> {
        let entry = *self.front()?;
        self.head += 1;
        self.len -= 1;
        if self.head == CHUNK || self.len == 0 {
            // An emptied ring starts over at the front of its first chunk.
            if self.head == CHUNK || self.chunks.len() > 1 {
                self.spare = self.chunks.pop_front();
            }
            self.head = 0;
        }
        Some(entry)
    }

    /// Keeps the entries `keep` accepts, in order.
    pub(super) fn retain(&mut self, keep: impl Fn(&Entry) -> bool) {
        let mut kept = 0;
        for i in 0..self.len {
            let entry = self[i];
            if keep(&entry) {
                self[kept] = entry;
                kept += 1;
            }
        }
        self.len = kept;
        let chunks = (self.head + kept).div_ceil(CHUNK).max(1);
        self.chunks.truncate(chunks);
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry> {
        (0..self.len).map(|i| &self[i])
    }
}

impl Index<usize> for Ring {
    type Output = Entry;

    #[inline]
    fn index(&self, i: usize) -> &Entry {
        debug_assert!(i < self.len);
        let at = self.head + i;
        &self.chunks[at / CHUNK][at % CHUNK]
    }
}

impl IndexMut<usize> for Ring {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut Entry {
        debug_assert!(i < self.len);
        let at = self.head + i;
        &mut self.chunks[at / CHUNK][at % CHUNK]
    }
}

/// A table of `len` empty slots, written rather than allocated zeroed: zeroed memory
/// fresh from the system would be mapped twice over, first read (as the shared zero page)
/// then written. (Huge pages were tried for large tables: the kernel's zeroing of whole
/// 2 MiB pages, also as the freed tables' memory was reused, cost more than the TLB misses
/// they saved.)
#[allow(clippy::slow_vector_initialization)] // On purpose: see above.
pub(super) fn empty_table(len: usize) -> Vec<u64> {
    let mut slots = Vec::with_capacity(len);
    slots.resize(len, 0);
    std::hint::black_box(slots)
}
