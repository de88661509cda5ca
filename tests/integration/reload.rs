//! Hot reload under traffic: the rules file and a plugin file are swapped 50 times, broken
//! versions included, while a producer publishes and consumers drain. Every message must be
//! delivered exactly once, under a rule set that was active while it was being published.
//!
//! Nothing here waits for a quiet window: consumers stop once every confirmed message is
//! accounted for, and the broker's stats must then show nothing left to deliver. Each wait
//! has a generous deadline that fails with the counts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver::client::{Client, SubEvent, Subscription};
use quiver::message::NewMessage;
use tokio::sync::watch;

use crate::process::{http_request, write_atomically, ServeProcess};
use crate::support::{subscribe, topic};
use crate::wasm::guest;

const SWAPS: usize = 50;
/// The producer stops after this many messages even if the swaps are not done.
const MAX_MESSAGES: u64 = 30_000;

/// Rules in which every message goes to `channel` (`ch-a` or `ch-b`) and to `filtered`,
/// whose filter keeps the even ones (written in one of two equivalent ways).
fn rules(router: &Path, channel: &str, variant: usize) -> String {
    let expr = [r#"parity == "even""#, r#"parity in ("even")"#][variant % 2];
    format!(
        r#"
        [[topic]]
        name = "stream"
        [topic.router]
        plugin = {router:?}
        params = {{ header = "parity", default = "{channel},filtered" }}

        [[channel]]
        topic = "stream"
        name = "ch-a"
        [[channel]]
        topic = "stream"
        name = "ch-b"
        [[channel]]
        topic = "stream"
        name = "filtered"
        [[channel.plugins]]
        kind = "filter"
        plugin = {filter:?}
        params = {{ expr = '{expr}' }}
        "#,
        filter = guest("tag_filter"),
    )
}

/// When the routing changed: the new channel could be in use from `written` on, and was in
/// use for every publish that started after `effective`.
struct Change {
    channel: &'static str,
    written: Instant,
    effective: Instant,
}

struct Sent {
    n: u64,
    start: Instant,
    confirmed: Instant,
}

/// Longest the consumers may take to account for every confirmed message once publishing is
/// over, and the broker to show nothing left; reached only when something is lost.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

/// What the consumers received, and, once the producer is done, how many were confirmed.
#[derive(Debug, Default)]
struct Tally {
    received: BTreeMap<&'static str, Vec<u64>>,
    /// Distinct messages received on `ch-a` or `ch-b`.
    routed: BTreeSet<u64>,
    /// Distinct messages received on `filtered`.
    filtered: BTreeSet<u64>,
    /// Messages `0..confirmed` were confirmed; `None` while the producer runs.
    confirmed: Option<u64>,
}

impl Tally {
    fn record(&mut self, channel: &'static str, n: u64) {
        self.received.entry(channel).or_default().push(n);
        if channel == "filtered" {
            self.filtered.insert(n);
        } else {
            self.routed.insert(n);
        }
    }

    /// True once every confirmed message has reached `channel`'s side: each on `ch-a` or
    /// `ch-b`, each even one on `filtered`.
    fn accounted_for(&self, channel: &str) -> bool {
        let Some(confirmed) = self.confirmed else {
            return false;
        };
        if channel == "filtered" {
            (0..confirmed)
                .step_by(2)
                .all(|n| self.filtered.contains(&n))
        } else {
            (0..confirmed).all(|n| self.routed.contains(&n))
        }
    }

    fn summary(&self) -> String {
        let evens = self.confirmed.map(|c| c.div_ceil(2));
        format!(
            "confirmed {:?}; received on ch-a or ch-b: {} distinct; on filtered: {} distinct of {evens:?} even",
            self.confirmed,
            self.routed.len(),
            self.filtered.len()
        )
    }
}

/// Consumes `channel`, FINs every message and records it, until every confirmed message is
/// accounted for. Returns the subscription still open, so that anything delivered later
/// stays visible as in flight.
async fn consume(
    client: Client,
    channel: &'static str,
    tally: Arc<watch::Sender<Tally>>,
) -> Subscription {
    let mut sub = subscribe(&client, "stream", channel, None).await;
    sub.rdy(500).await.unwrap();
    let mut changes = tally.subscribe();
    while !tally.borrow().accounted_for(channel) {
        let event = tokio::select! {
            event = sub.next_event() => event,
            // Another consumer's progress or the producer's end: check again.
            _ = changes.changed() => continue,
        };
        match event {
            Some(SubEvent::Message(d)) => {
                let n = std::str::from_utf8(&d.body).unwrap().parse().unwrap();
                tally.send_modify(|t| t.record(channel, n));
                sub.fin(d.id).await.unwrap();
            }
            Some(SubEvent::Error(e)) => panic!("{channel}: {e}"),
            Some(SubEvent::Closed) | None => panic!("{channel}: the stream ended"),
        }
    }
    sub
}

/// Waits until every channel of `stream` has nothing in flight and nothing left to read,
/// and returns each channel's `finished` count.
async fn settled_channels(serve: &ServeProcess) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + DRAIN_DEADLINE;
    loop {
        let (_, text) =
            tokio::task::block_in_place(|| http_request(serve.http, "GET", "/stats", ""));
        let stats: serde_json::Value = serde_json::from_str(&text).unwrap();
        let topic = stats["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "stream")
            .unwrap();
        let channels = topic["channels"].as_array().unwrap();
        let settled = channels
            .iter()
            .all(|c| c["in_flight"] == 0 && c["depth"] == 0);
        if settled {
            return channels
                .iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap().to_owned(),
                        c["finished"].as_u64().unwrap(),
                    )
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "channels still have messages in flight or to read: {channels:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_traffic_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let router = dir.path().join("router.wasm");
    let router_bytes = std::fs::read(guest("header_router")).unwrap();
    write_atomically(&router, &router_bytes);
    let rules_path = dir.path().join("rules.toml");
    write_atomically(&rules_path, rules(&router, "ch-a", 0));
    let serve = ServeProcess::start(
        &dir.path().join("data"),
        &["--rules", rules_path.to_str().unwrap()],
    );
    let client = Client::connect(&serve.options()).await.unwrap();

    let tally = Arc::new(watch::Sender::new(Tally::default()));
    let consumers: Vec<_> = ["ch-a", "ch-b", "filtered"]
        .into_iter()
        .map(|channel| tokio::spawn(consume(client.clone(), channel, tally.clone())))
        .collect();

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (client, done) = (client.clone(), done.clone());
        tokio::spawn(async move {
            let producer = client.producer().await.unwrap();
            let mut sent = Vec::new();
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) && n < MAX_MESSAGES {
                let batch: Vec<NewMessage> = (n..n + 10)
                    .map(|i| {
                        let mut m = NewMessage::new(i.to_string());
                        m.headers
                            .push("parity", if i % 2 == 0 { "even" } else { "odd" });
                        m
                    })
                    .collect();
                let start = Instant::now();
                producer
                    .publish_batch(&topic("stream"), batch)
                    .await
                    .unwrap();
                let confirmed = Instant::now();
                sent.extend((n..n + 10).map(|n| Sent {
                    n,
                    start,
                    confirmed,
                }));
                n += 10;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sent
        })
    };

    let mut changes = vec![Change {
        channel: "ch-a",
        written: Instant::now(),
        effective: Instant::now(),
    }];
    let (mut active, mut failed, mut succeeded) = ("ch-a", 0, 0);
    let reload = || http_request(serve.http, "POST", "/rules/reload", "");
    for swap in 0..SWAPS {
        tokio::time::sleep(Duration::from_millis(40)).await;
        match swap % 5 {
            // A new routing: the other channel, and the filter written the other way.
            0 | 4 => {
                let next = if active == "ch-a" { "ch-b" } else { "ch-a" };
                let written = Instant::now();
                write_atomically(&rules_path, rules(&router, next, swap));
                let (status, body) = tokio::task::block_in_place(reload);
                assert_eq!(status, 200, "swap {swap}: {body}");
                changes.push(Change {
                    channel: next,
                    written,
                    effective: Instant::now(),
                });
                active = next;
                succeeded += 1;
            }
            // A broken rules file: a router without its required parameter, or bad TOML.
            1 => {
                let broken = if swap % 2 == 0 {
                    rules(&router, active, swap).replace("header = \"parity\", ", "")
                } else {
                    rules(&router, active, swap).replace("[[channel]]", "[[channel")
                };
                write_atomically(&rules_path, broken);
                let (status, body) = tokio::task::block_in_place(reload);
                assert!((400..500).contains(&status), "swap {swap}: {status} {body}");
                failed += 1;
                // Put the working file back, unchanged in meaning.
                write_atomically(&rules_path, rules(&router, active, swap));
            }
            // The router's file replaced by something that is not a router (a filter), then
            // by garbage; the file watcher tries each and keeps the old set.
            2 => {
                write_atomically(&router, std::fs::read(guest("trap")).unwrap());
                let (status, body) = tokio::task::block_in_place(reload);
                assert!((400..500).contains(&status), "swap {swap}: {status} {body}");
                failed += 1;
                write_atomically(&router, b"not a component");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // The router's file restored: the watcher reloads it, same meaning.
            3 => {
                write_atomically(&router, &router_bytes);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => unreachable!(),
        }
    }
    // Make sure the final files are loaded.
    let (status, body) = tokio::task::block_in_place(reload);
    assert_eq!(status, 200, "{body}");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = producer.await.unwrap();
    tally.send_modify(|t| t.confirmed = Some(sent.len() as u64));
    let drained = async {
        let mut subs = Vec::new();
        for consumer in consumers {
            subs.push(consumer.await.unwrap());
        }
        subs
    };
    let Ok(_subs) = tokio::time::timeout(DRAIN_DEADLINE, drained).await else {
        panic!(
            "not every confirmed message arrived within {DRAIN_DEADLINE:?}: {}",
            tally.borrow().summary()
        );
    };
    // Nothing more is on its way: whatever else the broker delivered would be in flight on
    // the open subscriptions, and each message it delivered was received and finished.
    let finished = settled_channels(&serve).await;
    let tally = tally.borrow();
    let received = &tally.received;
    for (channel, list) in received {
        assert_eq!(
            finished[*channel],
            list.len() as u64,
            "{channel}: finished by the broker vs received"
        );
    }

    let (a, b) = (&received["ch-a"], &received["ch-b"]);
    let mut seen = BTreeMap::new();
    for (channel, list) in [("ch-a", a), ("ch-b", b)] {
        for &n in list.iter() {
            if let Some(other) = seen.insert(n, channel) {
                panic!("message {n} delivered twice: on {other} and {channel}");
            }
        }
    }
    assert_eq!(
        seen.len(),
        sent.len(),
        "every published message delivered once"
    );
    // Each message went to a channel that some rule set active during its publish chose.
    for s in &sent {
        let channel = seen[&s.n];
        let possible: BTreeSet<&str> = changes
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                let until = changes.get(i + 1).map(|next| next.effective);
                c.written <= s.confirmed && until.is_none_or(|until| s.start <= until)
            })
            .map(|(_, c)| c.channel)
            .collect();
        assert!(
            possible.contains(channel),
            "message {} went to {channel}, but only {possible:?} were active",
            s.n
        );
    }
    let evens: Vec<u64> = sent.iter().map(|s| s.n).filter(|n| n % 2 == 0).collect();
    let mut filtered = received["filtered"].clone();
    filtered.sort_unstable();
    assert_eq!(
        filtered, evens,
        "the filter kept exactly the even ones, once each"
    );

    let (_, stats) = http_request(serve.http, "GET", "/stats", "");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let rules = &stats["rules"];
    eprintln!(
        "{} messages; {succeeded} routing changes; version {}; {} reloads, {} failed",
        sent.len(),
        rules["version"],
        rules["reloads"],
        rules["failed_reloads"]
    );
    assert!(rules["version"].as_u64().unwrap() > succeeded, "{rules}");
    // The watcher reloaded the restored plugin files by itself, beyond the requests.
    assert!(
        rules["reloads"].as_u64().unwrap() > succeeded + 1,
        "{rules}"
    );
    assert!(
        rules["failed_reloads"].as_u64().unwrap() >= failed,
        "{rules}"
    );
    assert!(
        sent.len() > 1000,
        "traffic flowed during the swaps: {}",
        sent.len()
    );
}
