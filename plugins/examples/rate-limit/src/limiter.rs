//! Token buckets per key, with the time passed in (sans-IO), so tests drive the clock.
//!
//! # Invariants
//! - `buckets` and `recency` hold the same keys, and `recency` maps each bucket's `used`
//!   stamp to its key; so `recency`'s first entry is the least recently used key.
//! - At most `max_keys` keyed buckets exist; the shared bucket (messages without a key) is
//!   not counted.
//! - A key is at most [`MAX_KEY_LEN`] bytes plus a 17-character hash suffix, so memory is
//!   bounded by `max_keys` × about 250 bytes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Longest header value kept as a key as it is; longer values are shortened (see [`key_of`]).
pub const MAX_KEY_LEN: usize = 128;

/// What the limiter enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Tokens added per second, per key.
    pub per_second: f64,
    /// A bucket's capacity: the most messages let through at once after a quiet spell.
    pub burst: f64,
    /// Most keys tracked at once.
    pub max_keys: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date, in nanoseconds of the caller's clock.
    at_ns: u64,
    /// Recency stamp: larger is more recent.
    used: u64,
}

/// Token buckets: one per key, one shared by messages without a key.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    buckets: BTreeMap<Rc<str>, Bucket>,
    recency: BTreeMap<u64, Rc<str>>,
    shared: Option<Bucket>,
    next_use: u64,
}

impl Limiter {
    pub fn new(limits: Limits) -> Self {
        Limiter {
            limits,
            buckets: BTreeMap::new(),
            recency: BTreeMap::new(),
            shared: None,
            next_use: 0,
        }
    }

    /// Whether a message with this key (`None`: the shared bucket) may pass at `now_ns`
    /// (monotonic nanoseconds; a clock going backwards counts as no time passing).
    pub fn allow(&mut self, key: Option<&str>, now_ns: u64) -> bool {
        let limits = self.limits;
        let Some(key) = key else {
            let bucket = self.shared.get_or_insert(Bucket::full(&limits, now_ns, 0));
            return bucket.take(&limits, now_ns);
        };
        let key = key_of(key);
        self.next_use += 1;
        let used = self.next_use;
        if let Some(bucket) = self.buckets.get_mut(&*key) {
            // `recency` holds this bucket's stamp (see the invariants); move it to `used`.
            if let Some(k) = self.recency.remove(&bucket.used) {
                self.recency.insert(used, k);
            }
            bucket.used = used;
            return bucket.take(&limits, now_ns);
        }
        if self.buckets.len() >= limits.max_keys {
            self.evict_least_recent();
        }
        let key: Rc<str> = Rc::from(&*key);
        let mut bucket = Bucket::full(&limits, now_ns, used);
        let allowed = bucket.take(&limits, now_ns);
        self.buckets.insert(Rc::clone(&key), bucket);
        self.recency.insert(used, key);
        allowed
    }

    /// Keyed buckets held now.
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.buckets.len()
    }

    fn evict_least_recent(&mut self) {
        if let Some((_, key)) = self.recency.pop_first() {
            self.buckets.remove(&key);
        }
    }
}

impl Bucket {
    fn full(limits: &Limits, now_ns: u64, used: u64) -> Self {
        Bucket {
            tokens: limits.burst,
            at_ns: now_ns,
            used,
        }
    }

    /// Refills for the time since the last update, then takes a token if there is one.
    fn take(&mut self, limits: &Limits, now_ns: u64) -> bool {
        let elapsed_ns = now_ns.saturating_sub(self.at_ns);
        self.at_ns = self.at_ns.max(now_ns);
        let refill = elapsed_ns as f64 * limits.per_second / 1e9;
        self.tokens = (self.tokens + refill).min(limits.burst);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The bucket key for a header value: the value itself up to [`MAX_KEY_LEN`] bytes; a longer
/// value becomes its first bytes (cut at a character boundary) plus `#` and its FNV-1a-64
/// hash in hex, so distinct long values stay distinct (up to hash collisions).
pub fn key_of(value: &str) -> Cow<'_, str> {
    if value.len() <= MAX_KEY_LEN {
        return Cow::Borrowed(value);
    }
    let mut cut = MAX_KEY_LEN;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Cow::Owned(format!("{}#{hash:016x}", &value[..cut]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limiter(per_second: f64, burst: f64, max_keys: usize) -> Limiter {
        Limiter::new(Limits {
            per_second,
            burst,
            max_keys,
        })
    }

    fn passed(l: &mut Limiter, key: Option<&str>, n: usize, now_ns: u64) -> usize {
        (0..n).filter(|_| l.allow(key, now_ns)).count()
    }

    #[test]
    fn burst_then_steady_rate() {
        let mut l = limiter(10.0, 10.0, 100);
        assert_eq!(passed(&mut l, Some("a"), 100, 0), 10);
        // 100 ms later one token has come back.
        assert_eq!(passed(&mut l, Some("a"), 100, SEC / 10), 1);
        // Over the next 10 s, 10 per second at most.
        let mut total = 0;
        for ms in (200..10_200).step_by(10) {
            total += passed(&mut l, Some("a"), 5, ms * 1_000_000);
        }
        assert_eq!(total, 100);
    }

    #[test]
    fn keys_are_independent_and_keyless_messages_share_one_bucket() {
        let mut l = limiter(1.0, 2.0, 100);
        assert_eq!(passed(&mut l, Some("a"), 5, 0), 2);
        assert_eq!(passed(&mut l, Some("b"), 5, 0), 2);
        assert_eq!(passed(&mut l, None, 5, 0), 2);
        assert_eq!(passed(&mut l, None, 5, 0), 0);
        assert_eq!(l.keys(), 2);
    }

    #[test]
    fn slow_rates_and_bucket_cap() {
        let mut l = limiter(0.5, 1.0, 10);
        assert!(l.allow(Some("a"), 0));
        assert!(!l.allow(Some("a"), SEC));
        assert!(l.allow(Some("a"), 2 * SEC));
        // A long quiet spell refills only up to the burst.
        assert_eq!(passed(&mut l, Some("a"), 5, 1000 * SEC), 1);
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let mut l = limiter(1.0, 1.0, 10);
        assert!(l.allow(Some("a"), 5 * SEC));
        assert!(!l.allow(Some("a"), 0));
        assert!(!l.allow(Some("a"), 5 * SEC));
        assert!(l.allow(Some("a"), 6 * SEC));
    }

    #[test]
    fn least_recently_used_key_is_evicted_at_the_cap() {
        let mut l = limiter(1.0, 1.0, 2);
        assert!(l.allow(Some("a"), 0));
        assert!(l.allow(Some("b"), 0));
        assert!(!l.allow(Some("a"), 0)); // "a" is now the most recent
        assert!(l.allow(Some("c"), 0)); // evicts "b"
        assert_eq!(l.keys(), 2);
        assert!(!l.allow(Some("a"), 0)); // "a" kept its empty bucket
        assert!(l.allow(Some("b"), 0)); // "b" starts afresh (evicts "c")
        assert_eq!(l.keys(), 2);
        assert_eq!(l.recency.len(), 2);
    }

    #[test]
    fn memory_stays_bounded_under_many_keys() {
        let mut l = limiter(1.0, 1.0, 1000);
        for i in 0..50_000 {
            l.allow(Some(&format!("key-{i}")), i);
        }
        assert_eq!(l.keys(), 1000);
        assert_eq!(l.recency.len(), 1000);
    }

    #[test]
    fn long_values_are_shortened_but_stay_distinct() {
        let a = "x".repeat(1000);
        let b = format!("{}y", "x".repeat(999));
        assert_eq!(key_of(&a).len(), MAX_KEY_LEN + 17);
        assert_ne!(key_of(&a), key_of(&b));
        assert_eq!(key_of("short"), "short");
        let wide = "é".repeat(100); // 200 bytes, 2 per char
        assert!(key_of(&wide).starts_with(&"é".repeat(64)));
    }
}
