//! The `[plugins]` section: bounds on every plugin instance, and the compile cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{byte_size, duration, opt_duration};
use crate::plugin::PluginLimits;

/// Bounds on every plugin instance, and the compile cache. The defaults suit a per-message
/// filter on the hot path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Most CPU time one decision may use (the calling thread's, so a busy machine does not
    /// time a plugin out).
    #[serde(with = "duration")]
    pub call_timeout: Duration,
    /// Longest one decision may take in wall-clock time, however little CPU the machine gave
    /// it: the backstop that keeps a starved call from holding a message. Default 10 ×
    /// `call_timeout`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub wall_timeout: Option<Duration>,
    /// Most linear memory one instance may have: bytes, or a string like `"16MiB"`.
    #[serde(with = "byte_size")]
    pub memory: u64,
    /// Longest instantiation plus `init` may run.
    #[serde(with = "duration")]
    pub init_timeout: Duration,
    /// Where compiled plugins are cached. Default `<data_dir>/plugin-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Threads that run plugin calls (never the async workers). Default: one per core, at
    /// least 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Most CPU time a router may use for one whole publish (all of an MPUB's messages);
    /// messages not routed by then get the router's failure policy.
    #[serde(with = "duration")]
    pub publish_timeout: Duration,
    /// Longest a message waits for a restarting plugin before its failure policy applies.
    #[serde(with = "duration")]
    pub max_wait: Duration,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        let limits = PluginLimits::default();
        PluginsConfig {
            call_timeout: limits.call_timeout,
            wall_timeout: limits.wall_timeout,
            memory: limits.memory_bytes,
            init_timeout: limits.init_timeout,
            cache_dir: None,
            threads: None,
            publish_timeout: limits.publish_timeout,
            max_wait: limits.max_wait,
        }
    }
}

impl PluginsConfig {
    pub fn limits(&self) -> PluginLimits {
        PluginLimits {
            call_timeout: self.call_timeout,
            wall_timeout: self.wall_timeout,
            memory_bytes: self.memory,
            init_timeout: self.init_timeout,
            publish_timeout: self.publish_timeout,
            max_wait: self.max_wait,
        }
    }

    /// The compile cache directory: `cache_dir`, or `<data_dir>/plugin-cache`.
    pub fn cache_dir(&self, data_dir: &Path) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("plugin-cache"))
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |field: &str, why: &str| Err((format!("plugins.{field}"), why.to_owned()));
        if self.call_timeout.is_zero() {
            return invalid("call_timeout", "must be more than 0");
        }
        if self
            .wall_timeout
            .is_some_and(|wall| wall < self.call_timeout)
        {
            return invalid("wall_timeout", "must be at least plugins.call_timeout");
        }
        if self.publish_timeout.is_zero() {
            return invalid("publish_timeout", "must be more than 0");
        }
        if self.threads == Some(0) {
            return invalid("threads", "must be at least 1");
        }
        if self.init_timeout.is_zero() {
            return invalid("init_timeout", "must be more than 0");
        }
        if self.memory < MIN_PLUGIN_MEMORY {
            return invalid("memory", "must be at least 1MiB");
        }
        Ok(())
    }
}

/// The smallest memory cap accepted: a Rust guest needs more than this to start.
const MIN_PLUGIN_MEMORY: u64 = 1 << 20;
