//! `GET /metrics`: [`BrokerStats`] in the Prometheus text exposition format, version 0.0.4.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;

use super::error::ApiError;
use super::AppState;
use crate::broker::{AccessStats, BrokerStats, ChannelStats, Principal, TopicStats};
use crate::cluster::raft::node::ClusterStatus;
use crate::rules::{BindingStatus, RulesStatus};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A gauge or a counter.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// A per-topic metric: name, kind, help and how to read it.
type TopicMetric = (&'static str, Kind, &'static str, fn(&TopicStats) -> u64);
/// A per-channel metric.
type ChannelMetric = (&'static str, Kind, &'static str, fn(&ChannelStats) -> u64);

const TOPIC_METRICS: [TopicMetric; 17] = [
    (
        "quiver_topic_depth",
        Kind::Gauge,
        "Messages kept for the first channel while the topic has none.",
        |t| t.depth,
    ),
    (
        "quiver_topic_messages_total",
        Kind::Counter,
        "Messages published to the topic.",
        |t| t.message_count,
    ),
    (
        "quiver_topic_log_bytes",
        Kind::Gauge,
        "Bytes the topic's log holds on disk (in memory for ephemeral topics).",
        |t| t.retained_bytes,
    ),
    (
        "quiver_topic_log_segments",
        Kind::Gauge,
        "Segment files of the topic's log.",
        |t| t.segments,
    ),
    (
        "quiver_topic_fsyncs_total",
        Kind::Counter,
        "Data fsyncs of the topic's log.",
        |t| t.fsyncs,
    ),
    (
        "quiver_topic_fsync_p99_microseconds",
        Kind::Gauge,
        "99th percentile fsync latency of the topic's log.",
        |t| t.fsync_p99_us,
    ),
    (
        "quiver_topic_retention_dropped_messages_total",
        Kind::Counter,
        "Unfinished messages dropped by max_age or max_bytes retention.",
        |t| t.retention_dropped_messages,
    ),
    (
        "quiver_topic_corrupt_records_total",
        Kind::Counter,
        "Records of the topic's log found corrupt and skipped.",
        |t| t.corrupt_records,
    ),
    (
        "quiver_topic_router_dropped_total",
        Kind::Counter,
        "Messages the topic's router (or its policies) dropped.",
        |t| t.router_dropped,
    ),
    (
        "quiver_topic_router_dead_lettered_total",
        Kind::Counter,
        "Messages sent to the dead-letter topic at publish: unrouted, or a router fault.",
        |t| t.router_dead_lettered,
    ),
    (
        "quiver_topic_router_rejected_total",
        Kind::Counter,
        "Publishes refused with E_UNROUTED.",
        |t| t.router_rejected,
    ),
    (
        "quiver_topic_forwarded_total",
        Kind::Counter,
        "Copies the topic's router forwarded to other topics.",
        |t| t.forwarded,
    ),
    (
        "quiver_topic_forward_loops_total",
        Kind::Counter,
        "Forwards refused because they would loop.",
        |t| t.forward_loops,
    ),
    (
        "quiver_topic_dedup_ids",
        Kind::Gauge,
        "Message ids the topic's publish dedup window holds.",
        |t| t.dedup_ids,
    ),
    (
        "quiver_topic_duplicates_total",
        Kind::Counter,
        "Published messages confirmed as duplicates of one in the dedup window, not stored.",
        |t| t.duplicates,
    ),
    (
        "quiver_topic_dedup_evicted_total",
        Kind::Counter,
        "Ids the dedup window forgot early because it was at dedup_max_ids.",
        |t| t.dedup_evicted,
    ),
    (
        "quiver_topic_fsync_p50_microseconds",
        Kind::Gauge,
        "Median fsync latency of the topic's log.",
        |t| t.fsync_p50_us,
    ),
];

const CHANNEL_METRICS: [ChannelMetric; 15] = [
    (
        "quiver_channel_depth",
        Kind::Gauge,
        "Messages ready to deliver on the channel.",
        |c| c.depth,
    ),
    (
        "quiver_channel_in_flight",
        Kind::Gauge,
        "Messages delivered and not yet settled.",
        |c| c.in_flight,
    ),
    (
        "quiver_channel_deferred",
        Kind::Gauge,
        "Messages deferred by DPUB or REQ with a delay.",
        |c| c.deferred,
    ),
    (
        "quiver_channel_consumers",
        Kind::Gauge,
        "Consumers subscribed to the channel.",
        |c| c.consumers.len() as u64,
    ),
    (
        "quiver_channel_messages_total",
        Kind::Counter,
        "Messages that entered the channel.",
        |c| c.message_count,
    ),
    (
        "quiver_channel_finished_total",
        Kind::Counter,
        "Messages finished (FIN).",
        |c| c.finished,
    ),
    (
        "quiver_channel_requeued_total",
        Kind::Counter,
        "Messages requeued (REQ).",
        |c| c.requeued,
    ),
    (
        "quiver_channel_timed_out_total",
        Kind::Counter,
        "Deliveries that timed out.",
        |c| c.timed_out,
    ),
    (
        "quiver_channel_dead_lettered_total",
        Kind::Counter,
        "Messages moved to the dead-letter topic.",
        |c| c.dead_lettered,
    ),
    (
        "quiver_channel_recovered",
        Kind::Gauge,
        "Messages restored as unfinished when the broker started.",
        |c| c.recovered,
    ),
    (
        "quiver_channel_skipped_total",
        Kind::Counter,
        "Messages passed over: routed to other channels, or skipped by the channel's plugins.",
        |c| c.skipped,
    ),
    (
        "quiver_channel_state_lag_ms",
        Kind::Gauge,
        "Age in milliseconds of the oldest change to the channel's state not yet written.",
        |c| c.state_lag_ms,
    ),
    (
        "quiver_channel_state_lag_max_ms",
        Kind::Gauge,
        "Longest a change to the channel's state waited to be written since start, in ms.",
        |c| c.state_lag_max_ms,
    ),
    (
        "quiver_channel_active_keys",
        Kind::Gauge,
        "Ordered channels: keys with a message in the channel.",
        |c| c.active_keys,
    ),
    (
        "quiver_channel_waiting_on_key",
        Kind::Gauge,
        "Ordered channels: messages waiting for an older message of their key.",
        |c| c.waiting_on_key,
    ),
];

pub(crate) async fn metrics(
    State(state): State<AppState>,
    Extension(who): Extension<Arc<Principal>>,
) -> Result<impl IntoResponse, ApiError> {
    let stats = state.broker.stats(&who, None)?;
    let mut text = render(&stats);
    if let Some(rules) = &state.rules {
        render_rules(&mut text, &rules.status());
    }
    if let Some(cluster) = &state.cluster {
        render_cluster(&mut text, &cluster.status());
    }
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text))
}

/// The node's view of the meta group, and on its leader each member's lag.
fn render_cluster(out: &mut String, cluster: &ClusterStatus) {
    let node = [
        (
            "quiver_cluster_meta_term",
            Kind::Gauge,
            "Current Raft term of the cluster's meta group.",
            cluster.term,
        ),
        (
            "quiver_cluster_meta_is_leader",
            Kind::Gauge,
            "1 when this node leads the cluster's meta group.",
            u64::from(cluster.state == "leader"),
        ),
        (
            "quiver_cluster_meta_commit_index",
            Kind::Gauge,
            "Last log index of the meta group this node knows to be committed.",
            cluster.committed.unwrap_or(0),
        ),
        (
            "quiver_cluster_meta_leader_changes_total",
            Kind::Counter,
            "Times this node saw a new meta group leader since it started.",
            cluster.leader_changes,
        ),
        (
            "quiver_cluster_members",
            Kind::Gauge,
            "Members of the cluster.",
            cluster.members.len() as u64,
        ),
    ];
    for (name, kind, help, value) in node {
        family(out, name, kind, help);
        sample(out, name, &[], value);
    }
    let name = "quiver_cluster_meta_member_lag_entries";
    family(
        out,
        name,
        Kind::Gauge,
        "On the meta group's leader: log entries each member is behind.",
    );
    for member in &cluster.members {
        if let Some(lag) = member.lag {
            sample(out, name, &[("node", &member.id.to_string())], lag);
        }
    }
}

/// A per-binding metric.
type BindingMetric = (&'static str, Kind, &'static str, fn(&BindingStatus) -> u64);

const BINDING_METRICS: [BindingMetric; 11] = [
    (
        "quiver_plugin_calls_total",
        Kind::Counter,
        "Calls into the plugin.",
        |b| b.stats.calls,
    ),
    (
        "quiver_plugin_cpu_timeouts_total",
        Kind::Counter,
        "Plugin calls stopped because they used their CPU budget (the plugin's doing).",
        |b| b.stats.cpu_timeouts,
    ),
    (
        "quiver_plugin_wall_timeouts_total",
        Kind::Counter,
        "Plugin calls stopped at the wall-clock backstop with CPU budget left (the machine's doing).",
        |b| b.stats.wall_timeouts,
    ),
    (
        "quiver_plugin_traps_total",
        Kind::Counter,
        "Plugin calls that trapped.",
        |b| b.stats.traps,
    ),
    (
        "quiver_plugin_out_of_memory_total",
        Kind::Counter,
        "Plugin calls that ran out of memory.",
        |b| b.stats.out_of_memory,
    ),
    (
        "quiver_plugin_unavailable_total",
        Kind::Counter,
        "Plugin calls refused while the plugin restarts.",
        |b| b.stats.unavailable,
    ),
    (
        "quiver_plugin_invalid_answers_total",
        Kind::Counter,
        "Router answers naming an invalid channel or topic.",
        |b| b.invalid_answers,
    ),
    (
        "quiver_plugin_publish_timeouts_total",
        Kind::Counter,
        "Messages given the router's failure policy because their publish ran out of routing time.",
        |b| b.publish_timeouts,
    ),
    (
        "quiver_plugin_breaker_state",
        Kind::Gauge,
        "State of the binding's circuit breaker: 0 closed, 1 open, 2 half-open.",
        |b| b.breaker.state.as_number(),
    ),
    (
        "quiver_plugin_breaker_openings_total",
        Kind::Counter,
        "Times the binding's circuit breaker opened, failed trial calls included.",
        |b| b.breaker.openings,
    ),
    (
        "quiver_plugin_breaker_refused_total",
        Kind::Counter,
        "Messages given the failure policy without a call because the circuit breaker was open.",
        |b| b.stats.breaker_refused,
    ),
];

/// The rules' counters, and each binding's.
fn render_rules(out: &mut String, rules: &RulesStatus) {
    let totals = [
        (
            "quiver_rules_version",
            Kind::Gauge,
            "Version of the rules in force.",
            rules.version,
        ),
        (
            "quiver_rules_reloads_total",
            Kind::Counter,
            "Successful rules reloads.",
            rules.reloads,
        ),
        (
            "quiver_rules_failed_reloads_total",
            Kind::Counter,
            "Failed rules reloads.",
            rules.failed_reloads,
        ),
    ];
    for (name, kind, help, value) in totals {
        family(out, name, kind, help);
        sample(out, name, &[], value);
    }
    for (name, kind, help, read) in BINDING_METRICS {
        family(out, name, kind, help);
        for binding in &rules.bindings {
            let labels = [
                ("topic", binding.topic.as_str()),
                ("channel", binding.channel.as_deref().unwrap_or("")),
                ("plugin", &binding.plugin),
                ("kind", binding.kind),
            ];
            sample(out, name, &labels, read(binding));
        }
    }
}

/// The exposition text for `stats`.
pub(crate) fn render(stats: &BrokerStats) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "quiver_uptime_seconds",
        Kind::Gauge,
        "Seconds since the broker started.",
    );
    sample(&mut out, "quiver_uptime_seconds", &[], stats.uptime_secs);
    render_access(&mut out, &stats.access);
    for (name, kind, help, read) in TOPIC_METRICS {
        family(&mut out, name, kind, help);
        for topic in &stats.topics {
            sample(&mut out, name, &[("topic", &topic.name)], read(topic));
        }
    }
    for (name, kind, help, read) in CHANNEL_METRICS {
        family(&mut out, name, kind, help);
        for topic in &stats.topics {
            for channel in &topic.channels {
                let labels = [("topic", topic.name.as_str()), ("channel", &channel.name)];
                sample(&mut out, name, &labels, read(channel));
            }
        }
    }
    out
}

/// Refused callers: failed authentications (and cross-site HTTP requests), and operations
/// denied by permission.
fn render_access(out: &mut String, access: &AccessStats) {
    let failures = "quiver_auth_failures_total";
    family(
        out,
        failures,
        Kind::Counter,
        "Credentials refused (wrong token or secret, auth server down) and cross-site HTTP requests refused.",
    );
    sample(out, failures, &[], access.auth_failures);
    let denied = "quiver_denied_total";
    family(
        out,
        denied,
        Kind::Counter,
        "Operations refused because no grant gives the caller the permission, by operation.",
    );
    for (operation, count) in [
        ("publish", access.denied_publish),
        ("subscribe", access.denied_subscribe),
        ("admin", access.denied_admin),
    ] {
        sample(out, denied, &[("operation", operation)], count);
    }
}

fn family(out: &mut String, name: &str, kind: Kind, help: &str) {
    // Writing to a String can't fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Escapes backslash, double quote and newline, as the format requires of label values.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("topic", "a\\b\"c\nd")], 3);
        assert_eq!(out, "m{topic=\"a\\\\b\\\"c\\nd\"} 3\n");
    }

    #[test]
    fn every_family_has_help_and_type() {
        let stats = BrokerStats {
            topics: vec![TopicStats {
                name: "t".into(),
                message_count: 2,
                channels: vec![ChannelStats {
                    name: "c".into(),
                    finished: 1,
                    state_lag_ms: 4,
                    state_lag_max_ms: 12,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&stats);
        assert!(text.contains("# TYPE quiver_topic_messages_total counter\n"));
        assert!(text.contains("quiver_topic_messages_total{topic=\"t\"} 2\n"));
        assert!(text.contains("quiver_channel_finished_total{topic=\"t\",channel=\"c\"} 1\n"));
        assert!(text.contains("# TYPE quiver_channel_state_lag_ms gauge\n"));
        assert!(text.contains("quiver_channel_state_lag_max_ms{topic=\"t\",channel=\"c\"} 12\n"));
        let families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        // Uptime, authentication failures and denials, then the per-topic and per-channel ones.
        assert_eq!(families, 3 + TOPIC_METRICS.len() + CHANNEL_METRICS.len());
    }
}
