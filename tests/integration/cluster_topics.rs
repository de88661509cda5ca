//! Replicated topics on three real `quiver serve` processes: publishes confirmed by the
//! topic's leader survive its SIGKILL, a follower redirects clients to the leader, and the
//! new leader delivers every confirmed message.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quiver::client::{Client, ClientError, SubEvent, SubscribeOptions};
use quiver::message::{NewMessage, TopicName};
use quiver::protocol::ErrorCode;

use crate::cluster::{agreed_leader, init, start, status};
use crate::process::{http_request, ServeProcess};
use crate::support::{body, channel, topic, DEADLINE};

/// Where a publish to `topic` on `node` went.
enum Answer {
    Confirmed,
    /// The leader's QUIC address.
    Redirect(SocketAddr),
    /// An election or a lost connection: try again.
    Retry(String),
}

async fn publish_on(
    node: SocketAddr,
    nodes: &[&ServeProcess],
    t: &TopicName,
    text: &str,
) -> Answer {
    let Some(process) = nodes.iter().find(|n| n.quic == node) else {
        return Answer::Retry(format!("{node} is not a live node"));
    };
    let client = match Client::connect(&process.options()).await {
        Ok(c) => c,
        Err(e) => return Answer::Retry(e.to_string()),
    };
    let producer = match client.producer().await {
        Ok(p) => p,
        Err(e) => return Answer::Retry(e.to_string()),
    };
    match producer.publish(t, NewMessage::new(text.to_string())).await {
        Ok(_) => Answer::Confirmed,
        Err(ClientError::Broker(e)) if e.code == ErrorCode::NotLeader => {
            let addr = e
                .message
                .strip_prefix("leader=")
                .and_then(|m| m.split_whitespace().next())
                .and_then(|a| a.parse().ok());
            match addr {
                Some(addr) => Answer::Redirect(addr),
                None => Answer::Retry(e.to_string()),
            }
        }
        Err(e) => Answer::Retry(e.to_string()),
    }
}

/// Publishes `text` to `topic` through whichever node answers, following redirects, until
/// it is confirmed; returns the node that confirmed it.
async fn publish_anywhere(nodes: &[&ServeProcess], t: &TopicName, text: &str) -> SocketAddr {
    let began = Instant::now();
    let mut target = nodes[0].quic;
    let mut last = String::new();
    let mut turn = 0;
    loop {
        assert!(
            began.elapsed() < DEADLINE,
            "no node confirmed a publish to {t} within {DEADLINE:?}: {last}"
        );
        match publish_on(target, nodes, t, text).await {
            Answer::Confirmed => return target,
            Answer::Redirect(addr) => target = addr,
            Answer::Retry(why) => {
                last = why;
                turn += 1;
                target = nodes[turn % nodes.len()].quic;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Publishes `count` messages `prefix-i` with confirms to the leader at `leader`; returns
/// the confirmed bodies.
async fn publish_many(
    leader: &ServeProcess,
    t: &TopicName,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let client = Client::connect(&leader.options()).await.expect("connect");
    let producer = client.producer().await.expect("producer");
    let mut tasks = Vec::new();
    for task in 0..4 {
        let producer = producer.clone();
        let t = t.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut confirmed = Vec::new();
            for i in (task..count).step_by(4) {
                let text = format!("{prefix}-{i}");
                producer
                    .publish(&t, NewMessage::new(text.clone()))
                    .await
                    .expect("the leader confirms");
                confirmed.push(text);
            }
            confirmed
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("publisher"));
    }
    all
}

/// Consumes from `node` until every body in `want` was seen, or `stop_after` deliveries
/// (FINning each); returns the bodies seen, with repeats.
async fn consume_until(
    node: &ServeProcess,
    t: &TopicName,
    want: &HashSet<String>,
    stop_after: Option<usize>,
) -> Vec<String> {
    let client = Client::connect(&node.options()).await.expect("connect");
    let mut sub = client
        .subscribe(t, &channel("c"), SubscribeOptions::default())
        .await
        .expect("subscribe on the leader");
    sub.rdy(200).await.expect("rdy");
    let mut seen = Vec::new();
    let mut missing: HashSet<String> = want.clone();
    let began = Instant::now();
    let done = |seen: &Vec<String>, missing: &HashSet<String>| {
        missing.is_empty() || stop_after.is_some_and(|n| seen.len() >= n)
    };
    // FIN until done, give back what comes after, and wait until the broker closes the
    // subscription after CLS: then every FIN was processed.
    loop {
        let left = DEADLINE.saturating_sub(began.elapsed());
        let event = tokio::time::timeout(left, sub.next_event())
            .await
            .unwrap_or_else(|_| panic!("{} confirmed messages never delivered", missing.len()));
        match event {
            Some(SubEvent::Message(d)) if !done(&seen, &missing) => {
                let text = body(&d);
                missing.remove(&text);
                seen.push(text);
                sub.fin(d.id).await.expect("fin");
                if done(&seen, &missing) {
                    sub.cls().await.expect("cls");
                }
            }
            Some(SubEvent::Message(d)) => sub.req(d.id, Duration::ZERO).await.expect("req"),
            Some(SubEvent::Closed) | None if done(&seen, &missing) => break,
            other => panic!("subscription ended: {other:?}"),
        }
    }
    client.close().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_publishes_survive_a_sigkill_of_the_topics_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let configs = init(dir.path(), 3);
    let mut nodes: Vec<Option<ServeProcess>> = configs.iter().map(|c| Some(start(c))).collect();
    {
        let live: Vec<&ServeProcess> = nodes.iter().flatten().collect();
        tokio::task::block_in_place(|| agreed_leader(&live, None));
    }
    let t = topic("orders");
    let live: Vec<&ServeProcess> = nodes.iter().flatten().collect();
    let leader_addr = publish_anywhere(&live, &t, "first").await;
    let leader = live
        .iter()
        .position(|n| n.quic == leader_addr)
        .expect("a node");
    // A follower answers with the redirect that names the leader.
    // (A follower that has not heard from the leader yet answers with a retriable error.)
    let follower = (leader + 1) % 3;
    let began = Instant::now();
    loop {
        match publish_on(live[follower].quic, &live, &t, "via-follower").await {
            Answer::Redirect(addr) => break assert_eq!(addr, leader_addr),
            Answer::Confirmed => panic!("a follower confirmed a publish"),
            Answer::Retry(why) if began.elapsed() > DEADLINE => {
                panic!("no redirect from a follower: {why}")
            }
            Answer::Retry(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut confirmed = vec!["first".to_string()];
    confirmed.extend(publish_many(live[leader], &t, "before", 200).await);
    let want: HashSet<String> = confirmed.iter().cloned().collect();
    // Half is consumed (and FIN'd) on the first leader, the rest must come from the next.
    let seen_before = consume_until(live[leader], &t, &want, Some(want.len() / 2)).await;
    tokio::task::block_in_place(|| fins_committed(&live, leader, seen_before.len() as u64));
    drop(live);

    nodes[leader].as_mut().expect("leader").kill();
    nodes[leader] = None;
    let killed_at = Instant::now();
    let live: Vec<&ServeProcess> = nodes.iter().flatten().collect();
    let new_addr = publish_anywhere(&live, &t, "after-kill").await;
    println!(
        "first confirmed publish on the new leader {:?} after the kill",
        killed_at.elapsed()
    );
    let new_leader = live
        .iter()
        .position(|n| n.quic == new_addr)
        .expect("a node");
    let mut after = vec!["after-kill".to_string()];
    after.extend(publish_many(live[new_leader], &t, "after", 200).await);
    let mut want: HashSet<String> = after.iter().cloned().collect();
    want.extend(
        confirmed
            .iter()
            .filter(|b| !seen_before.contains(b))
            .cloned(),
    );
    let seen_after = consume_until(live[new_leader], &t, &want, None).await;
    // What was FIN'd before the kill may come back only if its FIN had not been committed.
    let again = seen_after
        .iter()
        .filter(|b| seen_before.contains(b))
        .count();
    assert_eq!(
        again, 0,
        "messages whose FIN was committed before the kill were delivered again"
    );
}

/// Waits until the leader processed `fins` FINs on channel `c` and shipped them (its state
/// lag is 0), and then until every follower applied the leader's log as it was then: the
/// FINs are committed.
pub(crate) fn fins_committed(nodes: &[&ServeProcess], leader: usize, fins: u64) {
    let began = Instant::now();
    loop {
        let (_, body) = http_request(nodes[leader].http, "GET", "/stats", "");
        let stats: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
        let channel = stats["topics"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == "orders"))
            .and_then(|t| t["channels"].as_array())
            .and_then(|c| c.iter().find(|c| c["name"] == "c"))
            .cloned()
            .unwrap_or_default();
        if channel["finished"].as_u64() == Some(fins) && channel["state_lag_ms"].as_u64() == Some(0)
        {
            break;
        }
        assert!(began.elapsed() < DEADLINE, "FINs not shipped: {channel}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let group = |node: &ServeProcess| {
        let s = status(node);
        s["topics"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["topic"] == "orders"))
            .map(|t| t["group"].clone())
            .unwrap_or_default()
    };
    let last = group(nodes[leader])["last_log_index"]
        .as_u64()
        .expect("leader's log");
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != leader) {
        loop {
            let applied = group(node)["applied"].as_u64().unwrap_or(0);
            if applied >= last {
                break;
            }
            assert!(
                began.elapsed() < DEADLINE,
                "node {i} applied {applied} of {last}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
