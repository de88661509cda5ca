//! The rules file's parsing and validation: shapes, defaults, flattening, every problem.

use std::path::Path;

use super::*;

/// Writes `text` as `rules.toml` in a temp dir with empty plugin files `a.wasm`, `b.wasm`.
fn read(text: &str) -> Result<RulesSpec, RulesError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.wasm"), b"").unwrap();
    std::fs::write(dir.path().join("b.wasm"), b"").unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, text).unwrap();
    RulesSource::File(path).read()
}

fn problems(text: &str) -> Vec<String> {
    match read(text) {
        Err(RulesError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn full_example_parses_with_params_in_order() {
    let spec = read(
        r#"
[[topic]]
name = "orders"
unrouted = "reject"
[topic.router]
plugin = "a.wasm"
params = { header = "region", route.eu = "eu-billing", "route.us" = "us", default = "other", n = 3, on = true }
on_failure = "dead-letter"

[[channel]]
topic = "orders"
name = "audit"
max_attempts = 5
msg_timeout = "30s"
dead_letter_topic = "orders.audit-dead"
[[channel.plugins]]
kind = "filter"
plugin = "a.wasm"
params = { expr = 'type == "invoice"' }
on_failure = "skip"
[[channel.plugins]]
kind = "sampler"
plugin = "b.wasm"
"#,
    )
    .unwrap();
    let topic = &spec.topics[0];
    assert_eq!(topic.name.as_str(), "orders");
    assert_eq!(topic.unrouted, Unrouted::Reject);
    let router = topic.router.as_ref().unwrap();
    assert_eq!(router.kind, PluginKind::Router);
    assert_eq!(router.on_failure, OnFailure::DeadLetter);
    assert!(router.path.ends_with("a.wasm") && router.path.is_absolute());
    let keys: Vec<_> = router
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(
        keys,
        [
            "header=region",
            "route.eu=eu-billing",
            "route.us=us",
            "default=other",
            "n=3",
            "on=true"
        ]
    );
    let channel = &spec.channels[0];
    assert_eq!(channel.max_attempts, Some(5));
    assert_eq!(channel.msg_timeout, Some(Duration::from_secs(30)));
    assert_eq!(
        channel.dead_letter_topic.as_ref().unwrap().as_str(),
        "orders.audit-dead"
    );
    assert_eq!(channel.plugins.len(), 2);
    assert_eq!(channel.plugins[0].on_failure, OnFailure::Skip);
    assert_eq!(channel.plugins[1].kind, PluginKind::Sampler);
    assert_eq!(spec.plugin_files().len(), 2);
}

#[test]
fn defaults_lose_nothing_and_fail_open() {
    let spec = read(
        "[[topic]]\nname = \"t\"\n[topic.router]\nplugin = \"a.wasm\"\n\
         [[channel]]\ntopic = \"t\"\nname = \"c\"\n",
    )
    .unwrap();
    assert_eq!(spec.topics[0].unrouted, Unrouted::DeadLetter);
    let router = spec.topics[0].router.as_ref().unwrap();
    assert_eq!(router.on_failure, OnFailure::Deliver);
    assert!(router.params.is_empty());
    let channel = &spec.channels[0];
    assert_eq!((channel.max_attempts, channel.msg_timeout), (None, None));
    assert_eq!(channel.dead_letter_topic, None);
    assert_eq!(read("").unwrap(), RulesSpec::default());
}

#[test]
fn plugin_paths_resolve_against_the_rules_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/p.wasm"), b"").unwrap();
    let path = dir.path().join("sub/rules.toml");
    std::fs::write(
        &path,
        "[[topic]]\nname = \"t\"\n[topic.router]\nplugin = \"p.wasm\"\n",
    )
    .unwrap();
    let spec = RulesSource::File(path).read().unwrap();
    assert_eq!(
        spec.topics[0].router.as_ref().unwrap().path,
        dir.path().join("sub/p.wasm")
    );
}

#[test]
fn inline_rules_are_read_from_the_config_files_rules_table() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.wasm"), b"").unwrap();
    let path = dir.path().join("quiver.toml");
    std::fs::write(
        &path,
        "data_dir = \"d\"\n[[rules.channel]]\ntopic = \"t\"\nname = \"c\"\n\
         [[rules.channel.plugins]]\nkind = \"filter\"\nplugin = \"a.wasm\"\n",
    )
    .unwrap();
    let spec = RulesSource::Inline(path).read().unwrap();
    assert_eq!(spec.channels[0].plugins[0].path, dir.path().join("a.wasm"));
}

#[test]
fn unknown_fields_and_policies_are_parse_errors() {
    for text in [
        "[[topic]]\nname = \"t\"\nrouter_plugin = \"a.wasm\"\n",
        "[[topic]]\nname = \"t\"\nunrouted = \"lose\"\n",
        "[[topic]]\nname = \"t\"\n[topic.router]\nplugin = \"a.wasm\"\non_failure = \"retry\"\n",
        "[[channel]]\ntopic = \"t\"\nname = \"c\"\nmax_attempts = -1\n",
        "[[queue]]\nname = \"t\"\n",
    ] {
        let err = read(text).unwrap_err();
        assert!(matches!(err, RulesError::Parse { .. }), "{text}: {err}");
    }
}

#[test]
fn every_problem_is_reported_with_where_it_is() {
    let found = problems(
        r#"
[[topic]]
name = "bad name"
[[topic]]
name = "t"
[topic.router]
plugin = "missing.wasm"
[[topic]]
name = "t"
[[channel]]
topic = "t"
name = "c"
msg_timeout = "10"
dead_letter_topic = "no/slash"
[[channel.plugins]]
kind = "router"
plugin = "a.wasm"
[[channel.plugins]]
kind = "mapper"
plugin = "a.wasm"
[[channel.plugins]]
kind = "filter"
plugin = "a.wasm"
params = { list = [1, 2] }
[[channel]]
topic = "t"
name = "d"
msg_timeout = "500ms"
[[channel]]
topic = "t"
name = "d"
"#,
    );
    let expected = [
        "topic[0] \"bad name\": invalid topic name",
        "topic[1] \"t\" router plugin: plugin file",
        "missing.wasm does not exist",
        "topic[2] \"t\": this topic is listed more than once",
        "channel[0] \"t\"/\"c\" msg_timeout: \"10\" has no unit",
        "channel[0] \"t\"/\"c\" dead_letter_topic: invalid topic name",
        "plugins[0] kind: a router binds to a topic",
        "plugins[1] kind: unknown plugin kind \"mapper\"",
        "plugins[2] params: list: arrays are not supported",
        "channel[1] \"t\"/\"d\" msg_timeout: must be at least 1s",
        "channel[2] \"t\"/\"d\": this channel is listed more than once",
    ];
    for want in expected {
        assert!(
            found.iter().any(|p| p.contains(want)),
            "no {want:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), 10, "{found:#?}");
}

#[test]
fn nested_and_quoted_dotted_keys_collide() {
    let mut out = Vec::new();
    let table: toml::Table = toml::from_str("route.eu = \"a\"\n\"route.eu\" = \"b\"\n").unwrap();
    let err = flatten("", &table, &mut out).unwrap_err();
    assert_eq!(err, "route.eu is given more than once");
}

#[test]
fn a_missing_file_is_a_read_error() {
    let err = RulesSource::File(Path::new("/nonexistent/rules.toml").into())
        .read()
        .unwrap_err();
    assert!(err.to_string().contains("cannot read rules file"), "{err}");
}

#[test]
fn channel_ordering_is_read_and_bad_values_are_refused() {
    let spec = read(
        "[[channel]]\ntopic = \"t\"\nname = \"a\"\nordering = \"key\"\norder_key_header = \"user-id\"\n\
         [[channel]]\ntopic = \"t\"\nname = \"b\"\nordering = \"channel\"\n\
         [[channel]]\ntopic = \"t\"\nname = \"c\"\n",
    )
    .unwrap();
    let orderings: Vec<_> = spec.channels.iter().map(|c| c.ordering).collect();
    let user_id = crate::message::HeaderName::new("user-id").unwrap();
    assert_eq!(
        orderings,
        [Some(OrderBy::Key(user_id)), Some(OrderBy::Channel), None]
    );
    let found = problems(
        "[[channel]]\ntopic = \"t\"\nname = \"a\"\nordering = \"keys\"\n\
         [[channel]]\ntopic = \"t\"\nname = \"b\"\norder_key_header = \"user-id\"\n\
         [[channel]]\ntopic = \"t\"\nname = \"c\"\nordering = \"channel\"\norder_key_header = \"h\"\n",
    );
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found.iter().all(|p| p.contains("ordering")), "{found:?}");
}
