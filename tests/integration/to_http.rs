//! `quiver to-http` as a user runs it: the real binary as a child process, a broker on
//! loopback QUIC, and a real HTTP server started by the test that records every request and
//! answers from a script.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use quiver::broker::ChannelStats;
use quiver::transport::tls::Trust;

use crate::process::BIN;
use crate::support::*;

/// How the test server answers one request.
#[derive(Debug, Clone, Copy)]
struct Answer {
    status: u16,
    delay: Duration,
}

fn status(status: u16) -> Answer {
    Answer {
        status,
        delay: Duration::ZERO,
    }
}

fn slow(delay: Duration, status: u16) -> Answer {
    Answer { status, delay }
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct Script {
    seen: Vec<Seen>,
    answers: VecDeque<Answer>,
    otherwise: Answer,
}

/// An HTTP endpoint on 127.0.0.1:0: records each request, then answers with the next scripted
/// answer, or `otherwise` once the script is used up.
struct Endpoint {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    server: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    async fn start(answers: impl IntoIterator<Item = Answer>, otherwise: Answer) -> Endpoint {
        let script = Arc::new(Mutex::new(Script {
            seen: Vec::new(),
            answers: answers.into_iter().collect(),
            otherwise,
        }));
        let app = axum::Router::new()
            .fallback(record)
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Endpoint {
            addr,
            script,
            server,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.lock().unwrap().seen.clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(State(script): State<Arc<Mutex<Script>>>, request: Request) -> StatusCode {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let answer = {
        let mut script = script.lock().unwrap();
        script.seen.push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts.headers,
            body,
        });
        let otherwise = script.otherwise;
        script.answers.pop_front().unwrap_or(otherwise)
    };
    tokio::time::sleep(answer.delay).await;
    StatusCode::from_u16(answer.status).unwrap()
}

/// `quiver to-http` against `broker`, with `args` after the connection flags. Its stdout is
/// collected line by line; set `QUIVER_TEST_LOG=1` to see its logs.
struct ToHttp {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// The thread collecting stdout: it ends at the end of the pipe.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ToHttp {
    fn start(broker: &TestBroker, args: &[&str]) -> ToHttp {
        let Trust::CaFile(ca) = &broker.options.trust else {
            panic!("TestBroker trusts a CA file");
        };
        let stderr = if std::env::var_os("QUIVER_TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let mut child = Command::new(BIN)
            .arg("to-http")
            .arg("--addr")
            .arg(broker.options.addr.to_string())
            .arg("--ca")
            .arg(ca)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("quiver to-http starts");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        ToHttp {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGTERM, then waits (at most a minute) for the drain and exit; returns the exit status
    /// and everything printed.
    async fn terminate(&mut self) -> (ExitStatus, String) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        for _ in 0..1200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread ends with the pipe, having stored every line.
                if let Some(reader) = self.reader.take() {
                    reader.join().unwrap();
                }
                return (status, self.output());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "to-http did not exit within a minute of SIGTERM; output:\n{}",
            self.output()
        );
    }
}

impl Drop for ToHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn channel_stats(broker: &TestBroker, t: &str, c: &str) -> Option<ChannelStats> {
    let stats = broker
        .broker()
        .stats(&quiver::broker::Principal::internal(), None)
        .unwrap();
    stats.topic(t).and_then(|t| t.channel(c)).cloned()
}

/// Waits until `t`/`c` has finished `n` messages and holds nothing in flight or ready.
async fn all_finished(broker: &TestBroker, t: &str, c: &str, n: u64) {
    eventually(&format!("{t}/{c} finished {n}"), || {
        channel_stats(broker, t, c)
            .is_some_and(|c| c.finished == n && c.in_flight == 0 && c.depth == 0)
    })
    .await;
}

#[tokio::test]
async fn post_answered_2xx_fins_with_body_headers_and_content_type() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let endpoint = Endpoint::start([], status(201)).await;
    publish(&client, "orders", ["{\"total\": 12}".to_string()]).await;
    let url = endpoint.url("/in");
    let mut bridge = ToHttp::start(
        &broker,
        &[
            "--topic",
            "orders",
            "--channel",
            "c",
            "--post",
            &url,
            "--content-type",
            "application/json",
            "--header",
            "X-Token: s3cret",
            "--status-every",
            "100ms",
        ],
    );
    all_finished(&broker, "orders", "c", 1).await;
    let seen = endpoint.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(
        (request.method.as_str(), request.uri.as_str()),
        ("POST", "/in")
    );
    assert_eq!(&request.body[..], b"{\"total\": 12}");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-token"), Some("s3cret"));
    assert_eq!(request.header("quiver-attempts"), Some("1"));
    assert_eq!(request.header("quiver-message-id").map(str::len), Some(32));
    assert!(request
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("quiver-to-http/")));
    eventually("a progress line", || {
        bridge
            .output()
            .contains("to-http: delivered 1 (0.0/s), failed 0 (0.0/s), retried 0 (0.0/s)")
    })
    .await;
    let (exit, out) = bridge.terminate().await;
    assert!(exit.success(), "{exit}\n{out}");
    assert!(
        out.contains("to-http summary: delivered 1, failed 0, retried 0, dead-lettered 0"),
        "{out}"
    );
}

#[tokio::test]
async fn a_500_then_a_200_delivers_after_exactly_one_retry() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let endpoint = Endpoint::start([status(500)], status(200)).await;
    publish(&client, "jobs", ["one".to_string()]).await;
    let url = endpoint.url("/");
    let mut bridge = ToHttp::start(
        &broker,
        &[
            "--topic",
            "jobs",
            "--channel",
            "c",
            "--post",
            &url,
            "--backoff",
            "100ms",
        ],
    );
    all_finished(&broker, "jobs", "c", 1).await;
    let seen = endpoint.seen();
    let attempts: Vec<_> = seen.iter().map(|s| s.header("quiver-attempts")).collect();
    assert_eq!(attempts, [Some("1"), Some("2")]);
    assert!(seen.iter().all(|s| &s.body[..] == b"one"));
    let stats = channel_stats(&broker, "jobs", "c").unwrap();
    assert_eq!((stats.requeued, stats.dead_lettered), (1, 0));
    let (exit, out) = bridge.terminate().await;
    assert!(exit.success(), "{exit}\n{out}");
    assert!(
        out.contains("delivered 1, failed 1, retried 1, dead-lettered 0"),
        "{out}"
    );
    assert_eq!(endpoint.seen().len(), 2, "no request after the FIN");
}

#[tokio::test]
async fn an_endpoint_that_always_fails_sends_the_message_to_the_dead_letter_topic() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let endpoint = Endpoint::start([], status(503)).await;
    let mut dead = subscribe(&client, "jobs.dead", "d", None).await;
    dead.rdy(1).await.unwrap();
    publish(&client, "jobs", ["poison".to_string()]).await;
    let url = endpoint.url("/hook");
    let mut bridge = ToHttp::start(
        &broker,
        &[
            "--topic",
            "jobs",
            "--channel",
            "c",
            "--post",
            &url,
            "--max-attempts",
            "3",
            "--backoff",
            "50ms",
        ],
    );
    let d = next_message(&mut dead, Duration::from_secs(10)).await;
    assert_eq!(body(&d), "poison");
    assert_eq!(
        d.headers.get("quiver-dead-reason"),
        Some("client-max-attempts")
    );
    assert_eq!(d.headers.get("quiver-dead-topic"), Some("jobs"));
    assert_eq!(d.headers.get("quiver-dead-channel"), Some("c"));
    assert_eq!(d.headers.get("quiver-dead-attempts"), Some("3"));
    let error = d.headers.get("quiver-dead-error").unwrap_or_default();
    assert!(error.contains("503"), "{error}");
    dead.fin(d.id).await.unwrap();
    all_finished(&broker, "jobs", "c", 1).await;
    assert_eq!(endpoint.seen().len(), 3, "one request per attempt");
    let (exit, out) = bridge.terminate().await;
    assert!(exit.success(), "{exit}\n{out}");
    assert!(
        out.contains("delivered 0, failed 3, retried 2, dead-lettered 1"),
        "{out}"
    );
}

#[tokio::test]
async fn fanout_retries_every_url_until_all_succeed() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let healthy = Endpoint::start([], status(200)).await;
    let flaky = Endpoint::start([status(500), status(502)], status(200)).await;
    publish(&client, "events", ["e1".to_string()]).await;
    let (a, b) = (healthy.url("/a"), flaky.url("/b"));
    let mut bridge = ToHttp::start(
        &broker,
        &[
            "--topic",
            "events",
            "--channel",
            "c",
            "--mode",
            "fanout",
            "--post",
            &a,
            "--post",
            &b,
            "--backoff",
            "50ms",
        ],
    );
    all_finished(&broker, "events", "c", 1).await;
    // At least once: the URL that succeeded sees the message again on every retry.
    for endpoint in [&healthy, &flaky] {
        let seen = endpoint.seen();
        let attempts: Vec<_> = seen.iter().map(|s| s.header("quiver-attempts")).collect();
        assert_eq!(attempts, [Some("1"), Some("2"), Some("3")]);
        assert!(seen.iter().all(|s| &s.body[..] == b"e1"));
    }
    let (exit, out) = bridge.terminate().await;
    assert!(exit.success(), "{exit}\n{out}");
    assert!(
        out.contains("delivered 1, failed 2, retried 2, dead-lettered 0"),
        "{out}"
    );
}

#[tokio::test]
async fn get_replaces_percent_s_with_the_query_escaped_body() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let endpoint = Endpoint::start([], status(200)).await;
    publish(&client, "clicks", ["a b&c=d/é".to_string()]).await;
    let url = endpoint.url("/hook?msg=%s&src=quiver");
    let mut bridge = ToHttp::start(
        &broker,
        &["--topic", "clicks", "--channel", "c", "--get", &url],
    );
    all_finished(&broker, "clicks", "c", 1).await;
    let seen = endpoint.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].uri, "/hook?msg=a+b%26c%3Dd%2F%C3%A9&src=quiver");
    assert!(seen[0].body.is_empty());
    assert_eq!(seen[0].header("content-type"), None);
    let (exit, out) = bridge.terminate().await;
    assert!(exit.success(), "{exit}\n{out}");
}

#[tokio::test]
async fn a_request_that_times_out_is_requeued_and_retried() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let endpoint = Endpoint::start([slow(Duration::from_secs(3), 200)], status(200)).await;
    publish(&client, "jobs", ["late".to_string()]).await;
    let url = endpoint.url("/");
    let mut bridge = ToHttp::start(
        &broker,
        &[
            "--topic",
            "jobs",
            "--channel",
            "c",
            "--post",
            &url,
            "--http-timeout",
            "300ms",
            "--backoff",
            "50ms",
        ],
    );
    all_finished(&broker, "jobs", "c", 1).await;
    assert_eq!(endpoint.seen().len(), 2);
    let (exit, out) = bridge.terminate().await;
    assert!(exit.success(), "{exit}\n{out}");
    assert!(
        out.contains("delivered 1, failed 1, retried 1, dead-lettered 0"),
        "{out}"
    );
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_gives_back_the_rest_and_exits_zero() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let endpoint = Endpoint::start([slow(Duration::from_millis(1500), 200)], status(200)).await;
    publish(&client, "jobs", (1..=5).map(|i| format!("m{i}"))).await;
    let url = endpoint.url("/");
    let mut bridge = ToHttp::start(
        &broker,
        &[
            "--topic",
            "jobs",
            "--channel",
            "c",
            "--post",
            &url,
            "--concurrency",
            "1",
            "--max-in-flight",
            "5",
            "--backoff",
            "100ms",
        ],
    );
    eventually("the first request", || endpoint.seen().len() == 1).await;
    let (exit, out) = bridge.terminate().await;
    assert!(exit.success(), "{exit}\n{out}");
    assert_eq!(
        endpoint.seen().len(),
        1,
        "nothing new is sent after SIGTERM"
    );
    let stats = channel_stats(&broker, "jobs", "c").unwrap();
    assert_eq!(
        stats.finished, 1,
        "the request in flight was finished and FIN'd"
    );
    assert_eq!(stats.in_flight, 0);
    assert_eq!(
        stats.depth + stats.deferred,
        4,
        "the rest went back: {stats:?}"
    );
    assert!(
        out.contains("delivered 1, failed 0, retried 0, dead-lettered 0, returned 4"),
        "{out}"
    );
}
