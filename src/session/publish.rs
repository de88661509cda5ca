//! Publish streams: pipelined PUB, MPUB and DPUB, each answered in order by PUB-OK or ERROR
//! carrying the request's sequence number.

use std::time::Duration;

use bytes::BytesMut;
use quinn::SendStream;

use super::{broker_error, read_error};
use crate::broker::Broker;
use crate::protocol::{Command, ErrorCode, RawFrame, Reply, WireError};
use crate::transport::FrameReader;

/// Replies buffered before they are written even if more requests are waiting.
const FLUSH_AT: usize = 16 * 1024;

pub(super) async fn run(
    first: Command,
    mut reader: FrameReader,
    send: &mut SendStream,
    broker: &Broker,
) -> Result<(), WireError> {
    let mut out = BytesMut::new();
    handle(first, broker, &mut out).await?;
    loop {
        // Answer everything already buffered, then flush once: one write per batch of
        // pipelined requests.
        while let Some(raw) = reader.buffered().map_err(|e| e.to_wire(0).fatal())? {
            handle_raw(raw, broker, &mut out).await?;
            if out.len() >= FLUSH_AT {
                flush(send, &mut out).await?;
            }
        }
        flush(send, &mut out).await?;
        let read = tokio::select! {
            _ = broker.shutting_down() => {
                return Err(WireError::new(ErrorCode::ShuttingDown, 0, "the broker is shutting down"));
            }
            read = reader.next() => read,
        };
        match read {
            Ok(Some(raw)) => handle_raw(raw, broker, &mut out).await?,
            Ok(None) => return Ok(()),
            Err(e) => return Err(read_error(&e)),
        }
    }
}

async fn handle_raw(raw: RawFrame, broker: &Broker, out: &mut BytesMut) -> Result<(), WireError> {
    let seq = raw.publish_seq();
    match Command::decode(raw) {
        Ok(cmd) => handle(cmd, broker, out).await,
        Err(e) => {
            let e = e.to_wire(seq);
            if e.fatal {
                return Err(e);
            }
            Reply::Error(e).encode(out);
            Ok(())
        }
    }
}

async fn handle(cmd: Command, broker: &Broker, out: &mut BytesMut) -> Result<(), WireError> {
    let seq = cmd.seq();
    let result = match cmd {
        Command::Pub { topic, message, .. } => {
            broker.publish(&topic, vec![message], Duration::ZERO).await
        }
        Command::Mpub {
            topic, messages, ..
        } => broker.publish(&topic, messages, Duration::ZERO).await,
        Command::Dpub {
            topic,
            delay,
            message,
            ..
        } => broker.publish(&topic, vec![message], delay).await,
        Command::Nop => return Ok(()),
        other => {
            let e = WireError::new(
                ErrorCode::Invalid,
                seq,
                format!("{other:?} is not valid on a publish stream"),
            );
            Reply::Error(e).encode(out);
            return Ok(());
        }
    };
    match result {
        Ok(_) => Reply::PubOk { seq }.encode(out),
        Err(e) => {
            let e = broker_error(&e, seq);
            if e.fatal {
                return Err(e);
            }
            Reply::Error(e).encode(out)
        }
    }
    Ok(())
}

async fn flush(send: &mut SendStream, out: &mut BytesMut) -> Result<(), WireError> {
    if out.is_empty() {
        return Ok(());
    }
    let result = send.write_all(out).await;
    out.clear();
    result.map_err(|e| WireError::new(ErrorCode::Internal, 0, e.to_string()).fatal())
}
