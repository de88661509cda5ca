//! Publishing to a topic with a router: its decisions made on the plugin pool within the
//! publish's budget, then the append of what it kept, its dead letters and its forwards.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dedup::{Batch, Key, Screen};
use super::hooks::{Decision, MessageRef, Router, Routing};
use super::topic::Topic;
use super::{Broker, BrokerError};
use crate::message::{ChannelName, MessageId, Route, StoredMessage, TopicName};
use crate::storage::Durable;

impl Broker {
    /// Appends `messages` to `topic` as its router decides, if it has one: to some channels,
    /// to none, to the dead-letter topic, or forwarded to other topics (routed there in turn).
    /// `path` holds the topics the messages were forwarded through, so that a forward never
    /// loops. Pushes one confirmation per append made. A client publish comes with a
    /// `screen`: its duplicates are dropped before the router sees them (under the routing
    /// turn) and again under the publish lock, for an unrouted append that raced it.
    pub(super) fn route_and_append<'a>(
        &'a self,
        topic: &'a Arc<Topic>,
        messages: Vec<StoredMessage>,
        mut screen: Option<&'a mut Screen>,
        path: &'a mut Vec<TopicName>,
        confirms: &'a mut Vec<(TopicName, Durable)>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Range<u64>, BrokerError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let Some(router) = self.hooks().and_then(|h| h.router(&topic.name)) else {
                let (range, durable) = match screen {
                    Some(screen) => topic.append_client(messages, screen)?,
                    None => topic.append(messages).map(|(r, d)| (r, Some(d)))?,
                };
                confirms.extend(durable.map(|d| (topic.name.clone(), d)));
                return Ok(range);
            };
            // Routed publishes to a topic take turns, so that the ids the router sees are
            // the ones the messages get.
            let _turn = topic.routing_turn().await;
            let base = topic.log.end();
            let mut batch = if screen.is_some() {
                topic.client_batch(messages)
            } else {
                Batch::new(messages)
            };
            if let Some(screen) = screen.as_deref_mut() {
                batch = topic.screen_locked(&topic.publish_lock(), batch, screen);
                if batch.messages.is_empty() {
                    return Ok(base..base);
                }
            }
            let (messages, routings) = self.route(&router, topic, batch.messages, base).await?;
            let routed = RoutedBatch {
                messages,
                indexes: batch.indexes,
                keys: batch.keys,
                routings,
                base,
            };
            self.append_routed(topic, routed, screen, path, confirms)
                .await
        })
    }

    /// The router's decision for each message, made on the plugin pool (inline for a router
    /// without a lane), within the publish's time budget; waits while the router restarts,
    /// up to its `max_wait`.
    async fn route(
        &self,
        router: &Arc<dyn Router>,
        topic: &Arc<Topic>,
        messages: Vec<StoredMessage>,
        base: u64,
    ) -> Result<(Vec<StoredMessage>, Vec<Routing>), BrokerError> {
        let mut routed = Routed {
            messages,
            routings: Vec::new(),
            kept: 0,
            cpu_spent: Duration::ZERO,
        };
        let Some(lane) = router.lane().cloned() else {
            routed.step(&**router, topic, base, false);
            return Ok((routed.messages, routed.routings));
        };
        // A publish waits for a restarting router at most `max_wait` without a message
        // being routed; each message routed starts the wait over.
        let limits = router.limits();
        let mut waiting_since = Instant::now();
        routed.routings.reserve(routed.messages.len());
        loop {
            let may_wait = waiting_since.elapsed() < limits.max_wait;
            let before = routed.routings.len();
            let (router, job_topic) = (Arc::clone(router), Arc::clone(topic));
            let job = move || {
                let wait = routed.step(&*router, &job_topic, base, may_wait);
                (routed, wait)
            };
            let (back, wait) = tokio::select! {
                done = self.pool().run(&lane, job) => done.map_err(|_| BrokerError::ShuttingDown)?,
                _ = self.shared.shutdown.cancelled() => return Err(BrokerError::ShuttingDown),
            };
            routed = back;
            let Some(wait) = wait else {
                return Ok((routed.messages, routed.routings));
            };
            if routed.routings.len() != before {
                waiting_since = Instant::now();
            }
            let wait = wait.min(limits.max_wait.saturating_sub(waiting_since.elapsed()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shared.shutdown.cancelled() => return Err(BrokerError::ShuttingDown),
            }
        }
    }

    /// Appends the messages their routings keep, under the topic's publish lock, and sorts
    /// out the rest: dead letters, forwards and the number dropped. A client publish's kept
    /// messages are screened for duplicates again, now under the lock.
    fn place_routed(
        &self,
        topic: &Arc<Topic>,
        routed: RoutedBatch,
        screen: Option<&mut Screen>,
        path: &[TopicName],
        confirms: &mut Vec<(TopicName, Durable)>,
    ) -> Result<Placed, BrokerError> {
        let RoutedBatch {
            messages,
            indexes,
            keys,
            routings,
            base,
        } = routed;
        let count = |counter: &AtomicU64, n: usize| {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        };
        let lock = topic.publish_lock();
        if topic.log.end() != base {
            tracing::debug!(topic = %topic.name, "appended to while routing; the ids the router saw are off");
        }
        let mut kept = Batch::default();
        let mut dead = Vec::new();
        let mut forwards: Vec<(TopicName, StoredMessage)> = Vec::new();
        let mut dropped = 0;
        let mut ensured: Vec<ChannelName> = Vec::new();
        // The ids' keys, when computed, go along with the messages kept.
        let mut keys = keys.into_iter();
        for ((mut message, routing), index) in messages.into_iter().zip(routings).zip(indexes) {
            let key = keys.next();
            match routing {
                Routing::All => {
                    kept.messages.push(message);
                    kept.indexes.push(index);
                    kept.keys.extend(key);
                }
                Routing::To { channels, forward } => {
                    for target in forward {
                        if target == topic.name || path.contains(&target) {
                            count(&topic.routing.forward_loops, 1);
                            tracing::warn!(topic = %topic.name, %target, "forward refused: it would loop");
                            continue;
                        }
                        forwards.push((target, message.clone()));
                    }
                    if !channels.is_empty() {
                        for name in &channels {
                            // Looked up once per batch, not once per message.
                            if !ensured.contains(name) {
                                if topic.existing_channel(name).is_none() {
                                    topic.channel(name, self)?;
                                }
                                ensured.push(name.clone());
                            }
                        }
                        message.route = Some(Route::from(channels));
                        kept.messages.push(message);
                        kept.indexes.push(index);
                        kept.keys.extend(key);
                    }
                }
                Routing::Drop => dropped += 1,
                Routing::DeadLetter { reason } => dead.push((message, reason)),
                Routing::Reject { reason } => {
                    count(&topic.routing.rejected, 1);
                    return Err(BrokerError::Unrouted {
                        topic: topic.name.clone(),
                        reason,
                    });
                }
            }
        }
        if let Some(screen) = screen {
            kept = topic.screen_locked(&lock, kept, screen);
        }
        let (range, durable) = topic.append_batch_locked(&lock, kept)?;
        confirms.extend(durable.map(|d| (topic.name.clone(), d)));
        Ok(Placed {
            range,
            dead,
            forwards,
            dropped,
        })
    }

    /// Appends the messages as their routings say, then their dead letters and forwards.
    async fn append_routed(
        &self,
        topic: &Arc<Topic>,
        routed: RoutedBatch,
        screen: Option<&mut Screen>,
        path: &mut Vec<TopicName>,
        confirms: &mut Vec<(TopicName, Durable)>,
    ) -> Result<Range<u64>, BrokerError> {
        let count = |counter: &AtomicU64, n: usize| {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        };
        let Placed {
            range,
            dead,
            forwards,
            dropped,
        } = self.place_routed(topic, routed, screen, path, confirms)?;
        count(&topic.routing.dropped, dropped);
        if !dead.is_empty() {
            count(&topic.routing.dead_lettered, dead.len());
            let target = self.topic(&topic.name.dead_letter())?;
            let letters = dead
                .into_iter()
                .map(|(mut m, reason)| {
                    m.headers.push("quiver-dead-reason", reason);
                    m.headers.push("quiver-dead-topic", topic.name.as_str());
                    m
                })
                .collect();
            let (_, durable) = target.append(letters)?;
            confirms.push((target.name.clone(), durable));
        }
        if !forwards.is_empty() {
            count(&topic.routing.forwarded, forwards.len());
            path.push(topic.name.clone());
            // One append per target topic, in the order the copies were made.
            let mut targets: Vec<(TopicName, Vec<StoredMessage>)> = Vec::new();
            for (name, message) in forwards {
                match targets.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, batch)) => batch.push(message),
                    None => targets.push((name, vec![message])),
                }
            }
            for (name, batch) in targets {
                let target = self.topic(&name)?;
                self.route_and_append(&target, batch, None, path, confirms)
                    .await?;
            }
            path.pop();
        }
        Ok(range)
    }
}

/// A publish its router decided: the messages, each one's index in the request and id's key
/// (when computed), their routings, and the log's end when the routing began.
struct RoutedBatch {
    messages: Vec<StoredMessage>,
    indexes: Vec<usize>,
    keys: Vec<Option<Key>>,
    routings: Vec<Routing>,
    base: u64,
}

/// What a routed publish left to do once its kept messages were appended.
struct Placed {
    range: Range<u64>,
    dead: Vec<(StoredMessage, String)>,
    forwards: Vec<(TopicName, StoredMessage)>,
    dropped: usize,
}

/// A publish being routed: its messages, the routings decided so far, how many of those
/// keep their message (the next kept message's offset is `base + kept`), and the CPU time
/// its routing used.
struct Routed {
    messages: Vec<StoredMessage>,
    routings: Vec<Routing>,
    kept: u64,
    cpu_spent: Duration,
}

impl Routed {
    /// Routes from the first undecided message on, on the calling thread. Returns how long
    /// to wait before going on when the router is restarting (only if `may_wait`).
    fn step(
        &mut self,
        router: &dyn Router,
        topic: &Topic,
        base: u64,
        may_wait: bool,
    ) -> Option<Duration> {
        let budget = router.limits().publish_timeout;
        let limited = budget != Duration::MAX;
        let wall_start = Instant::now();
        let cpu_start = if limited {
            crate::plugin::thread_cpu_time()
        } else {
            None
        };
        let used = |wall: Duration| match (cpu_start, crate::plugin::thread_cpu_time()) {
            (Some(from), Some(now)) => now.saturating_sub(from),
            _ => wall,
        };
        let mut overran = 0;
        let wait = loop {
            let Some(message) = self.messages.get(self.routings.len()) else {
                break None;
            };
            // CPU time never exceeds wall time, so the CPU clock is read only once the
            // wall clock says the budget may be spent.
            if overran == 0 && limited && self.cpu_spent + wall_start.elapsed() >= budget {
                let wall = wall_start.elapsed();
                let backstop = budget.saturating_mul(crate::plugin::WALL_BACKSTOP_FACTOR);
                if self.cpu_spent + used(wall) >= budget || wall >= backstop {
                    overran = self.messages.len() - self.routings.len();
                }
            }
            let routing = if overran > 0 {
                router.overrun()
            } else {
                let view = MessageRef {
                    topic: &topic.name,
                    id: MessageId::new(topic.incarnation, base + self.kept),
                    timestamp_ns: message.timestamp_ns,
                    attempts: 0,
                    headers: &message.headers,
                    body: &message.body,
                };
                match router.route(&view, may_wait) {
                    Decision::Made(routing) => routing,
                    Decision::Restarting(after) => break Some(after),
                }
            };
            let keeps = match &routing {
                Routing::All => true,
                Routing::To { channels, .. } => !channels.is_empty(),
                _ => false,
            };
            self.kept += u64::from(keeps);
            let rejected = matches!(routing, Routing::Reject { .. });
            self.routings.push(routing);
            if rejected {
                // The whole publish is refused; the rest need no routing.
                break None;
            }
        };
        if limited {
            self.cpu_spent += used(wall_start.elapsed());
        }
        if overran > 0 {
            router.count_overrun(overran);
        }
        wait
    }
}
