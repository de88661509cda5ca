//! The NSQ TCP listener driven by `tokio-nsq`, an NSQ client written independently of Quiver:
//! publish, consume, REQ, timeouts, TOUCH, DPUB, MPUB, heartbeats, TLS and compression.

use std::net::SocketAddr;
use std::time::Duration;

use quiver::broker::Broker;
use quiver::client::ClientOptions;
use quiver::config::Config;
use quiver::server::Server;
use quiver::transport::tls::Trust;
use tokio::time::{timeout, Instant};
use tokio_nsq::{
    NSQChannel, NSQConfigShared, NSQConfigSharedCompression, NSQConfigSharedTLS, NSQConsumer,
    NSQConsumerConfig, NSQConsumerConfigSources, NSQDeflateLevel, NSQEvent, NSQMessage,
    NSQProducer, NSQProducerConfig, NSQRequeueDelay, NSQTopic,
};

use super::support::{eventually, topic, DEADLINE, SOON};

/// A broker with its NSQ TCP listener on 127.0.0.1:0 and a temp data directory.
#[allow(dead_code)]
pub struct NsqBroker {
    server: Option<Server>,
    broker: Broker,
    pub nsq: SocketAddr,
    pub quic: ClientOptions,
    _dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl NsqBroker {
    pub async fn start() -> NsqBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> NsqBroker {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.listen.quic = "127.0.0.1:0".parse().unwrap();
        config.listen.http = "127.0.0.1:0".parse().unwrap();
        config.nsq.tcp = Some("127.0.0.1:0".parse().unwrap());
        config.nsq.http = None;
        config.limits.shutdown_grace = Duration::from_secs(2);
        configure(&mut config);
        let server = Server::start(config).await.expect("server starts");
        let quic = ClientOptions::new(
            server.quic_addr(),
            Trust::CaFile(server.cert_path().to_owned()),
        );
        NsqBroker {
            broker: server.broker().clone(),
            nsq: server.nsq_tcp_addr().expect("NSQ TCP is on"),
            quic,
            server: Some(server),
            _dir: dir,
        }
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

pub fn nsq_topic(name: &str) -> std::sync::Arc<NSQTopic> {
    NSQTopic::new(name).unwrap()
}

pub async fn producer(addr: SocketAddr, shared: NSQConfigShared) -> NSQProducer {
    let mut producer = NSQProducerConfig::new(addr.to_string())
        .set_shared(shared)
        .build();
    match timeout(SOON, producer.consume()).await {
        Ok(Some(NSQEvent::Healthy())) => producer,
        other => panic!("expected the producer to become healthy, got {other:?}"),
    }
}

/// Waits for the broker's `OK` to the last publish.
pub async fn acked(producer: &mut NSQProducer) {
    loop {
        match timeout(SOON, producer.consume()).await {
            Ok(Some(NSQEvent::Ok())) => return,
            Ok(Some(NSQEvent::Healthy())) => continue,
            other => panic!("expected OK, got {other:?}"),
        }
    }
}

pub async fn publish(producer: &mut NSQProducer, t: &str, body: &str) {
    producer
        .publish(&nsq_topic(t), body.as_bytes().to_vec())
        .await
        .unwrap();
    acked(producer).await;
}

pub fn consumer(addr: SocketAddr, t: &str, c: &str, shared: NSQConfigShared) -> NSQConsumer {
    NSQConsumerConfig::new(nsq_topic(t), NSQChannel::new(c).unwrap())
        .set_max_in_flight(100)
        .set_sources(NSQConsumerConfigSources::Daemons(vec![addr.to_string()]))
        .set_shared(shared)
        .build()
}

pub async fn next(consumer: &mut NSQConsumer, within: Duration) -> NSQMessage {
    timeout(within, consumer.consume_filtered())
        .await
        .unwrap_or_else(|_| panic!("no NSQ message within {within:?}"))
        .expect("consumer open")
}

/// Publishes a marker to `t` and asserts that it is the next message `consumer` gets (and
/// FINs it): nothing else was delivered before it.
pub async fn next_is_marker(producer: &mut NSQProducer, consumer: &mut NSQConsumer, t: &str) {
    publish(producer, t, "marker").await;
    let m = next(consumer, SOON).await;
    assert_eq!(text(&m), "marker", "attempt {}", m.attempt);
    m.finish().await;
}

fn text(m: &NSQMessage) -> String {
    String::from_utf8(m.body.clone()).unwrap()
}

/// Waits until the channel has nothing ready or in flight, and `finished` messages done.
async fn drained(broker: &Broker, t: &str, finished: u64) {
    eventually("drained channel", || is_drained(broker, t, finished)).await;
}

fn is_drained(broker: &Broker, t: &str, finished: u64) -> bool {
    let Ok(stats) = broker.stats(&quiver::broker::Principal::internal(), Some(&topic(t))) else {
        return false;
    };
    stats.topics[0]
        .channels
        .iter()
        .all(|c| c.depth == 0 && c.in_flight == 0 && c.deferred == 0 && c.finished >= finished)
}

/// The stats of the only channel of `t`.
fn channel_of(broker: &Broker, t: &str) -> quiver::broker::ChannelStats {
    let stats = broker
        .stats(&quiver::broker::Principal::internal(), Some(&topic(t)))
        .unwrap();
    stats.topics[0].channels[0].clone()
}

#[tokio::test]
async fn nsq_client_publishes_and_consumes_with_fin() {
    let broker = NsqBroker::start().await;
    let mut consumer = consumer(broker.nsq, "orders", "billing", NSQConfigShared::new());
    let mut producer = producer(broker.nsq, NSQConfigShared::new()).await;
    for i in 0..3 {
        publish(&mut producer, "orders", &format!("order-{i}")).await;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = next(&mut consumer, SOON).await;
        assert_eq!(m.attempt, 1);
        assert!(m.id.iter().all(u8::is_ascii_hexdigit), "{:?}", m.id);
        seen.push(text(&m));
        m.finish().await;
    }
    assert_eq!(seen, ["order-0", "order-1", "order-2"]);
    drained(broker.broker(), "orders", 3).await;
    next_is_marker(&mut producer, &mut consumer, "orders").await;
}

#[tokio::test]
async fn mpub_and_dpub_through_an_nsq_client() {
    let broker = NsqBroker::start().await;
    let mut consumer = consumer(broker.nsq, "batch", "c", NSQConfigShared::new());
    let mut producer = producer(broker.nsq, NSQConfigShared::new()).await;
    let bodies: Vec<Vec<u8>> = (0..50).map(|i| format!("m{i}").into_bytes()).collect();
    producer
        .publish_multiple(&nsq_topic("batch"), bodies)
        .await
        .unwrap();
    acked(&mut producer).await;
    for i in 0..50 {
        let m = next(&mut consumer, SOON).await;
        assert_eq!(text(&m), format!("m{i}"));
        m.finish().await;
    }

    let sent = Instant::now();
    producer
        .publish_deferred(&nsq_topic("batch"), b"later".to_vec(), 1500)
        .await
        .unwrap();
    acked(&mut producer).await;
    let m = next(&mut consumer, SOON).await;
    assert_eq!(text(&m), "later");
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "a DPUB of 1.5 s arrived after {:?}",
        sent.elapsed()
    );
    m.finish().await;
    drained(broker.broker(), "batch", 51).await;
}

#[tokio::test]
async fn req_redelivers_with_one_more_attempt() {
    let broker = NsqBroker::start().await;
    let mut consumer = consumer(broker.nsq, "jobs", "workers", NSQConfigShared::new());
    let mut producer = producer(broker.nsq, NSQConfigShared::new()).await;
    publish(&mut producer, "jobs", "retry me").await;
    let first = next(&mut consumer, SOON).await;
    assert_eq!(first.attempt, 1);
    let id = first.id;
    first.requeue(NSQRequeueDelay::NoDelay).await;
    let second = next(&mut consumer, SOON).await;
    assert_eq!(
        (text(&second), second.attempt, second.id),
        ("retry me".into(), 2, id)
    );
    // Taken before the REQ is sent, so before the broker starts its delay.
    let requeued = Instant::now();
    second
        .requeue(NSQRequeueDelay::CustomDelay(Duration::from_millis(800)))
        .await;
    let third = next(&mut consumer, SOON).await;
    assert_eq!(third.attempt, 3);
    assert!(requeued.elapsed() >= Duration::from_millis(700));
    third.finish().await;
    drained(broker.broker(), "jobs", 1).await;
}

#[tokio::test]
async fn a_message_not_finished_in_time_is_delivered_again() {
    let broker = NsqBroker::start_with(|c| c.broker.msg_timeout = Duration::from_secs(1)).await;
    let mut consumer = consumer(broker.nsq, "slow", "c", NSQConfigShared::new());
    let mut producer = producer(broker.nsq, NSQConfigShared::new()).await;
    // Taken before the publish, so before the delivery that starts the deadline.
    let published = Instant::now();
    publish(&mut producer, "slow", "late").await;
    // Held, neither finished nor requeued: it times out in the broker.
    let held = next(&mut consumer, SOON).await;
    let again = next(&mut consumer, SOON).await;
    assert!(published.elapsed() >= Duration::from_secs(1));
    assert_eq!((text(&again), again.attempt), ("late".into(), 2));
    again.finish().await;
    // The first copy's FIN or REQ would come too late and get E_FIN_FAILED (not fatal; the
    // raw tests check it), which tokio-nsq mistakes for a fatal error: keep it unanswered.
    std::mem::forget(held);
    drained(broker.broker(), "slow", 1).await;
    next_is_marker(&mut producer, &mut consumer, "slow").await;
}

#[tokio::test]
async fn touch_keeps_a_message_in_flight_past_its_timeout() {
    // `work` and `idle` are delivered together; only `work` is touched, halfway. The margins
    // (half the timeout each way) absorb a late test or a late timer.
    let timeout = Duration::from_secs(6);
    let broker = NsqBroker::start_with(|c| c.broker.msg_timeout = timeout).await;
    let mut consumer = consumer(broker.nsq, "long", "c", NSQConfigShared::new());
    let mut producer = producer(broker.nsq, NSQConfigShared::new()).await;
    let bodies = vec![b"work".to_vec(), b"idle".to_vec()];
    producer
        .publish_multiple(&nsq_topic("long"), bodies)
        .await
        .unwrap();
    acked(&mut producer).await;
    let work = next(&mut consumer, SOON).await;
    let idle = next(&mut consumer, SOON).await;
    assert_eq!((text(&work), text(&idle)), ("work".into(), "idle".into()));
    tokio::time::sleep(timeout / 2).await;
    work.touch().await;
    // `idle` times out first: the timer has passed `work`'s original deadline, and `work`
    // is still in flight.
    let again = next(&mut consumer, SOON).await;
    assert_eq!((text(&again), again.attempt), ("idle".into(), 2));
    let c = channel_of(broker.broker(), "long");
    assert_eq!((c.timed_out, c.in_flight), (1, 2));
    work.finish().await;
    again.finish().await;
    // The first copy of `idle` is stale: answering it would get E_FIN_FAILED.
    std::mem::forget(idle);
    drained(broker.broker(), "long", 2).await;
    assert_eq!(channel_of(broker.broker(), "long").timed_out, 1);
}

#[tokio::test]
async fn heartbeats_keep_idle_nsq_clients_connected() {
    let broker = NsqBroker::start_with(|c| c.nsq.heartbeat_interval = Duration::from_secs(1)).await;
    let mut consumer = consumer(broker.nsq, "idle", "c", NSQConfigShared::new());
    let mut producer = producer(broker.nsq, NSQConfigShared::new()).await;
    publish(&mut producer, "idle", "before").await;
    next(&mut consumer, SOON).await.finish().await;
    // Idle for 3.5 heartbeat intervals (the subject of the test, not a wait for something):
    // the clients answer each heartbeat with NOP, so the broker keeps both connections (it
    // closes after two missed).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    publish(&mut producer, "idle", "after").await;
    // What the consumer saw meanwhile comes before `after`: no drop, no other message.
    loop {
        match timeout(SOON, consumer.consume()).await {
            Ok(Some(NSQEvent::Message(m))) => {
                assert_eq!(text(&m), "after");
                m.finish().await;
                return;
            }
            Ok(Some(NSQEvent::Unhealthy())) => panic!("the consumer's connection dropped"),
            Ok(Some(_)) => {}
            other => panic!("expected `after`, got {other:?}"),
        }
    }
}

fn tls() -> NSQConfigSharedTLS {
    // tokio-nsq trusts any certificate unless given a client config.
    NSQConfigSharedTLS::new("localhost").set_required(true)
}

async fn round_trip(broker: &NsqBroker, t: &str, shared: NSQConfigShared) {
    let mut consumer = consumer(broker.nsq, t, "c", shared.clone());
    let mut producer = producer(broker.nsq, shared).await;
    let big = "x".repeat(100_000);
    for body in ["small", big.as_str()] {
        publish(&mut producer, t, body).await;
    }
    let bodies: Vec<Vec<u8>> = (0..20).map(|i| format!("batch-{i}").into_bytes()).collect();
    producer
        .publish_multiple(&nsq_topic(t), bodies)
        .await
        .unwrap();
    acked(&mut producer).await;
    let m = next(&mut consumer, SOON).await;
    assert_eq!(text(&m), "small");
    m.finish().await;
    let m = next(&mut consumer, SOON).await;
    assert_eq!(m.body.len(), big.len());
    m.finish().await;
    for i in 0..20 {
        let m = next(&mut consumer, SOON).await;
        assert_eq!(text(&m), format!("batch-{i}"));
        m.finish().await;
    }
    drained(broker.broker(), t, 22).await;
}

#[tokio::test]
async fn tls_and_compression_are_negotiated_with_an_nsq_client() {
    let broker = NsqBroker::start().await;
    round_trip(&broker, "tls", NSQConfigShared::new().set_tls(tls())).await;
    let snappy = NSQConfigShared::new().set_compression(NSQConfigSharedCompression::Snappy);
    round_trip(&broker, "snappy", snappy).await;
    let deflate = NSQConfigShared::new().set_compression(NSQConfigSharedCompression::Deflate(
        NSQDeflateLevel::new(3).unwrap(),
    ));
    round_trip(&broker, "deflate", deflate.clone()).await;
    round_trip(&broker, "tls-deflate", deflate.set_tls(tls())).await;
    let tls_snappy = NSQConfigShared::new()
        .set_tls(tls())
        .set_compression(NSQConfigSharedCompression::Snappy);
    round_trip(&broker, "tls-snappy", tls_snappy).await;
}

#[tokio::test]
async fn sample_rate_delivers_a_share_and_finishes_the_rest() {
    let broker = NsqBroker::start().await;
    let mut sampled = NSQConsumerConfig::new(nsq_topic("sampled"), NSQChannel::new("c").unwrap())
        .set_max_in_flight(100)
        .set_sample_rate(tokio_nsq::NSQSampleRate::new(30).unwrap())
        .set_sources(NSQConsumerConfigSources::Daemons(vec![broker
            .nsq
            .to_string()]))
        .build();
    let mut producer = producer(broker.nsq, NSQConfigShared::new()).await;
    let bodies: Vec<Vec<u8>> = (0..400).map(|i| format!("{i}").into_bytes()).collect();
    producer
        .publish_multiple(&nsq_topic("sampled"), bodies)
        .await
        .unwrap();
    acked(&mut producer).await;
    // Until the broker has finished all 400: the delivered ones by the client's FIN, the
    // rest at once.
    let began = Instant::now();
    let mut delivered = 0;
    let mut check = tokio::time::interval(Duration::from_millis(20));
    while !is_drained(broker.broker(), "sampled", 400) {
        tokio::select! {
            m = sampled.consume_filtered() => {
                delivered += 1;
                m.expect("consumer open").finish().await;
            }
            _ = check.tick() => assert!(
                began.elapsed() < DEADLINE,
                "{delivered} delivered; not drained within {DEADLINE:?}: {:?}",
                channel_of(broker.broker(), "sampled")
            ),
        }
    }
    // About 31% (nsqd keeps a draw of 0..=30 out of 0..100); the rest is skipped, not kept.
    assert!(
        (60..=200).contains(&delivered),
        "{delivered} of 400 delivered"
    );
    assert_eq!(channel_of(broker.broker(), "sampled").finished, 400);
}
