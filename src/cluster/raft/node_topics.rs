//! A node's replicas of topics: started when the meta group places a topic on the node,
//! served to peers, and handed to the broker where the node leads.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, Config as RaftConfig, ServerState, SnapshotPolicy};
use serde::Serialize;

use super::{ClusterError, ClusterNode, STARTING};
use crate::cluster::raft::log_store::FileLogStore;
use crate::cluster::raft::meta::{MetaCommand, MetaReply, Placement};
use crate::cluster::raft::network::{call, encode, PeerRequest};
use crate::cluster::raft::topic::catch_up;
use crate::cluster::raft::topic::group::{OnLost, TopicGroup};
use crate::cluster::raft::topic::log::ReplicatedLog;
use crate::cluster::raft::topic::machine::{Descriptor, TopicMachine};
use crate::cluster::raft::topic::network::{TopicNetwork, TopicRpc};
use crate::cluster::raft::topic::{TopicConfig, TopicRaft};
use crate::cluster::raft::PeerNode;
use crate::cluster::NodeId;
use crate::message::TopicName;
use crate::storage::{FsyncPolicy, LeaderHint, StorageError, TopicLog};

/// Entries a topic group's log keeps after a snapshot, so that a replica that was away
/// briefly catches up from the log.
const KEEP_AFTER_SNAPSHOT: u64 = 2000;

/// How long one catch-up fetch may take.
const FETCH_WITHIN: Duration = Duration::from_secs(30);

/// How long a request waits for a topic to be created and to have a leader.
const PREPARE_WITHIN: Duration = Duration::from_secs(10);

/// How long one attempt to move a topic's replicas may take (its new replicas catch up).
const MOVE_WITHIN: Duration = Duration::from_secs(300);

/// A topic's group as this node's replica sees it.
#[derive(Debug, Clone, Serialize)]
pub struct TopicStatus {
    /// leader, follower, candidate, learner or shutdown.
    pub state: &'static str,
    /// This node leads the topic and serves it.
    pub serving: bool,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    /// The local log's offsets.
    pub start: u64,
    pub end: u64,
    /// On the leader: entries each replica is behind.
    pub lag: BTreeMap<NodeId, u64>,
}

impl ClusterNode {
    pub(super) fn groups(&self) -> MutexGuard<'_, HashMap<String, Arc<TopicGroup>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to call when this node stops leading a topic (the broker drops it).
    pub fn set_on_lost(&self, on_lost: OnLost) {
        let _ = self.on_lost.set(on_lost);
    }

    /// Raft timing for topic groups.
    fn topic_raft_config(&self) -> Result<Arc<RaftConfig>, ClusterError> {
        let heartbeat = self.settings.heartbeat.as_millis() as u64;
        let election = self.settings.election_timeout.as_millis() as u64;
        let config = RaftConfig {
            cluster_name: self.settings.cluster_id.clone(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(KEEP_AFTER_SNAPSHOT),
            max_in_snapshot_log_to_keep: KEEP_AFTER_SNAPSHOT,
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

    /// Starts the replicas of the topics placed on this node and brings the groups it
    /// leads to their placements, whenever the placements change (and at each election
    /// timeout, since a group's leadership moves without the placements changing).
    pub(super) fn follow_placements(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        let changed = self.machine.changed.clone();
        let every = self.settings.election_timeout;
        tokio::spawn(async move {
            loop {
                let notified = changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let Some(n) = node.upgrade() else { return };
                n.start_placed().await;
                n.reconcile().await;
                drop(n);
                let _ = tokio::time::timeout(every, notified).await;
            }
        });
    }

    /// Brings this node's replicas in line with the placements: a group this node leads
    /// gets the placement's replicas as its members (handing its leadership over first if
    /// it is not one of them), and a replica its topic no longer has, or whose topic is
    /// gone, is stopped and its data removed.
    async fn reconcile(self: &Arc<Self>) {
        let groups: Vec<(String, Arc<TopicGroup>)> = self
            .groups()
            .iter()
            .map(|(name, group)| (name.clone(), group.clone()))
            .collect();
        for (topic, group) in groups {
            let placement = self.machine.placement(&topic);
            let Some(placement) =
                placement.filter(|p| p.replicas.contains(&self.id) || p.voters.contains(&self.id))
            else {
                self.retire_group(&topic, &group).await;
                continue;
            };
            let m = group.raft.metrics().borrow_watched().clone();
            if m.state != ServerState::Leader || m.current_leader != Some(self.id) {
                continue;
            }
            let target: BTreeSet<NodeId> = placement.replicas.iter().copied().collect();
            let membership = m.membership_config.membership();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let settled = voters == target && membership.get_joint_config().len() == 1;
            if settled && !placement.moving() {
                continue;
            }
            if !target.contains(&self.id) {
                // The most caught-up replica that stays takes over, and moves the rest.
                let matched = |id: &NodeId| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                };
                let to = voters.intersection(&target).max_by_key(|id| matched(id));
                if let Some(&to) = to {
                    tracing::info!(topic, to, "handing the topic over: this replica moves away");
                    let _ = group.raft.trigger().transfer_leader(to).await;
                }
                continue;
            }
            if !self.moving().insert(topic.clone()) {
                continue;
            }
            let node = self.clone();
            tokio::spawn(async move {
                let moved = tokio::time::timeout(
                    MOVE_WITHIN,
                    node.move_replicas(&topic, &group, target, settled),
                )
                .await
                .unwrap_or(Err(ClusterError::Timeout(MOVE_WITHIN)));
                if let Err(e) = moved {
                    tracing::warn!(topic, error = %e, "moving the topic's replicas; trying again");
                }
                node.moving().remove(&topic);
            });
        }
    }

    fn moving(&self) -> MutexGuard<'_, HashSet<String>> {
        self.moving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On the topic's leader: adds the replicas of `target` it lacks as learners (each
    /// caught up before it counts), makes `target` the group's voters, and tells the meta
    /// group.
    async fn move_replicas(
        &self,
        topic: &str,
        group: &TopicGroup,
        target: BTreeSet<NodeId>,
        settled: bool,
    ) -> Result<(), ClusterError> {
        let raft_error = |e: &dyn std::fmt::Display| ClusterError::Raft(e.to_string());
        if !settled {
            let m = group.raft.metrics().borrow_watched().clone();
            let have: BTreeSet<NodeId> = m.membership_config.nodes().map(|(id, _)| *id).collect();
            let members = self
                .raft
                .metrics()
                .borrow_watched()
                .membership_config
                .clone();
            for &id in target.difference(&have) {
                let Some(node) = members.nodes().find(|(n, _)| **n == id).map(|(_, n)| n) else {
                    return Err(ClusterError::Raft(format!("node {id} is not a member")));
                };
                tracing::info!(topic, node = id, "adding a replica; it catches up first");
                group
                    .raft
                    .add_learner(id, node.clone(), true)
                    .await
                    .map_err(|e| raft_error(&e))?;
            }
            let voters = ChangeMembers::ReplaceAllVoters(target.clone());
            group
                .raft
                .change_membership(voters, false)
                .await
                .map_err(|e| raft_error(&e))?;
            tracing::info!(topic, voters = ?target, "the topic's replicas moved");
        }
        let command = MetaCommand::Settle {
            topic: topic.to_string(),
            voters: target.into_iter().collect(),
        };
        self.propose(command, PREPARE_WITHIN).await.map(drop)
    }

    /// Stops this node's replica of a topic that no longer has it, and removes its data.
    async fn retire_group(&self, topic: &str, group: &Arc<TopicGroup>) {
        self.groups().remove(topic);
        group.shutdown().await;
        let dir = self.data_dir.join("cluster").join("topics").join(topic);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(topic, dir = %dir.display(), error = %e, "removing a retired replica's log");
        }
        if let Err(e) = self.local.delete_topic(&group.name) {
            tracing::warn!(topic, error = %e, "removing a retired replica's messages");
        }
        tracing::info!(topic, "this node's replica of the topic is retired");
    }

    async fn start_placed(&self) {
        let placed: Vec<(String, Placement)> = self
            .machine
            .state()
            .topics
            .into_iter()
            .filter(|(_, p)| p.replicas.contains(&self.id))
            .collect();
        for (topic, placement) in placed {
            if let Err(e) = self.start_group(&topic, &placement).await {
                tracing::error!(topic, error = %e, "cannot start this node's replica of the topic");
            }
        }
    }

    /// This node's replica of `topic`, started if it is not yet.
    async fn start_group(
        &self,
        topic: &str,
        placement: &Placement,
    ) -> Result<Arc<TopicGroup>, ClusterError> {
        if let Some(group) = self.groups().get(topic) {
            return Ok(group.clone());
        }
        let _starting = self.starting.lock().await;
        if let Some(group) = self.groups().get(topic) {
            return Ok(group.clone());
        }
        let name = TopicName::new(topic).map_err(|e| ClusterError::Raft(e.to_string()))?;
        let dir = self.data_dir.join("cluster").join("topics").join(topic);
        let io = |e: std::io::Error| ClusterError::Raft(format!("{}: {e}", dir.display()));
        let sync = self.storage_config.for_topic(topic).fsync == FsyncPolicy::Always;
        let log = FileLogStore::<TopicConfig>::open(&dir, sync).map_err(io)?;
        let pristine = log.is_pristine();
        let local = self
            .local
            .open_topic(&name)
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let machine = TopicMachine::open(name.clone(), self.id, &dir, local).map_err(io)?;
        let network = TopicNetwork {
            endpoint: self.endpoint.clone(),
            topic: topic.to_string(),
        };
        let raft = TopicRaft::new(
            self.id,
            self.topic_raft_config()?,
            network,
            log,
            machine.clone(),
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let on_lost = self
            .on_lost
            .get()
            .cloned()
            .unwrap_or_else(|| OnLost(Arc::new(|_: &TopicName| {})));
        let group = TopicGroup::start(
            name,
            self.id,
            raft.clone(),
            machine,
            on_lost,
            self.settings.election_timeout,
        );
        if pristine && placement.initial.contains(&self.id) {
            // Every first replica initialises with the same members, which Raft allows: one
            // of them wins the first election. A replica added later waits for the leader.
            let members = self.machine.state().membership;
            let nodes: BTreeMap<NodeId, PeerNode> = placement
                .initial
                .iter()
                .filter_map(|id| {
                    members
                        .nodes()
                        .find(|(n, _)| *n == id)
                        .map(|(_, node)| (*id, node.clone()))
                })
                .collect();
            if let Err(e) = raft.initialize(nodes).await {
                tracing::info!(topic, error = %e, "topic group already initialised");
            } else if placement.preferred_leader == self.id {
                // The placement spread the leaderships: the preferred replica stands first,
                // so that it usually wins the group's first election.
                let _ = raft.trigger().elect(false).await;
            }
        }
        tracing::info!(topic, replicas = ?placement.replicas, "replica of the topic started");
        self.groups().insert(topic.to_string(), group.clone());
        Ok(group)
    }

    /// Where node `node` serves clients, as it advertised.
    pub fn leader_hint(&self, node: NodeId) -> LeaderHint {
        let clients = self.machine.state().clients.get(&node).cloned();
        LeaderHint {
            node,
            quic: clients.as_ref().map(|c| c.quic.clone()),
            nsq_tcp: clients.as_ref().and_then(|c| c.nsq_tcp.clone()),
            http: clients.as_ref().map(|c| c.http.clone()),
        }
    }

    fn unavailable(topic: &str, reason: &str) -> StorageError {
        StorageError::Unavailable {
            topic: topic.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The log the broker appends to, if this node leads `topic` and is ready to serve it;
    /// otherwise the redirect (or the retriable error) that the client gets.
    pub fn leader_log(&self, topic: &TopicName) -> Result<Arc<dyn TopicLog>, StorageError> {
        let group = self.groups().get(topic.as_str()).cloned();
        let Some(group) = group else {
            return Err(match self.machine.placement(topic.as_str()) {
                Some(p) => StorageError::NotLeader {
                    topic: topic.to_string(),
                    leader: self.leader_hint(p.preferred_leader),
                },
                None => Self::unavailable(topic.as_str(), "it is being created"),
            });
        };
        if group.lead_state().ready {
            return Ok(Arc::new(ReplicatedLog::new(group)));
        }
        let leader = group
            .current_leader()
            .filter(|&l| l != self.id)
            .map(|l| self.leader_hint(l));
        Err(group.not_leader(leader))
    }

    /// Creates `topic` through the meta group if it does not exist, on `replication`
    /// members (else its `[storage.topics]` `replication`, else the cluster's
    /// `replication_factor`; fewer if the cluster has fewer); its placement, new or as it
    /// already was.
    pub async fn create_topic(
        &self,
        topic: &TopicName,
        replication: Option<u16>,
    ) -> Result<Placement, ClusterError> {
        let configured = self
            .storage_config
            .topics
            .get(topic.as_str())
            .and_then(|t| t.replication);
        let command = MetaCommand::CreateTopic {
            name: topic.to_string(),
            replication: replication
                .or(configured)
                .unwrap_or(self.settings.replication_factor),
        };
        match self.propose(command, PREPARE_WITHIN).await? {
            MetaReply::Placed(placement) => Ok(placement),
            MetaReply::Done => Err(ClusterError::Raft("the topic was not placed".into())),
        }
    }

    /// Deletes a topic from the cluster: each node's replica stops and removes its data as
    /// it applies the deletion. A topic that does not exist is an error.
    pub async fn delete_topic(&self, topic: &TopicName) -> Result<(), ClusterError> {
        if self.machine.placement(topic.as_str()).is_none() {
            return Err(ClusterError::Refused(format!(
                "topic {topic} does not exist"
            )));
        }
        let command = MetaCommand::DeleteTopic {
            name: topic.to_string(),
        };
        self.propose(command, PREPARE_WITHIN).await.map(drop)
    }

    /// Creates `topic` through the meta group if it does not exist, and waits until it has
    /// a leader: Ok if it is this node, the redirect if it is another.
    pub async fn prepare_topic(&self, topic: &TopicName) -> Result<(), StorageError> {
        let deadline = Instant::now() + PREPARE_WITHIN;
        let name = topic.as_str();
        let placement = match self.machine.placement(name) {
            Some(p) => p,
            None => {
                if let Err(e) = self.create_topic(topic, None).await {
                    return Err(Self::unavailable(name, &e.to_string()));
                }
                // Applied on the leader; wait until this node has applied it too.
                loop {
                    let changed = self.machine.changed.notified();
                    if let Some(p) = self.machine.placement(name) {
                        break p;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if tokio::time::timeout(left, changed).await.is_err() {
                        return Err(Self::unavailable(name, "its creation is not applied yet"));
                    }
                }
            }
        };
        if !placement.replicas.contains(&self.id) {
            return Err(StorageError::NotLeader {
                topic: name.to_string(),
                leader: self.leader_hint(placement.preferred_leader),
            });
        }
        let group = self
            .start_group(name, &placement)
            .await
            .map_err(|e| Self::unavailable(name, &e.to_string()))?;
        let mut lead = group.lead_watch();
        let mut metrics = group.raft.metrics();
        loop {
            if lead.borrow_and_update().ready {
                return Ok(());
            }
            let leader = metrics.borrow_watched().current_leader;
            if let Some(leader) = leader.filter(|&l| l != self.id) {
                return Err(StorageError::NotLeader {
                    topic: name.to_string(),
                    leader: self.leader_hint(leader),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let changed = async {
                tokio::select! {
                    _ = lead.changed() => {}
                    _ = metrics.changed() => {}
                }
            };
            if tokio::time::timeout(left, changed).await.is_err() {
                return Err(group.not_leader(None));
            }
        }
    }

    /// Answers a topic group's RPC from another replica.
    /// Fetches from the snapshot's sender the messages of `data` this replica lacks, one
    /// catch-up at a time on this node.
    async fn catch_up(&self, group: &TopicGroup, data: &Descriptor) -> Result<(), String> {
        let log = group.machine.log();
        if log.end() >= data.end {
            return Ok(());
        }
        let _one = self.catching_up.lock().await;
        let began = (log.end(), Instant::now());
        let Some(client) = self.peer_client(data.source) else {
            return Err(format!("node {} is not a member", data.source));
        };
        let topic = group.name.to_string();
        let fetch = |from: u64, to: u64| {
            let request = PeerRequest::Topic {
                topic: topic.clone(),
                rpc: TopicRpc::Fetch {
                    from,
                    to,
                    max_bytes: catch_up::FETCH_BYTES as u32,
                },
            };
            let client = client.clone();
            async move {
                tracing::debug!(from, to, "fetching for catch-up");
                match call::<catch_up::FetchReply>(&client, &request, FETCH_WITHIN).await {
                    Ok(answer) => answer,
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        tracing::info!(topic = %group.name, source = data.source, from = began.0, to = data.end, "catching up from a snapshot");
        let fetched = catch_up::fill(&log, data, fetch).await?;
        tracing::info!(topic = %group.name, fetched, took = ?began.1.elapsed(), "caught up");
        Ok(())
    }

    pub(super) async fn serve_topic(&self, topic: &str, rpc: TopicRpc) -> Result<Bytes, String> {
        let group = self.groups().get(topic).cloned();
        let group = match group {
            Some(group) => group,
            None => {
                // The placement may not be applied here yet: answer as a node starting.
                let placement = self.machine.placement(topic).ok_or(STARTING.to_string())?;
                if !placement.replicas.contains(&self.id) {
                    return Err(format!(
                        "node {} holds no replica of topic {topic}",
                        self.id
                    ));
                }
                self.start_group(topic, &placement)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let raft = &group.raft;
        let text = |e: &dyn std::fmt::Display| e.to_string();
        match rpc {
            TopicRpc::Append(rpc) => encode(&raft.append_entries(rpc).await.map_err(|e| text(&e))),
            TopicRpc::Vote(rpc) => encode(&raft.vote(rpc).await.map_err(|e| text(&e))),
            TopicRpc::Fetch {
                from,
                to,
                max_bytes,
            } => {
                let log = group.machine.log();
                let max = (max_bytes as usize).min(catch_up::FETCH_BYTES);
                encode(&Ok::<_, String>(catch_up::serve_fetch(
                    &*log, from, to, max,
                )))
            }
            TopicRpc::Snapshot { vote, meta, data } => {
                if let Err(e) = self.catch_up(&group, &data).await {
                    tracing::warn!(%topic, source = data.source, error = %e, "catching up from a snapshot failed; the leader will send it again");
                    return encode(&Err::<(), String>(format!("catching up: {e}")));
                }
                let snapshot = openraft::type_config::alias::SnapshotOf::<TopicConfig, _> {
                    meta,
                    snapshot: data,
                };
                encode(
                    &raft
                        .install_full_snapshot(vote, snapshot)
                        .await
                        .map_err(|e| text(&e)),
                )
            }
            TopicRpc::TransferLeader(rpc) => {
                encode(&raft.handle_transfer_leader(rpc).await.map_err(|e| text(&e)))
            }
        }
    }

    /// Proposes this node's client addresses until the meta group has them.
    pub(super) fn advertise(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(n) = node.upgrade() else { return };
                if n.machine.state().clients.get(&n.id) == Some(&n.clients) {
                    return;
                }
                let command = MetaCommand::Advertise {
                    node: n.id,
                    addrs: n.clients.clone(),
                };
                match n.propose(command, Duration::from_secs(30)).await {
                    Ok(_) => return,
                    Err(e) => tracing::debug!(error = %e, "advertising the client addresses"),
                }
            }
        });
    }

    /// A topic's group as this node's replica sees it.
    pub(super) fn topic_status(&self, topic: &str) -> Option<TopicStatus> {
        let group = self.groups().get(topic).cloned()?;
        let m = group.raft.metrics().borrow_watched().clone();
        let last = m.last_log_index.unwrap_or(0);
        let lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, last.saturating_sub(l.as_ref().map_or(0, |l| l.index))))
                    .collect()
            })
            .unwrap_or_default();
        let local = group.machine.log();
        Some(TopicStatus {
            state: super::state_name(m.state),
            serving: group.lead_state().ready,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed: m.local_committed.as_ref().map(|l| l.index),
            applied: m.last_applied.as_ref().map(|l| l.index),
            start: local.start(),
            end: local.end(),
            lag,
        })
    }
}
