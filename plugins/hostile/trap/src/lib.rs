//! Hostile test filter: `init` succeeds, `keep` panics on every message (or, with the param
//! `on = NAME`, on those with header NAME, keeping the rest). On wasm32 a panic aborts, i.e.
//! traps; the SDK first writes the panic message to the broker's log.

use quiver_plugin::{Filter, Message, Params};

struct Trap {
    /// Trap only on messages with this header (`on`); without it, on every message.
    on: Option<String>,
}

impl Filter for Trap {
    fn init(params: Params) -> Result<Self, String> {
        params.expect_only(&["on"])?;
        Ok(Trap {
            on: params.get("on").map(str::to_owned),
        })
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        if self.on.as_deref().is_some_and(|name| !msg.has_header(name)) {
            return true;
        }
        panic!("trap: refuses message of {} bytes", msg.body_len());
    }
}

quiver_plugin::filter!(Trap);
