//! Changes of the cluster's members: a node joins (it asks through any member, or an
//! operator adds it), and a member is removed once every replica it held has moved.
//!
//! Both go through the meta group's leader. Adding makes the node a learner, waits until it
//! has the meta log, then makes it a voter. Removing first retires the node in the
//! metadata, which gives each of its topics another replica; each topic's leader then adds
//! the new replica and changes its group's members (see `node_topics`), handing its own
//! leadership over first if it is the one leaving; only when no topic's group has the node
//! any more does it leave the meta group.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{ClusterError, ClusterNode};
use crate::cluster::raft::meta::MetaCommand;
use crate::cluster::raft::network::{call, PeerRequest};
use crate::cluster::raft::PeerNode;
use crate::cluster::{NodeId, PeerError};

/// A change of the meta group's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembersChange {
    Add { id: NodeId, peer_addr: String },
    Remove { id: NodeId },
}

/// How long a change of the members may wait for a leader and for the new member to catch
/// up with the meta log.
const MEMBERS_WITHIN: Duration = Duration::from_secs(60);

/// How long removing a member waits for its replicas to move.
const MOVE_WITHIN: Duration = Duration::from_secs(300);

/// How long one attempt to join through a member may take.
const JOIN_CALL: Duration = Duration::from_secs(30);

/// Answers that a change was refused start with this, so that the asking node can tell a
/// refusal (give up) from an election or an unreachable leader (try again).
pub const REFUSED: &str = "refused: ";

/// What removing a member did.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub node: NodeId,
    /// The topics that had a replica on the node, each moved to another member.
    pub moved: Vec<String>,
    pub took_ms: u64,
}

fn refused(why: String) -> ClusterError {
    ClusterError::Refused(why)
}

impl ClusterNode {
    /// Runs `here` if this node leads the meta group, else sends `request` to the leader;
    /// waits out elections and a leader that went away, for up to `timeout`.
    pub(super) async fn at_leader<T, F, Fut>(
        &self,
        request: PeerRequest,
        timeout: Duration,
        here: F,
    ) -> Result<T, ClusterError>
    where
        T: DeserializeOwned,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ClusterError>>,
    {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClusterError::Timeout(timeout));
            }
            let leader = self.raft.metrics().borrow_watched().current_leader;
            let attempt = match leader {
                Some(leader) if leader == self.id => tokio::time::timeout(left, here())
                    .await
                    .unwrap_or(Err(ClusterError::Timeout(timeout))),
                Some(leader) => self.call_leader(leader, &request, left).await,
                None => Err(ClusterError::NoLeader),
            };
            match attempt {
                Err(ClusterError::NoLeader | ClusterError::Peer(_)) => {
                    // An election, or the leader just went away: wait for the next one.
                    tokio::time::sleep(backoff.min(left)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                done => return done,
            }
        }
    }

    async fn call_leader<T: DeserializeOwned>(
        &self,
        leader: NodeId,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<T, ClusterError> {
        let client = self.peer_client(leader).ok_or(ClusterError::NoLeader)?;
        match call::<T>(&client, request, timeout).await? {
            Ok(reply) => Ok(reply),
            Err(reason) => Err(ClusterError::from_remote(reason)),
        }
    }

    /// Makes node `id`, reached by peers at `peer_addr`, a voting member. Nothing changes if
    /// it already is one at that address; another member with that id or that address is a
    /// refusal.
    pub async fn add_node(&self, id: NodeId, peer_addr: String) -> Result<(), ClusterError> {
        let change = MembersChange::Add { id, peer_addr };
        self.change_members(change).await
    }

    async fn change_members(&self, change: MembersChange) -> Result<(), ClusterError> {
        let request = PeerRequest::MetaMembers(change.clone());
        self.at_leader(request, MEMBERS_WITHIN, || {
            self.members_here(change.clone())
        })
        .await
    }

    /// Changes the members on this node, the meta group's leader.
    pub(super) async fn members_here(&self, change: MembersChange) -> Result<(), ClusterError> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.id) {
            return Err(ClusterError::NoLeader);
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let write = |e: openraft::error::RaftError<_, openraft::error::ClientWriteError<_>>| match e
            .forward_to_leader()
        {
            Some(_) => ClusterError::NoLeader,
            None => ClusterError::Raft(e.to_string()),
        };
        match change {
            MembersChange::Add { id, peer_addr } => {
                if let Some(node) = membership.get_node(&id) {
                    if node.peer_addr != peer_addr {
                        return Err(refused(format!(
                            "node id {id} is already a member, at {}; remove it first",
                            node.peer_addr
                        )));
                    }
                    if voters.contains(&id) {
                        return Ok(());
                    }
                }
                if let Some((other, _)) = membership
                    .nodes()
                    .find(|(other, n)| **other != id && n.peer_addr == peer_addr)
                {
                    return Err(refused(format!(
                        "{peer_addr} is the address of member {other}"
                    )));
                }
                tracing::info!(node = id, %peer_addr, "adding a member");
                let node = PeerNode {
                    peer_addr: peer_addr.clone(),
                };
                self.raft.add_learner(id, node, true).await.map_err(write)?;
                let add = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                self.raft
                    .change_membership(add, false)
                    .await
                    .map_err(write)?;
                tracing::info!(node = id, %peer_addr, "member added");
                Ok(())
            }
            MembersChange::Remove { id } => {
                if membership.get_node(&id).is_none() {
                    return Ok(());
                }
                if id == self.id {
                    // The leader hands the group over first; the next leader removes it.
                    let Some(&to) = voters.iter().find(|&&v| v != id) else {
                        return Err(refused(format!("node {id} is the only member")));
                    };
                    tracing::info!(to, "handing the meta group over before leaving it");
                    let _ = self.raft.trigger().transfer_leader(to).await;
                    return Err(ClusterError::NoLeader);
                }
                let remove = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
                self.raft
                    .change_membership(remove, false)
                    .await
                    .map_err(write)?;
                tracing::info!(node = id, "member removed from the meta group");
                Ok(())
            }
        }
    }

    /// Removes member `id`: moves each of its replicas to another member, waits until every
    /// topic's group has let it go, then takes it out of the meta group. The node itself
    /// should be stopped after.
    pub async fn remove_node(&self, id: NodeId) -> Result<Removed, ClusterError> {
        let began = Instant::now();
        let state = self.meta();
        let voters = state.voters();
        if !voters.contains(&id) {
            return Err(refused(format!(
                "node {id} is not a member (the members are {voters:?})"
            )));
        }
        if voters.len() == 1 {
            return Err(refused(format!("node {id} is the only member")));
        }
        let holds = |p: &crate::cluster::raft::meta::Placement| {
            p.replicas.contains(&id) || p.voters.contains(&id)
        };
        let moved: Vec<String> = state
            .topics
            .iter()
            .filter(|(_, p)| holds(p))
            .map(|(name, _)| name.clone())
            .collect();
        tracing::info!(
            node = id,
            topics = moved.len(),
            "removing a member: moving its replicas"
        );
        self.propose(MetaCommand::Retire { node: id }, MEMBERS_WITHIN)
            .await?;
        let deadline = began + MOVE_WITHIN;
        let mut reported = Instant::now();
        loop {
            let changed = self.machine.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let left: Vec<String> = self
                .meta()
                .topics
                .iter()
                .filter(|(_, p)| holds(p))
                .map(|(name, _)| name.clone())
                .collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Raft(format!(
                    "the replicas of node {id} did not move within {MOVE_WITHIN:?}; still on it: {left:?}"
                )));
            }
            if reported.elapsed() >= Duration::from_secs(5) {
                tracing::info!(node = id, waiting = ?left, "replicas still moving");
                reported = Instant::now();
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
        }
        self.change_members(MembersChange::Remove { id }).await?;
        self.propose(MetaCommand::Forget { node: id }, MEMBERS_WITHIN)
            .await?;
        let took_ms = began.elapsed().as_millis() as u64;
        tracing::info!(node = id, moved = moved.len(), took_ms, "member removed");
        Ok(Removed {
            node: id,
            moved,
            took_ms,
        })
    }

    /// Asks the member at `seed` to add this node, until it is added or refused.
    pub(super) async fn join(&self, seed: &str) -> Result<(), ClusterError> {
        let request = PeerRequest::Join {
            id: self.id,
            node: PeerNode {
                peer_addr: self.settings.advertise(),
            },
        };
        let mut backoff = Duration::from_millis(100);
        let mut tries = 0u32;
        loop {
            let attempt = async {
                let answered = self.endpoint.probe_any(seed).await?;
                let client = self.endpoint.client(answered, seed.to_string());
                call::<()>(&client, &request, JOIN_CALL).await
            };
            match attempt.await {
                Ok(Ok(())) => {
                    tracing::info!(through = seed, "joined the cluster");
                    return Ok(());
                }
                Ok(Err(reason)) if reason.starts_with(REFUSED) => {
                    return Err(ClusterError::Start(format!(
                        "the cluster refused this node through {seed}: {}",
                        &reason[REFUSED.len()..]
                    )));
                }
                Err(e @ PeerError::Refused { .. }) => {
                    return Err(ClusterError::Start(e.to_string()))
                }
                Ok(Err(reason)) => {
                    tracing::info!(through = seed, %reason, "joining: trying again")
                }
                Err(e) if tries.is_multiple_of(10) => {
                    tracing::info!(through = seed, error = %e, "joining: no answer yet")
                }
                Err(_) => {}
            }
            tries += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
