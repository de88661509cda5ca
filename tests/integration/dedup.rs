//! The publish dedup window through real clients: QUIC publishes retried with the same id,
//! the window's expiry, a SIGKILL'd `quiver serve`, MPUBs that mix new and duplicate ids,
//! `X-Quiver-Msg-Id` on both HTTP APIs, and ids that are refused.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quiver::client::{Client, ClientError, MSG_ID_HEADER};
use quiver::message::NewMessage;
use quiver::protocol::ErrorCode;

use crate::process::ServeProcess;
use crate::support::{drain, topic, TestBroker, DEADLINE};

fn with_id(id: &str, body: &str) -> NewMessage {
    NewMessage::new(body.to_owned()).with_msg_id(id)
}

/// How many times each id reached a consumer.
fn ids_received(deliveries: &[quiver::message::Delivery]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for d in deliveries {
        let id = d.headers.get(MSG_ID_HEADER).expect("the id is a header");
        *seen.entry(id.to_owned()).or_default() += 1;
    }
    seen
}

async fn message_count(client: &Client, t: &str) -> u64 {
    let stats = client.stats(Some(&topic(t))).await.unwrap();
    stats.topic(t).map_or(0, |t| t.message_count)
}

#[tokio::test]
async fn publishes_retried_with_the_same_id_are_stored_once() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let producer = client.producer().await.unwrap();
    let t = topic("retried");
    let mut retried = 0;
    for i in 0..300 {
        let id = format!("order-{i}");
        let receipt = producer.publish(&t, with_id(&id, "body")).await.unwrap();
        assert!(!receipt.is_duplicate(0), "{id} is new");
        // One publish in ten is retried, as after a lost confirmation.
        if i % 10 == 3 {
            let again = producer.publish(&t, with_id(&id, "body")).await.unwrap();
            assert!(again.is_duplicate(0), "{id} was published before");
            retried += 1;
        }
    }
    assert_eq!(message_count(&client, "retried").await, 300);
    let stats = client.stats(Some(&t)).await.unwrap();
    assert_eq!(stats.topics[0].duplicates, retried);
    assert_eq!(stats.topics[0].dedup_ids, 300);
    let received = drain(&client, "retried", "c").await;
    let seen = ids_received(&received);
    assert_eq!(received.len(), 300);
    assert_eq!(seen.len(), 300);
    assert!(seen.values().all(|&n| n == 1));
}

#[tokio::test]
async fn an_id_is_stored_again_once_the_window_has_passed() {
    let window = Duration::from_secs(1);
    let broker = TestBroker::start_with(|c| c.broker.dedup_window = window).await;
    let client = broker.client().await;
    let producer = client.producer().await.unwrap();
    let t = topic("expiring");
    let began = Instant::now();
    producer.publish(&t, with_id("x", "first")).await.unwrap();
    let again = producer.publish(&t, with_id("x", "again")).await.unwrap();
    // On a loaded machine the second publish may come after the window; within it, it must
    // be a duplicate.
    if began.elapsed() < window {
        assert!(again.is_duplicate(0), "within the window");
    }
    // Republish until the broker stores it again: that must not happen before the window
    // has passed, and must happen soon after.
    loop {
        let sent = Instant::now();
        let receipt = producer.publish(&t, with_id("x", "later")).await.unwrap();
        if !receipt.is_duplicate(0) {
            assert!(
                sent.duration_since(began) >= window,
                "stored again too soon"
            );
            break;
        }
        assert!(began.elapsed() < DEADLINE, "the id never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = if again.is_duplicate(0) { 2 } else { 3 };
    assert_eq!(message_count(&client, "expiring").await, stored);
}

#[tokio::test]
async fn the_window_survives_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = topic("survivor");
    let batch = |from: usize| -> Vec<NewMessage> {
        (from..from + 10)
            .map(|i| with_id(&format!("k{i}"), &format!("m{i}")))
            .collect()
    };
    let mut serve = ServeProcess::start(&data, &[]);
    {
        let client = Client::connect(&serve.options()).await.unwrap();
        let producer = client.producer().await.unwrap();
        for from in (0..50).step_by(10) {
            let receipt = producer.publish_batch(&t, batch(from)).await.unwrap();
            assert_eq!(receipt.duplicate_count(), 0);
        }
    }
    serve.kill();
    let serve = ServeProcess::start(&data, &[]);
    let client = Client::connect(&serve.options()).await.unwrap();
    let producer = client.producer().await.unwrap();
    for from in (0..50).step_by(10) {
        let receipt = producer.publish_batch(&t, batch(from)).await.unwrap();
        assert_eq!(receipt.duplicates(), [true; 10], "batch from k{from}");
    }
    let stats = client.stats(Some(&t)).await.unwrap();
    assert_eq!(stats.topics[0].duplicates, 50);
    assert_eq!(
        stats.topics[0].message_count, 0,
        "nothing stored since the restart"
    );
    let new = producer.publish(&t, with_id("k50", "m50")).await.unwrap();
    assert!(!new.is_duplicate(0));
    let received = drain(&client, "survivor", "c").await;
    let seen = ids_received(&received);
    assert_eq!(received.len(), 51);
    assert!(seen.values().all(|&n| n == 1));
}

#[tokio::test]
async fn an_mpub_of_new_and_duplicate_ids_stores_only_the_new_ones_at_once() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let producer = client.producer().await.unwrap();
    let t = topic("mixed");
    let first = producer
        .publish_batch(&t, vec![with_id("a", "a1"), with_id("b", "b1")])
        .await
        .unwrap();
    assert!(first.duplicates().is_empty());
    let mixed = vec![
        with_id("b", "b2"),
        with_id("c", "c1"),
        with_id("a", "a2"),
        NewMessage::new("plain"),
        with_id("d", "d1"),
        with_id("c", "c2"),
    ];
    let receipt = producer.publish_batch(&t, mixed).await.unwrap();
    assert_eq!(
        receipt.duplicates(),
        [true, false, true, false, false, true]
    );
    let received = drain(&client, "mixed", "c").await;
    let bodies: Vec<String> = received
        .iter()
        .map(|d| String::from_utf8(d.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, ["a1", "b1", "c1", "plain", "d1"]);
    // The new ones of the batch got consecutive offsets: one append.
    let offsets: Vec<u64> = received.iter().map(|d| d.id.offset()).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);
    // A batch of duplicates only is confirmed and stores nothing.
    let all = producer
        .publish_batch(&t, vec![with_id("d", "d2"), with_id("a", "a3")])
        .await
        .unwrap();
    assert_eq!(all.duplicates(), [true, true]);
    assert_eq!(message_count(&client, "mixed").await, 5);
}

/// One HTTP/1.1 POST with extra request headers, off the runtime's thread (the broker runs
/// on it); returns the status, the response headers (names lowercased) and the body.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HashMap<String, String>, String) {
    let path = path.to_owned();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = body.to_owned();
    tokio::task::spawn_blocking(move || post_blocking(addr, &path, &headers, &body))
        .await
        .unwrap()
}

fn post_blocking(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> (u16, HashMap<String, String>, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status.parse().unwrap(), headers, body.to_owned())
}

#[tokio::test]
async fn both_http_apis_take_ids_from_x_quiver_msg_id() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let apis = [("admin", broker.http), ("nsqd", broker.nsq_http.unwrap())];
    for (api, addr) in apis {
        let t = format!("http_{api}");
        let pub_path = format!("/pub?topic={t}");
        let mpub_path = format!("/mpub?topic={t}");
        let id = [("X-Quiver-Msg-Id", "h1")];
        let (status, headers, body) = post(addr, &pub_path, &id, "one").await;
        assert_eq!((status, body.as_str()), (200, "OK"), "{api} /pub");
        assert!(!headers.contains_key("x-quiver-duplicates"));
        let (status, headers, body) = post(addr, &pub_path, &id, "one").await;
        assert_eq!((status, body.as_str()), (200, "OK"), "{api} /pub again");
        assert_eq!(headers["x-quiver-duplicates"], "1", "{api} /pub again");
        // /mpub: message i gets `<id>-<i>`; a retry repeats every id.
        let batch = [("X-Quiver-Msg-Id", "b")];
        let (status, headers, _) = post(addr, &mpub_path, &batch, "x\ny\n").await;
        assert_eq!(status, 200, "{api} /mpub");
        assert!(!headers.contains_key("x-quiver-duplicates"));
        let (status, headers, _) = post(addr, &mpub_path, &batch, "x\ny\nz\n").await;
        assert_eq!(status, 200, "{api} /mpub again");
        assert_eq!(headers["x-quiver-duplicates"], "2", "{api} /mpub again");
        // Refused ids store nothing.
        let long = "i".repeat(129);
        let (status, _, _) = post(addr, &pub_path, &[("X-Quiver-Msg-Id", &long)], "bad").await;
        assert_eq!(status, 400, "{api}: an id over 128 bytes");
        let (status, _, _) = post(addr, &pub_path, &[("X-Quiver-Msg-Id", "")], "bad").await;
        assert_eq!(status, 400, "{api}: an empty id");
        assert_eq!(message_count(&client, &t).await, 4, "{api}");
        let received = drain(&client, &t, "c").await;
        let ids: Vec<&str> = received
            .iter()
            .map(|d| d.headers.get(MSG_ID_HEADER).unwrap())
            .collect();
        assert_eq!(ids, ["h1", "b-0", "b-1", "b-2"], "{api}");
    }
}

#[tokio::test]
async fn empty_and_over_long_ids_are_refused_with_e_invalid() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let producer = client.producer().await.unwrap();
    let t = topic("refused");
    let max = "m".repeat(128);
    producer.publish(&t, with_id(&max, "ok")).await.unwrap();
    for bad in [String::new(), "m".repeat(129)] {
        let batch = vec![with_id("fine", "ok"), with_id(&bad, "bad")];
        match producer.publish_batch(&t, batch).await {
            Err(ClientError::Broker(e)) => {
                assert_eq!(e.code, ErrorCode::Invalid, "{e}");
                assert!(!e.fatal);
            }
            other => panic!("an id of {} bytes was accepted: {other:?}", bad.len()),
        }
    }
    // The stream goes on, and nothing of the refused batches was stored.
    let ok = producer.publish(&t, with_id("fine", "ok")).await.unwrap();
    assert!(!ok.is_duplicate(0));
    assert_eq!(message_count(&client, "refused").await, 2);
}
