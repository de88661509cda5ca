//! The high-level consumer: retries with backoff, client-side max attempts, graceful close.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quiver::client::consumer::{self, ConsumerConfig};
use quiver::message::NewMessage;
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[tokio::test]
async fn consumer_retries_failures_with_backoff_then_finishes() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    publish(&client, "work", (0..20).map(|i| i.to_string())).await;
    let calls = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let config = ConsumerConfig {
        max_in_flight: 10,
        concurrency: 4,
        backoff_base: Duration::from_millis(50),
        ..ConsumerConfig::default()
    };
    let handler = {
        let calls = calls.clone();
        move |d: quiver::message::Delivery| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Every message fails its first attempt.
                if d.attempts == 1 {
                    return Err("first attempt fails");
                }
                Ok(())
            }
        }
    };
    let run = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move {
            consumer::run(
                &client,
                &topic("work"),
                &channel("c"),
                config,
                handler,
                stop,
            )
            .await
        }
    });
    let core = broker.broker().clone();
    eventually("all finished", || {
        let stats = core
            .stats(&quiver::broker::Principal::internal(), None)
            .unwrap();
        let c = stats.topic("work").and_then(|t| t.channel("c"));
        c.is_some_and(|c| c.finished == 20)
    })
    .await;
    stop.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(
        (summary.finished, summary.requeued, summary.gave_up),
        (20, 20, 0)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 40);
}

#[tokio::test]
async fn consumer_gives_up_after_max_attempts_into_the_dead_letter_topic() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let producer = client.producer().await.unwrap();
    producer
        .publish(&topic("jobs"), NewMessage::new("bad"))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let config = ConsumerConfig {
        max_attempts: 2,
        backoff_base: Duration::from_millis(10),
        ..ConsumerConfig::default()
    };
    let run = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move {
            let handler = |_d| async { Err::<(), _>("always fails") };
            consumer::run(
                &client,
                &topic("jobs"),
                &channel("c"),
                config,
                handler,
                stop,
            )
            .await
        }
    });
    let mut dead = subscribe(&client, "jobs.dead", "d", None).await;
    dead.rdy(1).await.unwrap();
    let d = next_message(&mut dead, SOON).await;
    assert_eq!(body(&d), "bad");
    assert_eq!(
        d.headers.get("quiver-dead-reason"),
        Some("client-max-attempts")
    );
    assert_eq!(d.headers.get("quiver-dead-attempts"), Some("3"));
    stop.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!((summary.requeued, summary.gave_up), (2, 1));
}

#[tokio::test]
async fn consumer_close_requeues_what_it_did_not_start() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    publish(&client, "slow", (0..10).map(|i| i.to_string())).await;
    let stop = CancellationToken::new();
    let config = ConsumerConfig {
        max_in_flight: 10,
        concurrency: 1,
        ..ConsumerConfig::default()
    };
    let (started, mut handling) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move {
            let handler = move |_d| {
                let _ = started.send(());
                async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<(), String>(())
                }
            };
            consumer::run(
                &client,
                &topic("slow"),
                &channel("c"),
                config,
                handler,
                stop,
            )
            .await
        }
    });
    // Stop once a handler has started: it finishes; what was not started is requeued.
    tokio::time::timeout(SOON, handling.recv())
        .await
        .expect("a handler started")
        .unwrap();
    stop.cancel();
    let summary = run.await.unwrap().unwrap();
    assert!(summary.finished >= 1);
    assert_eq!(summary.finished + summary.requeued, 10, "{summary:?}");
    let stats = broker
        .broker()
        .stats(&quiver::broker::Principal::internal(), None)
        .unwrap();
    let c = stats.topic("slow").unwrap().channel("c").unwrap();
    assert_eq!(
        (c.in_flight, c.depth, c.finished),
        (0, 10 - summary.finished, summary.finished)
    );
}
