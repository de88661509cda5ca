//! End-to-end tests: a real broker behind the real router on a loopback socket, spoken to in
//! hand-written HTTP/1.1 (see [`super::test_client`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::serve;
use super::test_client::{assert_ok, get, post, raw, request, start, stats};
use crate::broker::{Broker, BrokerConfig, BrokerStats};
use crate::message::{ChannelName, TopicName, MAX_BODY_LEN};
use crate::storage::MemoryStorage;

#[tokio::test]
async fn ping_answers_ok() {
    let (_broker, addr) = start().await;
    let response = get(addr, "/ping").await;
    assert_ok(&response);
    assert!(
        response.head.contains("content-type: text/plain"),
        "{response:?}"
    );
}

#[tokio::test]
async fn published_message_shows_in_stats() {
    let (_broker, addr) = start().await;
    assert_ok(&post(addr, "/pub?topic=orders", b"hello").await);

    let stats = stats(addr).await;
    let topic = stats.topic("orders").unwrap();
    assert_eq!((topic.message_count, topic.depth), (1, 1));

    let one = get(addr, "/stats?topic=orders").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["topics"][0]["name"], "orders");
    let unknown = get(addr, "/stats?topic=nope").await;
    assert_eq!(
        (unknown.status, unknown.error_code().as_str()),
        (404, "E_NOT_FOUND")
    );
}

#[tokio::test]
async fn quiver_headers_become_message_headers() {
    let (broker, addr) = start().await;
    let headers = [
        ("X-Quiver-Header-Trace-Id", "abc-123"),
        ("x-quiver-header-lang", "fr"),
        ("X-Unrelated", "ignored"),
    ];
    assert_ok(&request(addr, "POST", "/pub?topic=t", &headers, b"body").await);

    let topic = TopicName::new("t").unwrap();
    let channel = ChannelName::new("c").unwrap();
    let sub = broker
        .subscribe(
            &std::sync::Arc::new(crate::broker::Principal::internal()),
            &topic,
            &channel,
            None,
        )
        .unwrap();
    sub.set_rdy(1).unwrap();
    let mut taken = Vec::new();
    assert_eq!(sub.take(1, &mut taken), 1);
    let message = &taken[0].message;
    assert_eq!(&message.body[..], b"body");
    assert_eq!(message.headers.len(), 2);
    assert_eq!(message.headers.get("trace-id"), Some("abc-123"));
    assert_eq!(message.headers.get("lang"), Some("fr"));
}

#[tokio::test]
async fn header_values_must_be_utf8() {
    let (_broker, addr) = start().await;
    let mut req =
        b"POST /pub?topic=t HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".to_vec();
    req.extend_from_slice(b"Content-Length: 1\r\nX-Quiver-Header-Bad: \xff\xfe\r\n\r\nx");
    let response = raw(addr, &req).await;
    assert_eq!(response.status, 400, "{response:?}");
    assert!(
        response.error_message().contains("x-quiver-header-bad"),
        "{response:?}"
    );

    let utf8 = "POST /pub?topic=t HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                Content-Length: 1\r\nX-Quiver-Header-City: Zürich\r\n\r\nx";
    assert_ok(&raw(addr, utf8.as_bytes()).await);
}

#[tokio::test]
async fn mpub_publishes_each_line() {
    let (_broker, addr) = start().await;
    assert_ok(&post(addr, "/mpub?topic=batch", b"one\ntwo\n\nthree\n").await);
    let stats = stats(addr).await;
    assert_eq!(stats.topic("batch").unwrap().message_count, 3);

    let empty = post(addr, "/mpub?topic=batch", b"\n\n").await;
    assert_eq!(
        (empty.status, empty.error_code().as_str()),
        (400, "E_BAD_MESSAGE")
    );
}

#[tokio::test]
async fn bad_or_missing_parameters_are_named() {
    let (_broker, addr) = start().await;
    let bad = post(addr, "/pub?topic=no%20spaces", b"x").await;
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (400, "E_BAD_TOPIC")
    );
    assert!(bad.error_message().contains("topic"), "{bad:?}");

    let missing = post(addr, "/pub", b"x").await;
    assert_eq!(missing.status, 400);
    assert!(missing.error_message().contains("\"topic\""), "{missing:?}");

    let channel = post(addr, "/channel/create?topic=t", b"").await;
    assert_eq!(
        (channel.status, channel.error_code().as_str()),
        (400, "E_BAD_CHANNEL")
    );
    assert!(
        channel.error_message().contains("\"channel\""),
        "{channel:?}"
    );

    let defer = post(addr, "/pub?topic=t&defer=soon", b"x").await;
    assert_eq!(
        (defer.status, defer.error_code().as_str()),
        (400, "E_INVALID")
    );
    assert!(defer.error_message().contains("\"defer\""), "{defer:?}");

    let attempts = post(
        addr,
        "/channel/create?topic=t&channel=c&max_attempts=-1",
        b"",
    )
    .await;
    assert_eq!(attempts.status, 400);
    assert!(
        attempts.error_message().contains("max_attempts"),
        "{attempts:?}"
    );

    assert!(stats(addr).await.topics.is_empty());
}

#[tokio::test]
async fn deferred_publish_is_accepted() {
    let (_broker, addr) = start().await;
    assert_ok(&post(addr, "/pub?topic=later&defer=60000", b"x").await);
    assert_eq!(stats(addr).await.topic("later").unwrap().message_count, 1);
    let too_far = post(addr, "/pub?topic=later&defer=999999999", b"x").await;
    assert_eq!(too_far.status, 400);
}

#[tokio::test]
async fn oversized_bodies_are_refused_and_not_stored() {
    let (_broker, addr) = start().await;
    // Declared too large: refused before any of the body is sent.
    let head = format!(
        "POST /pub?topic=big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY_LEN + 1
    );
    let declared = raw(addr, head.as_bytes()).await;
    assert_eq!(
        (declared.status, declared.error_code().as_str()),
        (413, "E_BAD_MESSAGE")
    );

    // Chunked, so only the streamed length gives it away.
    let mut chunked =
        b"POST /pub?topic=big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..(MAX_BODY_LEN / 65536 + 1) {
        chunked.extend_from_slice(b"10000\r\n");
        chunked.extend(std::iter::repeat_n(b'x', 65536));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(addr, &chunked).await.status, 413);

    // Within the MPUB limit, but one line is too large for a message.
    let mut lines = vec![b'x'; MAX_BODY_LEN + 1];
    lines.extend_from_slice(b"\nsmall\n");
    assert_eq!(post(addr, "/mpub?topic=big", &lines).await.status, 413);

    assert!(stats(addr).await.topics.is_empty());
    assert_eq!(get(addr, "/stats?topic=big").await.status, 404);
}

#[tokio::test]
async fn topic_administration() {
    let (_broker, addr) = start().await;
    assert_ok(&post(addr, "/topic/create?topic=t", b"").await);
    assert!(!stats(addr).await.topic("t").unwrap().paused);

    assert_ok(&post(addr, "/topic/pause?topic=t", b"").await);
    assert!(stats(addr).await.topic("t").unwrap().paused);
    assert_ok(&post(addr, "/topic/unpause?topic=t", b"").await);
    assert!(!stats(addr).await.topic("t").unwrap().paused);

    assert_ok(&post(addr, "/pub?topic=t", b"x").await);
    assert_eq!(stats(addr).await.topic("t").unwrap().depth, 1);
    assert_ok(&post(addr, "/topic/empty?topic=t", b"").await);
    assert_eq!(stats(addr).await.topic("t").unwrap().depth, 0);

    assert_ok(&post(addr, "/topic/delete?topic=t", b"").await);
    assert!(stats(addr).await.topic("t").is_none());
    let again = post(addr, "/topic/delete?topic=t", b"").await;
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (404, "E_NOT_FOUND")
    );
    assert_eq!(post(addr, "/topic/pause?topic=t", b"").await.status, 404);
}

#[tokio::test]
async fn channel_administration() {
    let (_broker, addr) = start().await;
    assert_ok(
        &post(
            addr,
            "/channel/create?topic=t&channel=c&max_attempts=5",
            b"",
        )
        .await,
    );
    let channel = |s: &BrokerStats| s.topic("t").and_then(|t| t.channel("c")).cloned();
    let created = channel(&stats(addr).await).unwrap();
    assert_eq!((created.max_attempts, created.paused), (5, false));

    assert_ok(&post(addr, "/channel/pause?topic=t&channel=c", b"").await);
    assert!(channel(&stats(addr).await).unwrap().paused);
    assert_ok(&post(addr, "/channel/unpause?topic=t&channel=c", b"").await);
    assert!(!channel(&stats(addr).await).unwrap().paused);

    assert_ok(&post(addr, "/pub?topic=t", b"x").await);
    assert_eq!(channel(&stats(addr).await).unwrap().depth, 1);
    assert_ok(&post(addr, "/channel/empty?topic=t&channel=c", b"").await);
    assert_eq!(channel(&stats(addr).await).unwrap().depth, 0);

    assert_ok(&post(addr, "/channel/delete?topic=t&channel=c", b"").await);
    assert!(channel(&stats(addr).await).is_none());
    let again = post(addr, "/channel/delete?topic=t&channel=c", b"").await;
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (404, "E_NOT_FOUND")
    );
    let no_topic = post(addr, "/channel/delete?topic=nope&channel=c", b"").await;
    assert_eq!(no_topic.status, 404);
}

#[tokio::test]
async fn metrics_expose_topic_and_channel_series() {
    let (_broker, addr) = start().await;
    assert_ok(&post(addr, "/channel/create?topic=t&channel=c", b"").await);
    assert_ok(&post(addr, "/mpub?topic=t", b"a\nb").await);

    let response = get(addr, "/metrics").await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .head
            .contains("content-type: text/plain; version=0.0.4"),
        "{response:?}"
    );
    let text = &response.body;
    for line in [
        "# TYPE quiver_uptime_seconds gauge",
        "# TYPE quiver_topic_depth gauge",
        "# HELP quiver_topic_messages_total ",
        "# TYPE quiver_topic_messages_total counter",
        "quiver_topic_messages_total{topic=\"t\"} 2",
        "quiver_topic_depth{topic=\"t\"} 0",
        "# TYPE quiver_channel_depth gauge",
        "quiver_channel_depth{topic=\"t\",channel=\"c\"} 2",
        "quiver_channel_in_flight{topic=\"t\",channel=\"c\"} 0",
        "quiver_channel_deferred{topic=\"t\",channel=\"c\"} 0",
        "quiver_channel_consumers{topic=\"t\",channel=\"c\"} 0",
        "quiver_channel_finished_total{topic=\"t\",channel=\"c\"} 0",
        "quiver_channel_requeued_total{topic=\"t\",channel=\"c\"} 0",
        "quiver_channel_timed_out_total{topic=\"t\",channel=\"c\"} 0",
        "quiver_channel_dead_lettered_total{topic=\"t\",channel=\"c\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let (_broker, addr) = start().await;
    let response = get(addr, "/nope").await;
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (404, "E_NOT_FOUND")
    );
}

#[tokio::test]
async fn publishes_are_refused_while_shutting_down() {
    let (broker, addr) = start().await;
    broker.shutdown();
    let response = post(addr, "/pub?topic=t", b"x").await;
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (503, "E_SHUTTING_DOWN")
    );
    assert_eq!(post(addr, "/topic/create?topic=t", b"").await.status, 503);
    assert_eq!(get(addr, "/ping").await.status, 200);
}

#[tokio::test]
async fn serve_returns_after_broker_shutdown() {
    let broker = Broker::new(BrokerConfig::default(), Arc::new(MemoryStorage));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(
        listener,
        broker.clone(),
        None,
        std::sync::Arc::new(crate::auth::Authenticator::disabled()),
        None,
    ));
    assert_ok(&get(addr, "/ping").await);

    broker.shutdown();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
}
