//! A publish the broker has appended (or forwarded to its topic's leader), and its
//! confirmation once durable.

use std::ops::Range;

use super::publish::{Forwarding, Stored};
use super::BrokerError;
use crate::message::TopicName;
use crate::storage::Durable;

/// An appended publish, waiting to be confirmed.
pub struct Published {
    pub(super) topic: TopicName,
    pub(super) range: Range<u64>,
    /// Every append the publish made: to its topic, and to dead-letter and forward targets.
    pub(super) confirms: Vec<(TopicName, Durable)>,
    /// Per message of the request, whether it was a duplicate of one in the topic's dedup
    /// window (and so not stored again); empty when none was.
    pub(super) duplicates: Vec<bool>,
    /// A publish sent to the topic's leader: the leader's answer, which holds its range and
    /// duplicates.
    pub(super) forwarded: Option<Forwarding>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("topic", &self.topic)
            .field("range", &self.range)
            .field("duplicates", &self.duplicates)
            .field("forwarded", &self.forwarded.is_some())
            .finish_non_exhaustive()
    }
}

impl Published {
    /// A publish forwarded to the leader of `topic`.
    pub(super) fn forwarded(topic: TopicName, forwarding: Forwarding) -> Published {
        Published {
            topic,
            range: 0..0,
            confirms: Vec::new(),
            duplicates: Vec::new(),
            forwarded: Some(forwarding),
        }
    }

    /// Per message of the request, in order, whether it was a duplicate of a message the
    /// topic's dedup window holds, or of an earlier message of the same request, and so was
    /// not stored again. Empty when none was. A forwarded publish learns this only with its
    /// confirmation ([`Published::confirmed_marked`]).
    pub fn duplicates(&self) -> &[bool] {
        &self.duplicates
    }

    /// Takes the duplicate marks out (see [`Published::duplicates`]) before awaiting.
    pub fn take_duplicates(&mut self) -> Vec<bool> {
        std::mem::take(&mut self.duplicates)
    }

    /// Resolves with the offsets in the topic once the messages, and every copy the router
    /// made of them, are as durable as the fsync policy promises; duplicates, once the
    /// messages they duplicate are. The range is empty when the router kept none of them in
    /// the topic itself, or all were duplicates. A forwarded publish resolves with the
    /// leader's answer, the range in the leader's log.
    pub async fn confirmed(self) -> Result<Range<u64>, BrokerError> {
        self.confirmed_marked().await.map(|(range, _)| range)
    }

    /// [`Published::confirmed`], with the duplicate marks (those not taken out yet).
    pub async fn confirmed_marked(self) -> Result<Stored, BrokerError> {
        if let Some(forwarding) = self.forwarded {
            return forwarding.await;
        }
        for (topic, durable) in self.confirms {
            durable
                .await
                .map_err(|source| BrokerError::Storage { topic, source })?;
        }
        Ok((self.range, self.duplicates))
    }
}
