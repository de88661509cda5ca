//! Reads: from the recent cache when it holds the offsets, else from the segment files.
//!
//! The log's mutex is held only to look up where to read; the `pread`s and decoding happen
//! outside it, on a clone of the segment's file handle and up to the length written at
//! lookup time. A segment deleted meanwhile stays readable through that handle.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::log::{lock, FileLog};
use super::reader::{Reader, Step};
use super::record;
use super::segment;
use crate::message::StoredMessage;

/// First window of a disk read: enough for a point read from an index entry.
const FIRST_CHUNK: usize = 8 << 10;
/// Largest window of a disk read.
const MAX_CHUNK: usize = 256 << 10;

/// Where one segment is to be read, looked up under the log's mutex.
#[derive(Debug)]
struct Plan {
    base: u64,
    file: Arc<File>,
    /// Bytes readable now.
    limit: u64,
    /// Position of the last index entry at or below the offset sought.
    position: u64,
    /// Offsets in this segment are at least the indexed one and below `upper`.
    lowest: u64,
    upper: u64,
    /// False for the active segment, which may grow after the lookup.
    sealed: bool,
}

/// How reading one segment ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// `max` messages were read.
    Full,
    /// The segment's readable bytes were all read; `next` is the lowest offset not seen.
    Exhausted { next: u64 },
    /// An I/O error: stop reading.
    Failed,
}

impl FileLog {
    /// Up to `max` messages from `from` onward, skipping gaps and corrupt records.
    pub(super) fn read_into(
        &self,
        mut from: u64,
        max: usize,
        out: &mut Vec<(u64, Arc<StoredMessage>)>,
    ) {
        let target = out.len() + max;
        while out.len() < target {
            let plan = {
                let st = self.lock();
                from = from.max(st.start);
                if from >= st.end {
                    return;
                }
                if st.cache.read(from, target - out.len(), out) {
                    return;
                }
                let (segment, upper) = st.locate(from);
                let (lowest, position) = segment.summary.seek(segment.base, from);
                Plan {
                    base: segment.base,
                    file: segment.file.clone(),
                    limit: segment.len,
                    position,
                    lowest,
                    upper,
                    sealed: segment.base != st.active.base,
                }
            };
            match self.read_segment(&plan, from, target - out.len(), out) {
                Outcome::Full | Outcome::Failed => return,
                Outcome::Exhausted { next } if plan.sealed => from = from.max(plan.upper).max(next),
                Outcome::Exhausted { next } => {
                    // The active segment grew, or its rest is a corrupt region: continue
                    // only if something was gained.
                    if next <= from {
                        return;
                    }
                    from = next;
                }
            }
        }
    }

    /// Reads one segment from `plan.position`, pushing records at or after `from`.
    fn read_segment(
        &self,
        plan: &Plan,
        from: u64,
        max: usize,
        out: &mut Vec<(u64, Arc<StoredMessage>)>,
    ) -> Outcome {
        let mut reader = Reader::new(&plan.file, plan.limit, FIRST_CHUNK, MAX_CHUNK);
        let mut position = plan.position;
        let mut lowest = plan.lowest;
        let target = out.len() + max;
        loop {
            let step = match reader.step(position) {
                Ok(step) => step,
                Err(e) => return self.read_failed(plan, position, e),
            };
            match step {
                Step::End => return Outcome::Exhausted { next: lowest },
                Step::Record { offset, next } if offset >= lowest && offset < plan.upper => {
                    lowest = offset + 1;
                    if offset < from {
                        position = next;
                        continue;
                    }
                    let payload = match reader.payload() {
                        Ok(payload) => payload,
                        Err(e) => return self.read_failed(plan, position, e),
                    };
                    match record::decode(payload) {
                        Ok((_, message)) => out.push((offset, Arc::new(message))),
                        Err(_) => self.report_corrupt(plan.base, position),
                    }
                    position = next;
                    if out.len() >= target {
                        return Outcome::Full;
                    }
                }
                Step::Record { .. } | Step::Bad => {
                    self.report_corrupt(plan.base, position);
                    match reader.resync(position + 1, lowest..plan.upper) {
                        Ok(Some(found)) => position = found,
                        Ok(None) => return Outcome::Exhausted { next: lowest },
                        Err(e) => return self.read_failed(plan, position, e),
                    }
                }
            }
        }
    }

    fn read_failed(&self, plan: &Plan, position: u64, e: std::io::Error) -> Outcome {
        tracing::error!(
            segment = %segment::log_path(&self.dir, plan.base).display(),
            position,
            error = %e,
            "reading a segment failed",
        );
        Outcome::Failed
    }

    /// Counts and logs a corrupt record found by a read, once per (segment, position).
    fn report_corrupt(&self, base: u64, position: u64) {
        if !lock(&self.counters.reported).insert((base, position)) {
            return;
        }
        self.counters
            .corrupt_records
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            segment = %segment::log_path(&self.dir, base).display(),
            position,
            "corrupt record found by a read: skipped",
        );
    }
}
