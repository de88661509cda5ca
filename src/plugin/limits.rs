//! The bounds on a plugin instance: its memory cap, and the epoch clock and the per-call CPU
//! budget that time its calls out. (Its log lines are rate-limited by `crate::log_limit`.)
//!
//! # How a call is timed
//! A call's limit is the CPU time of the thread running it, so that time the OS gives to other
//! threads (a neighbour's build, other plugin calls) never counts against a plugin. The epoch
//! ticker only says when to look: the first epoch tick during a call reads the thread's CPU
//! clock and the wall clock ([`CallClock`]); each later check, due when the rest of the budget
//! could at the earliest be spent, compares them with the call's [`CallBudget`]. A call that
//! has used its CPU budget stops with [`TimeoutKind::Cpu`]; one whose thread got so little CPU
//! that the wall-clock backstop passed first stops with [`TimeoutKind::Wall`].
//!
//! Calls that end before the next tick (nearly all: they take microseconds) never read a
//! clock, so the budget costs nothing per call. The price is that CPU used before a call's
//! first tick is not counted: a call may use up to one tick (1 ms) more than its budget.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{Engine, ResourceLimiter};

use super::TimeoutKind;

/// How often the epoch ticks: the granularity of every plugin deadline.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The epoch deadline a call starts with: the next tick, where its [`CallClock`] starts.
pub(super) const FIRST_CHECK_TICKS: u64 = 1;

/// Most elements one table may grow to. Rust guests use a few hundred.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What one guest call may use: `cpu` of its thread's CPU time, and at most `wall` of
/// wall-clock time whatever its CPU use (the backstop for a starved thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CallBudget {
    pub(super) cpu: Duration,
    pub(super) wall: Duration,
}

/// One call's clock, checked at the epoch deadlines of the call (see the module docs).
#[derive(Debug)]
pub(super) struct CallClock {
    budget: CallBudget,
    /// Wall time and the thread's CPU time (if the platform has a thread CPU clock) at the
    /// call's first check; `None` before it.
    first_check: Option<(Instant, Option<Duration>)>,
    /// Why the call was stopped, once it was.
    stopped: Option<TimeoutKind>,
}

/// What a check decides: go on for this many epoch ticks, or stop the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    Continue(u64),
    Stop(TimeoutKind),
}

impl CallClock {
    pub(super) fn new(budget: CallBudget) -> Self {
        CallClock {
            budget,
            first_check: None,
            stopped: None,
        }
    }

    /// Starts timing a new call under `budget`. Reads no clock.
    pub(super) fn start(&mut self, budget: CallBudget) {
        *self = CallClock::new(budget);
    }

    /// Why the current call was stopped, if it was.
    pub(super) fn stopped(&self) -> Option<TimeoutKind> {
        self.stopped
    }

    /// A check at an epoch deadline, at wall time `now` with the thread's CPU clock at
    /// `cpu_now` (`None` where there is none: then wall time stands in for CPU time).
    /// The budget is counted from the first check. The next check is due when the rest of
    /// either bound could at the earliest be used up: CPU time never runs faster than the
    /// wall clock.
    pub(super) fn check(&mut self, now: Instant, cpu_now: Option<Duration>) -> Check {
        let (wall_0, cpu_0) = *self.first_check.get_or_insert((now, cpu_now));
        let wall = now.saturating_duration_since(wall_0);
        let cpu = match (cpu_0, cpu_now) {
            (Some(start), Some(now)) => now.saturating_sub(start),
            _ => wall,
        };
        let stop = if cpu >= self.budget.cpu {
            Some(TimeoutKind::Cpu)
        } else if wall >= self.budget.wall {
            Some(TimeoutKind::Wall)
        } else {
            None
        };
        if let Some(kind) = stop {
            self.stopped = Some(kind);
            return Check::Stop(kind);
        }
        let rest = (self.budget.cpu - cpu).min(self.budget.wall - wall);
        Check::Continue(whole_ticks(rest).max(1))
    }
}

/// Ticks in `d`, rounded up.
fn whole_ticks(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(EPOCH_TICK.as_nanos())).unwrap_or(u64::MAX)
}

/// The CPU time the calling thread has used, or `None` where the platform has no per-thread
/// CPU clock. A system call on Linux (about 0.1-0.5 µs), so it is read only at epoch ticks.
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec, and clock_gettime writes nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

#[cfg(not(unix))]
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    None
}

/// A store's memory cap: all linear memories of the instance together may not pass `limit`
/// bytes. A refused growth is remembered, so that the trap that usually follows (an
/// allocation failure aborts a Rust guest) is reported as out of memory.
#[derive(Debug)]
pub(super) struct MemoryCap {
    limit: u64,
    /// Bytes of linear memory the instance has now.
    used: u64,
    /// Set when a growth was refused since the last `reset_denied`.
    denied: bool,
}

impl MemoryCap {
    pub(super) fn new(limit: u64) -> Self {
        MemoryCap {
            limit,
            used: 0,
            denied: false,
        }
    }

    pub(super) fn limit(&self) -> u64 {
        self.limit
    }

    pub(super) fn denied(&self) -> bool {
        self.denied
    }

    pub(super) fn reset_denied(&mut self) {
        self.denied = false;
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current) as u64;
        let within_max = maximum.is_none_or(|max| desired <= max);
        if !within_max || self.used.saturating_add(growth) > self.limit {
            self.denied = true;
            return Ok(false);
        }
        self.used += growth;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }
}

/// A plain OS thread that advances the engine's epoch every [`EPOCH_TICK`], so that guest
/// code past its deadline traps. It stops when this value is dropped.
///
/// It must not be a tokio task: a ticker on the runtime it guards can starve behind the very
/// call it should interrupt.
#[derive(Debug)]
pub(super) struct EpochTicker {
    /// Dropping the sender wakes the thread and stops it.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(super) fn start(engine: Engine) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("quiver-plugin-epoch".into())
            .spawn(move || loop {
                match stopped.recv_timeout(EPOCH_TICK) {
                    Err(RecvTimeoutError::Timeout) => engine.increment_epoch(),
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(EpochTicker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The thread only sleeps and increments; it cannot panic.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(cpu_ms: u64, wall_ms: u64) -> CallBudget {
        CallBudget {
            cpu: Duration::from_millis(cpu_ms),
            wall: Duration::from_millis(wall_ms),
        }
    }

    #[test]
    fn call_clock_counts_cpu_time_from_its_first_check() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut clock = CallClock::new(budget(10, 100));
        assert_eq!(clock.check(t0, Some(ms(500))), Check::Continue(10));
        // Preempted: 40 ms passed, 1 ms of it on the CPU.
        assert_eq!(clock.check(t0 + ms(40), Some(ms(501))), Check::Continue(9));
        assert_eq!(clock.stopped(), None);
        assert_eq!(
            clock.check(t0 + ms(60), Some(ms(510))),
            Check::Stop(TimeoutKind::Cpu)
        );
        assert_eq!(clock.stopped(), Some(TimeoutKind::Cpu));
    }

    #[test]
    fn call_clock_stops_a_starved_call_at_its_wall_backstop() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut clock = CallClock::new(budget(10, 100));
        clock.check(t0, Some(ms(0)));
        assert_eq!(
            clock.check(t0 + ms(95), Some(ms(2))),
            Check::Continue(5),
            "the backstop is nearer than the rest of the budget"
        );
        assert_eq!(
            clock.check(t0 + ms(100), Some(ms(3))),
            Check::Stop(TimeoutKind::Wall)
        );
        // Both spent: the plugin's own use is what counts.
        clock.start(budget(10, 100));
        clock.check(t0, Some(ms(0)));
        assert_eq!(
            clock.check(t0 + ms(200), Some(ms(10))),
            Check::Stop(TimeoutKind::Cpu)
        );
    }

    #[test]
    fn call_clock_without_a_cpu_clock_counts_wall_time() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut clock = CallClock::new(budget(10, 100));
        assert_eq!(clock.check(t0, None), Check::Continue(10));
        assert_eq!(
            clock.check(t0 + ms(10), None),
            Check::Stop(TimeoutKind::Cpu)
        );
    }

    #[test]
    fn thread_cpu_time_counts_this_threads_work_only() {
        let Some(before) = thread_cpu_time() else {
            return;
        };
        // A sleeping thread uses no CPU; a spinning one does.
        std::thread::sleep(Duration::from_millis(20));
        let slept = thread_cpu_time().unwrap() - before;
        assert!(slept < Duration::from_millis(10), "{slept:?}");
        let spin_until = thread_cpu_time().unwrap() + Duration::from_millis(5);
        while thread_cpu_time().unwrap() < spin_until {}
    }

    #[test]
    fn memory_cap_counts_all_memories_and_remembers_a_refusal() {
        let mut cap = MemoryCap::new(100);
        assert!(cap.memory_growing(0, 60, None).unwrap());
        assert!(cap.memory_growing(0, 30, None).unwrap(), "a second memory");
        assert!(!cap.denied());
        assert!(!cap.memory_growing(60, 80, None).unwrap(), "90 + 20 > 100");
        assert!(cap.denied());
        cap.reset_denied();
        assert!(cap.memory_growing(60, 70, None).unwrap());
        assert!(
            !cap.memory_growing(0, 10, Some(5)).unwrap(),
            "over the memory's max"
        );
    }
}
