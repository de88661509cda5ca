//! Consumers coming and going: disconnects, pausing and closing.

use super::*;

// ---------------------------------------------------------------------------------------------
// Disconnect
// ---------------------------------------------------------------------------------------------

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
