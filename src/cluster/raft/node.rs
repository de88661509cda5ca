//! One node's part in the cluster: its peer endpoint, the meta group's Raft, the handler
//! that serves other nodes' calls, bootstrap, and proposals from anywhere.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use openraft::{Config as RaftConfig, ServerState, SnapshotPolicy};
use serde::Serialize;

use super::log_store::FileLogStore;
use super::meta::{ClientAddrs, MetaCommand, MetaMachine, MetaReply, MetaState};
use super::network::{decode, encode, MetaNetwork, PeerRequest};
use super::topic::group::{OnLost, TopicGroup};
use super::{MetaConfig, MetaRaft, PeerNode};
use crate::cluster::identity::ClusterIdentity;
use crate::cluster::peer::{PeerClient, PeerEndpoint};
use crate::cluster::settings::{Bootstrap, ClusterSettings};
use crate::cluster::{BoxFuture, NodeId, PeerError, PeerHandler};
use crate::storage::{Storage, StorageConfig};

#[path = "node_forward.rs"]
mod forward;
#[path = "node_topics.rs"]
mod topics;
pub use forward::{ForwardedPublish, Forwarder, OnPublish, PublishAnswers, PublishBatch};
pub use topics::TopicStatus;
#[path = "node_members.rs"]
mod members;
pub use members::{MembersChange, Removed};

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known right now (an election is under way): retry shortly.
    #[error("the cluster has no leader right now (an election is under way); retry")]
    NoLeader,
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("the meta group failed: {0}")]
    Raft(String),
    #[error("the cluster did not answer within {0:?}")]
    Timeout(Duration),
    /// The node cannot take part: its endpoint, identity or peers refuse it.
    #[error("cannot start the cluster node: {0}")]
    Start(String),
    /// The change asked for cannot be made (it would break the cluster, or names a member
    /// that does not exist or already does); asking again gives the same answer.
    #[error("refused: {0}")]
    Refused(String),
}

impl ClusterError {
    /// The error a peer's answer stands for.
    fn from_remote(reason: String) -> ClusterError {
        if let Some(why) = reason.strip_prefix(members::REFUSED) {
            return ClusterError::Refused(why.to_string());
        }
        if reason.contains("no leader") {
            return ClusterError::NoLeader;
        }
        ClusterError::Raft(reason)
    }
}

/// Says hello to every other member before anything is written: a peer that refuses this
/// node (another cluster, or its node id already in use by a live node) stops it here, with
/// the peer's reason. Members that do not answer are fine: they may not be up yet.
async fn check_peers(
    endpoint: &PeerEndpoint,
    settings: &ClusterSettings,
) -> Result<(), ClusterError> {
    let Bootstrap::Members(members) = settings.bootstrap() else {
        return Ok(());
    };
    for member in members.iter().filter(|m| m.id != settings.node_id) {
        match endpoint.probe(member.id, &member.addr).await {
            Err(e @ PeerError::Refused { .. }) => return Err(ClusterError::Start(e.to_string())),
            Err(e) => {
                tracing::debug!(node = member.id, error = %e, "member not reachable at start")
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The answer to a call that arrives before the groups exist; the caller treats the node
/// as not reachable yet.
pub const STARTING: &str = "the node is starting";

/// Serves the calls of other nodes once the groups exist.
#[derive(Default)]
struct Handler {
    node: OnceLock<Arc<ClusterNode>>,
}

impl PeerHandler for Handler {
    fn handle(&self, from: NodeId, request: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let node = self.node.get().cloned();
        Box::pin(async move {
            let node = node.ok_or_else(|| STARTING.to_string())?;
            let request: PeerRequest = decode(&request)?;
            node.serve(from, request).await
        })
    }
}

/// A running node's groups.
#[derive(Debug)]
pub struct ClusterNode {
    id: NodeId,
    cluster_id: String,
    endpoint: Arc<PeerEndpoint>,
    raft: MetaRaft,
    machine: MetaMachine,
    leader_changes: Arc<AtomicU64>,
    started: Instant,
    settings: ClusterSettings,
    data_dir: PathBuf,
    /// The node's own storage: the local logs of its replicas.
    local: Arc<dyn Storage>,
    storage_config: StorageConfig,
    clients: ClientAddrs,
    /// This node's replica of each topic placed on it.
    groups: Mutex<HashMap<String, Arc<TopicGroup>>>,
    /// Held while a group is being started, so that it is started once.
    starting: tokio::sync::Mutex<()>,
    /// Held while a replica catches up from a snapshot: one at a time per node.
    catching_up: tokio::sync::Mutex<()>,
    /// Topics whose replicas this node, their leader, is moving now.
    moving: Mutex<std::collections::HashSet<String>>,
    /// Told when this node stops leading a topic, so that the broker lets it go.
    on_lost: OnceLock<OnLost>,
    /// Stores the publishes other nodes forward to this one, where it leads their topic.
    on_publish: OnceLock<OnPublish>,
}

/// Raft timing for the meta group, from the settings.
fn raft_config(settings: &ClusterSettings) -> Result<Arc<RaftConfig>, ClusterError> {
    let heartbeat = settings.heartbeat.as_millis() as u64;
    let election = settings.election_timeout.as_millis() as u64;
    let config = RaftConfig {
        cluster_name: settings.cluster_id.clone(),
        heartbeat_interval: heartbeat,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 100,
        install_snapshot_timeout: 10_000,
        // A node whose data directory was lost comes back with an empty log; its peers
        // replicate to it again instead of stopping.
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| ClusterError::Raft(format!("Raft timing: {e}")))
}

impl ClusterNode {
    /// Binds the peer endpoint and starts the meta group from `data_dir/cluster/meta`. A
    /// pristine node listed in `members` whose id is the lowest of them initialises the
    /// group with them; the others wait to be reached by its leader.
    pub async fn start(
        settings: &ClusterSettings,
        identity: &ClusterIdentity,
        data_dir: &Path,
        local: Arc<dyn Storage>,
        storage_config: StorageConfig,
        clients: ClientAddrs,
    ) -> Result<Arc<ClusterNode>, ClusterError> {
        let handler = Arc::new(Handler::default());
        let endpoint = PeerEndpoint::bind(settings, identity, handler.clone())
            .await
            .map_err(|e| ClusterError::Start(format!("{e:#}")))?;
        let endpoint = Arc::new(endpoint);
        check_peers(&endpoint, settings).await?;
        let dir = data_dir.join("cluster").join("meta");
        let io = |e: std::io::Error| ClusterError::Raft(format!("{}: {e}", dir.display()));
        let log = FileLogStore::<MetaConfig>::open(&dir, true).map_err(io)?;
        let pristine = log.is_pristine();
        let machine = MetaMachine::open(&dir).map_err(io)?;
        let network = MetaNetwork {
            endpoint: endpoint.clone(),
        };
        let raft = MetaRaft::new(
            settings.node_id,
            raft_config(settings)?,
            network,
            log,
            machine.clone(),
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let node = Arc::new(ClusterNode {
            id: settings.node_id,
            cluster_id: settings.cluster_id.clone(),
            endpoint,
            raft,
            machine,
            leader_changes: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            settings: settings.clone(),
            data_dir: data_dir.to_path_buf(),
            local,
            storage_config,
            clients,
            groups: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            catching_up: tokio::sync::Mutex::new(()),
            moving: Mutex::default(),
            on_lost: OnceLock::new(),
            on_publish: OnceLock::new(),
        });
        let _ = handler.node.set(node.clone());
        node.watch_leader();
        node.follow_placements();
        node.advertise();
        let members = match settings.bootstrap() {
            Bootstrap::Members(members) => members,
            Bootstrap::Join(seed) => {
                // A node that has joined before is a member: its peers reach it.
                if pristine {
                    node.join(seed).await?;
                }
                return Ok(node);
            }
        };
        let lowest = members.iter().map(|m| m.id).min();
        if pristine && lowest == Some(settings.node_id) {
            let nodes: BTreeMap<NodeId, PeerNode> = members
                .iter()
                .map(|m| {
                    let peer_addr = match m.id == settings.node_id {
                        true => settings.advertise(),
                        false => m.addr.clone(),
                    };
                    (m.id, PeerNode { peer_addr })
                })
                .collect();
            tracing::info!(members = ?nodes.keys().collect::<Vec<_>>(), "initialising the cluster's meta group");
            node.raft
                .initialize(nodes)
                .await
                .map_err(|e| ClusterError::Raft(format!("initialising the meta group: {e}")))?;
        }
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.endpoint.local_addr()
    }

    /// Counts leader changes, and logs them.
    fn watch_leader(self: &Arc<Self>) {
        let mut metrics = self.raft.metrics();
        let changes = self.leader_changes.clone();
        let id = self.id;
        tokio::spawn(async move {
            let mut leader = None;
            loop {
                let now = metrics.borrow_watched().current_leader;
                if now != leader {
                    if now.is_some() {
                        changes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(node = id, leader = ?now, term = metrics.borrow_watched().current_term, "meta group leader");
                    }
                    leader = now;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Answers another node's call.
    async fn serve(&self, from: NodeId, request: PeerRequest) -> Result<Bytes, String> {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        match request {
            PeerRequest::MetaAppend(rpc) => {
                encode(&self.raft.append_entries(rpc).await.map_err(|e| text(&e)))
            }
            PeerRequest::MetaVote(rpc) => encode(&self.raft.vote(rpc).await.map_err(|e| text(&e))),
            PeerRequest::MetaSnapshot { vote, meta, data } => {
                let snapshot = openraft::type_config::alias::SnapshotOf::<MetaConfig, Vec<u8>> {
                    meta,
                    snapshot: data,
                };
                encode(
                    &self
                        .raft
                        .install_full_snapshot(vote, snapshot)
                        .await
                        .map_err(|e| text(&e)),
                )
            }
            PeerRequest::MetaTransferLeader(rpc) => encode(
                &self
                    .raft
                    .handle_transfer_leader(rpc)
                    .await
                    .map_err(|e| text(&e)),
            ),
            PeerRequest::MetaPropose(command) => {
                tracing::debug!(from, %command, "proposal from a peer");
                encode(&self.propose_here(command).await.map_err(|e| text(&e)))
            }
            PeerRequest::Topic { topic, rpc } => self.serve_topic(&topic, rpc).await,
            PeerRequest::Publish { topic, publishes } => {
                self.serve_publish(from, &topic, publishes).await
            }
            PeerRequest::Join { id, node } => {
                let joined = match id == from {
                    true => self.add_node(id, node.peer_addr).await,
                    false => Err(ClusterError::Refused(format!(
                        "node {from} cannot ask for node {id} to join"
                    ))),
                };
                encode(&joined.map_err(|e| text(&e)))
            }
            PeerRequest::MetaMembers(change) => {
                tracing::debug!(from, ?change, "change of members from a peer");
                encode(&self.members_here(change).await.map_err(|e| text(&e)))
            }
        }
    }

    /// A client for calls to member `node`, if the meta group knows its address.
    pub(super) fn peer_client(&self, node: NodeId) -> Option<PeerClient> {
        let membership = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let addr = membership
            .nodes()
            .find(|(id, _)| **id == node)
            .map(|(_, n)| n.peer_addr.clone())?;
        Some(self.endpoint.client(node, addr))
    }

    /// Proposes on this node, which must be the leader.
    async fn propose_here(&self, command: MetaCommand) -> Result<MetaReply, ClusterError> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(e) => match e.forward_to_leader() {
                Some(_) => Err(ClusterError::NoLeader),
                None => Err(ClusterError::Raft(e.to_string())),
            },
        }
    }

    /// Proposes a change to the metadata through the meta group's leader, wherever it is,
    /// waiting up to `timeout` for a leader and for the change to be applied on it.
    pub async fn propose(
        &self,
        command: MetaCommand,
        timeout: Duration,
    ) -> Result<MetaReply, ClusterError> {
        let request = PeerRequest::MetaPropose(command.clone());
        self.at_leader(request, timeout, || self.propose_here(command.clone()))
            .await
    }

    /// The metadata as this node has applied it.
    pub fn meta(&self) -> MetaState {
        self.machine.state()
    }

    /// What `quiver cluster status` and `/stats` show.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let state = self.machine.state();
        // The membership in the log, which a node follows as soon as it has the entry, not
        // only once it is applied.
        let membership = m.membership_config.clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(&id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index);
                let heartbeat_ms = m
                    .heartbeat
                    .as_ref()
                    .and_then(|h| h.get(&id).copied().flatten())
                    .map(|at| openraft::Instant::elapsed(&*at).as_millis() as u64);
                MemberStatus {
                    id,
                    peer_addr: node.peer_addr.clone(),
                    voter: voters.contains(&id),
                    matched,
                    lag: matched.map(|i| last.saturating_sub(i)),
                    last_ack_ms: heartbeat_ms,
                }
            })
            .collect();
        ClusterStatus {
            node_id: self.id,
            cluster_id: self.cluster_id.clone(),
            state: state_name(m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed: m.local_committed.as_ref().map(|l| l.index),
            applied: m.last_applied.as_ref().map(|l| l.index),
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            members,
            leaving: state.leaving.iter().copied().collect(),
            topics: state
                .topics
                .iter()
                .map(|(name, p)| TopicPlacement {
                    topic: name.clone(),
                    replicas: p.replicas.clone(),
                    voters: p.voters.clone(),
                    moving: p.moving(),
                    preferred_leader: p.preferred_leader,
                    group: self.topic_status(name),
                })
                .collect(),
        }
    }

    /// Leaves the groups and closes the endpoint.
    pub async fn shutdown(&self) {
        let groups: Vec<Arc<TopicGroup>> = self.groups().values().cloned().collect();
        for group in groups {
            group.shutdown().await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "stopping the meta group");
        }
        self.endpoint.close().await;
    }
}

/// How status reports a Raft state.
fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// A node's view of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub cluster_id: String,
    /// leader, follower, candidate, learner or shutdown.
    pub state: &'static str,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    /// Times this node saw a new leader of the meta group since it started.
    pub leader_changes: u64,
    pub uptime_ms: u64,
    pub members: Vec<MemberStatus>,
    /// Members being removed, whose replicas are moving away.
    pub leaving: Vec<NodeId>,
    pub topics: Vec<TopicPlacement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub peer_addr: String,
    pub voter: bool,
    /// On the leader: the last log index the member is known to hold.
    pub matched: Option<u64>,
    /// On the leader: entries the member is behind.
    pub lag: Option<u64>,
    /// On the leader: milliseconds since the member last acknowledged.
    pub last_ack_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicPlacement {
    pub topic: String,
    /// Where the topic should be replicated.
    pub replicas: Vec<NodeId>,
    /// Where its group is replicated now; differs from `replicas` while replicas move.
    pub voters: Vec<NodeId>,
    pub moving: bool,
    pub preferred_leader: NodeId,
    /// The topic's group as this node's replica sees it; None on other nodes.
    pub group: Option<TopicStatus>,
}
