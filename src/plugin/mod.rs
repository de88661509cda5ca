//! The plugin host: routers, filters and samplers as WebAssembly components, run on wasmtime.
//!
//! This module is the only one that names wasmtime. The rest of the broker sees plain types:
//! a [`PluginHost`] loads a [`Plugin`] (one compiled component, checked against its world),
//! [`PluginHost::instantiate`] turns it into an [`Instance`] (a store with its limits, after a
//! successful `init`), and a [`Binding`] keeps one instance serving a topic or channel,
//! re-instantiating it with backoff after a fault, and stops calling it for a while when it
//! keeps faulting (its circuit breaker, `breaker.rs`).
//!
//! A message reaches the guest as a `borrow<message>` resource whose accessors read the
//! caller's [`MessageView`] in place: a plugin copies only what it asks for.
//!
//! # Invariants
//! - Every guest call (instantiation, `init`, each decision) runs under a CPU budget with a
//!   wall-clock backstop, checked at epoch deadlines, and the store's memory cap. A timeout,
//!   a trap or a denied allocation comes back as a [`PluginFault`]; it never unwinds into the
//!   broker.
//! - A call's outcome depends on the plugin and the message, not on the machine's load,
//!   unless the machine starves the call past its wall-clock backstop: that timeout says so
//!   ([`TimeoutKind::Wall`]).
//! - After any fault the instance's store is unusable (a trap poisons it). [`Instance`] refuses
//!   further calls with [`PluginFault::Unavailable`]; [`Binding`] drops it and starts a fresh
//!   one after a backoff.
//! - A message is readable by the guest only during the call it is passed to.
//! - Generated bindings and wasmtime types never leave this module.

mod binding;
mod bindings;
mod breaker;
mod cache;
mod engine;
mod error;
mod instance;
mod limits;
mod wasi;
mod world;

#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::message::{Headers, MessageId};

pub use binding::{Binding, BindingStats};
pub use breaker::{BreakerSettings, BreakerState, BreakerStatus};

/// The most messages one `keep-batch` call decides.
pub const MAX_BATCH: usize = 64;
pub use engine::{Plugin, PluginHost};
pub use error::{PluginError, PluginFault, TimeoutKind};
pub use instance::Instance;
pub(crate) use limits::thread_cpu_time;

/// Which world a plugin targets, and so which decision it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// Bound to a topic: chooses the channels (and other topics) that get a message.
    Router,
    /// Bound to a channel: keeps or skips a message.
    Filter,
    /// Bound to a channel: keeps or skips, with state (rates, 1-in-N).
    Sampler,
}

impl PluginKind {
    /// The WIT world's name: `router`, `filter` or `sampler`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Router => "router",
            PluginKind::Filter => "filter",
            PluginKind::Sampler => "sampler",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not `router`, `filter` or `sampler`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown plugin kind {0:?}: expected router, filter or sampler")]
pub struct UnknownPluginKind(pub String);

impl FromStr for PluginKind {
    type Err = UnknownPluginKind;

    fn from_str(s: &str) -> Result<Self, UnknownPluginKind> {
        match s {
            "router" => Ok(PluginKind::Router),
            "filter" => Ok(PluginKind::Filter),
            "sampler" => Ok(PluginKind::Sampler),
            other => Err(UnknownPluginKind(other.to_owned())),
        }
    }
}

/// What one plugin instance may use, and when its binding stops calling it. The defaults suit
/// a per-message filter on the hot path.
///
/// Time limits are CPU time of the thread that runs the call, so that a busy machine does not
/// change a plugin's decisions; each has a wall-clock backstop [`WALL_BACKSTOP_FACTOR`] times
/// longer (or `wall_timeout`), so that a starved call still ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Most CPU time one decision (`keep`, `route`, one `keep-batch`) may use. Default 10 ms.
    pub call_timeout: Duration,
    /// Longest one decision may take in wall-clock time, however little CPU it got.
    /// `None`: [`WALL_BACKSTOP_FACTOR`] × `call_timeout` (100 ms). The config refuses one
    /// shorter than `call_timeout`; tests use that to stand for a starved thread.
    pub wall_timeout: Option<Duration>,
    /// Most linear memory one instance may have, all memories together. Default 16 MiB.
    pub memory_bytes: u64,
    /// Most CPU time instantiation plus `init` may use; its wall-clock backstop is
    /// [`WALL_BACKSTOP_FACTOR`] times longer. Default 1 s.
    pub init_timeout: Duration,
    /// Most CPU time a router may use for all the messages of one publish together (an
    /// MPUB's); the rest get the failure policy. Default 100 ms.
    pub publish_timeout: Duration,
    /// Longest a message waits for its plugin to restart after a fault before the failure
    /// policy decides it. Default 1 s.
    pub max_wait: Duration,
    /// When a binding's circuit breaker opens, and for how long.
    pub breaker: BreakerSettings,
}

/// The default wall-clock backstop of a call, as a multiple of its CPU budget.
pub const WALL_BACKSTOP_FACTOR: u32 = 10;

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            call_timeout: Duration::from_millis(10),
            wall_timeout: None,
            memory_bytes: 16 << 20,
            init_timeout: Duration::from_secs(1),
            publish_timeout: Duration::from_millis(100),
            max_wait: Duration::from_secs(1),
            breaker: BreakerSettings::default(),
        }
    }
}

impl PluginLimits {
    /// The wall-clock backstop of one decision: `wall_timeout`, or
    /// [`WALL_BACKSTOP_FACTOR`] × `call_timeout`.
    pub fn call_wall_timeout(&self) -> Duration {
        self.wall_timeout
            .unwrap_or_else(|| self.call_timeout.saturating_mul(WALL_BACKSTOP_FACTOR))
    }
}

/// The message a plugin decides on, borrowed from the caller for one call.
#[derive(Debug, Clone, Copy)]
pub struct MessageView<'a> {
    /// The topic it was published to.
    pub topic: &'a str,
    pub id: MessageId,
    /// Publish time, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Deliveries so far on this channel, the coming one included (0 for routers).
    pub attempts: u16,
    pub headers: &'a Headers,
    pub body: &'a [u8],
}

/// A router's decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// Channels of the topic that get the message. Empty with no forwards: unrouted.
    pub channels: Vec<String>,
    /// Other topics that get a copy, routed by their own rules.
    pub forward: Vec<String>,
}

impl Route {
    /// True when nothing gets the message, so the binding's `unrouted` policy applies.
    pub fn is_unrouted(&self) -> bool {
        self.channels.is_empty() && self.forward.is_empty()
    }
}
