//! Hostile test plugin: a valid router (everything to channel `all`). It targets the `router`
//! world, so loading it as a filter or a sampler must fail: it exports `route`, not `keep`.
//!
//! Parameter `channel` (default `all`) names the channel it routes everything to, unchecked:
//! a name the broker refuses (`channel = "no such!"`) makes every answer invalid, for the
//! host's tests of invalid router answers.

use quiver_plugin::{Message, Params, Route, Router};

struct All {
    channel: String,
}

impl Router for All {
    fn init(params: Params) -> Result<Self, String> {
        params.expect_only(&["channel"])?;
        let channel = params.get("channel").unwrap_or("all").to_owned();
        Ok(All { channel })
    }

    fn route(&mut self, _msg: &Message<'_>) -> Route {
        Route::to([self.channel.as_str()])
    }
}

quiver_plugin::router!(All);
