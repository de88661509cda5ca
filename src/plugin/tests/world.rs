//! Kinds checked at load against the world a component's type targets (`plugin::world`),
//! with the example plugins.

use super::{guest, host, load};
use crate::plugin::{PluginError, PluginKind};

#[test]
fn a_sampler_that_reads_the_clock_is_refused_as_a_filter() {
    let host = host();
    let err = host
        .load(&guest("rate_limit"), PluginKind::Filter)
        .unwrap_err();
    let PluginError::KindMismatch {
        plugin,
        targets,
        bound,
        why,
    } = &err
    else {
        panic!("expected KindMismatch, got {err:?}");
    };
    assert_eq!(plugin, "rate_limit");
    assert_eq!((*targets, *bound), ("sampler", PluginKind::Filter));
    assert!(why.contains("wasi:clocks/"), "{why}");
    assert!(
        err.to_string()
            .starts_with("plugin rate_limit targets the sampler world but is bound as a filter"),
        "{err}"
    );
}

#[test]
fn filters_and_samplers_are_refused_as_routers() {
    let host = host();
    for (name, targets) in [
        ("tag_filter", "filter or sampler"),
        ("rate_limit", "sampler"),
    ] {
        let err = host.load(&guest(name), PluginKind::Router).unwrap_err();
        let expected = format!("targets the {targets} world but is bound as a router");
        assert!(err.to_string().contains(&expected), "{name}: {err}");
    }
}

#[test]
fn every_example_loads_as_its_own_kind() {
    let host = host();
    for (name, kind) in [
        ("tag_filter", PluginKind::Filter),
        ("json_filter", PluginKind::Filter),
        ("one_in_n", PluginKind::Sampler),
        ("rate_limit", PluginKind::Sampler),
        ("header_router", PluginKind::Router),
        ("topic_router", PluginKind::Router),
    ] {
        assert_eq!(load(&host, name, kind).kind(), kind, "{name}");
    }
    // A filter's type fits the sampler world too: it may be bound as one.
    load(&host, "tag_filter", PluginKind::Sampler);
}
