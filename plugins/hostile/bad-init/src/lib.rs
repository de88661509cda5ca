//! Hostile test filter: `init` always refuses, so the binding must be refused with this
//! message and `keep` never called.

use quiver_plugin::{Filter, Message, Params};

struct BadInit;

impl Filter for BadInit {
    fn init(_params: Params) -> Result<Self, String> {
        Err("bad-init always refuses".to_owned())
    }

    fn keep(&mut self, _msg: &Message<'_>) -> bool {
        true
    }
}

quiver_plugin::filter!(BadInit);
