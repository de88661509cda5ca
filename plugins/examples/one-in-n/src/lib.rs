//! Sampler: keeps exactly 1 in `n` messages (or `percent` of them), deterministically.
//!
//! ```toml
//! sampler = { plugin = "one_in_n.wasm", params = { n = "10", key = "user-id" } }
//! ```
//!
//! Params: exactly one of
//! - `n`: an integer ≥ 1; keep 1 in n;
//! - `percent`: a number from 0 to 100 with at most 4 decimals (more are rounded); keep
//!   that share. Internally `units = round(percent × 10 000)`, out of 1 000 000;
//!
//! and optionally `key`: a header name.
//!
//! The exact rule:
//! - **With `key`, for a message that has that header** (first value `v`):
//!   `h = FNV-1a-64(UTF-8 bytes of v)` (offset basis 0xcbf29ce484222325, prime
//!   0x100000001b3). Keep iff `h % n == 0`, or, with `percent`, iff
//!   `h % 1_000_000 < units`. The same value always gets the same decision, on every
//!   instance and after every restart.
//! - **Otherwise** (no `key`, or the message lacks the header): a counter `i` of such
//!   messages, starting at 1 for the first one this instance sees. Keep iff `(i - 1) % n == 0`,
//!   i.e. messages 1, n+1, 2n+1, …; so of the first `m` messages exactly `ceil(m / n)` are
//!   kept (1000 messages with n = 10: exactly 100). With `percent`, keep iff
//!   `ceil(i·units / 1e6) > ceil((i-1)·units / 1e6)`: message 1 is kept unless the share is
//!   0, and of the first `m` exactly `ceil(m·units / 1e6)` are kept (percent = 10 keeps the
//!   same messages as n = 10). The counter lives in the instance: a re-instantiated plugin
//!   (after a trap or a reload) starts again at 1.

use quiver_plugin::{Message, Params, Sampler};

/// Shares of `percent` are counted in millionths.
const MILLION: u64 = 1_000_000;

struct OneInN {
    key: Option<String>,
    rule: Rule,
}

impl Sampler for OneInN {
    fn init(params: Params) -> Result<Self, String> {
        params.expect_only(&["n", "percent", "key"])?;
        let key = params.get("key").map(str::to_owned);
        if key.as_deref() == Some("") {
            return Err("parameter `key`: empty header name".to_owned());
        }
        Ok(OneInN {
            key,
            rule: Rule::from_params(&params)?,
        })
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        let value = self.key.as_deref().and_then(|name| msg.header(name));
        self.rule.keep(value.as_deref())
    }
}

quiver_plugin::sampler!(OneInN);

/// The share to keep, and the counter for messages without a key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    share: Share,
    /// Messages decided by the counter so far.
    count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Share {
    OneIn(u64),
    /// Millionths, 0 ..= 1 000 000.
    Units(u64),
}

impl Rule {
    fn from_params(params: &Params) -> Result<Rule, String> {
        let share = match (params.parse::<u64>("n")?, params.parse::<f64>("percent")?) {
            (Some(0), None) => return Err("parameter `n`: must be at least 1".to_owned()),
            (Some(n), None) => Share::OneIn(n),
            (None, Some(p)) if (0.0..=100.0).contains(&p) => {
                // In range and finite, so the product is in 0 ..= 1e6 and the cast is exact.
                Share::Units((p * 10_000.0).round() as u64)
            }
            (None, Some(p)) => {
                return Err(format!("parameter `percent`: {p} is not between 0 and 100"))
            }
            (Some(_), Some(_)) => return Err("give one of `n` and `percent`, not both".to_owned()),
            (None, None) => return Err("missing parameter: give `n` or `percent`".to_owned()),
        };
        Ok(Rule { share, count: 0 })
    }

    /// Decides for a message whose key header is `key` (`None`: no key, use the counter).
    fn keep(&mut self, key: Option<&str>) -> bool {
        match key {
            Some(value) => self.keep_key(fnv1a64(value.as_bytes())),
            None => {
                // 2^64 messages do not happen; wrapping keeps this total anyway.
                self.count = self.count.wrapping_add(1);
                self.keep_nth(self.count)
            }
        }
    }

    fn keep_key(&self, hash: u64) -> bool {
        match self.share {
            Share::OneIn(n) => hash.is_multiple_of(n),
            Share::Units(units) => hash % MILLION < units,
        }
    }

    /// Whether the `i`-th counted message (1-based) is kept.
    fn keep_nth(&self, i: u64) -> bool {
        match self.share {
            Share::OneIn(n) => i.wrapping_sub(1).is_multiple_of(n),
            Share::Units(units) => {
                let kept_by =
                    |m: u64| (u128::from(m) * u128::from(units)).div_ceil(u128::from(MILLION));
                kept_by(i) > kept_by(i.wrapping_sub(1))
            }
        }
    }
}

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(params: &[(&str, &str)]) -> Result<Rule, String> {
        Rule::from_params(&params.iter().copied().collect())
    }

    fn kept_of(params: &[(&str, &str)], m: u64) -> Vec<u64> {
        let mut r = rule(params).unwrap();
        (1..=m).filter(|_| r.keep(None)).collect()
    }

    #[test]
    fn counter_keeps_first_then_every_nth() {
        assert_eq!(kept_of(&[("n", "3")], 10), vec![1, 4, 7, 10]);
        assert_eq!(kept_of(&[("n", "10")], 1000).len(), 100);
        assert_eq!(kept_of(&[("n", "1")], 5), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn percent_keeps_exactly_its_share() {
        assert_eq!(
            kept_of(&[("percent", "10")], 1000),
            kept_of(&[("n", "10")], 1000)
        );
        assert_eq!(kept_of(&[("percent", "25")], 8), vec![1, 5]);
        assert_eq!(kept_of(&[("percent", "33.3333")], 999).len(), 333);
        assert_eq!(kept_of(&[("percent", "0")], 100).len(), 0);
        assert_eq!(kept_of(&[("percent", "100")], 100).len(), 100);
        assert_eq!(kept_of(&[("percent", "0.1")], 3000).len(), 3);
    }

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn keyed_decision_is_the_hash_and_stable() {
        let mut r = rule(&[("n", "10")]).unwrap();
        for i in 0..200 {
            let key = format!("user-{i}");
            let expected = fnv1a64(key.as_bytes()).is_multiple_of(10);
            assert_eq!(r.keep(Some(&key)), expected);
            assert_eq!(r.keep(Some(&key)), expected);
        }
        // Keyed decisions do not move the counter.
        assert_eq!(r.count, 0);
        let kept = (0..10_000).filter(|i| r.keep(Some(&i.to_string()))).count();
        assert!((800..1200).contains(&kept), "{kept}");
    }

    #[test]
    fn keyed_percent_uses_millionths() {
        let r = rule(&[("percent", "50")]).unwrap();
        assert!(r.keep_key(499_999));
        assert!(!r.keep_key(500_000));
        assert!(r.keep_key(3 * MILLION + 1));
    }

    #[test]
    fn sampler_reads_the_key_header_and_counts_the_rest() {
        let mut s = OneInN::init(Params::from([("n", "2"), ("key", "user")])).unwrap();
        let keyed = Message::builder().header("user", "a").build();
        let expected = fnv1a64(b"a").is_multiple_of(2);
        assert_eq!(s.keep(&keyed), expected);
        let plain = Message::builder().build();
        let got: Vec<bool> = (0..4).map(|_| s.keep(&plain)).collect();
        assert_eq!(got, vec![true, false, true, false]);
    }

    #[test]
    fn init_refuses_bad_params() {
        let err = |p: &[(&str, &str)]| OneInN::init(p.iter().copied().collect()).err().unwrap();
        assert_eq!(err(&[]), "missing parameter: give `n` or `percent`");
        assert_eq!(err(&[("n", "0")]), "parameter `n`: must be at least 1");
        assert_eq!(
            err(&[("n", "-1")]),
            "parameter `n`: bad value \"-1\": invalid digit found in string"
        );
        assert_eq!(
            err(&[("percent", "101")]),
            "parameter `percent`: 101 is not between 0 and 100"
        );
        assert_eq!(
            err(&[("percent", "NaN")]),
            "parameter `percent`: NaN is not between 0 and 100"
        );
        assert_eq!(
            err(&[("n", "2"), ("percent", "5")]),
            "give one of `n` and `percent`, not both"
        );
        assert_eq!(
            err(&[("n", "2"), ("key", "")]),
            "parameter `key`: empty header name"
        );
        assert_eq!(
            err(&[("n", "2"), ("every", "3")]),
            "unknown parameter `every` (expected: n, percent, key)"
        );
    }
}
