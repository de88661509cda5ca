//! Ordered channels: one message of a key at a time, back to the head of its key on REQ,
//! timeout and disconnect, released by FIN or a durable dead letter, and rebuilt in order by a
//! restore.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::broker::ordering::WINDOW_MIN;
use crate::message::{HeaderName, OrderBy};
use crate::storage::ChannelOptions;

const HEADER: &str = "user";

fn by_key() -> OrderBy {
    OrderBy::Key(HeaderName::new(HEADER).unwrap())
}

impl Fixture {
    /// A fixture whose channel is ordered as given.
    fn ordered(rdy: u32, ordering: OrderBy) -> Self {
        let mut f = Fixture::new(rdy);
        f.order(ordering);
        f
    }

    fn order(&mut self, ordering: OrderBy) {
        let options = ChannelOptions {
            ordering,
            ..self.ch.options()
        };
        self.ch.set_options(options);
    }

    /// Appends one message per key (`None`: without the header), bodies `m<offset>`.
    fn publish_keyed(&self, keys: &[Option<&str>]) -> Range<u64> {
        let end = self.log.end();
        let messages = keys
            .iter()
            .zip(end..)
            .map(|(key, o)| {
                let mut m = stored(0, format!("m{o}"));
                if let Some(key) = key {
                    m.headers.push(HEADER, *key);
                }
                m
            })
            .collect();
        self.log.append(messages).expect("append")
    }
}

#[test]
fn one_message_of_a_key_is_out_at_a_time_and_fin_releases_the_next() {
    let mut f = Fixture::ordered(10, by_key());
    f.publish_keyed(&[Some("a"), Some("b"), Some("a"), Some("b"), Some("a"), None]);
    assert_eq!(
        f.take(A, f.t0),
        vec![0, 1, 5],
        "the unkeyed message is not held back"
    );
    assert_eq!((f.ch.active_keys(), f.ch.waiting_on_key()), (2, 3));
    assert_eq!(f.depth(), 3, "waiting messages count in the depth");
    assert!(f.take(A, f.t0).is_empty(), "both keys are held");
    f.fin(A, 0).unwrap();
    assert!(f.ch.take_released(), "the consumers are to be woken");
    assert!(!f.ch.take_released(), "once");
    assert_eq!(f.take(A, f.t0), vec![2]);
    f.fin(A, 1).unwrap();
    f.fin(A, 2).unwrap();
    assert_eq!(f.take(A, f.t0), vec![3, 4]);
    f.fin(A, 3).unwrap();
    f.fin(A, 4).unwrap();
    f.fin(A, 5).unwrap();
    assert_eq!(
        (f.ch.active_keys(), f.ch.waiting_on_key()),
        (0, 0),
        "keys cost nothing idle"
    );
    assert_eq!(f.ch.ack_floor(), 6);
}

#[test]
fn req_timeout_and_disconnect_put_a_message_back_at_the_head_of_its_key() {
    let mut f = Fixture::ordered(10, by_key());
    f.add(B, 10, TIMEOUT);
    f.publish_keyed(&[Some("a"), Some("a"), Some("a")]);
    assert_eq!(f.take(A, f.t0), vec![0]);
    // REQ with a delay holds the key for that long.
    assert_eq!(f.req(A, 0, secs(5), f.t0), Ok(None));
    assert!(f.take(B, f.at(secs(4))).is_empty());
    f.expire(f.at(secs(5)));
    assert_eq!(f.take(B, f.at(secs(5))), vec![0]);
    // A timeout redelivers the same message, not the next one.
    let late = f.at(secs(5) + TIMEOUT);
    assert_eq!(f.expire(late).ready, 1);
    assert_eq!(f.take(A, late), vec![0]);
    // So does a disconnect.
    assert!(f.ch.remove_consumer(A, late).is_empty());
    f.ch.check_invariants();
    assert_eq!(f.take(B, late), vec![0]);
    f.fin(B, 0).unwrap();
    assert_eq!(f.take(B, late), vec![1]);
}

#[test]
fn a_dead_letter_releases_its_key_once_its_copy_is_durable() {
    let mut f = Fixture::ordered(10, by_key());
    f.ch.max_attempts = 1;
    f.publish_keyed(&[Some("a"), Some("a")]);
    assert_eq!(f.take(A, f.t0), vec![0]);
    let dead = f.req(A, 0, Duration::ZERO, f.t0).unwrap();
    assert_eq!(dead.map(|d| d.offset), Some(0));
    assert!(f.take(A, f.t0).is_empty(), "held until the copy is stored");
    f.ch.dead_failed(0, secs(5), f.t0);
    f.ch.check_invariants();
    assert!(
        f.take(A, f.at(secs(1))).is_empty(),
        "a failed copy keeps its place"
    );
    f.expire(f.at(secs(5)));
    assert_eq!(f.take(A, f.at(secs(5))), vec![0]);
    let dead = f.req(A, 0, Duration::ZERO, f.at(secs(5))).unwrap();
    assert!(dead.is_some());
    f.ch.dead_settled(0);
    f.ch.check_invariants();
    assert!(f.ch.take_released());
    assert_eq!(f.take(A, f.at(secs(5))), vec![1]);
}

#[test]
fn channel_ordering_is_one_message_at_a_time() {
    let mut f = Fixture::ordered(10, OrderBy::Channel);
    f.add(B, 10, TIMEOUT);
    f.publish_keyed(&[Some("a"), None, Some("b")]);
    assert_eq!(f.take(A, f.t0), vec![0]);
    assert!(f.take(B, f.t0).is_empty());
    f.fin(A, 0).unwrap();
    assert_eq!(f.take(B, f.t0), vec![1]);
    f.fin(B, 1).unwrap();
    assert_eq!(f.take(A, f.t0), vec![2]);
}

#[test]
fn a_skipped_message_does_not_hold_its_key() {
    let mut f = Fixture::ordered(10, by_key());
    f.verdict = |m| {
        if m.body.as_ref() == b"m0" {
            Verdict::Skip
        } else {
            Verdict::Keep
        }
    };
    f.publish_keyed(&[Some("a"), Some("a")]);
    assert_eq!(f.take(A, f.t0), vec![1]);
}

#[test]
fn the_next_message_of_a_key_keeps_its_dpub_delay() {
    let mut f = Fixture::ordered(10, by_key());
    f.publish_keyed(&[Some("a")]);
    let mut late = stored(WALL0 + 5_000, "late".into());
    late.headers.push(HEADER, "a");
    f.log.append(vec![late]).unwrap();
    assert_eq!(f.take(A, f.t0), vec![0]);
    f.fin(A, 0).unwrap();
    assert!(f.take(A, f.at(secs(1))).is_empty(), "not due yet");
    assert_eq!(f.ch.deferred_count(), 1);
    f.expire(f.at(secs(5)));
    assert_eq!(f.take(A, f.at(secs(5))), vec![1]);
}

#[test]
fn a_restore_gives_each_key_its_oldest_unfinished_message_first() {
    let mut f = Fixture::ordered(10, by_key());
    f.publish_keyed(&[Some("a"), Some("b"), Some("a"), Some("b"), Some("a")]);
    assert_eq!(f.take(A, f.t0), vec![0, 1]);
    f.req(A, 0, secs(30), f.t0).unwrap();
    f.fin(A, 1).unwrap();
    assert_eq!(f.take(A, f.t0), vec![3]);
    let record = f.ch.snapshot(f.t0);
    assert_eq!(record.options.ordering, by_key());
    let mut restored = ChannelState::restore(&record, &*f.log, f.at(secs(1)));
    restored.check_invariants();
    restored.add_consumer(A, TIMEOUT);
    restored.set_rdy(A, 10);
    assert_eq!((restored.active_keys(), restored.waiting_on_key()), (2, 2));
    f.ch = restored;
    assert_eq!(
        f.take(A, f.at(secs(1))),
        vec![3],
        "key a waits for its deferred head"
    );
    f.fin(A, 3).unwrap();
    f.expire(f.at(secs(30)));
    assert_eq!(f.take(A, f.at(secs(30))), vec![0]);
    f.fin(A, 0).unwrap();
    assert_eq!(f.take(A, f.at(secs(30))), vec![2]);
}

#[test]
fn the_cursor_stops_when_the_window_of_waiting_messages_is_full() {
    let mut f = Fixture::ordered(10, OrderBy::Channel);
    // One key: the window is at its least.
    let n = WINDOW_MIN as u64 + 10;
    f.publish(n);
    assert_eq!(f.take(A, f.t0), vec![0]);
    // Each take reads at most SCAN_BUDGET; take until the window stops the cursor.
    while f.ch.cursor() < n && f.ch.waiting_on_key() < WINDOW_MIN {
        assert!(f.take(A, f.t0).is_empty());
    }
    assert_eq!(f.ch.waiting_on_key(), WINDOW_MIN);
    assert_eq!(f.ch.cursor(), WINDOW_MIN as u64 + 1);
    assert_eq!(f.depth(), n - 1, "nothing is lost from the depth");
    f.fin(A, 0).unwrap();
    assert_eq!(f.take(A, f.t0), vec![1]);
    assert!(f.take(A, f.t0).is_empty());
    let full = WINDOW_MIN as u64 + 1;
    assert_eq!(f.ch.cursor(), full, "no read for one released message");
    // Once a quarter of the window is released, the cursor reads on, in one run.
    // (Without the invariant checks of every step, which read the whole window.)
    let mut next = 1;
    while f.ch.cursor() == full {
        f.ch.fin(A, next).unwrap();
        next += 1;
        let mut out = Vec::new();
        let mut keep = |_: u64, _: &StoredMessage| Verdict::Keep;
        f.ch.take(
            A,
            &*f.log,
            f.t0,
            false,
            10,
            &mut keep,
            &mut out,
            &mut Vec::new(),
        );
        assert_eq!(offsets(&out), vec![next]);
    }
    f.ch.check_invariants();
    // Offsets 0 to next - 1 were finished or are out: a quarter of the window released.
    assert_eq!(next, WINDOW_MIN as u64 / 4);
    assert_eq!(f.ch.cursor(), n, "the rest of the log is read");
    assert_eq!(f.depth(), n - next - 1);
}

#[test]
fn turning_ordering_off_releases_what_waited() {
    let mut f = Fixture::ordered(10, by_key());
    f.publish_keyed(&[Some("a"), Some("a"), Some("a")]);
    assert_eq!(f.take(A, f.t0), vec![0]);
    f.order(OrderBy::Unordered);
    assert!(f.ch.take_released());
    assert_eq!(f.take(A, f.t0), vec![1, 2]);
    assert_eq!(f.ch.active_keys(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Take(ConsumerId),
    Fin(usize),
    Req(usize, u64),
    Advance(u64),
    Reconnect(ConsumerId),
    Restore,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![Just(A), Just(B), Just(C)].prop_map(Op::Take),
        4 => any::<usize>().prop_map(Op::Fin),
        2 => (any::<usize>(), 0u64..3).prop_map(|(i, s)| Op::Req(i, s)),
        1 => (1u64..15).prop_map(Op::Advance),
        1 => prop_oneof![Just(A), Just(B), Just(C)].prop_map(Op::Reconnect),
        1 => Just(Op::Restore),
    ]
}

proptest! {
    /// Whatever consumers do, a key never has two messages out, and each key's messages are
    /// finished in publish order, each exactly once.
    #[test]
    fn keys_are_finished_in_publish_order(
        keys in proptest::collection::vec(0u8..5, 1..60),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let mut f = Fixture::ordered(3, by_key());
        f.add(B, 2, TIMEOUT);
        f.add(C, 4, TIMEOUT);
        let names: Vec<String> = keys.iter().map(|k| format!("k{k}")).collect();
        let key_refs: Vec<Option<&str>> = names.iter().map(|k| Some(k.as_str())).collect();
        f.publish_keyed(&key_refs);
        let key_of = |o: u64| keys[o as usize];
        let mut now = f.t0;
        let mut out: BTreeMap<u64, ConsumerId> = BTreeMap::new();
        let mut finished: HashMap<u8, Vec<u64>> = HashMap::new();
        let run = |op: &Op, f: &mut Fixture, now: &mut Now, out: &mut BTreeMap<u64, ConsumerId>,
                   finished: &mut HashMap<u8, Vec<u64>>| {
            match *op {
                Op::Take(id) => {
                    for o in f.take(id, *now) {
                        out.insert(o, id);
                    }
                }
                Op::Fin(i) if !out.is_empty() => {
                    let (&o, &id) = out.iter().nth(i % out.len()).unwrap();
                    out.remove(&o);
                    f.fin(id, o).unwrap();
                    finished.entry(key_of(o)).or_default().push(o);
                }
                Op::Req(i, s) if !out.is_empty() => {
                    let (&o, &id) = out.iter().nth(i % out.len()).unwrap();
                    out.remove(&o);
                    f.req(id, o, secs(s), *now).unwrap();
                }
                Op::Advance(s) => {
                    *now = now.plus(secs(s));
                    f.expire(*now);
                    // What timed out is no longer out.
                    out.retain(|o, _| f.ch.in_flight.contains_key(o));
                }
                Op::Reconnect(id) => {
                    f.ch.remove_consumer(id, *now);
                    f.ch.check_invariants();
                    out.retain(|_, c| *c != id);
                    f.add(id, 3, TIMEOUT);
                }
                Op::Restore => {
                    let record = f.ch.snapshot(*now);
                    f.ch = ChannelState::restore(&record, &*f.log, *now);
                    f.ch.check_invariants();
                    out.clear();
                    f.add(A, 3, TIMEOUT);
                    f.add(B, 2, TIMEOUT);
                    f.add(C, 4, TIMEOUT);
                }
                _ => {}
            }
        };
        for op in &ops {
            run(op, &mut f, &mut now, &mut out, &mut finished);
            let mut seen = std::collections::HashSet::new();
            for &o in out.keys() {
                prop_assert!(seen.insert(key_of(o)), "two messages of key {} out", key_of(o));
            }
        }
        // Drain: everything is finished exactly once, in order per key.
        for _ in 0..10_000 {
            if f.ch.ack_floor() == f.log.end() {
                break;
            }
            now = now.plus(secs(20));
            f.expire(now);
            out.retain(|o, _| f.ch.in_flight.contains_key(o));
            run(&Op::Take(A), &mut f, &mut now, &mut out, &mut finished);
            while !out.is_empty() {
                run(&Op::Fin(0), &mut f, &mut now, &mut out, &mut finished);
            }
        }
        prop_assert_eq!(f.ch.ack_floor(), f.log.end());
        let mut total = 0;
        for (key, done) in &finished {
            let expected: Vec<u64> = (0..keys.len() as u64).filter(|&o| key_of(o) == *key).collect();
            prop_assert_eq!(done, &expected, "key {}", key);
            total += done.len();
        }
        prop_assert_eq!(total, keys.len());
    }
}
