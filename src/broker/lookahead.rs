//! Judging a channel's next messages ahead of its cursor, outside the channel's state lock.
//!
//! A channel with filters or samplers decides each message once, in log order. A plugin call
//! takes about a microsecond; made under the state lock, a batch of them would stall every
//! FIN, REQ and TOUCH on the channel (and the tokio worker running it) for the whole batch.
//! So a consumer about to take first judges the next messages holding only the channel's
//! look-ahead lock, and [`super::delivery::ChannelState::take`] then uses those verdicts.
//!
//! # Invariants
//! - Lock order: the look-ahead lock, then the state lock; never the other way round.
//! - Every message is judged at most once: verdicts not used yet stay for the next take,
//!   verdicts below the cursor (the channel was emptied, or retention passed them) are
//!   dropped, and only a message with no verdict is judged under the state lock.
//! - Verdicts are for increasing offsets, so a channel's plugins still see its messages in
//!   log order.

use std::collections::VecDeque;
use std::sync::Arc;

use super::delivery::{Verdict, SCAN_BUDGET};
use crate::message::StoredMessage;
use crate::storage::TopicLog;

/// Messages judged at once when any are: plugins decide a batch in one call, which costs
/// about as much as deciding one message, so judging only what one small take needs would
/// pay that cost per message.
pub(super) const JUDGE_AT_ONCE: usize = 64;

/// Messages read from the log, by offset.
pub(super) type Batch = [(u64, Arc<StoredMessage>)];

/// Verdicts on messages at and after the cursor, in offset order.
#[derive(Debug, Default)]
pub(super) struct Lookahead {
    verdicts: VecDeque<(u64, Verdict)>,
}

impl Lookahead {
    /// Judges messages after those already judged (or from `cursor`) until `keep` of the
    /// pending verdicts say keep, [`SCAN_BUDGET`] are pending, or the log ends, reading at
    /// least [`JUDGE_AT_ONCE`] messages when it reads any (if the log has them), and no
    /// further than that. `judge` gets the messages read at once, in offset order, and
    /// appends one verdict for each, so that plugins can decide them in one call.
    pub(super) fn judge(
        &mut self,
        cursor: u64,
        keep: usize,
        log: &dyn TopicLog,
        judge: &dyn Fn(&Batch, &mut Vec<Verdict>),
    ) {
        while self.verdicts.front().is_some_and(|&(o, _)| o < cursor) {
            self.verdicts.pop_front();
        }
        let mut kept = self.kept();
        let mut from = self.verdicts.back().map_or(cursor, |&(o, _)| o + 1);
        let mut batch = Vec::new();
        let mut judged = Vec::new();
        while kept < keep && self.verdicts.len() < SCAN_BUDGET {
            let room = SCAN_BUDGET - self.verdicts.len();
            batch.clear();
            // No further than needed, give or take a batch: a message is judged as late as
            // that allows, under the rules in force then.
            log.read(from, (keep - kept).max(JUDGE_AT_ONCE).min(room), &mut batch);
            if batch.is_empty() {
                break;
            }
            judged.clear();
            judge(&batch, &mut judged);
            debug_assert_eq!(judged.len(), batch.len(), "one verdict per message");
            for (&(offset, _), &verdict) in batch.iter().zip(&judged) {
                kept += usize::from(verdict == Verdict::Keep);
                self.verdicts.push_back((offset, verdict));
                from = offset + 1;
            }
        }
    }

    /// The next messages to judge for a channel whose plugins run on the pool: after those
    /// judged already (or from `cursor`), unless `keep` pending verdicts keep their message,
    /// [`SCAN_BUDGET`] are pending, or the log has nothing more. At least
    /// [`JUDGE_AT_ONCE`] messages when there are that many.
    pub(super) fn plan(
        &mut self,
        cursor: u64,
        keep: usize,
        log: &dyn TopicLog,
    ) -> Option<Vec<(u64, Arc<StoredMessage>)>> {
        while self.verdicts.front().is_some_and(|&(o, _)| o < cursor) {
            self.verdicts.pop_front();
        }
        let kept = self.kept();
        if kept >= keep || self.verdicts.len() >= SCAN_BUDGET {
            return None;
        }
        let from = self.next(cursor);
        let room = SCAN_BUDGET - self.verdicts.len();
        let mut batch = Vec::new();
        log.read(from, (keep - kept).max(JUDGE_AT_ONCE).min(room), &mut batch);
        (!batch.is_empty()).then_some(batch)
    }

    /// Records verdicts judged from a [`Lookahead::plan`] batch. Dropped if they no longer
    /// follow on (the verdicts were cleared, or the cursor passed them, meanwhile).
    pub(super) fn record(&mut self, cursor: u64, judged: impl IntoIterator<Item = (u64, Verdict)>) {
        let mut expected = self.next(cursor);
        for (offset, verdict) in judged {
            if offset < expected {
                continue;
            }
            if offset > expected {
                return;
            }
            self.verdicts.push_back((offset, verdict));
            expected = offset + 1;
        }
    }

    /// The first offset without a verdict.
    fn next(&self, cursor: u64) -> u64 {
        self.verdicts
            .back()
            .map_or(cursor, |&(o, _)| (o + 1).max(cursor))
    }

    /// The verdict judged for `offset`, if any. Verdicts for earlier offsets are dropped:
    /// the cursor has passed them.
    pub(super) fn verdict(&mut self, offset: u64) -> Option<Verdict> {
        while let Some(&(o, verdict)) = self.verdicts.front() {
            if o > offset {
                return None;
            }
            self.verdicts.pop_front();
            if o == offset {
                return Some(verdict);
            }
        }
        None
    }

    /// Forgets every verdict.
    pub(super) fn clear(&mut self) {
        self.verdicts.clear();
    }

    fn kept(&self) -> usize {
        self.verdicts
            .iter()
            .filter(|(_, v)| *v == Verdict::Keep)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::message::{Headers, TopicName};
    use crate::storage::{MemoryStorage, Storage};

    /// A batch judge that judges each message by its offset.
    fn each(verdict: impl Fn(u64) -> Verdict) -> impl Fn(&Batch, &mut Vec<Verdict>) {
        move |batch, out| out.extend(batch.iter().map(|&(offset, _)| verdict(offset)))
    }

    fn log_of(n: u64) -> Arc<dyn TopicLog> {
        let log = MemoryStorage
            .open_topic(&TopicName::new("t").unwrap())
            .unwrap();
        let messages = (0..n)
            .map(|i| StoredMessage {
                timestamp_ns: 0,
                deliver_at_ms: 0,
                headers: Headers::new(),
                body: i.to_string().into(),
                route: None,
            })
            .collect();
        log.append(messages).unwrap();
        log
    }

    #[test]
    fn judges_ahead_once_each_in_order_and_keeps_what_is_unused() {
        let log = log_of(300);
        let seen = RefCell::new(Vec::new());
        let judge = each(|offset| {
            seen.borrow_mut().push(offset);
            if offset.is_multiple_of(3) {
                Verdict::Keep
            } else {
                Verdict::Skip
            }
        });
        let mut ahead = Lookahead::default();
        ahead.judge(0, 10, &*log, &judge);
        assert!(ahead.kept() >= 10);
        let judged = seen.borrow().len();
        assert_eq!(ahead.verdict(0), Some(Verdict::Keep));
        assert_eq!(
            ahead.verdict(2),
            Some(Verdict::Skip),
            "1 dropped on the way"
        );
        // The next look-ahead goes on after the last judged message, not from the cursor.
        ahead.judge(3, 200, &*log, &judge);
        let seen = seen.borrow();
        assert!(seen.len() > judged);
        assert!(
            seen.windows(2).all(|w| w[0] + 1 == w[1]),
            "each once, in order"
        );
        assert_eq!(*seen.last().unwrap(), 299);
        assert_eq!(ahead.verdict(1000), None);
    }

    #[test]
    fn judges_no_further_than_the_credit_needs_give_or_take_a_batch() {
        let log = log_of(200);
        let count = RefCell::new(0);
        let mut ahead = Lookahead::default();
        let judge = each(|_| {
            *count.borrow_mut() += 1;
            Verdict::Keep
        });
        ahead.judge(0, 1, &*log, &judge);
        assert_eq!(*count.borrow(), JUDGE_AT_ONCE, "one batch for one message");
        ahead.judge(0, 1, &*log, &judge);
        assert_eq!(*count.borrow(), JUDGE_AT_ONCE, "an unused keep is enough");
        ahead.judge(0, JUDGE_AT_ONCE + 10, &*log, &judge);
        assert_eq!(
            *count.borrow(),
            2 * JUDGE_AT_ONCE,
            "ten more keeps: another batch"
        );
    }

    #[test]
    fn verdicts_below_the_cursor_are_dropped_and_the_budget_holds() {
        let log = log_of(SCAN_BUDGET as u64 + 100);
        let mut ahead = Lookahead::default();
        ahead.judge(0, 5, &*log, &each(|_| Verdict::Keep));
        // The first judged one batch, 0 to 63; the cursor then moved past it.
        ahead.judge(100, 5, &*log, &each(|_| Verdict::Skip));
        assert_eq!(ahead.verdict(63), None, "passed by the cursor");
        assert_eq!(
            ahead.verdict(100),
            Some(Verdict::Skip),
            "judged from the cursor on"
        );
        let mut ahead = Lookahead::default();
        ahead.judge(0, usize::MAX, &*log, &each(|_| Verdict::Skip));
        assert_eq!(ahead.verdicts.len(), SCAN_BUDGET);
    }
}
