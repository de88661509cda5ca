//! Every transition of the breaker, on a clock the tests move: no sleeping.

use std::sync::Barrier;

use super::*;

fn breaker(settings: BreakerSettings) -> (Breaker, Tally, Arc<ManualClock>) {
    let clock = ManualClock::new();
    let breaker = Breaker::new(settings, clock.clone(), "test".into());
    (breaker, Tally::default(), clock)
}

/// Makes one call while closed, with `outcome`.
fn call(breaker: &Breaker, tally: &mut Tally, outcome: Outcome) {
    let ticket = breaker.admit().unwrap();
    assert!(!ticket.is_trial(), "closed: {:?}", breaker.status());
    breaker.record(tally, ticket, outcome);
}

fn state(breaker: &Breaker) -> BreakerState {
    breaker.status().state
}

/// The cool-down of the opening in force: next trial minus since.
fn cool_down(breaker: &Breaker) -> Duration {
    let status = breaker.status();
    let next = status.next_trial_ms.unwrap_or_else(|| panic!("{status:?}"));
    Duration::from_millis(next - status.since_ms)
}

fn retry_in(refusal: Result<Ticket<'_>, PluginFault>) -> Duration {
    match refusal {
        Err(PluginFault::BreakerOpen { retry_in }) => retry_in,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Opens a default breaker with five faults in a row.
fn opened() -> (Breaker, Tally, Arc<ManualClock>) {
    let (breaker, mut tally, clock) = breaker(BreakerSettings::default());
    for _ in 0..5 {
        call(&breaker, &mut tally, Outcome::Fault);
    }
    assert_eq!(state(&breaker), BreakerState::Open);
    (breaker, tally, clock)
}

#[test]
fn closed_breaker_opens_after_consecutive_faults() {
    let (breaker, mut tally, _clock) = breaker(BreakerSettings::default());
    for _ in 0..4 {
        call(&breaker, &mut tally, Outcome::Fault);
    }
    call(&breaker, &mut tally, Outcome::Success);
    for _ in 0..4 {
        call(&breaker, &mut tally, Outcome::Fault);
    }
    assert_eq!(
        state(&breaker),
        BreakerState::Closed,
        "a success broke the run"
    );

    call(&breaker, &mut tally, Outcome::Fault);
    let status = breaker.status();
    assert_eq!((status.state, status.openings), (BreakerState::Open, 1));
    assert_eq!(cool_down(&breaker), Duration::from_secs(1));
    assert_eq!(retry_in(breaker.admit()), Duration::from_secs(1));
}

#[test]
fn outcomes_that_blame_nobody_neither_count_nor_break_a_run() {
    let (breaker, mut tally, _clock) = breaker(BreakerSettings::default());
    for _ in 0..4 {
        call(&breaker, &mut tally, Outcome::Fault);
    }
    for _ in 0..100 {
        call(&breaker, &mut tally, Outcome::Neutral);
    }
    assert_eq!(state(&breaker), BreakerState::Closed);
    call(&breaker, &mut tally, Outcome::Fault);
    assert_eq!(
        state(&breaker),
        BreakerState::Open,
        "five plugin faults in a row"
    );
}

#[test]
fn closed_breaker_opens_when_most_calls_in_the_window_fault() {
    let (breaker, mut tally, clock) = breaker(BreakerSettings::default());
    // Never two faults in a row; half of 20 calls is not more than half.
    for _ in 0..10 {
        call(&breaker, &mut tally, Outcome::Fault);
        call(&breaker, &mut tally, Outcome::Success);
        clock.advance(Duration::from_millis(100));
    }
    assert_eq!(state(&breaker), BreakerState::Closed, "10 of 20");
    call(&breaker, &mut tally, Outcome::Fault);
    assert_eq!(state(&breaker), BreakerState::Open, "11 of 21");
    assert_eq!(breaker.status().openings, 1);
}

#[test]
fn the_fault_rate_counts_only_the_window_and_needs_its_minimum_of_calls() {
    let settings = BreakerSettings {
        consecutive_faults: 0,
        ..BreakerSettings::default()
    };
    let (breaker, mut tally, clock) = breaker(settings);
    for _ in 0..19 {
        call(&breaker, &mut tally, Outcome::Fault);
    }
    assert_eq!(
        state(&breaker),
        BreakerState::Closed,
        "19 calls are too few"
    );
    // The window slides past them: the next 19 faults are alone in it again.
    clock.advance(Duration::from_secs(10));
    for _ in 0..19 {
        call(&breaker, &mut tally, Outcome::Fault);
    }
    assert_eq!(
        state(&breaker),
        BreakerState::Closed,
        "the first 19 slid out"
    );
    call(&breaker, &mut tally, Outcome::Fault);
    assert_eq!(state(&breaker), BreakerState::Open, "20 of 20");
}

#[test]
fn a_batch_counts_as_the_calls_it_replaces() {
    let settings = BreakerSettings {
        consecutive_faults: 0,
        ..BreakerSettings::default()
    };
    let (breaker, mut tally, _clock) = breaker(settings);
    breaker.record_successes(&mut tally, 20);
    for _ in 0..20 {
        call(&breaker, &mut tally, Outcome::Fault);
    }
    assert_eq!(state(&breaker), BreakerState::Closed, "20 of 40");
    call(&breaker, &mut tally, Outcome::Fault);
    assert_eq!(state(&breaker), BreakerState::Open, "21 of 41");
}

#[test]
fn open_breaker_refuses_until_its_cool_down_is_over_then_lets_one_trial_through() {
    let (breaker, _tally, clock) = opened();
    clock.advance(Duration::from_millis(999));
    assert_eq!(retry_in(breaker.admit()), Duration::from_millis(1));
    assert_eq!(state(&breaker), BreakerState::Open);

    clock.advance(Duration::from_millis(1));
    let trial = breaker.admit().unwrap();
    assert!(trial.is_trial());
    let status = breaker.status();
    assert_eq!(status.state, BreakerState::HalfOpen);
    assert_eq!(status.next_trial_ms, None);
    assert_eq!(
        retry_in(breaker.admit()),
        Duration::ZERO,
        "one trial at a time: the others get the policy"
    );
    drop(trial);
}

#[test]
fn half_open_breaker_closes_on_a_good_trial() {
    let (breaker, mut tally, clock) = opened();
    clock.advance(Duration::from_secs(1));
    let trial = breaker.admit().unwrap();
    breaker.record(&mut tally, trial, Outcome::Success);

    let status = breaker.status();
    assert_eq!(status.state, BreakerState::Closed);
    assert_eq!(status.next_trial_ms, None);
    assert_eq!(status.openings, 1);
    assert!(!breaker.admit().unwrap().is_trial());
    // It counts afresh: the faults before it opened are forgotten.
    for _ in 0..4 {
        call(&breaker, &mut tally, Outcome::Fault);
    }
    assert_eq!(state(&breaker), BreakerState::Closed);
}

#[test]
fn half_open_breaker_opens_again_with_a_doubled_cool_down_up_to_the_longest() {
    let (breaker, mut tally, clock) = opened();
    let mut expected = Vec::new();
    let mut seen = Vec::new();
    for secs in [1, 2, 4, 8, 16, 32, 60, 60] {
        expected.push(Duration::from_secs(secs));
        seen.push(cool_down(&breaker));
        clock.advance(Duration::from_secs(secs));
        let trial = breaker.admit().unwrap();
        assert!(trial.is_trial());
        breaker.record(&mut tally, trial, Outcome::Fault);
        assert_eq!(state(&breaker), BreakerState::Open);
    }
    assert_eq!(seen, expected);
    assert_eq!(breaker.status().openings, 9);
}

#[test]
fn the_cool_down_starts_over_once_the_breaker_stayed_closed_long_enough() {
    let (breaker, mut tally, clock) = opened();
    let reopen = |tally: &mut Tally| {
        for _ in 0..5 {
            call(&breaker, tally, Outcome::Fault);
        }
        cool_down(&breaker)
    };
    let trial = |tally: &mut Tally, outcome: Outcome| {
        clock.advance(cool_down(&breaker));
        let trial = breaker.admit().unwrap();
        breaker.record(tally, trial, outcome);
    };
    trial(&mut tally, Outcome::Fault);
    assert_eq!(cool_down(&breaker), Duration::from_secs(2));
    trial(&mut tally, Outcome::Success);
    assert_eq!(
        reopen(&mut tally),
        Duration::from_secs(4),
        "closed only briefly: still in a row"
    );
    trial(&mut tally, Outcome::Success);
    clock.advance(Duration::from_secs(60));
    assert_eq!(reopen(&mut tally), Duration::from_secs(1), "starts over");
}

#[test]
fn a_trial_without_an_outcome_gives_its_place_back() {
    let (breaker, mut tally, clock) = opened();
    clock.advance(Duration::from_secs(1));
    let trial = breaker.admit().unwrap();
    breaker.record(&mut tally, trial, Outcome::Neutral);
    assert_eq!(state(&breaker), BreakerState::Open);
    assert_eq!(cool_down(&breaker), Duration::ZERO, "due at once");

    let trial = breaker.admit().unwrap();
    assert!(trial.is_trial(), "the next caller makes the trial");
    drop(trial);
    let trial = breaker.admit().unwrap();
    assert!(trial.is_trial(), "so does the next after a dropped one");
    breaker.record(&mut tally, trial, Outcome::Success);
    let status = breaker.status();
    assert_eq!((status.state, status.openings), (BreakerState::Closed, 1));
}

#[test]
fn only_one_of_many_concurrent_callers_gets_the_trial() {
    let (breaker, _tally, clock) = opened();
    clock.advance(Duration::from_secs(1));
    let threads = 8;
    let start = Barrier::new(threads);
    let trials: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    // Keep a won trial until every thread has asked.
                    let ticket = breaker.admit();
                    start.wait();
                    usize::from(ticket.is_ok_and(|t| t.is_trial()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(trials, 1);
}

#[test]
fn a_disabled_breaker_never_opens() {
    let settings = BreakerSettings {
        enabled: false,
        ..BreakerSettings::default()
    };
    let (breaker, mut tally, _clock) = breaker(settings);
    for _ in 0..100 {
        call(&breaker, &mut tally, Outcome::Fault);
    }
    assert_eq!(breaker.status().openings, 0);
}

#[test]
fn status_times_are_unix_milliseconds() {
    let (breaker, _tally, _clock) = opened();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let status = breaker.status();
    assert!(status.since_ms <= now_ms, "{status:?}");
    assert!(now_ms - status.since_ms < 60_000, "{status:?}");
    let json = serde_json::to_value(status).unwrap();
    assert_eq!(json["state"], "open");
    assert_eq!(json["next_trial_ms"], status.since_ms + 1000);
    assert_eq!(
        serde_json::to_value(BreakerState::HalfOpen).unwrap(),
        "half-open"
    );
}
