//! Counts of what the bridge did, a progress line every `--status-every`, and the summary
//! printed on exit.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Running counts, shared by every handler.
#[derive(Debug, Default)]
pub struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    requests: AtomicU64,
}

impl Counters {
    pub fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, requests: usize) {
        self.failed.fetch_add(requests as u64, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn totals(&self) -> Totals {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Totals {
            delivered: load(&self.delivered),
            failed: load(&self.failed),
            retried: load(&self.retried),
            dead_lettered: load(&self.dead_lettered),
            requests: load(&self.requests),
        }
    }
}

/// Counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages FIN'd after their request(s) answered 2xx.
    pub delivered: u64,
    /// Requests that failed: a non-2xx status, a connection error or a timeout. In fan-out
    /// mode one attempt can fail several requests.
    pub failed: u64,
    /// Attempts that ended in a REQ with backoff.
    pub retried: u64,
    /// Messages copied to `<topic>.dead` after their last attempt, then FIN'd.
    pub dead_lettered: u64,
    /// Requests sent.
    pub requests: u64,
}

/// A progress line: totals, and rates over the last interval.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub now: Totals,
    pub before: Totals,
    pub interval: Duration,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.interval.as_secs_f64().max(f64::EPSILON);
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
        let (n, b) = (self.now, self.before);
        write!(
            f,
            "to-http: delivered {} ({:.1}/s), failed {} ({:.1}/s), retried {} ({:.1}/s), \
             dead-lettered {}, requests {}",
            n.delivered,
            rate(n.delivered, b.delivered),
            n.failed,
            rate(n.failed, b.failed),
            n.retried,
            rate(n.retried, b.retried),
            n.dead_lettered,
            n.requests,
        )
    }
}

/// What `quiver to-http` did, printed when it exits.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub totals: Totals,
    /// Messages received but not started when the drain began, given back at once.
    pub returned: u64,
    pub elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.totals;
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "to-http summary: delivered {}, failed {}, retried {}, dead-lettered {}, \
             returned {}, requests {} in {:.1}s ({:.1} delivered/s)",
            t.delivered,
            t.failed,
            t.retried,
            t.dead_lettered,
            self.returned,
            t.requests,
            secs,
            t.delivered as f64 / secs.max(f64::EPSILON),
        )
    }
}

/// Calls `status` with a progress line every `every`, until aborted.
pub async fn report_every(
    every: Duration,
    counters: Arc<Counters>,
    status: impl Fn(String) + Send + 'static,
) {
    let start = tokio::time::Instant::now() + every;
    let mut tick = tokio::time::interval_at(start, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = (counters.totals(), tokio::time::Instant::now());
    loop {
        let at = tick.tick().await;
        let now = counters.totals();
        let progress = Progress {
            now,
            before: before.0,
            interval: at.saturating_duration_since(before.1),
        };
        status(progress.to_string());
        before = (now, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn progress_shows_totals_and_interval_rates() {
        let before = Totals {
            delivered: 10,
            ..Totals::default()
        };
        let now = Totals {
            delivered: 30,
            failed: 4,
            retried: 3,
            dead_lettered: 1,
            requests: 34,
        };
        let line = Progress {
            now,
            before,
            interval: Duration::from_secs(2),
        }
        .to_string();
        assert_eq!(
            line,
            "to-http: delivered 30 (10.0/s), failed 4 (2.0/s), retried 3 (1.5/s), \
             dead-lettered 1, requests 34"
        );
    }

    #[test]
    fn summary_has_every_count() {
        let summary = Summary {
            totals: Totals {
                delivered: 5,
                failed: 1,
                retried: 1,
                dead_lettered: 0,
                requests: 6,
            },
            returned: 2,
            elapsed: Duration::from_millis(2500),
        };
        assert_eq!(
            summary.to_string(),
            "to-http summary: delivered 5, failed 1, retried 1, dead-lettered 0, returned 2, \
             requests 6 in 2.5s (2.0 delivered/s)"
        );
    }

    #[tokio::test]
    async fn report_every_prints_on_each_tick() {
        let counters = Arc::new(Counters::default());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        for _ in 0..5 {
            counters.delivered();
        }
        let task = tokio::spawn(report_every(
            Duration::from_millis(50),
            counters.clone(),
            move |line| sink.lock().map(|mut l| l.push(line)).unwrap_or(()),
        ));
        tokio::time::sleep(Duration::from_millis(180)).await;
        task.abort();
        let lines = lines.lock().map(|l| l.clone()).unwrap_or_default();
        assert!(!lines.is_empty(), "no progress line");
        // Counted before the reporter started, so no interval shows them as a rate.
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("to-http: delivered 5 (0.0/s)")),
            "{lines:?}"
        );
    }
}
