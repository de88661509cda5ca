//! `RetryingProducer` against a real `quiver serve` that is SIGKILLed and restarted on the
//! same address while publishes are in flight: every message is stored exactly once.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quiver::client::{Client, RetryPolicy, RetryingProducer};
use quiver::message::NewMessage;

use crate::process::{ServeProcess, BIN};
use crate::support::{drain, eventually, topic};

/// `quiver serve --fsync always` on `data` with its QUIC listener on `quic` (the others
/// ephemeral): a publish waits for its fsync, so a kill often lands between its append and
/// its confirmation.
fn serve(data: &std::path::Path, quic: &str) -> ServeProcess {
    let mut command = Command::new(BIN);
    command.arg("serve").arg("--data-dir").arg(data);
    command.args(["--quic", quic, "--http", "127.0.0.1:0"]);
    command.args(["--nsq-tcp", "off", "--nsq-http", "off", "--fsync", "always"]);
    ServeProcess::spawn(command)
}

/// A UDP port the OS had free a moment ago.
fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_retried_across_broker_kills_are_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let quic = format!("127.0.0.1:{}", free_udp_port());
    let mut broker = serve(&data, &quic);
    let policy = RetryPolicy {
        attempts: 100,
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        confirm_timeout: Duration::from_secs(2),
    };
    let producer = RetryingProducer::new(broker.options(), policy);
    let (tasks, batches, per_batch) = (4, 150, 5);
    let confirmed = Arc::new(AtomicUsize::new(0));
    let duplicates = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..tasks)
        .map(|task| {
            let (producer, confirmed) = (producer.clone(), confirmed.clone());
            let duplicates = duplicates.clone();
            tokio::spawn(async move {
                for batch in 0..batches {
                    let messages = (0..per_batch)
                        .map(|i| NewMessage::new(format!("{task}-{batch}-{i}")))
                        .collect();
                    let receipt = producer
                        .publish_batch(&topic("retried"), messages)
                        .await
                        .unwrap_or_else(|e| panic!("batch {task}-{batch} failed: {e}"));
                    duplicates.fetch_add(receipt.duplicate_count(), Ordering::Relaxed);
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Kill the broker every 30 confirmed batches, restarting it each time, until a retry
    // has met a publish that was stored although its confirmation was lost (at least twice).
    let mut kills = 0;
    while kills < 2 || duplicates.load(Ordering::Relaxed) == 0 {
        let target = (kills + 1) * 30;
        if target >= tasks * batches {
            break;
        }
        eventually("confirmed batches", || {
            confirmed.load(Ordering::Relaxed) >= target
        })
        .await;
        broker.kill();
        broker = serve(&data, &quic);
        kills += 1;
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let client = Client::connect(&broker.options()).await.unwrap();
    let mut stored: HashMap<String, usize> = HashMap::new();
    for d in drain(&client, "retried", "check").await {
        *stored
            .entry(String::from_utf8(d.body.to_vec()).unwrap())
            .or_default() += 1;
    }
    let total = tasks * batches * per_batch;
    let twice: Vec<_> = stored.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    assert_eq!(stored.len(), total, "every confirmed message is stored");
    let duplicates = duplicates.load(Ordering::Relaxed);
    eprintln!("{kills} kills; retried messages confirmed as duplicates: {duplicates}");
    assert!(
        duplicates > 0,
        "no retry met a stored publish in {kills} kills"
    );
}
