//! Hostile test router: spends a fixed amount of CPU on every message (a loop of
//! `iterations` steps the optimizer cannot remove, under the call limit by default), then
//! routes the message to `channel`. Loads the broker the way a slow but well-behaved router
//! does.
//!
//! Params: `iterations` (default 5,000,000), `channel` (default `all`).

use quiver_plugin::{Message, Params, Route, Router};

struct SlowRouter {
    iterations: u64,
    channel: String,
}

impl Router for SlowRouter {
    fn init(params: Params) -> Result<Self, String> {
        params.expect_only(&["iterations", "channel"])?;
        let iterations = match params.get("iterations") {
            Some(n) => n
                .parse()
                .map_err(|e| format!("parameter `iterations`: {e}"))?,
            None => 5_000_000,
        };
        let channel = params.get("channel").unwrap_or("all").to_owned();
        Ok(SlowRouter {
            iterations,
            channel,
        })
    }

    fn route(&mut self, _msg: &Message<'_>) -> Route {
        let mut n: u64 = 0;
        for _ in 0..self.iterations {
            n = std::hint::black_box(n.wrapping_add(1));
        }
        std::hint::black_box(n);
        Route {
            channels: vec![self.channel.clone()],
            forward: Vec::new(),
        }
    }
}

quiver_plugin::router!(SlowRouter);
