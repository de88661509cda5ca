//! Where messages live: one append-only log per topic, shared by all of the topic's channels.
//!
//! The broker sees storage only through [`Storage`] and [`TopicLog`]. Channels keep their own
//! cursor and in-flight state and read messages from the log by offset, so a message is stored
//! once however many channels deliver it.
//!
//! # Durability contract
//! - When [`TopicLog::append`] returns `Ok(range)`, the messages are readable at those offsets
//!   by every later [`TopicLog::read`].
//! - When the future from [`TopicLog::durable`] for that range resolves `Ok`, they are as
//!   durable as the log promises (its fsync policy). The broker sends PUB-OK only then.
//! - [`MemoryStorage`] promises nothing across a restart: its `durable` resolves at once.
//! - Offsets are dense and increase by one per message. [`TopicLog::trim`] only drops whole
//!   prefixes that every channel has settled; reads below [`TopicLog::start`] return nothing.

mod memory;

pub use memory::MemoryStorage;

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use crate::message::{StoredMessage, TopicName};

/// A storage failure, with what was being done when it happened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("topic {topic}: {op} failed")]
    Io {
        topic: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Resolves when an appended range is durable.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send>>;

/// A backend that opens topic logs.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Opens the log of `topic`, creating it empty if it doesn't exist.
    fn open_topic(&self, topic: &TopicName) -> Result<Arc<dyn TopicLog>, StorageError>;
    /// Removes a topic's log and everything in it.
    fn delete_topic(&self, topic: &TopicName) -> Result<(), StorageError>;
}

/// One topic's append-only log.
pub trait TopicLog: Send + Sync + std::fmt::Debug + 'static {
    /// Appends `messages` atomically (all or none) and returns their offsets.
    fn append(&self, messages: Vec<StoredMessage>) -> Result<Range<u64>, StorageError>;
    /// Resolves once everything below `end` is durable per this log's policy.
    fn durable(&self, end: u64) -> Durable;
    /// Up to `max` messages from `from` onward, in offset order, appended to `out`.
    fn read(&self, from: u64, max: usize, out: &mut Vec<(u64, Arc<StoredMessage>)>);
    /// The message at `offset`, if it is still retained.
    fn get(&self, offset: u64) -> Option<Arc<StoredMessage>>;
    /// Offset of the oldest retained message.
    fn start(&self) -> u64;
    /// Offset the next append gets.
    fn end(&self) -> u64;
    /// Drops every message below `offset` (never past `end`).
    fn trim(&self, offset: u64);
    /// Bytes retained, for stats.
    fn retained_bytes(&self) -> u64;
}
