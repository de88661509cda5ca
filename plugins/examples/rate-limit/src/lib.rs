//! Sampler: lets at most `per_second` messages per second through, per key (token bucket).
//!
//! ```toml
//! sampler = { plugin = "rate_limit.wasm", params = { per_second = "100", key = "user-id" } }
//! ```
//!
//! Params:
//! - `per_second` (required): tokens added per second to each bucket, a number > 0
//!   (`0.5` = one message every 2 s);
//! - `burst`: a bucket's capacity, a number ≥ 1; default `per_second` (at least 1). A new
//!   or long-idle key may pass `burst` messages at once, then `per_second` per second;
//! - `key`: a header name. Each distinct value (its first occurrence) has its own bucket;
//!   messages without the header, or all messages when `key` is not given, share one;
//! - `max_keys`: most keyed buckets held, an integer ≥ 1, default 10000. A new key beyond
//!   it evicts the least recently used one, which starts again with a full bucket if it
//!   comes back. Values over 128 bytes are keyed by their first 128 bytes plus a hash.
//!
//! Time is the WASI monotonic clock (`std::time::Instant`). Buckets live in the instance: a
//! re-instantiated plugin (after a trap or a reload) starts with full buckets.

mod limiter;

use std::time::Instant;

use limiter::{Limiter, Limits};
use quiver_plugin::{Message, Params, Sampler};

/// Default for `max_keys`.
const DEFAULT_MAX_KEYS: usize = 10_000;

struct RateLimit {
    key: Option<String>,
    limiter: Limiter,
    start: Instant,
}

impl Sampler for RateLimit {
    fn init(params: Params) -> Result<Self, String> {
        params.expect_only(&["per_second", "burst", "key", "max_keys"])?;
        let key = params.get("key").map(str::to_owned);
        if key.as_deref() == Some("") {
            return Err("parameter `key`: empty header name".to_owned());
        }
        Ok(RateLimit {
            key,
            limiter: Limiter::new(limits(&params)?),
            start: Instant::now(),
        })
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        let value = self.key.as_deref().and_then(|name| msg.header(name));
        // u64 nanoseconds last 584 years; saturate past that.
        let now_ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.limiter.allow(value.as_deref(), now_ns)
    }
}

quiver_plugin::sampler!(RateLimit);

fn limits(params: &Params) -> Result<Limits, String> {
    let per_second: f64 = params.parse_required("per_second")?;
    if !(per_second.is_finite() && per_second > 0.0) {
        return Err(format!(
            "parameter `per_second`: {per_second} is not a number above 0"
        ));
    }
    let burst = params.parse_or("burst", per_second.max(1.0))?;
    if !(burst.is_finite() && burst >= 1.0) {
        return Err(format!(
            "parameter `burst`: {burst} is not a number of at least 1"
        ));
    }
    let max_keys = params.parse_or("max_keys", DEFAULT_MAX_KEYS)?;
    if max_keys == 0 {
        return Err("parameter `max_keys`: must be at least 1".to_owned());
    }
    Ok(Limits {
        per_second,
        burst,
        max_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(params: &[(&str, &str)]) -> Result<RateLimit, String> {
        RateLimit::init(params.iter().copied().collect())
    }

    #[test]
    fn defaults() {
        let l = limits(&Params::from([("per_second", "20")])).unwrap();
        assert_eq!(
            l,
            Limits {
                per_second: 20.0,
                burst: 20.0,
                max_keys: 10_000
            }
        );
        let l = limits(&Params::from([("per_second", "0.5")])).unwrap();
        assert_eq!(l.burst, 1.0);
    }

    #[test]
    fn sampler_limits_per_key_header() {
        let mut s = init(&[("per_second", "2"), ("key", "user")]).unwrap();
        let a = Message::builder().header("user", "a").build();
        let b = Message::builder().header("user", "b").build();
        let none = Message::builder().build();
        // Far less than half a second passes here, so no token comes back.
        assert_eq!((0..10).filter(|_| s.keep(&a)).count(), 2);
        assert_eq!((0..10).filter(|_| s.keep(&b)).count(), 2);
        assert_eq!((0..10).filter(|_| s.keep(&none)).count(), 2);
    }

    #[test]
    fn init_refuses_bad_params() {
        let err = |p: &[(&str, &str)]| init(p).err().unwrap();
        assert_eq!(err(&[]), "missing required parameter `per_second`");
        assert_eq!(
            err(&[("per_second", "0")]),
            "parameter `per_second`: 0 is not a number above 0"
        );
        assert_eq!(
            err(&[("per_second", "inf")]),
            "parameter `per_second`: inf is not a number above 0"
        );
        assert_eq!(
            err(&[("per_second", "fast")]),
            "parameter `per_second`: bad value \"fast\": invalid float literal"
        );
        assert_eq!(
            err(&[("per_second", "5"), ("burst", "0.5")]),
            "parameter `burst`: 0.5 is not a number of at least 1"
        );
        assert_eq!(
            err(&[("per_second", "5"), ("max_keys", "0")]),
            "parameter `max_keys`: must be at least 1"
        );
        assert_eq!(
            err(&[("per_second", "5"), ("key", "")]),
            "parameter `key`: empty header name"
        );
        assert_eq!(
            err(&[("per_second", "5"), ("rate", "1")]),
            "unknown parameter `rate` (expected: per_second, burst, key, max_keys)"
        );
    }
}
