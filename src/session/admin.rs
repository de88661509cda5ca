//! Admin streams: one request, one JSON answer or error, then the stream ends.

use bytes::Bytes;
use quinn::SendStream;
use serde::Serialize;

use super::{broker_error, write_reply};
use crate::broker::{Broker, BrokerStats, Principal};
use crate::protocol::{AdminOp, AdminRequest, Reply, WireError};
use crate::rules::{Reloader, RulesStatus};

/// The stats answer, as `GET /stats` has it: the broker's stats, plus the rules' (each
/// binding's counters and circuit breaker) when there are rules.
#[derive(Debug, Serialize)]
struct Stats {
    #[serde(flatten)]
    broker: BrokerStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<RulesStatus>,
}

/// The answer to a locate: served here, or by the leader it names.
#[derive(Debug, Serialize)]
struct Located<'a> {
    topic: &'a str,
    here: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<crate::storage::LeaderHint>,
}

pub(super) async fn run(
    request: AdminRequest,
    send: &mut SendStream,
    broker: &Broker,
    rules: Option<&Reloader>,
    who: &Principal,
) -> Result<(), WireError> {
    let json = match &request {
        AdminRequest::Locate { topic, channel } => {
            let leader = broker
                .locate(who, topic, channel.as_ref())
                .await
                .map_err(|e| broker_error(&e, 0))?;
            let answer = Located {
                topic: topic.as_str(),
                here: leader.is_none(),
                leader,
            };
            Bytes::from(serde_json::to_vec(&answer).unwrap_or_default())
        }
        _ => execute(&request, broker, rules, who)?,
    };
    let _ = write_reply(send, &Reply::AdminOk(json)).await;
    Ok(())
}

/// Runs an admin request against the broker; shared with the HTTP API's semantics.
pub fn execute(
    request: &AdminRequest,
    broker: &Broker,
    rules: Option<&Reloader>,
    who: &Principal,
) -> Result<Bytes, WireError> {
    let fail = |e| broker_error(&e, 0);
    let done = || Ok(Bytes::from_static(b"{\"ok\":true}"));
    match request {
        AdminRequest::Locate { .. } => Err(WireError::new(
            crate::protocol::ErrorCode::Invalid,
            0,
            "locate is answered on a QUIC admin stream only",
        )),
        AdminRequest::Stats { topic } => {
            let stats = Stats {
                broker: broker.stats(who, topic.as_ref()).map_err(fail)?,
                rules: rules.map(Reloader::status),
            };
            // Stats are plain data; serialising them can't fail.
            Ok(serde_json::to_vec(&stats).unwrap_or_default().into())
        }
        AdminRequest::Topic { op, topic } => {
            match op {
                AdminOp::Create => broker.create_topic(who, topic),
                AdminOp::Delete => broker.delete_topic(who, topic),
                AdminOp::Pause => broker.pause_topic(who, topic, true),
                AdminOp::Unpause => broker.pause_topic(who, topic, false),
                AdminOp::Empty => broker.empty_topic(who, topic),
            }
            .map_err(fail)?;
            done()
        }
        AdminRequest::Channel {
            op,
            topic,
            channel,
            settings,
        } => {
            match op {
                AdminOp::Create => broker.create_channel(who, topic, channel, *settings),
                AdminOp::Delete => broker.delete_channel(who, topic, channel),
                AdminOp::Pause => broker.pause_channel(who, topic, channel, true),
                AdminOp::Unpause => broker.pause_channel(who, topic, channel, false),
                AdminOp::Empty => broker.empty_channel(who, topic, channel),
            }
            .map_err(fail)?;
            done()
        }
    }
}
