//! Publishes forwarded from a node that does not lead their topic to the node that does
//! (decision 47 of `docs/ARCHITECTURE.md`). An NSQ TCP or HTTP client may publish to any
//! node: the node it reached authorized it, and sends the publish over the node pair's peer
//! connection (`PeerRequest::Publish`) to the topic's leader, which stores it as the
//! sending node's, trusted under the cluster's mutual TLS, and answers once it is committed.
//!
//! One task per topic forwards, one call at a time, every publish that arrived while the
//! previous call was out: so a connection's publishes reach the leader in the order it sent
//! them, and a busy topic's forwards share calls.
//!
//! # Invariants
//! - Every forward is answered within [`FORWARD_WITHIN`] of being queued: with the leader's
//!   answer, or a retriable `Unavailable` naming the leader that did not answer.
//! - A publish is sent again only when the node that got it refused it before appending
//!   anything (`NotLeader`): then to the leader that node names, at most [`HOPS`] times.
//! - Message ids travel in the messages' headers, so a publish retried after a lost answer
//!   is stored once by the leader's dedup window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{ClusterNode, STARTING};
use crate::broker::{BrokerError, ErrorKind, Forward, Forwarding, Stored};
use crate::cluster::raft::network::{call, encode, PeerRequest};
use crate::cluster::{BoxFuture, NodeId};
use crate::message::{Headers, NewMessage, TopicName};
use crate::storage::{LeaderHint, StorageError};

/// How long a forwarded publish may take, from being queued to the leader's answer.
pub const FORWARD_WITHIN: Duration = Duration::from_secs(5);
/// How many times a publish follows a `NotLeader` answer to the leader it names.
pub const HOPS: usize = 3;
/// Publishes waiting to be forwarded, per topic; more are refused as unavailable.
const QUEUE: usize = 4096;
/// The most one call carries: publishes, and bytes of message bodies.
const BATCH_PUBLISHES: usize = 1024;
const BATCH_BYTES: usize = 8 << 20;
/// A topic's forwarding task ends after this long without a publish.
const IDLE: Duration = Duration::from_secs(30);

/// One publish as it crosses to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedPublish {
    pub messages: Vec<ForwardedMessage>,
    /// A DPUB's delay; 0 for PUB and MPUB.
    pub delay_ms: u64,
}

/// A message's headers (its id among them) and body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedMessage {
    pub headers: Vec<(String, String)>,
    #[serde(with = "body")]
    pub body: Bytes,
}

/// A body as postcard's bytes (a length, then the bytes), without a copy to send it.
mod body {
    use bytes::Bytes;
    use serde::de::{Deserializer, Error, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(body: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(body)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct Body;
        impl Visitor<'_> for Body {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a message body")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
        }
        d.deserialize_byte_buf(Body)
    }
}

impl ForwardedPublish {
    fn new(messages: Vec<NewMessage>, delay: Duration) -> ForwardedPublish {
        let messages = messages
            .into_iter()
            .map(|m| ForwardedMessage {
                headers: m
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                body: m.body,
            })
            .collect();
        ForwardedPublish {
            messages,
            delay_ms: delay.as_millis() as u64,
        }
    }

    fn bytes(&self) -> usize {
        self.messages.iter().map(|m| m.body.len()).sum()
    }

    /// The messages as the broker takes them. Their headers were valid where they were
    /// published.
    fn into_parts(self) -> (Vec<NewMessage>, Duration) {
        let messages = self
            .messages
            .into_iter()
            .map(|m| {
                let mut headers = Headers::new();
                m.headers.into_iter().for_each(|(k, v)| headers.push(k, v));
                NewMessage {
                    headers,
                    body: m.body,
                }
            })
            .collect();
        (messages, Duration::from_millis(self.delay_ms))
    }
}

/// The leader's answer to one forwarded publish.
pub type ForwardAnswer = Result<Confirmed, Refused>;

/// A forwarded publish the leader confirmed: its offsets there and its duplicate marks.
#[derive(Debug, Serialize, Deserialize)]
pub struct Confirmed {
    pub first: u64,
    pub end: u64,
    pub duplicates: Vec<bool>,
}

/// A forwarded publish the leader refused: what kind of refusal (as the broker's
/// [`ErrorKind`]), why, and for `NotLeader` the leader it knows of.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refused {
    pub kind: RefusedKind,
    pub reason: String,
    pub leader: Option<NodeId>,
}

/// The broker's error kinds a forwarded publish can end with, as they cross the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusedKind {
    NotLeader,
    Unavailable,
    NotFound,
    DiskFull,
    StorageFailed,
    Invalid,
    Unrouted,
    Denied,
}

impl RefusedKind {
    /// The leader's refusal, by kind. The leader shutting down is, for the client, a
    /// leader about to change: retriable.
    fn of(kind: ErrorKind) -> RefusedKind {
        match kind {
            ErrorKind::NotLeader => RefusedKind::NotLeader,
            ErrorKind::Unavailable | ErrorKind::ShuttingDown => RefusedKind::Unavailable,
            ErrorKind::NotFound => RefusedKind::NotFound,
            ErrorKind::DiskFull => RefusedKind::DiskFull,
            ErrorKind::Invalid => RefusedKind::Invalid,
            ErrorKind::Unrouted => RefusedKind::Unrouted,
            ErrorKind::Unauthenticated | ErrorKind::Denied => RefusedKind::Denied,
            ErrorKind::StorageFailed
            | ErrorKind::ReqFailed
            | ErrorKind::FinFailed
            | ErrorKind::TouchFailed => RefusedKind::StorageFailed,
        }
    }

    /// The kind the client's entry point maps. A redirect that could not be followed is a
    /// leadership still moving: retriable.
    fn kind(self) -> ErrorKind {
        match self {
            RefusedKind::NotLeader | RefusedKind::Unavailable => ErrorKind::Unavailable,
            RefusedKind::NotFound => ErrorKind::NotFound,
            RefusedKind::DiskFull => ErrorKind::DiskFull,
            RefusedKind::StorageFailed => ErrorKind::StorageFailed,
            RefusedKind::Invalid => ErrorKind::Invalid,
            RefusedKind::Unrouted => ErrorKind::Unrouted,
            RefusedKind::Denied => ErrorKind::Denied,
        }
    }
}

/// Publishes forwarded in one call: each one's messages and delay, in order.
pub type PublishBatch = Vec<(Vec<NewMessage>, Duration)>;

/// The answers to a [`PublishBatch`], in its order.
pub type PublishAnswers = BoxFuture<'static, Vec<Result<Stored, BrokerError>>>;

/// Stores forwarded publishes on the leader: the broker's side, set by the server.
/// Called with the sending node and the topic.
#[derive(Clone)]
pub struct OnPublish(
    pub Arc<dyn Fn(NodeId, TopicName, PublishBatch) -> PublishAnswers + Send + Sync>,
);

impl std::fmt::Debug for OnPublish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnPublish")
    }
}

impl ClusterNode {
    /// What stores the publishes other nodes forward to this one.
    pub fn set_on_publish(&self, on_publish: OnPublish) {
        let _ = self.on_publish.set(on_publish);
    }

    /// The broker's [`Forward`] hook: publishes sent from this node to their topics'
    /// leaders.
    pub fn forwarder(self: &Arc<Self>) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            node: Arc::downgrade(self),
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Answers publishes another node forwarded: each stored here, as that node's.
    pub(super) async fn serve_publish(
        &self,
        from: NodeId,
        topic: &str,
        publishes: Vec<ForwardedPublish>,
    ) -> Result<Bytes, String> {
        let on_publish = self.on_publish.get().cloned().ok_or(STARTING.to_string())?;
        let name = TopicName::new(topic).map_err(|e| e.to_string())?;
        let batch = publishes
            .into_iter()
            .map(ForwardedPublish::into_parts)
            .collect();
        let answers: Vec<ForwardAnswer> = (on_publish.0)(from, name, batch)
            .await
            .into_iter()
            .map(|answer| match answer {
                Ok((range, duplicates)) => Ok(Confirmed {
                    first: range.start,
                    end: range.end,
                    duplicates,
                }),
                Err(e) => Err(refused(&e)),
            })
            .collect();
        encode(&Ok::<_, String>(answers))
    }

    /// Where to send a publish for `topic`: its leader as this node's replica knows it,
    /// else where the broker was told it is.
    fn forward_target(&self, topic: &TopicName, told: NodeId) -> NodeId {
        let group = self.groups().get(topic.as_str()).cloned();
        group
            .and_then(|g| g.current_leader())
            .filter(|&l| l != self.id)
            .unwrap_or(told)
    }

    /// Sends the publishes of `pending` to `target` in one call; their answers, or why
    /// there are none.
    async fn send_publishes(
        &self,
        target: NodeId,
        topic: &TopicName,
        pending: &[Queued],
        timeout: Duration,
    ) -> Result<Vec<ForwardAnswer>, String> {
        let Some(client) = self.peer_client(target) else {
            return Err(format!("node {target} is not a member"));
        };
        let request = PeerRequest::Publish {
            topic: topic.to_string(),
            publishes: pending.iter().map(|q| q.publish.clone()).collect(),
        };
        let answers = match call::<Vec<ForwardAnswer>>(&client, &request, timeout).await {
            Ok(Ok(answers)) => answers,
            Ok(Err(reason)) => return Err(reason),
            Err(e) => return Err(e.to_string()),
        };
        if answers.len() != pending.len() {
            let (got, sent) = (answers.len(), pending.len());
            return Err(format!("{got} answers to {sent} publishes"));
        }
        Ok(answers)
    }
}

/// The leader's refusal of a forwarded publish.
fn refused(e: &BrokerError) -> Refused {
    let leader = match e {
        BrokerError::Storage {
            source: StorageError::NotLeader { leader, .. },
            ..
        } => Some(leader.node),
        _ => None,
    };
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    Refused {
        kind: RefusedKind::of(e.kind()),
        reason,
        leader,
    }
}

fn forward_error(
    topic: &TopicName,
    leader: NodeId,
    kind: ErrorKind,
    reason: String,
) -> BrokerError {
    BrokerError::Forwarded {
        topic: topic.clone(),
        leader,
        kind,
        reason,
    }
}

/// A publish waiting to be forwarded.
struct Queued {
    publish: ForwardedPublish,
    /// Where the broker was told the leader is.
    told: NodeId,
    queued_at: Instant,
    answer: oneshot::Sender<Result<Stored, BrokerError>>,
}

/// The [`Forward`] hook of a cluster node: a queue and a task per topic.
#[derive(Debug)]
pub struct Forwarder {
    node: Weak<ClusterNode>,
    queues: Mutex<HashMap<TopicName, Queue>>,
}

/// A topic's queue and the task that forwards from it.
#[derive(Debug)]
struct Queue {
    tx: mpsc::Sender<Queued>,
    task: tokio::task::JoinHandle<()>,
}

impl Forward for Forwarder {
    fn forward(
        &self,
        topic: &TopicName,
        leader: &LeaderHint,
        messages: Vec<NewMessage>,
        delay: Duration,
    ) -> Forwarding {
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            publish: ForwardedPublish::new(messages, delay),
            told: leader.node,
            queued_at: Instant::now(),
            answer,
        };
        let (topic, told) = (topic.clone(), leader.node);
        if let Err(reason) = self.enqueue(&topic, queued) {
            let e = forward_error(&topic, told, ErrorKind::Unavailable, reason);
            return Box::pin(async move { Err(e) });
        }
        Box::pin(async move {
            answered.await.unwrap_or_else(|_| {
                let reason = "this node stopped forwarding; retry".to_string();
                Err(forward_error(&topic, told, ErrorKind::Unavailable, reason))
            })
        })
    }
}

impl Forwarder {
    /// Queues a publish behind the topic's earlier ones, starting its task if there is none
    /// (or it ended, idle).
    fn enqueue(&self, topic: &TopicName, queued: Queued) -> Result<(), String> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queued = match queues.get(topic) {
            None => queued,
            Some(queue) => match queue.tx.try_send(queued) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(format!(
                        "{QUEUE} publishes are waiting to be forwarded to the leader; retry"
                    ))
                }
                Err(mpsc::error::TrySendError::Closed(queued)) => queued,
            },
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        // A new channel has room for one.
        let _ = tx.try_send(queued);
        // A task that went idle may still be sending what was queued as it closed: the new
        // one waits for it, so that publishes keep their order.
        let previous = queues.remove(topic).map(|q| q.task);
        let task = tokio::spawn(run_queue(self.node.clone(), topic.clone(), rx, previous));
        queues.insert(topic.clone(), Queue { tx, task });
        Ok(())
    }
}

/// Forwards a topic's queued publishes, a batch per call, until idle.
async fn run_queue(
    node: Weak<ClusterNode>,
    topic: TopicName,
    mut rx: mpsc::Receiver<Queued>,
    previous: Option<tokio::task::JoinHandle<()>>,
) {
    if let Some(previous) = previous {
        let _ = previous.await;
    }
    let mut closed = false;
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            _ = tokio::time::sleep(IDLE), if !closed => {
                // Senders now start a new task; what is queued is still forwarded here.
                rx.close();
                closed = true;
                continue;
            }
        };
        let Some(first) = first else { return };
        let mut bytes = first.publish.bytes();
        let mut batch = vec![first];
        while batch.len() < BATCH_PUBLISHES && bytes < BATCH_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.publish.bytes();
            batch.push(next);
        }
        match node.upgrade() {
            Some(node) => forward_batch(&node, &topic, batch).await,
            None => {
                for queued in batch {
                    let reason = "this node is stopping; retry".to_string();
                    let e = forward_error(&topic, queued.told, ErrorKind::Unavailable, reason);
                    let _ = queued.answer.send(Err(e));
                }
            }
        }
    }
}

/// Sends a batch to the topic's leader and answers each publish, following `NotLeader`
/// answers to the leader they name.
async fn forward_batch(node: &ClusterNode, topic: &TopicName, mut pending: Vec<Queued>) {
    let told = pending.last().map_or(0, |q| q.told);
    let mut target = node.forward_target(topic, told);
    for _ in 0..HOPS {
        let oldest = pending.iter().map(|q| q.queued_at).min();
        let left = oldest.map_or(Duration::ZERO, |at| {
            (at + FORWARD_WITHIN).saturating_duration_since(Instant::now())
        });
        if left.is_zero() || target == node.id {
            break;
        }
        let answers = match node.send_publishes(target, topic, &pending, left).await {
            Ok(answers) => answers,
            Err(reason) => {
                tracing::debug!(%topic, leader = target, %reason, "forwarding publishes failed");
                let reason = format!("it did not answer ({reason}); retry");
                return fail(pending, topic, target, &reason);
            }
        };
        let mut again = Vec::new();
        let mut next = target;
        for (queued, answer) in pending.into_iter().zip(answers) {
            match answer {
                Ok(c) => {
                    let _ = queued.answer.send(Ok((c.first..c.end, c.duplicates)));
                }
                Err(Refused {
                    kind: RefusedKind::NotLeader,
                    leader: Some(leader),
                    ..
                }) if leader != target => {
                    next = leader;
                    again.push(queued);
                }
                Err(r) => {
                    let e = forward_error(topic, target, r.kind.kind(), r.reason);
                    let _ = queued.answer.send(Err(e));
                }
            }
        }
        if again.is_empty() {
            return;
        }
        tracing::debug!(%topic, from = target, to = next, "forwarded publishes follow the leader");
        (pending, target) = (again, next);
    }
    let reason = "its leadership is changing; retry".to_string();
    fail(pending, topic, target, &reason);
}

/// Answers every publish of `pending` with a retriable refusal.
fn fail(pending: Vec<Queued>, topic: &TopicName, leader: NodeId, reason: &str) {
    for queued in pending {
        let e = forward_error(topic, leader, ErrorKind::Unavailable, reason.to_string());
        let _ = queued.answer.send(Err(e));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::raft::network::decode;

    #[test]
    fn a_forwarded_publish_keeps_its_headers_bodies_and_delay() {
        let messages = vec![
            NewMessage::new("one").with_msg_id("id-1"),
            NewMessage::new(vec![0u8, 255]).with_header("trace", "t"),
        ];
        let sent = ForwardedPublish::new(messages.clone(), Duration::from_millis(1500));
        let bytes = encode(&sent).unwrap();
        let got: ForwardedPublish = decode(&bytes).unwrap();
        let (back, delay) = got.into_parts();
        assert_eq!(back, messages);
        assert_eq!(back[0].msg_id(), Some("id-1"));
        assert_eq!(delay, Duration::from_millis(1500));
    }

    #[test]
    fn refusals_keep_their_kind_and_a_redirect_its_leader() {
        let t = TopicName::new("t").unwrap();
        let not_leader = BrokerError::Storage {
            topic: t.clone(),
            source: StorageError::NotLeader {
                topic: "t".into(),
                leader: LeaderHint {
                    node: 3,
                    ..LeaderHint::default()
                },
            },
        };
        let r = refused(&not_leader);
        assert_eq!((r.kind, r.leader), (RefusedKind::NotLeader, Some(3)));
        assert!(r.reason.contains("node 3"), "{}", r.reason);
        // A redirect that reaches the client is a leadership still moving: retriable.
        assert_eq!(r.kind.kind(), ErrorKind::Unavailable);
        let unrouted = BrokerError::Unrouted {
            topic: t,
            reason: "no route".into(),
        };
        assert_eq!(refused(&unrouted).kind.kind(), ErrorKind::Unrouted);
        assert_eq!(
            RefusedKind::of(ErrorKind::ShuttingDown).kind(),
            ErrorKind::Unavailable
        );
    }
}
