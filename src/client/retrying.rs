//! A producer that outlives its connection: when the connection to the broker is lost, it
//! connects again and publishes once more what was not confirmed, with the same message ids,
//! so that the topic's dedup window stores every message once even when the first attempt
//! was in fact stored and only its confirmation was lost.
//!
//! Every message gets an id before its first attempt (its own, or a random one), and a retry
//! sends the very same messages. Only failures that leave the outcome unknown are retried: a
//! lost connection, a stream that ended, a broker shutting down, a connect that did not
//! answer in time. A refusal (a bad message, a missing permission) is returned at once, since
//! sending it again would be refused again.
//!
//! In a cluster it also follows the topic's leader: a node that does not lead the topic
//! answers `E_NOT_LEADER` naming the leader, and the publish goes there (remembered per
//! topic); `E_UNAVAILABLE` (an election) is retried after the backoff; when the node it
//! publishes to stops answering, it tries the other addresses it knows (the seeds and the
//! leaders it was sent to), whose redirects then lead it to the new leader.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::{Client, ClientError, ClientOptions, Producer, Receipt};
use crate::message::{NewMessage, TopicName};
use crate::protocol::ErrorCode;

/// How often and how patiently a [`RetryingProducer`] tries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per publish, the first included.
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long one attempt may wait for its confirmation before the connection is given up
    /// as lost. A broker that died without closing its connections is otherwise noticed only
    /// when the connection's idle timeout (30 s) passes.
    pub confirm_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

/// A publisher that reconnects and retries with message ids. Clone it to publish from many
/// tasks: they share one connection and one publish stream, and whichever notices a lost
/// connection first replaces it for all.
#[derive(Debug, Clone)]
pub struct RetryingProducer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: ClientOptions,
    policy: RetryPolicy,
    link: Mutex<Link>,
}

#[derive(Debug, Default)]
struct Link {
    /// Counts the connections made, so that a failure on an old one does not drop a new one.
    generation: u64,
    /// Open connections by address, each with its publish stream and generation.
    conns: HashMap<SocketAddr, (u64, Client, Producer)>,
    /// Each topic's leader, as a redirect named it.
    leaders: HashMap<TopicName, SocketAddr>,
    /// Addresses to try for a topic whose leader is not known: the seeds, then the leaders
    /// redirects named.
    known: Vec<SocketAddr>,
    /// Index in `known` of the address tried first.
    preferred: usize,
    /// When each address last failed to answer: a redirect to it is not followed for
    /// [`DOWN_FOR`], since the node that sent it may not have noticed yet.
    down: HashMap<SocketAddr, Instant>,
}

/// How long an address that did not answer is not sent to by a redirect.
const DOWN_FOR: Duration = Duration::from_secs(2);

impl Link {
    /// Where a publish to `topic` goes.
    fn target(&self, topic: &TopicName) -> SocketAddr {
        self.leaders
            .get(topic)
            .copied()
            .unwrap_or(self.known[self.preferred % self.known.len()])
    }

    /// `addr` did not answer: forget it as a leader and try the next known address first.
    fn unreachable(&mut self, addr: SocketAddr) {
        self.down.insert(addr, Instant::now());
        self.leaders.retain(|_, leader| *leader != addr);
        if self.known[self.preferred % self.known.len()] == addr {
            self.preferred = (self.preferred + 1) % self.known.len();
        }
    }

    /// A redirect named `leader` for `topic`: returns whether to follow it (not to a node
    /// that just failed to answer).
    fn redirected(&mut self, topic: &TopicName, leader: SocketAddr) -> bool {
        if self
            .down
            .get(&leader)
            .is_some_and(|at| at.elapsed() < DOWN_FOR)
        {
            return false;
        }
        if !self.known.contains(&leader) {
            self.known.push(leader);
        }
        self.leaders.insert(topic.clone(), leader);
        true
    }
}

impl RetryingProducer {
    /// A producer for the broker at `options`; it connects on its first publish.
    pub fn new(options: ClientOptions, policy: RetryPolicy) -> RetryingProducer {
        RetryingProducer::with_seeds(options, Vec::new(), policy)
    }

    /// A producer for a cluster: `options.addr` first, then `seeds` when it does not answer.
    /// Any node will do: redirects lead each topic's publishes to its leader.
    pub fn with_seeds(
        options: ClientOptions,
        seeds: Vec<SocketAddr>,
        policy: RetryPolicy,
    ) -> RetryingProducer {
        let mut known = vec![options.addr];
        known.extend(seeds.into_iter().filter(|s| *s != options.addr));
        RetryingProducer {
            inner: Arc::new(Inner {
                options,
                policy,
                link: Mutex::new(Link {
                    known,
                    ..Link::default()
                }),
            }),
        }
    }

    /// Publishes one message, retrying as the policy allows.
    pub async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<Receipt, ClientError> {
        self.publish_batch(topic, vec![message]).await
    }

    /// Publishes a batch atomically, retrying as the policy allows. The receipt of a retry
    /// marks as duplicates the messages an earlier attempt had stored.
    pub async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Receipt, ClientError> {
        let messages: Vec<NewMessage> = messages
            .into_iter()
            .map(NewMessage::with_auto_msg_id)
            .collect();
        let policy = self.inner.policy;
        let mut wait = policy.backoff;
        let mut attempt = 1;
        loop {
            let addr = self.inner.link.lock().await.target(topic);
            let result = match self.producer(addr).await {
                Ok((generation, producer)) => {
                    let publish = producer.publish_batch(topic, messages.clone());
                    let result = tokio::time::timeout(policy.confirm_timeout, publish)
                        .await
                        .unwrap_or(Err(ClientError::TimedOut {
                            what: "waiting for the confirmation",
                            after: policy.confirm_timeout,
                        }));
                    if result.as_ref().is_err_and(outcome_unknown) {
                        self.forget(addr, generation).await;
                    }
                    result
                }
                Err(e) => {
                    self.inner.link.lock().await.unreachable(addr);
                    Err(e)
                }
            };
            let error = match result {
                Err(e) if attempt < policy.attempts => e,
                other => return other,
            };
            attempt += 1;
            if let Some(leader) = error.redirect() {
                // Sent on at once, unless the node named itself (a stale view).
                let follow = self.inner.link.lock().await.redirected(topic, leader);
                tracing::debug!(%topic, %leader, follow, "redirected to the topic's leader");
                if follow && leader != addr {
                    continue;
                }
            } else if !(outcome_unknown(&error) || error.is_unavailable()) {
                return Err(error);
            }
            tracing::debug!(error = %error, attempt, "publish failed; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(policy.max_backoff);
        }
    }

    /// The publish stream to `addr`, connecting first if there is none.
    async fn producer(&self, addr: SocketAddr) -> Result<(u64, Producer), ClientError> {
        let mut link = self.inner.link.lock().await;
        if let Some((generation, _, producer)) = link.conns.get(&addr) {
            return Ok((*generation, producer.clone()));
        }
        let timeout = self.inner.policy.connect_timeout;
        let options = ClientOptions {
            addr,
            ..self.inner.options.clone()
        };
        let connect = async {
            let client = Client::connect(&options).await?;
            let producer = client.producer().await?;
            Ok::<_, ClientError>((client, producer))
        };
        let (client, producer) =
            tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| ClientError::TimedOut {
                    what: "connecting to the broker",
                    after: timeout,
                })??;
        link.generation += 1;
        link.down.remove(&addr);
        let generation = link.generation;
        link.conns
            .insert(addr, (generation, client, producer.clone()));
        Ok((generation, producer))
    }

    /// Drops the connection to `addr` if it is still connection `generation`.
    async fn forget(&self, addr: SocketAddr, generation: u64) {
        let mut link = self.inner.link.lock().await;
        link.unreachable(addr);
        if link
            .conns
            .get(&addr)
            .is_some_and(|(g, _, _)| *g == generation)
        {
            if let Some((_, client, _)) = link.conns.remove(&addr) {
                drop(link);
                client.close().await;
            }
        }
    }
}

/// Whether a publish that failed this way may have been stored: the connection or stream
/// went away, or the broker was stopping. A retry with the same ids settles it.
fn outcome_unknown(error: &ClientError) -> bool {
    match error {
        ClientError::Connect { .. }
        | ClientError::Connection(_)
        | ClientError::Read(_)
        | ClientError::Write(_)
        | ClientError::Closed
        | ClientError::TimedOut { .. } => true,
        ClientError::Broker(e) => e.code == ErrorCode::ShuttingDown,
        _ => false,
    }
}
