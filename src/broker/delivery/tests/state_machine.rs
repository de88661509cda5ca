//! State machine: random operations against a model of who holds what, then a drain that checks
//! every published message was finished or dead-lettered exactly once.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

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
    /// The channel's events replayed, as a store would on recovery.
    journal: ChannelRecord,
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
            journal: ChannelRecord::default(),
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
            // The copy is durable at once here; the journal must settle it only now.
            self.ch.dead_settled(d.offset);
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
        let n = self.ch.take(
            id,
            &*self.log,
            self.now,
            topic_paused,
            max,
            &mut |_, _| Verdict::Keep,
            &mut out,
            &mut Vec::new(),
        );
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

        self.check_journal();

        let earliest = self.held.values().map(|h| h.deadline).min();
        if self.ch.deferred_count() == 0 {
            assert_eq!(self.ch.next_deadline(), earliest);
        } else if let Some(earliest) = earliest {
            let next = self.ch.next_deadline().expect("a deadline");
            assert!(next <= earliest);
        }
    }

    /// The events replayed give the same cursor and pending set as a snapshot, and a channel
    /// restored from the snapshot saves the same state again.
    fn check_journal(&mut self) {
        for event in self.ch.events.drain(..) {
            self.journal.apply(&event);
        }
        let wall = self.now.wall_ms;
        let normalize = |r: &ChannelRecord| {
            let pending: Vec<(u64, u16, u64)> = r
                .pending
                .iter()
                .map(|(&o, e)| (o, e.attempts, if e.due_ms <= wall { 0 } else { e.due_ms }))
                .collect();
            (r.cursor, pending)
        };
        let snapshot = self.ch.snapshot(self.now);
        assert_eq!(
            normalize(&self.journal),
            normalize(&snapshot),
            "journal replay"
        );
        let restored = ChannelState::restore(&snapshot, &*self.log, self.now);
        restored.check_invariants();
        assert_eq!(restored.in_flight_count(), 0);
        assert_eq!(
            normalize(&restored.snapshot(self.now)),
            normalize(&snapshot),
            "restore"
        );
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
