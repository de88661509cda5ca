//! A Quiver sampler: keeps 1 message in `n` (the 1st, the n+1th, ...).
//!
//! Params: `n`, an integer of at least 1. The count lives in the instance: it starts again
//! when the broker re-instantiates the plugin (after a fault or a reload).

use quiver_plugin::{Message, Params, Sampler};

struct OneInN {
    n: u64,
    seen: u64,
}

impl Sampler for OneInN {
    fn init(params: Params) -> Result<Self, String> {
        params.expect_only(&["n"])?;
        let n: u64 = params.parse_required("n")?;
        if n == 0 {
            return Err("parameter `n`: must be at least 1".to_owned());
        }
        Ok(OneInN { n, seen: 0 })
    }

    fn keep(&mut self, _msg: &Message<'_>) -> bool {
        self.seen += 1;
        (self.seen - 1) % self.n == 0
    }
}

quiver_plugin::sampler!(OneInN);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_of_every_n() {
        let mut sampler = OneInN::init(Params::from([("n", "3")])).unwrap();
        let msg = Message::builder().build();
        let kept: Vec<bool> = (0..6).map(|_| sampler.keep(&msg)).collect();
        assert_eq!(kept, [true, false, false, true, false, false]);
        assert!(OneInN::init(Params::from([("n", "0")])).is_err());
    }
}
