//! Bad input over real QUIC: each case gets its documented error, and everyone else, including
//! other streams of the same connection, keeps working.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use quiver::client::SubEvent;
use quiver::message::{MessageId, NewMessage, MAX_BODY_LEN};
use quiver::protocol::{split_frame, Command, ErrorCode, Reply, WireError, MAX_FRAME_LEN};

use crate::support::*;

fn frame(command: &Command) -> BytesMut {
    let mut buf = BytesMut::new();
    command.encode(&mut buf);
    buf
}

fn pub_frame(seq: u64, t: &str, body: &[u8]) -> BytesMut {
    frame(&Command::Pub {
        seq,
        topic: topic(t),
        message: NewMessage::new(body.to_vec()),
    })
}

/// Sends `bytes` on a new stream and returns the replies once `want` have come or the broker
/// ended the stream (and whether it did); fails after [`DEADLINE`] with what came.
async fn exchange(conn: &quinn::Connection, bytes: &[u8], want: usize) -> (Vec<Reply>, bool) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let mut buf = BytesMut::new();
    let mut replies = Vec::new();
    loop {
        while let Some(raw) = split_frame(&mut buf).unwrap() {
            replies.push(Reply::decode(raw).unwrap());
        }
        if replies.len() >= want {
            return (replies, false);
        }
        match tokio::time::timeout(DEADLINE, recv.read_chunk(1 << 16, true)).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk.bytes),
            Ok(_) => return (replies, true),
            Err(_) => panic!(
                "{} of {want} replies within {DEADLINE:?}: {replies:?}",
                replies.len()
            ),
        }
    }
}

fn error_of(replies: &[Reply]) -> &WireError {
    replies
        .iter()
        .find_map(|r| match r {
            Reply::Error(e) => Some(e),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no error in {replies:?}"))
}

#[tokio::test]
async fn bad_frames_get_their_documented_errors_and_only_their_stream_ends() {
    let broker = TestBroker::start().await;
    let conn = broker.raw_connection().await;
    let mut truncated_pub = pub_frame(1, "t", b"hello");
    let len = truncated_pub.len();
    truncated_pub.truncate(len - 2);
    let declared = (truncated_pub.len() - 4) as u32;
    truncated_pub[..4].copy_from_slice(&declared.to_be_bytes());
    let mut oversized = BytesMut::new();
    oversized.put_u32(MAX_FRAME_LEN as u32 + 1);
    oversized.put_u8(0x01);
    let mut unknown = BytesMut::new();
    unknown.put_u32(1);
    unknown.put_u8(0x7e);
    let fin_first = frame(&Command::Fin(MessageId::new(1, 1)));
    let bad_timeout = frame(&Command::Sub {
        topic: topic("t"),
        channel: channel("c"),
        msg_timeout: Some(Duration::from_millis(10)),
    });
    let cases: [(&str, &[u8], ErrorCode); 5] = [
        ("truncated PUB payload", &truncated_pub, ErrorCode::BadFrame),
        (
            "length over MAX_FRAME_LEN",
            &oversized,
            ErrorCode::FrameTooLarge,
        ),
        ("unknown frame type", &unknown, ErrorCode::UnknownFrame),
        (
            "FIN as a stream's first frame",
            &fin_first,
            ErrorCode::Invalid,
        ),
        ("SUB with a 10 ms timeout", &bad_timeout, ErrorCode::Invalid),
    ];
    for (name, bytes, code) in cases {
        // A fatal error ends the stream: read until it does.
        let (replies, ended) = exchange(&conn, bytes, usize::MAX).await;
        let e = error_of(&replies);
        assert_eq!((e.code, e.fatal), (code, true), "{name}: {e}");
        assert!(ended, "{name}: the stream ends after a fatal error");
    }
    // The same connection still publishes, and other clients never noticed.
    let (replies, _) = exchange(&conn, &pub_frame(7, "t", b"ok"), 1).await;
    assert_eq!(
        replies,
        vec![Reply::PubOk {
            seq: 7,
            duplicates: vec![],
        }]
    );
    let client = broker.client().await;
    let mut sub = subscribe(&client, "t", "c", None).await;
    sub.rdy(1).await.unwrap();
    assert_eq!(body(&next_message(&mut sub, SOON).await), "ok");
}

#[tokio::test]
async fn refused_publishes_are_answered_by_seq_and_the_stream_goes_on() {
    let broker = TestBroker::start().await;
    let conn = broker.raw_connection().await;
    let mut bytes = pub_frame(1, "good", b"a");
    // A bad topic name: 't t' passes framing but not validation.
    let mut bad_topic = pub_frame(2, "tt", b"b");
    let at = bad_topic.iter().position(|&b| b == b't').unwrap();
    bad_topic[at + 1] = b' ';
    bytes.extend_from_slice(&bad_topic);
    let too_big = vec![0u8; MAX_BODY_LEN + 1];
    bytes.extend_from_slice(&pub_frame(3, "good", &too_big));
    let mut long_defer = BytesMut::new();
    Command::Dpub {
        seq: 4,
        topic: topic("good"),
        delay: Duration::from_secs(2 * 3600),
        message: NewMessage::new("c"),
    }
    .encode(&mut long_defer);
    bytes.extend_from_slice(&long_defer);
    bytes.extend_from_slice(&pub_frame(5, "good", b"d"));
    // The stream goes on after the refusals: the PUB after them is answered.
    let (replies, _) = exchange(&conn, &bytes, 5).await;
    assert_eq!(replies.len(), 5, "{replies:?}");
    assert_eq!(
        replies[0],
        Reply::PubOk {
            seq: 1,
            duplicates: vec![],
        }
    );
    let codes: Vec<(ErrorCode, u64, bool)> = replies[1..4]
        .iter()
        .map(|r| match r {
            Reply::Error(e) => (e.code, e.seq, e.fatal),
            other => panic!("expected an error, got {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (ErrorCode::BadTopic, 2, false),
            (ErrorCode::BadMessage, 3, false),
            (ErrorCode::Invalid, 4, false),
        ]
    );
    assert_eq!(
        replies[4],
        Reply::PubOk {
            seq: 5,
            duplicates: vec![],
        }
    );
    let stats = broker
        .broker()
        .stats(&quiver::broker::Principal::internal(), None)
        .unwrap();
    assert_eq!(
        stats.topic("good").unwrap().message_count,
        2,
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn unknown_ids_and_bad_settles_are_refused_without_ending_the_subscription() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut sub = subscribe(&client, "settle", "c", None).await;
    sub.rdy(5000).await.unwrap();
    let e = match next_event(&mut sub, SOON).await {
        Some(SubEvent::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!((e.code, e.fatal), (ErrorCode::Invalid, false), "{e}");
    sub.rdy(5).await.unwrap();
    let unknown = MessageId::new(42, 42);
    sub.fin(unknown).await.unwrap();
    sub.req(unknown, Duration::ZERO).await.unwrap();
    sub.touch(unknown).await.unwrap();
    let mut codes = Vec::new();
    for _ in 0..3 {
        match next_event(&mut sub, SOON).await {
            Some(SubEvent::Error(e)) => {
                assert!(!e.fatal);
                assert!(e.message.contains(&unknown.to_string()), "{e}");
                codes.push(e.code);
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    assert_eq!(
        codes,
        vec![
            ErrorCode::FinFailed,
            ErrorCode::ReqFailed,
            ErrorCode::TouchFailed
        ]
    );
    publish(&client, "settle", ["still works".to_string()]).await;
    let d = next_message(&mut sub, SOON).await;
    sub.req(d.id, Duration::from_secs(2 * 3600)).await.unwrap();
    match next_event(&mut sub, SOON).await {
        Some(SubEvent::Error(e)) => assert_eq!((e.code, e.fatal), (ErrorCode::ReqFailed, false)),
        other => panic!("expected E_REQ_FAILED, got {other:?}"),
    }
    sub.fin(d.id).await.unwrap();
    sub.fin(d.id).await.unwrap();
    match next_event(&mut sub, SOON).await {
        Some(SubEvent::Error(e)) => assert_eq!(e.code, ErrorCode::FinFailed, "a second FIN fails"),
        other => panic!("expected E_FIN_FAILED, got {other:?}"),
    }
}

#[tokio::test]
async fn a_consumer_cannot_settle_another_consumers_message() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut a = subscribe(&client, "own", "c", None).await;
    let mut b = subscribe(&client, "own", "c", None).await;
    a.rdy(1).await.unwrap();
    publish(&client, "own", ["mine".to_string()]).await;
    let d = next_message(&mut a, SOON).await;
    b.fin(d.id).await.unwrap();
    match next_event(&mut b, SOON).await {
        Some(SubEvent::Error(e)) => assert_eq!((e.code, e.fatal), (ErrorCode::FinFailed, false)),
        other => panic!("expected E_FIN_FAILED, got {other:?}"),
    }
    // The owner's FIN is accepted: the channel counts it, and nothing is left.
    a.fin(d.id).await.unwrap();
    wait_for_channel(&client, "own", "c", "the owner's FIN", |c| {
        c.finished == 1 && settled(c)
    })
    .await;
}
