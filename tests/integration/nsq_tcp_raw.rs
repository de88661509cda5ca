//! The NSQ listener on a raw socket: malformed input answered with nsqd's exact error texts,
//! fatal ones closing only their own connection; heartbeats; CLS.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::nsq_tcp::NsqBroker;
use super::support::{DEADLINE, SOON};

const RESPONSE: i32 = 0;
const ERROR: i32 = 1;
const MESSAGE: i32 = 2;

/// A hand-driven NSQ connection.
struct Raw {
    stream: TcpStream,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let mut raw = Raw::bare(addr).await;
        raw.send(b"  V2").await;
        raw
    }

    async fn bare(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
        }
    }

    /// IDENTIFY with `json`, expecting OK (no feature negotiation).
    async fn identify(&mut self, json: &str) {
        self.send(&with_body("IDENTIFY\n", json.as_bytes())).await;
        assert_eq!(self.frame().await, (RESPONSE, b"OK".to_vec()));
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame, skipping heartbeats.
    async fn frame(&mut self) -> (i32, Vec<u8>) {
        loop {
            let frame = timeout(SOON, self.read_frame())
                .await
                .expect("a frame in time")
                .expect("a frame, not the end of the stream");
            if frame != (RESPONSE, b"_heartbeat_".to_vec()) {
                return frame;
            }
        }
    }

    async fn read_frame(&mut self) -> Option<(i32, Vec<u8>)> {
        let size = self.stream.read_i32().await.ok()?;
        let kind = self.stream.read_i32().await.ok()?;
        let mut data = vec![0; size as usize - 4];
        self.stream.read_exact(&mut data).await.ok()?;
        Some((kind, data))
    }

    async fn error(&mut self) -> String {
        let (kind, data) = self.frame().await;
        assert_eq!(
            kind,
            ERROR,
            "expected an error, got {:?}",
            String::from_utf8_lossy(&data)
        );
        String::from_utf8(data).unwrap()
    }

    /// The broker closed the connection (after any frames still in the way), cleanly or
    /// with a reset.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        timeout(SOON, self.stream.read_to_end(&mut rest))
            .await
            .is_ok()
    }

    /// PUB answered with OK: the connection works.
    async fn publishes(&mut self, topic: &str) {
        self.send(&with_body(&format!("PUB {topic}\n"), b"ping"))
            .await;
        assert_eq!(self.frame().await, (RESPONSE, b"OK".to_vec()));
    }

    async fn subscribe(&mut self, topic: &str, channel: &str) {
        self.send(format!("SUB {topic} {channel}\n").as_bytes())
            .await;
        assert_eq!(self.frame().await, (RESPONSE, b"OK".to_vec()));
    }

    /// The next message: (attempts, id, body).
    async fn message(&mut self) -> (u16, String, Vec<u8>) {
        let (kind, data) = self.frame().await;
        assert_eq!(kind, MESSAGE, "{:?}", String::from_utf8_lossy(&data));
        let attempts = u16::from_be_bytes([data[8], data[9]]);
        let id = String::from_utf8(data[10..26].to_vec()).unwrap();
        (attempts, id, data[26..].to_vec())
    }
}

/// Setup commands (each answered OK), the input, the error text, and whether it is fatal.
type Case = (Vec<Vec<u8>>, Vec<u8>, &'static str, bool);

fn with_body(line: &str, body: &[u8]) -> Vec<u8> {
    let mut out = line.as_bytes().to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn mpub(topic: &str, count: u32, bodies: &[&[u8]]) -> Vec<u8> {
    let mut body = count.to_be_bytes().to_vec();
    for b in bodies {
        body.extend_from_slice(&(b.len() as u32).to_be_bytes());
        body.extend_from_slice(b);
    }
    with_body(&format!("MPUB {topic}\n"), &body)
}

/// Sends `setup` then `input` on a fresh connection; expects `error`, then the connection
/// closed if `fatal`, or still working if not.
async fn expect(addr: SocketAddr, setup: &[Vec<u8>], input: &[u8], error: &str, fatal: bool) {
    let mut conn = Raw::connect(addr).await;
    for command in setup {
        conn.send(command).await;
        assert_eq!(
            conn.frame().await,
            (RESPONSE, b"OK".to_vec()),
            "setup for {error}"
        );
    }
    conn.send(input).await;
    assert_eq!(conn.error().await, error);
    if fatal {
        assert!(conn.closed().await, "{error} should close the connection");
    } else {
        conn.send(b"NOP\n").await;
        conn.publishes("still-open").await;
    }
}

#[tokio::test]
async fn malformed_input_gets_nsqds_errors_and_fatal_ones_close_only_their_connection() {
    let broker = NsqBroker::start().await;
    let addr = broker.nsq;
    // A bystander that must keep working through all of this.
    let mut bystander = Raw::connect(addr).await;
    bystander.publishes("bystander").await;

    let sub = || b"SUB t c\n".to_vec();
    let identify = || with_body("IDENTIFY\n", br#"{"heartbeat_interval":-1}"#);
    let big = vec![b'x'; (1 << 20) + 1];
    let table: Vec<Case> = vec![
        (
            vec![],
            b"HELLO\n".to_vec(),
            "E_INVALID invalid command HELLO",
            true,
        ),
        (
            vec![],
            with_body("PUB t\n", &big),
            "E_BAD_MESSAGE PUB message too big 1048577 > 1048576",
            true,
        ),
        (
            vec![],
            with_body("PUB t\n", b""),
            "E_BAD_MESSAGE PUB invalid message body size 0",
            true,
        ),
        (
            vec![],
            with_body("PUB bad!\n", b"x"),
            "E_BAD_TOPIC PUB topic name \"bad!\" is not valid",
            true,
        ),
        (
            vec![],
            b"PUB\n".to_vec(),
            "E_INVALID PUB insufficient number of parameters",
            true,
        ),
        (
            vec![],
            mpub("t", 3, &[b"a", b"b"]),
            "E_BAD_MESSAGE MPUB failed to read message(2) body size",
            true,
        ),
        (
            vec![],
            mpub("t", 0, &[]),
            "E_BAD_BODY MPUB invalid message count 0",
            true,
        ),
        (
            vec![],
            mpub("t!", 1, &[b"a"]),
            "E_BAD_TOPIC E_BAD_TOPIC MPUB topic name \"t!\" is not valid",
            true,
        ),
        (
            vec![],
            with_body("DPUB t 3600001\n", b"x"),
            "E_INVALID DPUB timeout 3600001 out of range 0-3600000",
            true,
        ),
        (
            vec![],
            b"SUB t\n".to_vec(),
            "E_INVALID SUB insufficient number of parameters",
            true,
        ),
        (
            vec![],
            b"SUB t bad!\n".to_vec(),
            "E_BAD_CHANNEL SUB channel name \"bad!\" is not valid",
            true,
        ),
        (
            vec![sub()],
            sub(),
            "E_INVALID cannot SUB in current state",
            true,
        ),
        (
            vec![identify()],
            sub(),
            "E_INVALID cannot SUB with heartbeats disabled",
            true,
        ),
        (
            vec![sub()],
            b"RDY 2501\n".to_vec(),
            "E_INVALID RDY count 2501 out of range 0-2500",
            true,
        ),
        (
            vec![sub()],
            b"RDY many\n".to_vec(),
            "E_INVALID RDY could not parse count many",
            true,
        ),
        (
            vec![],
            b"RDY 1\n".to_vec(),
            "E_INVALID cannot RDY in current state",
            true,
        ),
        (
            vec![],
            b"FIN 0000000000000001\n".to_vec(),
            "E_INVALID cannot FIN in current state",
            true,
        ),
        (
            vec![sub()],
            b"FIN 00000000000003e7\n".to_vec(),
            "E_FIN_FAILED FIN 00000000000003e7 failed ID not in flight",
            false,
        ),
        (
            vec![sub()],
            b"FIN zzzzzzzzzzzzzzzz\n".to_vec(),
            "E_FIN_FAILED FIN zzzzzzzzzzzzzzzz failed ID not in flight",
            false,
        ),
        (
            vec![sub()],
            b"REQ 00000000000003e7 0\n".to_vec(),
            "E_REQ_FAILED REQ 00000000000003e7 failed ID not in flight",
            false,
        ),
        (
            vec![sub()],
            b"TOUCH 00000000000003e7\n".to_vec(),
            "E_TOUCH_FAILED TOUCH 00000000000003e7 failed ID not in flight",
            false,
        ),
        (
            vec![sub()],
            b"FIN 3e7\n".to_vec(),
            "E_INVALID invalid message ID",
            true,
        ),
        (
            vec![],
            b"CLS\n".to_vec(),
            "E_INVALID cannot CLS in current state",
            true,
        ),
        (
            vec![],
            with_body("AUTH\n", b"secret"),
            "E_AUTH_DISABLED AUTH disabled",
            true,
        ),
        (
            vec![],
            with_body("IDENTIFY\n", b"{nope"),
            "E_BAD_BODY IDENTIFY failed to decode JSON body",
            true,
        ),
        (
            vec![],
            with_body("IDENTIFY\n", br#"{"heartbeat_interval":10}"#),
            "E_BAD_BODY IDENTIFY heartbeat interval (10) is invalid",
            true,
        ),
        (
            vec![identify()],
            identify(),
            "E_INVALID cannot IDENTIFY in current state",
            true,
        ),
    ];
    for (setup, input, error, fatal) in table {
        expect(addr, &setup, &input, error, fatal).await;
        bystander.publishes("bystander").await;
    }

    let mut bad_magic = Raw::bare(addr).await;
    bad_magic.send(b"  V1PUB t\n").await;
    assert_eq!(bad_magic.frame().await, (ERROR, b"E_BAD_PROTOCOL".to_vec()));
    assert!(bad_magic.closed().await);
    bystander.publishes("bystander").await;
}

#[tokio::test]
async fn tls_required_refuses_commands_before_the_upgrade() {
    let broker = NsqBroker::start_with(|c| c.nsq.tls_required = true).await;
    let mut conn = Raw::connect(broker.nsq).await;
    conn.send(&with_body("PUB t\n", b"x")).await;
    assert_eq!(
        conn.error().await,
        "E_INVALID cannot PUB in current state (TLS required)"
    );
    assert!(conn.closed().await);
}

#[tokio::test]
async fn a_late_fin_is_refused_without_closing_and_cls_waits_for_in_flight() {
    let broker = NsqBroker::start_with(|c| c.broker.msg_timeout = Duration::from_secs(1)).await;
    let mut producer = Raw::connect(broker.nsq).await;
    producer.send(&mpub("late", 2, &[b"one", b"two"])).await;
    assert_eq!(producer.frame().await, (RESPONSE, b"OK".to_vec()));

    let mut consumer = Raw::connect(broker.nsq).await;
    consumer.subscribe("late", "c").await;
    consumer.send(b"RDY 1\n").await;
    let (attempts, id, body) = consumer.message().await;
    assert_eq!((attempts, body.as_slice()), (1, &b"one"[..]));
    // Not finished within 1 s: it is delivered again, and the old FIN fails softly.
    let (attempts, again, _) = consumer.message().await;
    assert_eq!((attempts, &again), (2, &id));
    consumer
        .send(format!("FIN {id}\nFIN {id}\n").as_bytes())
        .await;
    // The first FIN frees the credit, so "two" may come before the second FIN's answer.
    let (mut error, mut second) = (None, None);
    for _ in 0..2 {
        match consumer.frame().await {
            (ERROR, text) => error = Some(String::from_utf8(text).unwrap()),
            (MESSAGE, data) => {
                assert_eq!(&data[26..], b"two");
                second = Some(String::from_utf8(data[10..26].to_vec()).unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        error.unwrap(),
        format!("E_FIN_FAILED FIN {id} failed ID not in flight")
    );
    let second = second.unwrap();
    // CLS: no new messages; what is in flight can still be finished.
    consumer.send(b"CLS\n").await;
    assert_eq!(consumer.frame().await, (RESPONSE, b"CLOSE_WAIT".to_vec()));
    consumer
        .send(format!("FIN {second}\nNOP\n").as_bytes())
        .await;
    producer.publishes("late").await;
    // A command with an answer after RDY 5: once it is answered the broker has handled the
    // RDY, and nothing came before the answer, nor went out by the broker's count.
    consumer.send(b"RDY 5\nFIN 0000000000000000\n").await;
    loop {
        match consumer.frame().await {
            (ERROR, text) if text.starts_with(b"E_FIN_FAILED") => break,
            (ERROR, _) => {}
            other => panic!("nothing after CLS, got {other:?}"),
        }
    }
    let stats = broker
        .broker()
        .stats(
            &quiver::broker::Principal::internal(),
            Some(&super::support::topic("late")),
        )
        .unwrap();
    let c = &stats.topics[0].channels[0];
    assert_eq!((c.in_flight, c.depth), (0, 1), "the new message stays");
}

#[tokio::test]
async fn heartbeats_are_sent_and_a_silent_client_is_dropped_after_two() {
    let broker = NsqBroker::start_with(|c| c.nsq.heartbeat_interval = Duration::from_secs(1)).await;
    // Answers every heartbeat: still connected after more than three intervals.
    let mut lively = Raw::connect(broker.nsq).await;
    let mut silent = Raw::connect(broker.nsq).await;
    let start = Instant::now();
    let mut heartbeats = 0;
    while heartbeats < 4 {
        let frame = timeout(SOON, lively.read_frame()).await.unwrap().unwrap();
        assert_eq!(frame, (RESPONSE, b"_heartbeat_".to_vec()));
        heartbeats += 1;
        lively.send(b"NOP\n").await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(3500),
        "{:?}",
        start.elapsed()
    );
    lively.publishes("alive").await;
    // The silent one got its heartbeats, answered none, and was closed.
    let mut frames = 0;
    while let Ok(Some(frame)) = timeout(SOON, silent.read_frame()).await {
        assert_eq!(frame, (RESPONSE, b"_heartbeat_".to_vec()));
        frames += 1;
    }
    assert!(
        (1..=2).contains(&frames),
        "{frames} heartbeats before the close"
    );

    // A client may ask for its own interval.
    let mut own = Raw::connect(broker.nsq).await;
    own.identify(r#"{"heartbeat_interval":1500}"#).await;
    let asked = Instant::now();
    let frame = timeout(SOON, own.read_frame()).await.unwrap().unwrap();
    assert_eq!(frame, (RESPONSE, b"_heartbeat_".to_vec()));
    assert!(asked.elapsed() >= Duration::from_millis(1400));
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let broker = NsqBroker::start_with(|c| c.limits.max_connections = 2).await;
    let mut first = Raw::connect(broker.nsq).await;
    let mut second = Raw::connect(broker.nsq).await;
    first.publishes("t").await;
    second.publishes("t").await;
    let mut third = Raw::connect(broker.nsq).await;
    assert!(
        third.closed().await,
        "the third connection is over the limit"
    );
    drop(first);
    // The slot comes back once the first connection's task has ended; until then a new
    // connection is closed at once.
    let began = Instant::now();
    loop {
        let mut conn = Raw::bare(broker.nsq).await;
        // A write to a connection already closed may fail: that is a close too.
        let mut bytes = b"  V2".to_vec();
        bytes.extend_from_slice(&with_body("PUB t\n", b"x"));
        let sent = conn.stream.write_all(&bytes).await;
        let answer = match sent {
            Ok(()) => timeout(SOON, conn.read_frame()).await,
            Err(_) => Ok(None),
        };
        match answer {
            Ok(Some(frame)) => {
                assert_eq!(frame, (RESPONSE, b"OK".to_vec()));
                break;
            }
            Ok(None) => assert!(
                began.elapsed() < DEADLINE,
                "no connection accepted within {DEADLINE:?} of one closing"
            ),
            Err(_) => panic!("a new connection got neither an answer nor a close"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.publishes("t").await;
}
