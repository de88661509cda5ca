//! What can go wrong loading a plugin ([`PluginError`]) and running it ([`PluginFault`]).
//!
//! Errors from wasmtime are rendered to text with their whole chain (`detail`), so that the
//! broker can log or report them without naming wasmtime.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::PluginKind;

/// Why a plugin could not be loaded, or an instance of it started.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read plugin {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("plugin {plugin} is not a WebAssembly component: {detail}")]
    NotWasm { plugin: String, detail: String },
    #[error("plugin {plugin} failed to compile: {detail}")]
    Compile { plugin: String, detail: String },
    #[error(
        "plugin {plugin} does not target the {expected} world of quiver:plugin@0.1.0: {detail}"
    )]
    WrongWorld {
        plugin: String,
        expected: PluginKind,
        detail: String,
    },
    /// The component's type targets another world than the kind it is bound as (see
    /// `plugin::world`). `targets` is `router`, `sampler`, or `filter or sampler`.
    #[error("plugin {plugin} targets the {targets} world but is bound as a {bound}: {why}")]
    KindMismatch {
        plugin: String,
        targets: &'static str,
        bound: PluginKind,
        why: String,
    },
    #[error("plugin {plugin} could not be instantiated: {detail}")]
    Instantiate { plugin: String, detail: String },
    #[error("plugin {plugin} refused its parameters: {message}")]
    Init { plugin: String, message: String },
    #[error("plugin {plugin} faulted while starting: {fault}")]
    InitFault { plugin: String, fault: PluginFault },
    #[error("plugin compile cache at {} is unusable", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the plugin engine: {detail}")]
    Engine { detail: String },
}

/// Why one call into a plugin failed. The broker applies the binding's failure policy
/// (deliver, skip or dead-letter) to the message; the plugin's instance is replaced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFault {
    /// The call was interrupted: it used its CPU budget (the plugin's doing), or passed the
    /// wall-clock backstop first (the machine's: its thread got too little CPU).
    #[error("plugin call timed out: {0}")]
    Timeout(TimeoutKind),
    /// The plugin needed more memory than its cap allows.
    #[error("plugin ran out of memory (its memory cap refused to grow)")]
    OutOfMemory,
    /// The plugin trapped: a panic, an `unreachable`, an out-of-bounds access.
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin asked for a body that cannot fit in its memory cap. No copy was made.
    #[error("message body of {body} bytes cannot fit in the plugin's {limit}-byte memory cap")]
    TooLarge { body: usize, limit: u64 },
    /// No guest code ran: the instance is gone after an earlier fault and its replacement is
    /// not running yet (waiting out its backoff, or it failed to start).
    #[error("plugin unavailable for {retry_in:?} more: {reason}")]
    Unavailable { reason: String, retry_in: Duration },
    /// No guest code ran: the call does not match the plugin's world (`route` on a filter).
    #[error("{call} called on a {kind} plugin")]
    WrongKind {
        kind: PluginKind,
        call: &'static str,
    },
    /// No guest code ran: the binding's circuit breaker is open after repeated faults, or
    /// half-open with its one trial call under way (`retry_in` is then zero).
    #[error("plugin not called: its circuit breaker is open, next trial call in {retry_in:?}")]
    BreakerOpen { retry_in: Duration },
}

impl PluginFault {
    /// The fault's kind in a word or two, without its details: for logs and their rate
    /// limits.
    pub fn kind_name(&self) -> &'static str {
        match self {
            PluginFault::Timeout(TimeoutKind::Cpu) => "cpu timeout",
            PluginFault::Timeout(TimeoutKind::Wall) => "wall timeout",
            PluginFault::OutOfMemory => "out of memory",
            PluginFault::Trap(_) => "trap",
            PluginFault::TooLarge { .. } => "too large",
            PluginFault::Unavailable { .. } => "unavailable",
            PluginFault::WrongKind { .. } => "wrong kind",
            PluginFault::BreakerOpen { .. } => "breaker open",
        }
    }

    /// True when guest code ran and failed, so the instance is poisoned and must be replaced.
    pub fn poisons_instance(&self) -> bool {
        matches!(
            self,
            PluginFault::Timeout(_)
                | PluginFault::OutOfMemory
                | PluginFault::Trap(_)
                | PluginFault::TooLarge { .. }
        )
    }
}

/// Which bound stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// It used its CPU budget (`call_timeout`): the plugin did too much work, or loops.
    Cpu,
    /// Its CPU budget was not spent, but the wall-clock backstop (`wall_timeout`) passed:
    /// the machine gave the calling thread too little CPU.
    Wall,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Cpu => "it used its CPU budget",
            TimeoutKind::Wall => {
                "it passed the wall-clock backstop with CPU budget left (the machine is overloaded)"
            }
        })
    }
}

/// Renders a wasmtime error with its causes, outermost first.
pub(super) fn detail(err: &wasmtime::Error) -> String {
    format!("{err:#}")
}
