//! Statistics, shared by `quiver stats`, `GET /stats` and `GET /metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::Permission;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerStats {
    pub version: String,
    pub uptime_secs: u64,
    /// Authentication failures and refused operations since the broker started.
    #[serde(default)]
    pub access: AccessStats,
    pub topics: Vec<TopicStats>,
}

/// Counts of refused callers: credentials that did not authenticate, and operations that
/// were not granted, by permission.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessStats {
    pub auth_failures: u64,
    pub denied_publish: u64,
    pub denied_subscribe: u64,
    pub denied_admin: u64,
}

/// The live counters behind [`AccessStats`].
#[derive(Debug, Default)]
pub(super) struct AccessCounters {
    auth_failures: AtomicU64,
    denied: [AtomicU64; 3],
}

impl AccessCounters {
    pub(super) fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn denied(&self, permission: Permission) {
        self.denied[permission as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> AccessStats {
        let denied = |p: Permission| self.denied[p as usize].load(Ordering::Relaxed);
        AccessStats {
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            denied_publish: denied(Permission::Publish),
            denied_subscribe: denied(Permission::Subscribe),
            denied_admin: denied(Permission::Admin),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStats {
    pub name: String,
    pub paused: bool,
    /// Messages published since the topic was created.
    pub message_count: u64,
    /// Messages kept for the first channel while the topic has none.
    pub depth: u64,
    /// Bytes the topic's log retains: on disk, or in memory for `#ephemeral` topics.
    pub retained_bytes: u64,
    /// Segment files of the log.
    pub segments: u64,
    /// Data fsyncs done, and their latency percentiles in microseconds.
    pub fsyncs: u64,
    pub fsync_p50_us: u64,
    pub fsync_p99_us: u64,
    /// Messages and bytes that `max_age` or `max_bytes` retention dropped before every
    /// channel had finished them.
    pub retention_dropped_messages: u64,
    pub retention_dropped_bytes: u64,
    /// Records found corrupt on disk and skipped.
    pub corrupt_records: u64,
    /// Messages the topic's router (or its policies) dropped: not stored anywhere.
    #[serde(default)]
    pub router_dropped: u64,
    /// Messages stored in the dead-letter topic instead: unrouted, or a router fault.
    #[serde(default)]
    pub router_dead_lettered: u64,
    /// Publishes refused because a message was unrouted under the `reject` policy.
    #[serde(default)]
    pub router_rejected: u64,
    /// Copies the router forwarded to other topics.
    #[serde(default)]
    pub forwarded: u64,
    /// Forwards refused because they would loop back to a topic the message came through.
    #[serde(default)]
    pub forward_loops: u64,
    /// The publish dedup window's length in milliseconds; 0 when it is off.
    #[serde(default)]
    pub dedup_window_ms: u64,
    /// Message ids the dedup window holds now.
    #[serde(default)]
    pub dedup_ids: u64,
    /// Published messages confirmed as duplicates of one in the window, and not stored.
    #[serde(default)]
    pub duplicates: u64,
    /// Ids the window forgot before their time because it was at `dedup_max_ids`.
    #[serde(default)]
    pub dedup_evicted: u64,
    pub channels: Vec<ChannelStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub name: String,
    pub paused: bool,
    /// Ready to deliver: not yet read from the log, or requeued.
    pub depth: u64,
    pub in_flight: u64,
    pub deferred: u64,
    /// Messages that entered the channel.
    pub message_count: u64,
    pub finished: u64,
    pub requeued: u64,
    pub timed_out: u64,
    pub dead_lettered: u64,
    /// Messages restored as unfinished when the broker started. After a crash, the
    /// duplicates on this channel are at most this plus the messages delivered in the last
    /// 10 ms before it (see `state_lag_max_ms`).
    pub recovered: u64,
    /// Messages passed over: routed to other channels, or skipped by the channel's filters
    /// and samplers.
    #[serde(default)]
    pub skipped: u64,
    /// How far the channel's saved state trails its state in memory, in milliseconds: the
    /// age of the oldest change not yet written (0 when everything is written), and the
    /// longest any change has waited since the broker started. A crash loses at most
    /// changes this recent.
    #[serde(default)]
    pub state_lag_ms: u64,
    #[serde(default)]
    pub state_lag_max_ms: u64,
    /// 0 means unlimited.
    pub max_attempts: u16,
    /// `none`, `channel` (one message at a time), or `key:<header>` (one message of each
    /// value of the header at a time).
    #[serde(default)]
    pub ordering: String,
    /// Ordered channels: keys that have a message in flight, requeued, deferred or waiting.
    #[serde(default)]
    pub active_keys: u64,
    /// Ordered channels: messages read from the log that wait for an older message of their
    /// key to be finished (counted in `depth`).
    #[serde(default)]
    pub waiting_on_key: u64,
    pub consumers: Vec<ConsumerStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerStats {
    pub id: u64,
    pub remote: String,
    /// Who the consumer authenticated as (`anonymous` when nothing was presented).
    #[serde(default)]
    pub principal: String,
    pub rdy: u32,
    pub in_flight: u32,
    pub delivered: u64,
    pub finished: u64,
    pub requeued: u64,
    pub timed_out: u64,
}

impl BrokerStats {
    pub fn topic(&self, name: &str) -> Option<&TopicStats> {
        self.topics.iter().find(|t| t.name == name)
    }
}

impl TopicStats {
    pub fn channel(&self, name: &str) -> Option<&ChannelStats> {
        self.channels.iter().find(|c| c.name == name)
    }
}
