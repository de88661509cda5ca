//! A topic group's Raft RPCs: [`PeerRequest::Topic`] calls over the node pair's one peer
//! connection, which every group shares.

use std::sync::Arc;

use openraft::error::{RPCError, ReplicationClosed, StreamingError};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::OptionalSend;
use serde::{Deserialize, Serialize};

use super::machine::Descriptor;
use super::TopicConfig;
use crate::cluster::peer::{PeerClient, PeerEndpoint};
use crate::cluster::raft::network::{group_rpc, PeerRequest};
use crate::cluster::raft::PeerNode;
use crate::cluster::NodeId;

/// One RPC of a topic group.
#[derive(Debug, Serialize, Deserialize)]
pub enum TopicRpc {
    Append(AppendEntriesRequest<TopicConfig>),
    Vote(VoteRequest<TopicConfig>),
    Snapshot {
        vote: VoteOf<TopicConfig>,
        meta: SnapshotMetaOf<TopicConfig>,
        data: Descriptor,
    },
    TransferLeader(TransferLeaderRequest<TopicConfig>),
    /// Messages `from..to` of the local log, up to `max_bytes`, for a replica catching up
    /// from this node's snapshot; answered with a [`FetchReply`](super::catch_up::FetchReply).
    Fetch {
        from: u64,
        to: u64,
        max_bytes: u32,
    },
}

/// Makes a [`TopicClient`] per target node.
#[derive(Debug, Clone)]
pub struct TopicNetwork {
    pub endpoint: Arc<PeerEndpoint>,
    pub topic: String,
}

impl RaftNetworkFactory<TopicConfig> for TopicNetwork {
    type Network = TopicClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> TopicClient {
        TopicClient {
            peer: self.endpoint.client(target, node.peer_addr.clone()),
            topic: self.topic.clone(),
        }
    }
}

/// A topic group's RPCs to one node.
#[derive(Debug)]
pub struct TopicClient {
    peer: PeerClient,
    topic: String,
}

impl TopicClient {
    fn request(&self, rpc: TopicRpc) -> PeerRequest {
        PeerRequest::Topic {
            topic: self.topic.clone(),
            rpc,
        }
    }
}

impl RaftNetworkV2<TopicConfig> for TopicClient {
    type SnapshotData = Descriptor;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TopicConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TopicConfig>, RPCError<TopicConfig>> {
        let request = self.request(TopicRpc::Append(rpc));
        Ok(group_rpc(&self.peer, request, &option).await?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TopicConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TopicConfig>, RPCError<TopicConfig>> {
        let request = self.request(TopicRpc::Vote(rpc));
        Ok(group_rpc(&self.peer, request, &option).await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TopicConfig>,
        snapshot: SnapshotOf<TopicConfig, Descriptor>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TopicConfig>, StreamingError<TopicConfig>> {
        let request = self.request(TopicRpc::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        });
        Ok(group_rpc(&self.peer, request, &option).await?)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TopicConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TopicConfig>, RPCError<TopicConfig>> {
        let request = self.request(TopicRpc::TransferLeader(req));
        Ok(group_rpc(&self.peer, request, &option).await?)
    }
}
