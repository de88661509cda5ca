//! Failover under load on three real `quiver serve` processes: publishers (a
//! `RetryingProducer` that knows the nodes as seeds) and a consumer (which reconnects to
//! whichever node `locate` names) keep going while the topic's leader is SIGKILLed and
//! restarted, three times (`QUIVER_CLUSTER_SOAK=N` for N times). Every confirmed message is
//! delivered, each id is stored once, and each restarted node catches up.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver::client::{Client, ClientOptions, RetryPolicy, RetryingProducer, SubEvent};
use quiver::message::{NewMessage, TopicName};
use quiver::transport::tls::Trust;
use tokio_util::sync::CancellationToken;

use crate::cluster::{agreed_leader, free_udp_port, init, status};
use crate::process::{ServeProcess, BIN};
use crate::support::{body, channel, topic, DEADLINE};

/// A node that keeps its QUIC port across restarts, so that clients' seeds stay true.
pub(crate) struct Node {
    pub(crate) config: PathBuf,
    pub(crate) quic: SocketAddr,
    pub(crate) process: Option<ServeProcess>,
}

impl Node {
    pub(crate) fn start(&mut self) {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(["--quic", &self.quic.to_string()])
            .args(["--http", "127.0.0.1:0", "--nsq-tcp", "127.0.0.1:0"])
            .args(["--nsq-http", "127.0.0.1:0"]);
        self.process = Some(ServeProcess::spawn(command));
    }

    pub(crate) fn live(&self) -> &ServeProcess {
        self.process.as_ref().expect("a live node")
    }
}

/// Three nodes of a new cluster in `dir`, running with an agreed meta leader; with the
/// cluster CA's file and the nodes' QUIC addresses.
pub(crate) fn three_nodes(dir: &Path) -> (Vec<Node>, PathBuf, Vec<SocketAddr>) {
    three_nodes_with(dir, "")
}

/// [`three_nodes`], with `extra` appended to each node's config file.
pub(crate) fn three_nodes_with(dir: &Path, extra: &str) -> (Vec<Node>, PathBuf, Vec<SocketAddr>) {
    let configs = init(dir, 3);
    for config in &configs {
        let mut text = std::fs::read_to_string(config).expect("config");
        text.push_str(extra);
        std::fs::write(config, text).expect("write config");
    }
    let mut nodes: Vec<Node> = configs
        .into_iter()
        .map(|config| Node {
            config,
            quic: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
            process: None,
        })
        .collect();
    nodes.iter_mut().for_each(Node::start);
    let live: Vec<&ServeProcess> = nodes.iter().map(Node::live).collect();
    tokio::task::block_in_place(|| agreed_leader(&live, None));
    let seeds = nodes.iter().map(|n| n.quic).collect();
    (nodes, dir.join("ca.pem"), seeds)
}

/// Client options trusting the cluster's CA, noticing a dead node within 1.5 s.
pub(crate) fn options(ca: &Path, addr: SocketAddr) -> ClientOptions {
    let mut options = ClientOptions::new(addr, Trust::CaFile(ca.to_path_buf()));
    options.idle_timeout = Some(Duration::from_millis(1500));
    options
}

/// What the clients saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) confirmed: Vec<String>,
    pub(crate) duplicates: u64,
    pub(crate) delivered: Vec<String>,
    pub(crate) errors: Vec<String>,
}

pub(crate) type Shared = Arc<Mutex<Seen>>;

pub(crate) fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes `p<task>-<i>` until `stop`, recording what was confirmed.
pub(crate) async fn publisher(
    producer: RetryingProducer,
    t: TopicName,
    task: usize,
    seen: Shared,
    stop: CancellationToken,
) {
    let mut i = 0u64;
    while !stop.is_cancelled() {
        let text = format!("p{task}-{i}");
        match producer.publish(&t, NewMessage::new(text.clone())).await {
            Ok(receipt) => {
                let mut seen = lock(&seen);
                seen.duplicates += receipt.duplicate_count() as u64;
                seen.confirmed.push(text);
            }
            Err(e) => {
                lock(&seen).errors.push(format!("{text}: {e:#}"));
                return;
            }
        }
        i += 1;
    }
}

/// Consumes channel `c`, FINning each message, reconnecting to the node that serves the
/// topic whenever the subscription ends.
pub(crate) async fn consumer(
    ca: PathBuf,
    seeds: Vec<SocketAddr>,
    t: TopicName,
    seen: Shared,
    stop: CancellationToken,
) {
    let c = channel("c");
    let mut turn = 0;
    while !stop.is_cancelled() {
        let seed = seeds[turn % seeds.len()];
        turn += 1;
        let connected =
            Client::connect_serving(&options(&ca, seed), &t, Some(&c), Duration::from_secs(5))
                .await;
        let Ok(client) = connected else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(mut sub) = client.subscribe(&t, &c, Default::default()).await else {
            continue;
        };
        if sub.rdy(200).await.is_err() {
            continue;
        }
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                event = sub.next_event() => event,
            };
            match event {
                Some(SubEvent::Message(d)) => {
                    lock(&seen).delivered.push(body(&d));
                    if sub.fin(d.id).await.is_err() {
                        break;
                    }
                }
                Some(SubEvent::Error(e)) if !e.fatal => continue,
                _ => break,
            }
        }
    }
}

/// Four publishers (a `RetryingProducer` over the seeds, retrying through failovers) and a
/// consumer of channel `c`, running until [`Traffic::finish`].
pub(crate) struct Traffic {
    pub(crate) seen: Shared,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop_consuming: CancellationToken,
    consuming: tokio::task::JoinHandle<()>,
}

impl Traffic {
    pub(crate) fn start(ca: &Path, seeds: &[SocketAddr], t: &TopicName) -> Traffic {
        let policy = RetryPolicy {
            attempts: 200,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            confirm_timeout: Duration::from_secs(3),
        };
        let producer = RetryingProducer::with_seeds(options(ca, seeds[0]), seeds.to_vec(), policy);
        let seen: Shared = Arc::default();
        let stop = CancellationToken::new();
        let tasks = (0..4)
            .map(|task| {
                let (producer, t) = (producer.clone(), t.clone());
                tokio::spawn(publisher(producer, t, task, seen.clone(), stop.clone()))
            })
            .collect();
        let stop_consuming = CancellationToken::new();
        let consuming = tokio::spawn(consumer(
            ca.to_path_buf(),
            seeds.to_vec(),
            t.clone(),
            seen.clone(),
            stop_consuming.clone(),
        ));
        Traffic {
            seen,
            stop,
            tasks,
            stop_consuming,
            consuming,
        }
    }

    /// Waits until `more` publishes beyond those confirmed now are confirmed.
    pub(crate) async fn confirm_more(&self, what: &str, more: usize) {
        let now = lock(&self.seen).confirmed.len();
        wait_for(&self.seen, what, |s| s.confirmed.len() >= now + more).await;
    }

    /// Stops publishing, waits until every confirmed message was delivered, stops
    /// consuming; the confirmed messages.
    pub(crate) async fn finish(self) -> HashSet<String> {
        self.stop.cancel();
        for task in self.tasks {
            task.await.expect("publisher");
        }
        let confirmed: HashSet<String> = lock(&self.seen).confirmed.iter().cloned().collect();
        wait_for(&self.seen, "every confirmed message delivered", |s| {
            let delivered: HashSet<&String> = s.delivered.iter().collect();
            confirmed.iter().all(|c| delivered.contains(c))
        })
        .await;
        self.stop_consuming.cancel();
        self.consuming.await.expect("consumer");
        confirmed
    }
}

/// Waits until `done` holds for what the clients saw.
pub(crate) async fn wait_for(seen: &Shared, what: &str, done: impl Fn(&Seen) -> bool) {
    let began = Instant::now();
    loop {
        {
            let seen = lock(seen);
            assert!(
                seen.errors.is_empty(),
                "a publish failed: {:?}",
                seen.errors
            );
            if done(&seen) {
                return;
            }
        }
        assert!(
            began.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The topic's replica state on `node`, from `/cluster/status`.
pub(crate) fn group(node: &ServeProcess, t: &str) -> serde_json::Value {
    status(node)["topics"]
        .as_array()
        .and_then(|topics| topics.iter().find(|p| p["topic"] == t))
        .map(|p| p["group"].clone())
        .unwrap_or_default()
}

/// Waits until every running node has applied the topic's group as far as `leader` had
/// committed when this was called.
pub(crate) fn caught_up(nodes: &[Node], leader: usize, t: &str) {
    let began = Instant::now();
    let target = loop {
        if let Some(index) = group(nodes[leader].live(), t)["committed"].as_u64() {
            break index;
        }
        assert!(
            began.elapsed() < DEADLINE,
            "the leader reports no commit index"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for node in nodes.iter().filter(|n| n.process.is_some()) {
        loop {
            let g = group(node.live(), t);
            if g["applied"].as_u64().unwrap_or(0) >= target {
                break;
            }
            assert!(
                began.elapsed() < DEADLINE,
                "a node did not catch up to {target}: {g}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_and_consuming_go_on_through_repeated_leader_kills() {
    let kills: usize = std::env::var("QUIVER_CLUSTER_SOAK")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut nodes, ca, seeds) = three_nodes(dir.path());
    let t = topic("events");
    let traffic = Traffic::start(&ca, &seeds, &t);
    let seen = traffic.seen.clone();

    for round in 1..=kills {
        let before = lock(&seen).confirmed.len();
        wait_for(&seen, "publishing", |s| s.confirmed.len() >= before + 300).await;
        let probe = Client::connect(&options(&ca, seeds[round % 3]))
            .await
            .expect("connect");
        let leader_addr = probe
            .locate(&t, None)
            .await
            .expect("locate")
            .unwrap_or(seeds[round % 3]);
        probe.close().await;
        let leader = seeds
            .iter()
            .position(|s| *s == leader_addr)
            .expect("a node");
        nodes[leader].process.as_mut().expect("live").kill();
        nodes[leader].process = None;
        let killed_at = Instant::now();
        let at_kill = lock(&seen).confirmed.len();
        // Publishes in flight at the kill may still be confirmed by it; the tenth after it
        // comes from the new leader.
        wait_for(&seen, "publishing after the kill", |s| {
            s.confirmed.len() >= at_kill + 10
        })
        .await;
        println!(
            "kill {round}: confirmations again {:?} after the kill",
            killed_at.elapsed()
        );
        nodes[leader].start();
        let new_leader = {
            let probe = Client::connect(&options(&ca, seeds[(leader + 1) % 3]))
                .await
                .expect("connect");
            let addr = probe
                .locate(&t, None)
                .await
                .expect("locate")
                .unwrap_or(seeds[(leader + 1) % 3]);
            probe.close().await;
            seeds.iter().position(|s| *s == addr).expect("a node")
        };
        tokio::task::block_in_place(|| caught_up(&nodes, new_leader, "events"));
    }

    let confirmed = traffic.finish().await;
    // Each id stored once: the log holds exactly the confirmed messages, although retries
    // after the kills re-sent publishes that had been stored.
    let probe = Client::connect(&options(&ca, seeds[0]))
        .await
        .expect("connect");
    let leader_addr = probe
        .locate(&t, None)
        .await
        .expect("locate")
        .unwrap_or(seeds[0]);
    probe.close().await;
    let leader = seeds
        .iter()
        .position(|s| *s == leader_addr)
        .expect("a node");
    let end = tokio::task::block_in_place(|| group(nodes[leader].live(), "events")["end"].as_u64());
    assert_eq!(
        end,
        Some(confirmed.len() as u64),
        "stored messages against confirmed ids"
    );
    let seen = lock(&seen);
    let delivered: HashSet<&String> = seen.delivered.iter().collect();
    // Each id stored once: nothing but confirmed messages arrives, and a retried publish
    // that had been stored was confirmed as a duplicate, not stored again.
    assert!(delivered.iter().all(|d| confirmed.contains(*d)));
    println!(
        "{} confirmed, {} deliveries ({} distinct), {} retries answered as duplicates",
        confirmed.len(),
        seen.delivered.len(),
        delivered.len(),
        seen.duplicates
    );
}

/// The node leading `t`, as the node at `ask` says.
pub(crate) async fn leader_of(ca: &Path, seeds: &[SocketAddr], ask: usize, t: &TopicName) -> usize {
    let probe = Client::connect(&options(ca, seeds[ask]))
        .await
        .expect("connect");
    let addr = probe
        .locate(t, None)
        .await
        .expect("locate")
        .unwrap_or(seeds[ask]);
    probe.close().await;
    seeds.iter().position(|s| *s == addr).expect("a node")
}

/// A producer over `seeds` that has published "first" to `t`, and the node leading `t`.
pub(crate) async fn first_publish(
    ca: &Path,
    seeds: &[SocketAddr],
    t: &TopicName,
) -> (RetryingProducer, usize) {
    let producer = RetryingProducer::with_seeds(
        options(ca, seeds[0]),
        seeds.to_vec(),
        RetryPolicy::default(),
    );
    producer
        .publish(t, NewMessage::new("first"))
        .await
        .expect("confirmed");
    (producer, leader_of(ca, seeds, 0, t).await)
}

/// Consumes `count` messages of `t`/`c` from the node serving it, FINning each.
async fn consume(ca: &Path, seed: SocketAddr, t: &TopicName, count: usize) -> Vec<String> {
    let c = channel("c");
    let client = Client::connect_serving(&options(ca, seed), t, Some(&c), DEADLINE)
        .await
        .expect("connect to the leader");
    let mut sub = client
        .subscribe(t, &c, Default::default())
        .await
        .expect("subscribe");
    sub.rdy(100).await.expect("rdy");
    let mut seen = Vec::new();
    // FIN `count` messages, give back the others, and wait until the broker closes the
    // subscription after CLS: then every FIN was processed.
    loop {
        let event = tokio::time::timeout(DEADLINE, sub.next_event())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} delivered", seen.len()));
        match event {
            Some(SubEvent::Message(d)) if seen.len() < count => {
                seen.push(body(&d));
                sub.fin(d.id).await.expect("fin");
                if seen.len() == count {
                    sub.cls().await.expect("cls");
                }
            }
            Some(SubEvent::Message(d)) => sub.req(d.id, Duration::ZERO).await.expect("req"),
            Some(SubEvent::Closed) | None if seen.len() == count => break,
            other => panic!("subscription ended: {other:?}"),
        }
    }
    client.close().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_replicated_again_and_then_a_kill_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut nodes, ca, seeds) = three_nodes(dir.path());
    let t = topic("orders");
    let producer = RetryingProducer::with_seeds(
        options(&ca, seeds[0]),
        seeds.clone(),
        RetryPolicy::default(),
    );
    // Enough entries that the leader snapshots and purges its Raft log: a node with nothing
    // can only be brought back from a snapshot.
    let mut publishing = Vec::new();
    for task in 0..8 {
        let (producer, t) = (producer.clone(), t.clone());
        publishing.push(tokio::spawn(async move {
            let mut confirmed = Vec::new();
            for i in (task..6000).step_by(8) {
                let text = format!("m-{i}");
                producer
                    .publish(&t, NewMessage::new(text.clone()))
                    .await
                    .expect("confirmed");
                confirmed.push(text);
            }
            confirmed
        }));
    }
    let mut confirmed = Vec::new();
    for task in publishing {
        confirmed.extend(task.await.expect("publisher"));
    }
    let finished = consume(&ca, seeds[0], &t, 1500).await;
    let leader = leader_of(&ca, &seeds, 0, &t).await;
    {
        let live: Vec<&ServeProcess> = nodes.iter().map(Node::live).collect();
        tokio::task::block_in_place(|| {
            crate::cluster_topics::fins_committed(&live, leader, finished.len() as u64)
        });
    }

    // Wipe a follower.
    let wiped = (leader + 1) % 3;
    nodes[wiped].process.as_mut().expect("live").kill();
    nodes[wiped].process = None;
    let data = dir.path().join(format!("node-{}", wiped + 1)).join("data");
    std::fs::remove_dir_all(&data).expect("wipe the data directory");
    nodes[wiped].start();
    let began = Instant::now();
    loop {
        let (mine, theirs) = tokio::task::block_in_place(|| {
            (
                group(nodes[wiped].live(), "orders"),
                group(nodes[leader].live(), "orders"),
            )
        });
        if mine["end"].as_u64().is_some()
            && mine["end"] == theirs["end"]
            && mine["start"] == theirs["start"]
        {
            break;
        }
        assert!(
            began.elapsed() < DEADLINE,
            "the wiped node was not replicated again: {mine} against {theirs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "the wiped node holds the topic again after {:?}",
        began.elapsed()
    );
    tokio::task::block_in_place(|| caught_up(&nodes, leader, "orders"));

    // Another node goes: the leader's publishes are now confirmed only with the wiped
    // node's acknowledgement.
    let third = (leader + 2) % 3;
    nodes[third].process.as_mut().expect("live").kill();
    nodes[third].process = None;
    for i in 0..200 {
        let text = format!("after-{i}");
        producer
            .publish(&t, NewMessage::new(text.clone()))
            .await
            .expect("confirmed by the leader and the wiped node");
        confirmed.push(text);
    }
    // Then the leader goes too, once the third is back: a majority without the first
    // leader serves everything.
    nodes[third].start();
    tokio::task::block_in_place(|| caught_up(&nodes, leader, "orders"));
    nodes[leader].process.as_mut().expect("live").kill();
    nodes[leader].process = None;

    // The rest is served by a new leader (the wiped node or the third): every message not
    // finished before is delivered, and none that was.
    let rest = confirmed.len() - finished.len();
    let seen = consume(&ca, seeds[wiped], &t, rest).await;
    let finished: HashSet<&String> = finished.iter().collect();
    let seen_set: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        seen_set.len(),
        rest,
        "messages repeated or missing after the kill"
    );
    assert!(
        seen.iter().all(|b| !finished.contains(b)),
        "a message finished before the wipe was delivered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_goes_on_while_a_follower_is_stopped_and_it_catches_up_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nodes, ca, seeds) = three_nodes(dir.path());
    let t = topic("stopped");
    let (producer, leader) = first_publish(&ca, &seeds, &t).await;
    let follower = (leader + 1) % 3;
    nodes[follower].live().signal("STOP");
    // A majority is left: every publish is confirmed while the follower is frozen.
    for i in 0..300 {
        producer
            .publish(&t, NewMessage::new(format!("while-stopped-{i}")))
            .await
            .expect("confirmed without the stopped follower");
    }
    let behind =
        tokio::task::block_in_place(|| group(nodes[leader].live(), "stopped")["end"].as_u64());
    assert_eq!(behind, Some(301));
    nodes[follower].live().signal("CONT");
    tokio::task::block_in_place(|| caught_up(&nodes, leader, "stopped"));
    let end =
        tokio::task::block_in_place(|| group(nodes[follower].live(), "stopped")["end"].as_u64());
    assert_eq!(
        end,
        Some(301),
        "the follower holds every message after SIGCONT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_through_an_election_confirms_nothing_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nodes, ca, seeds) = three_nodes(dir.path());
    let t = topic("frozen");
    let (_producer, old) = first_publish(&ca, &seeds, &t).await;
    // A client of the old leader that will still be talking to it after it wakes up.
    let mut stale_options = options(&ca, seeds[old]);
    stale_options.idle_timeout = Some(Duration::from_secs(60));
    let stale = Client::connect(&stale_options).await.expect("connect");
    let stale_producer = stale.producer().await.expect("producer");

    nodes[old].live().signal("STOP");
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let began = Instant::now();
    let new = loop {
        let leaders: Vec<Option<u64>> = tokio::task::block_in_place(|| {
            others
                .iter()
                .map(|i| group(nodes[*i].live(), "frozen")["leader"].as_u64())
                .collect()
        });
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l)) && *l != old as u64 + 1 {
                break *l as usize - 1;
            }
        }
        assert!(began.elapsed() < DEADLINE, "no new leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The new leader confirms; publishes to the stopped one wait in its socket.
    let mut confirmed = vec!["first".to_string()];
    let retrying = RetryingProducer::with_seeds(
        options(&ca, seeds[new]),
        others.iter().map(|i| seeds[*i]).collect(),
        RetryPolicy::default(),
    );
    let mut stale_confirms = Vec::new();
    for i in 0..20 {
        let text = format!("to-stale-{i}");
        let confirm = stale_producer
            .start_publish(&t, NewMessage::new(text.clone()))
            .await
            .expect("sent");
        stale_confirms.push((text, confirm));
        let text = format!("to-new-{i}");
        retrying
            .publish(&t, NewMessage::new(text.clone()))
            .await
            .expect("the new leader confirms");
        confirmed.push(text);
    }

    nodes[old].live().signal("CONT");
    let mut stale_confirmed = Vec::new();
    for (text, confirm) in stale_confirms {
        let answer = tokio::time::timeout(DEADLINE, confirm.wait())
            .await
            .expect("the woken leader answers");
        if answer.is_ok() {
            stale_confirmed.push(text);
        }
    }
    // It steps down and follows the new leader.
    tokio::task::block_in_place(|| caught_up(&nodes, new, "frozen"));
    let state = tokio::task::block_in_place(|| group(nodes[old].live(), "frozen"));
    assert_eq!(state["state"], "follower", "{state}");
    assert_eq!(state["leader"].as_u64(), Some(new as u64 + 1), "{state}");
    // Whatever it confirmed is in the log the cluster kept: it confirmed nothing it had
    // proposed after losing the leadership.
    let all = consume(&ca, seeds[new], &t, confirmed.len() + stale_confirmed.len()).await;
    let all: HashSet<String> = all.into_iter().collect();
    for text in confirmed.iter().chain(&stale_confirmed) {
        assert!(all.contains(text), "{text} was confirmed but is not stored");
    }
    println!(
        "the stopped leader confirmed {} of 20 publishes sent to it",
        stale_confirmed.len()
    );
}
