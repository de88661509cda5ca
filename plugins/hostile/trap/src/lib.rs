//! Hostile test filter: `init` succeeds, `keep` panics on every message. On wasm32 a panic
//! aborts, i.e. traps; the SDK first writes the panic message to the broker's log.

use quiver_plugin::{Filter, Message, Params};

struct Trap;

impl Filter for Trap {
    fn init(_params: Params) -> Result<Self, String> {
        Ok(Trap)
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        panic!("trap: refuses message of {} bytes", msg.body_len());
    }
}

quiver_plugin::filter!(Trap);
