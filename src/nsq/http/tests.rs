//! End-to-end tests of the nsqd HTTP API: a real broker behind the real router on a loopback
//! socket, spoken to in hand-written HTTP/1.1.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{router, Node};
use crate::broker::{Broker, BrokerConfig};
use crate::config::NsqConfig;
use crate::message::{ChannelName, TopicName, MAX_BODY_LEN};
use crate::storage::MemoryStorage;

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// nsqd's error: status and `message`.
    fn error(&self) -> (u16, String) {
        let message = self.json()["message"].as_str().unwrap().to_string();
        (self.status, message)
    }
}

async fn start() -> (Broker, SocketAddr) {
    start_with(NsqConfig::default()).await
}

async fn start_with(limits: NsqConfig) -> (Broker, SocketAddr) {
    let broker = Broker::new(BrokerConfig::default(), Arc::new(MemoryStorage));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tcp = SocketAddr::from(([127, 0, 0, 1], 4150));
    let app = router(
        broker.clone(),
        Node::new(Some(addr), Some(tcp), limits),
        Arc::new(crate::auth::Authenticator::disabled()),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (broker, addr)
}

async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let _ = stream.write_all(&request).await;
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(buf[..split].to_vec())
        .unwrap()
        .to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Response {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    }
}

async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Response {
    request(addr, "POST", path, body).await
}

async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, b"").await
}

#[tokio::test]
async fn ping_is_plain_ok() {
    let (_broker, addr) = start().await;
    let response = get(addr, "/ping").await;
    assert_eq!((response.status, response.text()), (200, "OK"));
    assert!(
        !response.head.contains("x-nsq-content-type"),
        "{response:?}"
    );
}

#[tokio::test]
async fn info_reports_ports_and_version() {
    let (_broker, addr) = start().await;
    let response = get(addr, "/info").await;
    assert_eq!(response.status, 200);
    assert!(response
        .head
        .contains("x-nsq-content-type: nsq; version=1.0"));
    assert!(response.head.contains("content-type: application/json"));
    let info = response.json();
    assert_eq!(info["http_port"], addr.port());
    assert_eq!(info["tcp_port"], 4150);
    assert!(info["version"]
        .as_str()
        .unwrap()
        .starts_with("1.3.0+quiver."));
    assert_eq!(info["max_heartbeat_interval"], 60_000_000_000u64);
    assert!(info["start_time"].as_i64().unwrap() > 1_600_000_000);
}

#[tokio::test]
async fn published_messages_reach_a_consumer_and_stats() {
    let (broker, addr) = start().await;
    let response = post(addr, "/pub?topic=t", b"one").await;
    assert_eq!((response.status, response.text()), (200, "OK"));
    assert_eq!(
        post(addr, "/mpub?topic=t", b"two\nthree\n").await.status,
        200
    );
    let mut batch = 1i32.to_be_bytes().to_vec();
    batch.extend_from_slice(&4i32.to_be_bytes());
    batch.extend_from_slice(b"four");
    assert_eq!(
        post(addr, "/mpub?topic=t&binary=true", &batch).await.status,
        200
    );

    let (topic, channel) = (TopicName::new("t").unwrap(), ChannelName::new("c").unwrap());
    let sub = broker
        .subscribe(
            &std::sync::Arc::new(crate::broker::Principal::internal()),
            &topic,
            &channel,
            None,
        )
        .unwrap();
    sub.set_rdy(10).unwrap();
    let mut taken = Vec::new();
    assert_eq!(sub.take(10, &mut taken), 4);
    let bodies: Vec<&[u8]> = taken.iter().map(|t| &t.message.body[..]).collect();
    assert_eq!(bodies, [&b"one"[..], b"two", b"three", b"four"]);
    assert!(taken.iter().all(|t| t.message.headers.is_empty()));

    let stats = get(addr, "/stats?format=json").await.json();
    let t = &stats["topics"][0];
    assert_eq!(
        (t["topic_name"].as_str(), t["message_count"].as_u64()),
        (Some("t"), Some(4))
    );
    let c = &t["channels"][0];
    assert_eq!(
        (c["in_flight_count"].as_u64(), c["client_count"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(c["clients"][0]["in_flight_count"], 4);
}

#[tokio::test]
async fn publish_errors_are_nsqd_codes_in_nsqd_order() {
    let (_broker, addr) = start().await;
    let cases: [(&str, &[u8], (u16, &str)); 9] = [
        ("/pub", b"", (400, "MSG_EMPTY")),
        ("/pub", b"x", (400, "MISSING_ARG_TOPIC")),
        ("/pub?topic=a%20b", b"x", (400, "INVALID_TOPIC")),
        ("/pub?topic=t&defer=-1", b"x", (400, "INVALID_DEFER")),
        ("/pub?topic=t&defer=3600001", b"x", (400, "INVALID_DEFER")),
        ("/mpub", b"x", (400, "MISSING_ARG_TOPIC")),
        ("/mpub?topic=t&binary=1", b"\0\0\0\0", (413, "BAD_BODY")),
        (
            "/mpub?topic=t&binary=yes",
            b"\0\0\0\x01\0\0\0\x09short",
            (413, "BAD_MESSAGE"),
        ),
        ("/topic/create?topic=", b"", (400, "INVALID_TOPIC")),
    ];
    for (path, body, expected) in cases {
        let response = post(addr, path, body).await;
        assert_eq!(
            response.error(),
            (expected.0, expected.1.to_string()),
            "{path}"
        );
        assert!(response.head.contains("x-nsq-content-type"), "{path}");
    }
    let big = vec![b'x'; MAX_BODY_LEN + 1];
    assert_eq!(
        post(addr, "/pub", &big).await.error(),
        (413, "MSG_TOO_BIG".into())
    );
    let mut lines = vec![b'x'; MAX_BODY_LEN + 1];
    lines.extend_from_slice(b"\nok");
    let response = post(addr, "/mpub?topic=t", &lines).await;
    assert_eq!(response.error(), (413, "MSG_TOO_BIG".into()));
}

#[tokio::test]
async fn the_configured_limits_apply_and_info_reports_them() {
    let limits = NsqConfig {
        max_msg_size: 8,
        max_body_size: 20,
        max_deflate_level: 3,
        ..NsqConfig::default()
    };
    let (_broker, addr) = start_with(limits).await;
    assert_eq!(post(addr, "/pub?topic=t", b"12345678").await.status, 200);
    assert_eq!(
        post(addr, "/pub?topic=t", b"123456789").await.error(),
        (413, "MSG_TOO_BIG".into())
    );
    let response = post(addr, "/mpub?topic=t", b"1234\n1234\n1234\n1234\n1234").await;
    assert_eq!(response.error(), (413, "BODY_TOO_BIG".into()));
    let info = request(addr, "GET", "/info", b"").await.json();
    assert_eq!(info["max_deflate_level"], 3);
}

#[tokio::test]
async fn text_mpub_without_messages_is_ok() {
    let (broker, addr) = start().await;
    let response = post(addr, "/mpub?topic=t&binary=false", b"\n\n").await;
    assert_eq!((response.status, response.text()), (200, "OK"));
    assert!(
        broker
            .stats(&crate::broker::Principal::internal(), None)
            .unwrap()
            .topics
            .is_empty(),
        "nothing was published"
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_are_nsqd_errors() {
    let (_broker, addr) = start().await;
    assert_eq!(get(addr, "/nope").await.error(), (404, "NOT_FOUND".into()));
    assert_eq!(
        get(addr, "/pub?topic=t").await.error(),
        (405, "METHOD_NOT_ALLOWED".into())
    );
    assert_eq!(
        post(addr, "/stats", b"").await.error(),
        (405, "METHOD_NOT_ALLOWED".into())
    );
    // nsqd 1.0 removed the pre-1.0 aliases.
    assert_eq!(
        post(addr, "/put?topic=t", b"x").await.error(),
        (404, "NOT_FOUND".into())
    );
}

#[tokio::test]
async fn topic_and_channel_administration() {
    let (broker, addr) = start().await;
    let ok = |r: Response| {
        assert_eq!((r.status, r.body.len()), (200, 0), "{r:?}");
        assert!(r.head.contains("x-nsq-content-type"));
    };
    let missing = post(addr, "/channel/create?topic=t&channel=c", b"").await;
    assert_eq!(missing.error(), (404, "TOPIC_NOT_FOUND".into()));
    ok(post(addr, "/topic/create?topic=t", b"").await);
    ok(post(addr, "/channel/create?topic=t&channel=c", b"").await);
    ok(post(addr, "/topic/pause?topic=t", b"").await);
    ok(post(addr, "/channel/pause?topic=t&channel=c", b"").await);
    let stats = broker
        .stats(&crate::broker::Principal::internal(), None)
        .unwrap();
    let topic = stats.topic("t").unwrap();
    assert!(topic.paused && topic.channel("c").unwrap().paused);
    ok(post(addr, "/topic/unpause?topic=t", b"").await);
    ok(post(addr, "/channel/unpause?topic=t&channel=c", b"").await);
    ok(post(addr, "/channel/empty?topic=t&channel=c", b"").await);
    ok(post(addr, "/topic/empty?topic=t", b"").await);
    let gone = post(addr, "/channel/delete?topic=t&channel=x", b"").await;
    assert_eq!(gone.error(), (404, "CHANNEL_NOT_FOUND".into()));
    let bad = post(addr, "/channel/delete?topic=t&channel=a/b", b"").await;
    assert_eq!(bad.error(), (400, "INVALID_ARG_CHANNEL".into()));
    ok(post(addr, "/channel/delete?topic=t&channel=c", b"").await);
    ok(post(addr, "/topic/delete?topic=t", b"").await);
    let again = post(addr, "/topic/delete?topic=t", b"").await;
    assert_eq!(again.error(), (404, "TOPIC_NOT_FOUND".into()));
    let invalid = post(addr, "/topic/pause?topic=a%20b", b"").await;
    assert_eq!(invalid.error(), (404, "TOPIC_NOT_FOUND".into()));
    let empty = post(addr, "/topic/empty?topic=t", b"").await;
    assert_eq!(empty.error(), (404, "TOPIC_NOT_FOUND".into()));
}

#[tokio::test]
async fn stats_filters_and_formats() {
    let (_broker, addr) = start().await;
    assert_eq!(post(addr, "/pub?topic=a", b"x").await.status, 200);
    assert_eq!(
        post(addr, "/channel/create?topic=a&channel=c", b"")
            .await
            .status,
        200
    );
    assert_eq!(post(addr, "/pub?topic=b", b"x").await.status, 200);

    let unknown = get(addr, "/stats?format=json&topic=nope").await;
    assert_eq!(unknown.status, 200);
    assert_eq!(unknown.json()["topics"], serde_json::json!([]));
    let only_c = get(addr, "/stats?format=json&channel=c&include_mem=false")
        .await
        .json();
    assert_eq!(only_c["topics"].as_array().unwrap().len(), 1);
    assert!(only_c.get("memory").is_none());
    let all = get(addr, "/stats?format=json").await.json();
    assert!(all["memory"]["heap_in_use_bytes"].is_u64());
    assert_eq!(all["health"], "OK");

    let text = get(addr, "/stats").await;
    assert_eq!(text.status, 200);
    assert!(text.head.contains("content-type: text/plain"), "{text:?}");
    assert!(
        text.text().starts_with("nsqd v1.3.0+quiver."),
        "{}",
        text.text()
    );
    assert!(
        text.text().contains("\n   [a              ] depth: 0"),
        "{}",
        text.text()
    );
}
