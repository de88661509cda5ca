//! One running plugin: a store with its limits and the instantiated component, and the calls
//! into it, each bounded and with its failure classified as a [`PluginFault`].
//!
//! Every call starts with an epoch deadline one tick away; the store's deadline callback then
//! runs the call's [`CallClock`](super::limits::CallClock), which extends the deadline while
//! the CPU budget and the wall-clock backstop last, and interrupts the call when one is used
//! up (see `plugin::limits`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{
    batch_handle, filter::Filter, lend_messages, message_handle, router::Router,
};
use super::bindings::{sampler::Sampler, BodyTooLarge, HostState};
use super::engine::Pre;
use super::error::detail;
use super::limits::{thread_cpu_time, CallBudget, Check, FIRST_CHECK_TICKS};
use super::{
    MessageView, Plugin, PluginError, PluginFault, Route, TimeoutKind, WALL_BACKSTOP_FACTOR,
};

/// A plugin instance with its own store, memory cap and state (a sampler's counters live
/// here). Calls take `&mut self`: one call at a time.
///
/// After a call fails with a fault that ran guest code, the store is poisoned and every later
/// call returns [`PluginFault::Unavailable`]: drop the instance and start a new one
/// ([`Binding`](super::Binding) does this with backoff).
pub struct Instance {
    plugin: Arc<Plugin>,
    store: Store<HostState>,
    exports: Exports,
    call_budget: CallBudget,
    /// The fault that poisoned the store.
    poisoned: Option<PluginFault>,
}

enum Exports {
    Router(Router),
    Filter(Filter),
    Sampler(Sampler),
}

impl Instance {
    /// Instantiates `plugin` in a new store and runs its `init` with `params`, each under the
    /// host's `init_timeout` of CPU time (the deadline is set before instantiating, which runs
    /// guest code).
    pub(super) fn start(
        plugin: &Arc<Plugin>,
        params: &[(String, String)],
    ) -> Result<Instance, PluginError> {
        let shared = &plugin.shared;
        let limits = shared.limits;
        let init_budget = CallBudget {
            cpu: limits.init_timeout,
            wall: limits.init_timeout.saturating_mul(WALL_BACKSTOP_FACTOR),
        };
        let call_budget = CallBudget {
            cpu: limits.call_timeout,
            wall: limits.call_wall_timeout(),
        };
        let state = HostState::new(plugin.name_arc(), limits.memory_bytes, init_budget);
        let mut store = Store::new(&shared.engine, state);
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_callback(|mut store| {
            let check = store
                .data_mut()
                .clock
                .check(Instant::now(), thread_cpu_time());
            Ok(match check {
                Check::Continue(ticks) => UpdateDeadline::Continue(ticks),
                Check::Stop(_) => UpdateDeadline::Interrupt,
            })
        });

        store.set_epoch_deadline(FIRST_CHECK_TICKS);
        store.data_mut().start_call(init_budget);
        let exports = match &plugin.pre {
            Pre::Router(pre) => pre.instantiate(&mut store).map(Exports::Router),
            Pre::Filter(pre) => pre.instantiate(&mut store).map(Exports::Filter),
            Pre::Sampler(pre) => pre.instantiate(&mut store).map(Exports::Sampler),
        }
        .map_err(|err| start_error(plugin, &store, err))?;

        // The generated `init` takes the WIT `params` type, a `Vec`.
        let params = params.to_vec();
        store.set_epoch_deadline(FIRST_CHECK_TICKS);
        store.data_mut().start_call(init_budget);
        let init = match &exports {
            Exports::Router(e) => e.call_init(&mut store, &params),
            Exports::Filter(e) => e.call_init(&mut store, &params),
            Exports::Sampler(e) => e.call_init(&mut store, &params),
        };
        match init {
            Ok(Ok(())) => Ok(Instance {
                plugin: Arc::clone(plugin),
                store,
                exports,
                call_budget,
                poisoned: None,
            }),
            Ok(Err(message)) => Err(PluginError::Init {
                plugin: plugin.name().to_owned(),
                message,
            }),
            Err(err) => Err(PluginError::InitFault {
                plugin: plugin.name().to_owned(),
                fault: classify(err, store.data()),
            }),
        }
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// A filter's or sampler's decision: keep the message for this channel, or skip it.
    pub fn keep(&mut self, msg: &MessageView<'_>) -> Result<bool, PluginFault> {
        self.call(
            std::slice::from_ref(msg),
            "keep",
            |exports, store| match exports {
                Exports::Filter(e) => Some(e.call_keep(store, message_handle())),
                Exports::Sampler(e) => Some(e.call_keep(store, message_handle())),
                Exports::Router(_) => None,
            },
        )
    }

    /// A router's decision: the channels and other topics that get the message.
    pub fn route(&mut self, msg: &MessageView<'_>) -> Result<Route, PluginFault> {
        let route = self.call(
            std::slice::from_ref(msg),
            "route",
            |exports, store| match exports {
                Exports::Router(e) => Some(e.call_route(store, message_handle())),
                Exports::Filter(_) | Exports::Sampler(_) => None,
            },
        )?;
        Ok(Route {
            channels: route.channels,
            forward: route.forward,
        })
    }

    /// A filter's or sampler's decisions on several messages in one call (`keep-batch`), one
    /// per message, in order; at most [`MAX_BATCH`](super::MAX_BATCH) of them. The call
    /// budget is the same as for one message. An answer of the wrong length is a fault.
    pub fn keep_batch(&mut self, msgs: &[MessageView<'_>]) -> Result<Vec<bool>, PluginFault> {
        debug_assert!(msgs.len() <= super::MAX_BATCH);
        let keeps = self.call(msgs, "keep-batch", |exports, store| match exports {
            Exports::Filter(e) => Some(e.call_keep_batch(store, batch_handle())),
            Exports::Sampler(e) => Some(e.call_keep_batch(store, batch_handle())),
            Exports::Router(_) => None,
        })?;
        if keeps.len() != msgs.len() {
            let fault = PluginFault::Trap(format!(
                "keep-batch answered {} decisions for {} messages",
                keeps.len(),
                msgs.len()
            ));
            self.poisoned = Some(fault.clone());
            return Err(fault);
        }
        Ok(keeps)
    }

    /// Runs one decision on `msgs` (one message, or a batch) under the call deadline.
    /// `decide` returns `None` when the call does not exist in this plugin's world; then no
    /// guest code runs.
    fn call<R>(
        &mut self,
        msgs: &[MessageView<'_>],
        name: &'static str,
        decide: impl FnOnce(&Exports, &mut Store<HostState>) -> Option<wasmtime::Result<R>>,
    ) -> Result<R, PluginFault> {
        if let Some(fault) = &self.poisoned {
            return Err(PluginFault::Unavailable {
                reason: format!("the instance is unusable after an earlier fault ({fault})"),
                retry_in: Duration::ZERO,
            });
        }
        let store = &mut self.store;
        store.set_epoch_deadline(FIRST_CHECK_TICKS);
        store.data_mut().start_call(self.call_budget);
        let exports = &self.exports;
        match lend_messages(store, msgs, |store| decide(exports, store)) {
            Some(Ok(decision)) => Ok(decision),
            None => Err(PluginFault::WrongKind {
                kind: self.plugin.kind(),
                call: name,
            }),
            Some(Err(err)) => {
                let fault = classify(err, self.store.data());
                self.poisoned = Some(fault.clone());
                Err(fault)
            }
        }
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("plugin", &self.plugin)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// Instantiation failed: a fault if guest code ran and failed, otherwise a link or resource
/// error.
fn start_error(plugin: &Plugin, store: &Store<HostState>, err: wasmtime::Error) -> PluginError {
    let ran_guest = err.downcast_ref::<Trap>().is_some() || store.data().memory.denied();
    if ran_guest {
        return PluginError::InitFault {
            plugin: plugin.name().to_owned(),
            fault: classify(err, store.data()),
        };
    }
    PluginError::Instantiate {
        plugin: plugin.name().to_owned(),
        detail: detail(&err),
    }
}

/// Says what went wrong in a call that failed after guest code ran.
///
/// - the `body` accessor refused a body over the memory cap: [`PluginFault::TooLarge`];
/// - the call clock interrupted it: [`PluginFault::Timeout`], saying which bound it hit;
/// - the memory cap refused a growth during the call: [`PluginFault::OutOfMemory`] (the trap
///   that follows is the guest's allocator giving up);
/// - anything else is a [`PluginFault::Trap`], with the guest's last error-level log line
///   (where a Rust guest's panic message goes) when there is one.
fn classify(err: wasmtime::Error, state: &HostState) -> PluginFault {
    if let Some(too_large) = err.downcast_ref::<BodyTooLarge>() {
        return PluginFault::TooLarge {
            body: too_large.body,
            limit: too_large.limit,
        };
    }
    if let Some(Trap::Interrupt) = err.downcast_ref::<Trap>() {
        // Only the call clock interrupts, and it records why first. Were that ever not so,
        // nothing would show that the plugin used its budget: do not blame it.
        let kind = state.clock.stopped().unwrap_or(TimeoutKind::Wall);
        return PluginFault::Timeout(kind);
    }
    if state.memory.denied() {
        return PluginFault::OutOfMemory;
    }
    // The root cause only: the wasm backtrace wasmtime adds as context is long, and says
    // little for a stripped guest.
    let reason = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => err.root_cause().to_string(),
    };
    PluginFault::Trap(match state.last_error() {
        Some(line) => format!("{reason}; it logged: {line}"),
        None => reason,
    })
}
