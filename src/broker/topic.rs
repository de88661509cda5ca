//! Topics and channels: the async shell around [`ChannelState`].
//!
//! A topic owns its log and its channels. Publishing appends to the log and wakes the
//! channels' consumers; each consumer pulls from its channel when it has credit. Each channel
//! runs one timer task that sleeps until the channel's next deadline or due time.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut, Range};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::dedup::{self, Batch, DedupWindow, Screen};
use super::delivery::{ChannelState, ConsumerId, DeadLetter, Now};
use super::lookahead::Lookahead;
use super::stats::{ChannelStats, ConsumerStats, TopicStats};
use super::{Broker, BrokerError};
use crate::message::{ChannelName, StoredMessage, TopicName};
use crate::storage::{ChannelStore, Durable, StateEvent, TopicLog, TopicMeta};

/// Appends between two attempts to trim the log below every channel's ack floor.
pub(super) const TRIM_EVERY: u64 = 1024;

#[derive(Debug)]
pub(super) struct Topic {
    pub(super) name: TopicName,
    /// Random per topic incarnation; the high half of every message id.
    pub(super) incarnation: u64,
    pub(super) log: Arc<dyn TopicLog>,
    channels: RwLock<HashMap<ChannelName, Arc<Channel>>>,
    paused: AtomicBool,
    message_count: AtomicU64,
    appends_since_trim: AtomicU64,
    deleted: CancellationToken,
    /// Let go because another node serves it now (a cluster node that stopped leading it),
    /// not deleted: its consumers can subscribe again where it is served.
    released: AtomicBool,
    /// Held while offsets are assigned: a router sees the id its message will get.
    publish: Mutex<()>,
    /// Held by a routed publish from before its routing until its append (async: the
    /// routing runs on the plugin pool).
    routing_turn: tokio::sync::Mutex<()>,
    pub(super) routing: RoutingCounters,
    /// The ids of recent client publishes (see `dedup.rs`). Taken under `publish`.
    dedup: Mutex<DedupWindow>,
    /// Whether the window is on, read without its mutex: a client publish computes its ids'
    /// keys before taking the locks only then. Set under the mutex.
    dedup_on: AtomicBool,
}

/// What the topic's router did with publishes, since the broker started.
#[derive(Debug, Default)]
pub(super) struct RoutingCounters {
    /// Messages not stored: the router or its policies dropped them.
    pub(super) dropped: AtomicU64,
    /// Messages stored in the dead-letter topic instead (unrouted, or a router fault).
    pub(super) dead_lettered: AtomicU64,
    /// Publishes refused because a message was unrouted under `reject`.
    pub(super) rejected: AtomicU64,
    /// Copies forwarded to other topics.
    pub(super) forwarded: AtomicU64,
    /// Forwards refused because they would loop back to a topic the message came through.
    pub(super) forward_loops: AtomicU64,
}

/// A message that used up its attempts, read from the log before the channel let go of it.
#[derive(Debug)]
pub(super) struct DeadMessage {
    pub(super) letter: DeadLetter,
    pub(super) message: Arc<StoredMessage>,
}

impl Topic {
    /// The topic over `log`: recovered with its saved incarnation and pause state, or new
    /// with a fresh incarnation, which is saved.
    /// The dedup window (`dedup`: its length and cap) is rebuilt from the log's tail.
    pub(super) fn new(
        name: TopicName,
        log: Arc<dyn TopicLog>,
        deleted: CancellationToken,
        dedup: (Duration, usize),
    ) -> Result<Self, BrokerError> {
        let meta = match log.meta() {
            Some(meta) => meta,
            None => {
                let meta = TopicMeta {
                    incarnation: random_u64(),
                    paused: false,
                };
                log.save_meta(meta).map_err(|source| BrokerError::Storage {
                    topic: name.clone(),
                    source,
                })?;
                meta
            }
        };
        let mut window = DedupWindow::new(dedup.0, dedup.1);
        let rebuilt = window.rebuild(&*log, wall_ns());
        if rebuilt > 0 {
            tracing::info!(topic = %name, ids = rebuilt, "dedup window read back from the log");
        }
        Ok(Topic {
            dedup_on: AtomicBool::new(window.is_on()),
            dedup: Mutex::new(window),
            name,
            incarnation: meta.incarnation,
            log,
            channels: RwLock::new(HashMap::new()),
            paused: AtomicBool::new(meta.paused),
            message_count: AtomicU64::new(0),
            appends_since_trim: AtomicU64::new(0),
            deleted,
            released: AtomicBool::new(false),
            publish: Mutex::new(()),
            routing_turn: tokio::sync::Mutex::new(()),
            routing: RoutingCounters::default(),
        })
    }

    /// Wakes every channel: messages became readable.
    pub(super) fn wake_channels(&self) {
        for channel in self.channels().values() {
            channel.wake_all();
        }
    }

    /// Re-creates the channels whose state the log recovered. Returns how many messages they
    /// hold that had been delivered before the restart (and so may be delivered twice).
    pub(super) fn restore_channels(&self, broker: &Broker) -> Result<u64, BrokerError> {
        let mut recovered = 0;
        for name in self.log.existing_channels() {
            let channel = self.channel(&name, broker)?;
            recovered += channel.state().counters().recovered;
        }
        Ok(recovered)
    }

    /// Saves every channel's whole state, so that the next start replays nothing.
    pub(super) fn checkpoint_channels(&self) {
        for channel in self.channels().values() {
            let state = channel.state();
            channel.store.checkpoint(state.snapshot(Now::current()));
        }
    }

    /// Appends to the log and wakes every channel. Returns the offsets and a future that
    /// resolves when they are durable.
    pub(super) fn append(
        &self,
        messages: Vec<StoredMessage>,
    ) -> Result<(Range<u64>, Durable), BrokerError> {
        let lock = self.publish_lock();
        self.append_locked(&lock, messages)
    }

    /// Appends a client publish: the messages whose id is in the dedup window, or on an
    /// earlier message of the publish, are marked in `screen` and not stored. The durable
    /// future is None when nothing was appended.
    pub(super) fn append_client(
        &self,
        messages: Vec<StoredMessage>,
        screen: &mut Screen,
    ) -> Result<(Range<u64>, Option<Durable>), BrokerError> {
        let batch = self.client_batch(messages);
        let lock = self.publish_lock();
        let batch = self.screen_locked(&lock, batch, screen);
        self.append_batch_locked(&lock, batch)
    }

    /// A client publish as a batch, with its ids' keys when the dedup window is on: they are
    /// computed here, outside of the topic's locks ([`Topic::screen_locked`] computes them
    /// if the window was turned on since).
    pub(super) fn client_batch(&self, messages: Vec<StoredMessage>) -> Batch {
        if self.dedup_on.load(Ordering::Relaxed) {
            Batch::keyed(messages)
        } else {
            Batch::new(messages)
        }
    }

    /// Drops the duplicates of `batch` (see [`Topic::append_client`]).
    pub(super) fn screen_locked(
        &self,
        _lock: &MutexGuard<'_, ()>,
        batch: Batch,
        screen: &mut Screen,
    ) -> Batch {
        let mut window = self.dedup();
        if !window.is_on() {
            return batch;
        }
        dedup::screen(&mut window, batch, screen, wall_ns())
    }

    /// Appends what [`Topic::screen_locked`] kept and records its ids in the window.
    pub(super) fn append_batch_locked(
        &self,
        lock: &MutexGuard<'_, ()>,
        batch: Batch,
    ) -> Result<(Range<u64>, Option<Durable>), BrokerError> {
        let Some(first) = batch.messages.first() else {
            let end = self.log.end();
            return Ok((end..end, None));
        };
        let timestamp_ns = first.timestamp_ns;
        let (range, durable) = self.append_locked(lock, batch.messages)?;
        if !batch.keys.is_empty() {
            dedup::record(&mut self.dedup(), &batch.keys, range.start, timestamp_ns);
        }
        Ok((range, Some(durable)))
    }

    /// Sets the dedup window's length and cap; the window is read again from the log when
    /// either changed.
    pub(super) fn set_dedup(&self, window: Duration, max_ids: usize) {
        let _lock = self.publish_lock();
        let mut dedup = self.dedup();
        if dedup.window() == window && dedup.max_ids() == max_ids {
            return;
        }
        dedup.reconfigure(window, max_ids, &*self.log, wall_ns());
        self.dedup_on.store(dedup.is_on(), Ordering::Relaxed);
        tracing::info!(topic = %self.name, window = ?window, max_ids, ids = dedup.stats().ids, "dedup window set");
    }

    fn dedup(&self) -> MutexGuard<'_, DedupWindow> {
        // Every method leaves the window consistent before anything that could panic.
        self.dedup.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops other appends to this topic, so that `log.end()` is the next message's offset.
    pub(super) async fn routing_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.routing_turn.lock().await
    }

    pub(super) fn publish_lock(&self) -> MutexGuard<'_, ()> {
        self.publish.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Topic::append`] under a lock the caller took.
    pub(super) fn append_locked(
        &self,
        _lock: &MutexGuard<'_, ()>,
        messages: Vec<StoredMessage>,
    ) -> Result<(Range<u64>, Durable), BrokerError> {
        let count = messages.len() as u64;
        let range = self
            .log
            .append(messages)
            .map_err(|source| BrokerError::Storage {
                topic: self.name.clone(),
                source,
            })?;
        self.message_count.fetch_add(count, Ordering::Relaxed);
        for channel in self.channels().values() {
            channel.wake_all();
        }
        if self.appends_since_trim.fetch_add(count, Ordering::Relaxed) + count >= TRIM_EVERY {
            self.appends_since_trim.store(0, Ordering::Relaxed);
            self.trim();
        }
        let durable = self.log.durable(range.end);
        Ok((range, durable))
    }

    /// Drops the log prefix every channel has settled. A topic without channels keeps its
    /// messages for the first channel to come.
    /// The log also keeps the messages whose ids are in the dedup window, so that a restart
    /// can read the window back; the window's expired ids are dropped here too.
    pub(super) fn trim(&self) {
        let keep = {
            let mut dedup = self.dedup();
            dedup.expire(wall_ns());
            dedup.floor().filter(|_| !self.name.is_ephemeral())
        };
        let channels = self.channels();
        let floor = channels.values().map(|c| c.state().ack_floor()).min();
        if let Some(floor) = floor {
            self.log.trim(keep.map_or(floor, |k| k.min(floor)));
        }
    }

    /// The channel, created if needed, with `id` added as a consumer. Done under the channels
    /// lock so that an `#ephemeral` channel can't be removed between lookup and join.
    pub(super) fn join(
        &self,
        name: &ChannelName,
        id: ConsumerId,
        timeout: Option<Duration>,
        who: (String, String),
        broker: &Broker,
    ) -> Result<Arc<Channel>, BrokerError> {
        if self.deleted.is_cancelled() {
            return Err(BrokerError::Deleted);
        }
        let mut channels = self.channels_mut();
        let channel = self.channel_locked(&mut channels, name, broker)?;
        {
            // The consumer's own timeout, else the channel's, else the broker's.
            let mut state = channel.state();
            let timeout = timeout
                .or(state.msg_timeout)
                .unwrap_or(broker.config().msg_timeout);
            state.add_consumer(id, timeout);
        }
        channel
            .senders()
            .insert(id, (Arc::new(Notify::new()), who.0, who.1));
        Ok(channel)
    }

    pub(super) fn channel(
        &self,
        name: &ChannelName,
        broker: &Broker,
    ) -> Result<Arc<Channel>, BrokerError> {
        let mut channels = self.channels_mut();
        self.channel_locked(&mut channels, name, broker)
    }

    fn channel_locked(
        &self,
        channels: &mut HashMap<ChannelName, Arc<Channel>>,
        name: &ChannelName,
        broker: &Broker,
    ) -> Result<Arc<Channel>, BrokerError> {
        if let Some(channel) = channels.get(name) {
            return Ok(channel.clone());
        }
        let (store, record) =
            self.log
                .open_channel(name)
                .map_err(|source| BrokerError::Storage {
                    topic: self.name.clone(),
                    source,
                })?;
        let now = Now::current();
        let state = match record {
            Some(record) => ChannelState::restore(&record, &*self.log, now),
            None => {
                // The first channel inherits the backlog kept for it; later ones start at
                // the end.
                let cursor = if channels.is_empty() {
                    self.log.start()
                } else {
                    self.log.end()
                };
                let state = ChannelState::new(cursor, broker.config().max_attempts);
                // Its start is its first events, so that its journal replays from this
                // cursor even before a checkpoint is installed.
                let mut start = vec![
                    StateEvent::Empty(cursor),
                    StateEvent::Options(state.options()),
                ];
                store.record(&mut start, now.mono);
                state
            }
        };
        let channel = Arc::new(Channel {
            name: name.clone(),
            state: Mutex::new(state),
            store,
            senders: Mutex::new(HashMap::new()),
            timer: Notify::new(),
            deleted: self.deleted.child_token(),
            lookahead: Mutex::new(Lookahead::default()),
            judging: AtomicBool::new(false),
            judge_again: AtomicBool::new(false),
        });
        channels.insert(name.clone(), channel.clone());
        broker.spawn(run_timer(
            broker.clone(),
            self.name.clone(),
            channel.clone(),
        ));
        tracing::info!(topic = %self.name, channel = %name, "channel opened");
        Ok(channel)
    }

    pub(super) fn existing_channel(&self, name: &ChannelName) -> Option<Arc<Channel>> {
        self.channels().get(name).cloned()
    }

    pub(super) fn remove_channel(&self, name: &ChannelName) -> Option<Arc<Channel>> {
        let channel = self.channels_mut().remove(name)?;
        channel.deleted.cancel();
        self.forget_channel(name);
        tracing::info!(topic = %self.name, channel = %name, "channel deleted");
        Some(channel)
    }

    fn forget_channel(&self, name: &ChannelName) {
        if let Err(e) = self.log.delete_channel(name) {
            tracing::error!(topic = %self.name, channel = %name, error = %e, "removing the channel's saved state failed");
        }
    }

    /// Removes an `#ephemeral` channel if its last consumer has left.
    pub(super) fn remove_if_abandoned(&self, channel: &Arc<Channel>) -> bool {
        if !channel.name.is_ephemeral() {
            return false;
        }
        let mut channels = self.channels_mut();
        let abandoned = channel.state().consumer_count() == 0
            && channels
                .get(&channel.name)
                .is_some_and(|c| Arc::ptr_eq(c, channel));
        if abandoned {
            channels.remove(&channel.name);
            channel.deleted.cancel();
            self.forget_channel(&channel.name);
        }
        abandoned
    }

    pub(super) fn channel_count(&self) -> usize {
        self.channels().len()
    }

    pub(super) fn set_paused(&self, paused: bool) -> Result<(), BrokerError> {
        let meta = TopicMeta {
            incarnation: self.incarnation,
            paused,
        };
        self.log
            .save_meta(meta)
            .map_err(|source| BrokerError::Storage {
                topic: self.name.clone(),
                source,
            })?;
        self.paused.store(paused, Ordering::Relaxed);
        if !paused {
            self.channels().values().for_each(|c| c.wake_all());
        }
        Ok(())
    }

    pub(super) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    pub(super) fn empty(&self) {
        let end = self.log.end();
        for channel in self.channels().values() {
            channel.state().empty(end);
            channel.wake_all();
        }
        self.log.trim(end);
    }

    pub(super) fn delete(&self) {
        self.deleted.cancel();
        self.channels_mut().clear();
    }

    /// [`Topic::delete`] for a topic served elsewhere now; see `released`.
    pub(super) fn release(&self) {
        self.released.store(true, Ordering::Relaxed);
        self.delete();
    }

    pub(super) fn is_released(&self) -> bool {
        self.released.load(Ordering::Relaxed)
    }

    pub(super) fn stats(&self) -> TopicStats {
        let end = self.log.end();
        let log = self.log.stats();
        let dedup = self.dedup().stats();
        let channels = self.channels();
        let mut channel_stats: Vec<ChannelStats> =
            channels.values().map(|c| c.stats(end)).collect();
        channel_stats.sort_by(|a, b| a.name.cmp(&b.name));
        TopicStats {
            name: self.name.to_string(),
            paused: self.is_paused(),
            message_count: self.message_count.load(Ordering::Relaxed),
            depth: if channels.is_empty() {
                end - self.log.start()
            } else {
                0
            },
            retained_bytes: log.bytes,
            segments: log.segments,
            fsyncs: log.fsyncs,
            fsync_p50_us: log.fsync_p50_us,
            fsync_p99_us: log.fsync_p99_us,
            retention_dropped_messages: log.retention_dropped_messages,
            retention_dropped_bytes: log.retention_dropped_bytes,
            corrupt_records: log.corrupt_records,
            router_dropped: read(&self.routing.dropped),
            router_dead_lettered: read(&self.routing.dead_lettered),
            router_rejected: read(&self.routing.rejected),
            forwarded: read(&self.routing.forwarded),
            forward_loops: read(&self.routing.forward_loops),
            dedup_window_ms: dedup.window_ms,
            dedup_ids: dedup.ids,
            duplicates: dedup.duplicates,
            dedup_evicted: dedup.evicted,
            channels: channel_stats,
        }
    }

    fn channels(&self) -> RwLockReadGuard<'_, HashMap<ChannelName, Arc<Channel>>> {
        // Writers only insert or remove whole entries; a poisoned map is still consistent.
        self.channels.read().unwrap_or_else(|e| e.into_inner())
    }

    fn channels_mut(&self) -> RwLockWriteGuard<'_, HashMap<ChannelName, Arc<Channel>>> {
        self.channels.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A consumer's waker, remote address and principal.
type Sender = (Arc<Notify>, String, String);

/// One channel: its delivery state and where it is saved, its consumers' wakers, and its
/// timer.
#[derive(Debug)]
pub(super) struct Channel {
    pub(super) name: ChannelName,
    state: Mutex<ChannelState>,
    store: Arc<dyn ChannelStore>,
    /// Per consumer: the waker of its sending loop, and its remote address and principal
    /// for stats.
    senders: Mutex<HashMap<ConsumerId, Sender>>,
    timer: Notify,
    pub(super) deleted: CancellationToken,
    /// Verdicts of the channel's plugins on its next messages (see `lookahead.rs`).
    lookahead: Mutex<Lookahead>,
    /// A judge task runs for this channel (see `judge.rs`).
    pub(super) judging: AtomicBool,
    /// More judging was asked for since the judge task last looked.
    pub(super) judge_again: AtomicBool,
}

impl Channel {
    /// Locks the channel's state. The guard hands the changes made under it to the channel's
    /// store when it is dropped, still under the lock, so the journal is in state order.
    pub(super) fn state(&self) -> StateGuard<'_> {
        // ChannelState methods leave it consistent at every point where they could panic
        // (their asserts run before mutation), so a poisoned lock is still usable.
        StateGuard {
            state: self.state.lock().unwrap_or_else(|e| e.into_inner()),
            store: &*self.store,
        }
    }

    /// The channel's look-ahead verdicts. Take this lock before the state lock, never
    /// while holding it.
    pub(super) fn lookahead(&self) -> MutexGuard<'_, Lookahead> {
        // Verdicts are plain data, consistent at every step.
        self.lookahead.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn senders(&self) -> MutexGuard<'_, HashMap<ConsumerId, Sender>> {
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn waker(&self, id: ConsumerId) -> Option<Arc<Notify>> {
        self.senders().get(&id).map(|(n, ..)| n.clone())
    }

    pub(super) fn wake_all(&self) {
        self.senders().values().for_each(|(n, ..)| n.notify_one());
    }

    /// Wakes the timer if a deadline earlier than the one it sleeps until appeared.
    pub(super) fn rearm_if_needed(&self, state: &ChannelState) {
        if state.needs_rearm() {
            self.timer.notify_one();
        }
    }

    fn stats(&self, log_end: u64) -> ChannelStats {
        let senders = self.senders();
        let state = self.state();
        let counters = state.counters();
        let lag = self.store.lag(Instant::now());
        let mut consumers: Vec<ConsumerStats> = state
            .consumers()
            .map(|(id, c)| ConsumerStats {
                id,
                remote: senders.get(&id).map(|s| s.1.clone()).unwrap_or_default(),
                principal: senders.get(&id).map(|s| s.2.clone()).unwrap_or_default(),
                rdy: c.rdy,
                in_flight: c.in_flight,
                delivered: c.delivered,
                finished: c.finished,
                requeued: c.requeued,
                timed_out: c.timed_out,
            })
            .collect();
        consumers.sort_by_key(|c| c.id);
        ChannelStats {
            name: self.name.to_string(),
            paused: state.paused,
            depth: state.depth(log_end),
            in_flight: state.in_flight_count() as u64,
            deferred: state.deferred_count() as u64,
            message_count: counters.message_count,
            finished: counters.finished,
            requeued: counters.requeued,
            timed_out: counters.timed_out,
            dead_lettered: counters.dead_lettered,
            recovered: counters.recovered,
            skipped: counters.skipped,
            state_lag_ms: lag.current.as_millis() as u64,
            state_lag_max_ms: lag.max.as_millis() as u64,
            max_attempts: state.max_attempts,
            ordering: state.ordering().to_string(),
            active_keys: state.active_keys() as u64,
            waiting_on_key: state.waiting_on_key() as u64,
            consumers,
        }
    }
}

/// A locked [`ChannelState`] that records its changes in the channel's store when dropped
/// (which also writes older changes that are overdue), and checkpoints the whole state when
/// the store's journal has grown enough.
pub(super) struct StateGuard<'a> {
    state: MutexGuard<'a, ChannelState>,
    store: &'a dyn ChannelStore,
}

impl Deref for StateGuard<'_> {
    type Target = ChannelState;

    fn deref(&self) -> &ChannelState {
        &self.state
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut ChannelState {
        &mut self.state
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        // Also with no events: any access to the channel writes older events that are
        // overdue, so that a busy channel never trails its saved state by much.
        let had_events = !self.state.events.is_empty();
        self.store.record(&mut self.state.events, Instant::now());
        if had_events && self.store.wants_checkpoint() {
            let record = self.state.snapshot(Now::current());
            self.store.checkpoint(record);
        }
    }
}

/// Reads the messages behind dead letters while the caller still holds the channel state, so
/// that trimming can't drop them first.
pub(super) fn read_dead(log: &dyn TopicLog, dead: Vec<DeadLetter>) -> Vec<DeadMessage> {
    dead.into_iter()
        .filter_map(|letter| {
            let message = log.get(letter.offset)?;
            Some(DeadMessage { letter, message })
        })
        .collect()
}

/// The channel's timer: sleeps until the next in-flight deadline or deferred due time, then
/// requeues what expired and dead-letters what used up its attempts.
async fn run_timer(broker: Broker, topic_name: TopicName, channel: Arc<Channel>) {
    loop {
        let next = channel.state().arm();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = channel.deleted.cancelled() => return,
            _ = channel.timer.notified() => continue,
            _ = sleep => {}
        }
        let Ok(topic) = broker.existing_topic(&topic_name) else {
            return;
        };
        let (ready, dead) = {
            let mut state = channel.state();
            let expired = state.expire(Now::current());
            (expired.ready, read_dead(&*topic.log, expired.dead))
        };
        if ready > 0 || !dead.is_empty() {
            channel.wake_all();
        }
        broker.dead_letter(&topic, &channel, dead);
    }
}

fn wall_ns() -> u64 {
    super::wall_clock().as_nanos() as u64
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // The system RNG only fails if the OS has no entropy source at all; fall back to the clock.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        return super::wall_clock().as_nanos() as u64;
    }
    u64::from_ne_bytes(bytes)
}
