//! One task per QUIC connection, one per stream: frames in, broker calls, frames out.
//!
//! The first frame a client sends on a stream fixes the stream's role: a publish frame makes
//! it a publish stream, SUB a subscription stream, ADMIN a one-shot admin stream. Errors are
//! answered with typed ERROR frames; a fatal one ends only its own stream.

mod admin;
mod publish;
mod subscribe;

use bytes::BytesMut;
use quinn::{Connection, SendStream};
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerError};
use crate::protocol::{Command, ErrorCode, Reply, WireError};
use crate::transport::{FrameReader, ReadError};

/// QUIC application error code for a normal close.
pub const CLOSE_NORMAL: u32 = 0;
/// QUIC application error code when the broker shuts down.
pub const CLOSE_SHUTDOWN: u32 = 1;

/// Serves one connection until the peer closes it or the broker shuts down.
pub async fn run_connection(conn: Connection, broker: Broker) {
    let remote = conn.remote_address().to_string();
    tracing::debug!(%remote, "connection open");
    let streams = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = broker.shutting_down() => break,
            accepted = conn.accept_bi() => accepted,
        };
        match accepted {
            Ok((send, recv)) => {
                let broker = broker.clone();
                let remote = remote.clone();
                streams.spawn(run_stream(send, FrameReader::new(recv), broker, remote));
            }
            Err(e) => {
                tracing::debug!(%remote, reason = %e, "connection closed");
                break;
            }
        }
    }
    // Subscription streams see the broker's shutdown themselves, requeue and say why.
    streams.close();
    streams.wait().await;
    conn.close(CLOSE_SHUTDOWN.into(), b"shutting down");
}

async fn run_stream(mut send: SendStream, mut reader: FrameReader, broker: Broker, remote: String) {
    let first = match reader.next().await {
        Ok(Some(raw)) => Command::decode(raw).map_err(|e| e.to_wire(0)),
        Ok(None) => return,
        Err(e) => Err(read_error(&e)),
    };
    let result = match first {
        Ok(cmd @ (Command::Pub { .. } | Command::Mpub { .. } | Command::Dpub { .. })) => {
            publish::run(cmd, reader, &mut send, &broker).await
        }
        Ok(Command::Sub {
            topic,
            channel,
            msg_timeout,
        }) => {
            let sub = broker.subscribe(&topic, &channel, msg_timeout, remote);
            subscribe::run(sub, reader, &mut send).await
        }
        Ok(Command::Admin(request)) => admin::run(request, &mut send, &broker).await,
        Ok(other) => Err(WireError::new(
            ErrorCode::Invalid,
            0,
            format!("{other:?} can't open a stream; send PUB, MPUB, DPUB, SUB or ADMIN first"),
        )
        .fatal()),
        Err(e) => Err(e.fatal()),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "stream ended with an error");
        let _ = write_reply(&mut send, &Reply::Error(e)).await;
    }
    let _ = send.finish();
    // Let the peer read the last frames before the stream's state is dropped.
    let _ = send.stopped().await;
}

/// Maps a read failure to the error frame a peer gets, when it can still get one.
fn read_error(e: &ReadError) -> WireError {
    match e {
        ReadError::Frame(frame) => frame.to_wire(0).fatal(),
        other => WireError::new(ErrorCode::BadFrame, 0, other.to_string()).fatal(),
    }
}

/// Maps a broker refusal to the error a client gets, over QUIC or HTTP.
pub fn broker_error(e: &BrokerError, seq: u64) -> WireError {
    let code = match e {
        BrokerError::TopicNotFound(_) | BrokerError::ChannelNotFound { .. } => ErrorCode::NotFound,
        BrokerError::Storage { source, .. } if source.is_disk_full() => ErrorCode::DiskFull,
        BrokerError::Storage { .. } => ErrorCode::PubFailed,
        BrokerError::OutOfRange { what, .. } if what.starts_with("REQ") => ErrorCode::ReqFailed,
        BrokerError::OutOfRange { .. } | BrokerError::RdyTooHigh { .. } => ErrorCode::Invalid,
        BrokerError::Settle { op: "FIN", .. } => ErrorCode::FinFailed,
        BrokerError::Settle { op: "REQ", .. } => ErrorCode::ReqFailed,
        BrokerError::Settle { .. } => ErrorCode::TouchFailed,
        BrokerError::Deleted => ErrorCode::NotFound,
        BrokerError::ShuttingDown => ErrorCode::ShuttingDown,
        BrokerError::Unrouted { .. } => ErrorCode::Unrouted,
    };
    WireError::new(code, seq, error_chain(e))
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn write_reply(send: &mut SendStream, reply: &Reply) -> Result<(), quinn::WriteError> {
    let mut buf = BytesMut::new();
    reply.encode(&mut buf);
    send.write_all(&buf).await
}
