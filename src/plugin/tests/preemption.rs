//! A plugin's decisions do not depend on the machine's load. The calling thread is pinned to
//! one core together with threads that spin there, so the OS takes the CPU from it for real,
//! for longer than the call budget, in the middle of calls: a filter doing its normal work
//! still decides every message, and a plugin that loops is still stopped by its CPU budget.
//!
//! The tests wait for facts (calls seen preempted past the budget), not for durations, with a
//! generous overall deadline that fails with what was seen.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{load, params, TestMessage};
use crate::plugin::limits::thread_cpu_time;
use crate::plugin::{PluginFault, PluginHost, PluginKind, PluginLimits, TimeoutKind};

/// Spinning threads competing with the caller for one core.
const COMPETITORS: usize = 4;
/// A small budget, so that a preemption easily outlasts it. A batch of 64 messages through
/// the tag filter takes well under a millisecond of CPU, even in a debug build.
const BUDGET: Duration = Duration::from_millis(2);
/// Calls that must be seen taking longer than [`BUDGET`] in wall-clock time.
const PREEMPTED_CALLS: usize = 5;
/// The overall deadline; reached only if the competitors never take the CPU.
const GIVE_UP: Duration = Duration::from_secs(120);

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes only to it.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(
            rc,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: as in `allowed_cpus`; sched_setaffinity only reads the set.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Threads that spin on one CPU until dropped.
struct Competitors {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Competitors {
    /// Starts `n` spinning threads pinned to `cpu`, and returns once each is running there.
    fn start(cpu: usize, n: usize) -> Competitors {
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicUsize::new(0));
        let threads = (0..n)
            .map(|_| {
                let (stop, running) = (stop.clone(), running.clone());
                std::thread::spawn(move || {
                    pin_to(cpu);
                    running.fetch_add(1, Ordering::SeqCst);
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let competitors = Competitors { stop, threads };
        while running.load(Ordering::SeqCst) < n {
            std::thread::yield_now();
        }
        competitors
    }
}

impl Drop for Competitors {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            // A spinner only loads a flag; it cannot panic.
            let _ = thread.join();
        }
    }
}

/// Runs `test` on a thread of its own pinned to one core, with [`COMPETITORS`] spinning
/// threads pinned to the same core for the whole run.
///
/// Load plugins before: threads started from the pinned one (wasmtime's compile pool, if it
/// starts then) would inherit the pinning.
fn on_a_contended_core<R: Send + 'static>(test: impl FnOnce() -> R + Send + 'static) -> R {
    let cpu = *allowed_cpus().last().expect("the process runs on some CPU");
    std::thread::spawn(move || {
        pin_to(cpu);
        let _competitors = Competitors::start(cpu, COMPETITORS);
        test()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn host() -> PluginHost {
    // Far away: only the CPU budget may stop a call here.
    let limits = PluginLimits {
        call_timeout: BUDGET,
        wall_timeout: Some(Duration::from_secs(60)),
        ..PluginLimits::default()
    };
    PluginHost::new(limits, None).unwrap()
}

/// What the filter calls saw.
#[derive(Debug, Default)]
struct Seen {
    calls: usize,
    preempted: usize,
    longest_wall: Duration,
    most_cpu: Duration,
    /// CPU time of each call.
    cpu: Vec<Duration>,
}

#[test]
fn filter_losing_its_cpu_mid_call_still_decides_every_message() {
    let host = host();
    let plugin = load(&host, "tag_filter", PluginKind::Filter);
    let mut filter = host
        .instantiate(&plugin, &params(&[("expr", r#"type == "invoice""#)]))
        .unwrap();
    let mut seen = on_a_contended_core(move || {
        let messages: Vec<TestMessage> = (0..64u64)
            .map(|i| {
                let kind = if i % 3 == 0 { "invoice" } else { "refund" };
                let mut m = TestMessage::new(b"{}").header("type", kind);
                m.offset = i;
                m
            })
            .collect();
        let views: Vec<_> = messages.iter().map(TestMessage::view).collect();
        let expected: Vec<bool> = (0..64).map(|i| i % 3 == 0).collect();

        let mut seen = Seen::default();
        let started = Instant::now();
        while seen.preempted < PREEMPTED_CALLS {
            assert!(
                started.elapsed() < GIVE_UP,
                "the competitors never held the CPU past the budget during a call: {seen:?}"
            );
            let (wall_0, cpu_0) = (Instant::now(), thread_cpu_time());
            let keeps = filter.keep_batch(&views);
            let wall = wall_0.elapsed();
            assert_eq!(
                keeps.as_ref(),
                Ok(&expected),
                "call {} after {wall:?} of wall-clock time ({seen:?})",
                seen.calls
            );
            let cpu = thread_cpu_time().zip(cpu_0).map(|(b, a)| b - a);
            seen.calls += 1;
            seen.longest_wall = seen.longest_wall.max(wall);
            seen.most_cpu = seen.most_cpu.max(cpu.unwrap_or_default());
            seen.cpu.push(cpu.unwrap_or_default());
            if wall > BUDGET {
                seen.preempted += 1;
            }
        }
        seen
    });
    let mut cpu = std::mem::take(&mut seen.cpu);
    eprintln!("{seen:?}");
    // The filter's own work fits the budget with room to spare, so that the calls above
    // outlived it only by losing the CPU. The median, not the maximum: on a busy machine a
    // single call can also be charged for page faults and cache misses.
    cpu.sort();
    let median = cpu[cpu.len() / 2];
    assert!(
        median < BUDGET / 4,
        "the filter's own work fits: median {median:?} per call ({seen:?})"
    );
}

#[test]
fn looping_plugin_on_a_contended_core_is_stopped_by_its_cpu_budget() {
    let host = host();
    let plugin = load(&host, "spin", PluginKind::Filter);
    let mut spin = host.instantiate(&plugin, &[]).unwrap();
    let (fault, wall, cpu) = on_a_contended_core(move || {
        let (wall_0, cpu_0) = (Instant::now(), thread_cpu_time());
        let fault = spin.keep(&TestMessage::new(b"x").view()).unwrap_err();
        let cpu = thread_cpu_time().zip(cpu_0).map(|(b, a)| b - a);
        (fault, wall_0.elapsed(), cpu)
    });
    assert_eq!(fault, PluginFault::Timeout(TimeoutKind::Cpu));
    if let Some(cpu) = cpu {
        assert!(cpu >= BUDGET, "stopped before its budget: {cpu:?} of CPU");
        // Sharing the core with the competitors, it got only part of the wall-clock time.
        assert!(wall > cpu, "{wall:?} of wall-clock time, {cpu:?} of CPU");
    }
}
