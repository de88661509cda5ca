//! A topic group's state machine: the topic's segment log and channel journals on this
//! replica.
//!
//! Applying is idempotent, so that the state machine never has to be saved in step with the
//! Raft log: after a restart openraft applies again every entry after the last snapshot, and
//! - a batch whose offsets the local log already holds is skipped (the local log is ahead of
//!   the snapshot, never behind what it acknowledged: a batch is appended before the entry
//!   counts as applied);
//! - channel events are replayed onto a state that already holds some of them: each event
//!   sets an offset's state (pending, settled) or moves the cursor forward, so replaying a
//!   suffix of the sequence in order ends in the same state.
//!
//! A snapshot is a [`Descriptor`] (the last applied log id, the membership, the local log's
//! range, the channels' records and the topic's metadata, in `snapshot` in the group's
//! directory), written once the local log and journals are as durable as it says; openraft
//! may then purge the Raft log up to it. A replica that installs one has fetched the
//! messages it covers first ([`catch_up`]).
//!
//! # Invariants
//! - The local log's end is the end of the last applied batch: batches are applied in log
//!   order at the offsets the leader gave them, and a gap is refused (it would mean a lost
//!   local write), which stops the group on this node rather than store out of place.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::command::{TopicCommand, TopicReply};
use super::{catch_up, TopicConfig};
use crate::cluster::NodeId;
use crate::message::{ChannelName, TopicName};
use crate::storage::journal::events_from_bytes;
use crate::storage::{ChannelRecord, ChannelStore, TopicLog, TopicMeta};

/// What a snapshot records: where the local state stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Descriptor {
    pub last_applied: Option<LogIdOf<TopicConfig>>,
    pub membership: StoredMembershipOf<TopicConfig>,
    /// The local log's range when the snapshot was made.
    pub start: u64,
    pub end: u64,
    /// The node that made it: a replica that lacks messages below `end` fetches them there.
    pub source: NodeId,
    /// Each channel's state ([`catch_up::record_to_bytes`]), by name.
    pub channels: Vec<(String, Vec<u8>)>,
    /// The topic's metadata (incarnation, paused), once an entry set it.
    pub meta: Option<(u64, bool)>,
}

/// A channel as this replica stores it.
#[derive(Debug)]
struct Replica {
    store: Arc<dyn ChannelStore>,
    record: ChannelRecord,
}

#[derive(Debug)]
struct State {
    topic: TopicName,
    log: Arc<dyn TopicLog>,
    channels: BTreeMap<ChannelName, Replica>,
    last_applied: Option<LogIdOf<TopicConfig>>,
    membership: StoredMembershipOf<TopicConfig>,
}

/// The state machine, shared with the group that reads from it.
#[derive(Debug, Clone)]
pub struct TopicMachine {
    node: NodeId,
    state: Arc<Mutex<State>>,
    dir: PathBuf,
    /// The local log's end after each applied batch.
    applied_end: Arc<watch::Sender<u64>>,
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn storage(e: crate::storage::StorageError) -> io::Error {
    io::Error::other(e.to_string())
}

impl TopicMachine {
    /// The state machine over `log`, the topic's local log, with the group's files in `dir`.
    pub fn open(
        topic: TopicName,
        node: NodeId,
        dir: &Path,
        log: Arc<dyn TopicLog>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let descriptor = match std::fs::read(dir.join("snapshot")) {
            Ok(bytes) => postcard::from_bytes::<Descriptor>(&bytes)
                .map_err(|e| invalid(format!("{}: {e}", dir.join("snapshot").display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Descriptor::default(),
            Err(e) => return Err(e),
        };
        let mut channels = BTreeMap::new();
        for name in log.existing_channels() {
            let (store, record) = log.open_channel(&name).map_err(storage)?;
            let record = record.unwrap_or_default();
            channels.insert(name, Replica { store, record });
        }
        let end = log.end();
        Ok(TopicMachine {
            node,
            state: Arc::new(Mutex::new(State {
                topic,
                log,
                channels,
                last_applied: descriptor.last_applied,
                membership: descriptor.membership,
            })),
            dir: dir.to_path_buf(),
            applied_end: Arc::new(watch::Sender::new(end)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the local log's end as batches are applied.
    pub fn applied_end(&self) -> watch::Receiver<u64> {
        self.applied_end.subscribe()
    }

    /// The local log, as applied so far.
    pub fn log(&self) -> Arc<dyn TopicLog> {
        self.lock().log.clone()
    }

    /// The topic's metadata, once an entry set it.
    pub fn meta(&self) -> Option<TopicMeta> {
        self.lock().log.meta()
    }

    /// The channels this replica knows, in name order.
    pub fn channel_names(&self) -> Vec<ChannelName> {
        self.lock().channels.keys().cloned().collect()
    }

    /// A channel's state as applied so far.
    pub fn channel_record(&self, name: &ChannelName) -> Option<ChannelRecord> {
        self.lock().channels.get(name).map(|r| r.record.clone())
    }

    fn save(&self, descriptor: &Descriptor) -> io::Result<()> {
        let bytes = postcard::to_stdvec(descriptor).map_err(invalid)?;
        let tmp = self.dir.join("snapshot.tmp");
        std::fs::write(&tmp, &bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("snapshot"))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn snapshot_of(descriptor: Descriptor) -> SnapshotOf<TopicConfig, Descriptor> {
        SnapshotOf::<TopicConfig, Descriptor> {
            meta: SnapshotMetaOf::<TopicConfig> {
                last_log_id: descriptor.last_applied,
                last_membership: descriptor.membership.clone(),
            },
            snapshot: descriptor,
        }
    }
}

impl State {
    fn apply(&mut self, command: &TopicCommand) -> io::Result<()> {
        match command {
            TopicCommand::Append {
                first,
                count,
                frames,
            } => {
                let end = self.log.end();
                let count = u64::from(*count);
                if first + count <= end {
                    return Ok(());
                }
                if *first > end {
                    return Err(invalid(format!(
                        "topic {}: a batch at {first} follows the local log's end {end}; a local write was lost",
                        self.topic
                    )));
                }
                let messages = crate::storage::file::from_frames(frames)
                    .ok_or_else(|| invalid(format!("topic {}: a damaged batch", self.topic)))?;
                if messages.len() as u64 != count {
                    return Err(invalid(format!(
                        "topic {}: a batch of {count} holds {}",
                        self.topic,
                        messages.len()
                    )));
                }
                let skip = (end - first) as usize;
                let range = self
                    .log
                    .append(messages.into_iter().skip(skip).collect())
                    .map_err(storage)?;
                debug_assert_eq!(range.end, first + count);
            }
            TopicCommand::Channel { name, events } => {
                let name = ChannelName::new(name).map_err(invalid)?;
                let mut events = events_from_bytes(events).map_err(invalid)?;
                if !self.channels.contains_key(&name) {
                    let (store, record) = self.log.open_channel(&name).map_err(storage)?;
                    let record = record.unwrap_or_default();
                    self.channels
                        .insert(name.clone(), Replica { store, record });
                }
                let Some(replica) = self.channels.get_mut(&name) else {
                    return Ok(());
                };
                for event in &events {
                    replica.record.apply(event);
                }
                replica.store.record(&mut events, Instant::now());
                if replica.store.wants_checkpoint() {
                    replica.store.checkpoint(replica.record.clone());
                }
            }
            TopicCommand::DeleteChannel { name } => {
                let name = ChannelName::new(name).map_err(invalid)?;
                self.channels.remove(&name);
                self.log.delete_channel(&name).map_err(storage)?;
            }
            TopicCommand::Meta {
                incarnation,
                paused,
            } => {
                let meta = TopicMeta {
                    incarnation: *incarnation,
                    paused: *paused,
                };
                self.log.save_meta(meta).map_err(storage)?;
            }
            TopicCommand::Trim { offset } => {
                let end = self.log.end();
                self.log.trim((*offset).min(end));
            }
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TopicConfig> for TopicMachine {
    type SnapshotData = Descriptor;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TopicConfig, Descriptor>, io::Error> {
        let (descriptor, log, stores) = {
            let state = self.lock();
            let descriptor = Descriptor {
                last_applied: state.last_applied,
                membership: state.membership.clone(),
                start: state.log.start(),
                end: state.log.end(),
                source: self.node,
                channels: state
                    .channels
                    .iter()
                    .map(|(name, r)| (name.to_string(), catch_up::record_to_bytes(&r.record)))
                    .collect(),
                meta: state.log.meta().map(|m| (m.incarnation, m.paused)),
            };
            let stores: Vec<(Arc<dyn ChannelStore>, ChannelRecord)> = state
                .channels
                .values()
                .map(|r| (r.store.clone(), r.record.clone()))
                .collect();
            (descriptor, state.log.clone(), stores)
        };
        // What the descriptor covers is made durable before the log behind it can go.
        log.durable(descriptor.end).await.map_err(storage)?;
        let now = Instant::now();
        for (store, record) in stores {
            store.checkpoint(record);
            store.flush(true, now).map_err(storage)?;
        }
        self.save(&descriptor)?;
        Ok(Self::snapshot_of(descriptor))
    }
}

impl RaftStateMachine<TopicConfig> for TopicMachine {
    type SnapshotData = Descriptor;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogIdOf<TopicConfig>>,
            StoredMembershipOf<TopicConfig>,
        ),
        io::Error,
    > {
        let state = self.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TopicConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let end = {
                let mut state = self.lock();
                match &entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(command) => {
                        if let Err(e) = state.apply(command) {
                            tracing::error!(topic = %state.topic, error = %e, "cannot apply a replicated entry; this replica stops");
                            return Err(e);
                        }
                    }
                    EntryPayload::Membership(m) => {
                        state.membership =
                            StoredMembershipOf::<TopicConfig>::new(Some(entry.log_id), m.clone());
                    }
                }
                state.last_applied = Some(entry.log_id);
                state.log.end()
            };
            self.applied_end.send_if_modified(|e| {
                let changed = *e != end;
                *e = end;
                changed
            });
            if let Some(responder) = responder {
                responder.send(TopicReply { end });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TopicConfig>,
        snapshot: Descriptor,
    ) -> Result<(), io::Error> {
        // The messages it covers were fetched before (see `catch_up`); what is left to take
        // is the channels' states and the metadata.
        let mut state = self.lock();
        if state.log.end() < snapshot.end {
            return Err(io::Error::other(format!(
                "topic {}: this replica holds up to {} and the snapshot needs {}; the messages between were not fetched",
                state.topic,
                state.log.end(),
                snapshot.end
            )));
        }
        let mut channels = BTreeMap::new();
        for (name, bytes) in &snapshot.channels {
            let name = ChannelName::new(name).map_err(invalid)?;
            let record = catch_up::record_from_bytes(bytes).map_err(invalid)?;
            let store = match state.channels.remove(&name) {
                Some(replica) => replica.store,
                None => state.log.open_channel(&name).map_err(storage)?.0,
            };
            store.checkpoint(record.clone());
            store.flush(true, Instant::now()).map_err(storage)?;
            channels.insert(name, Replica { store, record });
        }
        // Channels deleted since this replica last heard.
        for name in std::mem::replace(&mut state.channels, channels).into_keys() {
            state.log.delete_channel(&name).map_err(storage)?;
        }
        if let Some((incarnation, paused)) = snapshot.meta {
            let meta = TopicMeta {
                incarnation,
                paused,
            };
            if state.log.meta() != Some(meta) {
                state.log.save_meta(meta).map_err(storage)?;
            }
        }
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        let end = state.log.end();
        drop(state);
        self.save(&snapshot)?;
        self.applied_end.send_if_modified(|e| {
            let changed = *e != end;
            *e = end;
            changed
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TopicConfig, Descriptor>>, io::Error> {
        match std::fs::read(self.dir.join("snapshot")) {
            Ok(bytes) => {
                let descriptor: Descriptor = postcard::from_bytes(&bytes).map_err(invalid)?;
                Ok(Some(Self::snapshot_of(descriptor)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
