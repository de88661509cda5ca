//! Settling messages: FIN, REQ (with and without delay), deadlines and TOUCH.

use super::*;

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
