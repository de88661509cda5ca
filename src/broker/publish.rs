//! The publish path's entry: a publish's checks, then its append to the topic here; or, on
//! a cluster node that does not lead the topic and for the entry points that forward (NSQ
//! TCP and both HTTP APIs, through [`Broker::append_anywhere`]), its forward to the topic's
//! leader through the [`Forward`] hook. QUIC clients are redirected instead: they follow
//! `E_NOT_LEADER` themselves.
//!
//! # Invariants
//! - A publish is forwarded only when this node found, before appending anything, that
//!   another node leads its topic, and only after its checks here (permission, delay, ids).
//! - Publishes are handed to the hook in call order, and the hook keeps that order, so a
//!   connection's publishes are stored in the order it sent them, forwarded or not.
//! - The leader does not forward again: a forwarded publish that finds another leader there
//!   is refused with `NotLeader`, which the hook follows (a bounded number of times).

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::time::Duration;

use super::*;
use crate::storage::LeaderHint;

/// A publish's outcome on the leader: its offsets in the leader's log and, per message, whether
/// it was a duplicate (see [`Published::duplicates`]).
pub type Stored = (Range<u64>, Vec<bool>);

/// A forwarded publish, resolving once the leader confirmed it (or refused it).
pub type Forwarding = Pin<Box<dyn Future<Output = Result<Stored, BrokerError>> + Send>>;

/// Sends publishes to the node that leads their topic. Installed by a cluster node.
pub trait Forward: Send + Sync + fmt::Debug {
    /// Queues `messages` for `topic`'s leader (`leader` is where this node last heard it
    /// is) before it returns, so that publishes forwarded in call order are stored in that
    /// order. The future resolves with the leader's answer once the leader confirmed the
    /// publish as a local one would be, within a bounded time: a leader that does not
    /// answer gives a retriable [`ErrorKind::Unavailable`].
    fn forward(
        &self,
        topic: &TopicName,
        leader: &LeaderHint,
        messages: Vec<NewMessage>,
        delay: Duration,
    ) -> Forwarding;
}

impl Broker {
    /// Installs the hook that forwards publishes to other nodes. Once per broker, before
    /// serving; returns false if one was set already.
    pub fn set_forward(&self, forward: Arc<dyn Forward>) -> bool {
        self.shared.forward.set(forward).is_ok()
    }

    /// Stores `messages` on `topic` (created on first use), atomically, and resolves once
    /// they are as durable as the storage promises. A non-zero `delay` is a DPUB.
    pub async fn publish(
        &self,
        who: &Principal,
        topic: &TopicName,
        messages: Vec<NewMessage>,
        delay: Duration,
    ) -> Result<Range<u64>, BrokerError> {
        self.append(who, topic, messages, delay)
            .await?
            .confirmed()
            .await
    }

    /// [`Broker::publish`], also telling which messages were duplicates of ones in the
    /// topic's dedup window (see [`Published::duplicates`]).
    pub async fn publish_marked(
        &self,
        who: &Principal,
        topic: &TopicName,
        messages: Vec<NewMessage>,
        delay: Duration,
    ) -> Result<Stored, BrokerError> {
        self.append(who, topic, messages, delay)
            .await?
            .confirmed_marked()
            .await
    }

    /// The first half of [`Broker::publish`]: appends, in call order, and returns the
    /// confirmation to await. Several confirmations can be awaited together, so that
    /// pipelined publishes share one fsync. It waits only for a topic's router (on the
    /// plugin pool); without one it appends at once. On a cluster node that does not lead
    /// the topic it is refused with the redirect (`NotLeader`).
    pub async fn append(
        &self,
        who: &Principal,
        topic: &TopicName,
        messages: Vec<NewMessage>,
        delay: Duration,
    ) -> Result<Published, BrokerError> {
        self.check_publish(who, topic, &messages, delay)?;
        self.prepare(topic).await?;
        self.append_here(topic, messages, delay).await
    }

    /// [`Broker::append`], except that a publish to a topic another node leads is
    /// forwarded to it (when a [`Forward`] hook is installed) instead of refused: its
    /// confirmation is the leader's.
    pub async fn append_anywhere(
        &self,
        who: &Principal,
        topic: &TopicName,
        messages: Vec<NewMessage>,
        delay: Duration,
    ) -> Result<Published, BrokerError> {
        self.check_publish(who, topic, &messages, delay)?;
        match (self.prepare(topic).await, self.shared.forward.get()) {
            (Ok(()), _) => self.append_here(topic, messages, delay).await,
            (
                Err(BrokerError::Storage {
                    source: StorageError::NotLeader { leader, .. },
                    ..
                }),
                Some(forward),
            ) => {
                let forwarding = forward.forward(topic, &leader, messages, delay);
                Ok(Published::forwarded(topic.clone(), forwarding))
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Serves publishes another node forwarded to this one, its topic's leader: appends
    /// them in order, then answers each once confirmed. The sending node authorized its
    /// client, so they are published as the node, unchecked; a topic this node does not
    /// lead (any more) refuses them with the redirect, which the sender follows.
    pub async fn publish_forwarded(
        &self,
        from: u64,
        topic: &TopicName,
        batch: Vec<(Vec<NewMessage>, Duration)>,
    ) -> Vec<Result<Stored, BrokerError>> {
        let node = format!("node {from}");
        let who = Principal::new(node.clone(), AuthMethod::Internal, node);
        let mut appended = Vec::with_capacity(batch.len());
        for (messages, delay) in batch {
            appended.push(self.append(&who, topic, messages, delay).await);
        }
        let mut answers = Vec::with_capacity(appended.len());
        for published in appended {
            answers.push(match published {
                Ok(published) => published.confirmed_marked().await,
                Err(e) => Err(e),
            });
        }
        answers
    }

    /// What every publish is checked for before it is stored or forwarded.
    fn check_publish(
        &self,
        who: &Principal,
        topic: &TopicName,
        messages: &[NewMessage],
        delay: Duration,
    ) -> Result<(), BrokerError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        self.authorize(who, Operation::Publish(topic))?;
        check_range(
            Limit::DpubDelay,
            delay,
            Duration::ZERO,
            self.config().max_defer,
        )?;
        check_msg_ids(messages)
    }

    /// Appends to `topic`, which this node serves.
    async fn append_here(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
        delay: Duration,
    ) -> Result<Published, BrokerError> {
        let topic = self.topic(topic)?;
        let mut confirms = Vec::new();
        let mut screen = dedup::Screen::new(messages.len());
        let range = self
            .route_and_append(
                &topic,
                stamp(messages, delay),
                Some(&mut screen),
                &mut Vec::new(),
                &mut confirms,
            )
            .await?;
        // A duplicate is confirmed once its original is as durable as the policy promises.
        if let Some(original) = screen.original {
            confirms.push((topic.name.clone(), topic.log.durable(original + 1)));
        }
        Ok(Published {
            topic: topic.name.clone(),
            range,
            confirms,
            duplicates: screen.duplicates,
            forwarded: None,
        })
    }
}
