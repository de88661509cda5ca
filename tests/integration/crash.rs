//! The crash test: a real `quiver serve` under publish and consume load, killed with SIGKILL,
//! restarted on the same directory. Every publish confirmed under `fsync = always` must be
//! delivered after the restart, and a FIN'd message may come back only if it was FIN'd
//! within the documented bound before the kill.
//!
//! CI runs [`ROUNDS`] rounds. For a longer soak: `QUIVER_CRASH_ROUNDS=50 cargo test --release
//! crash -- --nocapture`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver::client::{Client, SubEvent, Subscription};
use quiver::message::NewMessage;

use crate::process::ServeProcess;
use crate::support::{body, channel, topic};

const ROUNDS: usize = 5;
const PUBLISHERS: usize = 4;
const BATCH: usize = 5;
/// The channel state is written every 10 ms, so a FIN older than that is on disk when the
/// process dies. The rest is slack for a loaded 2-core machine.
const FIN_BOUND: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Seen {
    confirmed: HashSet<String>,
    /// When each message was last delivered before the kill.
    delivered: HashMap<String, Instant>,
    finned: HashMap<String, Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_confirmed_message() {
    let rounds = std::env::var("QUIVER_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    for round in 0..rounds {
        crash_round(round).await;
    }
}

/// `quiver serve --fsync always` on `dir`, a client, and a subscription to `crash`/`c` with
/// `rdy` credit.
async fn start(dir: &std::path::Path, rdy: u32) -> (ServeProcess, Client, Subscription) {
    let serve = ServeProcess::start(dir, &["--fsync", "always"]);
    let client = Client::connect(&serve.options()).await.unwrap();
    let sub = client
        .subscribe(&topic("crash"), &channel("c"), Default::default())
        .await
        .unwrap();
    sub.rdy(rdy).await.unwrap();
    (serve, client, sub)
}

async fn crash_round(round: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, client, mut sub) = start(dir.path(), 500).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let producer = client.producer().await.unwrap();
        let (seen, stop) = (seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let bodies: Vec<String> = (0..BATCH)
                    .map(|k| format!("p{p}-{}", i * BATCH + k))
                    .collect();
                let batch = bodies.iter().cloned().map(NewMessage::new).collect();
                if producer
                    .publish_batch(&topic("crash"), batch)
                    .await
                    .is_err()
                {
                    return;
                }
                seen.lock().unwrap().confirmed.extend(bodies);
            }
        }));
    }
    // Consume meanwhile: FIN 49 messages in 50 and leave the 50th in flight.
    let acker = sub.acker();
    let consumer_seen = seen.clone();
    tasks.push(tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(SubEvent::Message(d)) = sub.next_event().await {
            n += 1;
            let at = Instant::now();
            consumer_seen.lock().unwrap().delivered.insert(body(&d), at);
            if !n.is_multiple_of(50) && acker.fin(d.id).await.is_ok() {
                let at = Instant::now();
                consumer_seen.lock().unwrap().finned.insert(body(&d), at);
            }
        }
    }));

    tokio::time::sleep(Duration::from_millis(400 + 150 * round as u64)).await;
    let killed_at = Instant::now();
    serve.kill();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    drop(client);

    let (mut serve, client, mut sub) = start(dir.path(), 1000).await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut missing: HashSet<&String> = seen
        .confirmed
        .iter()
        .filter(|b| !seen.finned.contains_key(*b))
        .collect();
    let mut received = 0u64;
    let mut delivered_again = 0u64;
    let mut finned_again = Vec::new();
    loop {
        let wait = if missing.is_empty() {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(30)
        };
        let event = match tokio::time::timeout(wait, sub.next_event()).await {
            Ok(event) => event,
            Err(_) if missing.is_empty() => break,
            Err(_) => panic!(
                "round {round}: {} confirmed messages never came back, e.g. {:?}",
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            ),
        };
        let Some(SubEvent::Message(d)) = event else {
            panic!("round {round}: subscription ended: {event:?}");
        };
        sub.fin(d.id).await.unwrap();
        received += 1;
        let b = body(&d);
        missing.remove(&b);
        if seen.delivered.contains_key(&b) {
            delivered_again += 1;
        }
        if let Some(at) = seen.finned.get(&b) {
            finned_again.push((b, killed_at.saturating_duration_since(*at)));
        }
    }
    let stats = client.stats(Some(&topic("crash"))).await.unwrap();
    let recovered = stats.topics[0].channel("c").map_or(0, |c| c.recovered);
    println!(
        "round {round}: {} confirmed, {} delivered and {} finned before the kill; {received} \
         delivered after the restart ({delivered_again} again; {recovered} reported recovered), \
         {} of them finned before",
        seen.confirmed.len(),
        seen.delivered.len(),
        seen.finned.len(),
        finned_again.len(),
    );
    assert!(
        !seen.confirmed.is_empty(),
        "round {round}: nothing was confirmed"
    );
    for (b, age) in &finned_again {
        assert!(
            *age < FIN_BOUND,
            "round {round}: {b} was finned {age:?} before the kill and came back"
        );
    }
    // Redeliveries are what the channel restored as pending, plus deliveries whose cursor
    // move was not yet written when the process died.
    let recent = seen
        .delivered
        .values()
        .filter(|at| killed_at.saturating_duration_since(**at) < FIN_BOUND)
        .count() as u64;
    assert!(
        delivered_again <= recovered + recent,
        "round {round}: {delivered_again} redelivered, {recovered} recovered, {recent} recent"
    );
    assert!(serve.terminate().success());
}
