//! Subscription streams: SUB, then RDY/FIN/REQ/TOUCH/CLS up and MESSAGE frames down.
//!
//! One task per stream. Each turn of its loop applies every command already buffered, then
//! sends as many messages as the consumer's credit allows, in one write. Dropping the
//! [`Subscription`] when the stream ends requeues whatever was still in flight.

use bytes::BytesMut;
use quinn::SendStream;

use super::{broker_error, read_error};
use crate::broker::delivery::Taken;
use crate::broker::{BrokerError, Subscription};
use crate::protocol::{encode_message, Command, ErrorCode, RawFrame, Reply, WireError};
use crate::transport::FrameReader;

/// Messages taken from the channel per lock.
const TAKE_BATCH: usize = 256;

pub(super) async fn run(
    sub: Result<Subscription, BrokerError>,
    mut reader: FrameReader,
    send: &mut SendStream,
) -> Result<(), WireError> {
    let sub = sub.map_err(|e| broker_error(&e, 0).fatal())?;
    tracing::debug!(topic = %sub.topic(), channel = %sub.channel(), consumer = sub.id(), "subscribed");
    let mut stream = SubStream {
        sub,
        out: BytesMut::new(),
        taken: Vec::with_capacity(TAKE_BATCH),
        closing: false,
    };
    Reply::SubOk.encode(&mut stream.out);
    loop {
        while let Some(raw) = reader.buffered().map_err(|e| e.to_wire(0).fatal())? {
            stream.apply(raw)?;
        }
        stream.deliver(send).await?;
        if stream.closing && stream.sub.is_drained() {
            Reply::CloseOk.encode(&mut stream.out);
            return stream.flush(send).await;
        }
        tokio::select! {
            biased;
            _ = stream.sub.ended() => {
                return Err(broker_error(&stream.sub.end_reason(), 0).fatal());
            }
            read = reader.next() => match read {
                Ok(Some(raw)) => stream.apply(raw)?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(read_error(&e)),
            },
            _ = stream.sub.wait() => {}
        }
    }
}

struct SubStream {
    sub: Subscription,
    out: BytesMut,
    taken: Vec<Taken>,
    closing: bool,
}

impl SubStream {
    /// Applies one command. Refusals go back as non-fatal errors; bad framing ends the stream.
    fn apply(&mut self, raw: RawFrame) -> Result<(), WireError> {
        let cmd = match Command::decode(raw) {
            Ok(cmd) => cmd,
            Err(e) => {
                let e = e.to_wire(0);
                return self.refuse(e);
            }
        };
        let result = match cmd {
            Command::Rdy(n) => self.sub.set_rdy(n),
            Command::Fin(id) => self.sub.fin(id),
            Command::Req { id, delay } => self.sub.req(id, delay),
            Command::Touch(id) => self.sub.touch(id),
            Command::Cls => {
                self.closing = true;
                self.sub.close();
                Ok(())
            }
            Command::Nop => Ok(()),
            other => {
                let e = WireError::new(
                    ErrorCode::Invalid,
                    0,
                    format!("{other:?} is not valid on a subscription stream"),
                );
                return self.refuse(e);
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.refuse(broker_error(&e, 0)),
        }
    }

    fn refuse(&mut self, e: WireError) -> Result<(), WireError> {
        if e.fatal {
            return Err(e);
        }
        Reply::Error(e).encode(&mut self.out);
        Ok(())
    }

    /// Sends what the consumer's credit and fair share allow, plus any replies waiting: one
    /// batch per take, yielding between takes.
    async fn deliver(&mut self, send: &mut SendStream) -> Result<(), WireError> {
        loop {
            self.taken.clear();
            if self.sub.take(TAKE_BATCH, &mut self.taken) == 0 {
                break;
            }
            for t in &self.taken {
                let m = &t.message;
                let id = self.sub.message_id(t.offset);
                encode_message(
                    &mut self.out,
                    id,
                    m.timestamp_ns,
                    t.attempts,
                    &m.headers,
                    &m.body,
                );
            }
            self.flush(send).await?;
            // Let the channel's other consumers take their share before taking again.
            tokio::task::yield_now().await;
        }
        self.flush(send).await
    }

    async fn flush(&mut self, send: &mut SendStream) -> Result<(), WireError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = send.write_all(&self.out).await;
        self.out.clear();
        result.map_err(|e| WireError::new(ErrorCode::Internal, 0, e.to_string()).fatal())
    }
}
