//! `TestBroker`: a broker on 127.0.0.1:0 with a temp data directory, and helpers.

use std::time::{Duration, Instant};

use quiver::broker::{Broker, ChannelStats};
use quiver::client::{Client, ClientOptions, SubEvent, SubscribeOptions, Subscription};
use quiver::config::Config;
use quiver::message::{ChannelName, Delivery, NewMessage, TopicName};
use quiver::server::Server;
use quiver::transport::tls::{self, Trust};

pub struct TestBroker {
    server: Option<Server>,
    broker: Broker,
    pub options: ClientOptions,
    /// The admin HTTP API, the NSQ TCP listener and the nsqd HTTP API.
    pub http: std::net::SocketAddr,
    pub nsq_tcp: Option<std::net::SocketAddr>,
    pub nsq_http: Option<std::net::SocketAddr>,
    _dir: Option<tempfile::TempDir>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut broker = Self::start_in(&dir.path().join("data"), configure).await;
        broker._dir = Some(dir);
        broker
    }

    /// A broker on the data directory `data_dir`, which outlives it (for restart tests).
    pub async fn start_in(
        data_dir: &std::path::Path,
        configure: impl FnOnce(&mut Config),
    ) -> TestBroker {
        let mut config = Config {
            data_dir: data_dir.to_owned(),
            ..Config::default()
        };
        config.listen.quic = "127.0.0.1:0".parse().unwrap();
        config.listen.http = "127.0.0.1:0".parse().unwrap();
        config.nsq.tcp = Some("127.0.0.1:0".parse().unwrap());
        config.nsq.http = Some("127.0.0.1:0".parse().unwrap());
        config.limits.shutdown_grace = Duration::from_secs(2);
        configure(&mut config);
        let server = Server::start(config).await.expect("server starts");
        let options = ClientOptions::new(
            server.quic_addr(),
            Trust::CaFile(server.cert_path().to_owned()),
        );
        TestBroker {
            http: server.http_addr(),
            nsq_tcp: server.nsq_tcp_addr(),
            nsq_http: server.nsq_http_addr(),
            broker: server.broker().clone(),
            server: Some(server),
            options,
            _dir: None,
        }
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.options)
            .await
            .expect("client connects")
    }

    /// A bare QUIC connection, for sending hand-made frames.
    pub async fn raw_connection(&self) -> quinn::Connection {
        let config = tls::client_config(&self.options.trust, None).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        endpoint
            .connect(self.options.addr, "localhost")
            .unwrap()
            .await
            .expect("raw connection")
    }

    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

pub fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

pub fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

pub async fn publish(client: &Client, t: &str, bodies: impl IntoIterator<Item = String>) {
    let producer = client.producer().await.unwrap();
    let messages: Vec<NewMessage> = bodies.into_iter().map(NewMessage::new).collect();
    for chunk in messages.chunks(200) {
        producer
            .publish_batch(&topic(t), chunk.to_vec())
            .await
            .unwrap();
    }
}

pub async fn subscribe(
    client: &Client,
    t: &str,
    c: &str,
    timeout: Option<Duration>,
) -> Subscription {
    let options = SubscribeOptions {
        msg_timeout: timeout,
    };
    client
        .subscribe(&topic(t), &channel(c), options)
        .await
        .unwrap()
}

/// The next message, failing the test after `within`.
pub async fn next_message(sub: &mut Subscription, within: Duration) -> Delivery {
    loop {
        match tokio::time::timeout(within, sub.next_event()).await {
            Ok(Some(SubEvent::Message(d))) => return d,
            Ok(Some(SubEvent::Error(e))) if !e.fatal => continue,
            Ok(other) => panic!("expected a message, got {other:?}"),
            Err(_) => panic!("no message within {within:?}"),
        }
    }
}

/// The next event, failing the test after `within`.
pub async fn next_event(sub: &mut Subscription, within: Duration) -> Option<SubEvent> {
    tokio::time::timeout(within, sub.next_event())
        .await
        .unwrap_or_else(|_| panic!("no event within {within:?}"))
}

pub fn body(d: &Delivery) -> String {
    String::from_utf8(d.body.to_vec()).unwrap()
}

/// Waits until `check` holds, polling every 20 ms; fails after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let began = Instant::now();
    while !check() {
        assert!(began.elapsed() < DEADLINE, "no {what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a test waits for one expected event.
pub const SOON: Duration = Duration::from_secs(30);
/// How long a test waits for a condition (a count, a state) before it fails with what it
/// saw.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The stats of channel `c` of topic `t`, if both exist.
pub async fn channel_stats(client: &Client, t: &str, c: &str) -> Option<ChannelStats> {
    let stats = client.stats(Some(&topic(t))).await.unwrap();
    stats.topic(t).and_then(|t| t.channel(c)).cloned()
}

/// Whether the channel has decided every message of its topic: none left to read or
/// requeued, none in flight, none deferred.
pub fn settled(c: &ChannelStats) -> bool {
    c.depth == 0 && c.in_flight == 0 && c.deferred == 0
}

/// Polls the stats of `t`/`c` until `check` holds and returns them; fails after
/// [`DEADLINE`] with the last stats seen.
pub async fn wait_for_channel(
    client: &Client,
    t: &str,
    c: &str,
    what: &str,
    check: impl Fn(&ChannelStats) -> bool,
) -> ChannelStats {
    let began = Instant::now();
    loop {
        let stats = channel_stats(client, t, c).await;
        if let Some(stats) = stats.as_ref().filter(|s| check(s)) {
            return stats.clone();
        }
        assert!(
            began.elapsed() < DEADLINE,
            "{t}/{c}: no {what} within {DEADLINE:?}; last stats {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Subscribes to `t`/`c` and receives, FINning each, until the channel has decided every
/// message of its topic (see [`settled`]); returns what it received. Publish before
/// calling: a publish is in the log once it is confirmed. Fails after [`DEADLINE`] with the
/// counts.
pub async fn drain(client: &Client, t: &str, c: &str) -> Vec<Delivery> {
    let mut sub = subscribe(client, t, c, None).await;
    sub.rdy(1000).await.unwrap();
    let began = Instant::now();
    let mut got = Vec::new();
    let mut check = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            event = sub.next_event() => match event {
                Some(SubEvent::Message(d)) => {
                    sub.fin(d.id).await.unwrap();
                    got.push(d);
                }
                Some(SubEvent::Error(e)) if !e.fatal => {}
                other => panic!("subscription to {t}/{c} ended: {other:?}"),
            },
            _ = check.tick() => {
                let stats = channel_stats(client, t, c).await;
                if stats.as_ref().is_some_and(settled) {
                    return got;
                }
                assert!(
                    began.elapsed() < DEADLINE,
                    "{t}/{c}: not settled within {DEADLINE:?} after {} messages; stats {stats:?}",
                    got.len()
                );
            }
        }
    }
}
