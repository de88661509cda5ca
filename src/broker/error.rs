//! Why the broker refuses a call, as a typed kind that each entry point maps through one table.

use std::fmt;
use std::time::Duration;

use super::delivery;
use crate::message::{ChannelName, MessageId, TopicName};
use crate::storage::StorageError;

/// Why the broker refused a call. Entry points map it to their own codes by
/// [`BrokerError::kind`], never by its text.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("topic {0} does not exist")]
    TopicNotFound(TopicName),
    #[error("channel {channel} of topic {topic} does not exist")]
    ChannelNotFound {
        topic: TopicName,
        channel: ChannelName,
    },
    #[error("could not store the publish to {topic}")]
    Storage {
        topic: TopicName,
        #[source]
        source: StorageError,
    },
    #[error("{limit} of {value:?} is out of range ({min:?} to {max:?})")]
    OutOfRange {
        limit: Limit,
        value: Duration,
        min: Duration,
        max: Duration,
    },
    #[error("RDY {rdy} is over the maximum of {max}")]
    RdyTooHigh { rdy: u32, max: u32 },
    #[error("{op} {id}: {source}")]
    Settle {
        op: SettleOp,
        id: MessageId,
        #[source]
        source: delivery::SettleError,
    },
    #[error("bad message")]
    BadMessage(#[source] crate::message::InvalidInput),
    #[error("the topic or channel was deleted")]
    Deleted,
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("publish to {topic} refused: {reason}")]
    Unrouted { topic: TopicName, reason: String },
    #[error("{identity} may not {operation}{}", if *anonymous { " (no credentials were presented)" } else { "" })]
    Denied {
        identity: String,
        operation: String,
        /// The caller presented no credentials: asking again with some may succeed.
        anonymous: bool,
    },
    /// A publish this node forwarded to its topic's leader failed there, or on the way:
    /// `kind` is what the leader's refusal was (or [`ErrorKind::Unavailable`] when the
    /// leader did not answer in time), so that entry points answer as for a local publish.
    #[error("the publish to {topic} was forwarded to its leader, node {leader}: {reason}")]
    Forwarded {
        topic: TopicName,
        leader: u64,
        kind: ErrorKind,
        reason: String,
    },
}

/// A bounded duration a caller chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    DpubDelay,
    ReqDelay,
    MsgTimeout,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::DpubDelay => "DPUB delay",
            Limit::ReqDelay => "REQ delay",
            Limit::MsgTimeout => "message timeout",
        })
    }
}

/// The consumer command that settles (or touches) a message in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleOp {
    Fin,
    Req,
    Touch,
}

impl fmt::Display for SettleOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SettleOp::Fin => "FIN",
            SettleOp::Req => "REQ",
            SettleOp::Touch => "TOUCH",
        })
    }
}

/// What kind of refusal a [`BrokerError`] is: the one thing entry points map from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The topic or channel named does not exist (or was deleted).
    NotFound,
    /// The storage is out of space; retrying later can succeed.
    DiskFull,
    /// The storage failed otherwise.
    StorageFailed,
    /// A value out of range (RDY, DPUB delay, message timeout).
    Invalid,
    /// A REQ that failed: not in flight, or its delay out of range.
    ReqFailed,
    FinFailed,
    TouchFailed,
    ShuttingDown,
    /// The topic's router refused the publish.
    Unrouted,
    /// No credentials were presented and the anonymous identity lacks the permission.
    Unauthenticated,
    /// The authenticated identity lacks the permission.
    Denied,
    /// In a cluster: another node leads the topic and serves it.
    NotLeader,
    /// In a cluster: the topic has no leader right now; retry shortly.
    Unavailable,
}

impl BrokerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BrokerError::TopicNotFound(_)
            | BrokerError::ChannelNotFound { .. }
            | BrokerError::Deleted => ErrorKind::NotFound,
            BrokerError::Storage { source, .. } if source.is_disk_full() => ErrorKind::DiskFull,
            BrokerError::Storage {
                source: StorageError::NotLeader { .. },
                ..
            } => ErrorKind::NotLeader,
            BrokerError::Storage {
                source: StorageError::Unavailable { .. },
                ..
            } => ErrorKind::Unavailable,
            BrokerError::Storage { .. } => ErrorKind::StorageFailed,
            BrokerError::OutOfRange {
                limit: Limit::ReqDelay,
                ..
            } => ErrorKind::ReqFailed,
            BrokerError::OutOfRange { .. }
            | BrokerError::RdyTooHigh { .. }
            | BrokerError::BadMessage(_) => ErrorKind::Invalid,
            BrokerError::Settle { op, .. } => match op {
                SettleOp::Fin => ErrorKind::FinFailed,
                SettleOp::Req => ErrorKind::ReqFailed,
                SettleOp::Touch => ErrorKind::TouchFailed,
            },
            BrokerError::ShuttingDown => ErrorKind::ShuttingDown,
            BrokerError::Unrouted { .. } => ErrorKind::Unrouted,
            BrokerError::Denied {
                anonymous: true, ..
            } => ErrorKind::Unauthenticated,
            BrokerError::Denied { .. } => ErrorKind::Denied,
            BrokerError::Forwarded { kind, .. } => *kind,
        }
    }
}
