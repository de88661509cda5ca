//! Ordered channels through real clients: QUIC and NSQ consumers that REQ, let messages time
//! out and disconnect, a SIGKILL of a real `quiver serve` in the middle, a channel ordered as
//! a whole, and a filter that skips messages of a key.
//!
//! Every test checks the promise from the consumers' side with a [`Ledger`]: when a message
//! of a key reaches a consumer, no other message of that key is being processed, and it is
//! the oldest message of its key not yet finished (after a crash, a message finished just
//! before it may come again, and then its successors, in order).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver::broker::{ChannelSettings, Principal};
use quiver::client::{Client, ClientOptions, SubEvent, SubscribeOptions};
use quiver::message::{Delivery, HeaderName, NewMessage, OrderBy};
use tokio::sync::watch;
use tokio_nsq::{NSQConfigShared, NSQRequeueDelay};

use crate::dedup::post;
use crate::nsq_tcp::consumer as nsq_consumer;
use crate::plugins::write_rules;
use crate::process::ServeProcess;
use crate::support::{channel, channel_stats, settled, topic, TestBroker, DEADLINE};

const KEY: &str = quiver::message::ORDER_KEY_HEADER;

/// What the consumers saw, checked as they see it.
#[derive(Default)]
struct Ledger {
    /// Per key: the next sequence number to finish.
    next: HashMap<String, u32>,
    /// Per key: the sequence number being processed, if any.
    busy: HashMap<String, u32>,
    /// Per key: the last sequence number delivered since the last crash.
    last: HashMap<String, u32>,
    finished: usize,
    /// Deliveries of a message already finished, after a crash.
    again: usize,
    requeued: usize,
    abandoned: usize,
    violations: Vec<String>,
}

impl Ledger {
    /// A consumer got `seq` of `key`. Returns false if it was finished already (a crash
    /// lost its FIN): the consumer just finishes it again.
    fn begin(&mut self, key: &str, seq: u32) -> bool {
        if let Some(other) = self.busy.get(key) {
            self.violations.push(format!(
                "{key}: {seq} delivered while {other} is being processed"
            ));
        }
        let next = self.next.get(key).copied().unwrap_or(0);
        let last = self.last.get(key).copied();
        let in_order = match last {
            // The same message again (REQ, timeout, disconnect) or the one after it.
            Some(last) => seq == last || seq == last + 1,
            // The first since the start or a crash: the oldest not finished, or (after a
            // crash) one finished whose FIN was lost.
            None => seq <= next,
        };
        if !in_order || seq > next {
            self.violations.push(format!(
                "{key}: {seq} delivered after {last:?}, next to finish {next}"
            ));
        }
        self.last.insert(key.to_owned(), seq);
        self.busy.insert(key.to_owned(), seq);
        if seq < next {
            self.again += 1;
            return false;
        }
        true
    }

    /// Processing ended without a FIN (REQ, a timeout to come, a disconnect).
    fn end(&mut self, key: &str) {
        self.busy.remove(key);
    }

    fn finish(&mut self, key: &str, seq: u32) {
        self.busy.remove(key);
        let next = self.next.entry(key.to_owned()).or_insert(0);
        if seq == *next {
            *next += 1;
            self.finished += 1;
        }
    }

    /// The broker was killed: what was being processed is lost with its connection, and
    /// the next delivery of each key may start over at the oldest message it kept.
    fn crashed(&mut self) {
        self.busy.clear();
        self.last.clear();
    }
}

type Shared = Arc<Mutex<Ledger>>;

fn keyed(key: usize, seq: usize) -> NewMessage {
    NewMessage::new(format!("k{key}:{seq}")).with_header(KEY, format!("k{key}"))
}

/// `keys` × `per_key` messages, keys interleaved, each key's in sequence.
fn messages(keys: usize, per_key: usize) -> Vec<NewMessage> {
    (0..keys * per_key)
        .map(|i| keyed(i % keys, i / keys))
        .collect()
}

fn parse(d: &Delivery) -> (String, u32) {
    let body = String::from_utf8(d.body.to_vec()).unwrap();
    let (key, seq) = body.split_once(':').unwrap();
    (key.to_owned(), seq.parse().unwrap())
}

/// A small deterministic generator, one per consumer.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

/// How a QUIC consumer behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    seed: u64,
    rdy: u32,
    msg_timeout: Duration,
    /// Percent of messages given back with REQ (a delay of up to 50 ms).
    req_percent: u64,
    /// How many messages it leaves unanswered, to time out.
    abandon: usize,
    /// After this many messages it drops its connection while holding messages, then
    /// connects again.
    disconnect_after: Option<usize>,
}

impl Behaviour {
    fn plain(seed: u64) -> Behaviour {
        Behaviour {
            seed,
            rdy: 10,
            msg_timeout: Duration::from_secs(60),
            req_percent: 5,
            abandon: 0,
            disconnect_after: None,
        }
    }
}

/// A QUIC consumer of `t`/`c` that follows the broker named in `broker` (it changes on a
/// restart), until `total` messages are finished.
async fn quic_consumer(
    broker: watch::Receiver<ClientOptions>,
    t: &'static str,
    c: &'static str,
    ledger: Shared,
    total: usize,
    behaviour: Behaviour,
) {
    let mut dice = Dice(behaviour.seed | 1);
    let (mut seen, mut abandoned, mut disconnected) = (0, 0, false);
    let done = || ledger.lock().unwrap().finished >= total;
    while !done() {
        // A killed broker's address may not answer: try it briefly, then look again.
        let options = broker.borrow().clone();
        let connect = tokio::time::timeout(Duration::from_secs(2), Client::connect(&options));
        let Ok(Ok(client)) = connect.await else {
            continue;
        };
        let subscribe = SubscribeOptions {
            msg_timeout: Some(behaviour.msg_timeout),
        };
        let (t_name, c_name) = (topic(t), channel(c));
        let subscribed = tokio::time::timeout(
            Duration::from_secs(2),
            client.subscribe(&t_name, &c_name, subscribe),
        );
        let Ok(Ok(mut sub)) = subscribed.await else {
            continue;
        };
        if sub.rdy(behaviour.rdy).await.is_err() {
            continue;
        }
        loop {
            let event = tokio::time::timeout(Duration::from_millis(200), sub.next_event()).await;
            let d = match event {
                Ok(Some(SubEvent::Message(d))) => d,
                Ok(Some(SubEvent::Error(e))) if !e.fatal => continue,
                Ok(_) => break,
                Err(_) if done() => return,
                Err(_) => continue,
            };
            seen += 1;
            if !disconnected && behaviour.disconnect_after.is_some_and(|n| seen > n) {
                // Gone with this message and whatever else is in flight to it.
                disconnected = true;
                client.close().await;
                break;
            }
            let (key, seq) = parse(&d);
            if !ledger.lock().unwrap().begin(&key, seq) {
                ledger.lock().unwrap().finish(&key, seq);
                let _ = sub.fin(d.id).await;
                continue;
            }
            if abandoned < behaviour.abandon && dice.roll(10) == 0 {
                abandoned += 1;
                let mut ledger = ledger.lock().unwrap();
                ledger.abandoned += 1;
                ledger.end(&key);
                continue;
            }
            if dice.roll(100) < behaviour.req_percent {
                let delay = Duration::from_millis(dice.roll(50));
                {
                    let mut ledger = ledger.lock().unwrap();
                    ledger.requeued += 1;
                    ledger.end(&key);
                }
                if sub.req(d.id, delay).await.is_err() {
                    break;
                }
                continue;
            }
            ledger.lock().unwrap().finish(&key, seq);
            if sub.fin(d.id).await.is_err() {
                break;
            }
        }
    }
}

/// An NSQ consumer (tokio-nsq) of `t`/`c` that FINs or REQs, until `total` are finished.
async fn nsq_worker(
    addr: std::net::SocketAddr,
    t: &'static str,
    c: &'static str,
    ledger: Shared,
    total: usize,
    seed: u64,
) {
    let mut dice = Dice(seed | 1);
    let mut consumer = nsq_consumer(addr, t, c, NSQConfigShared::new());
    while ledger.lock().unwrap().finished < total {
        let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(200), consumer.consume_filtered()).await
        else {
            continue;
        };
        let body = String::from_utf8(m.body.clone()).unwrap();
        let (key, seq) = body.split_once(':').unwrap();
        let seq: u32 = seq.parse().unwrap();
        if !ledger.lock().unwrap().begin(key, seq) {
            ledger.lock().unwrap().finish(key, seq);
            m.finish().await;
            continue;
        }
        if dice.roll(100) < 5 {
            {
                let mut ledger = ledger.lock().unwrap();
                ledger.requeued += 1;
                ledger.end(key);
            }
            let delay = Duration::from_millis(dice.roll(50));
            m.requeue(NSQRequeueDelay::CustomDelay(delay)).await;
            continue;
        }
        ledger.lock().unwrap().finish(key, seq);
        m.finish().await;
    }
}

/// Runs a QUIC consumer of `t`/`c` per behaviour until `total` messages are finished.
async fn consume_all(
    broker: watch::Receiver<ClientOptions>,
    t: &'static str,
    c: &'static str,
    ledger: &Shared,
    total: usize,
    behaviours: &[Behaviour],
    what: &str,
) {
    let consumers: Vec<_> = behaviours
        .iter()
        .map(|&b| {
            let ledger = ledger.clone();
            tokio::spawn(quic_consumer(broker.clone(), t, c, ledger, total, b))
        })
        .collect();
    wait_finished(ledger, total, what).await;
    for consumer in consumers {
        consumer.await.unwrap();
    }
}

/// Waits until `total` messages are finished, failing early on a violation.
async fn wait_finished(ledger: &Shared, total: usize, what: &str) {
    let began = Instant::now();
    loop {
        {
            let ledger = ledger.lock().unwrap();
            assert!(
                ledger.violations.is_empty(),
                "{what}: order broken: {:?}",
                &ledger.violations[..ledger.violations.len().min(10)]
            );
            if ledger.finished >= total {
                return;
            }
            assert!(
                began.elapsed() < DEADLINE * 3,
                "{what}: {} of {total} finished; next per key {:?}",
                ledger.finished,
                ledger.next
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish_all(client: &Client, t: &str, messages: Vec<NewMessage>) {
    let producer = client.producer().await.unwrap();
    for chunk in messages.chunks(100) {
        producer
            .publish_batch(&topic(t), chunk.to_vec())
            .await
            .unwrap();
    }
}

fn ordered_by_key() -> ChannelSettings {
    ChannelSettings {
        ordering: Some(OrderBy::Key(HeaderName::new(KEY).unwrap())),
        ..ChannelSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_consumers_over_quic_and_nsq_finish_every_key_in_publish_order() {
    let broker = TestBroker::start().await;
    broker
        .broker()
        .create_channel(
            &Principal::internal(),
            &topic("ord"),
            &channel("c"),
            ordered_by_key(),
        )
        .unwrap();
    let (keys, per_key) = (100, 20);
    let total = keys * per_key;
    let ledger = Shared::default();
    let (_tx, rx) = watch::channel(broker.options.clone());
    let timing_out = Behaviour {
        msg_timeout: Duration::from_secs(2),
        abandon: 8,
        ..Behaviour::plain(7)
    };
    let leaving = Behaviour {
        disconnect_after: Some(300),
        ..Behaviour::plain(11)
    };
    let nsq = broker.nsq_tcp.unwrap();
    let nsq_consumers =
        [13, 17].map(|seed| tokio::spawn(nsq_worker(nsq, "ord", "c", ledger.clone(), total, seed)));
    // Published while they consume.
    let client = broker.client().await;
    let quic = [timing_out, leaving];
    let consuming = consume_all(rx, "ord", "c", &ledger, total, &quic, "4 consumers");
    let (_, ()) = tokio::join!(
        publish_all(&client, "ord", messages(keys, per_key)),
        consuming
    );
    for consumer in nsq_consumers {
        consumer.await.unwrap();
    }
    {
        let ledger = ledger.lock().unwrap();
        assert!(
            ledger.requeued > 0 && ledger.abandoned > 0,
            "REQs and timeouts happened"
        );
        assert!(ledger.next.values().all(|&n| n == per_key as u32));
    }
    let stats = channel_stats(&client, "ord", "c").await.unwrap();
    assert!(settled(&stats), "{stats:?}");
    assert!(stats.timed_out > 0, "{stats:?}");
    assert_eq!((stats.active_keys, stats.waiting_on_key), (0, 0));
    assert_eq!(stats.ordering, format!("key:{KEY}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_holds_across_a_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        "[[channel]]\ntopic = \"ord\"\nname = \"c\"\nordering = \"key\"\n",
    );
    let data = dir.path().join("data");
    let flags = ["--fsync", "always", "--rules", rules.to_str().unwrap()];
    let mut serve = ServeProcess::start(&data, &flags);
    let (keys, per_key) = (100, 20);
    let total = keys * per_key;
    let client = Client::connect(&serve.options()).await.unwrap();
    publish_all(&client, "ord", messages(keys, per_key)).await;
    let ledger = Shared::default();
    let (tx, rx) = watch::channel(serve.options());
    let consumers: Vec<_> = (0..4)
        .map(|i| {
            let behaviour = Behaviour {
                msg_timeout: Duration::from_secs(if i == 0 { 2 } else { 60 }),
                abandon: if i == 0 { 4 } else { 0 },
                ..Behaviour::plain(100 + i)
            };
            tokio::spawn(quic_consumer(
                rx.clone(),
                "ord",
                "c",
                ledger.clone(),
                total,
                behaviour,
            ))
        })
        .collect();
    wait_finished(&ledger, total / 2, "before the kill").await;
    serve.kill();
    ledger.lock().unwrap().crashed();
    let serve = ServeProcess::start(&data, &flags);
    tx.send(serve.options()).unwrap();
    wait_finished(&ledger, total, "after the restart").await;
    for consumer in consumers {
        consumer.await.unwrap();
    }
    let again = {
        let ledger = ledger.lock().unwrap();
        assert!(ledger.next.values().all(|&n| n == per_key as u32));
        ledger.again
    };
    let client = Client::connect(&serve.options()).await.unwrap();
    let stats = channel_stats(&client, "ord", "c").await.unwrap();
    assert!(settled(&stats), "{stats:?}");
    // Each message finished again was finished just before the kill.
    assert!(again as u64 <= stats.recovered, "{again} > {stats:?}",);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_ordered_as_a_whole_delivers_one_message_at_a_time() {
    let broker = TestBroker::start().await;
    let settings = ChannelSettings {
        ordering: Some(OrderBy::Channel),
        ..ChannelSettings::default()
    };
    let b = broker.broker();
    b.create_channel(
        &Principal::internal(),
        &topic("seq"),
        &channel("c"),
        settings,
    )
    .unwrap();
    let total = 200;
    let client = broker.client().await;
    // Every message under one key in the ledger: the channel is one sequence.
    let all: Vec<NewMessage> = (0..total)
        .map(|i| NewMessage::new(format!("all:{i}")).with_header(KEY, format!("k{}", i % 7)))
        .collect();
    publish_all(&client, "seq", all).await;
    let ledger = Shared::default();
    let (_tx, rx) = watch::channel(broker.options.clone());
    let behaviours = [1, 2].map(|seed| Behaviour {
        rdy: 5,
        ..Behaviour::plain(seed)
    });
    consume_all(
        rx,
        "seq",
        "c",
        &ledger,
        total,
        &behaviours,
        "channel ordering",
    )
    .await;
    let stats = channel_stats(&client, "seq", "c").await.unwrap();
    assert!(settled(&stats), "{stats:?}");
    assert_eq!(stats.ordering, "channel");
    let per_consumer: Vec<u64> = stats.consumers.iter().map(|c| c.delivered).collect();
    assert!(
        per_consumer.iter().all(|&n| n > 0),
        "both consumers took part: {per_consumer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_skips_messages_does_not_stall_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        r#"
        [[channel]]
        topic = "ord"
        name = "c"
        ordering = "key"
        [[channel.plugins]]
        kind = "filter"
        plugin = "$tag_filter"
        params = { expr = 'type == "keep"' }
        "#,
    );
    let serve = ServeProcess::start(
        &dir.path().join("data"),
        &["--rules", rules.to_str().unwrap()],
    );
    let client = Client::connect(&serve.options()).await.unwrap();
    // Per key: kept messages numbered in order, each followed by skipped ones.
    let (keys, kept) = (10, 20);
    let mut all = Vec::new();
    for seq in 0..kept {
        for key in 0..keys {
            all.push(keyed(key, seq).with_header("type", "keep"));
            for _ in 0..3 {
                let skipped = NewMessage::new(format!("k{key}:skipped"))
                    .with_header(KEY, format!("k{key}"))
                    .with_header("type", "skip");
                all.push(skipped);
            }
        }
    }
    publish_all(&client, "ord", all).await;
    let total = keys * kept;
    let ledger = Shared::default();
    let (_tx, rx) = watch::channel(serve.options());
    let behaviours = [40, 41].map(Behaviour::plain);
    consume_all(rx, "ord", "c", &ledger, total, &behaviours, "filtered").await;
    let stats = channel_stats(&client, "ord", "c").await.unwrap();
    assert!(settled(&stats), "{stats:?}");
    assert_eq!(stats.skipped, (keys * kept * 3) as u64);
    assert_eq!(stats.active_keys, 0);
}

/// `POST /channel/create?<query>` on the HTTP API at `addr`: the status and the body.
async fn create(addr: std::net::SocketAddr, query: &str) -> (u16, String) {
    let (status, _, body) = post(addr, &format!("/channel/create?{query}"), &[], "").await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_is_set_on_create_through_both_http_apis_and_the_quic_admin_op() {
    let broker = TestBroker::start().await;
    let (status, body) = create(
        broker.http,
        "topic=t&channel=a&ordering=key&order_key_header=user-id",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let nsq = broker.nsq_http.unwrap();
    assert_eq!(post(nsq, "/topic/create?topic=t", &[], "").await.0, 200);
    let (status, body) = create(nsq, "topic=t&channel=b&ordering=channel").await;
    assert_eq!(status, 200, "{body}");
    let client = broker.client().await;
    let admin = quiver::protocol::AdminRequest::Channel {
        op: quiver::protocol::AdminOp::Create,
        topic: topic("t"),
        channel: channel("q"),
        settings: ordered_by_key(),
    };
    client.admin(admin).await.unwrap();
    for (c, ordering) in [
        ("a", "key:user-id"),
        ("b", "channel"),
        ("q", "key:quiver-order-key"),
    ] {
        let stats = channel_stats(&client, "t", c).await.unwrap();
        assert_eq!(stats.ordering, ordering, "channel {c}");
    }
    // Bad values are refused with their reason, and create nothing.
    let (status, body) = create(broker.http, "topic=t&channel=x&ordering=keys").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ordering"), "{body}");
    let (status, body) = create(broker.http, "topic=t&channel=x&order_key_header=user").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = create(nsq, "topic=t&channel=x&ordering=nope").await;
    assert_eq!(
        (status, body.contains("INVALID_ARG_ORDERING")),
        (400, true),
        "{body}"
    );
    assert!(channel_stats(&client, "t", "x").await.is_none());
    // The user-id channel orders by that header.
    let producer = client.producer().await.unwrap();
    let by_user = |user: &str, n: usize| {
        NewMessage::new(format!("{user}:{n}")).with_header("user-id", user.to_owned())
    };
    let batch = vec![by_user("u1", 0), by_user("u1", 1), by_user("u2", 0)];
    producer.publish_batch(&topic("t"), batch).await.unwrap();
    let mut sub = crate::support::subscribe(&client, "t", "a", None).await;
    sub.rdy(10).await.unwrap();
    let first = crate::support::next_message(&mut sub, crate::support::SOON).await;
    let second = crate::support::next_message(&mut sub, crate::support::SOON).await;
    let bodies = [crate::support::body(&first), crate::support::body(&second)];
    assert_eq!(bodies, ["u1:0".to_string(), "u2:0".to_string()]);
    let stats = channel_stats(&client, "t", "a").await.unwrap();
    assert_eq!(
        (stats.active_keys, stats.waiting_on_key),
        (2, 1),
        "{stats:?}"
    );
    sub.fin(first.id).await.unwrap();
    let third = crate::support::next_message(&mut sub, crate::support::SOON).await;
    assert_eq!(crate::support::body(&third), "u1:1");
    // The nsqd API's /pub and /mpub give every message of a request the key of
    // X-Quiver-Order-Key; channel q orders by that header.
    let key = [("X-Quiver-Order-Key", "n1")];
    let (status, _, body) = post(nsq, "/pub?topic=t", &key, "n1:0").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = post(nsq, "/mpub?topic=t", &key, "n1:1\nn1:2\n").await;
    assert_eq!(status, 200, "{body}");
    let mut sub = crate::support::subscribe(&client, "t", "q", None).await;
    sub.rdy(10).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(crate::support::next_message(&mut sub, crate::support::SOON).await);
    }
    let mut bodies: Vec<String> = got.iter().map(crate::support::body).collect();
    bodies.sort();
    // The u* messages have no quiver-order-key header: not ordered on q.
    assert_eq!(bodies, ["n1:0", "u1:0", "u1:1", "u2:0"]);
    let stats = channel_stats(&client, "t", "q").await.unwrap();
    assert_eq!(
        (stats.active_keys, stats.waiting_on_key),
        (1, 2),
        "{stats:?}"
    );
    let n1 = got
        .iter()
        .find(|d| crate::support::body(d) == "n1:0")
        .unwrap();
    sub.fin(n1.id).await.unwrap();
    let next = crate::support::next_message(&mut sub, crate::support::SOON).await;
    assert_eq!(crate::support::body(&next), "n1:1");
}
