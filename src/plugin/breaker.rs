//! A circuit breaker per binding: a plugin that keeps faulting is not called for a cool-down,
//! and its messages get the binding's failure policy at once.
//!
//! ```text
//!          `consecutive_faults` in a row, or more than
//!          `fault_percent` of at least `min_calls` in `window`
//!   closed ──────────────────────────────────────────────────▶ open ◀─┐
//!     ▲                                                          │     │ the trial faults:
//!     │ the trial call succeeds            the cool-down is over │     │ a longer cool-down
//!     │                                                          ▼     │
//!     └────────────────────────────────────────────────────── half-open
//! ```
//!
//! While open, and while half-open but for its one trial call, [`Breaker::admit`] refuses
//! with [`PluginFault::BreakerOpen`]: no guest code runs, and the caller applies the failure
//! policy. The cool-down doubles with each opening in a row, from `cool_down` up to
//! `max_cool_down`, and starts again from `cool_down` once the breaker has stayed closed for
//! `reset_after`. The trial restarts the instance at once if it is down: the cool-down was
//! the wait.
//!
//! Only the plugin's own faults count ([`Outcome::of`]): traps, running out of memory, using
//! the CPU budget, and a restart whose `init` failed. A call stopped by the wall-clock
//! backstop (the machine's doing), a body over the memory cap (the message's), a refusal
//! during the restart backoff (no guest code ran) and a call of the wrong kind count neither
//! way.
//!
//! The time comes from a [`Clock`], so that tests move it by hand.
//!
//! # Invariants
//! - The gate word holds the state and, when open, the next trial's time. The closed fast
//!   path reads nothing else: one load before the binding's lock, one under it. What the
//!   breaker counts ([`Tally`]) lives under the binding's lock, so recording an outcome takes
//!   no lock of its own.
//! - Only a holder of the binding's lock moves the breaker out of closed (a fault) or out of
//!   half-open (the trial's outcome). The one move made without it, open → half-open, is a
//!   compare-and-swap of the whole gate word: one caller per opening wins it, since each
//!   opening writes a later trial time.
//! - At most one trial call is under way. A trial that ends without an outcome (one that
//!   blames nobody, or a panic) gives its place back at once ([`Trial`]'s `Drop`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{PluginFault, TimeoutKind};

/// Slices of the fault-rate window: it slides by a tenth of its length.
const SLICES: usize = 10;

/// When a binding's breaker opens, and for how long. The defaults stop calling a plugin
/// that fails five calls in a row, or most of its calls, for a second, then for twice as
/// long after each failed trial, up to a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// False: the breaker never opens (faults still restart the instance with a backoff).
    pub enabled: bool,
    /// Faults in a row that open the breaker; 0 turns this trigger off. Default 5.
    pub consecutive_faults: u32,
    /// The breaker opens when more than this percentage of the calls in `window` faulted;
    /// 100 turns this trigger off. Default 50.
    pub fault_percent: u8,
    /// Fewest calls in `window` for `fault_percent` to apply. Default 20.
    pub min_calls: u32,
    /// The sliding window of `fault_percent`. Default 10 s.
    pub window: Duration,
    /// The first cool-down: how long the breaker stays open before its trial call. Default 1 s.
    pub cool_down: Duration,
    /// The longest cool-down, reached by doubling after each failed trial. Default 60 s.
    pub max_cool_down: Duration,
    /// How long the breaker must stay closed for the next opening to start from `cool_down`
    /// again. Default 60 s.
    pub reset_after: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            enabled: true,
            consecutive_faults: 5,
            fault_percent: 50,
            min_calls: 20,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(1),
            max_cool_down: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl BreakerSettings {
    /// The cool-down after `streak` openings in a row (0 for the first).
    fn cool_down(&self, streak: u32) -> Duration {
        let factor = 1u32.checked_shl(streak).unwrap_or(u32::MAX);
        self.cool_down
            .saturating_mul(factor)
            .min(self.max_cool_down)
    }

    fn slice_ms(&self) -> u64 {
        (millis(self.window) / SLICES as u64).max(1)
    }
}

/// Where a breaker reads the time: [`SystemClock`], or a clock a test moves.
pub(crate) trait Clock: Send + Sync + fmt::Debug {
    /// Now, on a monotonic scale.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when a test moves it.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ManualClock {
    start: Instant,
    elapsed_ms: AtomicU64,
}

#[cfg(test)]
impl ManualClock {
    pub(crate) fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start: Instant::now(),
            elapsed_ms: AtomicU64::new(0),
        })
    }

    pub(crate) fn advance(&self, by: Duration) {
        self.elapsed_ms.fetch_add(millis(by), Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.elapsed_ms.load(Ordering::SeqCst))
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls are made.
    Closed,
    /// No calls are made until the next trial.
    Open,
    /// One trial call is under way; no other calls are made.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// 0, 1 or 2: the value of the `quiver_plugin_breaker_state` gauge.
    pub fn as_number(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// A breaker as stats show it. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerStatus {
    pub state: BreakerState,
    /// When it entered `state` (for a breaker that never opened: when the binding was made).
    pub since_ms: u64,
    /// When open: when the trial call will be let through.
    pub next_trial_ms: Option<u64>,
    /// Times it opened since the binding was made, failed trials included.
    pub openings: u64,
}

/// What a call's result says of the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Success,
    /// The plugin's doing.
    Fault,
    /// Nobody's, or not the plugin's: counts neither way.
    Neutral,
}

impl Outcome {
    /// The outcome of a call that failed with `fault`. A failed restart is a fault too, but
    /// comes back as `Unavailable`: the binding tells it from a backoff itself.
    pub(super) fn of(fault: &PluginFault) -> Outcome {
        match fault {
            PluginFault::Timeout(TimeoutKind::Cpu)
            | PluginFault::OutOfMemory
            | PluginFault::Trap(_) => Outcome::Fault,
            PluginFault::Timeout(TimeoutKind::Wall)
            | PluginFault::TooLarge { .. }
            | PluginFault::Unavailable { .. }
            | PluginFault::WrongKind { .. }
            | PluginFault::BreakerOpen { .. } => Outcome::Neutral,
        }
    }
}

/// Leave to make one call, from [`Breaker::admit`]. Give it back to [`Breaker::record`] with
/// the call's outcome.
#[derive(Debug)]
#[must_use]
pub(super) enum Ticket<'a> {
    /// The breaker was closed.
    Closed,
    /// The one call of a half-open breaker.
    Trial(Trial<'a>),
}

impl Ticket<'_> {
    pub(super) fn is_trial(&self) -> bool {
        matches!(self, Ticket::Trial(_))
    }
}

/// The half-open breaker's one call. Dropped without an outcome, it gives its place back:
/// the breaker is open again with its trial due at once.
#[derive(Debug)]
pub(super) struct Trial<'a> {
    breaker: &'a Breaker,
    settled: bool,
}

impl Drop for Trial<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.give_back();
        }
    }
}

/// What a breaker counts, kept under its binding's lock: the closed breaker's recent
/// outcomes, and its openings in a row.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Faults since the last success.
    consecutive: u32,
    /// Outcomes per slice of the window, by slice number modulo [`SLICES`].
    slices: [Slice; SLICES],
    /// Openings in a row: the next cool-down is `cool_down` × 2^streak.
    streak: u32,
    /// When the breaker last closed (breaker time).
    closed_at: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slice {
    /// Which slice of time (breaker time / slice length) the counts are for.
    number: u64,
    calls: u64,
    faults: u64,
}

impl Tally {
    /// The slice `now` falls in, emptied first if it still counts an older one.
    fn slice(&mut self, now: u64, slice_ms: u64) -> &mut Slice {
        let number = now / slice_ms;
        let slice = &mut self.slices[(number % SLICES as u64) as usize];
        if slice.number != number {
            *slice = Slice {
                number,
                ..Slice::default()
            };
        }
        slice
    }

    /// Calls and faults in the window that ends at `now`.
    fn window(&self, now: u64, slice_ms: u64) -> (u64, u64) {
        let number = now / slice_ms;
        self.slices
            .iter()
            .filter(|s| number - s.number.min(number) < SLICES as u64)
            .fold((0, 0), |(calls, faults), s| {
                (calls + s.calls, faults + s.faults)
            })
    }

    /// Forgets the outcomes: a breaker that opens or closes starts counting again.
    fn forget_outcomes(&mut self) {
        self.consecutive = 0;
        self.slices = [Slice::default(); SLICES];
    }
}

/// The gate word: the state in its low two bits, and above them the time (breaker time) of
/// the next trial when open, or of the trial's start when half-open. Closed is exactly 0.
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

fn gate_word(state: u64, at: u64) -> u64 {
    (at << 2) | state
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One binding's breaker: the state every caller reads, without a lock.
#[derive(Debug)]
pub(super) struct Breaker {
    settings: BreakerSettings,
    clock: Arc<dyn Clock>,
    /// The clock's time when the breaker was made: breaker times are milliseconds since then.
    origin: Instant,
    /// `origin` in milliseconds since the Unix epoch, for stats.
    origin_unix_ms: u64,
    /// The plugin's name, for logs.
    plugin: Arc<str>,
    gate: AtomicU64,
    /// When the state last changed (breaker time).
    since: AtomicU64,
    openings: AtomicU64,
}

impl Breaker {
    pub(super) fn new(settings: BreakerSettings, clock: Arc<dyn Clock>, plugin: Arc<str>) -> Self {
        let origin = clock.now();
        let origin_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, millis);
        Breaker {
            settings,
            clock,
            origin,
            origin_unix_ms,
            plugin,
            gate: AtomicU64::new(CLOSED),
            since: AtomicU64::new(0),
            openings: AtomicU64::new(0),
        }
    }

    /// Leave to call the plugin now, or the fault to apply the policy for. Closed, this is
    /// one atomic load.
    pub(super) fn admit(&self) -> Result<Ticket<'_>, PluginFault> {
        let gate = self.gate.load(Ordering::Acquire);
        if gate == CLOSED {
            return Ok(Ticket::Closed);
        }
        self.admit_not_closed(gate)
    }

    #[cold]
    fn admit_not_closed(&self, gate: u64) -> Result<Ticket<'_>, PluginFault> {
        let refused = |retry_in: u64| PluginFault::BreakerOpen {
            retry_in: Duration::from_millis(retry_in),
        };
        let (state, at) = (gate & 3, gate >> 2);
        if state == HALF_OPEN {
            return Err(refused(0));
        }
        let now = self.now();
        if now < at {
            return Err(refused(at - now));
        }
        // The cool-down is over: the caller that swaps the gate makes the trial call.
        let trial = gate_word(HALF_OPEN, now);
        if self
            .gate
            .compare_exchange(gate, trial, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(refused(0));
        }
        self.since.store(now, Ordering::Relaxed);
        tracing::debug!(plugin = %self.plugin, "plugin circuit breaker half-open: one trial call");
        Ok(Ticket::Trial(Trial {
            breaker: self,
            settled: false,
        }))
    }

    /// True when calls are made without a trial. Under the binding's lock, a caller let in
    /// while closed checks this again: the breaker may have opened while it waited.
    pub(super) fn is_closed(&self) -> bool {
        self.gate.load(Ordering::Acquire) == CLOSED
    }

    /// Counts the outcome of the call `ticket` let through, and opens or closes the breaker
    /// if it says so. Called under the binding's lock, which guards `tally`.
    pub(super) fn record(&self, tally: &mut Tally, ticket: Ticket<'_>, outcome: Outcome) {
        let Ticket::Trial(mut trial) = ticket else {
            self.record_closed(tally, outcome, 1);
            return;
        };
        match outcome {
            Outcome::Success => self.close(tally),
            Outcome::Fault => self.open(tally, "its trial call faulted"),
            // Dropped unsettled: the next caller makes the trial.
            Outcome::Neutral => return,
        }
        trial.settled = true;
    }

    /// Counts `calls` successful calls at once: the messages of a batch call, made while
    /// closed.
    pub(super) fn record_successes(&self, tally: &mut Tally, calls: u64) {
        self.record_closed(tally, Outcome::Success, calls);
    }

    fn record_closed(&self, tally: &mut Tally, outcome: Outcome, calls: u64) {
        debug_assert!(self.is_closed(), "closed tickets are recorded while closed");
        if !self.settings.enabled || outcome == Outcome::Neutral {
            return;
        }
        let now = self.now();
        let slice = tally.slice(now, self.settings.slice_ms());
        slice.calls += calls;
        if outcome == Outcome::Success {
            tally.consecutive = 0;
            return;
        }
        slice.faults += 1;
        tally.consecutive = tally.consecutive.saturating_add(1);
        let in_a_row = self.settings.consecutive_faults;
        if in_a_row > 0 && tally.consecutive >= in_a_row {
            self.open_from_closed(tally, now, &format!("{in_a_row} faults in a row"));
            return;
        }
        let (calls, faults) = tally.window(now, self.settings.slice_ms());
        let over = faults * 100 > u64::from(self.settings.fault_percent) * calls;
        if calls >= u64::from(self.settings.min_calls) && over {
            let why = format!("{faults} of its last {calls} calls faulted");
            self.open_from_closed(tally, now, &why);
        }
    }

    fn open_from_closed(&self, tally: &mut Tally, now: u64, why: &str) {
        if now.saturating_sub(tally.closed_at) >= millis(self.settings.reset_after) {
            tally.streak = 0;
        }
        self.open(tally, why);
    }

    /// Opens for the cool-down that the openings in a row so far call for.
    fn open(&self, tally: &mut Tally, why: &str) {
        let now = self.now();
        let cool_down = self.settings.cool_down(tally.streak);
        tally.streak = tally.streak.saturating_add(1);
        tally.forget_outcomes();
        self.since.store(now, Ordering::Relaxed);
        self.openings.fetch_add(1, Ordering::Relaxed);
        let next_trial = now.saturating_add(millis(cool_down));
        self.gate
            .store(gate_word(OPEN, next_trial), Ordering::Release);
        tracing::warn!(plugin = %self.plugin, why, ?cool_down, "plugin circuit breaker opened: its messages get the failure policy without a call until a trial call succeeds");
    }

    fn close(&self, tally: &mut Tally) {
        let now = self.now();
        tally.closed_at = now;
        tally.forget_outcomes();
        self.since.store(now, Ordering::Relaxed);
        self.gate.store(CLOSED, Ordering::Release);
        tracing::info!(plugin = %self.plugin, "plugin circuit breaker closed: its trial call succeeded");
    }

    /// A trial that ended without an outcome: open, with the trial due at once.
    fn give_back(&self) {
        let now = self.now();
        self.since.store(now, Ordering::Relaxed);
        self.gate.store(gate_word(OPEN, now), Ordering::Release);
    }

    pub(super) fn status(&self) -> BreakerStatus {
        let gate = self.gate.load(Ordering::Acquire);
        let (state, at) = (gate & 3, gate >> 2);
        let unix = |t: u64| self.origin_unix_ms.saturating_add(t);
        BreakerStatus {
            state: match state {
                CLOSED => BreakerState::Closed,
                OPEN => BreakerState::Open,
                _ => BreakerState::HalfOpen,
            },
            since_ms: unix(self.since.load(Ordering::Relaxed)),
            next_trial_ms: (state == OPEN).then(|| unix(at)),
            openings: self.openings.load(Ordering::Relaxed),
        }
    }

    /// Breaker time: milliseconds since the breaker was made.
    fn now(&self) -> u64 {
        millis(self.clock.now().saturating_duration_since(self.origin))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "breaker_tests.rs"]
mod tests;
