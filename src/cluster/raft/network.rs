//! Raft RPCs between nodes: each is one [`PeerClient::call`], its request and answer encoded
//! with postcard. Every group's RPCs share the one connection per node pair that the peer
//! endpoint keeps; concurrent calls are concurrent streams on it, so a slow snapshot does
//! not hold up heartbeats.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::{OptionalSend, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::meta::MetaCommand;
use super::{MetaConfig, PeerNode};
use crate::cluster::peer::{PeerClient, PeerEndpoint};
use crate::cluster::{NodeId, PeerError};

/// What one node asks of another.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    MetaAppend(AppendEntriesRequest<MetaConfig>),
    MetaVote(VoteRequest<MetaConfig>),
    MetaSnapshot {
        vote: VoteOf<MetaConfig>,
        meta: SnapshotMetaOf<MetaConfig>,
        data: Vec<u8>,
    },
    MetaTransferLeader(TransferLeaderRequest<MetaConfig>),
    /// A change to the metadata, sent to the meta group's leader by another node.
    MetaPropose(MetaCommand),
    /// A node asks to become a member: sent to any member, which passes it to the leader.
    Join {
        id: NodeId,
        node: PeerNode,
    },
    /// A change of the meta group's members, for its leader.
    MetaMembers(super::node::MembersChange),
    /// A topic group's RPC, for its replica on the node called.
    Topic {
        topic: String,
        rpc: super::topic::network::TopicRpc,
    },
    /// Publishes a node forwards to the leader of their topic, for the NSQ TCP and HTTP
    /// clients it serves; answered per publish once each is committed, or refused.
    Publish {
        topic: String,
        publishes: Vec<super::node::ForwardedPublish>,
    },
}

pub fn encode<T: Serialize>(value: &T) -> Result<Bytes, String> {
    postcard::to_stdvec(value)
        .map(Bytes::from)
        .map_err(|e| format!("cannot encode a peer message: {e}"))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("malformed peer message: {e}"))
}

/// Sends `request` to a node and decodes its answer, a `Result<T, String>`.
pub async fn call<T: DeserializeOwned>(
    client: &PeerClient,
    request: &PeerRequest,
    timeout: Duration,
) -> Result<Result<T, String>, PeerError> {
    let bytes = encode(request).map_err(|reason| PeerError::Remote {
        node: client.node(),
        reason,
    })?;
    let answer = client.call(bytes, timeout).await?;
    decode::<Result<T, String>>(&answer).map_err(|reason| PeerError::Remote {
        node: client.node(),
        reason,
    })
}

/// Makes a [`MetaClient`] per target node.
#[derive(Debug, Clone)]
pub struct MetaNetwork {
    pub endpoint: Arc<PeerEndpoint>,
}

impl RaftNetworkFactory<MetaConfig> for MetaNetwork {
    type Network = MetaClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> MetaClient {
        MetaClient {
            peer: self.endpoint.client(target, node.peer_addr.clone()),
        }
    }
}

/// The meta group's RPCs to one node.
#[derive(Debug)]
pub struct MetaClient {
    peer: PeerClient,
}

/// An error string from the remote node's Raft.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RemoteRaftError(pub String);

/// Why an RPC failed, as openraft tells its kinds apart: a node not reachable (now) is
/// retried with a backoff, anything else is a network error.
pub(super) enum Failure<C: RaftTypeConfig> {
    Unreachable(Unreachable<C>),
    Network(NetworkError<C>),
}

impl<C: RaftTypeConfig> From<Failure<C>> for RPCError<C> {
    fn from(f: Failure<C>) -> Self {
        match f {
            Failure::Unreachable(e) => RPCError::Unreachable(e),
            Failure::Network(e) => RPCError::Network(e),
        }
    }
}

impl<C: RaftTypeConfig> From<Failure<C>> for StreamingError<C> {
    fn from(f: Failure<C>) -> Self {
        match f {
            Failure::Unreachable(e) => StreamingError::Unreachable(e),
            Failure::Network(e) => StreamingError::Network(e),
        }
    }
}

/// One RPC of a group to a node: its answer, or why there is none.
pub(super) async fn group_rpc<C: RaftTypeConfig, T: DeserializeOwned>(
    peer: &PeerClient,
    request: PeerRequest,
    option: &RPCOption,
) -> Result<T, Failure<C>> {
    {
        match call::<T>(peer, &request, option.hard_ttl()).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(reason)) if reason == super::node::STARTING => Err(Failure::Unreachable(
                Unreachable::new(&RemoteRaftError(reason)),
            )),
            Ok(Err(reason)) => Err(Failure::Network(NetworkError::new(&RemoteRaftError(
                reason,
            )))),
            Err(e @ (PeerError::Remote { .. } | PeerError::TooLarge { .. })) => {
                Err(Failure::Network(NetworkError::new(&e)))
            }
            Err(e) => Err(Failure::Unreachable(Unreachable::new(&e))),
        }
    }
}

impl RaftNetworkV2<MetaConfig> for MetaClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MetaConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<MetaConfig>, RPCError<MetaConfig>> {
        Ok(group_rpc(&self.peer, PeerRequest::MetaAppend(rpc), &option).await?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MetaConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<MetaConfig>, RPCError<MetaConfig>> {
        Ok(group_rpc(&self.peer, PeerRequest::MetaVote(rpc), &option).await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<MetaConfig>,
        snapshot: SnapshotOf<MetaConfig, Vec<u8>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<MetaConfig>, StreamingError<MetaConfig>> {
        let request = PeerRequest::MetaSnapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        Ok(group_rpc(&self.peer, request, &option).await?)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<MetaConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<MetaConfig>, RPCError<MetaConfig>> {
        Ok(group_rpc(&self.peer, PeerRequest::MetaTransferLeader(req), &option).await?)
    }
}
