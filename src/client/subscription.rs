//! A raw subscription: SUB once, then RDY, FIN, REQ, TOUCH and CLS as the caller decides.

use std::time::Duration;

use quinn::SendStream;
use tokio::sync::mpsc;

use super::{writer, ClientError};
use crate::message::{Delivery, MessageId};
use crate::protocol::{Command, Reply, WireError};
use crate::transport::FrameReader;

/// Something the broker sent on a subscription stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubEvent {
    Message(Delivery),
    /// A refused command (not fatal) or the reason the stream is ending (fatal).
    Error(WireError),
    /// CLOSE_OK: nothing is in flight any more and the stream is done.
    Closed,
}

/// Sends FIN, REQ and TOUCH for a subscription; clone it into handler tasks.
#[derive(Debug, Clone)]
pub struct Acker {
    commands: mpsc::Sender<Command>,
}

impl Acker {
    async fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ClientError::Closed)
    }

    pub async fn fin(&self, id: MessageId) -> Result<(), ClientError> {
        self.send(Command::Fin(id)).await
    }

    pub async fn req(&self, id: MessageId, delay: Duration) -> Result<(), ClientError> {
        self.send(Command::Req { id, delay }).await
    }

    pub async fn touch(&self, id: MessageId) -> Result<(), ClientError> {
        self.send(Command::Touch(id)).await
    }
}

/// One subscription stream. Dropping it ends the stream, and the broker requeues whatever
/// was in flight to it at once.
#[derive(Debug)]
pub struct Subscription {
    acker: Acker,
    events: mpsc::Receiver<SubEvent>,
}

impl Subscription {
    pub(super) async fn start(
        sub: Command,
        send: SendStream,
        mut reader: FrameReader,
    ) -> Result<Subscription, ClientError> {
        let (tx, rx) = mpsc::channel(writer::QUEUE);
        writer::spawn(send, rx);
        tx.send(sub).await.map_err(|_| ClientError::Closed)?;
        let raw = reader.next().await?.ok_or(ClientError::Closed)?;
        match Reply::decode(raw)? {
            Reply::SubOk => {}
            Reply::Error(e) => return Err(ClientError::Broker(e)),
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        let (events_tx, events) = mpsc::channel(writer::QUEUE);
        tokio::spawn(read_events(reader, events_tx));
        Ok(Subscription {
            acker: Acker { commands: tx },
            events,
        })
    }

    /// Sets how many messages may be in flight to this subscription at once.
    pub async fn rdy(&self, count: u32) -> Result<(), ClientError> {
        self.acker.send(Command::Rdy(count)).await
    }

    pub async fn fin(&self, id: MessageId) -> Result<(), ClientError> {
        self.acker.fin(id).await
    }

    pub async fn req(&self, id: MessageId, delay: Duration) -> Result<(), ClientError> {
        self.acker.req(id, delay).await
    }

    pub async fn touch(&self, id: MessageId) -> Result<(), ClientError> {
        self.acker.touch(id).await
    }

    /// Asks the broker to stop delivering and to close once nothing is in flight.
    pub async fn cls(&self) -> Result<(), ClientError> {
        self.acker.send(Command::Cls).await
    }

    pub fn acker(&self) -> Acker {
        self.acker.clone()
    }

    /// The next event, or `None` once the stream has ended.
    pub async fn next_event(&mut self) -> Option<SubEvent> {
        self.events.recv().await
    }

    /// The next message. Non-fatal errors are logged and skipped; a fatal one is returned;
    /// `Ok(None)` means the stream closed.
    pub async fn next(&mut self) -> Result<Option<Delivery>, ClientError> {
        loop {
            match self.events.recv().await {
                Some(SubEvent::Message(d)) => return Ok(Some(d)),
                Some(SubEvent::Error(e)) if e.fatal => return Err(ClientError::Broker(e)),
                Some(SubEvent::Error(e)) => tracing::warn!(error = %e, "broker refused a command"),
                Some(SubEvent::Closed) | None => return Ok(None),
            }
        }
    }
}

async fn read_events(mut reader: FrameReader, events: mpsc::Sender<SubEvent>) {
    loop {
        let event = match reader.next().await {
            Ok(Some(raw)) => match Reply::decode(raw) {
                Ok(Reply::Message(d)) => SubEvent::Message(d),
                Ok(Reply::Error(e)) => SubEvent::Error(e),
                Ok(Reply::CloseOk) => SubEvent::Closed,
                Ok(other) => {
                    tracing::warn!(reply = ?other, "unexpected reply on subscription stream");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bad frame on subscription stream");
                    return;
                }
            },
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "subscription stream read failed");
                return;
            }
        };
        let last = matches!(
            &event,
            SubEvent::Closed | SubEvent::Error(WireError { fatal: true, .. })
        );
        if events.send(event).await.is_err() || last {
            return;
        }
    }
}
