//! Membership changes on real `quiver serve` processes, under publish and consume load: a
//! fourth node joins through `join`, then the leader of the busy topic is removed with
//! `quiver cluster remove-node`; its replica moves to the new node, another node takes the
//! topic over, and nothing confirmed is lost, with no error reaching the publishers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quiver::client::{RetryPolicy, RetryingProducer};

use crate::cluster::{free_udp_port, status};
use crate::cluster_failover::{
    group, leader_of, lock, options, three_nodes, three_nodes_with, Node, Traffic,
};
use crate::process::{http_request, ServeProcess, BIN};
use crate::support::{topic, DEADLINE};

/// The `[cluster]` `listen` address in the config at `path`.
fn peer_listen(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("config");
    let value: toml::Value = toml::from_str(&text).expect("TOML");
    value["cluster"]["listen"]
        .as_str()
        .expect("cluster.listen")
        .to_string()
}

/// Signs node `id` into the cluster in `dir` and points it at node 1 to join, with a peer
/// port from the OS and the test's fast Raft timing.
fn add_node_config(dir: &Path, id: u64) -> PathBuf {
    let out = Command::new(BIN)
        .args(["cluster", "init", "--add-node", &id.to_string(), "--dir"])
        .arg(dir)
        .output()
        .expect("cluster init --add-node runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join(format!("node-{id}.toml"));
    let seed = peer_listen(&dir.join("node-1.toml"));
    let text = std::fs::read_to_string(&path).expect("config");
    let mut out = String::new();
    for line in text.lines() {
        let line = match line {
            l if l.starts_with("listen") => format!("listen = \"127.0.0.1:{}\"", free_udp_port()),
            l if l.starts_with("join") => format!("join = {seed:?}"),
            l => l.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
        if line == "[cluster]" {
            out.push_str("heartbeat = \"100ms\"\nelection_timeout = \"500ms\"\n");
        }
    }
    std::fs::write(&path, out).expect("write config");
    path
}

/// Waits until `node` reports `voters` as the meta group's voters.
fn wait_for_voters(node: &ServeProcess, voters: &[u64]) -> serde_json::Value {
    let began = Instant::now();
    loop {
        let s = status(node);
        let now: Vec<u64> = s["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["voter"] == true)
            .filter_map(|m| m["id"].as_u64())
            .collect();
        if now == voters {
            return s;
        }
        assert!(
            began.elapsed() < DEADLINE,
            "voters {now:?}, not {voters:?}, after {DEADLINE:?}: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The placement of topic `t` in a node's status.
fn placement(s: &serde_json::Value, t: &str) -> serde_json::Value {
    s["topics"]
        .as_array()
        .and_then(|topics| topics.iter().find(|p| p["topic"] == t))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_the_topics_leader_is_removed_under_traffic_losing_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut nodes, ca, mut seeds) = three_nodes(dir.path());
    let mut fourth = Node {
        config: add_node_config(dir.path(), 4),
        quic: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
        process: None,
    };
    fourth.start();
    tokio::task::block_in_place(|| {
        wait_for_voters(nodes[0].live(), &[1, 2, 3, 4]);
        wait_for_voters(fourth.live(), &[1, 2, 3, 4]);
    });
    seeds.push(fourth.quic);
    nodes.push(fourth);

    // A node id in use at another address is refused, with the reason.
    let (code, body) = tokio::task::block_in_place(|| {
        http_request(
            nodes[0].live().http,
            "POST",
            "/cluster/nodes/add?id=2&peer_addr=127.0.0.1:9",
            "",
        )
    });
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("node id 2 is already a member"), "{body}");

    let t = topic("moving");
    let traffic = Traffic::start(&ca, &seeds, &t);
    let seen = traffic.seen.clone();
    traffic.confirm_more("publishing", 300).await;

    // The topic was placed on the first three; remove the one leading it.
    let leader = leader_of(&ca, &seeds, 0, &t).await;
    assert!(leader < 3, "the topic is led by node {}", leader + 1);
    let removed = leader as u64 + 1;
    let other = (leader + 1) % 3;
    let before = lock(&seen).confirmed.len();
    let out = tokio::task::block_in_place(|| {
        Command::new(BIN)
            .args(["cluster", "remove-node", &removed.to_string(), "--http"])
            .arg(nodes[other].live().http.to_string())
            .output()
            .expect("remove-node runs")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("node {removed} removed")),
        "{stdout}"
    );
    println!(
        "{stdout}{} confirmed during the removal",
        lock(&seen).confirmed.len() - before
    );

    // The replica moved to the new node, and the groups agree.
    let remaining: Vec<u64> = (1..=4).filter(|&id| id != removed).collect();
    let s = tokio::task::block_in_place(|| wait_for_voters(nodes[other].live(), &remaining));
    let p = placement(&s, "moving");
    let replicas: Vec<u64> = p["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_u64())
        .collect();
    assert_eq!(replicas, remaining, "{p}");
    assert_eq!(p["voters"], p["replicas"], "{p}");
    assert_eq!(s["leaving"], serde_json::json!([]), "{s}");

    traffic
        .confirm_more("publishing after the removal", 300)
        .await;
    // The removed node is stopped; nothing depends on it any more.
    nodes[leader].process.as_mut().expect("live").kill();
    nodes[leader].process = None;
    traffic
        .confirm_more("publishing after the removed node stopped", 100)
        .await;
    let confirmed = traffic.finish().await;
    // Each id stored once, on the new replica as on the others.
    let new_leader = leader_of(&ca, &seeds, other, &t).await;
    let end = tokio::task::block_in_place(|| {
        let g = group(nodes[new_leader].live(), "moving");
        let committed = g["committed"].as_u64().expect("a commit index");
        let began = Instant::now();
        while group(nodes[3].live(), "moving")["applied"].as_u64() < Some(committed) {
            assert!(
                began.elapsed() < DEADLINE,
                "the new replica did not catch up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mine = group(nodes[3].live(), "moving")["end"].as_u64();
        assert_eq!(mine, g["end"].as_u64(), "the new replica's log");
        g["end"].as_u64()
    });
    assert_eq!(
        end,
        Some(confirmed.len() as u64),
        "stored against confirmed"
    );
    let seen = lock(&seen);
    println!(
        "{} confirmed, {} deliveries, {} retries answered as duplicates",
        confirmed.len(),
        seen.delivered.len(),
        seen.duplicates
    );
}

/// The replica count of topic `t` once its placement is applied on `node`.
fn replicas_of(node: &ServeProcess, t: &str) -> usize {
    let began = Instant::now();
    loop {
        let p = placement(&status(node), t);
        if let Some(replicas) = p["replicas"].as_array() {
            return replicas.len();
        }
        assert!(began.elapsed() < DEADLINE, "topic {t} is not placed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_replication_factor_is_set_at_creation_or_in_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "\n[storage.topics.\"single\"]\nreplication = 1\n";
    let (nodes, ca, seeds) = three_nodes_with(dir.path(), extra);
    let http = nodes[1].live().http;
    tokio::task::block_in_place(|| {
        let create =
            |query: &str| http_request(http, "POST", &format!("/topic/create?{query}"), "");
        let (code, body) = create("topic=pair&replication=2");
        assert_eq!((code, body.as_str()), (200, "OK"));
        assert_eq!(replicas_of(nodes[0].live(), "pair"), 2);
        let (code, body) = create("topic=none&replication=0");
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("replication"), "{body}");
        // Without a factor: the cluster's (3).
        assert_eq!(create("topic=plain"), (200, "OK".to_string()));
        assert_eq!(replicas_of(nodes[2].live(), "plain"), 3);
    });
    let producer = RetryingProducer::with_seeds(
        options(&ca, seeds[0]),
        seeds.clone(),
        RetryPolicy::default(),
    );
    for t in ["pair", "single"] {
        producer
            .publish(&topic(t), quiver::message::NewMessage::new("m"))
            .await
            .expect("confirmed");
    }
    // Created by its first publish, with the replication of its `[storage.topics]` entry.
    assert_eq!(
        tokio::task::block_in_place(|| replicas_of(nodes[0].live(), "single")),
        1
    );

    // Deleting a topic removes it everywhere, with its replicas' data.
    tokio::task::block_in_place(|| {
        let delete = || http_request(http, "POST", "/topic/delete?topic=pair", "");
        assert_eq!(delete(), (200, "OK".to_string()));
        let began = Instant::now();
        for (i, node) in nodes.iter().enumerate() {
            let data = dir
                .path()
                .join(format!("node-{}/data/cluster/topics/pair", i + 1));
            while placement(&status(node.live()), "pair") != serde_json::Value::Null
                || data.exists()
            {
                assert!(
                    began.elapsed() < DEADLINE,
                    "node {} still has topic pair",
                    i + 1
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let (code, body) = delete();
        assert_eq!(code, 404, "{body}");
    });
}

/// The next message of a subscription, within the deadline.
async fn next_message(sub: &mut quiver::client::Subscription) -> quiver::message::Delivery {
    loop {
        let event = tokio::time::timeout(DEADLINE, sub.next_event())
            .await
            .expect("a message within the deadline");
        match event {
            Some(quiver::client::SubEvent::Message(d)) => return d,
            Some(quiver::client::SubEvent::Error(e)) if !e.fatal => continue,
            other => panic!("subscription ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_reaches_its_topic_wherever_that_is_led() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nodes, ca, seeds) = three_nodes(dir.path());
    let (t, dead) = (topic("work"), topic("work.dead"));
    let (c, d) = (crate::support::channel("c"), crate::support::channel("d"));
    let http = nodes[0].live().http;
    tokio::task::block_in_place(|| {
        for t in ["work", "work.dead"] {
            let (code, body) = http_request(http, "POST", &format!("/topic/create?topic={t}"), "");
            assert_eq!(code, 200, "{body}");
        }
    });
    let leader = leader_of(&ca, &seeds, 0, &t).await;
    let dead_leader = leader_of(&ca, &seeds, 0, &dead).await;
    // Placement spreads leaderships, and a new group's preferred replica stands first: the
    // dead-letter topic is led by another node.
    assert_ne!(leader, dead_leader);
    tokio::task::block_in_place(|| {
        let path = "/channel/create?topic=work&channel=c&max_attempts=1";
        let (code, body) = http_request(nodes[leader].live().http, "POST", path, "");
        assert_eq!(code, 200, "{body}");
    });
    let connect = |t: &quiver::message::TopicName, c: &quiver::message::ChannelName| {
        let (t, c) = (t.clone(), c.clone());
        let options = options(&ca, seeds[0]);
        async move {
            let client = quiver::client::Client::connect_serving(&options, &t, Some(&c), DEADLINE)
                .await
                .expect("connect to the leader");
            let sub = client
                .subscribe(&t, &c, Default::default())
                .await
                .expect("subscribe");
            sub.rdy(1).await.expect("rdy");
            (client, sub)
        }
    };
    let (_dead_client, mut dead_sub) = connect(&dead, &d).await;
    let (_client, mut sub) = connect(&t, &c).await;
    let producer = RetryingProducer::with_seeds(
        options(&ca, seeds[0]),
        seeds.clone(),
        RetryPolicy::default(),
    );
    producer
        .publish(&t, quiver::message::NewMessage::new("doomed"))
        .await
        .expect("confirmed");
    let first = next_message(&mut sub).await;
    sub.req(first.id, Duration::ZERO).await.expect("req");
    // Past its one attempt the message is copied to work.dead, on its leader.
    let copy = next_message(&mut dead_sub).await;
    assert_eq!(copy.body.as_ref(), b"doomed");
    assert_eq!(copy.headers.get("quiver-dead-topic"), Some("work"));
    assert_eq!(copy.headers.get("quiver-dead-channel"), Some("c"));
    dead_sub.fin(copy.id).await.expect("fin");
}
