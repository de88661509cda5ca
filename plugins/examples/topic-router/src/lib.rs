//! Router: RabbitMQ-style topic routing over a routing key taken from a header.
//!
//! ```toml
//! router = { plugin = "topic_router.wasm", params = { "bind.orders.*.eu" = "eu-orders", "bind.orders.#" = "all-orders,audit", "forward.#.urgent" = "pager" } }
//! ```
//!
//! Params:
//! - `key_header`: the header holding the routing key; default `routing-key`;
//! - `bind.<pattern>`: comma-separated channels for messages whose key matches `<pattern>`
//!   (see `src/pattern.rs`: dot-separated words, `*` one word, `#` zero or more);
//! - `forward.<pattern>`: comma-separated topics that get a copy of matching messages;
//! - `default`: comma-separated channels for messages whose key matches no `bind.*`
//!   pattern, or that have no routing-key header.
//!
//! Every matching binding counts: channels are the union of all matching `bind.*` entries
//! (in the order written, each once), or `default` when none matches; forwards are the
//! union of all matching `forward.*` entries. A message without the header matches no
//! pattern (not even `#`). No channel and no forward means unrouted: the binding's
//! `unrouted` policy applies. At least one `bind.*`, `forward.*` or `default` is required.

mod pattern;

use pattern::Pattern;
use quiver_plugin::{names, Message, Params, Route, Router};

/// Default for `key_header`.
const DEFAULT_KEY_HEADER: &str = "routing-key";

struct TopicRouter {
    key_header: String,
    binds: Vec<(Pattern, Vec<String>)>,
    forwards: Vec<(Pattern, Vec<String>)>,
    default: Vec<String>,
}

impl Router for TopicRouter {
    fn init(params: Params) -> Result<Self, String> {
        params.expect_only(&["key_header", "bind.*", "forward.*", "default"])?;
        let key_header = params.get("key_header").unwrap_or(DEFAULT_KEY_HEADER);
        if key_header.is_empty() {
            return Err("parameter `key_header`: empty header name".to_owned());
        }
        let router = TopicRouter {
            key_header: key_header.to_owned(),
            binds: bindings(&params, "bind", names::channels)?,
            forwards: bindings(&params, "forward", names::topics)?,
            default: names::channels("default", params.get("default").unwrap_or(""))?,
        };
        if router.binds.is_empty() && router.forwards.is_empty() && params.get("default").is_none()
        {
            return Err(
                "no bindings: give `bind.<pattern>`, `forward.<pattern>` or `default`".to_owned(),
            );
        }
        Ok(router)
    }

    fn route(&mut self, msg: &Message<'_>) -> Route {
        self.route_key(msg.header(&self.key_header).as_deref())
    }
}

quiver_plugin::router!(TopicRouter);

impl TopicRouter {
    fn route_key(&self, key: Option<&str>) -> Route {
        let Some(key) = key else {
            return Route::to(self.default.iter().cloned());
        };
        let words: Vec<&str> = key.split('.').collect();
        let channels = union_of_matching(&self.binds, &words);
        let channels = match channels {
            Some(channels) => channels,
            None => self.default.clone(),
        };
        Route {
            channels,
            forward: union_of_matching(&self.forwards, &words).unwrap_or_default(),
        }
    }
}

/// The union of the names of every entry whose pattern matches, in order; `None` when no
/// pattern matches (as opposed to matching entries that list no names).
fn union_of_matching(table: &[(Pattern, Vec<String>)], words: &[&str]) -> Option<Vec<String>> {
    let mut out: Option<Vec<String>> = None;
    for (_, names) in table.iter().filter(|(p, _)| p.matches(words)) {
        let out = out.get_or_insert_with(Vec::new);
        for name in names {
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    out
}

/// The `<prefix>.<pattern>` entries, in order.
fn bindings(
    params: &Params,
    prefix: &str,
    parse: fn(&str, &str) -> Result<Vec<String>, String>,
) -> Result<Vec<(Pattern, Vec<String>)>, String> {
    params
        .prefixed(prefix)
        .map(|(pattern, list)| {
            Ok((
                Pattern::parse(pattern),
                parse(&format!("{prefix}.{pattern}"), list)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(params: &[(&str, &str)]) -> Result<TopicRouter, String> {
        TopicRouter::init(params.iter().copied().collect())
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn union_of_matching_bindings_in_order() {
        let r = router(&[
            ("bind.orders.*.eu", "eu-orders"),
            ("bind.orders.#", "all-orders,audit"),
            ("bind.#.eu", "audit,eu-all"),
            ("forward.#.urgent", "pager"),
            ("default", "unmatched"),
        ])
        .unwrap();
        assert_eq!(
            r.route_key(Some("orders.new.eu")),
            Route::to(["eu-orders", "all-orders", "audit", "eu-all"])
        );
        assert_eq!(
            r.route_key(Some("orders")),
            Route::to(["all-orders", "audit"])
        );
        assert_eq!(r.route_key(Some("invoices.x")), Route::to(["unmatched"]));
        assert_eq!(
            r.route_key(Some("alerts.urgent")),
            Route {
                channels: strings(&["unmatched"]),
                forward: strings(&["pager"])
            }
        );
        assert_eq!(r.route_key(None), Route::to(["unmatched"]));
    }

    #[test]
    fn a_matching_binding_with_no_channels_overrides_default() {
        let r = router(&[("bind.spam.#", ""), ("default", "other")]).unwrap();
        assert!(r.route_key(Some("spam.x")).is_unrouted());
        assert_eq!(r.route_key(Some("ham")), Route::to(["other"]));
    }

    #[test]
    fn missing_key_matches_nothing_not_even_hash() {
        let mut r = router(&[("bind.#", "all")]).unwrap();
        assert!(r.route(&Message::builder().build()).is_unrouted());
        assert_eq!(
            r.route(&Message::builder().header("routing-key", "").build()),
            Route::to(["all"])
        );
        let mut r = router(&[("key_header", "rk"), ("bind.a.*", "x")]).unwrap();
        assert_eq!(
            r.route(&Message::builder().header("rk", "a.b").build()),
            Route::to(["x"])
        );
    }

    #[test]
    fn init_refuses_bad_params() {
        let err = |p: &[(&str, &str)]| router(p).err().unwrap();
        assert_eq!(
            err(&[]),
            "no bindings: give `bind.<pattern>`, `forward.<pattern>` or `default`"
        );
        assert_eq!(
            err(&[("key_header", ""), ("default", "x")]),
            "parameter `key_header`: empty header name"
        );
        assert_eq!(
            err(&[("bind.a.*", "x,y z")]),
            "parameter `bind.a.*`: channel \"y z\": only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
        );
        assert_eq!(
            err(&[("binding.a", "x")]),
            "unknown parameter `binding.a` (expected: key_header, bind.*, forward.*, default)"
        );
    }
}
