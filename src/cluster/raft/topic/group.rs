//! One replicated topic on this node: its Raft, whether this node leads it, and the
//! proposals of the leader.
//!
//! # Leadership and offsets
//! The leader gives each batch its offsets when the broker appends it, before the entry is
//! committed, so that the broker core keeps its synchronous `append`. That is exact because
//! a leader proposes only once it is *ready*: it has committed and applied an entry of its
//! own term, so every earlier entry is applied and the local log's end is where the next
//! batch goes. From then on it is the only proposer, and it proposes in offset order
//! (one queue, one task), each write conditional on its leadership (`with_leader`).
//!
//! Each stretch of readiness is an *epoch*. A batch is confirmed when the local log (which
//! holds only applied, so committed, entries) reaches its end within the epoch that
//! proposed it. Losing leadership, or any proposal failing, ends the epoch: every
//! unconfirmed batch of it fails (the client retries, and the dedup window stores a retried
//! publish once), and the broker drops the topic, whose consumers then reconnect to the new
//! leader. A deposed leader therefore never confirms anything it proposed after it lost the
//! leadership.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use openraft::async_runtime::WatchReceiver;
use openraft::impls::ProgressResponder;
use openraft::type_config::alias::CommittedLeaderIdOf;
use openraft::ServerState;
use tokio::sync::{mpsc, watch};

use super::command::TopicCommand;
use super::log::ChannelProxy;
use super::machine::TopicMachine;
use super::{TopicConfig, TopicRaft};
use crate::cluster::NodeId;
use crate::message::{StoredMessage, TopicName};
use crate::storage::{AppendWaker, Durable, LeaderHint, StorageError};

/// How often the leader ships the channel events its consumers recorded.
pub const CHANNEL_SHIP_EVERY: Duration = Duration::from_millis(5);

/// Whether this node leads the topic, and since when.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeadState {
    /// Bumped at each start and end of a stretch of readiness.
    pub epoch: u64,
    pub ready: bool,
}

#[derive(Debug, Default)]
struct Lead {
    state: LeadState,
    /// The offset the next batch gets.
    next: u64,
    leader_id: Option<CommittedLeaderIdOf<TopicConfig>>,
    /// The term of the leadership the epoch belongs to.
    term: Option<u64>,
}

/// Called when this node stops leading a topic it was serving.
#[derive(Clone)]
pub struct OnLost(pub Arc<dyn Fn(&TopicName) + Send + Sync>);

impl std::fmt::Debug for OnLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnLost")
    }
}

/// A topic's group on this node.
pub struct TopicGroup {
    pub name: TopicName,
    node: NodeId,
    pub raft: TopicRaft,
    pub machine: TopicMachine,
    lead: Mutex<Lead>,
    lead_tx: watch::Sender<LeadState>,
    proposals: mpsc::UnboundedSender<(u64, TopicCommand)>,
    channels: Mutex<Vec<Weak<ChannelProxy>>>,
    waker: Mutex<Option<AppendWaker>>,
    on_lost: OnLost,
    election_timeout: Duration,
}

impl std::fmt::Debug for TopicGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicGroup")
            .field("name", &self.name)
            .field("lead", &self.lead_state())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TopicGroup {
    /// Wraps a started Raft and spawns its tasks: the proposer and the watcher of its
    /// leadership. They end when the group is dropped or its Raft shuts down.
    pub fn start(
        name: TopicName,
        node: NodeId,
        raft: TopicRaft,
        machine: TopicMachine,
        on_lost: OnLost,
        election_timeout: Duration,
    ) -> Arc<TopicGroup> {
        let (tx, rx) = mpsc::unbounded_channel();
        let group = Arc::new(TopicGroup {
            name,
            node,
            raft: raft.clone(),
            machine,
            lead: Mutex::new(Lead::default()),
            lead_tx: watch::Sender::new(LeadState::default()),
            proposals: tx,
            channels: Mutex::new(Vec::new()),
            waker: Mutex::new(None),
            on_lost,
            election_timeout,
        });
        tokio::spawn(propose(Arc::downgrade(&group), raft, rx));
        tokio::spawn(watch_leadership(Arc::downgrade(&group)));
        group
    }

    pub fn lead_state(&self) -> LeadState {
        lock(&self.lead).state
    }

    /// Follows the leadership: changes when this node becomes ready or stops leading.
    pub fn lead_watch(&self) -> watch::Receiver<LeadState> {
        self.lead_tx.subscribe()
    }

    /// The leader this node knows of, if any.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    pub fn not_leader(&self, leader: Option<LeaderHint>) -> StorageError {
        match leader.or_else(|| {
            self.current_leader()
                .filter(|&l| l != self.node)
                .map(|node| LeaderHint {
                    node,
                    ..LeaderHint::default()
                })
        }) {
            Some(leader) => StorageError::NotLeader {
                topic: self.name.to_string(),
                leader,
            },
            None => StorageError::Unavailable {
                topic: self.name.to_string(),
                reason: "its group is electing a leader".into(),
            },
        }
    }

    /// Gives `messages` their offsets and proposes them; see the module's notes.
    pub(super) fn propose_append(
        &self,
        messages: Vec<StoredMessage>,
    ) -> Result<Range<u64>, StorageError> {
        let mut frames = Vec::new();
        for message in &messages {
            let frame = crate::storage::file::to_frame(message).ok_or_else(|| {
                StorageError::io(
                    self.name.as_str(),
                    "append",
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "a message too large to store",
                    ),
                )
            })?;
            frames.extend_from_slice(&frame);
        }
        let count = messages.len() as u64;
        let mut lead = lock(&self.lead);
        if !lead.state.ready {
            return Err(self.not_leader(None));
        }
        let first = lead.next;
        let command = TopicCommand::Append {
            first,
            count: count as u32,
            frames,
        };
        self.proposals
            .send((lead.state.epoch, command))
            .map_err(|_| self.not_leader(None))?;
        lead.next += count;
        Ok(first..first + count)
    }

    /// Proposes `command` if this node is the ready leader; it is dropped otherwise.
    pub(super) fn propose_now(&self, command: TopicCommand) -> Result<(), StorageError> {
        let lead = lock(&self.lead);
        if !lead.state.ready {
            return Err(self.not_leader(None));
        }
        self.proposals
            .send((lead.state.epoch, command))
            .map_err(|_| self.not_leader(None))
    }

    /// The offset the next batch gets while leading; the local log's end otherwise.
    pub(super) fn next_offset(&self) -> u64 {
        let lead = lock(&self.lead);
        match lead.state.ready {
            true => lead.next,
            false => self.machine.log().end(),
        }
    }

    /// Resolves once everything below `end` is committed and applied, within the current
    /// epoch; fails if the epoch ends first.
    pub(super) fn durable(&self, end: u64) -> Durable {
        let epoch = self.lead_state().epoch;
        let mut lead = self.lead_tx.subscribe();
        let mut applied = self.machine.applied_end();
        let error = self.not_leader(None);
        let topic = self.name.to_string();
        Box::pin(async move {
            loop {
                let state = *lead.borrow_and_update();
                if state.epoch != epoch || !state.ready {
                    return Err(match error {
                        StorageError::Unavailable { .. } => StorageError::Unavailable {
                            topic,
                            reason: "the leader changed before the publish was committed".into(),
                        },
                        e => e,
                    });
                }
                if *applied.borrow_and_update() >= end {
                    return Ok(());
                }
                tokio::select! {
                    r = lead.changed() => if r.is_err() { return Err(StorageError::Unavailable { topic, reason: "the group stopped".into() }) },
                    r = applied.changed() => if r.is_err() { return Err(StorageError::Unavailable { topic, reason: "the group stopped".into() }) },
                }
            }
        })
    }

    pub(super) fn set_waker(&self, waker: AppendWaker) {
        *lock(&self.waker) = Some(waker);
    }

    pub(super) fn add_channel(&self, proxy: &Arc<ChannelProxy>) {
        let mut channels = lock(&self.channels);
        channels.retain(|c| c.strong_count() > 0);
        channels.push(Arc::downgrade(proxy));
    }

    fn ship_channels(&self) {
        let channels: Vec<Arc<ChannelProxy>> = lock(&self.channels)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for channel in channels {
            channel.ship();
        }
    }

    /// Ends the epoch of `epoch` if it is still current: a proposal of it failed.
    fn end_epoch(&self, epoch: u64, why: &str) {
        let was_ready = {
            let mut lead = lock(&self.lead);
            if lead.state.epoch != epoch {
                return;
            }
            let was_ready = lead.state.ready;
            lead.state = LeadState {
                epoch: epoch + 1,
                ready: false,
            };
            lead.leader_id = None;
            lead.term = None;
            self.lead_tx.send_replace(lead.state);
            was_ready
        };
        if was_ready {
            tracing::info!(topic = %self.name, why, "no longer serving the topic");
            (self.on_lost.0)(&self.name);
        }
    }

    /// Becomes ready to propose: commits an entry of this term, then takes the local log's
    /// end as the next offset.
    fn lead_term(&self) -> Option<u64> {
        lock(&self.lead).term
    }

    async fn become_ready(&self) {
        let term = self.raft.metrics().borrow_watched().current_term;
        let blank = tokio::time::timeout(self.election_timeout * 4, self.raft.write_blank()).await;
        match blank {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::info!(topic = %self.name, error = %e, "not ready to lead the topic");
                return;
            }
            Err(_) => {
                tracing::info!(topic = %self.name, "not ready to lead the topic: its first entry was not committed in time");
                return;
            }
        }
        let leader = match self.raft.as_leader() {
            Ok(leader) => leader,
            Err(e) => {
                tracing::info!(topic = %self.name, error = %e, "not ready to lead the topic");
                return;
            }
        };
        let leader_id = leader.to_committed_leader_id();
        let mut lead = lock(&self.lead);
        if lead.state.ready {
            return;
        }
        lead.state = LeadState {
            epoch: lead.state.epoch + 1,
            ready: true,
        };
        lead.next = self.machine.log().end();
        lead.leader_id = Some(leader_id);
        lead.term = Some(term);
        self.lead_tx.send_replace(lead.state);
        tracing::info!(topic = %self.name, next = lead.next, "leading the topic");
    }

    fn leader_id_for(&self, epoch: u64) -> Option<CommittedLeaderIdOf<TopicConfig>> {
        let lead = lock(&self.lead);
        (lead.state.ready && lead.state.epoch == epoch)
            .then_some(lead.leader_id)
            .flatten()
    }

    /// Stops the group's Raft (the node is shutting down).
    pub async fn shutdown(&self) {
        let epoch = self.lead_state().epoch;
        self.end_epoch(epoch, "shutting down");
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(topic = %self.name, error = %e, "stopping the topic's group");
        }
    }
}

/// Sends the leader's proposals to Raft in order, each conditional on the leadership of
/// its epoch, and ends the epoch when one fails.
async fn propose(
    group: Weak<TopicGroup>,
    raft: TopicRaft,
    mut rx: mpsc::UnboundedReceiver<(u64, TopicCommand)>,
) {
    let mut pending = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = rx.recv() => {
                let Some((epoch, command)) = next else { return };
                let Some(g) = group.upgrade() else { return };
                let Some(leader_id) = g.leader_id_for(epoch) else { continue };
                let (responder, result) = ProgressResponder::complete_only();
                let sent = raft.write(command).with_leader(leader_id).responder(responder).await;
                if sent.is_err() {
                    g.end_epoch(epoch, "the group stopped");
                    continue;
                }
                pending.push(async move { (epoch, result.await) });
            }
            Some((epoch, result)) = pending.next(), if !pending.is_empty() => {
                let failed = !matches!(result, Ok(Ok(_)));
                if failed {
                    if let Some(g) = group.upgrade() {
                        g.end_epoch(epoch, "a proposal was not committed under this leadership");
                    }
                }
            }
        }
    }
}

/// Follows the group's Raft: becomes ready when it leads, ends the epoch when it stops,
/// wakes the topic's channels as batches are applied, and ships channel events while
/// leading.
async fn watch_leadership(group: Weak<TopicGroup>) {
    let Some((raft, node, mut applied)) = group
        .upgrade()
        .map(|g| (g.raft.clone(), g.node, g.machine.applied_end()))
    else {
        return;
    };
    let mut metrics = raft.metrics();
    let mut ship = tokio::time::interval(CHANNEL_SHIP_EVERY);
    ship.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(g) = group.upgrade() else { return };
        let (state, leader, term) = {
            let m = metrics.borrow_watched();
            (m.state, m.current_leader, m.current_term)
        };
        let leading = state == ServerState::Leader && leader == Some(node);
        let lead = g.lead_state();
        if leading && !lead.ready {
            // Tried again at each tick until it takes (the first entry of a new leader can
            // be refused while its leadership settles).
            g.become_ready().await;
        } else if !leading && lead.ready {
            g.end_epoch(lead.epoch, "another node leads the topic now");
        } else if leading && lead.ready && g.lead_term() != Some(term) {
            g.end_epoch(lead.epoch, "a new term began");
        }
        let tick = leading;
        drop(g);
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            r = applied.changed() => {
                if r.is_err() { return }
                let waker = group.upgrade().and_then(|g| lock(&g.waker).clone());
                if let Some(waker) = waker {
                    waker();
                }
            }
            _ = ship.tick(), if tick => {
                if let Some(g) = group.upgrade() {
                    g.ship_channels();
                }
            }
        }
    }
}
