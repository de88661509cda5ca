//! The delivery state of one channel, sans-IO: every method takes the time as an argument and
//! returns what should happen, so it is tested without tokio or sockets.
//!
//! A message enters a channel when the channel's cursor passes its offset in the topic's log.
//! From there it moves between these places until it is finished or dead-lettered:
//!
//! ```text
//!   log (offset >= cursor) ──take──► in flight ──FIN──► done
//!        │ DPUB not yet due              │ REQ(0) / timeout / disconnect ──► requeued ─┐
//!        ▼                               │ REQ(delay)                     ──► deferred ─┤
//!     deferred ──due──► requeued         │ attempts >= max_attempts ──► dead letter     │
//!                         └──────────────┴────────────── take ◄────────────────────────┘
//! ```
//!
//! # Durability
//! Every change that matters after a restart is also pushed as a [`StateEvent`] onto
//! [`ChannelState::events`], which the async shell hands to the channel's
//! [`ChannelStore`](crate::storage::ChannelStore) before it releases the channel's lock. The
//! events err toward redelivery: an offset the cursor passed is pending until a `Settle` says
//! otherwise, so a lost event can only bring a message back. [`ChannelState::snapshot`] and
//! [`ChannelState::restore`] turn the state into a [`ChannelRecord`](crate::storage::ChannelRecord) and back; on restore,
//! everything that was in flight is ready again with its attempts kept.
//!
//! A dead-lettered message stays pending (in `dead`) until the shell reports that its copy in
//! the dead-letter topic is durable ([`ChannelState::dead_settled`]), so a crash between the
//! two can only duplicate it.
//!
//! # Invariants
//! - An offset below the cursor is in exactly one of requeued, deferred, in flight or dead, or
//!   it is settled (finished, or dead-lettered with its copy durable). Offsets at or past the
//!   cursor are in none of them.
//! - `deadlines` holds exactly one entry per in-flight message, equal to its deadline.
//! - A consumer's `in_flight` equals the number of in-flight entries that name it, and `take`
//!   never raises it past the consumer's RDY.
//! - Requeued messages are delivered before messages the cursor has not reached yet.
//! - One `take` gets at most its fair share of the ready messages (ready divided by the
//!   consumers that have credit), so consumers of a channel share its load.
//!
//! # Ordered channels
//! With `ordering` set, a message the cursor reaches whose key is held by an older message
//! waits in [`Keys`] instead of being delivered (one more place an offset below the cursor
//! can be). The head of a key is in flight, requeued, deferred or dead like any message; when
//! it is finished or its dead-letter copy is durable, the next message of the key is
//! requeued. A REQ, timeout or disconnect leaves the key held by the same message, so it
//! goes back to the head of its key.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ordering::{self, Keys};
use crate::message::StoredMessage;
use crate::storage::{OrderBy, PendingEntry, StateEvent, TopicLog};

mod credit;
mod saved;

/// Identifies one consumer (one subscription stream) within the broker.
pub type ConsumerId = u64;

/// The current time, both monotonic (for deadlines) and wall-clock (for DPUB's due time,
/// which is stored in the log).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall_ms: u64,
}

impl Now {
    pub fn plus(self, d: Duration) -> Now {
        Now {
            mono: self.mono + d,
            wall_ms: self.wall_ms + d.as_millis() as u64,
        }
    }
}

/// A message handed to a consumer by [`ChannelState::take`].
#[derive(Debug, Clone)]
pub struct Taken {
    pub offset: u64,
    /// Deliveries on this channel, this one included.
    pub attempts: u16,
    pub message: Arc<StoredMessage>,
}

/// Why a message left the channel for the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    Timeout,
    Requeue,
    Disconnect,
    /// The channel's filters or samplers said so (their failure policy `dead-letter`).
    Filter,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Timeout => "timeout",
            DeadReason::Requeue => "requeue",
            DeadReason::Disconnect => "disconnect",
            DeadReason::Filter => "filter-fault",
        }
    }
}

/// A message that used up its attempts; the caller copies it to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetter {
    pub offset: u64,
    pub attempts: u16,
    pub reason: DeadReason,
}

/// What a channel's route and plugins decided about a message its cursor reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Not for this channel: the cursor moves past it.
    Skip,
    /// To the dead-letter topic without a delivery.
    DeadLetter,
    /// Not judged yet: the take stops before it, and the cursor stays on it.
    Pending,
}

/// Most log messages one [`ChannelState::take`] looks at, skipped ones included, so that a
/// channel whose filter skips a long run of messages does not hold its lock for all of them.
pub const SCAN_BUDGET: usize = 4096;

/// Messages an ordered channel's take reads from the log at a time, at least.
const ORDERED_READ: usize = 64;

/// Why a FIN, REQ or TOUCH was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    #[error("message is not in flight")]
    NotInFlight,
    #[error("message is in flight to another consumer")]
    OtherConsumer,
}

/// What [`ChannelState::expire`] did.
#[derive(Debug, Default)]
pub struct Expired {
    pub dead: Vec<DeadLetter>,
    /// Messages that became deliverable (timed out or came due).
    pub ready: usize,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    consumer: ConsumerId,
    deadline: Instant,
    attempts: u16,
}

/// Per-consumer credit and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerState {
    pub rdy: u32,
    pub in_flight: u32,
    pub timeout: Duration,
    /// After CLS: no new deliveries.
    pub closing: bool,
    pub delivered: u64,
    pub finished: u64,
    pub requeued: u64,
    pub timed_out: u64,
}

/// Channel-wide counters, kept since the channel was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounters {
    /// Messages that entered the channel from the log.
    pub message_count: u64,
    pub finished: u64,
    pub requeued: u64,
    pub timed_out: u64,
    pub dead_lettered: u64,
    /// Messages the channel's route or plugins passed over.
    pub skipped: u64,
    /// Messages that were pending when the channel was restored from disk: each may have
    /// been finished just before a crash, and is delivered again.
    pub recovered: u64,
}

/// One channel's cursor, in-flight table, requeue and deferred queues, and consumers.
#[derive(Debug)]
pub struct ChannelState {
    cursor: u64,
    requeued: VecDeque<(u64, u16)>,
    deferred: BTreeMap<(Instant, u64), u16>,
    in_flight: BTreeMap<u64, InFlight>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// Dead-lettered, waiting for the copy to be durable: offset → attempts.
    dead: BTreeMap<u64, u16>,
    /// How the channel orders its deliveries, and its keys when it does.
    ordering: OrderBy,
    keys: Keys,
    /// A key was released to its next message since [`ChannelState::take_released`].
    released: bool,
    /// The window of waiting messages is full ([`Keys::window`]): the cursor reads on once a
    /// quarter of it is released.
    window_full: bool,
    consumers: HashMap<ConsumerId, ConsumerState>,
    /// 0 means unlimited.
    pub max_attempts: u16,
    pub paused: bool,
    /// Message timeout for consumers that ask for none; None means the broker's default.
    pub msg_timeout: Option<Duration>,
    armed: Option<Instant>,
    /// The last take stopped at [`SCAN_BUDGET`] with credit left.
    stopped_early: bool,
    counters: ChannelCounters,
    /// Changes not yet handed to the channel's store, in order.
    pub events: Vec<StateEvent>,
}

impl ChannelState {
    /// A channel whose first message is the one at `cursor`.
    pub fn new(cursor: u64, max_attempts: u16) -> Self {
        ChannelState {
            cursor,
            requeued: VecDeque::new(),
            deferred: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            dead: BTreeMap::new(),
            ordering: OrderBy::Unordered,
            keys: Keys::default(),
            released: false,
            window_full: false,
            consumers: HashMap::new(),
            max_attempts,
            paused: false,
            msg_timeout: None,
            armed: None,
            stopped_early: false,
            counters: ChannelCounters::default(),
            events: Vec::new(),
        }
    }

    /// The offset of the next log message this channel will read.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Moves up to `max` messages into flight to `id`, within its credit, and appends them to
    /// `out`. Requeued messages go first, then the log from the cursor (unless the topic is
    /// paused). Each message the cursor reaches is first put to `admit`: skipped ones are
    /// passed over, and dead-lettered ones are pushed to `dead` for the caller to copy. DPUB
    /// messages that are not due yet move to deferred on the way.
    #[allow(clippy::too_many_arguments)]
    pub fn take(
        &mut self,
        id: ConsumerId,
        log: &dyn TopicLog,
        now: Now,
        topic_paused: bool,
        max: usize,
        admit: &mut dyn FnMut(u64, &StoredMessage) -> Verdict,
        out: &mut Vec<Taken>,
        dead: &mut Vec<DeadLetter>,
    ) -> usize {
        self.stopped_early = false;
        let Some(c) = self.consumers.get(&id) else {
            return 0;
        };
        if self.paused || c.closing {
            return 0;
        }
        let credit = (c.rdy.saturating_sub(c.in_flight) as usize).min(max);
        let deadline = now.mono + c.timeout;
        let start = log.start();
        if self.cursor < start {
            // Retention dropped messages this channel had not read.
            self.cursor = start;
            self.events.push(StateEvent::Empty(start));
        }
        let want = credit.min(self.fair_share(log.end()));
        let mut given = 0;
        while given < want {
            let Some((offset, attempts)) = self.requeued.pop_front() else {
                break;
            };
            // A message emptied out of the log meanwhile is simply gone.
            let kept = self.keys.take_message(offset);
            if let Some(message) = kept.or_else(|| log.get(offset)) {
                if attempts == 0 && message.deliver_at_ms > now.wall_ms {
                    // The next message of a key, published with a delay not over yet.
                    self.defer_new(offset, message.deliver_at_ms, now);
                    continue;
                }
                let taken = self.fly(id, offset, attempts, deadline, message);
                self.events.push(StateEvent::Pending {
                    offset,
                    entry: PendingEntry {
                        attempts: taken.attempts,
                        due_ms: 0,
                    },
                });
                out.push(taken);
                given += 1;
            } else {
                self.events.push(StateEvent::Settle(offset));
            }
        }
        let cursor_before = self.cursor;
        let mut batch = Vec::new();
        let mut scanned = 0;
        while given < want && !topic_paused {
            if scanned >= SCAN_BUDGET {
                self.stopped_early = true;
                break;
            }
            if self.window_full {
                // Enough waits behind held keys: read on once a quarter of the window is
                // released, so that the log is read in runs, not one message per FIN.
                if self.keys.waiting_count() > self.keys.window() / 4 * 3 {
                    break;
                }
                self.window_full = false;
            }
            batch.clear();
            // An ordered channel may pass many messages that wait behind their keys for each
            // one it delivers: read ahead in larger steps than the credit left.
            let step = match self.ordering {
                OrderBy::Unordered => want - given,
                _ => (want - given).max(ORDERED_READ),
            };
            log.read(self.cursor, step.min(SCAN_BUDGET - scanned), &mut batch);
            if batch.is_empty() {
                break;
            }
            scanned += batch.len();
            let mut pending = false;
            for (offset, message) in batch.drain(..) {
                if given >= want {
                    // Read ahead but not needed: the cursor stays on it.
                    pending = true;
                    break;
                }
                if self.keys.waiting_count() >= self.keys.window() {
                    self.window_full = true;
                    pending = true;
                    break;
                }
                let verdict = admit(offset, &message);
                if verdict == Verdict::Pending {
                    pending = true;
                    break;
                }
                self.cursor = offset + 1;
                match verdict {
                    Verdict::Keep | Verdict::Pending => {}
                    Verdict::Skip => {
                        self.counters.skipped += 1;
                        continue;
                    }
                    Verdict::DeadLetter => {
                        self.counters.message_count += 1;
                        self.counters.dead_lettered += 1;
                        self.dead.insert(offset, 0);
                        // Pending until the copy is durable, so a crash before then keeps it.
                        self.events.push(StateEvent::Pending {
                            offset,
                            entry: PendingEntry {
                                attempts: 0,
                                due_ms: 0,
                            },
                        });
                        dead.push(DeadLetter {
                            offset,
                            attempts: 0,
                            reason: DeadReason::Filter,
                        });
                        continue;
                    }
                }
                self.counters.message_count += 1;
                if let Some(key) = ordering::key_of(self.ordering, &message) {
                    if !self.keys.admit(key, offset, 0, &message) {
                        // Behind its key's head; never delivered yet, whatever a replay of
                        // the cursor would say.
                        self.events.push(StateEvent::Pending {
                            offset,
                            entry: PendingEntry {
                                attempts: 0,
                                due_ms: 0,
                            },
                        });
                        continue;
                    }
                }
                if message.deliver_at_ms > now.wall_ms {
                    self.defer_new(offset, message.deliver_at_ms, now);
                    continue;
                }
                out.push(self.fly(id, offset, 0, deadline, message));
                given += 1;
            }
            if pending {
                break;
            }
        }
        if self.cursor != cursor_before {
            self.events.push(StateEvent::Cursor(self.cursor));
        }
        given
    }

    /// Defers a message not delivered yet until its DPUB due time.
    fn defer_new(&mut self, offset: u64, due_ms: u64, now: Now) {
        let wait = Duration::from_millis(due_ms - now.wall_ms);
        self.deferred.insert((now.mono + wait, offset), 0);
        self.events.push(StateEvent::Pending {
            offset,
            entry: PendingEntry {
                attempts: 0,
                due_ms,
            },
        });
    }

    /// True when the last [`ChannelState::take`] stopped at [`SCAN_BUDGET`] messages with
    /// credit left: the caller should take again soon.
    pub fn stopped_early(&self) -> bool {
        self.stopped_early
    }

    /// What one consumer may take at once so that every consumer with credit gets a share of
    /// what is ready, whichever of them the scheduler runs first.
    fn fair_share(&self, log_end: u64) -> usize {
        let hungry = self
            .consumers
            .values()
            .filter(|c| !c.closing && c.rdy > c.in_flight)
            .count();
        let ready = log_end.saturating_sub(self.cursor) as usize + self.requeued.len();
        ready.div_ceil(hungry.max(1)).max(1)
    }

    fn fly(
        &mut self,
        consumer: ConsumerId,
        offset: u64,
        attempts: u16,
        deadline: Instant,
        message: Arc<StoredMessage>,
    ) -> Taken {
        let attempts = attempts.saturating_add(1);
        let flight = InFlight {
            consumer,
            deadline,
            attempts,
        };
        self.in_flight.insert(offset, flight);
        self.deadlines.insert((deadline, offset));
        if let Some(c) = self.consumers.get_mut(&consumer) {
            c.in_flight += 1;
            c.delivered += 1;
        }
        Taken {
            offset,
            attempts,
            message,
        }
    }

    /// Acknowledges a message. Returns true when the consumer had no credit left before, so
    /// that its sender should be woken.
    pub fn fin(&mut self, id: ConsumerId, offset: u64) -> Result<bool, SettleError> {
        self.check_owner(id, offset)?;
        let was_full = self
            .consumers
            .get(&id)
            .is_some_and(|c| c.in_flight >= c.rdy);
        self.unflight(offset);
        self.events.push(StateEvent::Settle(offset));
        self.release(offset);
        self.counters.finished += 1;
        if let Some(c) = self.consumers.get_mut(&id) {
            c.finished += 1;
        }
        Ok(was_full)
    }

    /// Gives a message back, deliverable again after `delay`, or dead-lettered if it has used
    /// its attempts.
    pub fn req(
        &mut self,
        id: ConsumerId,
        offset: u64,
        delay: Duration,
        now: Now,
    ) -> Result<Option<DeadLetter>, SettleError> {
        self.check_owner(id, offset)?;
        let Some(f) = self.unflight(offset) else {
            return Err(SettleError::NotInFlight);
        };
        self.counters.requeued += 1;
        if let Some(c) = self.consumers.get_mut(&id) {
            c.requeued += 1;
        }
        Ok(self.requeue(offset, f.attempts, delay, now, DeadReason::Requeue))
    }

    /// Pushes a message's deadline to now plus its consumer's timeout.
    pub fn touch(&mut self, id: ConsumerId, offset: u64, now: Now) -> Result<(), SettleError> {
        self.check_owner(id, offset)?;
        let timeout = self
            .consumers
            .get(&id)
            .map_or(Duration::ZERO, |c| c.timeout);
        if let Some(f) = self.in_flight.get_mut(&offset) {
            self.deadlines.remove(&(f.deadline, offset));
            f.deadline = now.mono + timeout;
            self.deadlines.insert((f.deadline, offset));
        }
        Ok(())
    }

    fn check_owner(&self, id: ConsumerId, offset: u64) -> Result<(), SettleError> {
        match self.in_flight.get(&offset) {
            None => Err(SettleError::NotInFlight),
            Some(f) if f.consumer != id => Err(SettleError::OtherConsumer),
            Some(_) => Ok(()),
        }
    }

    fn unflight(&mut self, offset: u64) -> Option<InFlight> {
        let f = self.in_flight.remove(&offset)?;
        self.deadlines.remove(&(f.deadline, offset));
        if let Some(c) = self.consumers.get_mut(&f.consumer) {
            c.in_flight -= 1;
        }
        Some(f)
    }

    fn requeue(
        &mut self,
        offset: u64,
        attempts: u16,
        delay: Duration,
        now: Now,
        reason: DeadReason,
    ) -> Option<DeadLetter> {
        if self.max_attempts > 0 && attempts >= self.max_attempts {
            self.counters.dead_lettered += 1;
            self.dead.insert(offset, attempts);
            return Some(DeadLetter {
                offset,
                attempts,
                reason,
            });
        }
        let due_ms = if delay.is_zero() {
            self.requeued.push_back((offset, attempts));
            0
        } else {
            self.deferred.insert((now.mono + delay, offset), attempts);
            now.wall_ms + delay.as_millis() as u64
        };
        self.events.push(StateEvent::Pending {
            offset,
            entry: PendingEntry { attempts, due_ms },
        });
        None
    }

    /// The dead-letter copy of `offset` is durable: the channel is done with it.
    pub fn dead_settled(&mut self, offset: u64) {
        if self.dead.remove(&offset).is_some() {
            self.events.push(StateEvent::Settle(offset));
            self.release(offset);
        }
    }

    /// `offset` is done with: if it held its key, the key's next message is ready.
    fn release(&mut self, offset: u64) {
        if let Some(next) = self.keys.release(offset) {
            self.requeued.push_back(next);
            self.released = true;
        }
    }

    /// True once after a finished or dead-lettered message released its key to a waiting
    /// one: the caller wakes the channel's consumers, since any of them may take it.
    pub fn take_released(&mut self) -> bool {
        std::mem::take(&mut self.released)
    }

    /// The dead-letter copy of `offset` could not be stored: the message stays in the
    /// channel, deferred by `retry`, and is dead-lettered again when it next fails.
    pub fn dead_failed(&mut self, offset: u64, retry: Duration, now: Now) {
        if let Some(attempts) = self.dead.remove(&offset) {
            self.deferred.insert((now.mono + retry, offset), attempts);
            self.events.push(StateEvent::Pending {
                offset,
                entry: PendingEntry {
                    attempts,
                    due_ms: now.wall_ms + retry.as_millis() as u64,
                },
            });
        }
    }

    /// Redelivers what passed its deadline and releases deferred messages that came due.
    pub fn expire(&mut self, now: Now) -> Expired {
        let mut expired = Expired::default();
        while let Some(&(deadline, offset)) = self.deadlines.first() {
            if deadline > now.mono {
                break;
            }
            let Some(f) = self.unflight(offset) else {
                continue;
            };
            self.counters.timed_out += 1;
            if let Some(c) = self.consumers.get_mut(&f.consumer) {
                c.timed_out += 1;
            }
            match self.requeue(offset, f.attempts, Duration::ZERO, now, DeadReason::Timeout) {
                Some(dead) => expired.dead.push(dead),
                None => expired.ready += 1,
            }
        }
        while let Some(entry) = self.deferred.first_entry() {
            let (due, offset) = *entry.key();
            if due > now.mono {
                break;
            }
            let attempts = entry.remove();
            self.requeued.push_back((offset, attempts));
            expired.ready += 1;
        }
        expired
    }

    /// The earliest in-flight deadline or deferred due time.
    pub fn next_deadline(&self) -> Option<Instant> {
        let flight = self.deadlines.first().map(|&(d, _)| d);
        let deferred = self.deferred.first_key_value().map(|(&(d, _), _)| d);
        match (flight, deferred) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records the deadline the channel's timer is about to sleep until.
    pub fn arm(&mut self) -> Option<Instant> {
        self.armed = self.next_deadline();
        self.armed
    }

    /// True when a deadline earlier than the armed one has appeared, so the timer must wake.
    pub fn needs_rearm(&self) -> bool {
        match (self.next_deadline(), self.armed) {
            (Some(next), Some(armed)) => next < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Drops every message not yet finished: the unread log, requeued, deferred and in flight.
    pub fn empty(&mut self, log_end: u64) {
        self.cursor = self.cursor.max(log_end);
        self.requeued.clear();
        self.deferred.clear();
        self.in_flight.clear();
        self.deadlines.clear();
        self.dead.clear();
        self.keys.clear();
        self.consumers.values_mut().for_each(|c| c.in_flight = 0);
        self.events.push(StateEvent::Empty(self.cursor));
    }

    /// The lowest offset this channel may still need from the log.
    pub fn ack_floor(&self) -> u64 {
        let requeued = self.requeued.iter().map(|&(o, _)| o);
        let deferred = self.deferred.keys().map(|&(_, o)| o);
        let flying = self.in_flight.keys().next().copied();
        let dead = self.dead.keys().next().copied();
        requeued
            .chain(deferred)
            .chain(flying)
            .chain(dead)
            .chain(self.keys.first_waiting())
            .fold(self.cursor, u64::min)
    }

    /// Messages waiting to be delivered: the unread log, the requeued queue, and the messages
    /// waiting behind their keys.
    pub fn depth(&self, log_end: u64) -> u64 {
        log_end.saturating_sub(self.cursor)
            + self.requeued.len() as u64
            + self.keys.waiting_count() as u64
    }

    /// Keys with a message in the channel (ordered channels only).
    pub fn active_keys(&self) -> usize {
        self.keys.active()
    }

    /// Messages waiting behind an older message of their key.
    pub fn waiting_on_key(&self) -> usize {
        self.keys.waiting_count()
    }

    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    pub fn deferred_count(&self) -> usize {
        self.deferred.len()
    }

    pub fn counters(&self) -> ChannelCounters {
        self.counters
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut seen = BTreeSet::new();
        let places = self
            .requeued
            .iter()
            .map(|&(o, _)| o)
            .chain(self.deferred.keys().map(|&(_, o)| o))
            .chain(self.in_flight.keys().copied())
            .chain(self.dead.keys().copied())
            .chain(self.keys.waiting().into_iter().map(|(o, _)| o));
        for offset in places {
            assert!(offset < self.cursor, "offset {offset} past cursor held");
            assert!(seen.insert(offset), "offset {offset} in two places");
        }
        assert_eq!(self.deadlines.len(), self.in_flight.len());
        for (&offset, f) in &self.in_flight {
            assert!(self.deadlines.contains(&(f.deadline, offset)));
        }
        for (&id, c) in &self.consumers {
            let n = self.in_flight.values().filter(|f| f.consumer == id).count();
            assert_eq!(c.in_flight as usize, n, "consumer {id} in-flight count");
        }
        self.keys.check_invariants();
    }
}

#[cfg(test)]
mod tests;
