//! The peer endpoint between cluster nodes: real endpoints on 127.0.0.1:0 in one process,
//! certificates made by `quiver cluster init` in a temp directory; and the command itself.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver::cluster::identity::init::{self, InitOptions};
use quiver::cluster::identity::{load_identity, ClusterCa, ClusterIdentity, NodeName};
use quiver::cluster::peer::{self, close_code, wire, PeerEndpoint};
use quiver::cluster::settings::{Bootstrap, ClusterSettings};
use quiver::cluster::{BoxFuture, NodeId, PeerError, PeerHandler};
use quiver::config::Config;

use crate::process::BIN;
use crate::support::{eventually, DEADLINE};

const CALL: Duration = Duration::from_secs(10);

/// Answers `<from>:<request>`, or an error for the request `fail`; counts its calls.
#[derive(Debug, Default)]
struct Echo {
    calls: AtomicUsize,
}

impl PeerHandler for Echo {
    fn handle(&self, from: NodeId, request: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if request.as_ref() == b"fail" {
                return Err("asked to fail".to_owned());
            }
            let mut answer = format!("{from}:").into_bytes();
            answer.extend_from_slice(&request);
            Ok(Bytes::from(answer))
        })
    }
}

impl Echo {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A cluster directory written by `init`.
struct TestCluster {
    dir: tempfile::TempDir,
    cluster_id: String,
}

impl TestCluster {
    fn new(nodes: u16) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let written = init::init_cluster(&InitOptions::new(dir.path(), nodes)).unwrap();
        TestCluster {
            dir,
            cluster_id: written.cluster_id,
        }
    }

    /// Node `node`'s `[cluster]` section from its config file, on an ephemeral port.
    fn settings(&self, node: NodeId) -> ClusterSettings {
        let path = self.dir.path().join(format!("node-{node}.toml"));
        let mut settings = Config::from_file(&path).unwrap().cluster.unwrap();
        settings.listen = "127.0.0.1:0".parse().unwrap();
        settings
    }

    fn identity(&self, node: NodeId) -> ClusterIdentity {
        load_identity(&self.settings(node)).unwrap()
    }

    async fn start(&self, node: NodeId) -> TestNode {
        log_if_asked();
        TestNode::start(&self.settings(node), &self.identity(node)).await
    }
}

struct TestNode {
    endpoint: PeerEndpoint,
    echo: Arc<Echo>,
}

impl TestNode {
    async fn start(settings: &ClusterSettings, identity: &ClusterIdentity) -> TestNode {
        let echo = Arc::new(Echo::default());
        let endpoint = PeerEndpoint::bind(settings, identity, echo.clone())
            .await
            .unwrap();
        TestNode { endpoint, echo }
    }

    fn addr(&self) -> String {
        self.endpoint.local_addr().to_string()
    }

    /// Calls `to` with `request`.
    async fn call(&self, to: &TestNode, request: &str) -> Result<Bytes, PeerError> {
        self.endpoint
            .client(to.endpoint.node_id(), to.addr())
            .call(Bytes::from(request.to_owned()), CALL)
            .await
    }
}

/// With `QUIVER_TEST_LOG=1`, the endpoints' log lines go to the test's output.
fn log_if_asked() {
    if std::env::var_os("QUIVER_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("quiver=debug")
            .with_test_writer()
            .try_init();
    }
}

fn refusal(result: Result<Bytes, PeerError>) -> String {
    match result {
        Err(PeerError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn calls_work_both_ways_and_name_the_caller() {
    let cluster = TestCluster::new(3);
    let nodes = [
        cluster.start(1).await,
        cluster.start(2).await,
        cluster.start(3).await,
    ];
    // Host names are resolved when connecting.
    let by_name = format!("localhost:{}", nodes[0].endpoint.local_addr().port());
    let answer = nodes[1]
        .endpoint
        .client(1, by_name)
        .call(Bytes::from_static(b"named"), CALL)
        .await
        .unwrap();
    assert_eq!(answer, "2:named".as_bytes());
    let mut calls = Vec::new();
    for from in &nodes {
        for to in &nodes {
            if from.endpoint.node_id() != to.endpoint.node_id() {
                calls.push(async move { (from.endpoint.node_id(), from.call(to, "hi").await) });
            }
        }
    }
    for (from, answer) in futures_join(calls).await {
        assert_eq!(answer.unwrap(), format!("{from}:hi").as_bytes());
    }
    let calls: Vec<usize> = nodes.iter().map(|n| n.echo.calls()).collect();
    assert_eq!(calls, [3, 2, 2]);
    let err = nodes[0].call(&nodes[1], "fail").await.unwrap_err();
    assert_eq!(
        err,
        PeerError::Remote {
            node: 2,
            reason: "asked to fail".into()
        }
    );
}

/// Runs the futures concurrently on this task and returns their outputs in order.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_are_in_flight_at_once_on_one_connection() {
    const CALLS: usize = 1000;
    let cluster = TestCluster::new(2);
    let barrier = Arc::new(tokio::sync::Barrier::new(CALLS));
    let handler = Arc::new(Barrier(barrier));
    let callee = PeerEndpoint::bind(&cluster.settings(1), &cluster.identity(1), handler)
        .await
        .unwrap();
    let caller = cluster.start(2).await;
    let client = caller.endpoint.client(1, callee.local_addr().to_string());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let client = client.clone();
        tasks.spawn(async move {
            let request = Bytes::from(format!("call {i}"));
            let answer = client.call(request.clone(), DEADLINE).await;
            (request, answer)
        });
    }
    let mut answered = 0;
    while let Some(joined) = tasks.join_next().await {
        let (request, answer) = joined.unwrap();
        assert_eq!(answer.unwrap(), request);
        answered += 1;
    }
    assert_eq!(answered, CALLS);
}

/// Answers each request with itself once `CALLS` requests wait in the handler together:
/// the calls can only finish if they are all in flight at once.
struct Barrier(Arc<tokio::sync::Barrier>);

impl PeerHandler for Barrier {
    fn handle(&self, _from: NodeId, request: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let barrier = self.0.clone();
        Box::pin(async move {
            barrier.wait().await;
            Ok(request)
        })
    }
}

#[tokio::test]
async fn a_node_whose_certificate_has_a_foreign_ca_is_refused_on_both_sides() {
    let ours = TestCluster::new(2);
    let theirs = TestCluster::new(2);
    let node1 = ours.start(1).await;

    // Their node trusts its own CA, so it refuses our node's certificate.
    let foreign = theirs.start(2).await;
    let reason = refusal(foreign.call(&node1, "hi").await);
    assert!(reason.contains("not signed by the cluster CA"), "{reason}");

    // With our CA as its root it trusts us, and our node refuses its certificate.
    let mut impostor = theirs.identity(2);
    impostor.ca = ours.identity(1).ca;
    impostor.cluster_id = ours.cluster_id.clone();
    let impostor = TestNode::start(&ours.settings(2), &impostor).await;
    let reason = refusal(impostor.call(&node1, "hi").await);
    assert!(reason.contains("not signed by its cluster CA"), "{reason}");

    // Every later call is refused at once: no hang, no tight retry loop.
    let began = Instant::now();
    refusal(impostor.call(&node1, "again").await);
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(node1.echo.calls(), 0);
}

#[tokio::test]
async fn a_node_of_another_cluster_under_the_same_ca_is_refused_with_the_reason() {
    let cluster = TestCluster::new(2);
    let node1 = cluster.start(1).await;
    let dir = cluster.dir.path();
    let ca = ClusterCa::load(
        &cluster.cluster_id,
        &dir.join("ca.pem"),
        &dir.join("ca.key"),
    )
    .unwrap();
    let pem = ca
        .issue(&NodeName::new("elsewhere", 4), "127.0.0.1")
        .unwrap();
    std::fs::write(dir.join("other-4.pem"), pem.cert_pem).unwrap();
    std::fs::write(dir.join("other-4.key"), pem.key_pem).unwrap();
    let mut settings = ClusterSettings::new(
        4,
        "elsewhere",
        dir.join("ca.pem"),
        dir.join("other-4.pem"),
        dir.join("other-4.key"),
    );
    settings.listen = "127.0.0.1:0".parse().unwrap();
    let other = TestNode::start(&settings, &load_identity(&settings).unwrap()).await;
    let reason = refusal(other.call(&node1, "hi").await);
    let expected = format!(
        "node 4 belongs to cluster elsewhere, this is cluster {}",
        cluster.cluster_id
    );
    assert_eq!(reason, expected);
    let err = other.endpoint.probe(1, &node1.addr()).await.unwrap_err();
    assert!(
        matches!(&err, PeerError::Refused { reason, .. } if *reason == expected),
        "{err:?}"
    );
    assert_eq!(node1.echo.calls(), 0);
}

#[tokio::test]
async fn a_second_node_with_an_id_in_use_is_refused_until_the_first_is_gone() {
    let cluster = TestCluster::new(2);
    let node1 = cluster.start(1).await;
    let node2 = cluster.start(2).await;
    node2.call(&node1, "first").await.unwrap();

    let twin = cluster.start(2).await;
    let reason = refusal(twin.call(&node1, "twin").await);
    let expected = format!("node id 2 is already in use by a node at {}", node2.addr());
    assert_eq!(reason, expected);
    let err = twin.endpoint.probe(1, &node1.addr()).await.unwrap_err();
    assert!(
        matches!(&err, PeerError::Refused { reason, .. } if reason.contains("already in use")),
        "{err:?}"
    );
    assert_eq!(node1.echo.calls(), 1);
    node2.call(&node1, "still here").await.unwrap();

    node2.endpoint.close().await;
    let began = Instant::now();
    loop {
        match twin.call(&node1, "now me").await {
            Ok(answer) => {
                assert_eq!(answer, "2:now me".as_bytes());
                break;
            }
            Err(PeerError::Refused { .. }) => {}
            Err(other) => panic!("{other:?}"),
        }
        assert!(
            began.elapsed() < DEADLINE,
            "still refused after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_restarted_after_a_crash_is_welcomed_not_refused() {
    let cluster = TestCluster::new(3);
    let node1 = cluster.start(1).await;
    let (settings, identity, node1_addr) = (cluster.settings(3), cluster.identity(3), node1.addr());
    // Node 3 runs on a runtime of its own, which then vanishes without a word: its
    // connection stays open at node 1 until node 1 finds out it is dead.
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let crashed = runtime.block_on(async {
            let node3 = TestNode::start(&settings, &identity).await;
            let client = node3.endpoint.client(1, node1_addr);
            client
                .call(Bytes::from_static(b"before"), CALL)
                .await
                .unwrap();
            node3
        });
        drop(runtime);
        // Dropping it would close its connections politely; a crash does not.
        std::mem::forget(crashed);
    })
    .await
    .unwrap();
    assert_eq!(node1.echo.calls(), 1);

    let node3 = cluster.start(3).await;
    let answer = node3.call(&node1, "after").await.unwrap();
    assert_eq!(answer, "3:after".as_bytes());
}

#[tokio::test]
async fn a_peer_sending_garbage_is_disconnected_and_others_keep_working() {
    let cluster = TestCluster::new(3);
    let node1 = cluster.start(1).await;
    let node2 = cluster.start(2).await;
    node2.call(&node1, "before").await.unwrap();
    let raw = RawPeer::new(&cluster.identity(3));

    // Not even a frame: "GET " read as a length is far over the Hello's limit.
    let conn = raw.connect(&node1).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_protocol_close(&conn).await;

    // A frame, but not a Hello.
    let conn = raw.connect(&node1).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&wire::frame(b"HELO from a stranger"))
        .await
        .unwrap();
    assert_protocol_close(&conn).await;

    // A good Hello, then a call whose frame announces 4 GiB.
    let conn = raw.connect(&node1).await;
    raw.hello(&conn, &cluster.cluster_id).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0xff; 4]).await.unwrap();
    assert_protocol_close(&conn).await;

    node2.call(&node1, "after").await.unwrap();
    assert_eq!(node1.echo.calls(), 2);
}

/// A node that speaks `quiver-peer/1` by hand, as node 3.
struct RawPeer {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl RawPeer {
    fn new(identity: &ClusterIdentity) -> RawPeer {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = peer::client_config(identity, Some(1)).unwrap();
        RawPeer { endpoint, config }
    }

    async fn connect(&self, to: &TestNode) -> quinn::Connection {
        self.endpoint
            .connect_with(self.config.clone(), to.endpoint.local_addr(), "quiver-peer")
            .unwrap()
            .await
            .unwrap()
    }

    async fn hello(&self, conn: &quinn::Connection, cluster_id: &str) {
        let hello = wire::Hello {
            cluster_id: cluster_id.to_owned(),
            node_id: 3,
            nonce: 33,
            advertise: self.endpoint.local_addr().unwrap().to_string(),
        };
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&wire::frame(&hello.encode())).await.unwrap();
        send.finish().unwrap();
        let answer = recv.read_to_end(wire::MAX_HANDSHAKE + 4).await.unwrap();
        let answer = wire::Answer::decode(&answer[4..]).unwrap();
        assert!(
            matches!(answer, wire::Answer::Welcome { node_id: 1, .. }),
            "{answer:?}"
        );
    }
}

async fn assert_protocol_close(conn: &quinn::Connection) {
    let closed = tokio::time::timeout(CALL, conn.closed()).await.unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code.into_inner(),
                close_code::PROTOCOL,
                "{close:?}"
            )
        }
        other => panic!("expected a protocol close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_call_to_a_silent_address_ends_within_its_timeout() {
    let cluster = TestCluster::new(2);
    let node2 = cluster.start(2).await;
    // Bound and never answering: a hung node, or a dead one whose port nobody took.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = node2
        .endpoint
        .client(1, silent.local_addr().unwrap().to_string());
    for _ in 0..2 {
        let began = Instant::now();
        let err = client
            .call(Bytes::from_static(b"hello?"), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                PeerError::Timeout { node: 1, .. } | PeerError::Unreachable { node: 1, .. }
            ),
            "{err:?}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "{:?}",
            began.elapsed()
        );
    }
}

#[tokio::test]
async fn a_request_over_the_frame_limit_is_refused_before_it_is_sent() {
    let cluster = TestCluster::new(2);
    let node1 = cluster.start(1).await;
    let node2 = cluster.start(2).await;
    let client = node2.endpoint.client(1, node1.addr());
    let huge = Bytes::from(vec![0u8; wire::MAX_BODY + 1]);
    let err = client.call(huge, CALL).await.unwrap_err();
    assert!(
        matches!(err, PeerError::TooLarge { node: 1, .. }),
        "{err:?}"
    );
    assert_eq!(node1.echo.calls(), 0);
}

#[tokio::test]
async fn a_client_connects_again_after_its_peer_restarts() {
    let cluster = TestCluster::new(2);
    let node1 = cluster.start(1).await;
    let node2 = cluster.start(2).await;
    let client = node2.endpoint.client(1, node1.addr());
    client.call(Bytes::from_static(b"one"), CALL).await.unwrap();
    let mut settings = cluster.settings(1);
    settings.listen = node1.endpoint.local_addr();
    node1.endpoint.close().await;
    drop(node1);
    // The old endpoint lets go of its port once its connections have drained.
    let began = Instant::now();
    let echo = Arc::new(Echo::default());
    let identity = cluster.identity(1);
    let _endpoint = loop {
        match PeerEndpoint::bind(&settings, &identity, echo.clone()).await {
            Ok(endpoint) => break endpoint,
            Err(err) => assert!(began.elapsed() < DEADLINE, "{err:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let began = Instant::now();
    while client.call(Bytes::from_static(b"two"), CALL).await.is_err() {
        assert!(began.elapsed() < DEADLINE, "no answer after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("the restarted node's call", || echo.calls() == 1).await;
}

#[test]
fn cluster_init_writes_a_config_per_node_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("cluster")
            .arg("init")
            .arg("--dir")
            .arg(&cluster)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--nodes", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for file in [
        "ca.pem",
        "ca.key",
        "node-1.pem",
        "node-3.key",
        "node-2.toml",
    ] {
        assert!(stdout.contains(file), "{stdout}");
        assert!(cluster.join(file).exists(), "{file}");
    }
    assert!(stdout.contains("quiver serve --config"), "{stdout}");
    let mut cluster_ids = Vec::new();
    for id in 1..=3 {
        let settings = load_node(&cluster, id);
        assert!(matches!(settings.bootstrap(), Bootstrap::Members(m) if m.len() == 3));
        cluster_ids.push(settings.cluster_id);
    }
    cluster_ids.dedup();
    assert_eq!(cluster_ids.len(), 1);

    let again = run(&["--nodes", "3"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("ca.pem") && err.contains("--force"), "{err}");

    let out = run(&["--add-node", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let settings = load_node(&cluster, 4);
    assert_eq!(settings.bootstrap(), Bootstrap::Join("127.0.0.1:7500"));
    assert_eq!(settings.cluster_id, cluster_ids[0]);
}

/// Node `id`'s config file: valid, naming the node, with a loadable identity.
fn load_node(cluster: &Path, id: NodeId) -> ClusterSettings {
    let config = Config::from_file(&cluster.join(format!("node-{id}.toml"))).unwrap();
    config.validate().unwrap();
    let settings = config.cluster.unwrap();
    assert_eq!(settings.node_id, id);
    let identity = load_identity(&settings).unwrap();
    assert_eq!(identity.node_id, id);
    settings
}
