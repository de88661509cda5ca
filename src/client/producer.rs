//! Publishing with confirms: pipelined requests on one stream, each resolved by the PUB-OK
//! or ERROR carrying its sequence number.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn::SendStream;
use tokio::sync::{mpsc, oneshot};

use super::{writer, ClientError};
use crate::message::{NewMessage, TopicName};
use crate::protocol::{Command, Reply, WireError};
use crate::transport::FrameReader;

type Pending = HashMap<u64, oneshot::Sender<Result<(), WireError>>>;

/// A publish stream. Clone it to publish from many tasks; their requests pipeline.
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::Sender<Command>,
    pending: Arc<Mutex<Pending>>,
    next_seq: AtomicU64,
}

impl Producer {
    pub(super) fn start(send: SendStream, reader: FrameReader) -> Producer {
        let (tx, rx) = mpsc::channel(writer::QUEUE);
        writer::spawn(send, rx);
        let pending = Arc::new(Mutex::new(Pending::new()));
        tokio::spawn(read_replies(reader, pending.clone()));
        Producer {
            inner: Arc::new(Inner {
                commands: tx,
                pending,
                next_seq: AtomicU64::new(1),
            }),
        }
    }

    /// Publishes one message; resolves when the broker confirms it.
    pub async fn publish(&self, topic: &TopicName, message: NewMessage) -> Result<(), ClientError> {
        self.request(|seq| Command::Pub {
            seq,
            topic: topic.clone(),
            message,
        })
        .await
    }

    /// Publishes a batch atomically: all of it is stored, or none.
    pub async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<(), ClientError> {
        self.request(|seq| Command::Mpub {
            seq,
            topic: topic.clone(),
            messages,
        })
        .await
    }

    /// Publishes one message that no channel delivers before `delay` has passed.
    pub async fn publish_deferred(
        &self,
        topic: &TopicName,
        message: NewMessage,
        delay: Duration,
    ) -> Result<(), ClientError> {
        self.request(|seq| Command::Dpub {
            seq,
            topic: topic.clone(),
            delay,
            message,
        })
        .await
    }

    /// Queues one publish and returns at once with a [`Confirmation`] to await later.
    /// Publishes queued from one task reach the broker in the order they were queued, so a
    /// caller can pipeline many while keeping their order.
    pub async fn start_publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<Confirmation, ClientError> {
        self.enqueue(|seq| Command::Pub {
            seq,
            topic: topic.clone(),
            message,
        })
        .await
    }

    async fn request(&self, command: impl FnOnce(u64) -> Command) -> Result<(), ClientError> {
        self.enqueue(command).await?.wait().await
    }

    async fn enqueue(
        &self,
        command: impl FnOnce(u64) -> Command,
    ) -> Result<Confirmation, ClientError> {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(seq, tx);
        if self.inner.commands.send(command(seq)).await.is_err() {
            lock(&self.inner.pending).remove(&seq);
            return Err(ClientError::Closed);
        }
        Ok(Confirmation(rx))
    }
}

/// The broker's answer to one queued publish.
#[derive(Debug)]
pub struct Confirmation(oneshot::Receiver<Result<(), WireError>>);

impl Confirmation {
    /// Resolves on the PUB-OK, or the broker's refusal.
    pub async fn wait(self) -> Result<(), ClientError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClientError::Broker(e)),
            Err(_) => Err(ClientError::Closed),
        }
    }
}

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // Only single inserts and removes happen under this lock.
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves pending requests from the broker's replies. A fatal error that names no request
/// fails every request still waiting with it; when the stream just ends, they fail with
/// `Closed` (their senders are dropped).
async fn read_replies(mut reader: FrameReader, pending: Arc<Mutex<Pending>>) {
    loop {
        let reply = match reader.next().await {
            Ok(Some(raw)) => Reply::decode(raw),
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "publish stream read failed");
                break;
            }
        };
        match reply {
            Ok(Reply::PubOk { seq }) => {
                if let Some(tx) = lock(&pending).remove(&seq) {
                    let _ = tx.send(Ok(()));
                }
            }
            Ok(Reply::Error(e)) => {
                let fatal = e.fatal;
                let mut pending = lock(&pending);
                match pending.remove(&e.seq) {
                    Some(tx) => drop(tx.send(Err(e))),
                    // A fatal error of the stream itself ends every request with its reason.
                    None if fatal => {
                        for (_, tx) in pending.drain() {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                    None => tracing::warn!(error = %e, "broker error on publish stream"),
                }
                if fatal {
                    break;
                }
            }
            Ok(other) => tracing::warn!(reply = ?other, "unexpected reply on publish stream"),
            Err(e) => {
                tracing::warn!(error = %e, "bad frame on publish stream");
                break;
            }
        }
    }
    lock(&pending).clear();
}
