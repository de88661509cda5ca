//! RDY and take: credit limits, delivery order, deadlines and attempts on delivery, and each
//! consumer's fair share of what is ready.

use super::*;

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

/// Keeps even-numbered messages (`m0`, `m2`, ...) and skips the rest.
fn even_only(m: &StoredMessage) -> Verdict {
    let n: u64 = std::str::from_utf8(&m.body[1..]).unwrap().parse().unwrap();
    if n.is_multiple_of(2) {
        Verdict::Keep
    } else {
        Verdict::Skip
    }
}

#[test]
fn skipped_messages_are_passed_over_once_and_never_pending() {
    let mut f = Fixture::new(10);
    f.verdict = even_only;
    f.publish(6);
    assert_eq!(f.take(A, f.t0), [0, 2, 4]);
    assert_eq!(f.ch.counters().skipped, 3);
    assert_eq!(f.ch.counters().message_count, 3);
    assert_eq!(f.depth(), 0);
    for o in [0, 2, 4] {
        f.fin(A, o).unwrap();
    }
    assert_eq!(f.ch.ack_floor(), 6, "skipped messages hold nothing back");
    // A requeued message is not put to the verdict again.
    f.verdict = |_| Verdict::Skip;
    f.publish(1);
    assert!(f.take(A, f.t0).is_empty());
    assert_eq!(f.ch.counters().skipped, 4);
}

#[test]
fn requeued_messages_are_not_judged_again() {
    let mut f = Fixture::new(10);
    f.publish(2);
    assert_eq!(f.take(A, f.t0), [0, 1]);
    f.verdict = |_| Verdict::Skip;
    f.req(A, 0, Duration::ZERO, f.t0).unwrap();
    assert_eq!(f.take(A, f.t0), [0], "kept when first judged; stays kept");
}

#[test]
fn dead_lettered_verdicts_wait_pending_until_the_copy_is_durable() {
    let mut f = Fixture::new(10);
    f.verdict = |m| {
        if &m.body[..] == b"m1" {
            Verdict::DeadLetter
        } else {
            Verdict::Keep
        }
    };
    f.publish(3);
    assert_eq!(f.take(A, f.t0), [0, 2]);
    assert_eq!(
        f.gated,
        [DeadLetter {
            offset: 1,
            attempts: 0,
            reason: DeadReason::Filter
        }]
    );
    assert_eq!(f.ch.counters().dead_lettered, 1);
    f.fin(A, 0).unwrap();
    f.fin(A, 2).unwrap();
    assert_eq!(
        f.ch.ack_floor(),
        1,
        "held until the dead-letter copy is stored"
    );
    let record = f.ch.snapshot(f.t0);
    assert!(record.pending.contains_key(&1), "saved as pending");
    f.ch.dead_settled(1);
    assert_eq!(f.ch.ack_floor(), 3);
}

#[test]
fn a_long_skipped_run_stops_at_the_scan_budget_and_resumes() {
    let mut f = Fixture::new(10);
    f.verdict = |m| {
        if &m.body[..] == b"m5000" {
            Verdict::Keep
        } else {
            Verdict::Skip
        }
    };
    f.publish(5001);
    assert!(f.take(A, f.t0).is_empty());
    assert!(f.ch.stopped_early(), "stopped with credit left");
    assert_eq!(f.ch.counters().skipped as usize, super::super::SCAN_BUDGET);
    assert_eq!(f.take(A, f.t0), [5000]);
    assert!(!f.ch.stopped_early());
}
