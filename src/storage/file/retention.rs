//! Dropping the oldest messages: `trim` (what every channel has finished) and retention
//! (`max_bytes`, `max_age`: what the operator allows to be kept, finished or not).
//!
//! Both raise the logical start first and delete whole sealed segments only, never the
//! active one, so a read never meets a half-deleted segment.

use std::sync::atomic::Ordering;

use super::log::{now_ns, remove_segment_files, Closed, FileLog, LogState};
use super::record::SEGMENT_MAGIC;
use crate::storage::{FsyncPolicy, StorageError};

/// How long a message stays in the recent cache at most.
const CACHE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

impl FileLog {
    /// Raises the logical start to `offset` (within `start..=end`) and deletes every sealed
    /// segment wholly below it.
    pub(super) fn trim_to(&self, offset: u64) {
        let doomed = {
            let mut st = self.lock();
            if st.closed == Some(Closed::Deleted) {
                return;
            }
            let start = offset.min(st.end).max(st.start);
            if start == st.start {
                return;
            }
            st.start = start;
            st.cache.trim(start);
            let mut doomed = Vec::new();
            while let Some(base) = st.sealed.keys().next().copied() {
                if st.next_base(base) > start {
                    break;
                }
                forget(&mut st, base);
                doomed.push(base);
            }
            doomed
        };
        remove_segment_files(self, &doomed);
    }

    /// Continues an empty log at `offset`: a new active segment named by it, the old
    /// (empty) one deleted, and `offset` as the log's start and end.
    pub(super) fn restart_empty_at(&self, offset: u64) -> Result<(), StorageError> {
        let doomed = {
            let mut st = self.lock();
            if st.closed.is_some() {
                return Err(self.io_error("restart", std::io::Error::other("the log is closed")));
            }
            if offset == st.end {
                return Ok(());
            }
            if st.start != st.end || offset < st.end {
                return Err(StorageError::Corrupt {
                    topic: self.topic.to_string(),
                    what: format!(
                        "cannot restart the log at {offset}: it holds {}..{}",
                        st.start, st.end
                    ),
                });
            }
            st.end = offset;
            self.roll(&mut st)?;
            st.start = offset;
            st.cache.trim(offset);
            let below: Vec<u64> = st.sealed.keys().copied().filter(|b| *b < offset).collect();
            for base in &below {
                forget(&mut st, *base);
            }
            below
        };
        remove_segment_files(self, &doomed);
        self.persist_start()
    }

    /// Drops cached messages older than [`CACHE_MAX_AGE`]: a quiet topic's readers are
    /// either caught up or reading far behind, and the memory is better given back.
    pub(super) fn expire_cache(&self) {
        let horizon = now_ns().saturating_sub(CACHE_MAX_AGE.as_nanos() as u64);
        self.lock().cache.expire(horizon);
    }

    /// Applies `max_bytes` and `max_age`, counting what they drop above the logical start.
    /// Called about once a second by the flush thread.
    pub(super) fn enforce_retention(&self) {
        let (max_bytes, max_age) = (self.policy.max_bytes, self.policy.max_age);
        if max_bytes.is_none() && max_age.is_none() {
            return;
        }
        let now = now_ns();
        let oldest_kept = max_age.map(|age| now.saturating_sub(age.as_nanos() as u64));
        let mut rolled = false;
        let (doomed, messages, bytes, start) = {
            let mut guard = self.lock();
            let st = &mut *guard;
            if st.closed.is_some() {
                return;
            }
            // An idle topic's active segment must still age out.
            if max_age.is_some() && self.should_roll(st, 0) {
                match self.roll(st) {
                    Ok(()) => rolled = true,
                    Err(e) => tracing::warn!(topic = %self.topic, error = %e, "rolling by age"),
                }
            }
            let (mut doomed, mut messages, mut bytes) = (Vec::new(), 0, 0);
            while let Some((&base, segment)) = st.sealed.iter().next() {
                let over = max_bytes.is_some_and(|max| st.bytes > max);
                let old = oldest_kept.is_some_and(|t| segment.summary.max_timestamp_ns < t);
                if !over && !old {
                    break;
                }
                let next = st.next_base(base);
                if next > st.start {
                    let position = if st.start > base {
                        segment.summary.seek(base, st.start).1
                    } else {
                        SEGMENT_MAGIC.len() as u64
                    };
                    messages += next - st.start.max(base);
                    bytes += segment.len.saturating_sub(position);
                    st.start = next;
                }
                forget(st, base);
                doomed.push(base);
            }
            let start = st.start;
            st.cache.trim(start);
            (doomed, messages, bytes, start)
        };
        if rolled && self.policy.fsync == FsyncPolicy::Always {
            self.sync.request(&self.me);
        }
        if messages > 0 {
            let counters = &self.counters;
            counters
                .dropped_messages
                .fetch_add(messages, Ordering::Relaxed);
            counters.dropped_bytes.fetch_add(bytes, Ordering::Relaxed);
            tracing::info!(
                topic = %self.topic,
                messages,
                bytes,
                start,
                "retention dropped messages not every channel had finished",
            );
        }
        remove_segment_files(self, &doomed);
    }
}

/// Removes the sealed segment at `base` from the log's bookkeeping.
fn forget(st: &mut LogState, base: u64) {
    if let Some(segment) = st.sealed.remove(&base) {
        st.bytes -= segment.len;
    }
    st.sealing.retain(|s| s.base != base);
}
