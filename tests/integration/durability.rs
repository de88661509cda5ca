//! The durable log through the whole broker: restarts keep channel state, damaged segments
//! lose only what is damaged, and retention deletes only what it may.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quiver::client::SubscribeOptions;
use quiver::config::Config;
use quiver::message::NewMessage;

use crate::support::*;

/// Small segments, so that tests roll and delete them.
fn small_segments(config: &mut Config) {
    config.storage.segment_bytes = 4096;
}

/// The segment files of `t`, oldest first.
fn segments(data_dir: &Path, t: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("topics").join(t))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Receives until `n` messages came, FINs them, and returns their bodies with attempts.
async fn receive_fin(sub: &mut quiver::client::Subscription, n: usize) -> Vec<(String, u16)> {
    let mut got = Vec::new();
    while got.len() < n {
        let d = next_message(sub, SOON).await;
        sub.fin(d.id).await.unwrap();
        got.push((body(&d), d.attempts));
    }
    got
}

fn bodies(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[tokio::test]
async fn a_restart_keeps_channels_acks_deferred_due_times_and_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = TestBroker::start_in(&data, |_| {}).await;
    let client = broker.client().await;
    let mut sub = subscribe(&client, "keep", "work", None).await;
    publish(&client, "keep", bodies(0..6)).await;
    let b = broker.broker();
    b.create_channel(
        &quiver::broker::Principal::internal(),
        &topic("keep"),
        &channel("slow"),
        quiver::broker::ChannelSettings {
            max_attempts: Some(7),
            ..Default::default()
        },
    )
    .unwrap();
    b.pause_channel(
        &quiver::broker::Principal::internal(),
        &topic("keep"),
        &channel("slow"),
        true,
    )
    .unwrap();
    b.create_topic(&quiver::broker::Principal::internal(), &topic("other"))
        .unwrap();
    b.pause_topic(
        &quiver::broker::Principal::internal(),
        &topic("other"),
        true,
    )
    .unwrap();

    sub.rdy(10).await.unwrap();
    let mut held = std::collections::HashMap::new();
    for _ in 0..6 {
        let d = next_message(&mut sub, SOON).await;
        held.insert(body(&d), d);
    }
    sub.fin(held["m0"].id).await.unwrap();
    sub.fin(held["m1"].id).await.unwrap();
    sub.req(held["m2"].id, Duration::ZERO).await.unwrap();
    let again = next_message(&mut sub, SOON).await;
    assert_eq!((body(&again), again.attempts), ("m2".into(), 2));
    // Both deferrals below are due 3 s after this, or later.
    let deferred_from = Instant::now();
    sub.req(held["m3"].id, Duration::from_secs(3))
        .await
        .unwrap();
    let producer = client.producer().await.unwrap();
    producer
        .publish_deferred(
            &topic("keep"),
            NewMessage::new("m6"),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    // m4 and m5 stay in flight: the shutdown requeues them.
    drop(sub);
    drop(client);
    broker.shutdown().await;

    let mut broker = TestBroker::start_in(&data, |_| {}).await;
    let client = broker.client().await;
    let stats = client.stats(None).await.unwrap();
    let keep = stats.topic("keep").expect("topic kept");
    let slow = keep.channel("slow").expect("channel kept");
    assert!(slow.paused);
    assert_eq!(slow.max_attempts, 7);
    assert!(stats.topic("other").expect("empty topic kept").paused);

    let mut sub = subscribe(&client, "keep", "work", None).await;
    sub.rdy(10).await.unwrap();
    // In any order (on a slow machine the deferred ones may be due before the others come).
    let mut got = Vec::new();
    for _ in 0..5 {
        let d = next_message(&mut sub, SOON).await;
        let waited = deferred_from.elapsed();
        sub.fin(d.id).await.unwrap();
        got.push((body(&d), d.attempts, waited));
    }
    got.sort();
    let kept: Vec<(&str, u16)> = got.iter().map(|(b, a, _)| (b.as_str(), *a)).collect();
    assert_eq!(
        kept,
        [("m2", 3), ("m3", 2), ("m4", 2), ("m5", 2), ("m6", 1)],
        "in flight at shutdown (m2, m4, m5) or deferred (m3, m6): back with their attempts \
         counted"
    );
    for (b, _, waited) in got.iter().filter(|(b, ..)| b == "m3" || b == "m6") {
        // Due times are saved in wall-clock milliseconds: allow for the rounding.
        assert!(
            *waited >= Duration::from_millis(2990),
            "{b} delivered {waited:?} after its 3 s deferral began"
        );
    }
    // Nothing else: the channel has decided every message.
    wait_for_channel(&client, "keep", "work", "everything finished", settled).await;
    drop(sub);
    drop(client);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_everything_before_it_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = TestBroker::start_in(&data, small_segments).await;
    publish(&broker.client().await, "torn", bodies(0..100)).await;
    broker.shutdown().await;

    let last = segments(&data, "torn").pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len - 7).unwrap();

    let mut broker = TestBroker::start_in(&data, small_segments).await;
    let client = broker.client().await;
    let mut sub = subscribe(&client, "torn", "c", None).await;
    sub.rdy(200).await.unwrap();
    let got: Vec<String> = receive_fin(&mut sub, 99)
        .await
        .into_iter()
        .map(|g| g.0)
        .collect();
    assert_eq!(got, bodies(0..99));
    // Nothing else came before a later message.
    publish(&client, "torn", ["after".to_string()]).await;
    assert_eq!(body(&next_message(&mut sub, SOON).await), "after");
    drop(sub);
    drop(client);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_flipped_byte_mid_segment_loses_only_that_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = TestBroker::start_in(&data, |_| {}).await;
    publish(&broker.client().await, "flip", bodies(0..100)).await;
    broker.shutdown().await;

    let segment = segments(&data, "flip").remove(0);
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(3)
        .position(|w| w == b"m50")
        .expect("m50 is in the segment");
    bytes[at + 1] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();

    let mut broker = TestBroker::start_in(&data, |_| {}).await;
    let client = broker.client().await;
    let mut sub = subscribe(&client, "flip", "c", None).await;
    sub.rdy(200).await.unwrap();
    let got: Vec<String> = receive_fin(&mut sub, 99)
        .await
        .into_iter()
        .map(|g| g.0)
        .collect();
    let expected: Vec<String> = bodies(0..100).into_iter().filter(|b| b != "m50").collect();
    assert_eq!(got, expected);
    // Nothing else came before a later message.
    publish(&client, "flip", ["after".to_string()]).await;
    assert_eq!(body(&next_message(&mut sub, SOON).await), "after");
    let stats = client.stats(Some(&topic("flip"))).await.unwrap();
    assert_eq!(stats.topics[0].corrupt_records, 1);
    drop(sub);
    drop(client);
    broker.shutdown().await;
}

#[tokio::test]
async fn interest_retention_deletes_only_segments_every_channel_passed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = TestBroker::start_in(&data, small_segments).await;
    let client = broker.client().await;
    let mut fast = subscribe(&client, "ret", "fast", None).await;
    let mut slow = subscribe(&client, "ret", "slow", None).await;
    // About 100 bytes a record: 40 segments of 4 KiB.
    let padded = |i: usize| format!("{i:05}{}", "x".repeat(55));
    let producer = client.producer().await.unwrap();
    let all: Vec<NewMessage> = (0..1500).map(|i| NewMessage::new(padded(i))).collect();
    for batch in all.chunks(20) {
        producer
            .publish_batch(&topic("ret"), batch.to_vec())
            .await
            .unwrap();
    }
    let before = segments(&data, "ret").len();
    assert!(before > 20, "{before} segments");

    fast.rdy(2000).await.unwrap();
    receive_fin(&mut fast, 1500).await;
    slow.rdy(2000).await.unwrap();
    receive_fin(&mut slow, 900).await;
    // The slow channel still needs the 900th message onward: only segments wholly below it
    // may go.
    let deadline = Instant::now() + SOON;
    while segments(&data, "ret").len() == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = segments(&data, "ret").len();
    assert!(
        after < before,
        "no segment was deleted ({before} → {after})"
    );
    assert!(
        after >= before * 600 / 1500,
        "deleted too much ({before} → {after})"
    );
    let stats = client.stats(Some(&topic("ret"))).await.unwrap();
    assert_eq!(stats.topics[0].retention_dropped_messages, 0);
    drop(slow);
    let mut slow = subscribe(&client, "ret", "slow", None).await;
    slow.rdy(2000).await.unwrap();
    let mut rest: Vec<String> = receive_fin(&mut slow, 600)
        .await
        .into_iter()
        .map(|g| g.0)
        .collect();
    rest.sort();
    assert_eq!(rest, (900..1500).map(padded).collect::<Vec<_>>());
    drop((fast, slow, client));
    broker.shutdown().await;
}

#[tokio::test]
async fn max_bytes_drops_the_oldest_segments_and_counts_them() {
    let mut broker = TestBroker::start_with(|c| {
        small_segments(c);
        c.storage.max_bytes = Some(16 * 1024);
    })
    .await;
    let client = broker.client().await;
    publish(&client, "capped", bodies(0..1000)).await;
    let mut stats = client.stats(Some(&topic("capped"))).await.unwrap().topics[0].clone();
    let deadline = Instant::now() + SOON;
    while stats.retention_dropped_messages == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = client.stats(Some(&topic("capped"))).await.unwrap().topics[0].clone();
    }
    assert!(stats.retention_dropped_messages > 0, "{stats:?}");
    assert!(stats.retained_bytes <= 16 * 1024 + 4096, "{stats:?}");
    let mut sub = subscribe(&client, "capped", "c", None).await;
    sub.rdy(1000).await.unwrap();
    let kept = 1000 - stats.retention_dropped_messages as usize;
    let got: Vec<String> = receive_fin(&mut sub, kept)
        .await
        .into_iter()
        .map(|g| g.0)
        .collect();
    assert_eq!(
        got,
        bodies(1000 - kept..1000),
        "the newest messages are kept"
    );
    drop(sub);
    drop(client);
    broker.shutdown().await;
}

#[tokio::test]
async fn max_age_drops_segments_older_than_it() {
    let mut broker = TestBroker::start_with(|c| {
        small_segments(c);
        c.storage.topics.insert(
            "aged".into(),
            quiver::storage::TopicStorageConfig {
                max_age: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        );
    })
    .await;
    let client = broker.client().await;
    publish(&client, "aged", bodies(0..200)).await;
    publish(&client, "kept", bodies(0..200)).await;
    let stats_of = |t: &'static str| {
        let client = client.clone();
        async move { client.stats(Some(&topic(t))).await.unwrap().topics[0].clone() }
    };
    let deadline = Instant::now() + DEADLINE;
    while stats_of("aged").await.retention_dropped_messages < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stats_of("aged").await.retention_dropped_messages, 200);
    assert_eq!(stats_of("kept").await.retention_dropped_messages, 0);
    let options = SubscribeOptions::default();
    let sub = client
        .subscribe(&topic("aged"), &channel("c"), options)
        .await
        .unwrap();
    sub.rdy(10).await.unwrap();
    // The new channel starts at the log's start, past every dropped message: nothing to
    // deliver, and nothing was.
    let c = wait_for_channel(&client, "aged", "c", "the subscription", |c| {
        c.consumers.len() == 1
    })
    .await;
    assert_eq!((c.depth, c.in_flight, c.message_count), (0, 0, 0));
    drop(sub);
    drop(client);
    broker.shutdown().await;
}
