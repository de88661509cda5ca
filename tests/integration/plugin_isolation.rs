//! A slow router bound to one topic delays only that topic: publishes to other topics and the
//! admin API complete while it is loaded, its own messages follow its policy with nothing
//! lost, and a publish whose routing runs past `publish_timeout` gets the failure policy for
//! the rest of its messages. Runs a real `quiver serve` with the `slow_router` guest.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quiver::client::Client;
use quiver::message::NewMessage;
use tokio::time::Instant;

use crate::process::{http_request, ServeProcess};
use crate::support::topic;
use crate::wasm::guest;

const PATIENCE: Duration = Duration::from_secs(120);

struct Broker {
    _dir: tempfile::TempDir,
    serve: ServeProcess,
}

impl Broker {
    /// A broker whose topic `a` is routed by `slow_router` with `on_failure`, and `config`.
    fn start(on_failure: &str, config: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let rules = format!(
            "[[topic]]\nname = \"a\"\n[topic.router]\nplugin = {:?}\nparams = {{ iterations = \"4000000\", channel = \"c\" }}\non_failure = \"{on_failure}\"\n",
            guest("slow_router")
        );
        let rules_path = dir.path().join("rules.toml");
        std::fs::write(&rules_path, rules).unwrap();
        let config_path = dir.path().join("quiver.toml");
        std::fs::write(&config_path, config).unwrap();
        let serve = ServeProcess::start(
            &dir.path().join("data"),
            &[
                "--rules",
                rules_path.to_str().unwrap(),
                "--config",
                config_path.to_str().unwrap(),
            ],
        );
        Broker { _dir: dir, serve }
    }

    async fn stats(&self) -> serde_json::Value {
        let http = self.serve.http;
        let (status, body) =
            tokio::task::spawn_blocking(move || http_request(http, "GET", "/stats", ""))
                .await
                .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn stored(&self, t: &str) -> u64 {
        let stats = self.stats().await;
        stats["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == t)
            .map_or(0, |s| s["message_count"].as_u64().unwrap())
    }

    /// The router binding's counter, from `/stats`.
    async fn router(&self, counter: &str) -> u64 {
        let stats = self.stats().await;
        stats["rules"]["bindings"][0]["stats"]
            .get(counter)
            .or_else(|| stats["rules"]["bindings"][0].get(counter))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("no {counter} in {stats:#}"))
    }
}

fn batch(n: usize, tag: &str) -> Vec<NewMessage> {
    (0..n)
        .map(|i| NewMessage::new(format!("{tag}-{i}")))
        .collect()
}

#[tokio::test]
async fn a_slow_router_delays_only_the_topic_it_is_bound_to() {
    // The deadlines are far away here: this test is about where the time is spent.
    let broker = Broker::start(
        "deliver",
        "[plugins]\ncall_timeout = \"1s\"\npublish_timeout = \"60s\"\nthreads = 2\n",
    );
    let options = broker.serve.options();
    // Three big MPUBs at once: each holds the router for seconds. Run on the async workers,
    // two of them would stop every other request on a 2-core machine.
    const PUBLISHERS: usize = 3;
    const MPUBS: usize = 1;
    const PER_MPUB: usize = 600;
    let done = Arc::new(AtomicUsize::new(0));
    let mut loads = Vec::new();
    for p in 0..PUBLISHERS {
        let (options, done) = (options.clone(), Arc::clone(&done));
        loads.push(tokio::spawn(async move {
            let client = Client::connect(&options).await.unwrap();
            let producer = client.producer().await.unwrap();
            for m in 0..MPUBS {
                let messages = batch(PER_MPUB, &format!("p{p}m{m}"));
                producer.publish_batch(&topic("a"), messages).await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Once the router is busy with topic a, topic b and the admin API are served.
    let deadline = Instant::now() + PATIENCE;
    while broker.router("calls").await == 0 {
        assert!(Instant::now() < deadline, "the router was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = Client::connect(&options).await.unwrap();
    let producer = client.producer().await.unwrap();
    let http = broker.serve.http;
    for i in 0..20 {
        producer
            .publish(&topic("b"), NewMessage::new(format!("b-{i}")))
            .await
            .unwrap();
        let (status, body) =
            tokio::task::spawn_blocking(move || http_request(http, "GET", "/ping", ""))
                .await
                .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // Ordering, not timing: all of b was served while a's first MPUB was still being routed.
    let finished = done.load(Ordering::SeqCst);
    assert_eq!(
        finished, 0,
        "topic a's MPUBs finished before topic b's 20 publishes and pings"
    );
    for load in loads {
        tokio::time::timeout(PATIENCE, load)
            .await
            .expect("topic a's publishes finish")
            .unwrap();
    }
    let total = (PUBLISHERS * MPUBS * PER_MPUB) as u64;
    assert_eq!(broker.stored("a").await, total);
    assert_eq!(broker.stored("b").await, 20);
    assert_eq!(broker.router("calls").await, total);
    assert_eq!(broker.router("publish_timeouts").await, 0);
}

#[tokio::test]
async fn an_mpub_whose_routing_runs_past_its_deadline_follows_the_failure_policy() {
    let broker = Broker::start(
        "dead-letter",
        "[plugins]\ncall_timeout = \"1s\"\npublish_timeout = \"1s\"\n",
    );
    let client = Client::connect(&broker.serve.options()).await.unwrap();
    let producer = client.producer().await.unwrap();
    // Far more routing than 1 s of CPU: the rest of the MPUB is dead-lettered, in the same
    // publish, and nothing is lost.
    const N: usize = 2000;
    producer
        .publish_batch(&topic("a"), batch(N, "m"))
        .await
        .unwrap();
    let (routed, dead) = (broker.stored("a").await, broker.stored("a.dead").await);
    assert_eq!(routed + dead, N as u64);
    assert!(
        dead > 0 && routed > 0,
        "routed {routed}, dead-lettered {dead}"
    );
    assert_eq!(broker.router("publish_timeouts").await, dead);
}

#[tokio::test]
async fn a_filter_that_traps_on_one_message_in_three_dead_letters_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let rules = format!(
        "[[channel]]\ntopic = \"t\"\nname = \"c\"\ndead_letter_topic = \"poisoned\"\n[[channel.plugins]]\nkind = \"filter\"\nplugin = {:?}\nparams = {{ on = \"poison\" }}\non_failure = \"dead-letter\"\n",
        guest("trap")
    );
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, rules).unwrap();
    let serve = ServeProcess::start(
        &dir.path().join("data"),
        &["--rules", rules_path.to_str().unwrap()],
    );
    let client = Client::connect(&serve.options()).await.unwrap();
    // One credit grant, before anything is published: the messages held while the filter
    // restarts must be judged and delivered without any new SUB or RDY.
    let mut sub = crate::support::subscribe(&client, "t", "c", None).await;
    sub.rdy(1000).await.unwrap();
    const N: usize = 300;
    let messages = (0..N)
        .map(|i| {
            let mut m = NewMessage::new(format!("m{i}"));
            if i % 3 == 2 {
                m.headers.push("poison", "yes");
            }
            m
        })
        .collect();
    let producer = client.producer().await.unwrap();
    producer.publish_batch(&topic("t"), messages).await.unwrap();
    let mut delivered = Vec::new();
    while delivered.len() < N / 3 * 2 {
        let d = crate::support::next_message(&mut sub, PATIENCE).await;
        sub.fin(d.id).await.unwrap();
        delivered.push(String::from_utf8(d.body.to_vec()).unwrap());
    }
    let expected: Vec<String> = (0..N)
        .filter(|i| i % 3 != 2)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(delivered, expected);
    // Exactly the poison messages were dead-lettered: none for waiting on the restarts.
    let broker = Broker { _dir: dir, serve };
    let deadline = Instant::now() + PATIENCE;
    while broker.stored("poisoned").await < (N / 3) as u64 {
        assert!(
            Instant::now() < deadline,
            "not every poison message was dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(broker.stored("poisoned").await, (N / 3) as u64);
}
