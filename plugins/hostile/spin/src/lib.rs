//! Hostile test filter: `keep` never returns. The broker's per-call deadline (epoch or fuel)
//! must interrupt it; `init` succeeds so the loop is reached on the first message.

use quiver_plugin::{Filter, Message, Params};

struct Spin;

impl Filter for Spin {
    fn init(_params: Params) -> Result<Self, String> {
        Ok(Spin)
    }

    fn keep(&mut self, _msg: &Message<'_>) -> bool {
        // `black_box` hides the counter from the optimizer, so the loop stays a real loop.
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

quiver_plugin::filter!(Spin);
