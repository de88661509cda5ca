//! A publish the broker has appended, and its confirmation once durable.

use std::ops::Range;

use super::BrokerError;
use crate::message::TopicName;
use crate::storage::Durable;

/// An appended publish, waiting to be confirmed.
pub struct Published {
    pub(super) topic: TopicName,
    pub(super) range: Range<u64>,
    /// Every append the publish made: to its topic, and to dead-letter and forward targets.
    pub(super) confirms: Vec<(TopicName, Durable)>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("topic", &self.topic)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl Published {
    /// Resolves with the offsets in the topic once the messages, and every copy the router
    /// made of them, are as durable as the fsync policy promises. The range is empty when the
    /// router kept none of them in the topic itself.
    pub async fn confirmed(self) -> Result<Range<u64>, BrokerError> {
        for (topic, durable) in self.confirms {
            durable
                .await
                .map_err(|source| BrokerError::Storage { topic, source })?;
        }
        Ok(self.range)
    }
}
