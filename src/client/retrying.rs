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

use std::sync::Arc;
use std::time::Duration;

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
    current: Option<(Client, Producer)>,
}

impl RetryingProducer {
    /// A producer for the broker at `options`; it connects on its first publish.
    pub fn new(options: ClientOptions, policy: RetryPolicy) -> RetryingProducer {
        RetryingProducer {
            inner: Arc::new(Inner {
                options,
                policy,
                link: Mutex::new(Link::default()),
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
            let result = match self.producer().await {
                Ok((generation, producer)) => {
                    let publish = producer.publish_batch(topic, messages.clone());
                    let result = tokio::time::timeout(policy.confirm_timeout, publish)
                        .await
                        .unwrap_or(Err(ClientError::TimedOut {
                            what: "waiting for the confirmation",
                            after: policy.confirm_timeout,
                        }));
                    if result.as_ref().is_err_and(outcome_unknown) {
                        self.forget(generation).await;
                    }
                    result
                }
                Err(e) => Err(e),
            };
            match result {
                Err(e) if outcome_unknown(&e) && attempt < policy.attempts => {
                    tracing::debug!(error = %e, attempt, "publish failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(policy.max_backoff);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The current publish stream, connecting first if there is none.
    async fn producer(&self) -> Result<(u64, Producer), ClientError> {
        let mut link = self.inner.link.lock().await;
        if let Some((_, producer)) = &link.current {
            return Ok((link.generation, producer.clone()));
        }
        let timeout = self.inner.policy.connect_timeout;
        let connect = async {
            let client = Client::connect(&self.inner.options).await?;
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
        link.current = Some((client, producer.clone()));
        Ok((link.generation, producer))
    }

    /// Drops connection `generation` if it is still the current one.
    async fn forget(&self, generation: u64) {
        let mut link = self.inner.link.lock().await;
        if link.generation == generation {
            if let Some((client, _)) = link.current.take() {
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
