//! The `[plugins]` section: bounds on every plugin instance, each binding's circuit breaker
//! (`[plugins.breaker]`), and the compile cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{byte_size, duration, opt_duration};
use crate::plugin::{BreakerSettings, PluginLimits};

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
    /// When a binding stops calling a plugin that keeps faulting (`[plugins.breaker]`).
    pub breaker: BreakerConfig,
}

/// `[plugins.breaker]`: each binding's circuit breaker. The defaults stop calling a plugin
/// that fails 5 calls in a row, or more than half of at least 20 calls in 10 s, for 1 s, then
/// for twice as long after each failed trial call, up to 60 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// False: never open (a faulting plugin is still restarted with a backoff).
    pub enabled: bool,
    /// Faults in a row that open the breaker; 0 turns this trigger off.
    pub consecutive_faults: u32,
    /// Open when more than this percentage of the calls in `window` faulted (0 to 100; 100
    /// turns this trigger off).
    pub fault_percent: u8,
    /// Fewest calls in `window` for `fault_percent` to apply.
    pub min_calls: u32,
    /// The sliding window over which `fault_percent` is measured.
    #[serde(with = "duration")]
    pub window: Duration,
    /// How long the breaker first stays open before its trial call.
    #[serde(with = "duration")]
    pub cool_down: Duration,
    /// The longest cool-down: it doubles after each failed trial up to this.
    #[serde(with = "duration")]
    pub max_cool_down: Duration,
    /// How long the breaker must stay closed for its next cool-down to start from
    /// `cool_down` again.
    #[serde(with = "duration")]
    pub reset_after: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        let settings = BreakerSettings::default();
        BreakerConfig {
            enabled: settings.enabled,
            consecutive_faults: settings.consecutive_faults,
            fault_percent: settings.fault_percent,
            min_calls: settings.min_calls,
            window: settings.window,
            cool_down: settings.cool_down,
            max_cool_down: settings.max_cool_down,
            reset_after: settings.reset_after,
        }
    }
}

impl BreakerConfig {
    pub fn settings(&self) -> BreakerSettings {
        BreakerSettings {
            enabled: self.enabled,
            consecutive_faults: self.consecutive_faults,
            fault_percent: self.fault_percent,
            min_calls: self.min_calls,
            window: self.window,
            cool_down: self.cool_down,
            max_cool_down: self.max_cool_down,
            reset_after: self.reset_after,
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let invalid =
            |field: &str, why: &str| Err((format!("plugins.breaker.{field}"), why.to_owned()));
        if self.fault_percent > 100 {
            return invalid("fault_percent", "must be a percentage, 0 to 100");
        }
        if self.enabled && self.consecutive_faults == 0 && self.fault_percent == 100 {
            return invalid(
                "consecutive_faults",
                "is 0 and fault_percent 100, so nothing would open the breaker; set plugins.breaker.enabled = false instead",
            );
        }
        if self.min_calls == 0 {
            return invalid("min_calls", "must be at least 1");
        }
        if self.window < MIN_BREAKER_WINDOW {
            return invalid("window", "must be at least 10ms");
        }
        if self.cool_down.is_zero() {
            return invalid("cool_down", "must be more than 0");
        }
        if self.max_cool_down < self.cool_down {
            return invalid(
                "max_cool_down",
                "must be at least plugins.breaker.cool_down",
            );
        }
        if self.reset_after.is_zero() {
            return invalid("reset_after", "must be more than 0");
        }
        Ok(())
    }
}

/// The shortest fault-rate window: it slides in tenths, of a millisecond at least.
const MIN_BREAKER_WINDOW: Duration = Duration::from_millis(10);

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
            breaker: BreakerConfig::default(),
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
            breaker: self.breaker.settings(),
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
        self.breaker.validate()
    }
}

/// The smallest memory cap accepted: a Rust guest needs more than this to start.
const MIN_PLUGIN_MEMORY: u64 = 1 << 20;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn breaker_thresholds_read_from_their_table_with_defaults_for_the_rest() {
        let config: Config = toml::from_str(
            "[plugins.breaker]\nconsecutive_faults = 3\nwindow = \"30s\"\ncool_down = \"250ms\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        let breaker = config.plugins.limits().breaker;
        assert_eq!(breaker.consecutive_faults, 3);
        assert_eq!(breaker.window, Duration::from_secs(30));
        assert_eq!(breaker.cool_down, Duration::from_millis(250));
        assert_eq!(
            BreakerSettings {
                consecutive_faults: 5,
                window: Duration::from_secs(10),
                cool_down: Duration::from_secs(1),
                ..breaker
            },
            BreakerSettings::default(),
            "the rest are the defaults"
        );
        assert!(toml::from_str::<Config>("[plugins.breaker]\ncooldown = \"1s\"\n").is_err());
    }

    #[test]
    fn breaker_validation_names_the_bad_field() {
        let bad = [
            ("fault_percent = 101", "plugins.breaker.fault_percent"),
            (
                "consecutive_faults = 0\nfault_percent = 100",
                "plugins.breaker.consecutive_faults",
            ),
            ("min_calls = 0", "plugins.breaker.min_calls"),
            ("window = \"5ms\"", "plugins.breaker.window"),
            ("cool_down = \"0\"", "plugins.breaker.cool_down"),
            (
                "cool_down = \"2m\"\nmax_cool_down = \"1m\"",
                "plugins.breaker.max_cool_down",
            ),
            ("reset_after = \"0\"", "plugins.breaker.reset_after"),
        ];
        for (table, field) in bad {
            let config: Config = toml::from_str(&format!("[plugins.breaker]\n{table}\n")).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{table}: {err}");
        }
        let off: Config = toml::from_str(
            "[plugins.breaker]\nenabled = false\nconsecutive_faults = 0\nfault_percent = 100\n",
        )
        .unwrap();
        off.validate().unwrap();
    }
}
