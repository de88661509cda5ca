//! Judging a channel's next messages on the plugin pool, ahead of its consumers.
//!
//! A channel whose filters and samplers run on the pool has at most one judge task. A
//! consumer whose take reaches a message without a verdict stops there and asks for one
//! ([`Broker::request_judging`]); the task judges batches until the verdicts cover what the
//! consumers can take (their credit together), wakes them after each batch, and ends. When a
//! plugin of the chain is restarting after a fault, the task waits for it (up to the gate's
//! `max_wait`) and goes on by itself, so the messages it held are judged as soon as it is
//! back, with no new subscription or credit needed.
//!
//! # Invariants
//! - One judge task per channel at a time (`Channel::judging`), so verdicts are recorded in
//!   offset order and every message is judged once.
//! - No lock is held while plugins run: the batch is read under the look-ahead lock, judged
//!   on the pool, and recorded under it again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::delivery::Verdict;
use super::hooks::{Admission, Judging};
use super::topic::{Channel, Topic};
use super::Broker;
use crate::message::StoredMessage;

/// The shortest wait before asking a restarting plugin again.
const MIN_WAIT: Duration = Duration::from_millis(1);

impl Broker {
    /// Starts the channel's judge task unless one runs already.
    pub(super) fn request_judging(&self, topic: &Arc<Topic>, channel: &Arc<Channel>) {
        channel.judge_again.store(true, Ordering::SeqCst);
        if channel.judging.swap(true, Ordering::SeqCst) {
            return;
        }
        let (broker, topic, channel) = (self.clone(), Arc::clone(topic), Arc::clone(channel));
        self.spawn(async move { broker.judge_ahead(topic, channel).await });
    }

    async fn judge_ahead(self, topic: Arc<Topic>, channel: Arc<Channel>) {
        loop {
            channel.judge_again.store(false, Ordering::SeqCst);
            if self.judge_batch(&topic, &channel).await {
                channel.wake_all();
                continue;
            }
            channel.judging.store(false, Ordering::SeqCst);
            // Asked again after the last look: go on, unless another task took over.
            if !channel.judge_again.load(Ordering::SeqCst)
                || channel.judging.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
    }

    /// Judges one batch and records its verdicts. False when there was nothing to judge:
    /// no pooled gate, no credit, or verdicts enough already.
    async fn judge_batch(&self, topic: &Arc<Topic>, channel: &Arc<Channel>) -> bool {
        let Some(gate) = self
            .hooks()
            .and_then(|hooks| hooks.gate(&topic.name, &channel.name))
        else {
            channel.lookahead().clear();
            return false;
        };
        let Some(lane) = gate.lane().cloned() else {
            return false;
        };
        if topic.is_paused() {
            return false;
        }
        let (cursor, credit) = {
            let state = channel.state();
            (state.cursor(), state.total_credit())
        };
        if credit == 0 {
            return false;
        }
        let Some(mut batch) = channel.lookahead().plan(cursor, credit, &*topic.log) else {
            return false;
        };
        // A message waits for a restarting plugin at most `max_wait` without the judging
        // getting anywhere; each message decided starts the wait over.
        let max_wait = gate.max_wait();
        let mut waiting_since = Instant::now();
        let mut judging = Judging::default();
        loop {
            let may_wait = waiting_since.elapsed() < max_wait;
            let before = judging.left();
            let (gate, job_topic, name) =
                (Arc::clone(&gate), Arc::clone(topic), channel.name.clone());
            let job = move || {
                let refs: Vec<_> = batch
                    .iter()
                    .filter(|(_, m)| m.is_for(&name))
                    .map(|(offset, m)| super::subscription::message_ref(&job_topic, *offset, m))
                    .collect();
                let wait = gate.judge(&refs, &mut judging, may_wait);
                drop(refs);
                (batch, judging, wait)
            };
            let done = tokio::select! {
                done = self.pool().run(&lane, job) => done,
                _ = self.shared.shutdown.cancelled() => return false,
            };
            let Ok((back, judged, wait)) = done else {
                return false;
            };
            (batch, judging) = (back, judged);
            let Some(wait) = wait else { break };
            if judging.left() != before {
                waiting_since = Instant::now();
            }
            let wait = wait
                .min(max_wait.saturating_sub(waiting_since.elapsed()))
                .max(MIN_WAIT);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shared.shutdown.cancelled() => return false,
            }
        }
        let verdicts = verdicts(topic, channel, &batch, judging.admissions);
        let cursor = channel.state().cursor();
        channel.lookahead().record(cursor, verdicts);
        true
    }
}

/// One verdict per message of the batch: the gate's admission for the messages of the
/// channel, in order, and a skip for the others.
fn verdicts(
    topic: &Topic,
    channel: &Channel,
    batch: &[(u64, Arc<StoredMessage>)],
    admissions: Vec<Admission>,
) -> Vec<(u64, Verdict)> {
    let mut admissions = admissions.into_iter();
    batch
        .iter()
        .map(|(offset, message)| {
            let verdict = if !message.is_for(&channel.name) {
                Verdict::Skip
            } else {
                match admissions.next() {
                    Some(Admission::Keep) | None => Verdict::Keep,
                    Some(Admission::Skip) => Verdict::Skip,
                    Some(Admission::DeadLetter { reason }) => {
                        tracing::debug!(topic = %topic.name, channel = %channel.name, offset, %reason, "dead-lettered by the channel's plugins");
                        Verdict::DeadLetter
                    }
                }
            };
            (*offset, verdict)
        })
        .collect()
}
