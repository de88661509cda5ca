//! The broker core: topics, their channels, and the consumers that share each channel.
//!
//! [`Broker`] is the one handle every surface (QUIC sessions, the HTTP API, later NSQ) calls.
//! It knows nothing of QUIC or the codec. Delivery decisions are made by the sans-IO
//! [`delivery::ChannelState`]; this module is the thin async shell around it: it owns the
//! locks, wakes consumers, and runs one timer task per channel for deadlines and deferred
//! messages. There is no global scan.
//!
//! # Locking
//! `topics` → a topic's `channels` → a channel's `state` → the topic log's own lock. Locks are
//! `std::sync::Mutex`/`RwLock`, never held across `.await`.

mod access;
mod dedup;
pub mod delivery;
mod error;
pub mod hooks;
mod judge;
mod lookahead;
pub mod ordering;
mod placement;
pub mod pool;
mod publish;
mod published;
mod routing;
mod stats;
mod subscription;
mod topic;

pub use access::{Access, AuthMethod, Grants, Operation, Permission, Principal, ANONYMOUS};
pub use delivery::{ConsumerId, DeadReason, Now};
pub use error::{BrokerError, ErrorKind, Limit, SettleOp};
pub use hooks::{
    Admission, Decision, Gate, Hooks, Judging, MessageRef, RouteLimits, Router, Routing,
};
pub use pool::{Lane, PluginPool, PoolClosed};
pub use publish::{Forward, Forwarding, Stored};
pub use published::Published;
pub use stats::{AccessStats, BrokerStats, ChannelStats, ConsumerStats, TopicStats};
pub use subscription::Subscription;

pub use crate::message::ChannelSettings;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::message::{ChannelName, NewMessage, StoredMessage, TopicName};
use crate::storage::{Storage, StorageError};
use topic::{Channel, Topic};

/// How long a message whose dead-letter copy could not be stored waits before it is
/// delivered (and, when it fails again, dead-lettered) again.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(5);

/// Limits and defaults for delivery. Tuned for NSQ-like workloads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Deadline for a delivered message when the consumer asks for none.
    #[serde(with = "crate::config::duration")]
    pub msg_timeout: Duration,
    /// Longest message timeout a consumer may ask for.
    #[serde(with = "crate::config::duration")]
    pub max_msg_timeout: Duration,
    /// Highest RDY a consumer may set.
    pub max_rdy: u32,
    /// Longest REQ delay.
    #[serde(with = "crate::config::duration")]
    pub max_req_delay: Duration,
    /// Longest DPUB delay.
    #[serde(with = "crate::config::duration")]
    pub max_defer: Duration,
    /// Deliveries after which a failing message goes to `<topic>.dead`, for channels that set
    /// none. 0 means unlimited.
    pub max_attempts: u16,
    /// How long a topic remembers the ids (`quiver-msg-id`) of published messages, for
    /// topics whose rules set none; `0` turns deduplication off.
    #[serde(with = "crate::config::duration")]
    pub dedup_window: Duration,
    /// Most ids one topic's window holds (about 64 bytes each); at the cap the oldest are
    /// forgotten early.
    pub dedup_max_ids: usize,
}

/// Topic options set from outside the wire protocol (the rules file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicSettings {
    /// The publish dedup window; None takes the broker's `dedup_window`.
    pub dedup_window: Option<Duration>,
}

/// Shortest message timeout a consumer may ask for.
pub const MIN_MSG_TIMEOUT: Duration = Duration::from_secs(1);

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            msg_timeout: Duration::from_secs(60),
            max_msg_timeout: Duration::from_secs(15 * 60),
            max_rdy: 2500,
            max_req_delay: Duration::from_secs(3600),
            max_defer: Duration::from_secs(3600),
            max_attempts: 0,
            dedup_window: Duration::from_secs(120),
            dedup_max_ids: 1_000_000,
        }
    }
}

/// The broker: a cheap, cloneable handle.
#[derive(Clone, Debug)]
pub struct Broker {
    shared: Arc<Shared>,
}

/// A [`Broker`] handle that does not keep it alive.
#[derive(Clone, Debug)]
pub struct WeakBroker(std::sync::Weak<Shared>);

impl WeakBroker {
    pub fn upgrade(&self) -> Option<Broker> {
        self.0.upgrade().map(|shared| Broker { shared })
    }
}

#[derive(Debug)]
struct Shared {
    config: BrokerConfig,
    storage: Arc<dyn Storage>,
    topics: Mutex<HashMap<TopicName, Arc<Topic>>>,
    next_consumer: AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    started: Instant,
    /// Routers, filters and samplers; none until [`Broker::set_hooks`].
    hooks: std::sync::OnceLock<Arc<dyn Hooks>>,
    /// Who may do what; none (everything allowed) until [`Broker::set_access`].
    access: std::sync::OnceLock<Arc<dyn Access>>,
    /// Open subscriptions and their principals, re-checked when the grants change.
    subscribers: Mutex<HashMap<ConsumerId, subscription::Revocable>>,
    access_stats: stats::AccessCounters,
    /// Threads for plugin calls; made on first use.
    pool: std::sync::OnceLock<PluginPool>,
    /// Sends publishes to their topic's leader, on a cluster node.
    forward: std::sync::OnceLock<Arc<dyn publish::Forward>>,
}

impl Broker {
    /// A handle that does not keep the broker alive.
    pub fn downgrade(&self) -> WeakBroker {
        WeakBroker(Arc::downgrade(&self.shared))
    }

    /// A broker over `storage`. Must be called inside a tokio runtime: channels spawn their
    /// timer tasks on it.
    pub fn new(config: BrokerConfig, storage: Arc<dyn Storage>) -> Broker {
        let broker = Broker {
            shared: Arc::new(Shared {
                config,
                storage,
                topics: Mutex::new(HashMap::new()),
                next_consumer: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                started: Instant::now(),
                hooks: std::sync::OnceLock::new(),
                access: std::sync::OnceLock::new(),
                subscribers: Mutex::new(HashMap::new()),
                access_stats: stats::AccessCounters::default(),
                pool: std::sync::OnceLock::new(),
                forward: std::sync::OnceLock::new(),
            }),
        };
        broker.spawn(trim_periodically(broker.clone()));
        broker
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    /// Installs the routers, filters and samplers. Once per broker, before serving: the
    /// hooks swap their own rules on reload. Returns false if hooks were already set.
    pub fn set_hooks(&self, hooks: Arc<dyn Hooks>) -> bool {
        self.shared.hooks.set(hooks).is_ok()
    }

    fn hooks(&self) -> Option<&dyn Hooks> {
        self.shared.hooks.get().map(|h| &**h)
    }

    /// Sizes the plugin pool: `threads` threads for router, filter and sampler calls. Before
    /// the first plugin call; returns false if the pool exists already.
    pub fn set_plugin_threads(&self, threads: usize) -> bool {
        self.shared.pool.set(PluginPool::new(threads)).is_ok()
    }

    pub(crate) fn pool(&self) -> &PluginPool {
        self.shared
            .pool
            .get_or_init(|| PluginPool::new(default_plugin_threads()))
    }

    /// Sets a topic's options, creating it if needed. Used to apply the rules file.
    pub fn configure_topic(
        &self,
        topic: &TopicName,
        settings: TopicSettings,
    ) -> Result<(), BrokerError> {
        let window = settings.dedup_window.unwrap_or(self.config().dedup_window);
        self.topic(topic)?
            .set_dedup(window, self.config().dedup_max_ids);
        Ok(())
    }

    /// The topic, created if it doesn't exist.
    fn topic(&self, name: &TopicName) -> Result<Arc<Topic>, BrokerError> {
        let topic = {
            let mut topics = self.topics();
            if let Some(topic) = topics.get(name) {
                return Ok(topic.clone());
            }
            let topic = self.open_topic(name)?;
            topics.insert(name.clone(), topic.clone());
            topic
        };
        // A log that commits later (a replicated one) wakes the channels when it does.
        let weak = Arc::downgrade(&topic);
        topic.log.set_append_waker(Arc::new(move || {
            if let Some(topic) = weak.upgrade() {
                topic.wake_channels();
            }
        }));
        // A replicated topic opened on a new leader brings its channels' state.
        if !topic.log.existing_channels().is_empty() && topic.channel_count() == 0 {
            topic.restore_channels(self)?;
        }
        Ok(topic)
    }

    fn open_topic(&self, name: &TopicName) -> Result<Arc<Topic>, BrokerError> {
        let log = self
            .shared
            .storage
            .open_topic(name)
            .map_err(|source| BrokerError::Storage {
                topic: name.clone(),
                source,
            })?;
        let config = self.config();
        let topic = Arc::new(Topic::new(
            name.clone(),
            log,
            self.shared.shutdown.child_token(),
            (config.dedup_window, config.dedup_max_ids),
        )?);
        tracing::info!(topic = %name, "topic opened");
        Ok(topic)
    }

    /// Re-opens every topic the storage holds, with its channels and their delivery state:
    /// what was in flight when the broker stopped is ready again, attempts kept. Call once,
    /// before serving.
    pub fn recover(&self) -> Result<(), BrokerError> {
        let names = self.shared.storage.existing_topics();
        let (mut channels, mut recovered) = (0, 0);
        for name in &names {
            let topic = self.topic(name)?;
            recovered += topic.restore_channels(self)?;
            channels += topic.channel_count();
        }
        if !names.is_empty() {
            tracing::info!(
                topics = names.len(),
                channels,
                recovered,
                "recovered; messages that were in flight will be delivered again"
            );
        }
        Ok(())
    }

    /// After [`Broker::wait_stopped`]: saves every channel's state and closes the storage
    /// cleanly, so that the next start is fast.
    pub fn close(&self) -> Result<(), StorageError> {
        let topics: Vec<Arc<Topic>> = self.topics().values().cloned().collect();
        for topic in &topics {
            topic.checkpoint_channels();
        }
        self.shared.storage.close()
    }

    fn existing_topic(&self, name: &TopicName) -> Result<Arc<Topic>, BrokerError> {
        self.topics()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::TopicNotFound(name.clone()))
    }

    fn topics(&self) -> MutexGuard<'_, HashMap<TopicName, Arc<Topic>>> {
        // Every critical section on this map is a single insert, remove or lookup.
        self.shared.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn create_topic(&self, who: &Principal, name: &TopicName) -> Result<(), BrokerError> {
        self.administer(who, Operation::Admin(name, None), "create topic")?;
        self.topic(name).map(drop)
    }

    /// Deletes a topic with all its channels and messages. Its consumers' streams end.
    pub fn delete_topic(&self, who: &Principal, name: &TopicName) -> Result<(), BrokerError> {
        self.administer(who, Operation::Admin(name, None), "delete topic")?;
        let topic = self
            .topics()
            .remove(name)
            .ok_or_else(|| BrokerError::TopicNotFound(name.clone()))?;
        topic.delete();
        self.shared
            .storage
            .delete_topic(name)
            .map_err(|source| BrokerError::Storage {
                topic: name.clone(),
                source,
            })?;
        tracing::info!(topic = %name, "topic deleted");
        Ok(())
    }

    pub fn pause_topic(
        &self,
        who: &Principal,
        name: &TopicName,
        paused: bool,
    ) -> Result<(), BrokerError> {
        let action = if paused {
            "pause topic"
        } else {
            "unpause topic"
        };
        self.administer(who, Operation::Admin(name, None), action)?;
        self.existing_topic(name)?.set_paused(paused)
    }

    /// Drops every message of the topic that no consumer holds in flight, on every channel.
    pub fn empty_topic(&self, who: &Principal, name: &TopicName) -> Result<(), BrokerError> {
        self.administer(who, Operation::Admin(name, None), "empty topic")?;
        self.existing_topic(name)?.empty();
        Ok(())
    }

    /// Creates a channel (and its topic) if needed, with the settings given; an existing
    /// channel takes the settings that are set.
    pub fn create_channel(
        &self,
        who: &Principal,
        topic: &TopicName,
        channel: &ChannelName,
        settings: ChannelSettings,
    ) -> Result<(), BrokerError> {
        self.administer(
            who,
            Operation::Admin(topic, Some(channel)),
            "create channel",
        )?;
        self.configure_channel(topic, channel, settings)
    }

    /// Creates the channel (and its topic) if needed and sets the options given; `None`
    /// leaves an option as it is. Used to apply the rules file.
    pub fn configure_channel(
        &self,
        topic: &TopicName,
        channel: &ChannelName,
        settings: ChannelSettings,
    ) -> Result<(), BrokerError> {
        if let Some(timeout) = settings.msg_timeout {
            check_range(
                Limit::MsgTimeout,
                timeout,
                MIN_MSG_TIMEOUT,
                self.config().max_msg_timeout,
            )?;
        }
        let topic = self.topic(topic)?;
        let channel = topic.channel(channel, self)?;
        let released = {
            let mut state = channel.state();
            let mut options = state.options();
            if let Some(max) = settings.max_attempts {
                options.max_attempts = max;
            }
            if let Some(timeout) = settings.msg_timeout {
                options.msg_timeout_ms = timeout.as_millis() as u64;
            }
            if let Some(ordering) = settings.ordering {
                options.ordering = ordering;
            }
            if options != state.options() {
                state.set_options(options);
            }
            state.take_released()
        };
        if released {
            // A new ordering let go of messages that waited behind their keys.
            channel.wake_all();
        }
        Ok(())
    }

    pub fn delete_channel(
        &self,
        who: &Principal,
        topic: &TopicName,
        channel: &ChannelName,
    ) -> Result<(), BrokerError> {
        self.administer(
            who,
            Operation::Admin(topic, Some(channel)),
            "delete channel",
        )?;
        let t = self.existing_topic(topic)?;
        t.remove_channel(channel)
            .ok_or_else(|| BrokerError::ChannelNotFound {
                topic: topic.clone(),
                channel: channel.clone(),
            })?;
        self.drop_if_unused(&t);
        Ok(())
    }

    pub fn pause_channel(
        &self,
        who: &Principal,
        topic: &TopicName,
        channel: &ChannelName,
        paused: bool,
    ) -> Result<(), BrokerError> {
        let action = if paused {
            "pause channel"
        } else {
            "unpause channel"
        };
        self.administer(who, Operation::Admin(topic, Some(channel)), action)?;
        let channel = self.existing_channel(topic, channel)?;
        {
            let mut state = channel.state();
            let options = state.options();
            state.set_options(crate::storage::ChannelOptions { paused, ..options });
        }
        if !paused {
            channel.wake_all();
        }
        Ok(())
    }

    pub fn empty_channel(
        &self,
        who: &Principal,
        topic: &TopicName,
        channel: &ChannelName,
    ) -> Result<(), BrokerError> {
        self.administer(who, Operation::Admin(topic, Some(channel)), "empty channel")?;
        let t = self.existing_topic(topic)?;
        let channel = self.existing_channel(topic, channel)?;
        channel.state().empty(t.log.end());
        channel.wake_all();
        Ok(())
    }

    fn existing_channel(
        &self,
        topic: &TopicName,
        channel: &ChannelName,
    ) -> Result<Arc<Channel>, BrokerError> {
        self.existing_topic(topic)?
            .existing_channel(channel)
            .ok_or_else(|| BrokerError::ChannelNotFound {
                topic: topic.clone(),
                channel: channel.clone(),
            })
    }

    /// Removes an `#ephemeral` topic once its last channel is gone.
    fn drop_if_unused(&self, topic: &Arc<Topic>) {
        if !topic.name.is_ephemeral() {
            return;
        }
        let mut topics = self.topics();
        if topic.channel_count() == 0
            && topics
                .get(&topic.name)
                .is_some_and(|t| Arc::ptr_eq(t, topic))
        {
            topics.remove(&topic.name);
            topic.delete();
        }
    }

    /// Copies dead-lettered messages to `<topic>.dead`, with headers saying why. The source
    /// channel lets go of them once the copies are durable; if they can't be stored, the
    /// messages stay in the channel and are tried again later.
    fn dead_letter(&self, topic: &Topic, channel: &Arc<Channel>, dead: Vec<topic::DeadMessage>) {
        if dead.is_empty() {
            return;
        }
        let offsets: Vec<u64> = dead.iter().map(|d| d.letter.offset).collect();
        let channel_name = &channel.name;
        let target = self
            .hooks()
            .and_then(|h| h.dead_letter_topic(&topic.name, channel_name))
            .unwrap_or_else(|| topic.name.dead_letter());
        let messages = dead
            .into_iter()
            .map(|d| {
                let mut m = NewMessage {
                    headers: d.message.headers.clone(),
                    body: d.message.body.clone(),
                };
                m.headers
                    .push("quiver-dead-reason", d.letter.reason.as_str());
                m.headers.push("quiver-dead-topic", topic.name.as_str());
                m.headers.push("quiver-dead-channel", channel_name.as_str());
                m.headers
                    .push("quiver-dead-attempts", d.letter.attempts.to_string());
                m
            })
            .collect::<Vec<_>>();
        let count = messages.len();
        let (name, channel_name) = (topic.name.clone(), channel_name.clone());
        let settle = move |channel: &Channel, result: Result<(), String>| {
            let mut state = channel.state();
            match result {
                Ok(()) => {
                    offsets.iter().for_each(|&o| state.dead_settled(o));
                    let released = state.take_released();
                    drop(state);
                    if released {
                        // The next message of a key is ready, for any consumer.
                        channel.wake_all();
                    }
                    tracing::debug!(topic = %name, channel = %channel_name, count, "dead-lettered");
                }
                Err(e) => {
                    let now = Now::current();
                    for &o in &offsets {
                        state.dead_failed(o, DEAD_LETTER_RETRY, now);
                    }
                    channel.rearm_if_needed(&state);
                    tracing::error!(topic = %name, channel = %channel_name, count, error = %e, "dead-lettering failed; will retry");
                }
            }
        };
        let opened = match self.topic(&target) {
            // On a cluster node the dead-letter topic may not exist yet, or be led by
            // another node: it is created through the cluster and the copies are
            // forwarded to its leader, as a publish would be.
            Err(BrokerError::Storage {
                source: StorageError::NotLeader { .. } | StorageError::Unavailable { .. },
                ..
            }) => {
                let (broker, channel) = (self.clone(), channel.clone());
                self.spawn(async move {
                    let who = Principal::internal();
                    let result = match broker
                        .append_anywhere(&who, &target, messages, Duration::ZERO)
                        .await
                    {
                        Ok(published) => published.confirmed().await.map(drop),
                        Err(e) => Err(e),
                    };
                    settle(&channel, result.map_err(|e| e.to_string()));
                });
                return;
            }
            opened => opened,
        };
        let mut durable = match opened.and_then(|t| t.append(stamp(messages, Duration::ZERO))) {
            Ok((_, durable)) => durable,
            Err(e) => return settle(channel, Err(e.to_string())),
        };
        // Under most fsync policies the copy is durable already; otherwise wait for it.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match durable.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => settle(channel, r.map_err(|e| e.to_string())),
            std::task::Poll::Pending => {
                let channel = channel.clone();
                self.spawn(async move {
                    let result = durable.await.map_err(|e| e.to_string());
                    settle(&channel, result);
                });
            }
        }
    }

    /// Statistics for one topic or all of them, sorted by name.
    pub fn stats(
        &self,
        who: &Principal,
        topic: Option<&TopicName>,
    ) -> Result<BrokerStats, BrokerError> {
        match topic {
            Some(name) => self.authorize(who, Operation::Admin(name, None))?,
            None => self.authorize(who, Operation::AdminAll)?,
        }
        let topics: Vec<Arc<Topic>> = match topic {
            Some(name) => vec![self.existing_topic(name)?],
            None => self.topics().values().cloned().collect(),
        };
        let mut topics: Vec<TopicStats> = topics.iter().map(|t| t.stats()).collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(BrokerStats {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.shared.started.elapsed().as_secs(),
            access: self.shared.access_stats.snapshot(),
            topics,
        })
    }

    /// Starts shutdown: new publishes and subscriptions are refused, and subscriptions see
    /// [`Broker::shutting_down`] fire so they can requeue and close.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    pub async fn shutting_down(&self) {
        self.shared.shutdown.cancelled().await
    }

    /// Waits for the channel timer tasks to end after [`Broker::shutdown`].
    pub async fn wait_stopped(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await
    }

    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.shared.tasks.spawn(task);
    }
}

/// How often every topic's log is trimmed below its channels' ack floors, besides every
/// [`topic::TRIM_EVERY`] appends: so that space comes back even when nothing is published
/// (after a full disk, say).
const TRIM_PERIOD: Duration = Duration::from_secs(1);

async fn trim_periodically(broker: Broker) {
    let mut tick = tokio::time::interval(TRIM_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = broker.shutting_down() => return,
            _ = tick.tick() => {}
        }
        let topics: Vec<Arc<Topic>> = broker.topics().values().cloned().collect();
        topics.iter().for_each(|t| t.trim());
    }
}

#[cfg(test)]
mod tests;

fn check_range(
    limit: Limit,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), BrokerError> {
    if value < min || value > max {
        return Err(BrokerError::OutOfRange {
            limit,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// Refuses a publish with an empty or over-long message id, before anything is stored.
fn check_msg_ids(messages: &[NewMessage]) -> Result<(), BrokerError> {
    for message in messages {
        if let Some(id) = message.msg_id() {
            crate::message::validate_msg_id(id).map_err(BrokerError::BadMessage)?;
        }
    }
    Ok(())
}

/// Adds the publish time and DPUB due time to new messages.
fn stamp(messages: Vec<NewMessage>, delay: Duration) -> Vec<StoredMessage> {
    let now = wall_clock();
    let deliver_at_ms = if delay.is_zero() {
        0
    } else {
        now.as_millis() as u64 + delay.as_millis() as u64
    };
    let timestamp_ns = now.as_nanos() as u64;
    messages
        .into_iter()
        .map(|m| StoredMessage {
            timestamp_ns,
            deliver_at_ms,
            headers: m.headers,
            body: m.body,
            route: None,
        })
        .collect()
}

/// The plugin pool's size when the config does not say: one thread per core, at least two,
/// so that one stuck plugin never holds them all.
pub fn default_plugin_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .max(2)
}

fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

impl Now {
    /// The current time, from tokio's clock (so paused-time tests work) and the wall clock.
    pub fn current() -> Now {
        Now {
            mono: tokio::time::Instant::now().into_std(),
            wall_ms: wall_clock().as_millis() as u64,
        }
    }
}
