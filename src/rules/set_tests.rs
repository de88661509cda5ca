//! Rule sets over real plugins: failure and unrouted policies, load problems, binding reuse,
//! and a failed reload keeping the old set.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::broker::BrokerConfig;
use crate::message::{Headers, MessageId};
use crate::plugin::tests::guest;
use crate::plugin::PluginLimits;
use crate::rules::file::RulesSource;
use crate::rules::Reloader;
use crate::storage::MemoryStorage;

fn host() -> PluginHost {
    PluginHost::new(PluginLimits::default(), None).unwrap()
}

/// Writes `rules` to `dir/rules.toml`, with `{name}` replaced by the built guest's path.
fn write_rules(dir: &Path, rules: &str) -> PathBuf {
    let mut text = rules.to_owned();
    for name in [
        "trap",
        "spin",
        "bad_init",
        "wrong_world",
        "one_in_n",
        "rate_limit",
        "tag_filter",
        "header_router",
    ] {
        let path = guest(name);
        text = text.replace(&format!("{{{name}}}"), &path.display().to_string());
    }
    let path = dir.join("rules.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn build(
    dir: &Path,
    rules: &str,
    old: Option<&RuleSet>,
) -> Result<(RuleSet, BuildReport), RulesError> {
    let spec = RulesSource::File(write_rules(dir, rules)).read().unwrap();
    RuleSet::build(&host(), spec, old)
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn message<'a>(topic: &'a TopicName, headers: &'a Headers, body: &'a [u8]) -> MessageRef<'a> {
    MessageRef {
        topic,
        id: MessageId::new(1, 1),
        timestamp_ns: 0,
        attempts: 1,
        headers,
        body,
    }
}

fn gate_answer(rules: &str) -> Admission {
    let dir = tempfile::tempdir().unwrap();
    let (set, _) = build(dir.path(), rules, None).unwrap();
    let rules = Rules::new(set);
    let gate = rules.gate(&topic("t"), &channel("c")).unwrap();
    let headers = Headers::new();
    gate.admit(&message(&topic("t"), &headers, b"abc"))
}

fn filter_rules(plugin: &str, on_failure: &str) -> String {
    format!(
        "[[channel]]\ntopic = \"t\"\nname = \"c\"\n[[channel.plugins]]\nkind = \"filter\"\n\
         plugin = \"{{{plugin}}}\"\non_failure = \"{on_failure}\"\n"
    )
}

#[test]
fn a_faulting_filter_follows_its_on_failure_policy() {
    assert_eq!(
        gate_answer(&filter_rules("trap", "deliver")),
        Admission::Keep
    );
    assert_eq!(gate_answer(&filter_rules("trap", "skip")), Admission::Skip);
    assert_eq!(
        gate_answer(&filter_rules("trap", "dead-letter")),
        Admission::DeadLetter {
            reason: FILTER_FAULT.into()
        }
    );
    assert_eq!(gate_answer(&filter_rules("spin", "skip")), Admission::Skip);
}

#[test]
fn deliver_goes_on_to_the_next_plugin_of_the_chain() {
    let rules = format!(
        "{}[[channel.plugins]]\nkind = \"filter\"\nplugin = \"{{tag_filter}}\"\n\
         params = {{ expr = 'type == \"invoice\"' }}\n",
        filter_rules("trap", "deliver")
    );
    assert_eq!(
        gate_answer(&rules),
        Admission::Skip,
        "the tag filter skips it"
    );
}

#[test]
fn a_chain_decides_a_batch_as_it_decides_each_message() {
    // A sampler keeping 1 in 2, then a filter on `type`, then a filter that traps on
    // messages marked `poison` and dead-letters them.
    let rules = "[[channel]]\ntopic = \"t\"\nname = \"c\"\n\
         [[channel.plugins]]\nkind = \"sampler\"\nplugin = \"{one_in_n}\"\nparams = { n = \"2\" }\n\
         [[channel.plugins]]\nkind = \"filter\"\nplugin = \"{tag_filter}\"\n\
         params = { expr = 'type == \"invoice\"' }\n\
         [[channel.plugins]]\nkind = \"filter\"\nplugin = \"{trap}\"\nparams = { on = \"poison\" }\n\
         on_failure = \"dead-letter\"\n";
    let headers: Vec<Headers> = (0..40)
        .map(|i| {
            let mut h = Headers::new();
            h.push("type", if i % 3 == 0 { "order" } else { "invoice" });
            if i == 20 || i == 22 {
                h.push("poison", "1");
            }
            h
        })
        .collect();
    let t = topic("t");
    let refs: Vec<MessageRef<'_>> = headers.iter().map(|h| message(&t, h, b"x")).collect();
    let answers = |batched: bool| {
        let dir = tempfile::tempdir().unwrap();
        let (set, _) = build(dir.path(), rules, None).unwrap();
        let gate = Rules::new(set).gate(&t, &channel("c")).unwrap();
        let mut out = Vec::new();
        if batched {
            gate.admit_batch(&refs, &mut out);
        } else {
            out.extend(refs.iter().map(|m| gate.admit(m)));
        }
        out
    };
    let batched = answers(true);
    assert_eq!(batched, answers(false));
    let dead = Admission::DeadLetter {
        reason: FILTER_FAULT.into(),
    };
    assert_eq!(
        batched[20], dead,
        "kept by the sampler and the filter, then trapped"
    );
    assert_eq!(
        batched[21],
        Admission::Skip,
        "the sampler skips odd messages"
    );
    assert_eq!(batched[2], Admission::Keep);
    assert_eq!(batched[6], Admission::Skip, "an order");
    assert_eq!(
        batched[22], dead,
        "the trap's backoff: no decision, so its policy"
    );
}

#[test]
fn router_faults_and_unrouted_answers_follow_their_policies() {
    let dir = tempfile::tempdir().unwrap();
    let rules = |on_failure: &str, unrouted: &str| {
        format!(
            "[[topic]]\nname = \"t\"\nunrouted = \"{unrouted}\"\n[topic.router]\n\
             plugin = \"{{header_router}}\"\nparams = {{ header = \"region\", route.eu = \"eu\" }}\n\
             on_failure = \"{on_failure}\"\n"
        )
    };
    let t = topic("t");
    let none = Headers::new();
    let mut eu = Headers::new();
    eu.push("region", "eu");
    for (on_failure, fault) in [
        ("deliver", Routing::All),
        ("skip", Routing::Drop),
        (
            "dead-letter",
            Routing::DeadLetter {
                reason: ROUTER_FAULT.into(),
            },
        ),
    ] {
        let (set, _) = build(dir.path(), &rules(on_failure, "drop"), None).unwrap();
        assert_eq!(set.routers[&t].on_fault(), fault, "{on_failure}");
    }
    for (unrouted, answer) in [
        ("drop", Routing::Drop),
        (
            "dead-letter",
            Routing::DeadLetter {
                reason: UNROUTED.into(),
            },
        ),
    ] {
        let (set, _) = build(dir.path(), &rules("deliver", unrouted), None).unwrap();
        let router = Rules::new(set).router(&t).unwrap();
        assert_eq!(
            router.route(&message(&t, &none, b"x"), false),
            Decision::Made(answer),
            "{unrouted}"
        );
        let routed = router.route(&message(&t, &eu, b"x"), false);
        assert_eq!(
            routed,
            Decision::Made(Routing::To {
                channels: vec![channel("eu")],
                forward: vec![]
            })
        );
    }
    let (set, _) = build(dir.path(), &rules("deliver", "reject"), None).unwrap();
    let Decision::Made(Routing::Reject { reason }) =
        set.routers[&t].route(&message(&t, &none, b"x"), false)
    else {
        panic!("expected a reject");
    };
    assert!(reason.contains("topic t"), "{reason}");
}

#[test]
fn every_plugin_that_cannot_load_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.wasm");
    std::fs::write(&text_file, "not wasm").unwrap();
    let rules = format!(
        "[[channel]]\ntopic = \"t\"\nname = \"c\"\n\
         [[channel.plugins]]\nkind = \"filter\"\nplugin = \"{{bad_init}}\"\nparams = {{ any = \"thing\" }}\n\
         [[channel.plugins]]\nkind = \"sampler\"\nplugin = \"{{wrong_world}}\"\n\
         [[channel.plugins]]\nkind = \"filter\"\nplugin = \"{}\"\n\
         [[channel.plugins]]\nkind = \"filter\"\nplugin = \"{{rate_limit}}\"\nparams = {{ per_second = \"5\" }}\n",
        text_file.display()
    );
    let err = build(dir.path(), &rules, None).unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].contains("plugins[0]") && problems[0].contains("bad-init always refuses"));
    assert!(
        problems[1].contains("targets the router world but is bound as a sampler"),
        "{}",
        problems[1]
    );
    assert!(
        problems[2].contains("not a WebAssembly component"),
        "{}",
        problems[2]
    );
    assert!(
        problems[3].contains("plugins[3]")
            && problems[3]
                .contains("plugin rate_limit targets the sampler world but is bound as a filter"),
        "{}",
        problems[3]
    );
}

const SAMPLED: &str = "[[channel]]\ntopic = \"t\"\nname = \"c\"\n\
    [[channel.plugins]]\nkind = \"sampler\"\nplugin = \"{one_in_n}\"\nparams = { n = 2 }\n\
    [[channel.plugins]]\nkind = \"filter\"\nplugin = \"{tag_filter}\"\n";

#[test]
fn an_unchanged_binding_is_taken_over_by_the_next_set() {
    let dir = tempfile::tempdir().unwrap();
    let first = format!("{SAMPLED}params = {{ expr = 'type == \"a\"' }}\n");
    let second = format!("{SAMPLED}params = {{ expr = 'type == \"b\"' }}\n");
    let (old, report) = build(dir.path(), &first, None).unwrap();
    assert_eq!(
        report,
        BuildReport {
            started: 2,
            reused: 0
        }
    );
    let (new, report) = build(dir.path(), &second, Some(&old)).unwrap();
    assert_eq!(
        report,
        BuildReport {
            started: 1,
            reused: 1
        }
    );
    let old: Vec<_> = old.bindings().collect();
    let new: Vec<_> = new.bindings().collect();
    assert!(
        Arc::ptr_eq(&old[0].binding, &new[0].binding),
        "the sampler keeps its state"
    );
    assert!(
        !Arc::ptr_eq(&old[1].binding, &new[1].binding),
        "the filter's params changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_keeps_the_old_set_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let good = format!("{SAMPLED}params = {{ expr = 'type == \"a\"' }}\n");
    let path = write_rules(dir.path(), &good);
    let broker = Broker::new(BrokerConfig::default(), Arc::new(MemoryStorage));
    let reloader = Reloader::start(Arc::new(host()), RulesSource::File(path), broker.clone())
        .await
        .unwrap();
    reloader.apply().await.unwrap();
    assert_eq!(reloader.status().version, 1);
    assert!(broker
        .stats(&crate::broker::Principal::internal(), None)
        .unwrap()
        .topic("t")
        .unwrap()
        .channel("c")
        .is_some());

    write_rules(
        dir.path(),
        &format!("{SAMPLED}params = {{ expr = '((' }}\n"),
    );
    let reason = reloader.reload().await.unwrap_err();
    assert!(reason.contains("refused its parameters"), "{reason}");
    let status = reloader.status();
    assert_eq!((status.version, status.failed_reloads), (1, 1));
    assert_eq!(status.last_error.unwrap().reason, reason);
    assert_eq!(status.bindings.len(), 2, "the old set still serves");

    write_rules(dir.path(), &good);
    let status = reloader.reload().await.unwrap();
    assert_eq!(
        (status.version, status.reloads, status.failed_reloads),
        (2, 1, 1)
    );
    assert_eq!(status.last_error, None, "a good reload clears the failure");
    let previous = status.previous_error.expect("the cleared failure is kept");
    assert_eq!(previous.failure.reason, reason);
    assert!(previous.cleared_at >= previous.failure.at, "{previous:?}");
}
