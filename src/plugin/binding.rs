//! A plugin bound to a topic or channel: one [`Instance`] that keeps serving across faults.
//!
//! After a fault the instance is dropped (its store is poisoned) and a new one is started on
//! the next call after a backoff: 10 ms, doubling to 5 s, reset by the next successful call.
//! Faults that are not the plugin's doing (a body over the memory cap, a call stopped by the
//! wall-clock backstop because the machine starved it) restart it at once instead.
//! During the backoff calls fail at once with [`PluginFault::Unavailable`], without running
//! guest code. The binding only reports faults; the caller applies the failure policy
//! (deliver, skip or dead-letter) to the message.
//!
//! Filters and samplers are also called a batch at a time ([`Binding::keep_batch`]). A batch
//! that faults says nothing of which message did it, so its messages are decided again one
//! call each on a new instance, started at once, and the binding keeps to one call per
//! message for the next [`PROBATION`] messages (only for the batch's own messages when the
//! batch was stopped by the wall-clock backstop, which blames no message). One call per
//! message is then what counts, as without batches; the failed batch call is counted only in
//! `batch_faults`.
//!
//! A binding that keeps faulting is not called at all for a while: its circuit breaker
//! (`breaker.rs`) opens, and calls fail at once with [`PluginFault::BreakerOpen`] until a
//! trial call after the cool-down succeeds. The breaker counts what the calls count: a
//! successful batch call as one success per message, a faulted batch call not at all (its
//! messages' own calls count). In half-open, the trial is one message's `keep`.
//!
//! # Invariants
//! - `calls` equals the sum of every outcome counter in [`BindingStats`] except
//!   `restart_failures`, `reinstantiations` and `batch_faults`, which count events, not
//!   calls,
//!   `breaker_refused`, which counts messages that got no call, and
//!   `busy_ns`, which counts time.
//! - No guest code runs for a caller the breaker refused, and none but the trial's while
//!   the breaker is not closed.
//! - A sampler's state lives in its instance: it survives calls, and is lost (started over
//!   by `init`) when a fault replaces the instance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::breaker::{Breaker, Clock, Outcome, SystemClock, Tally, Ticket};
use super::{
    BreakerStatus, Instance, MessageView, Plugin, PluginError, PluginFault, Route, TimeoutKind,
};
use crate::log_limit::{self, Site};

/// The first backoff after a fault.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest backoff: a plugin that faults on every message is retried this often.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// After a batch faults, this many messages are decided one call each before batching again.
const PROBATION: u64 = 1024;

/// Log lines a fault can cause on every message, rate-limited per plugin (and fault kind).
static BATCH_FAULTED: Site = Site::new("a batch call faulted; deciding its messages one call each");
static FAULTED: Site = Site::new("plugin faulted; it will be restarted");
static RESTART_FAILED: Site = Site::new("plugin restart failed");

/// One plugin instance behind a mutex, restarted after faults. Calls from several threads are
/// serialized: one decision at a time, which a stateful sampler needs.
///
/// A call holds the mutex for at most the call's wall-clock backstop, or, when it restarts
/// the instance, the init timeout's: other callers wait that long.
#[derive(Debug)]
pub struct Binding {
    plugin: Arc<Plugin>,
    params: Vec<(String, String)>,
    state: Mutex<State>,
    counters: Counters,
    breaker: Breaker,
}

#[derive(Debug)]
struct State {
    instance: Option<Instance>,
    /// The wait after the latest fault; zero when the last call succeeded.
    backoff: Duration,
    /// No new instance is started before this time.
    retry_at: Option<Instant>,
    /// Why the instance is gone, for `Unavailable` faults.
    down_because: String,
    /// Messages still to decide one call each after a batch fault.
    probation: u64,
    /// What the breaker counts.
    tally: Tally,
}

/// What a binding has done, for stats. Counts since the binding was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BindingStats {
    /// Calls to `keep` or `route`.
    pub calls: u64,
    /// Filter or sampler decisions: keep.
    pub kept: u64,
    /// Filter or sampler decisions: skip.
    pub skipped: u64,
    /// Router decisions with at least one channel or forward.
    pub routed: u64,
    /// Router decisions with neither.
    pub unrouted: u64,
    /// Calls stopped because they used their CPU budget (`call_timeout`): the plugin's
    /// doing.
    pub cpu_timeouts: u64,
    /// Calls stopped at the wall-clock backstop (`wall_timeout`) with CPU budget left: the
    /// machine's doing (the calling thread got too little CPU), not the plugin's.
    pub wall_timeouts: u64,
    /// Calls that ran out of memory.
    pub out_of_memory: u64,
    /// Calls that trapped.
    pub traps: u64,
    /// Calls refused a body over the memory cap.
    pub too_large: u64,
    /// Calls refused at once: no instance (backoff, or its restart failed).
    pub unavailable: u64,
    /// Calls that do not exist in the plugin's world (`route` on a filter).
    pub wrong_kind: u64,
    /// Messages given the failure policy without a call because the circuit breaker was
    /// open (or half-open, its trial call under way). Not counted in `calls`.
    pub breaker_refused: u64,
    /// Instances started after a fault.
    pub reinstantiations: u64,
    /// Restarts that failed (`init` refused or faulted).
    pub restart_failures: u64,
    /// Batch calls that faulted; their messages were decided again one call each.
    pub batch_faults: u64,
    /// Time callers spent in calls, in nanoseconds, waiting for the binding and restarting
    /// its instance included: `busy_ns / calls` is the plugin's cost per message as the
    /// broker sees it.
    pub busy_ns: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    kept: AtomicU64,
    skipped: AtomicU64,
    routed: AtomicU64,
    unrouted: AtomicU64,
    cpu_timeouts: AtomicU64,
    wall_timeouts: AtomicU64,
    out_of_memory: AtomicU64,
    traps: AtomicU64,
    too_large: AtomicU64,
    unavailable: AtomicU64,
    wrong_kind: AtomicU64,
    breaker_refused: AtomicU64,
    reinstantiations: AtomicU64,
    restart_failures: AtomicU64,
    batch_faults: AtomicU64,
    busy_ns: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Binding {
    /// Starts the first instance with `params`, so that a plugin that refuses them (or cannot
    /// start) refuses the binding.
    pub fn new(plugin: Arc<Plugin>, params: Vec<(String, String)>) -> Result<Binding, PluginError> {
        Binding::with_clock(plugin, params, Arc::new(SystemClock))
    }

    /// [`Binding::new`], with the clock its circuit breaker reads.
    pub(crate) fn with_clock(
        plugin: Arc<Plugin>,
        params: Vec<(String, String)>,
        clock: Arc<dyn Clock>,
    ) -> Result<Binding, PluginError> {
        let instance = Instance::start(&plugin, &params)?;
        let breaker = Breaker::new(plugin.shared.limits.breaker, clock, plugin.name_arc());
        Ok(Binding {
            plugin,
            params,
            state: Mutex::new(State {
                instance: Some(instance),
                backoff: Duration::ZERO,
                retry_at: None,
                down_because: String::new(),
                probation: 0,
                tally: Tally::default(),
            }),
            counters: Counters::default(),
            breaker,
        })
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The circuit breaker's state: closed, open (until when) or half-open, since when, and
    /// how often it opened. A caller may skip a call it would be refused.
    pub fn breaker(&self) -> BreakerStatus {
        self.breaker.status()
    }

    /// A filter's or sampler's decision. See [`Instance::keep`].
    pub fn keep(&self, msg: &MessageView<'_>) -> Result<bool, PluginFault> {
        let ticket = self.admit()?;
        let started = Instant::now();
        let mut state = self.lock();
        let keep = self
            .readmit(ticket)
            .and_then(|ticket| self.keep_locked(&mut state, ticket, msg));
        drop(state);
        self.add_busy(started);
        keep
    }

    /// A filter's or sampler's decisions on `msgs`, in order: one call per [`MAX_BATCH`]
    /// messages, as if [`Binding::keep`] were called on each in turn (see the module docs
    /// for faults). Other callers wait for the whole batch.
    ///
    /// [`MAX_BATCH`]: super::MAX_BATCH
    pub fn keep_batch(&self, msgs: &[MessageView<'_>]) -> Vec<Result<bool, PluginFault>> {
        if msgs.is_empty() {
            return Vec::new();
        }
        // An open breaker refuses the whole batch at once, without waiting for the lock.
        let mut leave = match self.breaker.admit() {
            Ok(ticket) => Some(ticket),
            Err(fault) => {
                let n = msgs.len() as u64;
                self.counters
                    .breaker_refused
                    .fetch_add(n, Ordering::Relaxed);
                return vec![Err(fault); msgs.len()];
            }
        };
        let started = Instant::now();
        let mut state = self.lock();
        let mut decisions = Vec::with_capacity(msgs.len());
        for chunk in msgs.chunks(super::MAX_BATCH) {
            // A trial is one message's call, never a batch.
            let closed = matches!(leave, None | Some(Ticket::Closed)) && self.breaker.is_closed();
            if closed && chunk.len() > 1 && state.probation == 0 && state.instance.is_some() {
                leave = None;
                match self.batch_locked(&mut state, chunk) {
                    Ok(keeps) => {
                        decisions.extend(keeps.into_iter().map(Ok));
                        continue;
                    }
                    Err(fault) => {
                        bump(&self.counters.batch_faults);
                        let key = [("plugin", self.plugin.name()), ("fault", fault.kind_name())];
                        if log_limit::allow(&BATCH_FAULTED, &key) {
                            tracing::warn!(plugin = self.plugin.name(), %fault, "a batch call faulted; deciding its messages one call each");
                        }
                        // A batch the machine starved names no guilty message: only its own
                        // messages are decided one call each.
                        state.probation = match fault {
                            PluginFault::Timeout(TimeoutKind::Wall) => chunk.len() as u64,
                            _ => PROBATION,
                        };
                    }
                }
            }
            for msg in chunk {
                let ticket = match leave.take() {
                    Some(ticket) => self.readmit(ticket),
                    None => self.admit(),
                };
                decisions.push(ticket.and_then(|ticket| self.keep_locked(&mut state, ticket, msg)));
                state.probation = state.probation.saturating_sub(1);
            }
        }
        drop(state);
        self.add_busy(started);
        decisions
    }

    /// One call to `keep-batch` on the running instance. After a fault the instance is
    /// dropped and the next call starts a new one at once: the messages are not at fault
    /// yet, and a plugin that faults on each of them backs off as usual when they are
    /// decided one by one.
    fn batch_locked(
        &self,
        state: &mut State,
        msgs: &[MessageView<'_>],
    ) -> Result<Vec<bool>, PluginFault> {
        let Some(instance) = state.instance.as_mut() else {
            return Err(PluginFault::Unavailable {
                reason: state.down_because.clone(),
                retry_in: Duration::ZERO,
            });
        };
        match instance.keep_batch(msgs) {
            Ok(keeps) => {
                let n = keeps.len() as u64;
                let kept = keeps.iter().filter(|&&k| k).count() as u64;
                let c = &self.counters;
                c.calls.fetch_add(n, Ordering::Relaxed);
                c.kept.fetch_add(kept, Ordering::Relaxed);
                c.skipped.fetch_add(n - kept, Ordering::Relaxed);
                state.backoff = Duration::ZERO;
                self.breaker.record_successes(&mut state.tally, n);
                Ok(keeps)
            }
            Err(fault) => {
                if fault.poisons_instance() {
                    state.instance = None;
                    state.down_because = fault.to_string();
                    state.retry_at = None;
                }
                Err(fault)
            }
        }
    }

    fn keep_locked(
        &self,
        state: &mut MutexGuard<'_, State>,
        ticket: Ticket<'_>,
        msg: &MessageView<'_>,
    ) -> Result<bool, PluginFault> {
        bump(&self.counters.calls);
        let keep = self.call_locked(state, ticket, |instance| instance.keep(msg))?;
        bump(if keep {
            &self.counters.kept
        } else {
            &self.counters.skipped
        });
        Ok(keep)
    }

    /// The breaker's leave to call, or its refusal, counted.
    fn admit(&self) -> Result<Ticket<'_>, PluginFault> {
        self.breaker
            .admit()
            .inspect_err(|_| bump(&self.counters.breaker_refused))
    }

    /// Under the lock: a caller let in while the breaker was closed asks again if it opened
    /// while the caller waited.
    fn readmit<'a>(&'a self, ticket: Ticket<'a>) -> Result<Ticket<'a>, PluginFault> {
        match ticket {
            Ticket::Closed if !self.breaker.is_closed() => self.admit(),
            ticket => Ok(ticket),
        }
    }

    fn add_busy(&self, started: Instant) {
        let busy = started.elapsed().as_nanos() as u64;
        self.counters.busy_ns.fetch_add(busy, Ordering::Relaxed);
    }

    /// A router's decision. See [`Instance::route`].
    pub fn route(&self, msg: &MessageView<'_>) -> Result<Route, PluginFault> {
        let route = self.with_instance(|instance| instance.route(msg))?;
        bump(if route.is_unrouted() {
            &self.counters.unrouted
        } else {
            &self.counters.routed
        });
        Ok(route)
    }

    pub fn stats(&self) -> BindingStats {
        let c = &self.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BindingStats {
            calls: read(&c.calls),
            kept: read(&c.kept),
            skipped: read(&c.skipped),
            routed: read(&c.routed),
            unrouted: read(&c.unrouted),
            cpu_timeouts: read(&c.cpu_timeouts),
            wall_timeouts: read(&c.wall_timeouts),
            out_of_memory: read(&c.out_of_memory),
            traps: read(&c.traps),
            too_large: read(&c.too_large),
            unavailable: read(&c.unavailable),
            wrong_kind: read(&c.wrong_kind),
            breaker_refused: read(&c.breaker_refused),
            reinstantiations: read(&c.reinstantiations),
            restart_failures: read(&c.restart_failures),
            batch_faults: read(&c.batch_faults),
            busy_ns: read(&c.busy_ns),
        }
    }

    /// Runs `call` on the instance, starting one first if the backoff is over, and replaces
    /// it after a fault.
    fn with_instance<R>(
        &self,
        call: impl FnOnce(&mut Instance) -> Result<R, PluginFault>,
    ) -> Result<R, PluginFault> {
        let ticket = self.admit()?;
        let started = Instant::now();
        let mut state = self.lock();
        let result = self.readmit(ticket).and_then(|ticket| {
            bump(&self.counters.calls);
            self.call_locked(&mut state, ticket, call)
        });
        drop(state);
        let busy = started.elapsed().as_nanos() as u64;
        self.counters.busy_ns.fetch_add(busy, Ordering::Relaxed);
        result
    }

    /// Runs `call`, which `ticket` let through, and records its outcome with the breaker.
    /// A trial call does not wait out the restart backoff: the cool-down was longer.
    fn call_locked<R>(
        &self,
        state: &mut MutexGuard<'_, State>,
        ticket: Ticket<'_>,
        call: impl FnOnce(&mut Instance) -> Result<R, PluginFault>,
    ) -> Result<R, PluginFault> {
        if ticket.is_trial() {
            state.retry_at = None;
        }
        let instance = match state.instance.take() {
            Some(instance) => instance,
            None => match self.restart(state) {
                Ok(instance) => instance,
                Err((fault, outcome)) => {
                    bump(&self.counters.unavailable);
                    self.breaker.record(&mut state.tally, ticket, outcome);
                    return Err(fault);
                }
            },
        };
        let instance = state.instance.insert(instance);
        match call(instance) {
            Ok(decision) => {
                state.backoff = Duration::ZERO;
                self.breaker
                    .record(&mut state.tally, ticket, Outcome::Success);
                Ok(decision)
            }
            Err(fault) => {
                self.count(&fault);
                if fault.poisons_instance() {
                    state.instance = None;
                    // Not the plugin's doing (a body over the cap, a machine too busy to give
                    // the call its CPU): start over at once, without growing the backoff.
                    let wait = !matches!(
                        fault,
                        PluginFault::TooLarge { .. } | PluginFault::Timeout(TimeoutKind::Wall)
                    );
                    state.went_down(fault.to_string(), wait);
                    let key = [("plugin", self.plugin.name()), ("fault", fault.kind_name())];
                    if log_limit::allow(&FAULTED, &key) {
                        tracing::warn!(plugin = self.plugin.name(), %fault, retry_in = ?state.backoff, "plugin faulted; it will be restarted");
                    }
                }
                let outcome = Outcome::of(&fault);
                self.breaker.record(&mut state.tally, ticket, outcome);
                Err(fault)
            }
        }
    }

    /// A new instance, unless the backoff is still running (no guest code ran: a neutral
    /// outcome for the breaker) or the start fails (the plugin's fault).
    fn restart(&self, state: &mut State) -> Result<Instance, (PluginFault, Outcome)> {
        let now = Instant::now();
        if let Some(retry_at) = state.retry_at.filter(|&at| at > now) {
            let fault = PluginFault::Unavailable {
                reason: state.down_because.clone(),
                retry_in: retry_at - now,
            };
            return Err((fault, Outcome::Neutral));
        }
        match Instance::start(&self.plugin, &self.params) {
            Ok(instance) => {
                bump(&self.counters.reinstantiations);
                state.retry_at = None;
                Ok(instance)
            }
            Err(err) => {
                bump(&self.counters.restart_failures);
                if log_limit::allow(&RESTART_FAILED, &[("plugin", self.plugin.name())]) {
                    tracing::warn!(plugin = self.plugin.name(), error = %err, "plugin restart failed");
                }
                state.went_down(format!("restart failed: {err}"), true);
                let fault = PluginFault::Unavailable {
                    reason: state.down_because.clone(),
                    retry_in: state.backoff,
                };
                Err((fault, Outcome::Fault))
            }
        }
    }

    fn count(&self, fault: &PluginFault) {
        let c = &self.counters;
        bump(match fault {
            PluginFault::Timeout(TimeoutKind::Cpu) => &c.cpu_timeouts,
            PluginFault::Timeout(TimeoutKind::Wall) => &c.wall_timeouts,
            PluginFault::OutOfMemory => &c.out_of_memory,
            PluginFault::Trap(_) => &c.traps,
            PluginFault::TooLarge { .. } => &c.too_large,
            PluginFault::Unavailable { .. } => &c.unavailable,
            PluginFault::WrongKind { .. } => &c.wrong_kind,
            PluginFault::BreakerOpen { .. } => &c.breaker_refused,
        });
    }

    /// The state, also after a thread panicked holding it: the instance it was using is
    /// dropped, since its call may have stopped halfway.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| {
            self.state.clear_poison();
            let mut state = poisoned.into_inner();
            state.instance = None;
            state
        })
    }
}

impl State {
    /// Records that the instance is gone because of `why`; with `wait`, the next start waits
    /// out a backoff that doubles with each fault in a row.
    fn went_down(&mut self, why: String, wait: bool) {
        self.down_because = why;
        if !wait {
            self.retry_at = None;
            return;
        }
        self.backoff = (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        self.retry_at = Some(Instant::now() + self.backoff);
    }
}
