//! A channel's consumers: their credit (RDY), closing (CLS) and removal.

use std::time::Duration;

use super::{ChannelState, ConsumerId, ConsumerState, DeadLetter, DeadReason, Now};

impl ChannelState {
    pub fn add_consumer(&mut self, id: ConsumerId, timeout: Duration) {
        let consumer = ConsumerState {
            timeout,
            ..ConsumerState::default()
        };
        self.consumers.insert(id, consumer);
    }

    /// Sets a consumer's credit. Returns true when it can now take more than before.
    pub fn set_rdy(&mut self, id: ConsumerId, rdy: u32) -> bool {
        let Some(c) = self.consumers.get_mut(&id) else {
            return false;
        };
        let raised = rdy > c.rdy;
        c.rdy = rdy;
        raised
    }

    /// Stops new deliveries to a consumer (CLS). Returns true if nothing is in flight to it.
    pub fn close_consumer(&mut self, id: ConsumerId) -> bool {
        self.consumers.get_mut(&id).is_some_and(|c| {
            c.closing = true;
            c.in_flight == 0
        })
    }

    /// Whether a closing consumer has nothing left in flight.
    pub fn is_drained(&self, id: ConsumerId) -> bool {
        self.consumers.get(&id).is_none_or(|c| c.in_flight == 0)
    }

    /// Removes a consumer and requeues everything in flight to it at once.
    pub fn remove_consumer(&mut self, id: ConsumerId, now: Now) -> Vec<DeadLetter> {
        self.consumers.remove(&id);
        let mine: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.consumer == id)
            .map(|(&offset, _)| offset)
            .collect();
        let mut dead = Vec::new();
        for offset in mine {
            if let Some(f) = self.unflight(offset) {
                dead.extend(self.requeue(
                    offset,
                    f.attempts,
                    Duration::ZERO,
                    now,
                    DeadReason::Disconnect,
                ));
            }
        }
        dead
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// Messages the channel's open consumers could take now: their credit left, together.
    pub fn total_credit(&self) -> usize {
        self.consumers
            .values()
            .filter(|c| !c.closing)
            .map(|c| c.rdy.saturating_sub(c.in_flight) as usize)
            .sum()
    }

    /// How many messages `id` may be given now: its unused credit, or 0 while the channel
    /// is paused or the consumer is closing.
    pub fn credit(&self, id: ConsumerId) -> usize {
        match self.consumers.get(&id) {
            Some(c) if !self.paused && !c.closing => c.rdy.saturating_sub(c.in_flight) as usize,
            _ => 0,
        }
    }

    pub fn consumer(&self, id: ConsumerId) -> Option<&ConsumerState> {
        self.consumers.get(&id)
    }

    pub fn consumers(&self) -> impl Iterator<Item = (ConsumerId, &ConsumerState)> {
        self.consumers.iter().map(|(&id, c)| (id, c))
    }
}
