//! The nsqd HTTP API of a real `quiver serve`, driven by the real `curl` binary, with QUIC
//! consumers checking what was published.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use quiver::client::Client;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::process::ServeProcess;
use crate::support::*;

/// What `curl` got: the status and the body.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// nsqd's error reply: the status and `{"message": CODE}`.
    fn error(&self) -> (u16, String) {
        let message = self.json()["message"].as_str().unwrap().to_owned();
        (self.status, message)
    }
}

/// Runs `curl -X <method> [--data-binary @-] [extra...] http://<addr><path>`, with `body` on
/// stdin.
async fn curl(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    extra: &[&str],
) -> Reply {
    let mut command = tokio::process::Command::new("curl");
    command.args(["-sS", "--max-time", "30", "-o", "-", "-w", "%{http_code}"]);
    command.args(["-X", method]).args(extra);
    if body.is_some() {
        command.args(["--data-binary", "@-"]);
    }
    command.arg(format!("http://{addr}{path}"));
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the curl binary runs (install curl)");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(body) = body {
        stdin.write_all(body).await.unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "curl failed: {output:?}");
    let mut out = output.stdout;
    let status = String::from_utf8(out.split_off(out.len() - 3)).unwrap();
    Reply {
        status: status.parse().unwrap(),
        body: out,
    }
}

async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Reply {
    curl(addr, "POST", path, Some(body), &[]).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    curl(addr, "GET", path, None, &[]).await
}

/// `quiver serve` in a temp directory: the process, its nsqd HTTP address and the directory.
fn serve() -> (ServeProcess, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start(&dir.path().join("data"), &[]);
    let addr = serve.nsq_http.expect("the nsqd HTTP API is on");
    (serve, addr, dir)
}

/// nsqd's binary `/mpub` body.
fn binary_batch(bodies: &[&[u8]]) -> Vec<u8> {
    let mut out = (bodies.len() as u32).to_be_bytes().to_vec();
    for body in bodies {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

#[tokio::test]
async fn curl_publishes_reach_a_quic_consumer_in_order() {
    let (serve, addr, _dir) = serve();
    let pub_one = post(addr, "/pub?topic=orders", b"first").await;
    assert_eq!((pub_one.status, pub_one.text()), (200, "OK"));
    let lines = post(addr, "/mpub?topic=orders", b"second\nthird\n\nfourth").await;
    assert_eq!((lines.status, lines.text()), (200, "OK"));
    let batch = binary_batch(&[b"fifth\nwith a newline", b"\x00\xffsixth"]);
    let binary = post(addr, "/mpub?topic=orders&binary=true", &batch).await;
    assert_eq!((binary.status, binary.text()), (200, "OK"));

    let client = Client::connect(&serve.options()).await.unwrap();
    let mut sub = subscribe(&client, "orders", "c", None).await;
    sub.rdy(100).await.unwrap();
    let mut bodies = Vec::new();
    for _ in 0..6 {
        let delivery = next_message(&mut sub, SOON).await;
        assert!(delivery.headers.is_empty(), "NSQ messages carry no headers");
        assert_eq!(delivery.attempts, 1);
        bodies.push(delivery.body.to_vec());
        sub.fin(delivery.id).await.unwrap();
    }
    let expected: [&[u8]; 6] = [
        b"first",
        b"second",
        b"third",
        b"fourth",
        b"fifth\nwith a newline",
        b"\x00\xffsixth",
    ];
    assert_eq!(bodies, expected);

    // The counts show in nsqd's stats once the FINs are in; nothing else is left.
    let stats = poll_json(
        "the FINs",
        || get(addr, "/stats?format=json&topic=orders"),
        |s| s["topics"][0]["channels"][0]["clients"][0]["finish_count"] == 6,
    )
    .await;
    let channel = &stats["topics"][0]["channels"][0];
    assert_eq!(channel["channel_name"], "c");
    assert_eq!(channel["message_count"], 6);
    assert_eq!(
        (&channel["depth"], &channel["in_flight_count"]),
        (&0.into(), &0.into())
    );
    assert_eq!(channel["client_count"], 1);
    assert_eq!(channel["clients"][0]["finish_count"], 6);
}

#[tokio::test]
async fn deferred_publish_waits_before_delivery() {
    let (serve, addr, _dir) = serve();
    let sent = std::time::Instant::now();
    assert_eq!(
        post(addr, "/pub?topic=later&defer=800", b"x").await.status,
        200
    );
    let client = Client::connect(&serve.options()).await.unwrap();
    let mut sub = subscribe(&client, "later", "c", None).await;
    sub.rdy(1).await.unwrap();
    let delivery = next_message(&mut sub, SOON).await;
    assert_eq!(body(&delivery), "x");
    // Due times are wall-clock milliseconds: allow for the rounding.
    assert!(
        sent.elapsed() >= Duration::from_millis(790),
        "delivered {:?} after the publish",
        sent.elapsed()
    );
    let too_late = post(addr, "/pub?topic=later&defer=3600001", b"x").await;
    assert_eq!(too_late.error(), (400, "INVALID_DEFER".into()));
}

/// Fetches until `ready` holds for the JSON reply, and returns it; fails after [`DEADLINE`]
/// with the last reply.
async fn poll_json<F: std::future::Future<Output = Reply>>(
    what: &str,
    mut fetch: impl FnMut() -> F,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let began = std::time::Instant::now();
    loop {
        let value = fetch().await.json();
        if ready(&value) {
            return value;
        }
        assert!(
            began.elapsed() < DEADLINE,
            "no {what} within {DEADLINE:?}: {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A JSON type check.
type Is = fn(&Value) -> bool;

/// Asserts that `object` has exactly `keys`, each of the JSON type its check accepts.
fn assert_shape(object: &Value, keys: &[(&str, Is)]) {
    let map = object
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {object}"));
    let mut expected: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
    let mut actual: Vec<&str> = map.keys().map(String::as_str).collect();
    expected.sort_unstable();
    actual.sort_unstable();
    assert_eq!(actual, expected, "fields of {object}");
    for (key, is) in keys {
        assert!(is(&map[*key]), "{key} has the wrong type in {object}");
    }
}

#[tokio::test]
async fn stats_json_has_nsqd_1_3_shape() {
    let (serve, addr, _dir) = serve();
    assert_eq!(
        post(addr, "/mpub?topic=shape", b"a\nb\nc").await.status,
        200
    );
    let client = Client::connect(&serve.options()).await.unwrap();
    let sub = subscribe(&client, "shape", "c", None).await;
    sub.rdy(10).await.unwrap();

    // nsqd 1.0+ never wraps in {"status_code","data"}, whatever the Accept header says.
    let accept = ["-H", "Accept: application/vnd.nsq; version=1.0"];
    let stats = poll_json(
        "3 in flight",
        || curl(addr, "GET", "/stats?format=json", None, &accept),
        |s| s["topics"][0]["channels"][0]["in_flight_count"] == 3,
    )
    .await;
    let (string, number, boolean): (Is, Is, Is) =
        (Value::is_string, Value::is_u64, Value::is_boolean);
    let (array, object, signed): (Is, Is, Is) = (Value::is_array, Value::is_object, Value::is_i64);
    assert_shape(
        &stats,
        &[
            ("version", string),
            ("health", string),
            ("start_time", signed),
            ("topics", array),
            ("memory", object),
            ("producers", array),
        ],
    );
    assert_eq!(stats["health"], "OK");
    let memory: Vec<(&str, Is)> = [
        "heap_objects",
        "heap_idle_bytes",
        "heap_in_use_bytes",
        "heap_released_bytes",
        "gc_pause_usec_100",
        "gc_pause_usec_99",
        "gc_pause_usec_95",
        "next_gc_bytes",
        "gc_total_runs",
    ]
    .into_iter()
    .map(|k| (k, number))
    .collect();
    assert_shape(&stats["memory"], &memory);
    let latency = &[("count", number), ("percentiles", array)];
    let topic = &stats["topics"][0];
    assert_shape(
        topic,
        &[
            ("topic_name", string),
            ("channels", array),
            ("depth", number),
            ("backend_depth", number),
            ("message_count", number),
            ("message_bytes", number),
            ("paused", boolean),
            ("e2e_processing_latency", object),
        ],
    );
    assert_shape(&topic["e2e_processing_latency"], latency);
    assert_eq!(
        (&topic["topic_name"], &topic["message_count"]),
        (&"shape".into(), &3.into())
    );
    let channel = &topic["channels"][0];
    assert_shape(
        channel,
        &[
            ("channel_name", string),
            ("depth", number),
            ("backend_depth", number),
            ("in_flight_count", number),
            ("deferred_count", number),
            ("message_count", number),
            ("requeue_count", number),
            ("timeout_count", number),
            ("client_count", number),
            ("clients", array),
            ("paused", boolean),
            ("e2e_processing_latency", object),
        ],
    );
    assert_eq!(channel["in_flight_count"], 3);
    let consumer = &channel["clients"][0];
    assert_shape(
        consumer,
        &[
            ("client_id", string),
            ("hostname", string),
            ("version", string),
            ("remote_address", string),
            ("state", number),
            ("ready_count", number),
            ("in_flight_count", number),
            ("message_count", number),
            ("finish_count", number),
            ("requeue_count", number),
            ("connect_ts", signed),
            ("sample_rate", signed),
            ("deflate", boolean),
            ("snappy", boolean),
            ("user_agent", string),
            ("tls", boolean),
            ("tls_cipher_suite", string),
            ("tls_version", string),
            ("tls_negotiated_protocol", string),
            ("tls_negotiated_protocol_is_mutual", boolean),
            // nsqd's AUTH fields: `auth_identity` only when authenticated.
            ("authed", boolean),
        ],
    );
    assert_eq!(
        (&consumer["ready_count"], &consumer["message_count"]),
        (&10.into(), &3.into())
    );

    // Filters and flags.
    let none = get(addr, "/stats?format=json&topic=absent").await.json();
    assert_eq!(none["topics"], Value::Array(vec![]));
    let lean = get(
        addr,
        "/stats?format=json&include_clients=false&include_mem=false",
    )
    .await;
    let lean = lean.json();
    assert!(lean.get("memory").is_none());
    assert_eq!(lean["topics"][0]["channels"][0]["client_count"], 1);
    assert_eq!(
        lean["topics"][0]["channels"][0]["clients"],
        Value::Array(vec![])
    );
    let text = get(addr, "/stats").await;
    assert!(text.text().starts_with("nsqd v1.3.0"), "{}", text.text());
    assert!(
        text.text()
            .contains("\nTopics:\n   [shape          ] depth: 0"),
        "{}",
        text.text()
    );
}

#[tokio::test]
async fn ping_and_info_answer_as_nsqd() {
    let (serve, addr, _dir) = serve();
    let ping = get(addr, "/ping").await;
    assert_eq!((ping.status, ping.text()), (200, "OK"));
    let info = get(addr, "/info").await.json();
    assert_eq!(info["http_port"], addr.port());
    assert_eq!(info["tcp_port"], serve.nsq_tcp.unwrap().port());
    for key in ["version", "broadcast_address", "hostname"] {
        assert!(info[key].is_string(), "{key} in {info}");
    }
    for key in [
        "start_time",
        "max_heartbeat_interval",
        "max_output_buffer_size",
    ] {
        assert!(info[key].is_u64(), "{key} in {info}");
    }
}

#[tokio::test]
async fn topic_and_channel_administration_over_curl() {
    let (serve, addr, _dir) = serve();
    let ok = |reply: Reply| assert_eq!((reply.status, reply.text()), (200, ""), "{reply:?}");
    let missing = post(addr, "/channel/create?topic=admin&channel=c", b"").await;
    assert_eq!(missing.error(), (404, "TOPIC_NOT_FOUND".into()));
    ok(post(addr, "/topic/create?topic=admin", b"").await);
    ok(post(addr, "/channel/create?topic=admin&channel=c", b"").await);
    ok(post(addr, "/channel/pause?topic=admin&channel=c", b"").await);

    // A paused channel keeps what is published to it.
    assert_eq!(post(addr, "/pub?topic=admin", b"held").await.status, 200);
    let client = Client::connect(&serve.options()).await.unwrap();
    let mut sub = subscribe(&client, "admin", "c", None).await;
    sub.rdy(1).await.unwrap();
    let stats = get(addr, "/stats?format=json&topic=admin&channel=c")
        .await
        .json();
    let held = &stats["topics"][0]["channels"][0];
    assert_eq!(held["paused"], true);
    assert_eq!(
        (&held["depth"], &held["in_flight_count"]),
        (&1.into(), &0.into())
    );
    ok(post(addr, "/channel/unpause?topic=admin&channel=c", b"").await);
    let delivery = next_message(&mut sub, SOON).await;
    assert_eq!(body(&delivery), "held");
    sub.fin(delivery.id).await.unwrap();

    ok(post(addr, "/topic/pause?topic=admin", b"").await);
    let stats = get(addr, "/stats?format=json&topic=admin").await.json();
    assert_eq!(stats["topics"][0]["paused"], true);
    ok(post(addr, "/topic/unpause?topic=admin", b"").await);
    ok(post(addr, "/channel/empty?topic=admin&channel=c", b"").await);
    ok(post(addr, "/topic/empty?topic=admin", b"").await);
    ok(post(addr, "/channel/create?topic=admin&channel=spare", b"").await);
    ok(post(addr, "/channel/delete?topic=admin&channel=spare", b"").await);
    let gone = post(addr, "/channel/delete?topic=admin&channel=spare", b"").await;
    assert_eq!(gone.error(), (404, "CHANNEL_NOT_FOUND".into()));
    drop(sub);
    ok(post(addr, "/topic/delete?topic=admin", b"").await);
    let stats = get(addr, "/stats?format=json&topic=admin").await.json();
    assert_eq!(stats["topics"], Value::Array(vec![]));
    let again = post(addr, "/topic/delete?topic=admin", b"").await;
    assert_eq!(again.error(), (404, "TOPIC_NOT_FOUND".into()));
}

#[tokio::test]
async fn bad_requests_get_nsqd_errors() {
    let (_serve, addr, _dir) = serve();
    // Method, path, body, and nsqd's answer.
    type Case = (&'static str, &'static str, Vec<u8>, (u16, &'static str));
    let cases: Vec<Case> = vec![
        ("POST", "/pub?topic=t", vec![], (400, "MSG_EMPTY")),
        ("POST", "/pub", b"x".to_vec(), (400, "MISSING_ARG_TOPIC")),
        (
            "POST",
            "/pub?topic=a%2Fb",
            b"x".to_vec(),
            (400, "INVALID_TOPIC"),
        ),
        (
            "POST",
            "/pub?topic=t&defer=soon",
            b"x".to_vec(),
            (400, "INVALID_DEFER"),
        ),
        (
            "POST",
            "/pub?topic=t",
            vec![b'x'; (1 << 20) + 1],
            (413, "MSG_TOO_BIG"),
        ),
        (
            "POST",
            "/mpub?topic=t",
            vec![b'x'; (5 << 20) + 1],
            (413, "BODY_TOO_BIG"),
        ),
        (
            "POST",
            "/mpub?topic=t&binary=true",
            vec![0, 0],
            (413, "BAD_BODY"),
        ),
        (
            "POST",
            "/mpub?topic=t&binary=true",
            [&1u32.to_be_bytes()[..], &9u32.to_be_bytes(), b"short"].concat(),
            (413, "BAD_MESSAGE"),
        ),
        (
            "POST",
            "/channel/create?topic=t",
            vec![],
            (400, "MISSING_ARG_CHANNEL"),
        ),
        (
            "POST",
            "/channel/empty?topic=t&channel=no%20way",
            vec![],
            (400, "INVALID_ARG_CHANNEL"),
        ),
        (
            "POST",
            "/topic/empty?topic=nope",
            vec![],
            (404, "TOPIC_NOT_FOUND"),
        ),
        ("GET", "/pub?topic=t", vec![], (405, "METHOD_NOT_ALLOWED")),
        ("POST", "/put?topic=t", b"x".to_vec(), (404, "NOT_FOUND")),
    ];
    for (method, path, body, (status, code)) in cases {
        let body = (method == "POST").then_some(&body[..]);
        let reply = curl(addr, method, path, body, &[]).await;
        assert_eq!(reply.error(), (status, code.to_owned()), "{method} {path}");
    }
    // Nothing above was published.
    let stats = get(addr, "/stats?format=json&topic=t").await.json();
    assert_eq!(stats["topics"], Value::Array(vec![]));
}
