//! Router: sends a message to channels chosen by one header's value.
//!
//! ```toml
//! router = { plugin = "header_router.wasm", params = { header = "region", "route.eu" = "eu-orders,audit", "route.us" = "us-orders", default = "other", "forward.eu" = "eu-mirror" } }
//! ```
//!
//! Params:
//! - `header` (required): the header whose value (first occurrence) picks the route;
//! - `route.<value>`: comma-separated channels for messages whose header is exactly
//!   `<value>` (which may contain dots: `route.eu.west` is value `eu.west`). An empty value
//!   routes such messages to no channel, even when `default` is given;
//! - `default`: comma-separated channels for messages with no `route.<value>` entry for
//!   their value, or without the header;
//! - `forward.<value>`: comma-separated topics that get a copy of messages with that value.
//!
//! Channels are `route.<value>` if given, else `default`, else none; forwards are
//! `forward.<value>` if given, else none. No channel and no forward means unrouted: the
//! binding's `unrouted` policy applies. At least one `route.*`, `forward.*` or `default`
//! is required. Names are checked with the broker's rules at `init`.

use std::collections::BTreeMap;

use quiver_plugin::{names, Message, Params, Route, Router};

struct HeaderRouter {
    header: String,
    channels: BTreeMap<String, Vec<String>>,
    forwards: BTreeMap<String, Vec<String>>,
    default: Vec<String>,
}

impl Router for HeaderRouter {
    fn init(params: Params) -> Result<Self, String> {
        params.expect_only(&["header", "route.*", "forward.*", "default"])?;
        let header = params.required("header")?;
        if header.is_empty() {
            return Err("parameter `header`: empty header name".to_owned());
        }
        let router = HeaderRouter {
            header: header.to_owned(),
            channels: table(&params, "route", names::channels)?,
            forwards: table(&params, "forward", names::topics)?,
            default: names::channels("default", params.get("default").unwrap_or(""))?,
        };
        if router.channels.is_empty()
            && router.forwards.is_empty()
            && params.get("default").is_none()
        {
            return Err(
                "no routes: give `route.<value>`, `forward.<value>` or `default`".to_owned(),
            );
        }
        Ok(router)
    }

    fn route(&mut self, msg: &Message<'_>) -> Route {
        self.route_value(msg.header(&self.header).as_deref())
    }
}

quiver_plugin::router!(HeaderRouter);

impl HeaderRouter {
    fn route_value(&self, value: Option<&str>) -> Route {
        let pick =
            |table: &BTreeMap<String, Vec<String>>| value.and_then(|v| table.get(v)).cloned();
        Route {
            channels: pick(&self.channels).unwrap_or_else(|| self.default.clone()),
            forward: pick(&self.forwards).unwrap_or_default(),
        }
    }
}

/// The `<prefix>.<value>` entries as value → names.
fn table(
    params: &Params,
    prefix: &str,
    parse: fn(&str, &str) -> Result<Vec<String>, String>,
) -> Result<BTreeMap<String, Vec<String>>, String> {
    params
        .prefixed(prefix)
        .map(|(value, list)| Ok((value.to_owned(), parse(&format!("{prefix}.{value}"), list)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(params: &[(&str, &str)]) -> Result<HeaderRouter, String> {
        HeaderRouter::init(params.iter().copied().collect())
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn routes_by_value_with_default_and_forwards() {
        let r = router(&[
            ("header", "region"),
            ("route.eu", "eu-orders, audit"),
            ("route.us", "us-orders"),
            ("route.eu.west", "west"),
            ("route.spam", ""),
            ("default", "other"),
            ("forward.eu", "eu-mirror"),
            ("forward.ap", "ap-mirror"),
        ])
        .unwrap();
        let route = |v: Option<&str>| r.route_value(v);
        assert_eq!(
            route(Some("eu")),
            Route {
                channels: strings(&["eu-orders", "audit"]),
                forward: strings(&["eu-mirror"])
            }
        );
        assert_eq!(route(Some("us")), Route::to(["us-orders"]));
        assert_eq!(route(Some("eu.west")), Route::to(["west"]));
        assert_eq!(
            route(Some("ap")),
            Route {
                channels: strings(&["other"]),
                forward: strings(&["ap-mirror"])
            }
        );
        assert_eq!(route(Some("EU")), Route::to(["other"]));
        assert_eq!(route(None), Route::to(["other"]));
        assert!(route(Some("spam")).is_unrouted());
    }

    #[test]
    fn without_default_unknown_values_are_unrouted() {
        let mut r = router(&[("header", "h"), ("route.a", "x")]).unwrap();
        assert!(r
            .route(&Message::builder().header("h", "b").build())
            .is_unrouted());
        assert!(r.route(&Message::builder().build()).is_unrouted());
        assert_eq!(
            r.route(&Message::builder().header("h", "a").build()),
            Route::to(["x"])
        );
    }

    #[test]
    fn init_refuses_bad_params() {
        let err = |p: &[(&str, &str)]| router(p).err().unwrap();
        assert_eq!(
            err(&[("route.a", "x")]),
            "missing required parameter `header`"
        );
        assert_eq!(
            err(&[("header", "h")]),
            "no routes: give `route.<value>`, `forward.<value>` or `default`"
        );
        assert_eq!(
            err(&[("header", "h"), ("route.a", "x y")]),
            "parameter `route.a`: channel \"x y\": only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
        );
        assert_eq!(
            err(&[("header", "h"), ("forward.a", "t,")]),
            "parameter `forward.a`: topic \"\": must not be empty"
        );
        assert_eq!(
            err(&[("header", "h"), ("routes.a", "x")]),
            "unknown parameter `routes.a` (expected: header, route.*, forward.*, default)"
        );
        assert_eq!(
            err(&[("header", "h"), ("route.a", "x"), ("route.a", "y")]),
            "parameter `route.a` is given more than once"
        );
    }
}
