//! Tests for the sans-IO delivery state of one channel: one unit test per behaviour, with time
//! injected as a base `Instant` plus durations (nothing sleeps), and a property-based state
//! machine that runs random operations against a model of who holds what, then drains the
//! channel and checks that every published message was finished or dead-lettered exactly once.
//!
//! This module holds the shared constants, helpers and the [`Fixture`] the unit tests build on.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    ChannelState, ConsumerId, DeadLetter, DeadReason, Expired, Now, SettleError, Taken, Verdict,
};
use crate::message::{Headers, StoredMessage, TopicName};
use crate::storage::{ChannelRecord, MemoryStorage, Storage, TopicLog};

mod backlog;
mod consumers;
mod dead_letters;
mod ordered;
mod settle;
mod state_machine;
mod take;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Wall-clock time at the start of every test, in milliseconds since the Unix epoch.
const WALL0: u64 = 1_700_000_000_000;
/// Message timeout of the default consumer.
const TIMEOUT: Duration = Duration::from_secs(10);
const A: ConsumerId = 1;
const B: ConsumerId = 2;
const C: ConsumerId = 3;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn open_log() -> Arc<dyn TopicLog> {
    MemoryStorage
        .open_topic(&TopicName::new("t").expect("valid topic name"))
        .expect("memory storage opens any topic")
}

fn stored(deliver_at_ms: u64, body: String) -> StoredMessage {
    StoredMessage {
        timestamp_ns: 1,
        deliver_at_ms,
        headers: Headers::new(),
        body: body.into(),
        route: None,
    }
}

fn offsets(taken: &[Taken]) -> Vec<u64> {
    taken.iter().map(|t| t.offset).collect()
}

fn attempts(taken: &[Taken]) -> Vec<u16> {
    taken.iter().map(|t| t.attempts).collect()
}

/// A log, a channel over it at cursor 0 with consumer `A` (timeout [`TIMEOUT`]), and the time
/// the test starts at.
struct Fixture {
    log: Arc<dyn TopicLog>,
    ch: ChannelState,
    t0: Now,
    /// What the channel's route and plugins say about each message; keep by default.
    verdict: fn(&StoredMessage) -> Verdict,
    /// Dead letters the verdicts made, in the order takes returned them.
    gated: Vec<DeadLetter>,
}

impl Fixture {
    fn new(rdy: u32) -> Self {
        Self::with_max_attempts(rdy, 0)
    }

    fn with_max_attempts(rdy: u32, max_attempts: u16) -> Self {
        let mut ch = ChannelState::new(0, max_attempts);
        ch.add_consumer(A, TIMEOUT);
        ch.set_rdy(A, rdy);
        Fixture {
            log: open_log(),
            ch,
            t0: Now {
                mono: Instant::now(),
                wall_ms: WALL0,
            },
            verdict: |_| Verdict::Keep,
            gated: Vec::new(),
        }
    }

    fn at(&self, d: Duration) -> Now {
        self.t0.plus(d)
    }

    /// Adds a consumer with `rdy` credit and `timeout`.
    fn add(&mut self, id: ConsumerId, rdy: u32, timeout: Duration) {
        self.ch.add_consumer(id, timeout);
        self.ch.set_rdy(id, rdy);
    }

    /// Appends `n` messages deliverable at once; their bodies are `m<offset>`.
    fn publish(&self, n: u64) -> Range<u64> {
        let end = self.log.end();
        let messages = (end..end + n).map(|o| stored(0, format!("m{o}"))).collect();
        self.log.append(messages).expect("append")
    }

    /// Appends one DPUB message due `due_in` after the test's start.
    fn dpub(&self, due_in: Duration) -> u64 {
        let at = WALL0 + due_in.as_millis() as u64;
        let offset = self.log.end();
        let range = self.log.append(vec![stored(at, format!("m{offset}"))]);
        range.expect("append").start
    }

    fn take_with(
        &mut self,
        id: ConsumerId,
        now: Now,
        topic_paused: bool,
        max: usize,
    ) -> Vec<Taken> {
        let mut out = Vec::new();
        let verdict = self.verdict;
        let n = self.ch.take(
            id,
            &*self.log,
            now,
            topic_paused,
            max,
            &mut |_, m| verdict(m),
            &mut out,
            &mut self.gated,
        );
        assert_eq!(n, out.len(), "take returns how many it appended");
        self.ch.check_invariants();
        out
    }

    /// Takes as many as `id`'s credit allows and returns their offsets.
    fn take(&mut self, id: ConsumerId, now: Now) -> Vec<u64> {
        offsets(&self.take_with(id, now, false, usize::MAX))
    }

    fn expire(&mut self, now: Now) -> Expired {
        let expired = self.ch.expire(now);
        self.ch.check_invariants();
        expired
    }

    fn fin(&mut self, id: ConsumerId, offset: u64) -> Result<bool, SettleError> {
        let r = self.ch.fin(id, offset);
        self.ch.check_invariants();
        r
    }

    fn req(
        &mut self,
        id: ConsumerId,
        offset: u64,
        delay: Duration,
        now: Now,
    ) -> Result<Option<DeadLetter>, SettleError> {
        let r = self.ch.req(id, offset, delay, now);
        self.ch.check_invariants();
        r
    }

    fn in_flight(&self, id: ConsumerId) -> u32 {
        self.ch.consumer(id).expect("consumer exists").in_flight
    }

    fn depth(&self) -> u64 {
        self.ch.depth(self.log.end())
    }
}
