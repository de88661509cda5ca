//! The broker with hooks installed: what it does with each routing and admission answer.
//!
//! The hooks here are plain Rust implementations of the traits, deciding by a `to` header,
//! so that each answer can be produced on purpose. The WebAssembly plugins that answer in
//! production are tested through a real broker in `tests/integration/plugins.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::message::{Headers, MessageId};
use crate::storage::{FileStorage, MemoryStorage, StorageConfig};

/// Routes by the `to` header: `all`, `drop`, `dead`, `reject`, `fwd:<topic>`, or a
/// comma-separated list of channels. Records the ids it was shown.
#[derive(Debug, Default)]
struct HeaderRouter {
    seen: Mutex<Vec<MessageId>>,
}

impl Router for HeaderRouter {
    fn route(&self, message: &MessageRef<'_>, _may_wait: bool) -> Decision<Routing> {
        self.seen.lock().unwrap().push(message.id);
        Decision::Made(match message.headers.get("to").unwrap_or("all") {
            "all" => Routing::All,
            "drop" => Routing::Drop,
            "dead" => Routing::DeadLetter {
                reason: "unrouted".into(),
            },
            "reject" => Routing::Reject {
                reason: "nowhere to go".into(),
            },
            to => match to.strip_prefix("fwd:") {
                Some(target) => Routing::To {
                    channels: vec![],
                    forward: vec![TopicName::new(target).unwrap()],
                },
                None => Routing::To {
                    channels: to
                        .split(',')
                        .map(|c| ChannelName::new(c).unwrap())
                        .collect(),
                    forward: vec![],
                },
            },
        })
    }
}

/// Skips bodies starting with `skip`, dead-letters those starting with `dead`.
#[derive(Debug)]
struct BodyGate;

impl Gate for BodyGate {
    fn admit(&self, message: &MessageRef<'_>) -> Admission {
        assert_eq!(message.attempts, 1);
        if message.body.starts_with(b"skip") {
            Admission::Skip
        } else if message.body.starts_with(b"dead") {
            Admission::DeadLetter {
                reason: "filter-fault".into(),
            }
        } else {
            Admission::Keep
        }
    }
}

/// A router on topics named `routed*`, the body gate on channels named `gated`, and dead
/// letters of `gated` to `gated-dead`.
#[derive(Debug, Default)]
struct TestHooks {
    router: Arc<HeaderRouter>,
}

impl Hooks for TestHooks {
    fn router(&self, topic: &TopicName) -> Option<Arc<dyn Router>> {
        let router: Arc<dyn Router> = self.router.clone();
        topic.as_str().starts_with("routed").then_some(router)
    }

    fn gate(&self, _topic: &TopicName, channel: &ChannelName) -> Option<Arc<dyn Gate>> {
        (channel.as_str() == "gated").then(|| Arc::new(BodyGate) as Arc<dyn Gate>)
    }

    fn dead_letter_topic(&self, _topic: &TopicName, channel: &ChannelName) -> Option<TopicName> {
        (channel.as_str() == "gated").then(|| TopicName::new("gated-dead").unwrap())
    }
}

fn broker_on(storage: Arc<dyn Storage>) -> (Broker, Arc<TestHooks>) {
    let broker = Broker::new(BrokerConfig::default(), storage);
    let hooks = Arc::new(TestHooks::default());
    assert!(broker.set_hooks(hooks.clone()));
    (broker, hooks)
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn msg(to: &str, body: &str) -> NewMessage {
    let mut headers = Headers::new();
    headers.push("to", to);
    NewMessage {
        headers,
        body: body.to_owned().into(),
    }
}

/// Subscribes with plenty of credit and returns the bodies it can take now.
fn drain(broker: &Broker, t: &str, c: &str) -> Vec<(MessageId, String)> {
    let sub = broker
        .subscribe(
            &std::sync::Arc::new(crate::broker::Principal::internal()),
            &topic(t),
            &channel(c),
            None,
        )
        .unwrap();
    sub.set_rdy(1000).unwrap();
    let mut out = Vec::new();
    while sub.take(1000, &mut out) > 0 {}
    out.iter()
        .map(|t| {
            let body = String::from_utf8(t.message.body.to_vec()).unwrap();
            sub.fin(sub.message_id(t.offset)).unwrap();
            (sub.message_id(t.offset), body)
        })
        .collect()
}

fn bodies(taken: Vec<(MessageId, String)>) -> Vec<String> {
    taken.into_iter().map(|(_, b)| b).collect()
}

#[tokio::test]
async fn routed_messages_reach_only_their_channels_and_routers_see_their_ids() {
    let (broker, hooks) = broker_on(Arc::new(MemoryStorage));
    let t = topic("routed");
    broker
        .create_channel(
            &Principal::internal(),
            &t,
            &channel("a"),
            ChannelSettings::default(),
        )
        .unwrap();
    broker
        .create_channel(
            &Principal::internal(),
            &t,
            &channel("b"),
            ChannelSettings::default(),
        )
        .unwrap();
    let batch = vec![
        msg("a", "1"),
        msg("b", "2"),
        msg("a,b", "3"),
        msg("all", "4"),
    ];
    let range = broker
        .publish(&Principal::internal(), &t, batch, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(range, 0..4);
    // "c" did not exist: the router's answer created it, so it has message 5.
    broker
        .publish(
            &Principal::internal(),
            &t,
            vec![msg("c", "5")],
            Duration::ZERO,
        )
        .await
        .unwrap();
    let a = drain(&broker, "routed", "a");
    assert_eq!(bodies(a.clone()), ["1", "3", "4"]);
    assert_eq!(bodies(drain(&broker, "routed", "b")), ["2", "3", "4"]);
    assert_eq!(bodies(drain(&broker, "routed", "c")), ["5"]);
    let seen = hooks.router.seen.lock().unwrap().clone();
    assert_eq!(seen[0], a[0].0, "the router saw the id the message got");
    assert_eq!(seen[2], a[1].0);
    let stats = broker
        .stats(&Principal::internal(), Some(&t))
        .unwrap()
        .topics
        .remove(0);
    let skipped: Vec<u64> = stats.channels.iter().map(|c| c.skipped).collect();
    assert_eq!(
        skipped,
        [2, 2, 0],
        "a, b, c (c opened at the end of the log)"
    );
}

#[tokio::test]
async fn drop_dead_letter_and_reject_follow_the_routers_answer() {
    let (broker, _) = broker_on(Arc::new(MemoryStorage));
    let t = topic("routed");
    broker
        .create_channel(
            &Principal::internal(),
            &t,
            &channel("a"),
            ChannelSettings::default(),
        )
        .unwrap();
    let range = broker
        .publish(
            &Principal::internal(),
            &t,
            vec![msg("drop", "d"), msg("dead", "x"), msg("a", "kept")],
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(range, 0..1, "only the kept message is in the topic");
    let dead = drain(&broker, "routed.dead", "c");
    assert_eq!(bodies(dead), ["x"]);
    // A rejected message refuses the whole publish: the kept one with it is not stored.
    let err = broker
        .publish(
            &Principal::internal(),
            &t,
            vec![msg("a", "not stored"), msg("reject", "r")],
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Unrouted { .. }), "{err}");
    assert!(err.to_string().contains("nowhere to go"), "{err}");
    assert_eq!(bodies(drain(&broker, "routed", "a")), ["kept"]);
    let stats = broker
        .stats(&Principal::internal(), Some(&t))
        .unwrap()
        .topics
        .remove(0);
    assert_eq!(
        (
            stats.router_dropped,
            stats.router_dead_lettered,
            stats.router_rejected
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn forwards_are_routed_by_the_target_and_never_loop() {
    let (broker, _) = broker_on(Arc::new(MemoryStorage));
    broker
        .create_channel(
            &Principal::internal(),
            &topic("plain"),
            &channel("c"),
            ChannelSettings::default(),
        )
        .unwrap();
    broker
        .create_channel(
            &Principal::internal(),
            &topic("routed-2"),
            &channel("c"),
            ChannelSettings::default(),
        )
        .unwrap();
    let t = topic("routed");
    broker
        .create_channel(
            &Principal::internal(),
            &t,
            &channel("c"),
            ChannelSettings::default(),
        )
        .unwrap();
    broker
        .publish(
            &Principal::internal(),
            &t,
            vec![msg("fwd:plain", "f")],
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(bodies(drain(&broker, "plain", "c")), ["f"]);
    assert!(drain(&broker, "routed", "c").is_empty(), "forward only");
    // The copy in routed-2 still says `to: fwd:routed-2`, so routed-2's router forwards it
    // to itself: refused as a loop, and routed-2 keeps nothing.
    broker
        .publish(
            &Principal::internal(),
            &t,
            vec![msg("fwd:routed-2", "loop")],
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert!(drain(&broker, "routed-2", "c").is_empty());
    let stats = broker.stats(&Principal::internal(), None).unwrap();
    let by_name = |n: &str| stats.topics.iter().find(|t| t.name == n).unwrap().clone();
    assert_eq!(by_name("routed").forwarded, 2);
    assert_eq!(by_name("routed-2").forward_loops, 1);
    assert_eq!(by_name("routed-2").forwarded, 0);
}

#[tokio::test]
async fn gates_skip_and_dead_letter_at_the_cursor_to_the_channels_dead_letter_topic() {
    let (broker, _) = broker_on(Arc::new(MemoryStorage));
    let t = topic("plain");
    broker
        .create_channel(
            &Principal::internal(),
            &t,
            &channel("gated"),
            ChannelSettings::default(),
        )
        .unwrap();
    broker
        .create_channel(
            &Principal::internal(),
            &t,
            &channel("open"),
            ChannelSettings::default(),
        )
        .unwrap();
    let batch = vec![
        msg("all", "keep-1"),
        msg("all", "skip-2"),
        msg("all", "dead-3"),
    ];
    broker
        .publish(&Principal::internal(), &t, batch, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(bodies(drain(&broker, "plain", "gated")), ["keep-1"]);
    assert_eq!(
        bodies(drain(&broker, "plain", "open")),
        ["keep-1", "skip-2", "dead-3"]
    );
    // The dead-letter copy is stored by the time the take returns (interval fsync here).
    let sub = broker
        .subscribe(
            &std::sync::Arc::new(crate::broker::Principal::internal()),
            &topic("gated-dead"),
            &channel("x"),
            None,
        )
        .unwrap();
    sub.set_rdy(10).unwrap();
    let mut out = Vec::new();
    sub.take(10, &mut out);
    assert_eq!(out.len(), 1);
    let headers = &out[0].message.headers;
    assert_eq!(headers.get("quiver-dead-reason"), Some("filter-fault"));
    assert_eq!(headers.get("quiver-dead-channel"), Some("gated"));
    let stats = broker
        .stats(&Principal::internal(), Some(&t))
        .unwrap()
        .topics
        .remove(0);
    let gated = stats.channels.iter().find(|c| c.name == "gated").unwrap();
    assert_eq!((gated.skipped, gated.dead_lettered), (1, 1));
}

#[tokio::test]
async fn the_routing_decision_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("routed");
    {
        let storage = FileStorage::open(dir.path(), StorageConfig::default()).unwrap();
        let (broker, _) = broker_on(Arc::new(storage));
        broker
            .create_channel(
                &Principal::internal(),
                &t,
                &channel("a"),
                ChannelSettings::default(),
            )
            .unwrap();
        broker
            .create_channel(
                &Principal::internal(),
                &t,
                &channel("b"),
                ChannelSettings::default(),
            )
            .unwrap();
        broker
            .publish(
                &Principal::internal(),
                &t,
                vec![msg("a", "1"), msg("b", "2")],
                Duration::ZERO,
            )
            .await
            .unwrap();
        broker.shutdown();
        broker.wait_stopped().await;
        broker.close().unwrap();
    }
    // No hooks after the restart: the stored route still decides.
    let storage = FileStorage::open(dir.path(), StorageConfig::default()).unwrap();
    let broker = Broker::new(BrokerConfig::default(), Arc::new(storage));
    broker.recover().unwrap();
    assert_eq!(bodies(drain(&broker, "routed", "a")), ["1"]);
    assert_eq!(bodies(drain(&broker, "routed", "b")), ["2"]);
}
