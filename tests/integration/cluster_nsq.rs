//! NSQ and HTTP clients on a cluster of three real `quiver serve` processes: publishes sent
//! to a node that does not lead the topic (NSQ TCP PUB, MPUB and DPUB, the nsqd HTTP API's
//! and Quiver's own `/pub` and `/mpub`) are forwarded to the leader and stored there once;
//! a SUB on that node is refused with an error naming the leader; and while a killed
//! leader is replaced, a publish on a follower is answered with a retriable error in
//! bounded time, never left hanging.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quiver::client::{Client, SubEvent, SubscribeOptions};
use quiver::message::TopicName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::{agreed_leader, init, start, status};
use crate::process::ServeProcess;
use crate::support::{body, channel, topic, DEADLINE, SOON};

const RESPONSE: i32 = 0;
const ERROR: i32 = 1;

/// Three nodes of a new cluster in `dir`, with an agreed meta leader.
fn three_nodes(dir: &std::path::Path) -> Vec<ServeProcess> {
    let nodes: Vec<ServeProcess> = init(dir, 3).iter().map(|c| start(c)).collect();
    let live: Vec<&ServeProcess> = nodes.iter().collect();
    tokio::task::block_in_place(|| agreed_leader(&live, None));
    nodes
}

/// Creates `t` and returns the index of the node leading it, once every node knows where
/// the leader serves clients.
async fn leader_of(nodes: &[&ServeProcess], t: &TopicName) -> usize {
    let began = Instant::now();
    let mut leader = None;
    for (i, node) in nodes.iter().enumerate() {
        loop {
            let client = Client::connect(&node.options()).await.expect("connect");
            let located = client.locate(t, None).await;
            client.close().await;
            match located {
                Ok(None) => {
                    leader = Some(i);
                    break;
                }
                Ok(Some(addr)) => {
                    let at = nodes.iter().position(|n| n.quic == addr).expect("a node");
                    leader = Some(at);
                    break;
                }
                Err(e) => assert!(
                    began.elapsed() < DEADLINE,
                    "node {i} does not know where {t} is served: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    leader.expect("three nodes")
}

/// A hand-driven NSQ TCP connection.
struct Nsq {
    stream: TcpStream,
}

impl Nsq {
    async fn connect(addr: SocketAddr) -> Nsq {
        let mut stream = TcpStream::connect(addr).await.expect("NSQ TCP connects");
        stream.write_all(b"  V2").await.expect("magic");
        Nsq { stream }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("NSQ write");
    }

    /// The next frame, skipping heartbeats; None if the connection ended.
    async fn frame(&mut self, within: Duration) -> Option<(i32, String)> {
        loop {
            let read = async {
                let size = self.stream.read_i32().await.ok()?;
                let kind = self.stream.read_i32().await.ok()?;
                let mut data = vec![0; size as usize - 4];
                self.stream.read_exact(&mut data).await.ok()?;
                Some((kind, String::from_utf8_lossy(&data).into_owned()))
            };
            let frame = tokio::time::timeout(within, read)
                .await
                .expect("an NSQ frame in time")?;
            if frame != (RESPONSE, "_heartbeat_".to_string()) {
                return Some(frame);
            }
        }
    }
}

fn command(line: &str, body: &[u8]) -> Vec<u8> {
    let mut out = line.as_bytes().to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn mpub(t: &TopicName, bodies: &[String]) -> Vec<u8> {
    let mut batch = (bodies.len() as u32).to_be_bytes().to_vec();
    for b in bodies {
        batch.extend_from_slice(&(b.len() as u32).to_be_bytes());
        batch.extend_from_slice(b.as_bytes());
    }
    command(&format!("MPUB {t}\n"), &batch)
}

/// An HTTP response: its status, headers (lowercased names) and body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `POST path` to `addr` with extra request headers; the whole response.
async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut stream = TcpStream::connect(addr).await.expect("HTTP connects");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(SOON, stream.read_to_end(&mut raw))
        .await
        .expect("an HTTP answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Consumes `count` messages of `t` from the node at `node`, FINning each; their bodies.
async fn consume(node: &ServeProcess, t: &TopicName, count: usize) -> Vec<String> {
    let client = Client::connect(&node.options()).await.expect("connect");
    let mut sub = client
        .subscribe(t, &channel("c"), SubscribeOptions::default())
        .await
        .expect("subscribe on the leader");
    sub.rdy(100).await.expect("rdy");
    let mut seen = Vec::new();
    while seen.len() < count {
        let event = tokio::time::timeout(DEADLINE, sub.next_event())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} delivered: {seen:?}", seen.len()));
        match event {
            Some(SubEvent::Message(d)) => {
                seen.push(body(&d));
                sub.fin(d.id).await.expect("fin");
            }
            other => panic!("subscription ended: {other:?}"),
        }
    }
    client.close().await;
    seen
}

/// How many messages the topic's log holds on `node`, from `/cluster/status`.
fn stored(node: &ServeProcess, t: &str) -> Option<u64> {
    status(node)["topics"]
        .as_array()
        .and_then(|topics| topics.iter().find(|p| p["topic"] == t))
        .and_then(|p| p["group"]["end"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsq_and_http_publishes_on_a_follower_are_stored_once_by_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = three_nodes(dir.path());
    let t = topic("forwarded");
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>(), &t).await;
    let follower = &nodes[(leader + 1) % 3];
    let mut expected = Vec::new();

    // NSQ TCP, pipelined: 20 PUBs, an MPUB of 10, a DPUB; every one answered OK in order.
    let mut nsq = Nsq::connect(follower.nsq_tcp.expect("NSQ TCP")).await;
    let mut pipelined = Vec::new();
    for i in 0..20 {
        let text = format!("tcp-pub-{i}");
        pipelined.extend(command(&format!("PUB {t}\n"), text.as_bytes()));
        expected.push(text);
    }
    let batch: Vec<String> = (0..10).map(|i| format!("tcp-mpub-{i}")).collect();
    pipelined.extend(mpub(&t, &batch));
    expected.extend(batch);
    pipelined.extend(command(&format!("DPUB {t} 10\n"), b"tcp-dpub"));
    expected.push("tcp-dpub".into());
    nsq.send(&pipelined).await;
    for i in 0..22 {
        let frame = nsq.frame(SOON).await;
        assert_eq!(frame, Some((RESPONSE, "OK".into())), "answer {i}");
    }

    // The nsqd HTTP API.
    let nsq_http = follower.nsq_http.expect("NSQ HTTP");
    let answer = post(nsq_http, &format!("/pub?topic={t}"), &[], "nsqd-pub").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "OK"));
    let lines = "nsqd-mpub-0\nnsqd-mpub-1\nnsqd-mpub-2\n";
    let answer = post(nsq_http, &format!("/mpub?topic={t}"), &[], lines).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "OK"));
    expected.extend(["nsqd-pub", "nsqd-mpub-0", "nsqd-mpub-1", "nsqd-mpub-2"].map(String::from));

    // Quiver's HTTP API, with a message id: the same publish sent twice is stored once.
    let id = [("X-Quiver-Msg-Id", "quiver-pub")];
    let path = format!("/pub?topic={t}");
    let answer = post(follower.http, &path, &id, "quiver-pub").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-quiver-duplicates"), None);
    let again = post(follower.http, &path, &id, "quiver-pub").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("x-quiver-duplicates"), Some("1"));
    let lines = "quiver-mpub-0\nquiver-mpub-1";
    let answer = post(follower.http, &format!("/mpub?topic={t}"), &[], lines).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    expected.extend(["quiver-pub", "quiver-mpub-0", "quiver-mpub-1"].map(String::from));

    // The leader holds exactly these, and delivers each of them.
    let held = tokio::task::block_in_place(|| stored(&nodes[leader], "forwarded"));
    assert_eq!(
        held,
        Some(expected.len() as u64),
        "messages stored on the leader"
    );
    let seen = consume(&nodes[leader], &t, expected.len()).await;
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "a message was delivered twice");
    assert_eq!(distinct, expected.iter().collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nsq_sub_on_a_follower_is_refused_with_the_leaders_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = three_nodes(dir.path());
    let t = topic("subscribed");
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>(), &t).await;
    let follower = &nodes[(leader + 1) % 3];
    let mut nsq = Nsq::connect(follower.nsq_tcp.expect("NSQ TCP")).await;
    nsq.send(format!("SUB {t} c\n").as_bytes()).await;
    let (kind, text) = nsq.frame(SOON).await.expect("an answer to SUB");
    assert_eq!(kind, ERROR, "{text}");
    let leader_nsq = nodes[leader].nsq_tcp.expect("NSQ TCP");
    assert_eq!(
        text,
        format!(
            "E_SUB_FAILED SUB failed topic {t} is served by its leader, node {} at {leader_nsq} (NSQ TCP); subscribe there",
            leader + 1
        )
    );
    assert_eq!(nsq.frame(SOON).await, None, "the connection closes");
    // There, the SUB is taken.
    let mut there = Nsq::connect(leader_nsq).await;
    there.send(format!("SUB {t} c\n").as_bytes()).await;
    assert_eq!(there.frame(SOON).await, Some((RESPONSE, "OK".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_a_follower_of_a_dead_leader_gets_a_retriable_error_in_bounded_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = three_nodes(dir.path());
    let t = topic("orphaned");
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>(), &t).await;
    let follower = (leader + 1) % 3;
    nodes[leader].kill();
    // Until a new leader takes the forwards, each attempt is refused as retriable (503
    // UNAVAILABLE on the nsqd API), each within the forward's and the election's bounds.
    let nsq_http = nodes[follower].nsq_http.expect("NSQ HTTP");
    let id = [("X-Quiver-Msg-Id", "after-the-kill")];
    let began = Instant::now();
    let mut refusals = 0;
    loop {
        let asked = Instant::now();
        let answer = post(nsq_http, &format!("/pub?topic={t}"), &id, "after-the-kill").await;
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "an answer took {:?}",
            asked.elapsed()
        );
        if answer.status == 200 {
            break;
        }
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (503, r#"{"message":"UNAVAILABLE"}"#)
        );
        refusals += 1;
        assert!(began.elapsed() < DEADLINE, "no new leader took the publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An NSQ TCP publish there now goes through too.
    let mut nsq = Nsq::connect(nodes[follower].nsq_tcp.expect("NSQ TCP")).await;
    nsq.send(&command(&format!("PUB {t}\n"), b"tcp-after-the-kill"))
        .await;
    assert_eq!(nsq.frame(SOON).await, Some((RESPONSE, "OK".into())));
    println!(
        "{refusals} retriable refusals, then the publish was taken {:?} after the kill",
        began.elapsed()
    );
    let live: Vec<&ServeProcess> = (0..3).filter(|&i| i != leader).map(|i| &nodes[i]).collect();
    let new_leader = leader_of(&live, &t).await;
    let seen = consume(live[new_leader], &t, 2).await;
    let seen: HashSet<String> = seen.into_iter().collect();
    assert_eq!(
        seen,
        HashSet::from([
            "after-the-kill".to_string(),
            "tcp-after-the-kill".to_string()
        ])
    );
}
