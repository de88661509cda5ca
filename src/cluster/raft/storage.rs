//! The broker's storage on a cluster node. Durable topics are replicated: the broker opens
//! one only where this node leads it, and gets the redirect otherwise. `#ephemeral` topics
//! stay local to the node, as on a single node.

use std::sync::Arc;

use super::node::ClusterNode;
use crate::message::TopicName;
use crate::storage::{Preparing, Storage, StorageError, TopicLog};

#[derive(Debug)]
pub struct ClusterStorage {
    node: Arc<ClusterNode>,
    local: Arc<dyn Storage>,
}

impl ClusterStorage {
    /// `local` is the node's own storage, which its replicas also use.
    pub fn new(node: Arc<ClusterNode>, local: Arc<dyn Storage>) -> ClusterStorage {
        ClusterStorage { node, local }
    }
}

impl Storage for ClusterStorage {
    fn open_topic(&self, topic: &TopicName) -> Result<Arc<dyn TopicLog>, StorageError> {
        if topic.is_ephemeral() {
            return self.local.open_topic(topic);
        }
        self.node.leader_log(topic)
    }

    fn prepare_topic<'a>(&'a self, topic: &'a TopicName) -> Option<Preparing<'a>> {
        if topic.is_ephemeral() {
            return None;
        }
        Some(Box::pin(self.node.prepare_topic(topic)))
    }

    fn delete_topic(&self, topic: &TopicName) -> Result<(), StorageError> {
        if topic.is_ephemeral() {
            return self.local.delete_topic(topic);
        }
        Err(StorageError::Unavailable {
            topic: topic.to_string(),
            reason: "deleting a replicated topic is not supported yet".into(),
        })
    }

    fn existing_topics(&self) -> Vec<TopicName> {
        // Replicated topics are opened where they are led, when they are first used.
        Vec::new()
    }

    fn close(&self) -> Result<(), StorageError> {
        self.local.close()
    }
}
