//! Replicated topics: every durable topic of a cluster is its own Raft group over the
//! replicas the meta group placed it on.
//!
//! The group's Raft log (a [`FileLogStore`](super::log_store::FileLogStore) per topic) holds
//! what the topic's leader proposes: message batches (one client publish, one entry, so it
//! stays atomic), the channel state events its journal would write, trims and the topic's
//! metadata. The state machine ([`machine`]) is the topic's ordinary segment log and channel
//! journals on each replica: applying an entry appends the batch at the offsets the leader
//! gave it, or records the events, exactly as a single node stores them.
//!
//! - [`command`]: what an entry holds.
//! - [`machine`]: applying entries to the local log and channel stores; snapshots.
//! - [`group`]: one topic's Raft, its leadership, and the proposals of its leader.
//! - [`log`]: the leader's [`TopicLog`](crate::storage::TopicLog) and
//!   [`ChannelStore`](crate::storage::ChannelStore), through which the broker core uses the
//!   group without knowing it is replicated.
//! - [`network`]: the group's RPCs over the peer endpoint.
//! - [`catch_up`]: a replica that lacks what a snapshot covers fetches it from the sender.

pub mod catch_up;
pub mod command;
pub mod group;
pub mod log;
pub mod machine;
pub mod network;

use super::PeerNode;

openraft::declare_raft_types!(
    /// A topic group's types. Standard Raft leader ids: one leader per term.
    pub TopicConfig:
        D = command::TopicCommand,
        R = command::TopicReply,
        NodeId = u64,
        Node = PeerNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

/// A topic group's Raft.
pub type TopicRaft = openraft::Raft<TopicConfig, machine::TopicMachine>;
