//! The bounds on a plugin instance: its memory cap, the epoch clock that times its calls out,
//! and the budget that rate-limits its log lines.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{Engine, ResourceLimiter};

/// How often the epoch ticks: the granularity of every plugin deadline.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Most elements one table may grow to. Rust guests use a few hundred.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Epoch ticks to allow for `timeout`: rounded up, plus one because the tick in progress when
/// the deadline is set may end at once.
pub(super) fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    let ticks = timeout.as_nanos().div_ceil(tick);
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
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

/// A token bucket for one instance's log lines: a burst of [`LogBudget::BURST`], then
/// [`LogBudget::PER_SECOND`] lines a second. Lines over budget are counted, not written.
#[derive(Debug)]
pub(super) struct LogBudget {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl LogBudget {
    pub(super) const BURST: f64 = 20.0;
    pub(super) const PER_SECOND: f64 = 10.0;

    pub(super) fn new(now: Instant) -> Self {
        LogBudget {
            tokens: Self::BURST,
            refilled: now,
            dropped: 0,
        }
    }

    /// Takes a token for a line at `now`. `Some(dropped)` means write it, after reporting
    /// `dropped` lines lost since the last written one; `None` means drop it.
    pub(super) fn take(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * Self::PER_SECOND).min(Self::BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return None;
        }
        self.tokens -= 1.0;
        Some(std::mem::take(&mut self.dropped))
    }

    /// Lines dropped and not yet reported.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_and_adds_a_tick() {
        assert_eq!(deadline_ticks(Duration::from_millis(10)), 11);
        assert_eq!(deadline_ticks(Duration::from_micros(10_100)), 12);
        assert_eq!(deadline_ticks(Duration::ZERO), 1);
        assert_eq!(deadline_ticks(Duration::MAX), u64::MAX);
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

    #[test]
    fn log_budget_allows_a_burst_then_a_steady_rate() {
        let start = Instant::now();
        let mut budget = LogBudget::new(start);
        for _ in 0..20 {
            assert_eq!(budget.take(start), Some(0));
        }
        assert_eq!(budget.take(start), None);
        assert_eq!(budget.take(start), None);
        assert_eq!(budget.dropped(), 2);
        let later = start + Duration::from_millis(100);
        assert_eq!(budget.take(later), Some(2), "one token back after 100 ms");
        assert_eq!(budget.take(later), None);
    }
}
