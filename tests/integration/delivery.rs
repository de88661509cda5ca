//! Delivery semantics over real QUIC: fan-out, sharing, requeue, deadlines, TOUCH,
//! disconnects, RDY, dead letters, DPUB, ephemeral channels, CLS and shutdown.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use quiver::client::SubEvent;
use quiver::message::NewMessage;
use quiver::protocol::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[tokio::test]
async fn fan_out_copies_every_message_to_every_channel() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut a = subscribe(&client, "fan", "a", None).await;
    let mut b = subscribe(&client, "fan", "b", None).await;
    a.rdy(100).await.unwrap();
    b.rdy(100).await.unwrap();
    publish(&client, "fan", (0..50).map(|i| format!("m{i}"))).await;
    for sub in [&mut a, &mut b] {
        let mut bodies = Vec::new();
        for _ in 0..50 {
            let d = next_message(sub, SOON).await;
            bodies.push(body(&d));
            sub.fin(d.id).await.unwrap();
        }
        assert_eq!(bodies, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn three_consumers_share_ten_thousand_messages_without_duplicates() {
    let broker = TestBroker::start().await;
    let done = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let client = broker.client().await;
        let mut sub = subscribe(&client, "share", "c", None).await;
        sub.rdy(100).await.unwrap();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut errors = 0;
            loop {
                let event = tokio::select! {
                    event = sub.next_event() => event,
                    _ = done.cancelled() => break,
                };
                match event {
                    Some(SubEvent::Message(d)) => {
                        sub.fin(d.id).await.unwrap();
                        ids.push(d.id);
                    }
                    Some(SubEvent::Error(_)) => errors += 1,
                    other => panic!("subscription ended: {other:?}"),
                }
            }
            drop(client);
            (ids, errors)
        }));
    }
    let client = broker.client().await;
    publish(&client, "share", (0..10_000).map(|i| i.to_string())).await;
    // Every message finished and nothing left: the consumers have seen all they will.
    wait_for_channel(&client, "share", "c", "10 000 finished", |c| {
        c.finished == 10_000 && settled(c)
    })
    .await;
    done.cancel();
    let mut all = HashSet::new();
    for task in tasks {
        let (ids, errors) = task.await.unwrap();
        assert_eq!(errors, 0, "a FIN was refused");
        assert!(!ids.is_empty(), "every consumer gets a share");
        for id in ids {
            assert!(all.insert(id), "message {id} delivered twice");
        }
    }
    assert_eq!(all.len(), 10_000);
    let stats = broker
        .broker()
        .stats(&quiver::broker::Principal::internal(), None)
        .unwrap();
    let c = stats.topic("share").unwrap().channel("c").unwrap();
    assert_eq!(
        (c.finished, c.requeued, c.timed_out, c.depth, c.in_flight),
        (10_000, 0, 0, 0, 0)
    );
}

#[tokio::test]
async fn requeued_message_is_redelivered_after_delay_with_attempts_plus_one() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut sub = subscribe(&client, "req", "c", None).await;
    sub.rdy(10).await.unwrap();
    publish(&client, "req", ["x".to_string()]).await;
    let first = next_message(&mut sub, SOON).await;
    assert_eq!(first.attempts, 1);
    let requeued_at = Instant::now();
    sub.req(first.id, Duration::from_millis(700)).await.unwrap();
    let again = next_message(&mut sub, SOON).await;
    assert!(
        requeued_at.elapsed() >= Duration::from_millis(700),
        "redelivered after {:?}",
        requeued_at.elapsed()
    );
    assert_eq!((again.id, again.attempts), (first.id, 2));
    sub.fin(again.id).await.unwrap();
}

#[tokio::test]
async fn message_past_its_deadline_is_redelivered() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut sub = subscribe(&client, "deadline", "c", Some(Duration::from_secs(1))).await;
    sub.rdy(10).await.unwrap();
    // Taken before the publish, so before the delivery that starts the deadline.
    let published = Instant::now();
    publish(&client, "deadline", ["x".to_string()]).await;
    let first = next_message(&mut sub, SOON).await;
    let again = next_message(&mut sub, SOON).await;
    assert!(published.elapsed() >= Duration::from_secs(1));
    assert_eq!((again.id, again.attempts), (first.id, 2));
    let stats = broker
        .broker()
        .stats(&quiver::broker::Principal::internal(), None)
        .unwrap();
    assert_eq!(
        stats
            .topic("deadline")
            .unwrap()
            .channel("c")
            .unwrap()
            .timed_out,
        1
    );
}

#[tokio::test]
async fn touch_keeps_a_message_past_its_original_deadline() {
    // `x` and `y` are delivered with the same timeout; only `x` is touched, halfway. The
    // margins (half the timeout each way) absorb a late test or a late timer.
    let timeout = Duration::from_secs(6);
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut sub = subscribe(&client, "touch", "c", Some(timeout)).await;
    sub.rdy(10).await.unwrap();
    publish(&client, "touch", ["x".to_string(), "y".to_string()]).await;
    let x = next_message(&mut sub, SOON).await;
    let y = next_message(&mut sub, SOON).await;
    assert_eq!((body(&x), body(&y)), ("x".to_string(), "y".to_string()));
    tokio::time::sleep(timeout / 2).await;
    sub.touch(x.id).await.unwrap();
    // `y` times out first: the timer has passed `x`'s original deadline (which is no later
    // than `y`'s), and `x` is still ours.
    let again = next_message(&mut sub, SOON).await;
    assert_eq!((again.id, again.attempts), (y.id, 2));
    let c = channel_stats(&client, "touch", "c").await.unwrap();
    assert_eq!((c.timed_out, c.in_flight), (1, 2));
    sub.fin(x.id).await.unwrap();
    sub.fin(again.id).await.unwrap();
    let c = wait_for_channel(&client, "touch", "c", "both finished", |c| {
        c.finished == 2 && settled(c)
    })
    .await;
    assert_eq!(c.timed_out, 1);
}

#[tokio::test]
async fn dropped_connection_hands_its_in_flight_messages_to_another_consumer_at_once() {
    let broker = TestBroker::start().await;
    let doomed = broker.client().await;
    let mut a = subscribe(&doomed, "drop", "c", None).await;
    a.rdy(5).await.unwrap();
    let publisher = broker.client().await;
    publish(&publisher, "drop", (0..5).map(|i| i.to_string())).await;
    let mut held = HashSet::new();
    for _ in 0..5 {
        held.insert(next_message(&mut a, SOON).await.id);
    }
    let mut b = subscribe(&publisher, "drop", "c", None).await;
    b.rdy(10).await.unwrap();
    // `b` has credit, but everything is in flight to `a`.
    wait_for_channel(&publisher, "drop", "c", "b's credit", |c| {
        c.consumers.iter().any(|k| k.rdy == 10) && c.in_flight == 5 && c.depth == 0
    })
    .await;
    doomed.close().await;
    for _ in 0..5 {
        let d = next_message(&mut b, SOON).await;
        assert!(held.remove(&d.id));
        assert_eq!(d.attempts, 2);
    }
    // The default 60 s timeout played no part.
    let c = channel_stats(&publisher, "drop", "c").await.unwrap();
    assert_eq!(c.timed_out, 0);
}

#[tokio::test]
async fn rdy_zero_stops_delivery_and_rdy_n_caps_in_flight() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    // The broker counts what it delivers in `in_flight` before sending it, so its stats
    // show what it has sent: each check waits for proof that the broker handled the last
    // command, then reads what was delivered.
    let mut sub = subscribe(&client, "rdy", "c", None).await;
    publish(&client, "rdy", (0..10).map(|i| i.to_string())).await;
    wait_for_channel(&client, "rdy", "c", "10 held at RDY 0", |c| {
        c.depth == 10 && c.in_flight == 0 && c.consumers.len() == 1
    })
    .await;
    sub.rdy(3).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_message(&mut sub, SOON).await);
    }
    let c = channel_stats(&client, "rdy", "c").await.unwrap();
    assert_eq!((c.in_flight, c.depth, c.consumers[0].rdy), (3, 7, 3));
    sub.fin(held[0].id).await.unwrap();
    held[0] = next_message(&mut sub, SOON).await;
    let c = wait_for_channel(&client, "rdy", "c", "the FIN", |c| c.finished == 1).await;
    assert_eq!((c.in_flight, c.depth), (3, 6));
    // RDY 0 is handled before the FINs after it: they free no credit.
    sub.rdy(0).await.unwrap();
    for d in &held[1..] {
        sub.fin(d.id).await.unwrap();
    }
    let c = wait_for_channel(&client, "rdy", "c", "the FINs", |c| c.finished == 3).await;
    assert_eq!((c.in_flight, c.depth, c.consumers[0].rdy), (1, 6, 0));
}

#[tokio::test]
async fn message_past_max_attempts_moves_to_the_dead_letter_topic_with_reasons() {
    let broker = TestBroker::start().await;
    broker
        .broker()
        .create_channel(
            &quiver::broker::Principal::internal(),
            &topic("orders"),
            &channel("c"),
            quiver::broker::ChannelSettings {
                max_attempts: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    let client = broker.client().await;
    let mut dead = subscribe(&client, "orders.dead", "inspect", None).await;
    dead.rdy(10).await.unwrap();
    let mut sub = subscribe(&client, "orders", "c", None).await;
    sub.rdy(10).await.unwrap();
    let producer = client.producer().await.unwrap();
    producer
        .publish(
            &topic("orders"),
            NewMessage::new("poison").with_header("k", "v"),
        )
        .await
        .unwrap();
    for attempt in 1..=2 {
        let d = next_message(&mut sub, SOON).await;
        assert_eq!(d.attempts, attempt);
        sub.req(d.id, Duration::ZERO).await.unwrap();
    }
    let d = next_message(&mut dead, SOON).await;
    // Dead-lettered, so not delivered a third time: the channel holds nothing.
    let c = wait_for_channel(&client, "orders", "c", "the dead letter settled", settled).await;
    assert_eq!(c.dead_lettered, 1);
    assert_eq!(body(&d), "poison");
    assert_eq!(d.headers.get("k"), Some("v"));
    assert_eq!(d.headers.get("quiver-dead-reason"), Some("requeue"));
    assert_eq!(d.headers.get("quiver-dead-channel"), Some("c"));
    assert_eq!(d.headers.get("quiver-dead-topic"), Some("orders"));
    assert_eq!(d.headers.get("quiver-dead-attempts"), Some("2"));
    let stats = broker
        .broker()
        .stats(&quiver::broker::Principal::internal(), None)
        .unwrap();
    assert_eq!(
        stats
            .topic("orders")
            .unwrap()
            .channel("c")
            .unwrap()
            .dead_lettered,
        1
    );
}

#[tokio::test]
async fn deferred_publish_is_not_delivered_before_its_delay() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut sub = subscribe(&client, "dpub", "c", None).await;
    sub.rdy(10).await.unwrap();
    let producer = client.producer().await.unwrap();
    let sent = Instant::now();
    producer
        .publish_deferred(
            &topic("dpub"),
            NewMessage::new("later"),
            Duration::from_millis(800),
        )
        .await
        .unwrap();
    producer
        .publish(&topic("dpub"), NewMessage::new("now"))
        .await
        .unwrap();
    assert_eq!(body(&next_message(&mut sub, SOON).await), "now");
    let later = next_message(&mut sub, SOON).await;
    assert_eq!(body(&later), "later");
    // Due times are wall-clock milliseconds: allow for the rounding.
    assert!(
        sent.elapsed() >= Duration::from_millis(790),
        "delivered after {:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn ephemeral_channel_is_gone_after_its_last_consumer_leaves() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let a = subscribe(&client, "eph", "tail#ephemeral", None).await;
    let b = subscribe(&client, "eph", "tail#ephemeral", None).await;
    let has_channel = || {
        let stats = broker
            .broker()
            .stats(&quiver::broker::Principal::internal(), None)
            .unwrap();
        stats
            .topic("eph")
            .is_some_and(|t| t.channel("tail#ephemeral").is_some())
    };
    assert!(has_channel());
    drop(a);
    // Once the broker has seen `a` leave, the channel is still there for `b`.
    wait_for_channel(&client, "eph", "tail#ephemeral", "one consumer left", |c| {
        c.consumers.len() == 1
    })
    .await;
    drop(b);
    eventually("ephemeral channel deleted", || !has_channel()).await;
}

#[tokio::test]
async fn cls_drains_in_flight_messages_then_closes() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut sub = subscribe(&client, "cls", "c", None).await;
    sub.rdy(2).await.unwrap();
    publish(&client, "cls", (0..5).map(|i| i.to_string())).await;
    let a = next_message(&mut sub, SOON).await;
    let b = next_message(&mut sub, SOON).await;
    sub.cls().await.unwrap();
    sub.fin(a.id).await.unwrap();
    // After CLS nothing new is delivered, and the stream stays open while `b` is in flight.
    let c = wait_for_channel(&client, "cls", "c", "the FIN after CLS", |c| {
        c.finished == 1
    })
    .await;
    assert_eq!((c.in_flight, c.depth), (1, 3));
    sub.fin(b.id).await.unwrap();
    // Nothing came between: the next event is the close.
    assert_eq!(next_event(&mut sub, SOON).await, Some(SubEvent::Closed));
    let stats = broker
        .broker()
        .stats(&quiver::broker::Principal::internal(), None)
        .unwrap();
    assert_eq!(stats.topic("cls").unwrap().channel("c").unwrap().depth, 3);
}

#[tokio::test]
async fn graceful_shutdown_requeues_what_is_in_flight() {
    let mut broker = TestBroker::start().await;
    let core = broker.broker().clone();
    let client = broker.client().await;
    let mut sub = subscribe(&client, "bye", "c", None).await;
    sub.rdy(3).await.unwrap();
    publish(&client, "bye", (0..5).map(|i| i.to_string())).await;
    for _ in 0..3 {
        next_message(&mut sub, SOON).await;
    }
    broker.shutdown().await;
    match next_event(&mut sub, SOON).await {
        Some(SubEvent::Error(e)) => assert_eq!((e.code, e.fatal), (ErrorCode::ShuttingDown, true)),
        other => panic!("expected E_SHUTTING_DOWN, got {other:?}"),
    }
    let stats = core
        .stats(&quiver::broker::Principal::internal(), None)
        .unwrap();
    let c = stats.topic("bye").unwrap().channel("c").unwrap();
    assert_eq!(
        (c.in_flight, c.depth),
        (0, 5),
        "in-flight messages are back in the queue"
    );
}

#[tokio::test]
async fn paused_channel_holds_messages_until_unpaused() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut sub = subscribe(&client, "pause", "c", None).await;
    sub.rdy(10).await.unwrap();
    let admin = quiver::protocol::AdminRequest::Channel {
        op: quiver::protocol::AdminOp::Pause,
        topic: topic("pause"),
        channel: channel("c"),
        settings: Default::default(),
    };
    client.admin(admin).await.unwrap();
    publish(&client, "pause", ["held".to_string()]).await;
    let c = channel_stats(&client, "pause", "c").await.unwrap();
    assert!(c.paused);
    assert_eq!((c.depth, c.in_flight), (1, 0), "held, not delivered");
    let admin = quiver::protocol::AdminRequest::Channel {
        op: quiver::protocol::AdminOp::Unpause,
        topic: topic("pause"),
        channel: channel("c"),
        settings: Default::default(),
    };
    client.admin(admin).await.unwrap();
    assert_eq!(body(&next_message(&mut sub, SOON).await), "held");
}

#[tokio::test]
async fn first_channel_receives_the_backlog_and_later_channels_start_at_the_end() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    publish(&client, "backlog", ["early".to_string()]).await;
    let mut first = subscribe(&client, "backlog", "first", None).await;
    first.rdy(10).await.unwrap();
    assert_eq!(body(&next_message(&mut first, SOON).await), "early");
    let mut later = subscribe(&client, "backlog", "later", None).await;
    later.rdy(10).await.unwrap();
    publish(&client, "backlog", ["late".to_string()]).await;
    assert_eq!(body(&next_message(&mut later, SOON).await), "late");
    assert_eq!(body(&next_message(&mut first, SOON).await), "late");
}
