//! Where topics are served: on a cluster node the storage opens a durable topic only where
//! the node leads it, so publishes and subscriptions first wait for (or are redirected to)
//! the topic's leader, and a topic whose leadership moved away is let go.

use std::sync::Arc;

use super::*;

impl Broker {
    /// [`Broker::subscribe`] once the topic can be opened here (see [`Broker::prepare`]).
    pub async fn subscribe_when_ready(
        &self,
        who: &Arc<Principal>,
        topic: &TopicName,
        channel: &ChannelName,
        msg_timeout: Option<Duration>,
    ) -> Result<Subscription, BrokerError> {
        self.authorize(who, Operation::Subscribe(topic, channel))?;
        self.prepare(topic).await?;
        self.subscribe(who, topic, channel, msg_timeout)
    }

    /// Adds a consumer to `channel` of `topic`, creating both if needed. Credit starts at 0.
    pub fn subscribe(
        &self,
        who: &Arc<Principal>,
        topic: &TopicName,
        channel: &ChannelName,
        msg_timeout: Option<Duration>,
    ) -> Result<Subscription, BrokerError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        self.authorize(who, Operation::Subscribe(topic, channel))?;
        let config = self.config();
        if let Some(timeout) = msg_timeout {
            check_range(
                Limit::MsgTimeout,
                timeout,
                MIN_MSG_TIMEOUT,
                config.max_msg_timeout,
            )?;
        }
        let topic = self.topic(topic)?;
        let id = self.shared.next_consumer.fetch_add(1, Ordering::Relaxed);
        let labels = (who.remote().to_owned(), who.identity().to_owned());
        let channel = topic.join(channel, id, msg_timeout, labels, self)?;
        let sub = Subscription::new(self.clone(), topic, channel, id);
        if self.checks_access() {
            self.subscribers()
                .insert(id, sub.revocable(Arc::clone(who)));
        }
        Ok(sub)
    }

    /// Waits until `topic` can be opened on this broker, when its storage needs that (a
    /// cluster creates the topic through its meta group and waits for its leader); the
    /// error says where the topic is served instead. Free for local storage.
    pub async fn prepare(&self, topic: &TopicName) -> Result<(), BrokerError> {
        if self.topics().contains_key(topic) {
            return Ok(());
        }
        match self.shared.storage.prepare_topic(topic) {
            Some(ready) => ready.await.map_err(|source| BrokerError::Storage {
                topic: topic.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Where `topic` is served: `None` for here, else (in a cluster) its leader. Creates the
    /// topic if it does not exist, as a publish or a subscription would; asks for the
    /// permission to subscribe to `channel`, or without one to publish.
    pub async fn locate(
        &self,
        who: &Principal,
        topic: &TopicName,
        channel: Option<&ChannelName>,
    ) -> Result<Option<crate::storage::LeaderHint>, BrokerError> {
        if self.is_shutting_down() {
            return Err(BrokerError::ShuttingDown);
        }
        match channel {
            Some(channel) => self.authorize(who, Operation::Subscribe(topic, channel))?,
            None => self.authorize(who, Operation::Publish(topic))?,
        }
        match self.prepare(topic).await {
            Ok(()) => Ok(None),
            Err(BrokerError::Storage {
                source: StorageError::NotLeader { leader, .. },
                ..
            }) => Ok(Some(leader)),
            Err(e) => Err(e),
        }
    }

    /// Lets a topic go without deleting it: its storage is served elsewhere now (a cluster
    /// node that stopped leading it). Its consumers' streams end with a retriable
    /// `Unavailable` (not `NotFound`); they subscribe again where it is served.
    pub fn release_topic(&self, name: &TopicName) {
        if let Some(topic) = self.topics().remove(name) {
            topic.release();
            tracing::info!(topic = %name, "topic released: served by another node now");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_released_topic_ends_its_subscriptions_as_retriable_not_deleted() {
        let broker = Broker::new(
            BrokerConfig::default(),
            Arc::new(crate::storage::MemoryStorage),
        );
        let who = Arc::new(Principal::internal());
        let (t, c) = (TopicName::new("t").unwrap(), ChannelName::new("c").unwrap());
        let released = broker.subscribe(&who, &t, &c, None).unwrap();
        broker.release_topic(&t);
        released.ended().await;
        assert_eq!(released.end_reason().kind(), ErrorKind::Unavailable);
        // A deleted one is gone.
        let deleted = broker.subscribe(&who, &t, &c, None).unwrap();
        broker.delete_topic(&who, &t).unwrap();
        deleted.ended().await;
        assert_eq!(deleted.end_reason().kind(), ErrorKind::NotFound);
    }
}
