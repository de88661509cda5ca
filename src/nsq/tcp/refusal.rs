//! How broker refusals reach an NSQ client: nsqd's codes for an operation not allowed, and
//! on a cluster node the SUB error that names the node leading the topic, where an NSQ
//! consumer must connect (publishes are forwarded there instead; see `broker/publish.rs`).

use super::wire::NsqError;
use crate::broker::{BrokerError, ErrorKind};
use crate::message::{ChannelName, TopicName};
use crate::storage::StorageError;

/// nsqd's answers to an operation that is not allowed: `E_AUTH_FIRST` when nothing was
/// presented, `E_UNAUTHORIZED` otherwise; both fatal. None for other errors.
pub(super) fn denied(
    verb: &str,
    topic: &TopicName,
    channel: &str,
    e: &BrokerError,
) -> Option<NsqError> {
    match e.kind() {
        ErrorKind::Unauthenticated => Some(NsqError::fatal(
            "E_AUTH_FIRST",
            format!("AUTH required before {verb}"),
        )),
        ErrorKind::Denied => Some(NsqError::fatal(
            "E_UNAUTHORIZED",
            format!("AUTH failed for {verb} on {:?} {channel:?}", topic.as_str()),
        )),
        _ => None,
    }
}

/// The fatal error a refused SUB gets. On a node that does not lead the topic it names the
/// leader and its NSQ TCP address: `E_SUB_FAILED SUB failed topic T is served by its
/// leader, node 2 at HOST:PORT (NSQ TCP); subscribe there`.
pub(super) fn sub_failed(topic: &TopicName, channel: &ChannelName, e: &BrokerError) -> NsqError {
    if let Some(denied) = denied("SUB", topic, channel.as_str(), e) {
        return denied;
    }
    let text = match e {
        BrokerError::Storage {
            source: StorageError::NotLeader { leader, .. },
            ..
        } => {
            let at = match &leader.nsq_tcp {
                Some(addr) => format!("at {addr} (NSQ TCP)"),
                None => "(which has no NSQ TCP listener)".to_string(),
            };
            format!(
                "SUB failed topic {topic} is served by its leader, node {} {at}; subscribe there",
                leader.node
            )
        }
        _ => format!("SUB failed {}", error_chain(e)),
    };
    NsqError::fatal("E_SUB_FAILED", text)
}

pub(super) use crate::session::error_chain;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::LeaderHint;

    #[test]
    fn a_sub_on_a_follower_names_the_leaders_nsq_address() {
        let t = TopicName::new("orders").unwrap();
        let c = ChannelName::new("c").unwrap();
        let e = BrokerError::Storage {
            topic: t.clone(),
            source: StorageError::NotLeader {
                topic: "orders".into(),
                leader: LeaderHint {
                    node: 2,
                    quic: Some("127.0.0.1:7000".into()),
                    nsq_tcp: Some("127.0.0.1:4150".into()),
                    http: None,
                },
            },
        };
        let refused = sub_failed(&t, &c, &e);
        assert_eq!(refused.code, "E_SUB_FAILED");
        assert!(refused.fatal);
        assert_eq!(
            refused.text,
            "SUB failed topic orders is served by its leader, node 2 at 127.0.0.1:4150 (NSQ TCP); subscribe there"
        );
    }
}
