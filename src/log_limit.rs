//! Log lines that cannot flood: a rate limit per key for lines that a message, a request or a
//! plugin call can cause, so that 3,000 bad messages write a handful of lines and one count.
//!
//! A *site* is a place in the code that logs ([`Site`]: what it logs, and its [`Limit`]); a
//! *key* is the site plus a few values naming what the line is about (a binding's topic and
//! plugin, a fault's kind, a topic whose disk is full). Each key may write `lines` lines per
//! `interval`, counted from its first line; further lines in that interval are suppressed
//! and counted. When an interval in which lines were suppressed ends, one WARN line says how
//! many (`similar log lines suppressed`, with the site, the key and the count): written by
//! the key's next line, or by the sweeper thread of [`global`] within a second.
//!
//! The core, [`LogLimiter`], takes the time as an argument (sans-IO), so tests drive it with
//! a fake clock; [`allow`] is the call sites' shell over the process-wide limiter and the
//! real clock.
//!
//! `QUIVER_LOG_LIMIT_INTERVAL_MS`, read once at the first use, replaces the default interval
//! (10 s). It exists for tests, which need the summary line sooner; it is not a setting.
//!
//! # Invariants
//! - Per key, at most `lines` lines are written in any one interval, and every suppressed
//!   line is counted in exactly one summary (unless the process exits first).
//! - A line for a key already tracked, allowed or suppressed, allocates nothing: the lookup
//!   hashes the borrowed values and compares them in place. A new key allocates its entry.
//! - At most [`MAX_KEYS`] keys are tracked. When the table is full, keys whose interval has
//!   ended are dropped first; after that a new key shares its site's overflow key
//!   (`(other keys)`), of which there is one per site in each of the table's shards: memory
//!   is bounded either way.
//! - A key's entry is locked for a hash lookup and a few counter updates only; lines and
//!   summaries are written after the lock is released.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Most keys tracked at once, over all sites (plus the overflow keys: one per site and shard).
pub const MAX_KEYS: usize = 1024;
/// The table is split in this many independently locked shards.
const SHARDS: usize = 8;
/// The label of a site's overflow key.
const OVERFLOW: &str = "(other keys)";
/// The environment variable that replaces the default interval, in milliseconds (tests).
pub const INTERVAL_ENV: &str = "QUIVER_LOG_LIMIT_INTERVAL_MS";

/// How many lines a key may write per interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub lines: u32,
    pub interval: Duration,
}

impl Limit {
    /// The default: 5 lines per 10 s.
    pub const DEFAULT: Limit = Limit {
        lines: 5,
        interval: Duration::from_secs(10),
    };
}

/// A place in the code that logs through the limiter.
#[derive(Debug)]
pub struct Site {
    /// What the lines are, as the summary names them: usually the line's message.
    pub what: &'static str,
    /// None: the limiter's default.
    pub limit: Option<Limit>,
}

impl Site {
    /// A site under the limiter's default limit.
    pub const fn new(what: &'static str) -> Site {
        Site { what, limit: None }
    }

    /// A site with a limit of its own.
    pub const fn with_limit(what: &'static str, limit: Limit) -> Site {
        Site {
            what,
            limit: Some(limit),
        }
    }
}

/// The values naming what a line is about, with their names: `[("topic", "orders")]`.
pub type Key<'a> = [(&'static str, &'a str)];

/// The end of an interval in which lines were suppressed: what the summary line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The site's `what`.
    pub site: &'static str,
    /// The key's values with their names, `topic=orders plugin=p`, or `(other keys)`.
    pub key: Arc<str>,
    pub suppressed: u64,
    pub interval: Duration,
}

impl Summary {
    /// Writes the summary line.
    pub fn emit(&self) {
        tracing::warn!(
            site = self.site,
            key = ?&*self.key,
            suppressed = self.suppressed,
            interval = ?self.interval,
            "similar log lines suppressed"
        );
    }
}

/// What to do with one line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Write the line; otherwise it was counted as suppressed.
    pub write: bool,
    /// Summaries to write first: the key's own ended interval, or keys dropped to make room
    /// for a new one.
    pub summaries: Vec<Summary>,
}

/// Rate limits per key. See the module docs.
#[derive(Debug)]
pub struct LogLimiter {
    default: Limit,
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
}

#[derive(Debug)]
struct Entry {
    site: &'static str,
    /// The key's values, to tell a hash collision from the same key. Empty for an overflow
    /// key (which is found by its own hash).
    values: Box<[Box<str>]>,
    overflow: bool,
    label: Arc<str>,
    limit: Limit,
    started: Instant,
    written: u32,
    suppressed: u64,
}

impl Entry {
    fn new(site: &'static str, key: &Key<'_>, limit: Limit, now: Instant) -> Entry {
        let label: String = key
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(" ");
        Entry {
            site,
            values: key.iter().map(|(_, value)| Box::from(*value)).collect(),
            overflow: false,
            label: label.into(),
            limit,
            started: now,
            written: 0,
            suppressed: 0,
        }
    }

    fn overflow(site: &'static str, limit: Limit, now: Instant) -> Entry {
        Entry {
            site,
            values: Box::new([]),
            overflow: true,
            label: OVERFLOW.into(),
            limit,
            started: now,
            written: 0,
            suppressed: 0,
        }
    }

    fn is(&self, site: &'static str, key: &Key<'_>) -> bool {
        !self.overflow
            && self.site == site
            && self.values.len() == key.len()
            && self.values.iter().zip(key).all(|(a, (_, b))| **a == **b)
    }

    fn ended(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= self.limit.interval
    }

    /// The summary of the interval so far, if it suppressed anything.
    fn summary(&self) -> Option<Summary> {
        (self.suppressed > 0).then(|| Summary {
            site: self.site,
            key: Arc::clone(&self.label),
            suppressed: self.suppressed,
            interval: self.limit.interval,
        })
    }

    /// Counts a line at `now`, starting a new interval first if the last one ended (and
    /// returning its summary).
    fn take(&mut self, now: Instant) -> (bool, Option<Summary>) {
        let mut ended = None;
        if self.ended(now) {
            ended = self.summary();
            self.started = now;
            self.written = 0;
            self.suppressed = 0;
        }
        if self.written < self.limit.lines {
            self.written += 1;
            return (true, ended);
        }
        self.suppressed += 1;
        (false, ended)
    }
}

impl LogLimiter {
    /// A limiter whose sites without a limit of their own get `default`.
    pub fn new(default: Limit) -> LogLimiter {
        LogLimiter {
            default,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// Whether a line of `site` about `key` may be written at `now`, and the summaries to
    /// write before it.
    pub fn check(&self, site: &Site, key: &Key<'_>, now: Instant) -> Decision {
        let hash = hash(site.what, key.iter().map(|(_, value)| *value));
        let mut shard = self.shard(hash);
        if let Some(entry) = shard.get_mut(&hash) {
            if !entry.is(site.what, key) {
                // A hash collision with another key: write rather than count it wrongly.
                return Decision {
                    write: true,
                    summaries: Vec::new(),
                };
            }
            let (write, ended) = entry.take(now);
            return Decision {
                write,
                summaries: ended.into_iter().collect(),
            };
        }
        let limit = site.limit.unwrap_or(self.default);
        let mut summaries = Vec::new();
        if shard.len() >= MAX_KEYS / SHARDS {
            sweep_shard(&mut shard, now, &mut summaries);
        }
        let entry = if shard.len() < MAX_KEYS / SHARDS {
            shard
                .entry(hash)
                .or_insert_with(|| Entry::new(site.what, key, limit, now))
        } else {
            let hash = hash_overflow(site.what);
            shard
                .entry(hash)
                .or_insert_with(|| Entry::overflow(site.what, limit, now))
        };
        let (write, ended) = entry.take(now);
        summaries.extend(ended);
        Decision { write, summaries }
    }

    /// Drops every key whose interval has ended, returning the summaries of those that
    /// suppressed lines. The sweeper calls it, so that a key that went quiet still gets its
    /// summary, and the table shrinks back.
    pub fn sweep(&self, now: Instant) -> Vec<Summary> {
        let mut summaries = Vec::new();
        for shard in &self.shards {
            sweep_shard(&mut lock(shard), now, &mut summaries);
        }
        summaries
    }

    /// Ends every interval now: the summaries of all suppressed lines not yet reported, and
    /// an empty table. For shutdown.
    pub fn drain(&self) -> Vec<Summary> {
        let mut summaries = Vec::new();
        for shard in &self.shards {
            summaries.extend(lock(shard).drain().filter_map(|(_, e)| e.summary()));
        }
        summaries
    }

    /// Keys tracked, overflow keys included.
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, HashMap<u64, Entry>> {
        lock(&self.shards[(hash % SHARDS as u64) as usize])
    }
}

fn sweep_shard(shard: &mut HashMap<u64, Entry>, now: Instant, summaries: &mut Vec<Summary>) {
    shard.retain(|_, entry| {
        if !entry.ended(now) {
            return true;
        }
        summaries.extend(entry.summary());
        false
    });
}

fn lock(shard: &Mutex<HashMap<u64, Entry>>) -> MutexGuard<'_, HashMap<u64, Entry>> {
    // Every critical section is a lookup and counter updates: a panic cannot tear it.
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn hash<'a>(site: &str, values: impl Iterator<Item = &'a str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    site.hash(&mut hasher);
    for value in values {
        value.hash(&mut hasher);
    }
    hasher.finish()
}

fn hash_overflow(site: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    site.hash(&mut hasher);
    OVERFLOW.hash(&mut hasher);
    0xff_u8.hash(&mut hasher);
    hasher.finish()
}

/// The process-wide limiter, with the default limit (or [`INTERVAL_ENV`]'s interval). The
/// first call starts the sweeper thread; if that fails, summaries still come with each key's
/// next line.
pub fn global() -> &'static LogLimiter {
    static GLOBAL: OnceLock<LogLimiter> = OnceLock::new();
    let mut first = false;
    let limiter = GLOBAL.get_or_init(|| {
        first = true;
        LogLimiter::new(default_limit())
    });
    if first {
        let tick =
            (limiter.default.interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let sweeper = std::thread::Builder::new()
            .name("quiver-log-limit".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                for summary in limiter.sweep(Instant::now()) {
                    summary.emit();
                }
            });
        if let Err(error) = sweeper {
            tracing::warn!(%error, "cannot start the log limiter's sweeper thread");
        }
    }
    limiter
}

fn default_limit() -> Limit {
    let interval = std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis);
    Limit {
        interval: interval.unwrap_or(Limit::DEFAULT.interval),
        ..Limit::DEFAULT
    }
}

/// Whether a line of `site` about `key` may be written now; writes any summary due first.
///
/// ```
/// use quiver::log_limit::{self, Site};
///
/// static REFUSED: Site = Site::new("router answer refused");
/// let topic = "orders";
/// if log_limit::allow(&REFUSED, &[("topic", topic)]) {
///     tracing::warn!(topic, "router answer refused");
/// }
/// ```
pub fn allow(site: &Site, key: &Key<'_>) -> bool {
    let decision = global().check(site, key, Instant::now());
    for summary in &decision.summaries {
        summary.emit();
    }
    decision.write
}

/// Writes the summaries of every suppressed line not reported yet. Called at shutdown.
pub fn flush() {
    for summary in global().drain() {
        summary.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_S: Duration = Duration::from_secs(10);
    static REFUSED: Site = Site::new("router answer refused");
    static FAULTED: Site = Site::with_limit(
        "plugin faulted",
        Limit {
            lines: 2,
            interval: Duration::from_secs(1),
        },
    );

    fn limiter() -> LogLimiter {
        LogLimiter::new(Limit::DEFAULT)
    }

    /// Checks `n` lines of `site`/`key` at `now`: how many were written, and the summaries.
    fn lines(
        limiter: &LogLimiter,
        site: &Site,
        key: &Key<'_>,
        n: u32,
        now: Instant,
    ) -> (u32, Vec<Summary>) {
        let mut written = 0;
        let mut summaries = Vec::new();
        for _ in 0..n {
            let d = limiter.check(site, key, now);
            written += u32::from(d.write);
            summaries.extend(d.summaries);
        }
        (written, summaries)
    }

    const ORDERS: &Key<'static> = &[("topic", "orders"), ("plugin", "router")];

    #[test]
    fn a_key_writes_its_lines_then_counts_the_rest() {
        let limiter = limiter();
        let t0 = Instant::now();
        let (written, summaries) = lines(&limiter, &REFUSED, ORDERS, 3000, t0);
        assert_eq!(written, 5);
        assert!(summaries.is_empty(), "the interval has not ended");
        assert!(limiter.sweep(t0 + TEN_S / 2).is_empty(), "still running");

        let summaries = limiter.sweep(t0 + TEN_S);
        assert_eq!(
            summaries,
            [Summary {
                site: "router answer refused",
                key: "topic=orders plugin=router".into(),
                suppressed: 2995,
                interval: TEN_S,
            }]
        );
        assert_eq!(limiter.keys(), 0, "a swept key is forgotten");
        assert!(limiter.sweep(t0 + TEN_S * 3).is_empty(), "reported once");
    }

    #[test]
    fn the_next_line_after_the_interval_reports_it_and_starts_a_new_one() {
        let limiter = limiter();
        let t0 = Instant::now();
        lines(&limiter, &REFUSED, ORDERS, 7, t0);
        let later = t0 + TEN_S + Duration::from_millis(1);
        let d = limiter.check(&REFUSED, ORDERS, later);
        assert!(d.write, "a new interval writes again");
        assert_eq!(d.summaries.len(), 1);
        assert_eq!(d.summaries[0].suppressed, 2);
        let (written, summaries) = lines(&limiter, &REFUSED, ORDERS, 10, later);
        assert_eq!((written, summaries.len()), (4, 0), "5 in the new interval");
        assert_eq!(limiter.sweep(later + TEN_S)[0].suppressed, 6);
    }

    #[test]
    fn an_interval_without_suppressed_lines_has_no_summary() {
        let limiter = limiter();
        let t0 = Instant::now();
        assert_eq!(lines(&limiter, &REFUSED, ORDERS, 5, t0).0, 5);
        assert_eq!(limiter.check(&REFUSED, ORDERS, t0 + TEN_S).summaries, []);
        assert!(limiter.sweep(t0 + TEN_S * 2).is_empty());
        assert!(limiter.drain().is_empty());
    }

    #[test]
    fn keys_and_sites_are_limited_apart_and_a_site_may_have_its_own_limit() {
        let limiter = limiter();
        let t0 = Instant::now();
        let other: &Key<'_> = &[("topic", "audit"), ("plugin", "router")];
        assert_eq!(lines(&limiter, &REFUSED, ORDERS, 10, t0).0, 5);
        assert_eq!(lines(&limiter, &REFUSED, other, 10, t0).0, 5);
        let trap: &Key<'_> = &[("plugin", "router"), ("fault", "trap")];
        assert_eq!(lines(&limiter, &FAULTED, trap, 10, t0).0, 2);
        let second = t0 + Duration::from_secs(1);
        let (written, summaries) = lines(&limiter, &FAULTED, trap, 10, second);
        assert_eq!(written, 2, "its own 1 s interval");
        assert_eq!(summaries[0].suppressed, 8);
        let (written, _) = lines(&limiter, &REFUSED, ORDERS, 10, second);
        assert_eq!(written, 0, "the default interval is still running");
        // Same values, other site: another key.
        assert_eq!(lines(&limiter, &FAULTED, ORDERS, 1, t0).0, 1);
    }

    #[test]
    fn many_keys_stay_bounded_and_share_an_overflow_key() {
        let limiter = limiter();
        let t0 = Instant::now();
        let mut written = 0;
        for i in 0..20_000 {
            let topic = format!("t{i}");
            written += u32::from(limiter.check(&REFUSED, &[("topic", &topic)], t0).write);
        }
        let keys = limiter.keys();
        assert!(keys <= MAX_KEYS + SHARDS, "{keys} keys tracked");
        assert!(
            keys >= MAX_KEYS - SHARDS * 8,
            "the table fills up first: {keys}"
        );
        // Each tracked key wrote its first line; the rest went to the overflow keys.
        assert!(
            written as usize <= keys + 5 * SHARDS,
            "{written} lines written"
        );
        let summaries = limiter.sweep(t0 + TEN_S);
        assert!(
            summaries.iter().all(|s| &*s.key == OVERFLOW),
            "{summaries:?}"
        );
        let suppressed: u64 = summaries.iter().map(|s| s.suppressed).sum();
        assert_eq!(
            suppressed + u64::from(written),
            20_000,
            "every line is counted"
        );
        assert_eq!(limiter.keys(), 0);
    }

    #[test]
    fn a_full_table_makes_room_by_dropping_ended_keys() {
        let limiter = limiter();
        let t0 = Instant::now();
        for i in 0..MAX_KEYS * 2 {
            let topic = format!("t{i}");
            limiter.check(&REFUSED, &[("topic", &topic)], t0);
            limiter.check(&REFUSED, &[("topic", &topic)], t0);
        }
        let later = t0 + TEN_S;
        let mut summaries = Vec::new();
        // Fewer than the table holds, however they fall in the shards.
        for i in 0..MAX_KEYS / SHARDS {
            let topic = format!("new{i}");
            let d = limiter.check(&REFUSED, &[("topic", &topic)], later);
            assert!(d.write, "new{i}");
            summaries.extend(d.summaries);
        }
        assert!(
            summaries.iter().any(|s| &*s.key == OVERFLOW),
            "the overflow keys' counts come out as they are dropped"
        );
        assert!(limiter.keys() <= MAX_KEYS + SHARDS);
    }

    #[test]
    fn drain_reports_every_pending_count() {
        let limiter = limiter();
        let t0 = Instant::now();
        lines(&limiter, &REFUSED, ORDERS, 8, t0);
        let summaries = limiter.drain();
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].suppressed, 3);
        assert_eq!(limiter.keys(), 0);
    }
}
