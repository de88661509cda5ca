//! Publishing with confirms: pipelined requests on one stream, each resolved by the PUB-OK
//! or ERROR carrying its sequence number.
//!
//! A message may carry an id ([`NewMessage::with_msg_id`]); with
//! [`ProducerOptions::auto_msg_id`] every message without one gets a random id when it is
//! queued. Within the topic's dedup window the broker stores an id once: a second publish of
//! it is confirmed with its [`Receipt`] marking it a duplicate. To retry a publish whose
//! confirmation was lost (the connection dropped), publish the same messages again, ids
//! included: give them their ids before the first attempt (`with_msg_id` or
//! [`NewMessage::with_auto_msg_id`]) and keep a copy, since an id the producer adds is not
//! seen by the caller.

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

type Pending = HashMap<u64, oneshot::Sender<Result<Receipt, WireError>>>;

/// How a producer treats the messages it is given.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerOptions {
    /// Gives every message without a message id a random one (128 bits in hex) when it is
    /// queued, so that the broker stores each publish once within its dedup window.
    pub auto_msg_id: bool,
}

impl ProducerOptions {
    pub fn auto_msg_id(mut self, on: bool) -> Self {
        self.auto_msg_id = on;
        self
    }
}

/// What the broker confirmed for one publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    duplicates: Vec<bool>,
}

impl Receipt {
    /// Whether message `index` of the request (0 for a PUB) was a duplicate of one the
    /// topic's dedup window holds, or of an earlier message of the request: confirmed, not
    /// stored again.
    pub fn is_duplicate(&self, index: usize) -> bool {
        self.duplicates.get(index).copied().unwrap_or(false)
    }

    /// Per message of the request, whether it was a duplicate; empty when none was.
    pub fn duplicates(&self) -> &[bool] {
        &self.duplicates
    }

    /// How many messages of the request were duplicates.
    pub fn duplicate_count(&self) -> usize {
        self.duplicates.iter().filter(|&&d| d).count()
    }
}

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
    options: ProducerOptions,
}

impl Producer {
    pub(super) fn start(
        send: SendStream,
        reader: FrameReader,
        options: ProducerOptions,
    ) -> Producer {
        let (tx, rx) = mpsc::channel(writer::QUEUE);
        writer::spawn(send, rx);
        let pending = Arc::new(Mutex::new(Pending::new()));
        tokio::spawn(read_replies(reader, pending.clone()));
        Producer {
            inner: Arc::new(Inner {
                commands: tx,
                pending,
                next_seq: AtomicU64::new(1),
                options,
            }),
        }
    }

    /// Publishes one message; resolves when the broker confirms it.
    pub async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<Receipt, ClientError> {
        let message = self.prepare(message);
        self.request(|seq| Command::Pub {
            seq,
            topic: topic.clone(),
            message,
        })
        .await
    }

    /// Publishes a batch atomically: all of it is stored, or none (duplicates aside, which
    /// are confirmed without being stored again).
    pub async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Receipt, ClientError> {
        let messages = messages.into_iter().map(|m| self.prepare(m)).collect();
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
    ) -> Result<Receipt, ClientError> {
        let message = self.prepare(message);
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
        let message = self.prepare(message);
        self.enqueue(|seq| Command::Pub {
            seq,
            topic: topic.clone(),
            message,
        })
        .await
    }

    /// The message as it will be sent: with a random id if the options ask for one.
    fn prepare(&self, message: NewMessage) -> NewMessage {
        if self.inner.options.auto_msg_id {
            return message.with_auto_msg_id();
        }
        message
    }

    async fn request(&self, command: impl FnOnce(u64) -> Command) -> Result<Receipt, ClientError> {
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
pub struct Confirmation(oneshot::Receiver<Result<Receipt, WireError>>);

impl Confirmation {
    /// Resolves on the PUB-OK, or the broker's refusal.
    pub async fn wait(self) -> Result<Receipt, ClientError> {
        match self.0.await {
            Ok(Ok(receipt)) => Ok(receipt),
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
            Ok(Reply::PubOk { seq, duplicates }) => {
                if let Some(tx) = lock(&pending).remove(&seq) {
                    let _ = tx.send(Ok(Receipt { duplicates }));
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
