//! What the channel holds back or still owes: DPUB messages not yet due, EMPTY, the ack floor,
//! depth, the next deadline for the timer, and logs trimmed under the channel.

use super::*;

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
