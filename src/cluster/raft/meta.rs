//! The meta group's state machine: the cluster's members and where each topic lives.
//!
//! Every node applies the same commands in the same order, so every decision that depends
//! on the state is made in [`MetaState::apply`], never by the proposer: placing a topic
//! picks its replicas from the state at the moment the command is applied, and all nodes
//! pick the same ones.
//!
//! The state is small and kept in memory. A snapshot is the whole state, written to
//! `snapshot` in the group's directory (atomically) when openraft builds or installs one,
//! and read back at start; openraft then replays the log entries after it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::MetaConfig;
use crate::cluster::NodeId;

/// A change to the cluster's metadata, proposed to the meta group's leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Creates a durable topic if it does not exist, placing it on `replication` members
    /// (fewer if the cluster has fewer).
    CreateTopic {
        name: String,
        replication: u16,
    },
    DeleteTopic {
        name: String,
    },
    /// Where a node serves clients, so that redirects can name its addresses.
    Advertise {
        node: NodeId,
        addrs: ClientAddrs,
    },
    /// A member is being removed: no new topic is placed on it, and every topic with a
    /// replica on it gets another member in its place (where the cluster has one).
    Retire {
        node: NodeId,
    },
    /// A removed member is gone: it leaves the metadata.
    Forget {
        node: NodeId,
    },
    /// A topic's group now has exactly `voters` as its voting members (its leader says so
    /// once a change of its replicas is committed).
    Settle {
        topic: String,
        voters: Vec<NodeId>,
    },
}

/// The client listeners of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAddrs {
    pub quic: String,
    pub http: String,
    pub nsq_tcp: Option<String>,
    pub nsq_http: Option<String>,
}

impl fmt::Display for MetaCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaCommand::CreateTopic { name, replication } => {
                write!(f, "create topic {name} (replication {replication})")
            }
            MetaCommand::DeleteTopic { name } => write!(f, "delete topic {name}"),
            MetaCommand::Advertise { node, addrs } => {
                write!(f, "node {node} serves clients at {}", addrs.quic)
            }
            MetaCommand::Retire { node } => write!(f, "move every replica off node {node}"),
            MetaCommand::Forget { node } => write!(f, "forget removed node {node}"),
            MetaCommand::Settle { topic, voters } => {
                write!(f, "topic {topic} is replicated on {voters:?}")
            }
        }
    }
}

/// What applying a command gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaReply {
    Done,
    /// The topic's placement, new or as it already was.
    Placed(Placement),
}

/// Where a topic lives: its replicas, and the one that should lead it.
///
/// `replicas` is where the topic should be; `voters` is where its group is now. They differ
/// while replicas move (a member is being removed): the group's leader adds the new
/// replicas, changes its membership, and settles `voters` to `replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub replicas: Vec<NodeId>,
    pub preferred_leader: NodeId,
    /// The group's voting members, as its leader last settled them.
    pub voters: Vec<NodeId>,
    /// The members the group was created with: only they initialise it, with these.
    pub initial: Vec<NodeId>,
}

impl Placement {
    /// Replicas are moving: the group's members are not yet the placement's.
    pub fn moving(&self) -> bool {
        self.replicas != self.voters
    }
}

/// The cluster's metadata as of the last applied entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub last_applied: Option<LogIdOf<MetaConfig>>,
    pub membership: StoredMembershipOf<MetaConfig>,
    pub topics: BTreeMap<String, Placement>,
    /// Each node's client addresses, as it advertised them.
    pub clients: BTreeMap<NodeId, ClientAddrs>,
    /// Members being removed: nothing new is placed on them.
    pub leaving: BTreeSet<NodeId>,
}

impl MetaState {
    /// The voting members now.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.membership.voter_ids().collect()
    }

    /// The voting members that take new replicas.
    fn hosts(&self) -> BTreeSet<NodeId> {
        let mut voters = self.voters();
        voters.retain(|id| !self.leaving.contains(id));
        voters
    }

    /// Replicas per node, and topics each node should lead.
    fn load(&self) -> BTreeMap<NodeId, (usize, usize)> {
        let mut load: BTreeMap<NodeId, (usize, usize)> =
            self.hosts().into_iter().map(|id| (id, (0, 0))).collect();
        for placed in self.topics.values() {
            for id in &placed.replicas {
                if let Some(l) = load.get_mut(id) {
                    l.0 += 1;
                }
            }
            if let Some(l) = load.get_mut(&placed.preferred_leader) {
                l.1 += 1;
            }
        }
        load
    }

    /// Moves every replica off `node`: each topic on it gets the host with the fewest
    /// replicas that it does not have yet (none if every host has it: the topic then has
    /// one replica fewer), and a topic it should lead gets the remaining replica leading
    /// the fewest.
    fn retire(&mut self, node: NodeId) {
        self.leaving.insert(node);
        let names: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, p)| p.replicas.contains(&node))
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            let load = self.load();
            let Some(placed) = self.topics.get_mut(&name) else {
                continue;
            };
            placed.replicas.retain(|&id| id != node);
            let spare = load
                .iter()
                .filter(|(id, _)| !placed.replicas.contains(id))
                .min_by_key(|&(&id, &(replicas, _))| (replicas, id))
                .map(|(&id, _)| id);
            placed.replicas.extend(spare);
            placed.replicas.sort_unstable();
            if placed.preferred_leader == node {
                placed.preferred_leader = placed
                    .replicas
                    .iter()
                    .min_by_key(|&&id| (load.get(&id).map_or(0, |l| l.1), id))
                    .copied()
                    .unwrap_or(0);
            }
        }
    }

    pub fn apply(&mut self, command: &MetaCommand) -> MetaReply {
        match command {
            MetaCommand::CreateTopic { name, replication } => {
                if let Some(placed) = self.topics.get(name) {
                    return MetaReply::Placed(placed.clone());
                }
                let placed = self.place(*replication);
                self.topics.insert(name.clone(), placed.clone());
                MetaReply::Placed(placed)
            }
            MetaCommand::DeleteTopic { name } => {
                self.topics.remove(name);
                MetaReply::Done
            }
            MetaCommand::Advertise { node, addrs } => {
                self.clients.insert(*node, addrs.clone());
                MetaReply::Done
            }
            MetaCommand::Retire { node } => {
                self.retire(*node);
                MetaReply::Done
            }
            MetaCommand::Forget { node } => {
                self.leaving.remove(node);
                self.clients.remove(node);
                MetaReply::Done
            }
            MetaCommand::Settle { topic, voters } => {
                if let Some(placed) = self.topics.get_mut(topic) {
                    placed.voters = voters.clone();
                }
                MetaReply::Done
            }
        }
    }

    /// Chooses `replication` voters with the fewest replicas (then the lowest ids), and
    /// among them the one leading the fewest topics.
    fn place(&self, replication: u16) -> Placement {
        let mut by_replicas: Vec<(NodeId, (usize, usize))> = self.load().into_iter().collect();
        by_replicas.sort_by_key(|&(id, (replicas, _))| (replicas, id));
        let n = (replication.max(1) as usize).min(by_replicas.len());
        let mut chosen: Vec<(NodeId, (usize, usize))> = by_replicas.into_iter().take(n).collect();
        let preferred_leader = chosen
            .iter()
            .min_by_key(|&&(id, (_, leads))| (leads, id))
            .map_or(0, |&(id, _)| id);
        chosen.sort_by_key(|&(id, _)| id);
        let replicas: Vec<NodeId> = chosen.into_iter().map(|(id, _)| id).collect();
        Placement {
            voters: replicas.clone(),
            initial: replicas.clone(),
            replicas,
            preferred_leader,
        }
    }
}

/// The meta group's state machine, shared with the node that reads placements.
#[derive(Debug, Clone)]
pub struct MetaMachine {
    state: Arc<RwLock<MetaState>>,
    dir: PathBuf,
    /// Woken after each applied batch of entries and each installed snapshot.
    pub changed: Arc<tokio::sync::Notify>,
}

impl MetaMachine {
    /// The state machine of the group in `dir`, from its last snapshot if there is one.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let state = match std::fs::read(dir.join("snapshot")) {
            Ok(bytes) => postcard::from_bytes(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.join("snapshot").display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => MetaState::default(),
            Err(e) => return Err(e),
        };
        Ok(MetaMachine {
            state: Arc::new(RwLock::new(state)),
            dir: dir.to_path_buf(),
            changed: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// A copy of the state now.
    pub fn state(&self) -> MetaState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn placement(&self, topic: &str) -> Option<Placement> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.topics.get(topic).cloned()
    }

    fn snapshot_of(&self, state: &MetaState) -> io::Result<SnapshotOf<MetaConfig, Vec<u8>>> {
        let bytes = postcard::to_stdvec(state)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(SnapshotOf::<MetaConfig, Vec<u8>> {
            meta: SnapshotMetaOf::<MetaConfig> {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
            },
            snapshot: bytes,
        })
    }

    fn save(&self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join("snapshot.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("snapshot"))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

impl RaftSnapshotBuilder<MetaConfig> for MetaMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<MetaConfig, Vec<u8>>, io::Error> {
        let state = self.state();
        let snapshot = self.snapshot_of(&state)?;
        self.save(&snapshot.snapshot)?;
        Ok(snapshot)
    }
}

impl RaftStateMachine<MetaConfig> for MetaMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<MetaConfig>>, StoredMembershipOf<MetaConfig>), io::Error> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<MetaConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let reply = {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                state.last_applied = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => MetaReply::Done,
                    EntryPayload::Normal(command) => state.apply(command),
                    EntryPayload::Membership(m) => {
                        state.membership =
                            StoredMembershipOf::<MetaConfig>::new(Some(entry.log_id), m.clone());
                        MetaReply::Done
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(reply);
            }
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<MetaConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let mut state: MetaState = postcard::from_bytes(&snapshot)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        self.save(&snapshot)?;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
        self.changed.notify_waiters();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<MetaConfig, Vec<u8>>>, io::Error> {
        match std::fs::read(self.dir.join("snapshot")) {
            Ok(bytes) => {
                let state: MetaState = postcard::from_bytes(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let mut snapshot = self.snapshot_of(&state)?;
                snapshot.snapshot = bytes;
                Ok(Some(snapshot))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_spreads_replicas_and_leaders() {
        let mut state = MetaState::default();
        let members = openraft::Membership::new_with_defaults(vec![(1..=5).collect()], 1..=5);
        state.membership = StoredMembershipOf::<MetaConfig>::new(None, members);
        let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut replicas: BTreeMap<NodeId, usize> = BTreeMap::new();
        for t in 0..30 {
            let cmd = MetaCommand::CreateTopic {
                name: format!("t{t}"),
                replication: 3,
            };
            let MetaReply::Placed(p) = state.apply(&cmd) else {
                panic!("no placement");
            };
            assert_eq!(p.replicas.len(), 3);
            assert!(p.replicas.contains(&p.preferred_leader));
            *leads.entry(p.preferred_leader).or_default() += 1;
            for r in p.replicas {
                *replicas.entry(r).or_default() += 1;
            }
        }
        let spread = |m: &BTreeMap<NodeId, usize>| {
            let (lo, hi) = (m.values().min(), m.values().max());
            (m.len(), hi.zip(lo).map(|(h, l)| h - l))
        };
        assert_eq!(spread(&replicas), (5, Some(0)), "{replicas:?}");
        assert_eq!(spread(&leads), (5, Some(0)), "{leads:?}");
        // Creating again gives the same placement.
        let again = state.apply(&MetaCommand::CreateTopic {
            name: "t0".into(),
            replication: 1,
        });
        assert_eq!(again, MetaReply::Placed(state.topics["t0"].clone()));
    }

    #[test]
    fn placement_is_capped_by_the_members() {
        let mut state = MetaState::default();
        let members = openraft::Membership::new_with_defaults(vec![[1].into()], [1]);
        state.membership = StoredMembershipOf::<MetaConfig>::new(None, members);
        let MetaReply::Placed(p) = state.apply(&MetaCommand::CreateTopic {
            name: "t".into(),
            replication: 3,
        }) else {
            panic!("no placement");
        };
        assert_eq!(p.replicas, vec![1]);
    }

    #[test]
    fn retiring_a_member_moves_its_replicas_to_the_least_loaded_others() {
        let mut state = MetaState::default();
        let members = openraft::Membership::new_with_defaults(vec![(1..=4).collect()], 1..=4);
        state.membership = StoredMembershipOf::<MetaConfig>::new(None, members);
        for t in 0..8 {
            state.apply(&MetaCommand::CreateTopic {
                name: format!("t{t}"),
                replication: 3,
            });
        }
        let on_2: Vec<String> = state
            .topics
            .iter()
            .filter(|(_, p)| p.replicas.contains(&2))
            .map(|(n, _)| n.clone())
            .collect();
        assert!(!on_2.is_empty());
        state.apply(&MetaCommand::Retire { node: 2 });
        for (name, p) in &state.topics {
            assert!(!p.replicas.contains(&2), "{name}: {p:?}");
            assert_eq!(p.replicas.len(), 3, "{name}: {p:?}");
            assert!(p.replicas.contains(&p.preferred_leader), "{name}: {p:?}");
            assert_eq!(p.moving(), on_2.contains(name), "{name}: {p:?}");
        }
        // Nothing new goes to a leaving member, and a settled topic stops moving.
        let MetaReply::Placed(p) = state.apply(&MetaCommand::CreateTopic {
            name: "new".into(),
            replication: 3,
        }) else {
            panic!("no placement");
        };
        assert_eq!(p.replicas, vec![1, 3, 4]);
        let t = &on_2[0];
        let voters = state.topics[t].replicas.clone();
        state.apply(&MetaCommand::Settle {
            topic: t.clone(),
            voters,
        });
        assert!(!state.topics[t].moving());
        state.apply(&MetaCommand::Forget { node: 2 });
        assert!(state.leaving.is_empty());
    }

    #[test]
    fn retiring_from_a_cluster_with_no_spare_member_shrinks_the_replicas() {
        let mut state = MetaState::default();
        let members = openraft::Membership::new_with_defaults(vec![(1..=3).collect()], 1..=3);
        state.membership = StoredMembershipOf::<MetaConfig>::new(None, members);
        state.apply(&MetaCommand::CreateTopic {
            name: "t".into(),
            replication: 3,
        });
        state.apply(&MetaCommand::Retire { node: 3 });
        assert_eq!(state.topics["t"].replicas, vec![1, 2]);
    }
}
