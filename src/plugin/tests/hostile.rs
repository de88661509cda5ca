//! Each hostile plugin is contained: its fault comes back as data, and the host goes on.

use std::time::{Duration, Instant};

use super::{guest, host, load, params, TestMessage};
use crate::plugin::limits::thread_cpu_time;
use crate::plugin::{PluginError, PluginFault, PluginHost, PluginKind, PluginLimits, TimeoutKind};

#[test]
fn spinning_plugin_is_stopped_by_its_cpu_budget() {
    // The backstop is far away: only the CPU budget can stop the call.
    let limits = PluginLimits {
        wall_timeout: Some(Duration::from_secs(60)),
        ..PluginLimits::default()
    };
    let host = PluginHost::new(limits, None).unwrap();
    let plugin = load(&host, "spin", PluginKind::Filter);
    let mut instance = host.instantiate(&plugin, &[]).unwrap();
    let msg = TestMessage::new(b"x");

    let (started, cpu_before) = (Instant::now(), thread_cpu_time());
    let fault = instance.keep(&msg.view()).unwrap_err();
    let (elapsed, cpu_after) = (started.elapsed(), thread_cpu_time());

    assert_eq!(fault, PluginFault::Timeout(TimeoutKind::Cpu));
    let budget = limits.call_timeout;
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let used = after - before;
        assert!(used >= budget, "interrupted early: {used:?} of CPU");
        // Checks come at epoch ticks, which a loaded machine may delay: bounded, not exact.
        assert!(used < budget * 20, "interrupted late: {used:?} of CPU");
    }
    assert!(elapsed >= budget, "{elapsed:?}");
}

#[test]
fn starved_call_is_stopped_at_its_wall_clock_backstop() {
    // A CPU budget no call here can use: the spin is what a thread that never gets the CPU
    // looks like from the wall clock's side.
    let limits = PluginLimits {
        call_timeout: Duration::from_secs(30),
        wall_timeout: Some(Duration::from_millis(50)),
        ..PluginLimits::default()
    };
    let host = PluginHost::new(limits, None).unwrap();
    let plugin = load(&host, "spin", PluginKind::Filter);
    let mut instance = host.instantiate(&plugin, &[]).unwrap();

    let started = Instant::now();
    let fault = instance.keep(&TestMessage::new(b"x").view()).unwrap_err();
    let elapsed = started.elapsed();

    assert_eq!(fault, PluginFault::Timeout(TimeoutKind::Wall));
    assert!(elapsed >= Duration::from_millis(50), "{elapsed:?}");
    assert!(fault.to_string().contains("wall-clock backstop"), "{fault}");
}

#[test]
fn memory_hog_runs_out_of_memory_at_its_cap() {
    // Filling 16 MiB takes ~9 ms in a release build (page faults, mostly), more in a debug
    // build: give the call time enough that only the memory cap can stop it.
    let limits = PluginLimits {
        call_timeout: Duration::from_secs(2),
        ..PluginLimits::default()
    };
    let host = PluginHost::new(limits, None).unwrap();
    let plugin = load(&host, "hog", PluginKind::Filter);
    let mut instance = host.instantiate(&plugin, &[]).unwrap();

    let fault = instance.keep(&TestMessage::new(b"x").view()).unwrap_err();

    assert_eq!(fault, PluginFault::OutOfMemory);
}

#[test]
fn trapping_plugin_reports_its_panic_and_a_new_instance_runs_again() {
    let host = host();
    let plugin = load(&host, "trap", PluginKind::Filter);
    let mut instance = host.instantiate(&plugin, &[]).unwrap();
    let msg = TestMessage::new(b"abc");

    let fault = instance.keep(&msg.view()).unwrap_err();
    let PluginFault::Trap(text) = &fault else {
        panic!("expected a trap, got {fault:?}");
    };
    assert!(text.contains("refuses message of 3 bytes"), "{text}");

    let again = instance.keep(&msg.view()).unwrap_err();
    assert!(
        matches!(again, PluginFault::Unavailable { .. }),
        "a poisoned instance runs no guest code: {again:?}"
    );

    let mut fresh = host.instantiate(&plugin, &[]).unwrap();
    let fault = fresh.keep(&msg.view()).unwrap_err();
    assert!(matches!(fault, PluginFault::Trap(_)), "{fault:?}");
}

#[test]
fn plugin_that_refuses_its_params_refuses_the_instance_with_its_message() {
    let host = host();
    let plugin = load(&host, "bad_init", PluginKind::Filter);

    let err = host
        .instantiate(&plugin, &params(&[("any", "thing")]))
        .unwrap_err();

    match err {
        PluginError::Init { plugin, message } => {
            assert_eq!(plugin, "bad_init");
            assert_eq!(message, "bad-init always refuses");
        }
        other => panic!("expected Init, got {other:?}"),
    }
}

#[test]
fn router_loaded_as_a_filter_or_sampler_is_the_wrong_world() {
    let host = host();
    for kind in [PluginKind::Filter, PluginKind::Sampler] {
        let err = host.load(&guest("wrong_world"), kind).unwrap_err();
        match &err {
            PluginError::KindMismatch {
                plugin,
                targets,
                bound,
                ..
            } => {
                assert_eq!(plugin, "wrong_world");
                assert_eq!((*targets, *bound), ("router", kind));
            }
            other => panic!("expected KindMismatch, got {other:?}"),
        }
        let text = err.to_string();
        let expected = format!("targets the router world but is bound as a {kind}");
        assert!(text.contains(&expected), "{text}");
    }
    let router = load(&host, "wrong_world", PluginKind::Router);
    let mut instance = host.instantiate(&router, &[]).unwrap();
    let route = instance.route(&TestMessage::new(b"x").view()).unwrap();
    assert_eq!(route.channels, ["all"]);
}

#[test]
fn text_file_is_not_wasm_and_the_error_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, "this is not a plugin\n").unwrap();

    let err = host().load(&path, PluginKind::Filter).unwrap_err();

    assert!(matches!(err, PluginError::NotWasm { .. }), "{err:?}");
    assert!(err.to_string().contains("notes"), "{err}");
}

#[test]
fn missing_file_is_a_read_error_naming_the_path() {
    let err = host()
        .load("/nonexistent/quiver/x.wasm".as_ref(), PluginKind::Filter)
        .unwrap_err();
    assert!(matches!(err, PluginError::Read { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/quiver/x.wasm"),
        "{err}"
    );
}

#[test]
fn truncated_component_fails_to_compile() {
    let bytes = std::fs::read(guest("trap")).unwrap();
    let err = host()
        .load_bytes("cut", &bytes[..bytes.len() / 2], PluginKind::Filter)
        .unwrap_err();
    assert!(matches!(err, PluginError::Compile { .. }), "{err:?}");
}

#[test]
fn calling_route_on_a_filter_is_refused_without_harm() {
    let host = host();
    let plugin = load(&host, "trap", PluginKind::Filter);
    let mut instance = host.instantiate(&plugin, &[]).unwrap();

    let fault = instance.route(&TestMessage::new(b"x").view()).unwrap_err();

    assert_eq!(
        fault,
        PluginFault::WrongKind {
            kind: PluginKind::Filter,
            call: "route"
        }
    );
    let next = instance.keep(&TestMessage::new(b"x").view()).unwrap_err();
    assert!(
        matches!(next, PluginFault::Trap(_)),
        "guest code still runs: {next:?}"
    );
}

#[test]
fn faults_inside_a_tokio_worker_stay_faults() {
    // Wasmtime-wasi's synchronous stream functions would `block_on` tokio, which panics on a
    // runtime's worker thread. The hog's allocation failure writes to stderr before it
    // aborts: that write must not reach tokio.
    let limits = PluginLimits {
        call_timeout: Duration::from_secs(2),
        ..PluginLimits::default()
    };
    let host = PluginHost::new(limits, None).unwrap();
    let hog = load(&host, "hog", PluginKind::Filter);
    let trap = load(&host, "trap", PluginKind::Filter);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();

    let faults = runtime.block_on(async move {
        let task = tokio::spawn(async move {
            let msg = TestMessage::new(b"x");
            let mut hog = host.instantiate(&hog, &[]).unwrap();
            let mut trap = host.instantiate(&trap, &[]).unwrap();
            (hog.keep(&msg.view()), trap.keep(&msg.view()))
        });
        task.await.unwrap()
    });

    assert_eq!(faults.0, Err(PluginFault::OutOfMemory));
    assert!(
        matches!(faults.1, Err(PluginFault::Trap(_))),
        "{:?}",
        faults.1
    );
}
