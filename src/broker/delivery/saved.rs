//! A channel's state as saved and restored: its [`ChannelRecord`] and its options.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ChannelState, Now};
use crate::broker::ordering;
use crate::storage::{ChannelOptions, ChannelRecord, OrderBy, PendingEntry, TopicLog};

impl ChannelState {
    /// A channel as it was saved: what was pending is ready again (or deferred until its due
    /// time), with its attempts kept. Pending offsets outside the log's range are gone and
    /// dropped, and the cursor is brought inside it (after a power loss the log can have
    /// lost a tail the channel had already read, and new messages will be appended there).
    ///
    /// An ordered channel reads each pending message for its key: taken in offset order, the
    /// first of each key holds it again and the others wait behind it, so the oldest
    /// unfinished message of every key comes first.
    pub fn restore(record: &ChannelRecord, log: &dyn TopicLog, now: Now) -> Self {
        let options = record.options;
        let (start, end) = (log.start(), log.end());
        let cursor = record.cursor.clamp(start, end.max(start));
        let mut state = ChannelState::new(cursor, options.max_attempts);
        state.apply(options);
        for (&offset, entry) in record.pending.range(start..cursor) {
            state.counters.recovered += 1;
            if state.ordering != OrderBy::Unordered {
                if let Some(message) = log.get(offset) {
                    let key = ordering::key_of(state.ordering, &message);
                    if let Some(key) = key {
                        if !state.keys.admit(key, offset, entry.attempts, &message) {
                            continue;
                        }
                    }
                }
            }
            if entry.due_ms > now.wall_ms {
                let wait = Duration::from_millis(entry.due_ms - now.wall_ms);
                state
                    .deferred
                    .insert((now.mono + wait, offset), entry.attempts);
            } else {
                state.requeued.push_back((offset, entry.attempts));
            }
        }
        state
    }

    /// The whole durable state, for a checkpoint. In-flight, dead-lettered and key-waiting
    /// messages are saved as pending, due at once.
    pub fn snapshot(&self, now: Now) -> ChannelRecord {
        let at_once = |attempts| PendingEntry {
            attempts,
            due_ms: 0,
        };
        let mut pending = BTreeMap::new();
        for (&offset, f) in &self.in_flight {
            pending.insert(offset, at_once(f.attempts));
        }
        for &(offset, attempts) in &self.requeued {
            pending.insert(offset, at_once(attempts));
        }
        for (&offset, &attempts) in &self.dead {
            pending.insert(offset, at_once(attempts));
        }
        for (offset, attempts) in self.keys.waiting() {
            pending.insert(offset, at_once(attempts));
        }
        for (&(due, offset), &attempts) in &self.deferred {
            let wait = due.saturating_duration_since(now.mono);
            let entry = PendingEntry {
                attempts,
                due_ms: now.wall_ms + wait.as_millis() as u64,
            };
            pending.insert(offset, entry);
        }
        ChannelRecord {
            cursor: self.cursor,
            options: self.options(),
            pending,
        }
    }

    pub fn options(&self) -> ChannelOptions {
        ChannelOptions {
            paused: self.paused,
            max_attempts: self.max_attempts,
            msg_timeout_ms: self.msg_timeout.map_or(0, |d| d.as_millis() as u64),
            ordering: self.ordering,
        }
    }

    /// Changes the channel's options, recording them.
    pub fn set_options(&mut self, options: ChannelOptions) {
        self.apply(options);
        self.events
            .push(crate::storage::StateEvent::Options(options));
    }

    /// How the channel orders its deliveries.
    pub fn ordering(&self) -> OrderBy {
        self.ordering
    }

    fn apply(&mut self, options: ChannelOptions) {
        self.paused = options.paused;
        self.max_attempts = options.max_attempts;
        self.msg_timeout =
            (options.msg_timeout_ms > 0).then(|| Duration::from_millis(options.msg_timeout_ms));
        if options.ordering != self.ordering {
            // A new ordering applies to the messages read from now on: what waited behind a
            // key under the old one is ready, and messages already out hold no key.
            self.ordering = options.ordering;
            let waiting = self.keys.clear();
            self.released |= !waiting.is_empty();
            self.requeued.extend(waiting);
        }
    }
}
