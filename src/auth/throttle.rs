//! Slows down callers that keep presenting bad credentials: the first few failures from an
//! address are answered at once, then each answer waits twice as long as the one before,
//! up to [`MAX_DELAY`]. An address that has not failed for [`FORGET_AFTER`] starts over,
//! and a success clears it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures answered without delay.
const FREE_FAILURES: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(5);
pub const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past that the oldest half is forgotten.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut failures = self.lock();
        if failures.len() >= MAX_ADDRESSES {
            let mut ages: Vec<Instant> = failures.values().map(|(_, at)| *at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            failures.retain(|_, (_, at)| *at > cut);
        }
        let entry = failures.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) > FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }

    /// How long to wait before answering a failure from `ip`.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let failures = self.lock();
        let Some(&(count, at)) = failures.get(&ip) else {
            return Duration::ZERO;
        };
        if count <= FREE_FAILURES || at.elapsed() > FORGET_AFTER {
            return Duration::ZERO;
        }
        let doublings = (count - FREE_FAILURES - 1).min(16);
        (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        // Critical sections are single map operations.
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_are_slowed_down_and_a_success_clears_them() {
        let t = Throttle::default();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "10.1.2.4".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            t.failed(ip);
            assert_eq!(t.delay(ip), Duration::ZERO);
        }
        t.failed(ip);
        assert_eq!(t.delay(ip), FIRST_DELAY);
        t.failed(ip);
        assert_eq!(t.delay(ip), FIRST_DELAY * 2);
        for _ in 0..20 {
            t.failed(ip);
        }
        assert_eq!(t.delay(ip), MAX_DELAY);
        assert_eq!(t.delay(other), Duration::ZERO);
        t.succeeded(ip);
        assert_eq!(t.delay(ip), Duration::ZERO);
    }
}
