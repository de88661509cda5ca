//! `GET /stats`: the broker's stats in nsqd 1.3.0's shape, as JSON (`format=json`) or nsqd's
//! text (anything else).
//!
//! # Mapping
//! | nsqd | Quiver |
//! |---|---|
//! | topic `depth` | messages kept for the first channel while the topic has none |
//! | `backend_depth` | `depth` when the log is on disk; 0 for `#ephemeral` topics (in memory) |
//! | topic `message_count` | messages published to the topic |
//! | `message_bytes` | 0: not counted |
//! | channel `depth` | ready to deliver (unread, or requeued) |
//! | `in_flight_count`, `deferred_count` | in flight, deferred |
//! | `message_count`, `requeue_count`, `timeout_count` | entered, requeued, timed out |
//! | `client_count`, `clients` | the channel's consumers, over NSQ TCP or QUIC |
//! | `e2e_processing_latency` | `{"count":0,"percentiles":[]}`: not measured |
//! | `memory` | the process's resident set size as `heap_in_use_bytes`; Go heap fields 0 |
//! | `producers` | `[]`: publishers are not tracked |
//!
//! Empty lists are `[]` where nsqd may write `null` (no producers, `include_clients=false`,
//! no such topic): both decode to an empty list in nsqd's own tools.

use axum::extract::State;
use axum::Extension;
use serde::Serialize;

use super::params::Params;
use super::reply::{NsqError, Reply};
use super::{health, text, version, NsqHttp, Who};
use crate::broker::{
    Broker, BrokerError, BrokerStats, ChannelStats, ConsumerStats, Principal, TopicStats, ANONYMOUS,
};
use crate::message::TopicName;

/// nsqd's client state `stateSubscribed`.
const STATE_SUBSCRIBED: i32 = 3;

/// The `/stats` document.
#[derive(Debug, Serialize)]
pub(crate) struct NsqdStats {
    pub(crate) version: String,
    pub(crate) health: String,
    pub(crate) start_time: i64,
    pub(crate) topics: Vec<Topic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) memory: Option<Memory>,
    pub(crate) producers: Vec<Client>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Topic {
    pub(crate) topic_name: String,
    pub(crate) channels: Vec<Channel>,
    pub(crate) depth: u64,
    pub(crate) backend_depth: u64,
    pub(crate) message_count: u64,
    pub(crate) message_bytes: u64,
    pub(crate) paused: bool,
    pub(crate) e2e_processing_latency: Latency,
}

#[derive(Debug, Serialize)]
pub(crate) struct Channel {
    pub(crate) channel_name: String,
    pub(crate) depth: u64,
    pub(crate) backend_depth: u64,
    pub(crate) in_flight_count: u64,
    pub(crate) deferred_count: u64,
    pub(crate) message_count: u64,
    pub(crate) requeue_count: u64,
    pub(crate) timeout_count: u64,
    pub(crate) client_count: usize,
    pub(crate) clients: Vec<Client>,
    pub(crate) paused: bool,
    pub(crate) e2e_processing_latency: Latency,
}

/// nsqd's `ClientV2Stats`, fields in its order.
#[derive(Debug, Serialize)]
pub(crate) struct Client {
    pub(crate) client_id: String,
    pub(crate) hostname: String,
    pub(crate) version: &'static str,
    pub(crate) remote_address: String,
    pub(crate) state: i32,
    pub(crate) ready_count: u32,
    pub(crate) in_flight_count: u32,
    pub(crate) message_count: u64,
    pub(crate) finish_count: u64,
    pub(crate) requeue_count: u64,
    /// Unix seconds; 0 because the broker does not record when a consumer connected.
    pub(crate) connect_ts: i64,
    pub(crate) sample_rate: i32,
    pub(crate) deflate: bool,
    pub(crate) snappy: bool,
    pub(crate) user_agent: String,
    pub(crate) tls: bool,
    pub(crate) tls_cipher_suite: String,
    pub(crate) tls_version: String,
    pub(crate) tls_negotiated_protocol: String,
    pub(crate) tls_negotiated_protocol_is_mutual: bool,
    /// Whether the consumer authenticated, and as whom (nsqd's AUTH fields).
    pub(crate) authed: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) auth_identity: String,
}

/// nsqd's `quantile.Result` when end-to-end latency is not measured.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) percentiles: Vec<serde_json::Value>,
}

/// nsqd's Go runtime memory stats.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Memory {
    pub(crate) heap_objects: u64,
    pub(crate) heap_idle_bytes: u64,
    pub(crate) heap_in_use_bytes: u64,
    pub(crate) heap_released_bytes: u64,
    pub(crate) gc_pause_usec_100: u64,
    pub(crate) gc_pause_usec_99: u64,
    pub(crate) gc_pause_usec_95: u64,
    pub(crate) next_gc_bytes: u64,
    pub(crate) gc_total_runs: u32,
}

/// `GET /stats?format=json|text&topic=&channel=&include_clients=&include_mem=`. An unknown
/// topic or channel filters everything out; it is not an error.
pub(super) async fn stats(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Params,
) -> Result<Reply, NsqError> {
    let topic = params.get("topic").unwrap_or("");
    let channel = params.get("channel").unwrap_or("");
    let include_clients = params.bool("include_clients").unwrap_or(true);
    let include_mem = params.bool("include_mem").unwrap_or(true);
    let broker_stats = select(&state.broker, &who, topic)?;
    let document = NsqdStats {
        version: version(),
        health: health(&state.broker).unwrap_or_else(|h| h).to_string(),
        start_time: state.node.start_time(),
        topics: topics(broker_stats, channel, include_clients),
        memory: include_mem.then(memory),
        producers: Vec::new(),
    };
    if params.get("format") == Some("json") {
        return Reply::json(&document);
    }
    let now = std::time::SystemTime::now();
    Ok(Reply::Text(text::render(
        &document,
        state.node.started,
        now,
    )))
}

/// All topics' stats, or the one named `topic` (none when there is no such topic).
fn select(broker: &Broker, who: &Principal, topic: &str) -> Result<BrokerStats, NsqError> {
    if topic.is_empty() {
        return Ok(broker.stats(who, None)?);
    }
    let Ok(name) = TopicName::new(topic) else {
        return Ok(BrokerStats::default());
    };
    match broker.stats(who, Some(&name)) {
        Err(BrokerError::TopicNotFound(_)) => Ok(BrokerStats::default()),
        other => Ok(other?),
    }
}

/// The topics in nsqd's shape, sorted by name as the broker sorts them. With a `channel`
/// filter, only that channel is listed, and topics without it are left out.
pub(crate) fn topics(stats: BrokerStats, channel: &str, include_clients: bool) -> Vec<Topic> {
    stats
        .topics
        .into_iter()
        .filter_map(|topic| {
            let on_disk = !is_ephemeral(&topic.name);
            let mut channels: Vec<ChannelStats> = topic.channels.clone();
            channels.sort_by(|a, b| a.name.cmp(&b.name));
            if !channel.is_empty() {
                channels.retain(|c| c.name == channel);
                if channels.is_empty() {
                    return None;
                }
            }
            let channels = channels
                .into_iter()
                .map(|c| nsq_channel(c, on_disk, include_clients))
                .collect();
            Some(nsq_topic(topic, channels, on_disk))
        })
        .collect()
}

fn nsq_topic(topic: TopicStats, channels: Vec<Channel>, on_disk: bool) -> Topic {
    Topic {
        topic_name: topic.name,
        channels,
        depth: topic.depth,
        backend_depth: if on_disk { topic.depth } else { 0 },
        message_count: topic.message_count,
        message_bytes: 0,
        paused: topic.paused,
        e2e_processing_latency: Latency::default(),
    }
}

fn nsq_channel(channel: ChannelStats, on_disk: bool, include_clients: bool) -> Channel {
    let client_count = channel.consumers.len();
    let clients = if include_clients {
        channel.consumers.into_iter().map(nsq_client).collect()
    } else {
        Vec::new()
    };
    Channel {
        channel_name: channel.name,
        depth: channel.depth,
        backend_depth: if on_disk { channel.depth } else { 0 },
        in_flight_count: channel.in_flight,
        deferred_count: channel.deferred,
        message_count: channel.message_count,
        requeue_count: channel.requeued,
        timeout_count: channel.timed_out,
        client_count,
        clients,
        paused: channel.paused,
        e2e_processing_latency: Latency::default(),
    }
}

fn nsq_client(consumer: ConsumerStats) -> Client {
    let authed = !consumer.principal.is_empty() && consumer.principal != ANONYMOUS;
    let auth_identity = if authed {
        consumer.principal.clone()
    } else {
        String::new()
    };
    let hostname = match consumer.remote.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => consumer.remote.clone(),
    };
    Client {
        client_id: consumer.id.to_string(),
        hostname,
        version: "V2",
        remote_address: consumer.remote,
        state: STATE_SUBSCRIBED,
        ready_count: consumer.rdy,
        in_flight_count: consumer.in_flight,
        message_count: consumer.delivered,
        finish_count: consumer.finished,
        requeue_count: consumer.requeued,
        connect_ts: 0,
        sample_rate: 0,
        deflate: false,
        snappy: false,
        user_agent: String::new(),
        tls: false,
        tls_cipher_suite: String::new(),
        tls_version: String::new(),
        tls_negotiated_protocol: String::new(),
        tls_negotiated_protocol_is_mutual: false,
        authed,
        auth_identity,
    }
}

fn is_ephemeral(topic: &str) -> bool {
    topic.ends_with(crate::message::EPHEMERAL_SUFFIX)
}

/// The process's memory in nsqd's fields: only `heap_in_use_bytes`, from the resident set
/// size (Linux); 0 where it cannot be read.
fn memory() -> Memory {
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .unwrap_or(0);
    Memory {
        heap_in_use_bytes: rss_kib * 1024,
        ..Memory::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> BrokerStats {
        let consumer = ConsumerStats {
            id: 7,
            remote: "127.0.0.1:5000".into(),
            rdy: 10,
            in_flight: 2,
            delivered: 5,
            finished: 3,
            requeued: 1,
            timed_out: 0,
            principal: "anonymous".into(),
        };
        let channel = |name: &str| ChannelStats {
            name: name.into(),
            depth: 4,
            in_flight: 2,
            deferred: 1,
            message_count: 9,
            requeued: 1,
            timed_out: 2,
            consumers: vec![consumer.clone()],
            ..ChannelStats::default()
        };
        let topic = |name: &str, channels| TopicStats {
            name: name.into(),
            message_count: 9,
            depth: 0,
            channels,
            ..TopicStats::default()
        };
        BrokerStats {
            version: "x".into(),
            uptime_secs: 1,
            access: Default::default(),
            topics: vec![
                topic("a", vec![channel("z"), channel("c")]),
                topic("b#ephemeral", vec![channel("c")]),
            ],
        }
    }

    #[test]
    fn broker_stats_map_onto_nsqd_fields() {
        let topics = topics(sample(), "", true);
        assert_eq!(topics.len(), 2);
        let a = &topics[0];
        assert_eq!((a.topic_name.as_str(), a.message_count), ("a", 9));
        let names: Vec<&str> = a.channels.iter().map(|c| c.channel_name.as_str()).collect();
        assert_eq!(names, ["c", "z"], "channels sorted by name");
        let c = &a.channels[0];
        assert_eq!(
            (
                c.depth,
                c.backend_depth,
                c.in_flight_count,
                c.deferred_count
            ),
            (4, 4, 2, 1)
        );
        assert_eq!(
            (c.requeue_count, c.timeout_count, c.client_count),
            (1, 2, 1)
        );
        let client = &c.clients[0];
        assert_eq!(
            (client.client_id.as_str(), client.hostname.as_str()),
            ("7", "127.0.0.1")
        );
        assert_eq!(
            (
                client.ready_count,
                client.message_count,
                client.finish_count
            ),
            (10, 5, 3)
        );
        assert_eq!(
            topics[1].channels[0].backend_depth, 0,
            "ephemeral: in memory"
        );
    }

    #[test]
    fn channel_filter_and_clients_flag_apply() {
        let only_z = topics(sample(), "z", false);
        assert_eq!(only_z.len(), 1, "topics without the channel are left out");
        assert_eq!(only_z[0].channels.len(), 1);
        let z = &only_z[0].channels[0];
        assert_eq!((z.client_count, z.clients.len()), (1, 0));
        assert!(topics(sample(), "nope", true).is_empty());
    }

    #[test]
    fn json_has_nsqd_field_names() {
        let document = NsqdStats {
            version: "v".into(),
            health: "OK".into(),
            start_time: 1,
            topics: topics(sample(), "", true),
            memory: None,
            producers: Vec::new(),
        };
        let json = serde_json::to_value(&document).unwrap();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let mut top = keys(&json);
        top.sort();
        assert_eq!(
            top,
            ["health", "producers", "start_time", "topics", "version"]
        );
        let topic = &json["topics"][0];
        assert_eq!(topic["e2e_processing_latency"]["count"], 0);
        assert!(topic["message_bytes"].is_u64());
        let client = &topic["channels"][0]["clients"][0];
        assert_eq!(client["version"], "V2");
        assert_eq!(client["state"], 3);
        assert!(client["tls"].is_boolean());
    }
}
