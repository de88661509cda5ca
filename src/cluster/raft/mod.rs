//! The cluster's Raft groups on openraft: the meta group, which holds the members and the
//! placement of every durable topic, and one group per durable topic.
//!
//! - [`log_store`]: the group's log on disk.
//! - [`meta`]: the meta group's commands and state machine.
//! - [`network`]: Raft RPCs over the peer endpoint.
//! - [`node`]: a node's groups, the handler of peer calls, bootstrap, proposals, status.
//! - [`topic`]: replicated topics, one group each.
//! - [`storage`]: the broker's storage on a cluster node: replicated topics where it leads.

use serde::{Deserialize, Serialize};

pub mod log_store;
pub mod meta;
pub mod network;
pub mod node;
pub mod storage;
pub mod topic;

/// What the meta group knows of a member: where its peers reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub peer_addr: String,
}

openraft::declare_raft_types!(
    /// The meta group's types. Standard Raft leader ids: one leader per term.
    pub MetaConfig:
        D = meta::MetaCommand,
        R = meta::MetaReply,
        NodeId = u64,
        Node = PeerNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

/// The meta group's Raft.
pub type MetaRaft = openraft::Raft<MetaConfig, meta::MetaMachine>;
