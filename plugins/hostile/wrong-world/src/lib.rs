//! Hostile test plugin: a valid router (everything to channel `all`). It targets the `router`
//! world, so loading it as a filter or a sampler must fail: it exports `route`, not `keep`.

use quiver_plugin::{Message, Params, Route, Router};

struct All;

impl Router for All {
    fn init(_params: Params) -> Result<Self, String> {
        Ok(All)
    }

    fn route(&mut self, _msg: &Message<'_>) -> Route {
        Route::to(["all"])
    }
}

quiver_plugin::router!(All);
