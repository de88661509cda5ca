//! max_attempts and dead letters: whichever way the last attempt ends (REQ, delayed REQ,
//! timeout or disconnect), the message is dead-lettered once and never delivered again.

use super::*;

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
    assert_eq!(
        f.ch.ack_floor(),
        0,
        "held until the dead-letter copy is durable"
    );
    f.ch.dead_settled(0);
    assert_eq!(f.ch.ack_floor(), 2);
    assert_eq!(f.ch.next_deadline(), None);
}

#[test]
fn a_dead_letter_that_could_not_be_stored_comes_back_later() {
    let mut f = on_last_attempt();
    let dead = f.req(A, 0, Duration::ZERO, f.t0);
    assert_eq!(dead.map(|d| d.map(|d| d.offset)), Ok(Some(0)));
    f.ch.dead_failed(0, secs(5), f.t0);
    assert_eq!(f.ch.deferred_count(), 1);
    assert_eq!(
        f.take(A, f.at(secs(4))),
        [1],
        "only the other message is ready"
    );
    f.fin(A, 1).expect("fin");
    f.expire(f.at(secs(5)));
    assert_eq!(f.take(A, f.at(secs(5))), [0]);
    // Its attempts were kept, so the next failure dead-letters it again.
    let dead = f.req(A, 0, Duration::ZERO, f.at(secs(5)));
    assert_eq!(dead.map(|d| d.map(|d| d.attempts)), Ok(Some(4)));
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
