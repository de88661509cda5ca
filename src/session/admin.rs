//! Admin streams: one request, one JSON answer or error, then the stream ends.

use bytes::Bytes;
use quinn::SendStream;

use super::{broker_error, write_reply};
use crate::broker::Broker;
use crate::protocol::{AdminOp, AdminRequest, Reply, WireError};

pub(super) async fn run(
    request: AdminRequest,
    send: &mut SendStream,
    broker: &Broker,
) -> Result<(), WireError> {
    let json = execute(&request, broker)?;
    let _ = write_reply(send, &Reply::AdminOk(json)).await;
    Ok(())
}

/// Runs an admin request against the broker; shared with the HTTP API's semantics.
pub fn execute(request: &AdminRequest, broker: &Broker) -> Result<Bytes, WireError> {
    let fail = |e| broker_error(&e, 0);
    let done = || Ok(Bytes::from_static(b"{\"ok\":true}"));
    match request {
        AdminRequest::Stats { topic } => {
            let stats = broker.stats(topic.as_ref()).map_err(fail)?;
            // Stats are plain data; serialising them can't fail.
            Ok(serde_json::to_vec(&stats).unwrap_or_default().into())
        }
        AdminRequest::Topic { op, topic } => {
            match op {
                AdminOp::Create => broker.create_topic(topic),
                AdminOp::Delete => broker.delete_topic(topic),
                AdminOp::Pause => broker.pause_topic(topic, true),
                AdminOp::Unpause => broker.pause_topic(topic, false),
                AdminOp::Empty => broker.empty_topic(topic),
            }
            .map_err(fail)?;
            done()
        }
        AdminRequest::Channel { op, topic, channel } => {
            match op {
                AdminOp::Create => broker.create_channel(topic, channel, None),
                AdminOp::Delete => broker.delete_channel(topic, channel),
                AdminOp::Pause => broker.pause_channel(topic, channel, true),
                AdminOp::Unpause => broker.pause_channel(topic, channel, false),
                AdminOp::Empty => broker.empty_channel(topic, channel),
            }
            .map_err(fail)?;
            done()
        }
    }
}
