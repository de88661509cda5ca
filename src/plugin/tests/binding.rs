//! A binding keeps serving across faults, backs off, counts, and serializes threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{host, load, params, TestMessage};
use crate::plugin::breaker::ManualClock;
use crate::plugin::{
    Binding, BindingStats, BreakerSettings, BreakerState, PluginError, PluginFault, PluginHost,
    PluginKind, PluginLimits, TimeoutKind,
};

fn binding(host: &PluginHost, name: &str, kind: PluginKind, pairs: &[(&str, &str)]) -> Binding {
    Binding::new(load(host, name, kind), params(pairs)).unwrap()
}

/// Waits out the backoff that `fault` announces.
fn wait_out(fault: &PluginFault) {
    let PluginFault::Unavailable { retry_in, .. } = fault else {
        panic!("expected Unavailable, got {fault:?}");
    };
    std::thread::sleep(*retry_in + Duration::from_millis(2));
}

#[test]
fn binding_restarts_a_trapping_plugin_after_a_doubling_backoff() {
    let host = host();
    let binding = binding(&host, "trap", PluginKind::Filter, &[]);
    let msg = TestMessage::new(b"x");

    assert!(matches!(
        binding.keep(&msg.view()),
        Err(PluginFault::Trap(_))
    ));
    let first = binding.keep(&msg.view()).unwrap_err();
    let PluginFault::Unavailable { retry_in, reason } = &first else {
        panic!("expected Unavailable, got {first:?}");
    };
    assert!(*retry_in <= Duration::from_millis(10), "{retry_in:?}");
    assert!(reason.contains("refuses message"), "{reason}");

    wait_out(&first);
    assert!(
        matches!(binding.keep(&msg.view()), Err(PluginFault::Trap(_))),
        "a new instance ran the guest again"
    );
    let second = binding.keep(&msg.view()).unwrap_err();
    let PluginFault::Unavailable { retry_in, .. } = second else {
        panic!("expected Unavailable, got {second:?}");
    };
    assert!(
        retry_in > Duration::from_millis(10),
        "doubled: {retry_in:?}"
    );
    assert!(retry_in <= Duration::from_millis(20), "{retry_in:?}");

    let stats = binding.stats();
    assert!(stats.busy_ns > 0, "the calls took time");
    assert_eq!(
        stats,
        BindingStats {
            calls: 4,
            traps: 2,
            unavailable: 2,
            reinstantiations: 1,
            busy_ns: stats.busy_ns,
            ..BindingStats::default()
        }
    );
}

#[test]
fn binding_counts_timeouts_and_out_of_memory() {
    let limits = PluginLimits {
        call_timeout: Duration::from_secs(2),
        ..PluginLimits::default()
    };
    let roomy = PluginHost::new(limits, None).unwrap();
    let hog = binding(&roomy, "hog", PluginKind::Filter, &[]);
    // Only its CPU budget may stop the spin: the backstop is far away.
    let budgeted = PluginHost::new(
        PluginLimits {
            wall_timeout: Some(Duration::from_secs(60)),
            ..PluginLimits::default()
        },
        None,
    )
    .unwrap();
    let spin = binding(&budgeted, "spin", PluginKind::Filter, &[]);
    let msg = TestMessage::new(b"x");

    assert_eq!(hog.keep(&msg.view()), Err(PluginFault::OutOfMemory));
    assert_eq!(
        spin.keep(&msg.view()),
        Err(PluginFault::Timeout(TimeoutKind::Cpu))
    );
    let unavailable = spin.keep(&msg.view()).unwrap_err();
    wait_out(&unavailable);
    assert_eq!(
        spin.keep(&msg.view()),
        Err(PluginFault::Timeout(TimeoutKind::Cpu))
    );

    assert_eq!(hog.stats().out_of_memory, 1);
    let spin = spin.stats();
    assert_eq!((spin.cpu_timeouts, spin.unavailable), (2, 1));
    assert_eq!(spin.wall_timeouts, 0);
    assert_eq!(spin.reinstantiations, 1);
}

#[test]
fn binding_restarts_at_once_after_a_wall_clock_timeout() {
    // A budget the spin cannot use up before the backstop: what a starved call looks like.
    let limits = PluginLimits {
        call_timeout: Duration::from_secs(30),
        wall_timeout: Some(Duration::from_millis(20)),
        ..PluginLimits::default()
    };
    let host = PluginHost::new(limits, None).unwrap();
    let spin = binding(&host, "spin", PluginKind::Filter, &[]);
    let msg = TestMessage::new(b"x");

    let wall = Err(PluginFault::Timeout(TimeoutKind::Wall));
    assert_eq!(spin.keep(&msg.view()), wall);
    assert_eq!(
        spin.keep(&msg.view()),
        wall,
        "no backoff: not the plugin's doing"
    );

    let stats = spin.stats();
    assert_eq!((stats.wall_timeouts, stats.cpu_timeouts), (2, 0));
    assert_eq!((stats.unavailable, stats.reinstantiations), (0, 1));
}

#[test]
fn batch_stopped_by_the_wall_clock_backstop_is_decided_again_without_backoff() {
    let limits = PluginLimits {
        call_timeout: Duration::from_secs(30),
        wall_timeout: Some(Duration::from_millis(20)),
        ..PluginLimits::default()
    };
    let host = PluginHost::new(limits, None).unwrap();
    let spin = binding(&host, "spin", PluginKind::Filter, &[]);
    let msgs = [TestMessage::new(b"a"), TestMessage::new(b"b")];
    let views: Vec<_> = msgs.iter().map(TestMessage::view).collect();

    let wall = Err(PluginFault::Timeout(TimeoutKind::Wall));
    assert_eq!(spin.keep_batch(&views), [wall.clone(), wall.clone()]);
    assert_eq!(spin.keep_batch(&views), [wall.clone(), wall]);

    // The first batch call, then each message alone; the instance was down when the second
    // batch came, so its messages went one call each at once.
    let stats = spin.stats();
    assert_eq!(stats.batch_faults, 1);
    assert_eq!((stats.wall_timeouts, stats.cpu_timeouts), (4, 0));
    assert_eq!(stats.unavailable, 0, "never waited out a backoff");
}

#[test]
fn binding_restarts_at_once_after_a_body_too_large() {
    let limits = PluginLimits {
        memory_bytes: 4 << 20,
        ..PluginLimits::default()
    };
    let host = PluginHost::new(limits, None).unwrap();
    let pairs = [("field", "a"), ("exists", "true")];
    let filter = binding(&host, "json_filter", PluginKind::Filter, &pairs);
    let big = TestMessage::new(&vec![b' '; 5 << 20]);
    let small = TestMessage::new(br#"{"a":1}"#);

    assert!(matches!(
        filter.keep(&big.view()),
        Err(PluginFault::TooLarge { .. })
    ));
    assert_eq!(filter.keep(&small.view()), Ok(true), "no backoff");
    assert_eq!(filter.keep(&TestMessage::new(b"{}").view()), Ok(false));

    let stats = filter.stats();
    assert_eq!((stats.too_large, stats.kept, stats.skipped), (1, 1, 1));
    assert_eq!(stats.reinstantiations, 1);
}

#[test]
fn binding_is_refused_when_init_refuses() {
    let host = host();
    let err = Binding::new(load(&host, "bad_init", PluginKind::Filter), Vec::new()).unwrap_err();
    assert!(matches!(err, PluginError::Init { .. }), "{err:?}");
}

#[test]
fn binding_counts_router_outcomes() {
    let host = host();
    let pairs = [("header", "region"), ("route.eu", "eu")];
    let router = binding(&host, "header_router", PluginKind::Router, &pairs);

    let eu = router.route(&TestMessage::new(b"").header("region", "eu").view());
    let none = router.route(&TestMessage::new(b"").view());
    let misuse = router.keep(&TestMessage::new(b"").view());

    assert_eq!(eu.unwrap().channels, ["eu"]);
    assert!(none.unwrap().is_unrouted());
    assert!(matches!(misuse, Err(PluginFault::WrongKind { .. })));
    let stats = router.stats();
    assert_eq!(
        (stats.calls, stats.routed, stats.unrouted, stats.wrong_kind),
        (3, 1, 1, 1)
    );
    assert_eq!(stats.reinstantiations, 0, "a misuse does not poison");
}

#[test]
fn binding_serializes_calls_from_several_threads() {
    let host = host();
    let sampler = Arc::new(binding(
        &host,
        "one_in_n",
        PluginKind::Sampler,
        &[("n", "4")],
    ));
    let threads = 4;
    let per_thread = 250;

    std::thread::scope(|scope| {
        for _ in 0..threads {
            let sampler = Arc::clone(&sampler);
            scope.spawn(move || {
                let msg = TestMessage::new(b"x");
                for _ in 0..per_thread {
                    sampler.keep(&msg.view()).unwrap();
                }
            });
        }
    });

    let stats = sampler.stats();
    assert_eq!(stats.calls, threads * per_thread);
    assert_eq!(
        stats.kept,
        threads * per_thread / 4,
        "one counter: exactly 1 in 4"
    );
    assert_eq!(stats.kept + stats.skipped, stats.calls);
}

#[test]
fn binding_stats_serialize_as_json() {
    let stats = BindingStats {
        calls: 3,
        traps: 1,
        ..BindingStats::default()
    };
    let json = serde_json::to_value(stats).unwrap();
    assert_eq!(json["calls"], 3);
    assert_eq!(json["traps"], 1);
    assert_eq!(json["reinstantiations"], 0);
}

/// Per-call cost of a header filter, reading one header and two. Run with
/// `cargo test --release --lib plugin::tests::binding::bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_tag_filter_ns_per_call() {
    let host = host();
    let msg = TestMessage::new(&[b'x'; 100])
        .header("type", "invoice")
        .header("region", "eu")
        .header("trace-id", "0af7651916cd43dd8448eb211c80319c");
    let view = msg.view();
    let rounds = 200_000u32;
    let plugin = load(&host, "tag_filter", PluginKind::Filter);

    for expr in [
        r#"type == "invoice""#,
        r#"type == "invoice" && region in ("eu", "us")"#,
    ] {
        let pairs = params(&[("expr", expr)]);
        let mut instance = host.instantiate(&plugin, &pairs).unwrap();
        let binding = Binding::new(Arc::clone(&plugin), pairs.clone()).unwrap();
        for _ in 0..10_000 {
            instance.keep(&view).unwrap();
        }
        let started = Instant::now();
        for _ in 0..rounds {
            assert!(instance.keep(&view).unwrap());
        }
        let per_call = started.elapsed() / rounds;
        let started = Instant::now();
        for _ in 0..rounds {
            assert!(binding.keep(&view).unwrap());
        }
        let per_binding_call = started.elapsed() / rounds;
        eprintln!(
            "tag_filter {expr:?}: Instance::keep {} ns/call, Binding::keep {} ns/call",
            per_call.as_nanos(),
            per_binding_call.as_nanos(),
        );
    }

    let pairs = params(&[("expr", "exists(type)")]);
    let started = Instant::now();
    for _ in 0..1000 {
        host.instantiate(&plugin, &pairs).unwrap();
    }
    eprintln!(
        "tag_filter: new store + instantiate + init {:?}",
        started.elapsed() / 1000
    );
}

#[test]
fn keep_batch_decides_as_keep_would_one_message_after_another() {
    let host = host();
    let expr = r#"type == "invoice" && region in ("eu", "us")"#;
    let filter = binding(&host, "tag_filter", PluginKind::Filter, &[("expr", expr)]);
    let regions = ["eu", "ap", "us", "eu", "za"];
    let msgs: Vec<TestMessage> = (0..150)
        .map(|i| {
            let kind = if i % 7 == 0 { "order" } else { "invoice" };
            TestMessage::new(b"x")
                .header("type", kind)
                .header("region", regions[i % regions.len()])
        })
        .collect();
    let views: Vec<_> = msgs.iter().map(TestMessage::view).collect();
    let batched: Vec<bool> = filter
        .keep_batch(&views)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let single: Vec<bool> = views.iter().map(|v| filter.keep(v).unwrap()).collect();
    assert_eq!(batched, single);
    let kept = single.iter().filter(|&&k| k).count() as u64;
    let stats = filter.stats();
    assert_eq!((stats.calls, stats.kept), (300, 2 * kept), "{stats:?}");

    // A stateful sampler carries its state through batches as through single calls.
    let sampler = binding(&host, "one_in_n", PluginKind::Sampler, &[("n", "3")]);
    let mut decisions: Vec<bool> = sampler
        .keep_batch(&views[..100])
        .into_iter()
        .map(Result::unwrap)
        .collect();
    decisions.extend(views[100..].iter().map(|v| sampler.keep(v).unwrap()));
    let expected: Vec<bool> = (0..150).map(|i| i % 3 == 0).collect();
    assert_eq!(decisions, expected);
}

#[test]
fn a_faulting_batch_is_decided_again_one_call_each() {
    let host = host();
    let trap = binding(&host, "trap", PluginKind::Filter, &[("on", "poison")]);
    let msgs: Vec<TestMessage> = (0..10)
        .map(|i| match i {
            4 => TestMessage::new(b"x").header("poison", "1"),
            _ => TestMessage::new(b"x"),
        })
        .collect();
    let views: Vec<_> = msgs.iter().map(TestMessage::view).collect();
    let decisions = trap.keep_batch(&views);
    for (i, decision) in decisions.iter().enumerate() {
        match i {
            0..4 => assert_eq!(decision, &Ok(true), "{i}: before the poison"),
            4 => assert!(
                matches!(decision, Err(PluginFault::Trap(_))),
                "{decision:?}"
            ),
            _ => assert!(
                matches!(decision, Err(PluginFault::Unavailable { .. })),
                "{i}: after the trap, in its backoff: {decision:?}"
            ),
        }
    }
    let stats = trap.stats();
    assert_eq!(
        stats,
        BindingStats {
            calls: 10,
            kept: 4,
            traps: 1,
            unavailable: 5,
            reinstantiations: 1,
            batch_faults: 1,
            busy_ns: stats.busy_ns,
            ..BindingStats::default()
        },
        "the batch call itself counts only as a batch fault"
    );

    // On probation, once the backoff is over: the next batch is decided one call each, so
    // the poison traps on its own, without a batch call first.
    std::thread::sleep(Duration::from_millis(15));
    let again = trap.keep_batch(&views);
    assert_eq!(again[..4], [Ok(true), Ok(true), Ok(true), Ok(true)]);
    assert!(matches!(again[4], Err(PluginFault::Trap(_))), "{again:?}");
    let stats = trap.stats();
    assert_eq!(
        (stats.calls, stats.traps, stats.batch_faults),
        (20, 2, 1),
        "{stats:?}"
    );
}

/// A trap filter (trapping on messages with the header `poison`) whose breaker opens after
/// two faults in a row, on a clock the test moves.
fn breaker_binding() -> (Binding, Arc<ManualClock>) {
    let limits = PluginLimits {
        breaker: BreakerSettings {
            consecutive_faults: 2,
            ..BreakerSettings::default()
        },
        ..PluginLimits::default()
    };
    let host = PluginHost::new(limits, None).unwrap();
    let plugin = load(&host, "trap", PluginKind::Filter);
    let clock = ManualClock::new();
    let binding = Binding::with_clock(plugin, params(&[("on", "poison")]), clock.clone()).unwrap();
    (binding, clock)
}

#[test]
fn an_open_breaker_refuses_calls_until_a_trial_after_the_cool_down_succeeds() {
    let (trap, clock) = breaker_binding();
    let poison = TestMessage::new(b"x").header("poison", "1");
    let clean = TestMessage::new(b"x");

    assert!(matches!(
        trap.keep(&poison.view()),
        Err(PluginFault::Trap(_))
    ));
    let unavailable = trap.keep(&poison.view()).unwrap_err();
    assert_eq!(
        trap.breaker().state,
        BreakerState::Closed,
        "{unavailable}: no guest code ran"
    );
    wait_out(&unavailable);
    assert!(matches!(
        trap.keep(&poison.view()),
        Err(PluginFault::Trap(_))
    ));
    let status = trap.breaker();
    assert_eq!((status.state, status.openings), (BreakerState::Open, 1));
    assert_eq!(status.next_trial_ms, Some(status.since_ms + 1000));

    // Open: no calls, clean messages and batches included.
    let calls = trap.stats().calls;
    assert!(matches!(
        trap.keep(&clean.view()),
        Err(PluginFault::BreakerOpen { .. })
    ));
    let views = [clean.view(), clean.view(), poison.view()];
    assert!(trap
        .keep_batch(&views)
        .iter()
        .all(|d| matches!(d, Err(PluginFault::BreakerOpen { .. }))));
    let stats = trap.stats();
    assert_eq!((stats.calls, stats.breaker_refused), (calls, 4));

    // The cool-down is over: the trial restarts the instance at once, despite the backoff,
    // and closes the breaker; the rest of the batch is decided as usual.
    clock.advance(Duration::from_secs(1));
    assert_eq!(trap.keep_batch(&views[..2]), [Ok(true), Ok(true)]);
    let status = trap.breaker();
    assert_eq!((status.state, status.openings), (BreakerState::Closed, 1));
    let stats = trap.stats();
    assert_eq!(
        (stats.calls, stats.kept, stats.reinstantiations),
        (calls + 2, 2, 2)
    );
}

#[test]
fn a_failed_trial_opens_the_breaker_again_for_longer() {
    let (trap, clock) = breaker_binding();
    let poison = TestMessage::new(b"x").header("poison", "1");
    assert!(trap.keep(&poison.view()).is_err());
    wait_out(&trap.keep(&poison.view()).unwrap_err());
    assert!(matches!(
        trap.keep(&poison.view()),
        Err(PluginFault::Trap(_))
    ));
    assert_eq!(trap.breaker().state, BreakerState::Open);

    clock.advance(Duration::from_secs(1));
    let batch = trap.keep_batch(&[poison.view(), poison.view()]);
    assert!(
        matches!(batch[0], Err(PluginFault::Trap(_))),
        "the trial: {batch:?}"
    );
    assert!(
        matches!(batch[1], Err(PluginFault::BreakerOpen { .. })),
        "open again at once: {batch:?}"
    );
    let status = trap.breaker();
    assert_eq!((status.state, status.openings), (BreakerState::Open, 2));
    assert_eq!(
        status.next_trial_ms,
        Some(status.since_ms + 2000),
        "doubled"
    );
    let stats = trap.stats();
    assert_eq!((stats.traps, stats.breaker_refused), (3, 1));
}
