//! The entries of a topic group's log.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A change to a replicated topic, proposed by its leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicCommand {
    /// `count` messages stored at offsets `first..first + count`, as the log's own framed
    /// records (each checked by its CRC when applied).
    Append {
        first: u64,
        count: u32,
        frames: Vec<u8>,
    },
    /// State events of a channel (created with no events), in the journal's encoding.
    Channel {
        name: String,
        events: Vec<u8>,
    },
    DeleteChannel {
        name: String,
    },
    /// The topic's metadata: its incarnation (the high half of message ids) and pause.
    Meta {
        incarnation: u64,
        paused: bool,
    },
    /// Every message below `offset` is settled everywhere: the replicas drop them.
    Trim {
        offset: u64,
    },
}

impl fmt::Display for TopicCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicCommand::Append { first, count, .. } => {
                write!(f, "append {count} at {first}")
            }
            TopicCommand::Channel { name, events } => {
                write!(f, "channel {name}: {} bytes of events", events.len())
            }
            TopicCommand::DeleteChannel { name } => write!(f, "delete channel {name}"),
            TopicCommand::Meta {
                incarnation,
                paused,
            } => write!(f, "meta incarnation {incarnation:x} paused {paused}"),
            TopicCommand::Trim { offset } => write!(f, "trim below {offset}"),
        }
    }
}

/// What applying an entry gave: the local log's end after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicReply {
    pub end: u64,
}
