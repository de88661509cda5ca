//! A full disk: `quiver serve` runs on a 2 MiB tmpfs of its own (mounted in a private mount
//! namespace by `unshare`, so the test needs no privileges beyond user namespaces). Publishing
//! until the disk is full must fail with E_DISK_FULL and keep everything confirmed intact;
//! once consumers finish messages and retention frees segments, publishing works again.

use std::process::Command;
use std::time::{Duration, Instant};

use quiver::client::{Client, ClientError};
use quiver::message::NewMessage;
use quiver::protocol::ErrorCode;

use crate::process::{ServeProcess, BIN};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_publishes_cleanly_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().display();
    let script = format!(
        "mount -t tmpfs -o size=2m quiver-test {mount} && exec {BIN} serve \
         --data-dir {mount}/data --quic 127.0.0.1:0 --http 127.0.0.1:0 --nsq-tcp 127.0.0.1:0 --nsq-http 127.0.0.1:0 \
         --segment-bytes 65536 --fsync always"
    );
    let mut command = Command::new("unshare");
    command.args(["--map-root-user", "--mount", "sh", "-c", &script]);
    let mut serve = ServeProcess::spawn(command);
    let client = Client::connect(&serve.options()).await.unwrap();
    // The channel exists before the disk fills up, as it would in production.
    let mut sub = subscribe(&client, "fill", "c", None).await;

    let producer = client.producer().await.unwrap();
    let body = |i: usize| format!("{i:06}{}", "x".repeat(1018));
    let mut confirmed = 0;
    // Batches of 10, then single messages, so that what is left is too little for a new
    // topic's files whatever the page rounding.
    let mut refusal = None;
    for size in [10, 1] {
        refusal = Some(loop {
            let batch = (confirmed..confirmed + size)
                .map(|i| NewMessage::new(body(i)))
                .collect();
            match producer.publish_batch(&topic("fill"), batch).await {
                Ok(_) => confirmed += size,
                Err(e) => break e,
            }
            assert!(confirmed < 10_000, "a 2 MiB disk never filled up");
        });
    }
    let refusal = refusal.unwrap();
    let ClientError::Broker(e) = &refusal else {
        panic!("expected a broker error, got {refusal:?}");
    };
    assert_eq!(e.code, ErrorCode::DiskFull, "{e}");
    assert!(!e.fatal, "{e}");
    assert!(e.message.contains("No space left"), "{e}");
    assert!(confirmed > 500, "only {confirmed} messages fit");

    // Other topics fail cleanly too, and the broker keeps serving.
    let other = producer
        .publish(&topic("other"), NewMessage::new("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&other, ClientError::Broker(e) if e.code == ErrorCode::DiskFull),
        "{other:?}"
    );
    client.stats(None).await.unwrap();

    // Everything confirmed is intact. Finishing it lets retention delete its segments.
    sub.rdy(500).await.unwrap();
    for i in 0..confirmed {
        let d = next_message(&mut sub, SOON).await;
        assert_eq!(crate::support::body(&d), body(i));
        sub.fin(d.id).await.unwrap();
    }
    let deadline = Instant::now() + crate::support::DEADLINE;
    loop {
        match producer
            .publish(&topic("fill"), NewMessage::new(body(confirmed)))
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(
                    matches!(&e, ClientError::Broker(w) if w.code == ErrorCode::DiskFull),
                    "{e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("publishing did not recover once space returned: {e:?}"),
        }
    }
    assert_eq!(
        crate::support::body(&next_message(&mut sub, SOON).await),
        body(confirmed)
    );
    drop(sub);
    drop(client);
    assert!(serve.terminate().success());
}
