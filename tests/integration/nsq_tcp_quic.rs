//! NSQ and QUIC clients on the same topics and channels, and shutdown with NSQ clients.

use std::time::Duration;

use quiver::client::Client;
use quiver::message::NewMessage;
use tokio::io::AsyncReadExt;
use tokio_nsq::NSQConfigShared;

use super::nsq_tcp::{consumer, next, producer, publish, silence, NsqBroker};
use super::support::{body, next_message, subscribe, topic, SOON};

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
    silence(&mut nsq, Duration::from_millis(300)).await;
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
async fn nsq_and_quic_consumers_of_one_channel_split_its_messages() {
    let broker = NsqBroker::start().await;
    let client = Client::connect(&broker.quic).await.unwrap();
    let mut quic = subscribe(&client, "split", "c", None).await;
    quic.rdy(1).await.unwrap();
    let mut nsq = consumer(broker.nsq, "split", "c", NSQConfigShared::new());
    // Let the NSQ consumer subscribe and set its RDY before publishing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut producer = producer(broker.nsq, NSQConfigShared::new()).await;
    for i in 0..20 {
        publish(&mut producer, "split", &format!("{i}")).await;
    }
    let mut seen = Vec::new();
    // The QUIC consumer holds one message unfinished; the NSQ one takes the rest.
    let held = next_message(&mut quic, SOON).await;
    seen.push(body(&held));
    for _ in 0..19 {
        let m = next(&mut nsq, SOON).await;
        seen.push(String::from_utf8(m.body.clone()).unwrap());
        m.finish().await;
    }
    seen.sort_by_key(|s| s.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(seen, expected, "each message once, to one of the two");
    quic.fin(held.id).await.unwrap();
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
    let stats = broker.broker().stats(Some(&topic("down"))).unwrap();
    assert_eq!(stats.topics[0].channels[0].in_flight, 1);
    let broker_handle = broker.broker().clone();
    tokio::time::timeout(Duration::from_secs(10), broker.shutdown())
        .await
        .expect("shutdown within the grace period");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(SOON, raw.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the NSQ connection is closed at shutdown");
    let stats = broker_handle.stats(Some(&topic("down"))).unwrap();
    let channel = &stats.topics[0].channels[0];
    assert_eq!((channel.in_flight, channel.depth), (0, 1), "requeued");
}
