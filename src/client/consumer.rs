//! A consumer that runs a handler per message: concurrency limit, RDY from max-in-flight,
//! optional auto-TOUCH, REQ with exponential backoff on failure, a client-side attempt limit
//! past which the message goes to `<topic>.dead`, and a graceful close that FINs or REQs
//! everything it holds.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Acker, Client, ClientError, SubEvent, SubscribeOptions};
use crate::message::{ChannelName, Delivery, NewMessage, TopicName};

/// How a consumer behaves. Defaults suit handlers that take milliseconds.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Messages in flight at once (sent as RDY).
    pub max_in_flight: u32,
    /// Handlers running at once.
    pub concurrency: usize,
    /// Per-message deadline; `None` takes the broker's (60 s by default).
    pub msg_timeout: Option<Duration>,
    /// TOUCH each message every half timeout while its handler runs.
    pub auto_touch: bool,
    /// After this many attempts the message is copied to `<topic>.dead` and FIN'd; 0 means
    /// never give up (the channel's own max attempts still applies).
    pub max_attempts: u16,
    /// REQ delay after the first failure; doubled per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_in_flight: 100,
            concurrency: 8,
            msg_timeout: None,
            auto_touch: false,
            max_attempts: 0,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl ConsumerConfig {
    /// The REQ delay after a failed attempt number `attempts` (1-based).
    pub fn backoff(&self, attempts: u16) -> Duration {
        let doublings = u32::from(attempts.saturating_sub(1)).min(20);
        self.backoff_base
            .saturating_mul(1 << doublings)
            .min(self.backoff_max)
    }
}

/// What a consumer did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerSummary {
    pub finished: u64,
    pub requeued: u64,
    pub gave_up: u64,
}

/// Consumes `topic`/`channel` with `handler` until `stop` fires or the broker ends the stream,
/// then closes gracefully.
pub async fn run<H, F, E>(
    client: &Client,
    topic: &TopicName,
    channel: &ChannelName,
    config: ConsumerConfig,
    handler: H,
    stop: CancellationToken,
) -> Result<ConsumerSummary, ClientError>
where
    H: Fn(Delivery) -> F + Send + Sync + 'static,
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let options = SubscribeOptions {
        msg_timeout: config.msg_timeout,
    };
    let mut sub = client.subscribe(topic, channel, options).await?;
    sub.rdy(config.max_in_flight).await?;
    let handler = Arc::new(handler);
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut running: JoinSet<Outcome> = JoinSet::new();
    let mut summary = ConsumerSummary::default();
    let dead_letter = DeadLetter::new(client.clone(), topic.dead_letter());
    let mut ended_by_broker = None;
    // A message received when the stop came while it waited for a handler slot.
    let mut unstarted = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = running.join_next() => summary.add(done.unwrap_or(Outcome::Requeued)),
            event = sub.next_event() => match event {
                Some(SubEvent::Message(d)) => {
                    if config.max_attempts > 0 && d.attempts > config.max_attempts {
                        summary.add(dead_letter.give_up(&sub.acker(), d, channel).await);
                        continue;
                    }
                    // Wait for a free handler slot, but not past a stop: the message is then
                    // given back with the others that were not started, after CLS (so that
                    // it is not delivered here again).
                    let permit = tokio::select! {
                        permit = permits.clone().acquire_owned() => permit,
                        _ = stop.cancelled() => {
                            unstarted = Some(d.id);
                            break;
                        }
                    };
                    let (handler, config, acker) = (handler.clone(), config.clone(), sub.acker());
                    running.spawn(async move {
                        let outcome = handle(&*handler, d, &config, &acker).await;
                        drop(permit);
                        outcome
                    });
                }
                Some(SubEvent::Error(e)) if e.fatal => {
                    ended_by_broker = Some(ClientError::Broker(e));
                    break;
                }
                Some(SubEvent::Error(e)) => tracing::warn!(error = %e, "broker refused a command"),
                Some(SubEvent::Closed) | None => {
                    ended_by_broker = Some(ClientError::Closed);
                    break;
                }
            },
        }
    }
    if ended_by_broker.is_none() {
        // Graceful close: stop deliveries, let running handlers settle their messages, and
        // give back anything that arrives meanwhile.
        sub.cls().await?;
        if let Some(id) = unstarted {
            sub.req(id, Duration::ZERO).await?;
            summary.requeued += 1;
        }
        loop {
            tokio::select! {
                Some(done) = running.join_next() => summary.add(done.unwrap_or(Outcome::Requeued)),
                event = sub.next_event() => match event {
                    Some(SubEvent::Message(d)) => {
                        sub.req(d.id, Duration::ZERO).await?;
                        summary.requeued += 1;
                    }
                    Some(SubEvent::Error(e)) if !e.fatal => tracing::warn!(error = %e, "broker refused a command"),
                    _ => break,
                },
            }
        }
    }
    while let Some(done) = running.join_next().await {
        summary.add(done.unwrap_or(Outcome::Requeued));
    }
    match ended_by_broker {
        Some(ClientError::Closed) | None => Ok(summary),
        Some(e) => Err(e),
    }
}

enum Outcome {
    Finished,
    Requeued,
    GaveUp,
}

impl ConsumerSummary {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Finished => self.finished += 1,
            Outcome::Requeued => self.requeued += 1,
            Outcome::GaveUp => self.gave_up += 1,
        }
    }
}

async fn handle<H, F, E>(
    handler: &H,
    d: Delivery,
    config: &ConsumerConfig,
    acker: &Acker,
) -> Outcome
where
    H: Fn(Delivery) -> F,
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let (id, attempts) = (d.id, d.attempts);
    let toucher = config.auto_touch.then(|| {
        let every = config.msg_timeout.unwrap_or(Duration::from_secs(60)) / 2;
        let acker = acker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if acker.touch(id).await.is_err() {
                    return;
                }
            }
        })
    });
    let result = handler(d).await;
    if let Some(toucher) = toucher {
        toucher.abort();
    }
    match result {
        Ok(()) => {
            let _ = acker.fin(id).await;
            Outcome::Finished
        }
        Err(e) => {
            let delay = config.backoff(attempts);
            tracing::debug!(%id, attempts, ?delay, error = %e, "handler failed; requeueing");
            let _ = acker.req(id, delay).await;
            Outcome::Requeued
        }
    }
}

/// Copies messages that used up the consumer's attempts to the dead-letter topic, then FINs
/// them. If the copy fails the message is requeued instead, so nothing is lost.
struct DeadLetter {
    client: Client,
    topic: TopicName,
    producer: tokio::sync::OnceCell<super::Producer>,
}

impl DeadLetter {
    fn new(client: Client, topic: TopicName) -> Self {
        DeadLetter {
            client,
            topic,
            producer: tokio::sync::OnceCell::new(),
        }
    }

    async fn give_up(&self, acker: &Acker, d: Delivery, channel: &ChannelName) -> Outcome {
        let mut message = NewMessage {
            headers: d.headers,
            body: d.body,
        };
        message
            .headers
            .push("quiver-dead-reason", "client-max-attempts");
        message
            .headers
            .push("quiver-dead-channel", channel.as_str());
        message
            .headers
            .push("quiver-dead-attempts", d.attempts.to_string());
        let copied = match self
            .producer
            .get_or_try_init(|| self.client.producer())
            .await
        {
            Ok(producer) => producer.publish(&self.topic, message).await,
            Err(e) => Err(e),
        };
        match copied {
            Ok(_) => {
                let _ = acker.fin(d.id).await;
                Outcome::GaveUp
            }
            Err(e) => {
                tracing::warn!(id = %d.id, error = %e, "dead-lettering failed; requeueing");
                let _ = acker.req(d.id, Duration::ZERO).await;
                Outcome::Requeued
            }
        }
    }
}
