//! NSQ and QUIC clients on the same topics and channels, and shutdown with NSQ clients.

use quiver::client::Client;
use quiver::message::NewMessage;
use tokio::io::AsyncReadExt;
use tokio_nsq::NSQConfigShared;

use super::nsq_tcp::{consumer, next, producer, publish, NsqBroker};
use super::support::{body, eventually, next_message, subscribe, topic, SOON};

#[tokio::test]
async fn quic_publisher_and_nsq_consumer_share_a_channel() {
    let broker = NsqBroker::start().await;
    let mut nsq = consumer(broker.nsq, "mixed", "shared", NSQConfigShared::new());
    let client = Client::connect(&broker.quic).await.unwrap();
    let producer = client.producer().await.unwrap();
    let message = NewMessage::new("from quic").with_header("trace-id", "abc");
    producer.publish(&topic("mixed"), message).await.unwrap();
    let m = next(&mut nsq, SOON).await;
    // NSQ messages have no headers: the body is exactly what QUIC published.
    assert_eq!(m.body, b"from quic");
    assert_eq!(m.attempt, 1);
    m.finish().await;
    // Not delivered again: a later message is the next one.
    let marker = NewMessage::new("marker");
    producer.publish(&topic("mixed"), marker).await.unwrap();
    let m = next(&mut nsq, SOON).await;
    assert_eq!(m.body, b"marker");
    m.finish().await;
}

#[tokio::test]
async fn nsq_publisher_and_quic_consumer_share_a_channel() {
    let broker = NsqBroker::start().await;
    let client = Client::connect(&broker.quic).await.unwrap();
    let mut sub = subscribe(&client, "mixed", "shared", None).await;
    sub.rdy(10).await.unwrap();
    let mut producer = producer(broker.nsq, NSQConfigShared::new()).await;
    publish(&mut producer, "mixed", "from nsq").await;
    let d = next_message(&mut sub, SOON).await;
    assert_eq!(body(&d), "from nsq");
    assert!(d.headers.is_empty(), "NSQ publishes carry no headers");
    sub.fin(d.id).await.unwrap();
}

#[tokio::test]
async fn nsq_and_quic_consumers_of_one_channel_get_each_message_once() {
    let broker = NsqBroker::start().await;
    let client = Client::connect(&broker.quic).await.unwrap();
    let mut quic = subscribe(&client, "split", "c", None).await;
    quic.rdy(5).await.unwrap();
    let mut nsq = consumer(broker.nsq, "split", "c", NSQConfigShared::new());
    eventually("both consumers to have credit", || {
        split_channel(&broker)
            .is_some_and(|c| c.consumers.len() == 2 && c.consumers.iter().all(|c| c.rdy > 0))
    })
    .await;
    let mut producer = producer(broker.nsq, NSQConfigShared::new()).await;
    let bodies: Vec<Vec<u8>> = (0..200).map(|i| i.to_string().into_bytes()).collect();
    producer
        .publish_multiple(&super::nsq_tcp::nsq_topic("split"), bodies)
        .await
        .unwrap();
    super::nsq_tcp::acked(&mut producer).await;
    let mut seen = Vec::new();
    // Each branch waits longer than the loop may run, so the loop's bound is the one hit.
    let until = tokio::time::Instant::now() + 2 * SOON;
    while seen.len() < 200 {
        tokio::select! {
            d = next_message(&mut quic, 4 * SOON) => {
                seen.push(body(&d).parse::<u32>().unwrap());
                quic.fin(d.id).await.unwrap();
            }
            m = next(&mut nsq, 4 * SOON) => {
                seen.push(String::from_utf8(m.body.clone()).unwrap().parse().unwrap());
                m.finish().await;
            }
            _ = tokio::time::sleep_until(until) => panic!("only {} of 200 delivered", seen.len()),
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..200).collect::<Vec<u32>>(),
        "each message once, to one of the two"
    );
    // And nothing more: every message finished once, none left in flight or ready.
    eventually("200 finished", || {
        split_channel(&broker)
            .is_some_and(|c| c.finished == 200 && c.in_flight == 0 && c.depth == 0)
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_nsq_connections_and_requeues_their_messages() {
    let mut broker = NsqBroker::start().await;
    let mut producer = producer(broker.nsq, NSQConfigShared::new()).await;
    publish(&mut producer, "down", "in flight at shutdown").await;
    let mut raw = tokio::net::TcpStream::connect(broker.nsq).await.unwrap();
    use tokio::io::AsyncWriteExt;
    raw.write_all(b"  V2SUB down c\nRDY 1\n").await.unwrap();
    // OK to SUB, then the message.
    let mut seen = Vec::new();
    while !seen.windows(9).any(|w| w == b"at shutdo") {
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(SOON, raw.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the message arrived");
        seen.extend_from_slice(&chunk[..n]);
    }
    let stats = broker
        .broker()
        .stats(&quiver::broker::Principal::internal(), Some(&topic("down")))
        .unwrap();
    assert_eq!(stats.topics[0].channels[0].in_flight, 1);
    let broker_handle = broker.broker().clone();
    tokio::time::timeout(SOON, broker.shutdown())
        .await
        .expect("shutdown within the grace period");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(SOON, raw.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the NSQ connection is closed at shutdown");
    let stats = broker_handle
        .stats(&quiver::broker::Principal::internal(), Some(&topic("down")))
        .unwrap();
    let channel = &stats.topics[0].channels[0];
    assert_eq!((channel.in_flight, channel.depth), (0, 1), "requeued");
}

/// The stats of channel `split/c`, as the broker has them now.
fn split_channel(broker: &NsqBroker) -> Option<quiver::broker::ChannelStats> {
    let stats = broker
        .broker()
        .stats(
            &quiver::broker::Principal::internal(),
            Some(&topic("split")),
        )
        .ok()?;
    stats.topic("split")?.channel("c").cloned()
}
