//! The example plugins decide correctly through the host: filters, samplers, routers.

use super::{host, load, params, TestMessage};
use crate::plugin::{
    Instance, PluginError, PluginFault, PluginHost, PluginKind, PluginLimits, Route,
};

fn start(host: &PluginHost, name: &str, kind: PluginKind, pairs: &[(&str, &str)]) -> Instance {
    let plugin = load(host, name, kind);
    host.instantiate(&plugin, &params(pairs))
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn tag_filter_keeps_messages_whose_headers_match() {
    let host = host();
    let expr = r#"type == "invoice" && region in ("eu", "us")"#;
    let mut filter = start(&host, "tag_filter", PluginKind::Filter, &[("expr", expr)]);

    let eu = TestMessage::new(b"")
        .header("type", "invoice")
        .header("region", "eu");
    let ap = TestMessage::new(b"")
        .header("type", "invoice")
        .header("region", "ap");
    let first_wins = TestMessage::new(b"")
        .header("type", "receipt")
        .header("type", "invoice")
        .header("region", "us");

    assert!(filter.keep(&eu.view()).unwrap());
    assert!(!filter.keep(&ap.view()).unwrap());
    assert!(!filter.keep(&TestMessage::new(b"").view()).unwrap());
    assert!(
        !filter.keep(&first_wins.view()).unwrap(),
        "header() returns the first match"
    );
}

#[test]
fn tag_filter_refuses_a_bad_expression_at_init() {
    let host = host();
    let plugin = load(&host, "tag_filter", PluginKind::Filter);

    let err = host
        .instantiate(&plugin, &params(&[("expr", "type ==")]))
        .unwrap_err();

    let PluginError::Init { message, .. } = err else {
        panic!("expected Init, got {err:?}");
    };
    assert!(message.contains("expr"), "{message}");
}

#[test]
fn json_filter_reads_the_body() {
    let host = host();
    let pairs = [("field", "order.region"), ("equals", "eu")];
    let mut filter = start(&host, "json_filter", PluginKind::Filter, &pairs);

    let eu = TestMessage::new(br#"{"order":{"region":"eu","n":1}}"#);
    let us = TestMessage::new(br#"{"order":{"region":"us"}}"#);
    let junk = TestMessage::new(b"not json");

    assert!(filter.keep(&eu.view()).unwrap());
    assert!(!filter.keep(&us.view()).unwrap());
    assert!(!filter.keep(&junk.view()).unwrap());
}

#[test]
fn body_over_the_memory_cap_is_refused_before_it_is_copied() {
    let limits = PluginLimits {
        memory_bytes: 4 << 20,
        ..PluginLimits::default()
    };
    let host = PluginHost::new(limits, None).unwrap();
    let pairs = [("field", "a"), ("exists", "true")];
    let mut filter = start(&host, "json_filter", PluginKind::Filter, &pairs);
    let big = TestMessage::new(&vec![b' '; 5 << 20]);

    let fault = filter.keep(&big.view()).unwrap_err();

    assert_eq!(
        fault,
        PluginFault::TooLarge {
            body: 5 << 20,
            limit: 4 << 20
        }
    );
    let mut fresh = start(&host, "json_filter", PluginKind::Filter, &pairs);
    assert!(fresh.keep(&TestMessage::new(br#"{"a":1}"#).view()).unwrap());
}

#[test]
fn one_in_n_sampler_keeps_state_between_calls() {
    let host = host();
    let mut sampler = start(&host, "one_in_n", PluginKind::Sampler, &[("n", "3")]);
    let msg = TestMessage::new(b"x");

    let decisions: Vec<bool> = (0..7).map(|_| sampler.keep(&msg.view()).unwrap()).collect();

    assert_eq!(decisions, [true, false, false, true, false, false, true]);
}

#[test]
fn rate_limit_sampler_passes_its_burst_then_limits() {
    let host = host();
    let pairs = [("per_second", "0.001"), ("burst", "2"), ("key", "user")];
    let mut sampler = start(&host, "rate_limit", PluginKind::Sampler, &pairs);
    let alice = TestMessage::new(b"").header("user", "alice");
    let bob = TestMessage::new(b"").header("user", "bob");

    let mut keep = |m: &TestMessage| sampler.keep(&m.view()).unwrap();

    assert!(keep(&alice));
    assert!(keep(&alice));
    assert!(!keep(&alice), "alice's burst is spent");
    assert!(keep(&bob), "bob has his own bucket");
}

#[test]
fn header_router_routes_by_value_with_default_and_forwards() {
    let host = host();
    let pairs = [
        ("header", "region"),
        ("route.eu", "eu-orders,audit"),
        ("default", "other"),
        ("forward.eu", "eu-mirror"),
    ];
    let mut router = start(&host, "header_router", PluginKind::Router, &pairs);
    let mut route = |m: TestMessage| router.route(&m.view()).unwrap();

    assert_eq!(
        route(TestMessage::new(b"").header("region", "eu")),
        Route {
            channels: strings(&["eu-orders", "audit"]),
            forward: strings(&["eu-mirror"]),
        }
    );
    assert_eq!(
        route(TestMessage::new(b"").header("region", "ap")).channels,
        ["other"]
    );
    assert_eq!(route(TestMessage::new(b"")).channels, ["other"]);
}

#[test]
fn topic_router_matches_routing_key_patterns() {
    let host = host();
    let pairs = [
        ("bind.orders.*.eu", "eu-orders"),
        ("bind.orders.#", "all-orders"),
        ("forward.#.urgent", "pager"),
    ];
    let mut router = start(&host, "topic_router", PluginKind::Router, &pairs);
    let mut route = |key: Option<&str>| {
        let msg = match key {
            Some(key) => TestMessage::new(b"").header("routing-key", key),
            None => TestMessage::new(b""),
        };
        router.route(&msg.view()).unwrap()
    };

    assert_eq!(
        route(Some("orders.new.eu")).channels,
        ["eu-orders", "all-orders"]
    );
    let urgent = route(Some("orders.urgent"));
    assert_eq!(urgent.channels, ["all-orders"]);
    assert_eq!(urgent.forward, ["pager"]);
    assert!(route(None).is_unrouted());
}

#[test]
fn filter_loads_as_a_sampler_too() {
    // The filter and sampler worlds export the same functions; nothing in a component tells
    // them apart, so the kind is the caller's word.
    let host = host();
    let mut sampler = start(
        &host,
        "tag_filter",
        PluginKind::Sampler,
        &[("expr", "exists(a)")],
    );
    assert!(sampler
        .keep(&TestMessage::new(b"").header("a", "1").view())
        .unwrap());
}
