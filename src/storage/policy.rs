//! Storage settings: the fsync policy, segment size and retention, per broker with per-topic
//! overrides.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{format_duration, parse_duration};

/// When appended messages are fsynced, and so when a publish is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Group commit: PUB-OK after the fsync that covers the message.
    Always,
    /// PUB-OK after the write; an fsync follows within the interval.
    Interval(Duration),
    /// PUB-OK after the write; the operating system writes back when it likes.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_millis(10))
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", format_duration(*d)),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            "interval" => Ok(FsyncPolicy::default()),
            _ => {
                let Some(d) = s.strip_prefix("interval:") else {
                    return Err(format!(
                        "{s:?} is not a fsync policy: use always, interval:<duration> or never"
                    ));
                };
                let d = parse_duration(d).map_err(|e| format!("fsync interval: {e}"))?;
                if d.is_zero() || d > Duration::from_secs(60) {
                    return Err("fsync interval must be between 1ms and 60s".into());
                }
                Ok(FsyncPolicy::Interval(d))
            }
        }
    }
}

impl Serialize for FsyncPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Storage settings for the whole broker. `topics` overrides them per topic name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub fsync: FsyncPolicy,
    /// A segment is rolled once it reaches this size.
    pub segment_bytes: u64,
    /// Segments whose newest message is older than this are deleted, even if channels have
    /// not finished them. None keeps messages until every channel has finished them.
    #[serde(with = "crate::config::opt_duration")]
    pub max_age: Option<Duration>,
    /// The oldest segments are deleted while a topic's log is larger than this.
    pub max_bytes: Option<u64>,
    /// Memory per topic for recently appended messages, kept decoded so that consumers that
    /// keep up (or lag by less than this) never read the disk. Messages leave it after a
    /// minute, so a quiet topic gives its memory back.
    pub cache_bytes: u64,
    /// Per-topic overrides, by exact topic name.
    pub topics: BTreeMap<String, TopicStorageConfig>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            fsync: FsyncPolicy::default(),
            segment_bytes: 64 * 1024 * 1024,
            max_age: None,
            max_bytes: None,
            cache_bytes: 64 * 1024 * 1024,
            topics: BTreeMap::new(),
        }
    }
}

/// Settings one topic overrides; unset fields take the broker's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicStorageConfig {
    pub fsync: Option<FsyncPolicy>,
    pub segment_bytes: Option<u64>,
    #[serde(with = "crate::config::opt_duration")]
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    /// On a cluster: the topic's replicas when it is created (else the `[cluster]`
    /// `replication_factor`).
    pub replication: Option<u16>,
}

/// The settings that apply to one topic, after overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPolicy {
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub cache_bytes: u64,
}

/// Smallest segment size accepted (tests use small segments to exercise rolling).
pub const MIN_SEGMENT_BYTES: u64 = 4096;

impl StorageConfig {
    /// The settings for `topic`, with its overrides applied.
    pub fn for_topic(&self, topic: &str) -> TopicPolicy {
        let o = self.topics.get(topic).cloned().unwrap_or_default();
        TopicPolicy {
            fsync: o.fsync.unwrap_or(self.fsync),
            segment_bytes: o.segment_bytes.unwrap_or(self.segment_bytes),
            max_age: o.max_age.or(self.max_age),
            max_bytes: o.max_bytes.or(self.max_bytes),
            cache_bytes: self.cache_bytes,
        }
    }

    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let check = |field: String, segment: Option<u64>, max_bytes: Option<u64>| {
            if segment.is_some_and(|s| s < MIN_SEGMENT_BYTES) {
                return Err((
                    format!("{field}segment_bytes"),
                    format!("must be at least {MIN_SEGMENT_BYTES}"),
                ));
            }
            if max_bytes == Some(0) {
                return Err((format!("{field}max_bytes"), "must not be 0".into()));
            }
            Ok(())
        };
        check("storage.".into(), Some(self.segment_bytes), self.max_bytes)?;
        for (name, t) in &self.topics {
            crate::message::TopicName::new(name)
                .map_err(|e| (format!("storage.topics.{name}"), e.to_string()))?;
            check(
                format!("storage.topics.{name}."),
                t.segment_bytes,
                t.max_bytes,
            )?;
            if t.replication == Some(0) {
                let field = format!("storage.topics.{name}.replication");
                return Err((field, "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print() {
        for (text, policy) in [
            ("always", FsyncPolicy::Always),
            ("never", FsyncPolicy::Never),
            ("interval", FsyncPolicy::Interval(Duration::from_millis(10))),
            (
                "interval:250ms",
                FsyncPolicy::Interval(Duration::from_millis(250)),
            ),
            ("interval:2s", FsyncPolicy::Interval(Duration::from_secs(2))),
        ] {
            assert_eq!(text.parse::<FsyncPolicy>().unwrap(), policy, "{text}");
            assert_eq!(policy.to_string().parse::<FsyncPolicy>().unwrap(), policy);
        }
        for bad in ["", "sometimes", "interval:", "interval:0ms", "interval:5m"] {
            assert!(bad.parse::<FsyncPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_overrides_apply() {
        let mut config = StorageConfig::default();
        config.topics.insert(
            "orders".into(),
            TopicStorageConfig {
                fsync: Some(FsyncPolicy::Always),
                max_bytes: Some(1 << 20),
                ..Default::default()
            },
        );
        let orders = config.for_topic("orders");
        assert_eq!(orders.fsync, FsyncPolicy::Always);
        assert_eq!(orders.max_bytes, Some(1 << 20));
        assert_eq!(orders.segment_bytes, config.segment_bytes);
        assert_eq!(config.for_topic("other").fsync, FsyncPolicy::default());
        config.segment_bytes = 10;
        assert!(config.validate().is_err());
    }
}
