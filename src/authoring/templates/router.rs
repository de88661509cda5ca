//! A Quiver router: sends each message to the channel named by its header `header`.
//!
//! Params: `header` (required); `default` (optional), the channel for messages without the
//! header or whose value is not a valid channel name. Without `default` such messages are
//! unrouted, and the binding's `unrouted` policy applies.

use quiver_plugin::{names, Message, Params, Route, Router};

struct ByHeader {
    header: String,
    default: Option<String>,
}

impl Router for ByHeader {
    fn init(params: Params) -> Result<Self, String> {
        params.expect_only(&["header", "default"])?;
        let default = params.get("default").map(str::to_owned);
        if let Some(channel) = &default {
            names::check("channel", channel).map_err(|e| format!("parameter `default`: {e}"))?;
        }
        Ok(ByHeader {
            header: params.required("header")?.to_owned(),
            default,
        })
    }

    fn route(&mut self, msg: &Message<'_>) -> Route {
        let value = msg.header(&self.header);
        let channel = value
            .filter(|v| names::check("channel", v).is_ok())
            .or_else(|| self.default.clone());
        channel.map_or_else(Route::unrouted, |c| Route::to([c]))
    }
}

quiver_plugin::router!(ByHeader);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_the_header_or_the_default() {
        let params = Params::from([("header", "region"), ("default", "other")]);
        let mut router = ByHeader::init(params).unwrap();
        let eu = Message::builder().header("region", "eu").build();
        assert_eq!(router.route(&eu), Route::to(["eu"]));
        assert_eq!(router.route(&Message::builder().build()), Route::to(["other"]));

        let mut strict = ByHeader::init(Params::from([("header", "region")])).unwrap();
        assert!(strict.route(&Message::builder().build()).is_unrouted());
    }
}
