//! The example plugins of `plugins/`, compiled to wasm32-wasip2, bound by a rules file in a
//! real `quiver serve` process, and driven by real QUIC clients; and the hostile plugins,
//! each isolated while the broker keeps serving the other bindings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quiver::client::{Client, ClientError};
use quiver::message::{Delivery, NewMessage};
use quiver::protocol::ErrorCode;

use crate::process::{http_request, ServeProcess};
use crate::support::{drain, next_message, subscribe, topic};
use crate::wasm::guest;

/// A broker started with `rules`, in which `{name}` stands for the path of guest `name`.
struct Harness {
    dir: tempfile::TempDir,
    serve: ServeProcess,
    client: Client,
}

impl Harness {
    async fn start(rules: &str) -> Harness {
        Self::start_with(rules, "").await
    }

    /// With `config` as the broker's config file.
    async fn start_with(rules: &str, config: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = write_rules(dir.path(), rules);
        let config_path = dir.path().join("quiver.toml");
        std::fs::write(&config_path, config).unwrap();
        let data = dir.path().join("data");
        let serve = ServeProcess::start(
            &data,
            &[
                "--rules",
                path.to_str().unwrap(),
                "--config",
                config_path.to_str().unwrap(),
            ],
        );
        let client = Client::connect(&serve.options()).await.unwrap();
        Harness { dir, serve, client }
    }

    fn rules_path(&self) -> PathBuf {
        self.dir.path().join("rules.toml")
    }

    /// GET /stats as JSON.
    fn stats(&self) -> serde_json::Value {
        let (status, body) = http_request(self.serve.http, "GET", "/stats", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// Writes `rules` as `dir/rules.toml`, with every `"$guest"` replaced by that guest's
/// component path.
pub fn write_rules(dir: &Path, rules: &str) -> PathBuf {
    let mut text = String::new();
    let mut rest = rules;
    while let Some(start) = rest.find("\"$") {
        let end = rest[start + 2..].find('"').unwrap() + start + 2;
        text.push_str(&rest[..start]);
        text.push_str(&format!("{:?}", guest(&rest[start + 2..end])));
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    let path = dir.join("rules.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn msg(headers: &[(&str, &str)], body: impl Into<String>) -> NewMessage {
    let mut m = NewMessage::new(body.into());
    for (k, v) in headers {
        m.headers.push(*k, *v);
    }
    m
}

async fn publish(client: &Client, t: &str, messages: Vec<NewMessage>) -> Result<(), ClientError> {
    let producer = client.producer().await.unwrap();
    for chunk in messages.chunks(100) {
        producer.publish_batch(&topic(t), chunk.to_vec()).await?;
    }
    Ok(())
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8(d.body.to_vec()).unwrap())
        .collect()
}

/// Exactly `count` messages of the channel, FINning each; fails if one takes over a minute.
async fn receive(client: &Client, t: &str, c: &str, count: usize) -> Vec<Delivery> {
    let mut sub = subscribe(client, t, c, None).await;
    sub.rdy(1000).await.unwrap();
    let mut got = Vec::new();
    while got.len() < count {
        let d = next_message(&mut sub, Duration::from_secs(60)).await;
        sub.fin(d.id).await.unwrap();
        got.push(d);
    }
    got
}

#[tokio::test]
async fn a_tag_filter_keeps_exactly_the_matching_messages() {
    let h = Harness::start(
        r#"
        [[channel]]
        topic = "orders"
        name = "invoices"
        [[channel.plugins]]
        kind = "filter"
        plugin = "$tag_filter"
        params = { expr = 'type == "invoice" && region in ("eu", "us")' }

        [[channel]]
        topic = "orders"
        name = "everything"
        "#,
    )
    .await;
    let (types, regions) = (["invoice", "refund"], ["eu", "us", "apac", ""]);
    let mut messages = Vec::new();
    let mut expected = Vec::new();
    for i in 0..240 {
        let (ty, region) = (types[i % 2], regions[(i / 2) % 4]);
        let mut headers = vec![("type", ty)];
        if !region.is_empty() {
            headers.push(("region", region));
        }
        if ty == "invoice" && (region == "eu" || region == "us") {
            expected.push(format!("m{i}"));
        }
        messages.push(msg(&headers, format!("m{i}")));
    }
    publish(&h.client, "orders", messages).await.unwrap();
    let kept = drain(&h.client, "orders", "invoices").await;
    assert_eq!(
        bodies(&kept),
        expected,
        "exactly the matching ones, in order"
    );
    assert_eq!(expected.len(), 60);
    let all = drain(&h.client, "orders", "everything").await;
    assert_eq!(all.len(), 240, "a channel without filters gets everything");
    let stats = h.stats();
    let invoices = &stats["topics"][0]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "invoices")
        .unwrap()
        .clone();
    assert_eq!(invoices["skipped"], 180);
}

#[tokio::test]
async fn a_one_in_n_sampler_keeps_exactly_its_share() {
    let h = Harness::start(
        r#"
        [[channel]]
        topic = "clicks"
        name = "sampled"
        [[channel.plugins]]
        kind = "sampler"
        plugin = "$one_in_n"
        params = { n = 10 }

        [[channel]]
        topic = "clicks"
        name = "by-user"
        [[channel.plugins]]
        kind = "sampler"
        plugin = "$one_in_n"
        params = { n = "4", key = "user" }
        "#,
    )
    .await;
    let messages = (0..1000)
        .map(|i| msg(&[("user", &format!("u{}", i % 50))], format!("c{i}")))
        .collect();
    publish(&h.client, "clicks", messages).await.unwrap();
    let sampled = drain(&h.client, "clicks", "sampled").await;
    let expected: Vec<String> = (0..1000).step_by(10).map(|i| format!("c{i}")).collect();
    assert_eq!(
        bodies(&sampled),
        expected,
        "messages 1, 11, 21, ... exactly"
    );
    // Keyed: the same users every time, and every message of a kept user.
    let by_user = drain(&h.client, "clicks", "by-user").await;
    let users: BTreeSet<String> = by_user
        .iter()
        .map(|d| d.headers.get("user").unwrap().to_owned())
        .collect();
    assert_eq!(
        by_user.len(),
        users.len() * 20,
        "all 20 messages of each kept user"
    );
    assert!(!users.is_empty() && users.len() < 50, "{users:?}");
}

#[tokio::test]
async fn routers_pick_channels_and_forward_copies_to_other_topics() {
    let h = Harness::start(
        r#"
        [[topic]]
        name = "orders"
        [topic.router]
        plugin = "$header_router"
        params = { header = "region", route = { eu = "eu-orders,audit", us = "us-orders" }, default = "audit", forward = { eu = "eu-mirror" } }

        [[topic]]
        name = "events"
        unrouted = "drop"
        [topic.router]
        plugin = "$topic_router"
        params = { "bind.orders.*.eu" = "eu", "bind.orders.#" = "all-orders", "forward.#.urgent" = "pager" }
        "#,
    )
    .await;
    let regions = ["eu", "us", "apac"];
    let messages = (0..30)
        .map(|i| msg(&[("region", regions[i % 3])], format!("o{i}")))
        .collect();
    publish(&h.client, "orders", messages).await.unwrap();
    let of = |r: usize| -> Vec<String> {
        (0..30)
            .filter(|i| i % 3 == r)
            .map(|i| format!("o{i}"))
            .collect()
    };
    let eu = drain(&h.client, "orders", "eu-orders").await;
    assert_eq!(bodies(&eu), of(0));
    assert_eq!(
        bodies(&drain(&h.client, "orders", "us-orders").await),
        of(1)
    );
    let audit = bodies(&drain(&h.client, "orders", "audit").await);
    let mut expected: Vec<String> = (0..30)
        .filter(|i| i % 3 != 1)
        .map(|i| format!("o{i}"))
        .collect();
    expected.sort_by_key(|b| b[1..].parse::<u32>().unwrap());
    assert_eq!(audit, expected, "eu (routed) and apac (default)");
    // The forwarded copies: the mirror topic had no channel, so its first one gets them.
    assert_eq!(bodies(&drain(&h.client, "eu-mirror", "c").await), of(0));

    let keys = [
        "orders.1.eu",
        "orders.2.us",
        "orders.3.eu.urgent",
        "billing.x",
        "misc.urgent",
    ];
    let messages = keys
        .iter()
        .map(|k| msg(&[("routing-key", k)], k.to_string()))
        .collect();
    publish(&h.client, "events", messages).await.unwrap();
    assert_eq!(
        bodies(&drain(&h.client, "events", "eu").await),
        ["orders.1.eu"]
    );
    assert_eq!(
        bodies(&drain(&h.client, "events", "all-orders").await),
        ["orders.1.eu", "orders.2.us", "orders.3.eu.urgent"]
    );
    assert_eq!(
        bodies(&drain(&h.client, "pager", "c").await),
        ["orders.3.eu.urgent", "misc.urgent"]
    );
    let stats = h.stats();
    let events = stats["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "events")
        .unwrap();
    assert_eq!(
        events["router_dropped"], 1,
        "billing.x matched nothing: dropped"
    );
}

#[tokio::test]
async fn an_unrouted_publish_is_rejected_when_the_policy_says_so() {
    let h = Harness::start(
        r#"
        [[topic]]
        name = "strict"
        unrouted = "reject"
        [topic.router]
        plugin = "$header_router"
        params = { header = "region", route = { eu = "eu" } }

        [[topic]]
        name = "lenient"
        [topic.router]
        plugin = "$header_router"
        params = { header = "region", route = { eu = "eu" } }
        "#,
    )
    .await;
    let err = publish(
        &h.client,
        "strict",
        vec![
            msg(&[("region", "eu")], "fine"),
            msg(&[("region", "mars")], "lost?"),
        ],
    )
    .await
    .unwrap_err();
    let ClientError::Broker(wire) = &err else {
        panic!("expected a broker error, got {err}");
    };
    assert_eq!(wire.code, ErrorCode::Unrouted, "{wire}");
    assert!(!wire.fatal);
    assert!(wire.message.contains("strict"), "{wire}");
    // Nothing of the refused publish was kept; the stream still works.
    publish(&h.client, "strict", vec![msg(&[("region", "eu")], "ok")])
        .await
        .unwrap();
    assert_eq!(bodies(&drain(&h.client, "strict", "eu").await), ["ok"]);
    // The default policy dead-letters instead: nothing is lost.
    publish(
        &h.client,
        "lenient",
        vec![msg(&[("region", "mars")], "unrouted")],
    )
    .await
    .unwrap();
    let dead = drain(&h.client, "lenient.dead", "c").await;
    assert_eq!(bodies(&dead), ["unrouted"]);
    assert_eq!(dead[0].headers.get("quiver-dead-reason"), Some("unrouted"));
}

/// Every hostile plugin bound at once, next to a working filter: each is isolated, its
/// messages follow its binding's failure policy, and the rest of the broker keeps serving.
#[tokio::test]
async fn hostile_plugins_are_isolated_and_their_messages_follow_the_failure_policy() {
    // A deadline long enough for the memory hog to reach its cap first, also in a debug build
    // on a busy machine.
    let config = "[plugins]\ncall_timeout = \"300ms\"\n";
    let h = Harness::start_with(
        r#"
        [[channel]]
        topic = "t"
        name = "spin"
        [[channel.plugins]]
        kind = "filter"
        plugin = "$spin"
        on_failure = "deliver"

        [[channel]]
        topic = "t"
        name = "hog"
        [[channel.plugins]]
        kind = "filter"
        plugin = "$hog"
        on_failure = "skip"

        [[channel]]
        topic = "t"
        name = "trap"
        dead_letter_topic = "trapped"
        [[channel.plugins]]
        kind = "filter"
        plugin = "$trap"
        on_failure = "dead-letter"

        [[channel]]
        topic = "t"
        name = "good"
        [[channel.plugins]]
        kind = "filter"
        plugin = "$tag_filter"
        params = { expr = 'keep == "yes"' }
        "#,
        config,
    )
    .await;
    let n = 40;
    let messages = (0..n)
        .map(|i| {
            msg(
                &[("keep", if i % 2 == 0 { "yes" } else { "no" })],
                format!("h{i}"),
            )
        })
        .collect();
    publish(&h.client, "t", messages).await.unwrap();
    let all: Vec<String> = (0..n).map(|i| format!("h{i}")).collect();
    let even: Vec<String> = (0..n).step_by(2).map(|i| format!("h{i}")).collect();
    // A working filter next to them is unaffected.
    assert_eq!(bodies(&drain(&h.client, "t", "good").await), even);
    // Infinite loop, fail open: every message is delivered anyway, each after the plugin
    // used its CPU budget.
    assert_eq!(bodies(&receive(&h.client, "t", "spin", n).await), all);
    assert!(drain(&h.client, "t", "spin").await.is_empty());
    // Unbounded memory, `skip`: nothing delivered, nothing pending.
    assert!(drain(&h.client, "t", "hog").await.is_empty());
    // Traps on every message, `dead-letter`: nothing delivered, and every message is in the
    // channel's dead-letter topic, with the reason, and nothing else is.
    assert!(drain(&h.client, "t", "trap").await.is_empty());
    let trapped = receive(&h.client, "trapped", "c", n).await;
    assert!(drain(&h.client, "trapped", "c").await.is_empty());
    assert_eq!(bodies(&trapped), all);
    assert_eq!(
        trapped[0].headers.get("quiver-dead-reason"),
        Some("filter-fault")
    );
    assert_eq!(trapped[0].headers.get("quiver-dead-channel"), Some("trap"));

    // The faults were counted per binding, and publishing still works.
    let stats = h.stats();
    let bindings = stats["rules"]["bindings"].as_array().unwrap();
    let faults = |channel: &str, counter: &str| {
        bindings
            .iter()
            .find(|b| b["channel"] == channel)
            .map(|b| b["stats"][counter].as_u64().unwrap())
            .unwrap()
    };
    assert!(faults("spin", "cpu_timeouts") >= 1, "{bindings:#?}");
    assert!(faults("hog", "out_of_memory") >= 1, "{bindings:#?}");
    assert!(faults("trap", "traps") >= 1, "{bindings:#?}");
    assert_eq!(faults("good", "calls"), n as u64);
    publish(&h.client, "t", vec![msg(&[("keep", "yes")], "after")])
        .await
        .unwrap();
    assert_eq!(bodies(&drain(&h.client, "t", "good").await), ["after"]);
}

/// Plugins that can't serve at all are refused when the rules are loaded, with the reason:
/// at start the broker does not start; on reload the old rules keep serving.
#[tokio::test]
async fn plugins_that_cannot_load_are_refused_with_their_reason() {
    let h = Harness::start(
        r#"
        [[channel]]
        topic = "t"
        name = "good"
        [[channel.plugins]]
        kind = "filter"
        plugin = "$tag_filter"
        params = { expr = 'keep == "yes"' }
        "#,
    )
    .await;
    let not_wasm = h.dir.path().join("not-wasm.wasm");
    std::fs::write(&not_wasm, b"#!/bin/sh\necho this is not a component\n").unwrap();
    let cases = [
        ("filter", "$bad_init".to_owned(), "init"),
        (
            "filter",
            "$wrong_world".to_owned(),
            "plugin wrong_world targets the router world but is bound as a filter",
        ),
        (
            "filter",
            "$rate_limit".to_owned(),
            "plugin rate_limit targets the sampler world but is bound as a filter",
        ),
        (
            "filter",
            not_wasm.display().to_string(),
            "not a WebAssembly",
        ),
    ];
    for (kind, plugin, why) in &cases {
        let broken = format!(
            r#"
            [[channel]]
            topic = "t"
            name = "good"
            [[channel.plugins]]
            kind = "{kind}"
            plugin = "{plugin}"
            "#
        );
        // At start: refused, with the reason.
        let dir = tempfile::tempdir().unwrap();
        let path = write_rules(dir.path(), &broken);
        let out = std::process::Command::new(crate::process::BIN)
            .arg("serve")
            .args(crate::process::EPHEMERAL)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--rules")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{plugin}: started anyway");
        assert!(
            stderr.to_lowercase().contains(&why.to_lowercase()),
            "{plugin}: {stderr}"
        );
        // On reload: refused, the old rules keep serving.
        write_rules(h.dir.path(), &broken);
        let (status, body) = http_request(h.serve.http, "POST", "/rules/reload", "");
        assert!((400..500).contains(&status), "{plugin}: {status} {body}");
        assert!(
            body.to_lowercase().contains(&why.to_lowercase()),
            "{plugin}: {body}"
        );
    }
    assert_eq!(h.stats()["rules"]["version"], 1, "no reload succeeded");
    publish(
        &h.client,
        "t",
        vec![msg(&[("keep", "yes")], "a"), msg(&[("keep", "no")], "b")],
    )
    .await
    .unwrap();
    assert_eq!(bodies(&drain(&h.client, "t", "good").await), ["a"]);
    let _ = h.rules_path();
}

/// A plugin that traps on every message trips its binding's circuit breaker: from then on
/// its messages get the failure policy without a call, and `/stats`, `/metrics` and
/// `quiver stats` show the breaker open.
#[tokio::test]
async fn a_trapping_plugin_trips_its_breaker_and_its_messages_get_the_policy_without_calls() {
    // A cool-down longer than the test: once open, the breaker stays open.
    let config = "[plugins.breaker]\ncool_down = \"1h\"\nmax_cool_down = \"1h\"\n";
    let h = Harness::start_with(
        r#"
        [[channel]]
        topic = "t"
        name = "trap"
        dead_letter_topic = "trapped"
        [[channel.plugins]]
        kind = "filter"
        plugin = "$trap"
        on_failure = "dead-letter"
        "#,
        config,
    )
    .await;
    // A consumer makes the channel judge each message as it comes.
    let consumer = subscribe(&h.client, "t", "trap", None).await;
    consumer.rdy(100).await.unwrap();
    let mut dead = subscribe(&h.client, "trapped", "c", None).await;
    dead.rdy(100).await.unwrap();
    let binding = |h: &Harness| h.stats()["rules"]["bindings"][0].clone();
    // One message at a time, each dead-lettered before the next: the binding traps, waits
    // out its restart backoff (messages meanwhile get the policy), traps again, and opens
    // after five traps in a row.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    loop {
        let b = binding(&h);
        if b["breaker"]["state"] == "open" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still closed after {sent} messages: {b:#}"
        );
        let m = msg(&[], format!("m{sent}"));
        publish(&h.client, "t", vec![m]).await.unwrap();
        let d = next_message(&mut dead, Duration::from_secs(60)).await;
        dead.fin(d.id).await.unwrap();
        sent += 1;
    }
    let opened = binding(&h);
    assert_eq!(opened["stats"]["traps"], 5, "{opened:#}");
    assert_eq!(opened["breaker"]["openings"], 1, "{opened:#}");

    // Open: every message follows the policy, and the plugin is not called.
    let n = 20;
    let messages = (0..n).map(|i| msg(&[], format!("open{i}"))).collect();
    publish(&h.client, "t", messages).await.unwrap();
    for _ in 0..n {
        let d = next_message(&mut dead, Duration::from_secs(60)).await;
        assert_eq!(d.headers.get("quiver-dead-reason"), Some("filter-fault"));
        dead.fin(d.id).await.unwrap();
    }
    let open = binding(&h);
    assert_eq!(open["stats"]["calls"], opened["stats"]["calls"], "{open:#}");
    let refused = |b: &serde_json::Value| b["stats"]["breaker_refused"].as_u64().unwrap();
    assert_eq!(refused(&open), refused(&opened) + n, "{open:#}");
    assert_eq!(open["breaker"]["state"], "open");
    let since = open["breaker"]["since_ms"].as_u64().unwrap();
    let next_trial = open["breaker"]["next_trial_ms"].as_u64().unwrap();
    assert_eq!(next_trial - since, 3_600_000, "{open:#}");

    let (status, metrics) = http_request(h.serve.http, "GET", "/metrics", "");
    assert_eq!(status, 200);
    let labels = r#"{topic="t",channel="trap",plugin="trap",kind="filter"}"#;
    for sample in [
        format!("quiver_plugin_breaker_state{labels} 1\n"),
        format!("quiver_plugin_breaker_openings_total{labels} 1\n"),
        format!(
            "quiver_plugin_breaker_refused_total{labels} {}\n",
            refused(&open)
        ),
    ] {
        assert!(metrics.contains(&sample), "{sample} in:\n{metrics}");
    }
    assert!(metrics.contains("# TYPE quiver_plugin_breaker_state gauge\n"));

    // `quiver stats`, over QUIC, trusting the broker's dev certificate.
    let out = std::process::Command::new(crate::process::BIN)
        .args(["stats", "--addr", &h.serve.quic.to_string(), "--data-dir"])
        .arg(h.dir.path().join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("t/trap filter trap (on_failure dead-letter)"))
        .unwrap_or_else(|| panic!("no line for the binding in:\n{text}"));
    assert!(line.contains("; breaker open for "), "{line}");
    assert!(line.contains(", next trial in "), "{line}");
    assert!(line.ends_with(", 1 opening"), "{line}");
}
