//! A consumer's handle on its channel: take messages within its credit, settle them, and
//! requeue whatever it still holds when dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::delivery::{ConsumerId, SettleError, Taken, Verdict};
use super::hooks::{Admission, MessageRef};
use super::topic::{read_dead, Channel, Topic};
use super::{check_range, Broker, BrokerError, Limit, Now, Principal, SettleOp};
use crate::message::{ChannelName, MessageId, StoredMessage, TopicName};

/// One consumer of one channel. Dropping it is the disconnect: everything in flight to it is
/// requeued at once, and an `#ephemeral` channel left without consumers is deleted.
#[derive(Debug)]
pub struct Subscription {
    broker: Broker,
    topic: Arc<Topic>,
    channel: Arc<Channel>,
    id: ConsumerId,
    waker: Arc<Notify>,
    /// Cancelled when the consumer's permission is revoked; the reason is in `revoked_for`.
    revoked: CancellationToken,
    revoked_for: Arc<std::sync::Mutex<Option<BrokerError>>>,
}

/// What the broker keeps of an open subscription to end it when its permission is revoked.
#[derive(Debug)]
pub(super) struct Revocable {
    pub(super) principal: Arc<Principal>,
    pub(super) topic: TopicName,
    pub(super) channel: ChannelName,
    token: CancellationToken,
    reason: Arc<std::sync::Mutex<Option<BrokerError>>>,
}

impl Revocable {
    pub(super) fn revoke(&self, why: BrokerError) {
        let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        reason.get_or_insert(why);
        self.token.cancel();
    }
}

impl Subscription {
    pub(super) fn new(
        broker: Broker,
        topic: Arc<Topic>,
        channel: Arc<Channel>,
        id: ConsumerId,
    ) -> Self {
        // `Topic::join` registered the waker before handing out the channel.
        let waker = channel.waker(id).unwrap_or_default();
        Subscription {
            broker,
            topic,
            channel,
            id,
            waker,
            revoked: CancellationToken::new(),
            revoked_for: Arc::default(),
        }
    }

    /// The handle the broker keeps to end this subscription if `principal` loses its
    /// permission.
    pub(super) fn revocable(&self, principal: Arc<Principal>) -> Revocable {
        Revocable {
            principal,
            topic: self.topic.name.clone(),
            channel: self.channel.name.clone(),
            token: self.revoked.clone(),
            reason: Arc::clone(&self.revoked_for),
        }
    }

    pub fn id(&self) -> ConsumerId {
        self.id
    }

    pub fn topic(&self) -> &TopicName {
        &self.topic.name
    }

    pub fn channel(&self) -> &ChannelName {
        &self.channel.name
    }

    /// The wire id of the message at `offset`.
    pub fn message_id(&self, offset: u64) -> MessageId {
        MessageId::new(self.topic.incarnation, offset)
    }

    /// Moves up to `max` messages into flight to this consumer, within its RDY credit. Each
    /// message the channel's cursor reaches is first checked against its route and put to
    /// the channel's filters and samplers: ahead of time, outside the state lock, when the
    /// channel has any (see `lookahead.rs`).
    pub fn take(&self, max: usize, out: &mut Vec<Taken>) -> usize {
        let topic = &*self.topic;
        let channel = &self.channel.name;
        let gate = self
            .broker
            .hooks()
            .and_then(|hooks| hooks.gate(&topic.name, channel));
        let verdict = |offset: u64, admission: Admission| match admission {
            Admission::Keep => Verdict::Keep,
            Admission::Skip => Verdict::Skip,
            Admission::DeadLetter { reason } => {
                tracing::debug!(topic = %topic.name, %channel, offset, %reason, "dead-lettered by the channel's plugins");
                Verdict::DeadLetter
            }
        };
        let judge = |offset: u64, message: &StoredMessage| -> Verdict {
            if !message.is_for(channel) {
                return Verdict::Skip;
            }
            match &gate {
                Some(gate) => verdict(offset, gate.admit(&message_ref(topic, offset, message))),
                None => Verdict::Keep,
            }
        };
        // The messages of a batch that are for this channel go to its plugins in one call.
        let judge_batch = |batch: &[(u64, Arc<StoredMessage>)], out: &mut Vec<Verdict>| {
            let Some(gate) = &gate else {
                out.extend(batch.iter().map(|(o, m)| judge(*o, m)));
                return;
            };
            let refs: Vec<MessageRef<'_>> = batch
                .iter()
                .filter(|(_, m)| m.is_for(channel))
                .map(|(o, m)| message_ref(topic, *o, m))
                .collect();
            let mut admissions = Vec::with_capacity(refs.len());
            gate.admit_batch(&refs, &mut admissions);
            let mut admissions = admissions.into_iter();
            for (offset, message) in batch {
                let admission = match message.is_for(channel) {
                    true => admissions.next(),
                    false => None,
                };
                out.push(match admission {
                    Some(admission) => verdict(*offset, admission),
                    None => Verdict::Skip,
                });
            }
        };
        // Plugins on the pool: only verdicts the judge task made are used; the take stops
        // at the first message without one, and asks for more.
        if gate.as_ref().is_some_and(|g| g.lane().is_some()) {
            return self.take_judged(max, out);
        }
        // With plugins, judge what this take will read before locking the state.
        let mut ahead = Some(self.channel.lookahead());
        if gate.is_none() {
            // Verdicts of plugins no longer bound are not used.
            if let Some(mut stale) = ahead.take() {
                stale.clear();
            }
        }
        if let Some(ahead) = ahead.as_mut() {
            let (cursor, credit) = {
                let state = self.channel.state();
                (state.cursor(), state.credit(self.id))
            };
            if credit > 0 && !topic.is_paused() {
                ahead.judge(cursor, credit.min(max), &*topic.log, &judge_batch);
            }
        }
        let mut admit = |offset: u64, message: &StoredMessage| -> Verdict {
            ahead
                .as_mut()
                .and_then(|ahead| ahead.verdict(offset))
                .unwrap_or_else(|| judge(offset, message))
        };
        let given = self.take_admitted(max, out, &mut admit);
        drop(ahead);
        given
    }

    /// Takes under the state lock with `admit` deciding each message the cursor reaches,
    /// then dead-letters what it said to.
    fn take_admitted(
        &self,
        max: usize,
        out: &mut Vec<Taken>,
        admit: &mut dyn FnMut(u64, &StoredMessage) -> Verdict,
    ) -> usize {
        let topic = &*self.topic;
        let mut letters = Vec::new();
        let (given, dead) = {
            let mut state = self.channel.state();
            let given = state.take(
                self.id,
                &*topic.log,
                Now::current(),
                topic.is_paused(),
                max,
                admit,
                out,
                &mut letters,
            );
            if given > 0 || state.deferred_count() > 0 {
                self.channel.rearm_if_needed(&state);
            }
            if state.stopped_early() {
                // More to look at: come back after the other tasks had a turn.
                self.waker.notify_one();
            }
            (given, read_dead(&*topic.log, letters))
        };
        self.broker.dead_letter(topic, &self.channel, dead);
        given
    }

    /// [`Subscription::take`] for a channel whose plugins run on the pool: no plugin is
    /// called here; messages without a verdict wait for the channel's judge task.
    fn take_judged(&self, max: usize, out: &mut Vec<Taken>) -> usize {
        let mut missing = false;
        let given = {
            let mut ahead = self.channel.lookahead();
            let mut admit = |offset: u64, _: &StoredMessage| -> Verdict {
                ahead.verdict(offset).unwrap_or_else(|| {
                    missing = true;
                    Verdict::Pending
                })
            };
            self.take_admitted(max, out, &mut admit)
        };
        // Judge on while the consumers work through these verdicts, so that the next take
        // finds some: a take that used verdicts or ran out of them asks for more.
        if missing || given > 0 {
            self.broker.request_judging(&self.topic, &self.channel);
        }
        given
    }

    pub fn fin(&self, id: MessageId) -> Result<(), BrokerError> {
        let offset = self.offset(id, SettleOp::Fin)?;
        let (was_full, released, credit) = {
            let mut state = self.channel.state();
            let was_full = state
                .fin(self.id, offset)
                .map_err(|source| settle(SettleOp::Fin, id, source))?;
            (was_full, state.take_released(), state.credit(self.id))
        };
        if released && credit == 0 {
            // The next message of the key is ready, and this consumer cannot take it.
            self.channel.wake_all();
        } else if released || was_full {
            // This consumer has the credit the FIN freed: it takes the key's next message,
            // with those of the other FINs it is reading, in one batch.
            self.waker.notify_one();
        }
        Ok(())
    }

    pub fn req(&self, id: MessageId, delay: Duration) -> Result<(), BrokerError> {
        check_range(
            Limit::ReqDelay,
            delay,
            Duration::ZERO,
            self.broker.config().max_req_delay,
        )?;
        let offset = self.offset(id, SettleOp::Req)?;
        let dead = {
            let mut state = self.channel.state();
            let dead = state
                .req(self.id, offset, delay, Now::current())
                .map_err(|source| settle(SettleOp::Req, id, source))?;
            self.channel.rearm_if_needed(&state);
            read_dead(&*self.topic.log, dead.into_iter().collect())
        };
        // The message is ready again, maybe for another consumer, and this one has credit.
        self.channel.wake_all();
        self.broker.dead_letter(&self.topic, &self.channel, dead);
        Ok(())
    }

    pub fn touch(&self, id: MessageId) -> Result<(), BrokerError> {
        let offset = self.offset(id, SettleOp::Touch)?;
        self.channel
            .state()
            .touch(self.id, offset, Now::current())
            .map_err(|source| settle(SettleOp::Touch, id, source))
    }

    /// Sets this consumer's credit (RDY).
    pub fn set_rdy(&self, rdy: u32) -> Result<(), BrokerError> {
        let max = self.broker.config().max_rdy;
        if rdy > max {
            return Err(BrokerError::RdyTooHigh { rdy, max });
        }
        if self.channel.state().set_rdy(self.id, rdy) {
            self.waker.notify_one();
        }
        Ok(())
    }

    /// CLS: no new deliveries. Returns true if nothing is in flight any more.
    pub fn close(&self) -> bool {
        self.channel.state().close_consumer(self.id)
    }

    pub fn is_drained(&self) -> bool {
        self.channel.state().is_drained(self.id)
    }

    /// Resolves when there may be something to take: new messages, requeues, or credit.
    pub async fn wait(&self) {
        self.waker.notified().await
    }

    /// Resolves when the channel or topic is deleted, the broker shuts down, or the
    /// consumer's permission to subscribe is revoked.
    pub async fn ended(&self) {
        tokio::select! {
            _ = self.channel.deleted.cancelled() => {}
            _ = self.revoked.cancelled() => {}
        }
    }

    /// Why [`Subscription::ended`] fired.
    pub fn end_reason(&self) -> BrokerError {
        let revoked = self
            .revoked_for
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(reason) = revoked {
            return reason;
        }
        if self.broker.is_shutting_down() {
            BrokerError::ShuttingDown
        } else if self.topic.is_released() {
            BrokerError::Storage {
                topic: self.topic.name.clone(),
                source: crate::storage::StorageError::Unavailable {
                    topic: self.topic.name.to_string(),
                    reason: "this node stopped leading it; subscribe again where it is served"
                        .into(),
                },
            }
        } else {
            BrokerError::Deleted
        }
    }

    fn offset(&self, id: MessageId, op: SettleOp) -> Result<u64, BrokerError> {
        if id.incarnation() != self.topic.incarnation {
            return Err(settle(op, id, SettleError::NotInFlight));
        }
        Ok(id.offset())
    }
}

fn settle(op: SettleOp, id: MessageId, source: SettleError) -> BrokerError {
    BrokerError::Settle { op, id, source }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.broker.checks_access() {
            self.broker.subscribers().remove(&self.id);
        }
        let dead = {
            let mut state = self.channel.state();
            let dead = state.remove_consumer(self.id, Now::current());
            read_dead(&*self.topic.log, dead)
        };
        self.channel.senders().remove(&self.id);
        self.channel.wake_all();
        self.broker.dead_letter(&self.topic, &self.channel, dead);
        if self.topic.remove_if_abandoned(&self.channel) {
            tracing::info!(topic = %self.topic.name, channel = %self.channel.name, "ephemeral channel deleted");
            self.broker.drop_if_unused(&self.topic);
        }
    }
}

/// What a channel's plugins see of the message at `offset` of `topic`'s log.
pub(super) fn message_ref<'a>(
    topic: &'a Topic,
    offset: u64,
    message: &'a StoredMessage,
) -> MessageRef<'a> {
    MessageRef {
        topic: &topic.name,
        id: MessageId::new(topic.incarnation, offset),
        timestamp_ns: message.timestamp_ns,
        // A message is judged once, before its first delivery on the channel.
        attempts: 1,
        headers: &message.headers,
        body: &message.body,
    }
}
