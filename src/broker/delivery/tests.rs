//! Tests for the sans-IO delivery state of one channel: one unit test per behaviour, with time
//! injected as a base `Instant` plus durations (nothing sleeps), and a property-based state
//! machine that runs random operations against a model of who holds what, then drains the
//! channel and checks that every published message was finished or dead-lettered exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;

use super::{ChannelState, ConsumerId, DeadLetter, DeadReason, Expired, Now, SettleError, Taken};
use crate::message::{Headers, StoredMessage, TopicName};
use crate::storage::{MemoryStorage, Storage, TopicLog};

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
        let n = self
            .ch
            .take(id, &*self.log, now, topic_paused, max, &mut out);
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

// ---------------------------------------------------------------------------------------------
// RDY and take
// ---------------------------------------------------------------------------------------------

#[test]
fn rdy_zero_delivers_nothing() {
    let mut f = Fixture::new(0);
    f.publish(3);
    assert!(f.take(A, f.t0).is_empty());
    assert_eq!(f.ch.in_flight_count(), 0);
    assert_eq!(f.depth(), 3, "the cursor did not move");
    assert_eq!(f.ch.counters().message_count, 0);
}

#[test]
fn rdy_caps_in_flight_and_raising_it_gives_more() {
    let mut f = Fixture::new(2);
    f.publish(5);
    assert_eq!(f.take(A, f.t0), [0, 1]);
    assert!(f.take(A, f.t0).is_empty(), "at its credit limit");
    assert_eq!(f.in_flight(A), 2);

    assert!(f.ch.set_rdy(A, 4), "a higher RDY is a raise");
    assert_eq!(f.take(A, f.t0), [2, 3]);
    assert_eq!(f.in_flight(A), 4);
    assert!(!f.ch.set_rdy(A, 4), "the same RDY is not a raise");
}

#[test]
fn lowering_rdy_below_in_flight_delivers_nothing_until_in_flight_drops_below_it() {
    let mut f = Fixture::new(3);
    f.publish(5);
    assert_eq!(f.take(A, f.t0), [0, 1, 2]);
    assert!(!f.ch.set_rdy(A, 1), "lowering is not a raise");
    f.fin(A, 0).expect("fin");
    assert!(f.take(A, f.t0).is_empty(), "2 in flight, RDY 1");
    f.fin(A, 1).expect("fin");
    assert!(f.take(A, f.t0).is_empty(), "1 in flight, RDY 1");
    f.fin(A, 2).expect("fin");
    assert_eq!(f.take(A, f.t0), [3]);
}

#[test]
fn take_delivers_at_most_max() {
    let mut f = Fixture::new(10);
    f.publish(5);
    assert!(f.take_with(A, f.t0, false, 0).is_empty());
    assert_eq!(offsets(&f.take_with(A, f.t0, false, 2)), [0, 1]);
    assert_eq!(offsets(&f.take_with(A, f.t0, false, 1)), [2]);
    assert_eq!(f.take(A, f.t0), [3, 4]);
}

#[test]
fn unknown_consumers_get_nothing_and_cannot_set_rdy() {
    let mut f = Fixture::new(1);
    f.publish(1);
    assert!(!f.ch.set_rdy(9, 5));
    assert!(f.take(9, f.t0).is_empty());
    assert_eq!(
        f.take(A, f.t0),
        [0],
        "the message was not consumed by the unknown id"
    );
}

#[test]
fn take_hands_out_log_messages_in_order_with_their_bodies_and_a_deadline() {
    let mut f = Fixture::new(10);
    f.publish(3);
    let taken = f.take_with(A, f.t0, false, usize::MAX);
    assert_eq!(offsets(&taken), [0, 1, 2]);
    assert_eq!(attempts(&taken), [1, 1, 1]);
    for t in &taken {
        assert_eq!(t.message.body, format!("m{}", t.offset));
    }
    assert_eq!(f.ch.next_deadline(), Some(f.t0.mono + TIMEOUT));
    let c = f.ch.consumer(A).expect("A");
    assert_eq!((c.in_flight, c.delivered), (3, 3));
    assert_eq!(f.ch.counters().message_count, 3);
}

#[test]
fn a_consumer_deadline_uses_its_own_timeout() {
    let mut f = Fixture::new(0);
    f.add(B, 1, secs(3));
    f.publish(1);
    let now = f.at(secs(1));
    assert_eq!(f.take(B, now), [0]);
    assert_eq!(f.ch.next_deadline(), Some(f.t0.mono + secs(4)));
}

#[test]
fn requeued_messages_are_delivered_before_new_log_messages() {
    let mut f = Fixture::new(3);
    f.publish(3);
    assert_eq!(f.take(A, f.t0), [0, 1, 2]);
    assert_eq!(f.req(A, 2, Duration::ZERO, f.t0), Ok(None));
    assert_eq!(f.req(A, 0, Duration::ZERO, f.t0), Ok(None));
    f.publish(3);
    assert_eq!(f.take(A, f.t0), [2, 0], "requeued first, in requeue order");
    f.ch.set_rdy(A, 10);
    assert_eq!(f.take(A, f.t0), [3, 4, 5]);
}

#[test]
fn attempts_start_at_one_and_grow_by_one_per_redelivery() {
    let mut f = Fixture::new(1);
    f.publish(1);
    let mut now = f.t0;
    let seen = |f: &mut Fixture, id, now| attempts(&f.take_with(id, now, false, usize::MAX));

    assert_eq!(seen(&mut f, A, now), [1]);
    f.req(A, 0, Duration::ZERO, now).expect("req");
    assert_eq!(seen(&mut f, A, now), [2], "after REQ");

    now = now.plus(TIMEOUT);
    assert_eq!(f.expire(now).ready, 1);
    assert_eq!(seen(&mut f, A, now), [3], "after a timeout");

    assert!(f.ch.remove_consumer(A, now).is_empty());
    f.add(B, 1, TIMEOUT);
    assert_eq!(seen(&mut f, B, now), [4], "after a disconnect");

    f.req(B, 0, secs(1), now).expect("req");
    now = now.plus(secs(1));
    f.expire(now);
    assert_eq!(seen(&mut f, B, now), [5], "after a delayed REQ");
}

// ---------------------------------------------------------------------------------------------
// FIN
// ---------------------------------------------------------------------------------------------

#[test]
fn settling_an_offset_that_is_not_in_flight_is_refused() {
    let mut f = Fixture::new(1);
    f.publish(2);
    assert_eq!(f.take(A, f.t0), [0]);
    assert_eq!(
        f.fin(A, 1),
        Err(SettleError::NotInFlight),
        "published, not delivered"
    );
    assert_eq!(
        f.fin(A, 99),
        Err(SettleError::NotInFlight),
        "never published"
    );
    assert_eq!(
        f.fin(9, 99),
        Err(SettleError::NotInFlight),
        "unknown consumer"
    );
    assert_eq!(
        f.req(A, 99, Duration::ZERO, f.t0),
        Err(SettleError::NotInFlight)
    );
    assert_eq!(f.ch.touch(A, 99, f.t0), Err(SettleError::NotInFlight));
    assert_eq!(f.ch.counters().finished, 0);
    assert_eq!(f.ch.counters().requeued, 0);
}

#[test]
fn settling_another_consumers_message_is_refused() {
    let mut f = Fixture::new(1);
    f.add(B, 1, TIMEOUT);
    f.publish(1);
    assert_eq!(f.take(A, f.t0), [0]);
    assert_eq!(f.fin(B, 0), Err(SettleError::OtherConsumer));
    assert_eq!(
        f.req(B, 0, Duration::ZERO, f.t0),
        Err(SettleError::OtherConsumer)
    );
    assert_eq!(
        f.ch.touch(B, 0, f.at(secs(5))),
        Err(SettleError::OtherConsumer)
    );
    assert_eq!(
        f.ch.touch(9, 0, f.t0),
        Err(SettleError::OtherConsumer),
        "unknown id"
    );

    assert_eq!((f.in_flight(A), f.in_flight(B)), (1, 0), "nothing changed");
    assert_eq!(
        f.ch.next_deadline(),
        Some(f.t0.mono + TIMEOUT),
        "B's TOUCH was ignored"
    );
    assert_eq!(f.fin(A, 0), Ok(true));
    assert_eq!(f.ch.counters().finished, 1);
}

#[test]
fn a_second_fin_of_the_same_message_fails() {
    let mut f = Fixture::new(1);
    f.publish(1);
    assert_eq!(f.take(A, f.t0), [0]);
    assert!(f.fin(A, 0).is_ok());
    assert_eq!(f.fin(A, 0), Err(SettleError::NotInFlight));
    assert_eq!(f.ch.counters().finished, 1);
    assert_eq!(f.ch.consumer(A).expect("A").finished, 1);
    assert_eq!(f.in_flight(A), 0);

    let later = f.at(secs(3600));
    let expired = f.expire(later);
    assert_eq!((expired.ready, expired.dead.len()), (0, 0));
    assert!(
        f.take(A, later).is_empty(),
        "a finished message is never redelivered"
    );
    assert_eq!(f.ch.ack_floor(), 1);
}

#[test]
fn fin_returns_true_only_when_the_consumer_was_at_its_credit_limit() {
    let mut f = Fixture::new(2);
    f.publish(4);
    assert_eq!(f.take(A, f.t0), [0, 1]);
    assert_eq!(f.fin(A, 0), Ok(true), "2 of 2 in flight");
    assert_eq!(f.fin(A, 1), Ok(false), "1 of 2 in flight");

    f.ch.set_rdy(A, 3);
    assert_eq!(f.take(A, f.t0), [2, 3]);
    assert_eq!(f.fin(A, 2), Ok(false), "2 of 3 in flight");

    f.ch.set_rdy(A, 0);
    assert_eq!(f.fin(A, 3), Ok(true), "RDY 0 leaves no credit");
}

// ---------------------------------------------------------------------------------------------
// REQ
// ---------------------------------------------------------------------------------------------

#[test]
fn req_without_delay_is_deliverable_at_once_with_one_more_attempt() {
    let mut f = Fixture::new(1);
    f.publish(2);
    let first = f.take_with(A, f.t0, false, 1);
    assert_eq!((offsets(&first), attempts(&first)), (vec![0], vec![1]));

    assert_eq!(f.req(A, 0, Duration::ZERO, f.t0), Ok(None));
    assert_eq!(f.ch.in_flight_count(), 0);
    assert_eq!(f.ch.deferred_count(), 0);
    assert_eq!(f.depth(), 2, "one unread plus one requeued");

    let again = f.take_with(A, f.t0, false, 1);
    assert_eq!((offsets(&again), attempts(&again)), (vec![0], vec![2]));
    assert_eq!(f.ch.counters().requeued, 1);
    assert_eq!(f.ch.consumer(A).expect("A").requeued, 1);
}

#[test]
fn req_with_delay_is_not_takeable_before_its_due_time_and_is_after_expire() {
    let mut f = Fixture::new(1);
    f.publish(1);
    assert_eq!(f.take(A, f.t0), [0]);
    assert_eq!(f.req(A, 0, secs(3), f.t0), Ok(None));
    assert_eq!(f.ch.deferred_count(), 1);
    assert_eq!(f.depth(), 0, "deferred is not waiting to be delivered");
    assert_eq!(f.ch.next_deadline(), Some(f.t0.mono + secs(3)));

    assert!(f.take(A, f.t0).is_empty());
    let early = f.at(ms(2999));
    assert_eq!(f.expire(early).ready, 0);
    assert!(f.take(A, early).is_empty());

    let due = f.at(secs(3));
    let expired = f.expire(due);
    assert_eq!((expired.ready, expired.dead.len()), (1, 0));
    assert_eq!(f.ch.deferred_count(), 0);
    let taken = f.take_with(A, due, false, usize::MAX);
    assert_eq!((offsets(&taken), attempts(&taken)), (vec![0], vec![2]));
}

#[test]
fn a_delayed_req_does_not_hold_back_other_messages() {
    let mut f = Fixture::new(1);
    f.publish(2);
    assert_eq!(f.take(A, f.t0), [0]);
    f.req(A, 0, secs(60), f.t0).expect("req");
    assert_eq!(f.take(A, f.t0), [1]);
}

// ---------------------------------------------------------------------------------------------
// Deadlines and TOUCH
// ---------------------------------------------------------------------------------------------

#[test]
fn a_message_past_its_deadline_is_requeued_and_counted_as_timed_out() {
    let mut f = Fixture::new(1);
    f.publish(1);
    assert_eq!(f.take(A, f.t0), [0]);

    let before = f.expire(f.at(TIMEOUT - ms(1)));
    assert_eq!((before.ready, before.dead.len()), (0, 0));
    assert_eq!(f.ch.in_flight_count(), 1);

    let deadline = f.at(TIMEOUT);
    let expired = f.expire(deadline);
    assert_eq!((expired.ready, expired.dead.len()), (1, 0));
    assert_eq!(f.ch.counters().timed_out, 1);
    assert_eq!(f.ch.consumer(A).expect("A").timed_out, 1);
    assert_eq!((f.ch.in_flight_count(), f.in_flight(A)), (0, 0));
    assert_eq!(
        f.fin(A, 0),
        Err(SettleError::NotInFlight),
        "a late FIN is refused"
    );

    let taken = f.take_with(A, deadline, false, usize::MAX);
    assert_eq!((offsets(&taken), attempts(&taken)), (vec![0], vec![2]));
}

#[test]
fn touch_pushes_the_deadline_to_touch_time_plus_timeout() {
    let mut f = Fixture::new(1);
    f.publish(1);
    assert_eq!(f.take(A, f.t0), [0]);
    assert_eq!(f.ch.touch(A, 0, f.at(secs(6))), Ok(()));
    f.ch.check_invariants();
    assert_eq!(f.ch.next_deadline(), Some(f.t0.mono + secs(16)));

    assert_eq!(
        f.expire(f.at(TIMEOUT)).ready,
        0,
        "survives its original deadline"
    );
    assert_eq!(f.expire(f.at(secs(16) - ms(1))).ready, 0);
    assert_eq!(f.ch.in_flight_count(), 1);
    assert_eq!(f.ch.counters().timed_out, 0);

    assert_eq!(f.expire(f.at(secs(16))).ready, 1);
    assert_eq!(f.ch.counters().timed_out, 1);
    assert_eq!(f.ch.in_flight_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Disconnect
// ---------------------------------------------------------------------------------------------

#[test]
fn one_take_gets_only_a_fair_share_of_what_is_ready() {
    let mut f = Fixture::new(100);
    f.add(B, 100, TIMEOUT);
    f.add(C, 100, TIMEOUT);
    f.publish(9);
    // Nine ready, three consumers with credit: the first to ask gets three, not nine.
    assert_eq!(f.take(A, f.t0).len(), 3);
    // Six left for three hungry consumers.
    assert_eq!(f.take(B, f.t0).len(), 2);
    assert_eq!(f.take(C, f.t0).len(), 2);
    f.ch.check_invariants();
}

#[test]
fn removing_a_consumer_requeues_all_its_messages_at_once_for_another() {
    let mut f = Fixture::new(3);
    f.publish(4);
    assert_eq!(f.take(A, f.t0), [0, 1, 2]);
    f.add(B, 10, TIMEOUT);
    assert_eq!(f.take(B, f.t0), [3]);

    assert!(f.ch.remove_consumer(A, f.t0).is_empty());
    f.ch.check_invariants();
    assert_eq!(f.ch.consumer_count(), 1);
    assert!(f.ch.consumer(A).is_none());
    assert_eq!(
        f.ch.in_flight_count(),
        1,
        "only B's message is still in flight"
    );

    let taken = f.take_with(B, f.t0, false, usize::MAX);
    assert_eq!(offsets(&taken), [0, 1, 2], "no deadline had to pass");
    assert_eq!(attempts(&taken), [2, 2, 2]);
    assert_eq!(f.fin(B, 3), Ok(false));
    assert_eq!(f.fin(A, 0), Err(SettleError::OtherConsumer));
}

#[test]
fn removing_an_unknown_consumer_changes_nothing() {
    let mut f = Fixture::new(1);
    f.publish(1);
    assert_eq!(f.take(A, f.t0), [0]);
    assert!(f.ch.remove_consumer(9, f.t0).is_empty());
    f.ch.check_invariants();
    assert_eq!(f.ch.in_flight_count(), 1);
    assert_eq!(f.ch.consumer_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// max_attempts and dead letters
// ---------------------------------------------------------------------------------------------

/// With max_attempts 3: delivers offset 0 three times (REQ in between) and leaves it in flight
/// to `A` on its last attempt.
fn on_last_attempt() -> Fixture {
    let mut f = Fixture::with_max_attempts(1, 3);
    f.publish(2);
    for attempt in 1..=3 {
        let taken = f.take_with(A, f.t0, false, usize::MAX);
        assert_eq!(
            (offsets(&taken), attempts(&taken)),
            (vec![0], vec![attempt])
        );
        if attempt < 3 {
            assert_eq!(f.req(A, 0, Duration::ZERO, f.t0), Ok(None), "attempts left");
        }
    }
    f
}

/// Offset 0 was dead-lettered: it is never delivered again, however long we wait.
fn assert_gone_for_good(f: &mut Fixture, now: Now) {
    assert_eq!(f.ch.counters().dead_lettered, 1);
    assert_eq!(f.ch.in_flight_count(), 0);
    assert_eq!(f.ch.deferred_count(), 0);
    if f.ch.consumer(A).is_none() {
        f.add(A, 1, TIMEOUT);
    }
    assert_eq!(f.take(A, now), [1]);
    f.fin(A, 1).expect("fin");
    let later = now.plus(secs(3600));
    let expired = f.expire(later);
    assert_eq!((expired.ready, expired.dead.len()), (0, 0));
    assert!(f.take(A, later).is_empty());
    assert_eq!(f.ch.ack_floor(), 2);
    assert_eq!(f.ch.next_deadline(), None);
}

#[test]
fn a_req_on_the_last_attempt_dead_letters_the_message() {
    let mut f = on_last_attempt();
    let dead = f.req(A, 0, Duration::ZERO, f.t0);
    let expected = DeadLetter {
        offset: 0,
        attempts: 3,
        reason: DeadReason::Requeue,
    };
    assert_eq!(dead, Ok(Some(expected)));
    let now = f.t0;
    assert_gone_for_good(&mut f, now);
}

#[test]
fn a_delayed_req_on_the_last_attempt_dead_letters_at_once() {
    let mut f = on_last_attempt();
    let dead = f
        .req(A, 0, secs(5), f.t0)
        .expect("req")
        .expect("dead letter");
    assert_eq!(
        (dead.offset, dead.attempts, dead.reason),
        (0, 3, DeadReason::Requeue)
    );
    assert_eq!(f.ch.deferred_count(), 0, "not deferred");
    let now = f.t0;
    assert_gone_for_good(&mut f, now);
}

#[test]
fn a_timeout_on_the_last_attempt_dead_letters_the_message() {
    let mut f = on_last_attempt();
    let now = f.at(TIMEOUT);
    let expired = f.expire(now);
    let expected = DeadLetter {
        offset: 0,
        attempts: 3,
        reason: DeadReason::Timeout,
    };
    assert_eq!(expired.dead, [expected]);
    assert_eq!(expired.ready, 0);
    assert_eq!(f.ch.counters().timed_out, 1);
    assert_gone_for_good(&mut f, now);
}

#[test]
fn timeouts_alone_use_up_the_attempts() {
    let mut f = Fixture::with_max_attempts(1, 3);
    f.publish(1);
    let mut now = f.t0;
    for attempt in 1..=3u16 {
        let taken = f.take_with(A, now, false, usize::MAX);
        assert_eq!(attempts(&taken), [attempt]);
        now = now.plus(TIMEOUT);
        let expired = f.expire(now);
        if attempt < 3 {
            assert_eq!((expired.ready, expired.dead.len()), (1, 0));
        } else {
            assert_eq!(expired.dead.len(), 1);
            assert_eq!(expired.dead[0].reason, DeadReason::Timeout);
        }
    }
    assert_eq!(f.ch.counters().timed_out, 3);
    assert_eq!(f.ch.counters().dead_lettered, 1);
    assert!(f.take(A, now.plus(secs(3600))).is_empty());
}

#[test]
fn a_disconnect_on_the_last_attempt_dead_letters_the_message() {
    let mut f = on_last_attempt();
    let dead = f.ch.remove_consumer(A, f.t0);
    let expected = DeadLetter {
        offset: 0,
        attempts: 3,
        reason: DeadReason::Disconnect,
    };
    assert_eq!(dead, [expected]);
    f.ch.check_invariants();
    let now = f.t0;
    assert_gone_for_good(&mut f, now);
}

#[test]
fn max_attempts_zero_means_unlimited() {
    let mut f = Fixture::with_max_attempts(1, 0);
    f.publish(1);
    let mut now = f.t0;
    for attempt in 1..=200u16 {
        let taken = f.take_with(A, now, false, usize::MAX);
        assert_eq!(attempts(&taken), [attempt]);
        if attempt % 2 == 0 {
            assert_eq!(f.req(A, 0, Duration::ZERO, now), Ok(None));
        } else {
            now = now.plus(TIMEOUT);
            let expired = f.expire(now);
            assert!(expired.dead.is_empty());
        }
    }
    assert_eq!(f.ch.counters().dead_lettered, 0);
}

// ---------------------------------------------------------------------------------------------
// DPUB
// ---------------------------------------------------------------------------------------------

#[test]
fn a_dpub_message_not_yet_due_is_deferred_without_using_credit() {
    let mut f = Fixture::new(2);
    f.publish(1); // 0
    let delayed = f.dpub(secs(5)); // 1
    f.publish(2); // 2, 3
    assert_eq!(delayed, 1);

    assert_eq!(f.take(A, f.t0), [0, 2], "later messages flow past it");
    assert_eq!(f.in_flight(A), 2);
    assert_eq!(f.ch.deferred_count(), 1);
    assert_eq!(f.ch.counters().message_count, 3, "it entered the channel");
    assert_eq!(f.ch.ack_floor(), 0);
    assert_eq!(f.ch.next_deadline(), Some(f.t0.mono + secs(5)));

    f.fin(A, 0).expect("fin");
    f.fin(A, 2).expect("fin");
    let early = f.at(ms(4999));
    assert_eq!(f.expire(early).ready, 0);
    assert_eq!(f.take(A, early), [3], "still not due");
    assert_eq!(f.ch.ack_floor(), 1, "the deferred message holds the floor");

    let due = f.at(secs(5));
    assert_eq!(f.expire(due).ready, 1);
    let taken = f.take_with(A, due, false, usize::MAX);
    assert_eq!((offsets(&taken), attempts(&taken)), (vec![1], vec![1]));
    assert_eq!(taken[0].message.deliver_at_ms, WALL0 + 5000);
}

#[test]
fn a_dpub_message_that_is_due_is_delivered_at_once() {
    let mut f = Fixture::new(5);
    f.publish(1);
    f.dpub(Duration::ZERO); // due exactly now
    let log = f.log.clone();
    log.append(vec![stored(WALL0 - 1000, "past".into())])
        .expect("append");
    assert_eq!(f.take(A, f.t0), [0, 1, 2]);
    assert_eq!(f.ch.deferred_count(), 0);
}

#[test]
fn a_log_of_future_dpub_messages_delivers_nothing_yet_and_keeps_them() {
    let mut f = Fixture::new(5);
    for s in [3, 1, 2] {
        f.dpub(secs(s));
    }
    assert!(f.take(A, f.t0).is_empty());
    assert_eq!(f.ch.deferred_count(), 3);
    assert_eq!(f.ch.ack_floor(), 0);
    assert_eq!(f.ch.next_deadline(), Some(f.t0.mono + secs(1)));

    let now = f.at(secs(3));
    assert_eq!(f.expire(now).ready, 3);
    assert_eq!(f.take(A, now), [1, 2, 0], "released in due order");
}

// ---------------------------------------------------------------------------------------------
// Pausing and closing
// ---------------------------------------------------------------------------------------------

#[test]
fn a_paused_channel_delivers_nothing() {
    let mut f = Fixture::new(1);
    f.publish(2);
    assert_eq!(f.take(A, f.t0), [0]);
    f.req(A, 0, Duration::ZERO, f.t0).expect("req");
    f.ch.set_rdy(A, 5);
    f.ch.paused = true;
    assert!(
        f.take(A, f.t0).is_empty(),
        "neither requeued nor log messages"
    );
    assert!(f.take_with(A, f.t0, true, usize::MAX).is_empty());
    f.ch.paused = false;
    assert_eq!(f.take(A, f.t0), [0, 1]);
}

#[test]
fn a_paused_topic_stops_log_reads_but_still_delivers_requeued() {
    let mut f = Fixture::new(1);
    f.publish(3);
    assert_eq!(f.take(A, f.t0), [0]);
    f.req(A, 0, Duration::ZERO, f.t0).expect("req");
    f.ch.set_rdy(A, 5);
    assert_eq!(offsets(&f.take_with(A, f.t0, true, usize::MAX)), [0]);
    assert!(f.take_with(A, f.t0, true, usize::MAX).is_empty());
    assert_eq!(f.depth(), 2, "the log was not read");
    assert_eq!(f.take(A, f.t0), [1, 2]);
}

#[test]
fn closing_a_consumer_stops_new_deliveries_and_reports_when_drained() {
    let mut f = Fixture::new(2);
    f.publish(4);
    assert_eq!(f.take(A, f.t0), [0, 1]);
    assert!(!f.ch.close_consumer(A), "two in flight");
    assert!(!f.ch.is_drained(A));
    assert!(f.ch.consumer(A).expect("A").closing);

    f.fin(A, 0).expect("FIN still works while closing");
    assert!(f.take(A, f.t0).is_empty(), "credit but closing");
    assert!(!f.ch.is_drained(A));

    assert_eq!(
        f.req(A, 1, Duration::ZERO, f.t0),
        Ok(None),
        "REQ works while closing"
    );
    assert!(f.ch.is_drained(A));
    assert!(f.take(A, f.t0).is_empty());

    f.add(B, 10, TIMEOUT);
    assert_eq!(f.take(B, f.t0), [1, 2, 3]);
}

#[test]
fn closing_an_idle_consumer_is_drained_at_once() {
    let mut f = Fixture::new(2);
    assert!(f.ch.close_consumer(A));
    assert!(f.ch.is_drained(A));
    assert!(!f.ch.close_consumer(9), "unknown consumer");
    assert!(f.ch.is_drained(9), "an unknown consumer holds nothing");
}

// ---------------------------------------------------------------------------------------------
// EMPTY, ack floor, depth, deadlines and the timer
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_drops_unread_requeued_deferred_and_in_flight() {
    let mut f = Fixture::new(3);
    f.publish(1); // 0
    f.dpub(secs(5)); // 1
    f.publish(5); // 2..=6
    assert_eq!(f.take(A, f.t0), [0, 2, 3]);
    f.req(A, 2, Duration::ZERO, f.t0).expect("req");
    f.req(A, 3, secs(3), f.t0).expect("req");
    // In flight: 0. Requeued: 2. Deferred: 1 (DPUB) and 3 (REQ). Unread: 4, 5, 6.
    assert_eq!(f.ch.in_flight_count(), 1);
    assert_eq!(f.ch.deferred_count(), 2);
    assert_eq!(f.depth(), 4);

    f.ch.empty(f.log.end());
    f.ch.check_invariants();
    assert_eq!(f.ch.in_flight_count(), 0);
    assert_eq!(f.ch.deferred_count(), 0);
    assert_eq!(f.depth(), 0);
    assert_eq!(f.in_flight(A), 0);
    assert_eq!(f.ch.next_deadline(), None);
    assert_eq!(f.ch.ack_floor(), 7);
    assert_eq!(f.fin(A, 0), Err(SettleError::NotInFlight));

    let later = f.at(secs(3600));
    let expired = f.expire(later);
    assert_eq!((expired.ready, expired.dead.len()), (0, 0));
    assert!(f.take(A, later).is_empty());

    f.publish(1);
    let taken = f.take_with(A, later, false, usize::MAX);
    assert_eq!((offsets(&taken), attempts(&taken)), (vec![7], vec![1]));
}

#[test]
fn ack_floor_is_the_lowest_of_the_cursor_and_every_held_offset() {
    assert_eq!(ChannelState::new(7, 0).ack_floor(), 7);

    let mut f = Fixture::new(5);
    assert_eq!(f.ch.ack_floor(), 0);
    f.publish(5);
    assert_eq!(f.ch.ack_floor(), 0, "nothing read yet");
    assert_eq!(f.take(A, f.t0), [0, 1, 2, 3, 4]);
    assert_eq!(f.ch.ack_floor(), 0, "0 in flight");
    f.fin(A, 0).expect("fin");
    assert_eq!(f.ch.ack_floor(), 1, "1 in flight");
    f.fin(A, 2).expect("fin");
    f.req(A, 1, secs(2), f.t0).expect("req");
    assert_eq!(f.ch.ack_floor(), 1, "1 deferred, 3 in flight");
    f.fin(A, 3).expect("fin");
    f.expire(f.at(secs(2)));
    assert_eq!(f.ch.ack_floor(), 1, "1 requeued, 4 in flight");
    f.fin(A, 4).expect("fin");
    assert_eq!(f.ch.ack_floor(), 1, "1 requeued, cursor 5");
    assert_eq!(f.take(A, f.t0), [1]);
    assert_eq!(f.ch.ack_floor(), 1, "1 in flight again");
    f.fin(A, 1).expect("fin");
    assert_eq!(f.ch.ack_floor(), 5, "only the cursor is left");
}

#[test]
fn ack_floor_sees_a_requeued_offset_below_the_lowest_in_flight_one() {
    let mut f = Fixture::new(3);
    f.publish(3);
    assert_eq!(f.take(A, f.t0), [0, 1, 2]);
    f.req(A, 0, Duration::ZERO, f.t0).expect("req");
    f.fin(A, 1).expect("fin");
    assert_eq!(f.ch.ack_floor(), 0);
    f.req(A, 2, secs(1), f.t0).expect("req");
    assert_eq!(f.ch.ack_floor(), 0);
}

#[test]
fn depth_counts_unread_and_requeued_messages() {
    let mut f = Fixture::new(2);
    assert_eq!(f.depth(), 0);
    f.publish(5);
    assert_eq!(f.depth(), 5);
    assert_eq!(f.take(A, f.t0), [0, 1]);
    assert_eq!(f.depth(), 3);
    f.req(A, 0, Duration::ZERO, f.t0).expect("req");
    assert_eq!(f.depth(), 4, "requeued counts");
    f.req(A, 1, secs(1), f.t0).expect("req");
    assert_eq!(f.depth(), 4, "deferred does not");
    f.expire(f.at(secs(1)));
    assert_eq!(f.depth(), 5);
    assert_eq!(f.take(A, f.t0), [0, 1]);
    assert_eq!(f.depth(), 3);
}

#[test]
fn next_deadline_is_the_earliest_in_flight_deadline_or_deferred_due_time() {
    let mut f = Fixture::new(1);
    f.add(B, 2, secs(3));
    assert_eq!(f.ch.next_deadline(), None);
    f.publish(3);

    assert_eq!(f.take(A, f.t0), [0]);
    assert_eq!(f.ch.next_deadline(), Some(f.t0.mono + secs(10)));
    assert_eq!(f.take(B, f.at(secs(1))), [1, 2]);
    assert_eq!(f.ch.next_deadline(), Some(f.t0.mono + secs(4)));

    f.req(B, 1, ms(500), f.at(secs(2))).expect("req");
    assert_eq!(
        f.ch.next_deadline(),
        Some(f.t0.mono + ms(2500)),
        "deferred is earliest"
    );

    f.expire(f.at(ms(2500)));
    assert_eq!(f.ch.next_deadline(), Some(f.t0.mono + secs(4)));
    f.fin(B, 2).expect("fin");
    assert_eq!(f.ch.next_deadline(), Some(f.t0.mono + secs(10)));
    f.fin(A, 0).expect("fin");
    assert_eq!(
        f.ch.next_deadline(),
        None,
        "a requeued message has no deadline"
    );
}

#[test]
fn an_earlier_deadline_after_arming_needs_a_rearm_and_a_later_one_does_not() {
    let mut f = Fixture::new(5);
    f.add(B, 5, secs(2));
    assert!(!f.ch.needs_rearm());
    assert_eq!(f.ch.arm(), None);
    assert!(!f.ch.needs_rearm());
    f.publish(3);

    assert_eq!(offsets(&f.take_with(A, f.t0, false, 1)), [0]);
    assert!(f.ch.needs_rearm(), "a deadline appeared while disarmed");
    assert_eq!(f.ch.arm(), Some(f.t0.mono + secs(10)));
    assert!(!f.ch.needs_rearm());

    let t1 = f.at(secs(1));
    assert_eq!(offsets(&f.take_with(A, t1, false, 1)), [1]);
    assert!(!f.ch.needs_rearm(), "t0+11s is later than the armed t0+10s");

    assert_eq!(f.take(B, t1), [2]);
    assert!(f.ch.needs_rearm(), "t0+3s is earlier than the armed t0+10s");
    assert_eq!(f.ch.arm(), Some(f.t0.mono + secs(3)));
    assert!(!f.ch.needs_rearm());

    f.req(A, 1, secs(1), t1).expect("req");
    assert!(f.ch.needs_rearm(), "a deferred message due at t0+2s");
    assert_eq!(f.ch.arm(), Some(f.t0.mono + secs(2)));

    f.fin(A, 0).expect("fin");
    f.fin(B, 2).expect("fin");
    assert!(!f.ch.needs_rearm(), "fewer deadlines never need a rearm");
    f.expire(f.at(secs(2)));
    assert_eq!(f.ch.next_deadline(), None);
    assert!(!f.ch.needs_rearm());
}

// ---------------------------------------------------------------------------------------------
// Trimmed logs
// ---------------------------------------------------------------------------------------------

#[test]
fn requeued_messages_trimmed_from_the_log_are_skipped() {
    let mut f = Fixture::new(2);
    f.publish(4);
    assert_eq!(f.take(A, f.t0), [0, 1]);
    f.req(A, 1, Duration::ZERO, f.t0).expect("req");
    f.req(A, 0, Duration::ZERO, f.t0).expect("req");
    f.log.trim(1);

    let taken = f.take_with(A, f.t0, false, usize::MAX);
    assert_eq!(offsets(&taken), [1, 2], "0 is gone and used no credit");
    assert_eq!(attempts(&taken), [2, 1]);
    assert_eq!(f.ch.ack_floor(), 1);

    f.fin(A, 1).expect("fin");
    f.fin(A, 2).expect("fin");
    let later = f.at(secs(3600));
    f.expire(later);
    assert_eq!(f.take(A, later), [3]);
    f.fin(A, 3).expect("fin");
    assert!(f.take(A, later).is_empty());
    assert_eq!(f.ch.ack_floor(), 4);
}

#[test]
fn a_channel_behind_the_log_start_begins_at_the_oldest_retained_message() {
    let mut f = Fixture::new(5);
    f.publish(3);
    f.log.trim(2);
    assert_eq!(f.take(A, f.t0), [2]);
    assert_eq!(f.ch.ack_floor(), 2);
}

// ---------------------------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------------------------

/// An id that is never a consumer: settling with it probes whether an offset is in flight
/// without changing anything.
const PROBE: ConsumerId = 999;
/// The consumer that drains the channel at the end of a run.
const DRAINER: ConsumerId = 100;

#[derive(Debug, Clone)]
enum Op {
    /// One message per entry; `Some(ms)` is a DPUB due `ms` after now.
    Publish(Vec<Option<u64>>),
    AddConsumer {
        id: ConsumerId,
        timeout_ms: u64,
    },
    RemoveConsumer(Who),
    CloseConsumer(Who),
    SetRdy(Who, u32),
    Take {
        who: Who,
        max: usize,
        topic_paused: bool,
    },
    Fin(Index),
    Req(Index, u64),
    Touch(Index),
    /// FIN, REQ and TOUCH of an in-flight message by a consumer that doesn't hold it.
    SettleAsOther(Index, u64),
    /// FIN and REQ of a finished or dead-lettered message.
    SettleSettled(Index),
    /// Trims the log up to the channel's ack floor, as the broker does.
    Trim,
    Advance(u64),
    MaxAttempts(u16),
}

/// The consumer an operation is aimed at.
#[derive(Debug, Clone)]
enum Who {
    /// One of the consumers that exist (id 1 when there are none).
    Existing(Index),
    /// Any id, which may not be a consumer.
    Id(ConsumerId),
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        9 => any::<Index>().prop_map(Who::Existing),
        1 => (1..5u64).prop_map(Who::Id),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let id = 1..5u64;
    prop_oneof![
        3 => prop::collection::vec(prop::option::weighted(0.2, 1..5_000u64), 1..6)
            .prop_map(Op::Publish),
        2 => (id, 1_000..=5_000u64)
            .prop_map(|(id, timeout_ms)| Op::AddConsumer { id, timeout_ms }),
        1 => who().prop_map(Op::RemoveConsumer),
        1 => who().prop_map(Op::CloseConsumer),
        3 => (who(), 0..10u32).prop_map(|(who, rdy)| Op::SetRdy(who, rdy)),
        5 => (who(), 0..12usize, prop::bool::weighted(0.15))
            .prop_map(|(who, max, topic_paused)| Op::Take { who, max, topic_paused }),
        3 => any::<Index>().prop_map(Op::Fin),
        3 => (any::<Index>(), prop_oneof![Just(0u64), 1..=3_000u64])
            .prop_map(|(pick, delay)| Op::Req(pick, delay)),
        1 => any::<Index>().prop_map(Op::Touch),
        1 => (any::<Index>(), 1..4u64).prop_map(|(pick, k)| Op::SettleAsOther(pick, k)),
        1 => any::<Index>().prop_map(Op::SettleSettled),
        1 => Just(Op::Trim),
        3 => (0..=4_000u64).prop_map(Op::Advance),
        1 => prop::sample::select(vec![0u16, 2, 3]).prop_map(Op::MaxAttempts),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Held {
    consumer: ConsumerId,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
struct ModelConsumer {
    rdy: u32,
    timeout: Duration,
    closing: bool,
}

/// The channel under test, its log, and a model of where every published offset is.
#[derive(Debug)]
struct Machine {
    log: Arc<dyn TopicLog>,
    ch: ChannelState,
    now: Now,
    max_attempts: u16,
    published: BTreeSet<u64>,
    consumers: BTreeMap<ConsumerId, ModelConsumer>,
    /// Offsets in flight, from the `Taken` results, with whom they are held by.
    held: BTreeMap<u64, Held>,
    /// How many times each offset was delivered.
    deliveries: BTreeMap<u64, u16>,
    /// A REQ with a delay: the offset must not be delivered before this.
    not_before: BTreeMap<u64, Instant>,
    finished: BTreeSet<u64>,
    dead: BTreeSet<u64>,
    timed_out: u64,
}

impl Machine {
    fn new() -> Self {
        Machine {
            log: open_log(),
            ch: ChannelState::new(0, 0),
            now: Now {
                mono: Instant::now(),
                wall_ms: WALL0,
            },
            max_attempts: 0,
            published: BTreeSet::new(),
            consumers: BTreeMap::new(),
            held: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            not_before: BTreeMap::new(),
            finished: BTreeSet::new(),
            dead: BTreeSet::new(),
            timed_out: 0,
        }
    }

    fn held_by(&self, id: ConsumerId) -> u32 {
        self.held.values().filter(|h| h.consumer == id).count() as u32
    }

    fn resolve(&self, who: &Who) -> ConsumerId {
        match who {
            Who::Existing(pick) if !self.consumers.is_empty() => {
                let i = pick.index(self.consumers.len());
                self.consumers.keys().nth(i).copied().unwrap_or(1)
            }
            Who::Existing(_) => 1,
            Who::Id(id) => *id,
        }
    }

    fn pick_held(&self, pick: &Index) -> Option<(u64, Held)> {
        if self.held.is_empty() {
            return None;
        }
        let i = pick.index(self.held.len());
        self.held.iter().nth(i).map(|(&o, &h)| (o, h))
    }

    /// Whether giving `offset` back now must dead-letter it.
    fn exhausted(&self, offset: u64) -> bool {
        let delivered = self.deliveries.get(&offset).copied().unwrap_or(0);
        self.max_attempts > 0 && delivered >= self.max_attempts
    }

    fn settle_finished(&mut self, offset: u64) {
        assert!(
            !self.dead.contains(&offset),
            "{offset} finished after dead-lettering"
        );
        assert!(self.finished.insert(offset), "{offset} finished twice");
    }

    fn settle_dead(&mut self, offset: u64) {
        assert!(
            !self.finished.contains(&offset),
            "{offset} dead-lettered after FIN"
        );
        assert!(self.dead.insert(offset), "{offset} dead-lettered twice");
    }

    /// Checks the dead letters returned for `released` (offsets just taken out of flight)
    /// against the model, and records them.
    fn check_dead(&mut self, released: &[u64], dead: &[DeadLetter], reason: DeadReason) {
        let expected: BTreeSet<u64> = released
            .iter()
            .copied()
            .filter(|&o| self.exhausted(o))
            .collect();
        let got: BTreeSet<u64> = dead.iter().map(|d| d.offset).collect();
        assert_eq!(got, expected, "dead letters ({reason:?})");
        assert_eq!(
            got.len(),
            dead.len(),
            "an offset dead-lettered twice at once"
        );
        for d in dead {
            assert_eq!(d.reason, reason);
            assert_eq!(Some(d.attempts), self.deliveries.get(&d.offset).copied());
            self.settle_dead(d.offset);
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Publish(ref dues) => self.publish(dues),
            Op::AddConsumer { id, timeout_ms } => self.add(id, ms(timeout_ms)),
            Op::RemoveConsumer(ref who) => self.remove(self.resolve(who)),
            Op::CloseConsumer(ref who) => {
                let id = self.resolve(who);
                let expected = self.consumers.contains_key(&id) && self.held_by(id) == 0;
                assert_eq!(self.ch.close_consumer(id), expected);
                if let Some(c) = self.consumers.get_mut(&id) {
                    c.closing = true;
                }
            }
            Op::SetRdy(ref who, rdy) => self.set_rdy(self.resolve(who), rdy),
            Op::Take {
                ref who,
                max,
                topic_paused,
            } => {
                self.take(self.resolve(who), max, topic_paused);
            }
            Op::Fin(ref pick) => match self.pick_held(pick) {
                Some((offset, h)) => self.fin(h.consumer, offset),
                None => {
                    let beyond = self.log.end() + 1;
                    assert_eq!(self.ch.fin(1, beyond), Err(SettleError::NotInFlight));
                }
            },
            Op::Req(ref pick, delay) => {
                if let Some((offset, h)) = self.pick_held(pick) {
                    self.req(h.consumer, offset, ms(delay));
                }
            }
            Op::Touch(ref pick) => {
                if let Some((offset, h)) = self.pick_held(pick) {
                    assert_eq!(self.ch.touch(h.consumer, offset, self.now), Ok(()));
                    let timeout = self.consumers[&h.consumer].timeout;
                    let held = self.held.get_mut(&offset).expect("picked from held");
                    held.deadline = self.now.mono + timeout;
                }
            }
            Op::SettleAsOther(ref pick, k) => {
                if let Some((offset, h)) = self.pick_held(pick) {
                    let other = h.consumer + k;
                    let refused = Err(SettleError::OtherConsumer);
                    assert_eq!(self.ch.fin(other, offset), refused.map(|()| false));
                    let req = self.ch.req(other, offset, Duration::ZERO, self.now);
                    assert_eq!(req, refused.map(|()| None));
                    assert_eq!(self.ch.touch(other, offset, self.now), refused);
                }
            }
            Op::SettleSettled(ref pick) => {
                let settled: Vec<u64> = self.finished.union(&self.dead).copied().collect();
                let offset = if settled.is_empty() {
                    self.log.end()
                } else {
                    settled[pick.index(settled.len())]
                };
                for id in 1..5 {
                    assert_eq!(self.ch.fin(id, offset), Err(SettleError::NotInFlight));
                    let req = self.ch.req(id, offset, Duration::ZERO, self.now);
                    assert_eq!(req, Err(SettleError::NotInFlight));
                }
            }
            Op::Trim => self.log.trim(self.ch.ack_floor()),
            Op::Advance(n) => self.advance(ms(n)),
            Op::MaxAttempts(m) => {
                self.ch.max_attempts = m;
                self.max_attempts = m;
            }
        }
    }

    fn publish(&mut self, dues: &[Option<u64>]) {
        let wall = self.now.wall_ms;
        let messages = dues
            .iter()
            .map(|due| stored(due.map_or(0, |d| wall + d), String::new()))
            .collect();
        let range = self.log.append(messages).expect("append");
        self.published.extend(range);
    }

    fn add(&mut self, id: ConsumerId, timeout: Duration) {
        // Consumer ids name one subscription each and are never reused while it lives.
        if self.consumers.contains_key(&id) {
            return;
        }
        self.ch.add_consumer(id, timeout);
        let consumer = ModelConsumer {
            rdy: 0,
            timeout,
            closing: false,
        };
        self.consumers.insert(id, consumer);
    }

    fn remove(&mut self, id: ConsumerId) {
        let dead = self.ch.remove_consumer(id, self.now);
        let released: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.consumer == id)
            .map(|(&o, _)| o)
            .collect();
        for o in &released {
            self.held.remove(o);
        }
        self.check_dead(&released, &dead, DeadReason::Disconnect);
        self.consumers.remove(&id);
    }

    fn set_rdy(&mut self, id: ConsumerId, rdy: u32) {
        let expected = self.consumers.get_mut(&id).is_some_and(|c| {
            let raised = rdy > c.rdy;
            c.rdy = rdy;
            raised
        });
        assert_eq!(self.ch.set_rdy(id, rdy), expected);
    }

    fn take(&mut self, id: ConsumerId, max: usize, topic_paused: bool) -> usize {
        let entered = self.ch.counters().message_count;
        let before = self.held_by(id);
        let mut out = Vec::new();
        let n = self
            .ch
            .take(id, &*self.log, self.now, topic_paused, max, &mut out);
        assert_eq!(n, out.len());
        assert!(n <= max);
        if topic_paused {
            assert_eq!(
                self.ch.counters().message_count,
                entered,
                "read a paused topic"
            );
        }
        let Some(&c) = self.consumers.get(&id) else {
            assert_eq!(n, 0, "delivered to an unknown consumer");
            return 0;
        };
        if c.closing {
            assert_eq!(n, 0, "delivered to a closing consumer");
        }
        assert!(n as u32 <= c.rdy.saturating_sub(before), "took past RDY");
        let after = self.ch.consumer(id).expect("consumer exists").in_flight;
        if n > 0 {
            assert!(
                after <= c.rdy,
                "in flight {after} over RDY {} after take",
                c.rdy
            );
        }
        for t in &out {
            let o = t.offset;
            assert!(self.published.contains(&o), "{o} was never published");
            assert!(!self.held.contains_key(&o), "{o} delivered while held");
            assert!(!self.finished.contains(&o), "{o} delivered after FIN");
            assert!(
                !self.dead.contains(&o),
                "{o} delivered after dead-lettering"
            );
            assert!(
                t.message.deliver_at_ms <= self.now.wall_ms,
                "{o} delivered early"
            );
            if let Some(&nb) = self.not_before.get(&o) {
                assert!(self.now.mono >= nb, "{o} delivered before its REQ delay");
            }
            let count = self.deliveries.entry(o).or_insert(0);
            *count += 1;
            assert_eq!(t.attempts, *count, "attempts of {o}");
            let held = Held {
                consumer: id,
                deadline: self.now.mono + c.timeout,
            };
            self.held.insert(o, held);
        }
        n
    }

    fn fin(&mut self, id: ConsumerId, offset: u64) {
        let c = self.consumers[&id];
        let was_full = self.held_by(id) >= c.rdy;
        assert_eq!(self.ch.fin(id, offset), Ok(was_full), "FIN {offset}");
        self.held.remove(&offset);
        self.settle_finished(offset);
    }

    fn req(&mut self, id: ConsumerId, offset: u64, delay: Duration) {
        let result = self.ch.req(id, offset, delay, self.now);
        self.held.remove(&offset);
        let dead = result
            .expect("REQ of a held message")
            .into_iter()
            .collect::<Vec<_>>();
        self.check_dead(&[offset], &dead, DeadReason::Requeue);
        if dead.is_empty() {
            self.not_before.insert(offset, self.now.mono + delay);
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now = self.now.plus(by);
        let expired = self.ch.expire(self.now);
        let released: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.deadline <= self.now.mono)
            .map(|(&o, _)| o)
            .collect();
        for o in &released {
            self.held.remove(o);
        }
        self.timed_out += released.len() as u64;
        self.check_dead(&released, &expired.dead, DeadReason::Timeout);
        assert!(expired.ready >= released.len() - expired.dead.len());
    }

    fn check(&mut self) {
        self.ch.check_invariants();
        assert_eq!(self.ch.in_flight_count(), self.held.len());
        assert_eq!(self.ch.consumer_count(), self.consumers.len());
        for (&id, c) in &self.consumers {
            let s = self.ch.consumer(id).expect("consumer exists");
            assert_eq!((s.rdy, s.timeout, s.closing), (c.rdy, c.timeout, c.closing));
            assert_eq!(s.in_flight, self.held_by(id), "consumer {id} in flight");
            assert_eq!(self.ch.is_drained(id), self.held_by(id) == 0);
        }
        // Everything the model says is held is in flight, so it cannot be taken.
        let held: Vec<u64> = self.held.keys().copied().collect();
        for offset in held {
            let probe = self.ch.touch(PROBE, offset, self.now);
            assert_eq!(
                probe,
                Err(SettleError::OtherConsumer),
                "{offset} not in flight"
            );
        }

        let counters = self.ch.counters();
        assert_eq!(counters.finished, self.finished.len() as u64);
        assert_eq!(counters.dead_lettered, self.dead.len() as u64);
        assert_eq!(counters.timed_out, self.timed_out);

        // The channel still needs every unsettled offset, so trimming to its floor loses none.
        let floor = self.ch.ack_floor();
        assert!(floor <= self.log.end());
        let unsettled = self
            .published
            .iter()
            .find(|o| !self.finished.contains(o) && !self.dead.contains(o));
        if let Some(&first) = unsettled {
            assert!(floor <= first, "ack floor {floor} above unsettled {first}");
        }

        let earliest = self.held.values().map(|h| h.deadline).min();
        if self.ch.deferred_count() == 0 {
            assert_eq!(self.ch.next_deadline(), earliest);
        } else if let Some(earliest) = earliest {
            let next = self.ch.next_deadline().expect("a deadline");
            assert!(next <= earliest);
        }
    }

    /// Removes every consumer, then delivers and finishes everything left.
    fn drain(&mut self) {
        let ids: Vec<ConsumerId> = self.consumers.keys().copied().collect();
        for id in ids {
            self.remove(id);
            self.check();
        }
        self.add(DRAINER, secs(1));
        self.set_rdy(DRAINER, 1_000_000);
        let mut drained = false;
        for _ in 0..10 {
            self.advance(secs(3600));
            let n = self.take(DRAINER, usize::MAX, false);
            let mine: Vec<u64> = self.held.keys().copied().collect();
            for offset in mine {
                self.fin(DRAINER, offset);
            }
            self.check();
            let log_end = self.log.end();
            if n == 0 && self.ch.deferred_count() == 0 && self.ch.depth(log_end) == 0 {
                drained = true;
                break;
            }
        }
        assert!(drained, "the channel did not drain");
        assert_eq!(self.ch.in_flight_count(), 0);
        let settled: BTreeSet<u64> = self.finished.union(&self.dead).copied().collect();
        assert_eq!(
            settled, self.published,
            "every message finished or dead-lettered"
        );
        assert!(self.finished.is_disjoint(&self.dead));
        let entered = self.ch.counters().message_count;
        assert_eq!(entered, self.published.len() as u64, "each entered once");
        assert_eq!(self.ch.ack_floor(), self.log.end());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_deliver_every_message_at_least_once_and_settle_it_once(
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let mut m = Machine::new();
        for op in &ops {
            m.apply(op);
            m.check();
        }
        m.drain();
    }
}
