//! Identity and access through the NSQ entry points: the NSQ TCP listener (raw sockets for
//! nsqd's exact error texts, `tokio-nsq` for a real library), an nsqd-style auth server,
//! client certificates on the `tls_v1` upgrade, and the nsqd HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quiver::broker::{BrokerStats, Principal};
use quiver::config::Config;
use quiver::transport::tls::Trust;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa};
use rcgen::{Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_nsq::{NSQConfigShared, NSQConsumer, NSQEvent, NSQProducer, NSQProducerConfig};

use crate::access::{secret, tokens, REVOKED, RULES};
use crate::auth_server::{grant, AuthServer};
use crate::nsq_tcp::{consumer, nsq_topic};
use crate::process::write_atomically;
use crate::support::{topic, TestBroker};

/// The overall deadline of anything a test waits for: generous, for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);
const RESPONSE: i32 = 0;
const ERROR: i32 = 1;
const MESSAGE: i32 = 2;

/// A [`TestBroker`] with tokens for alice, bob and carol and [`RULES`] in a rules file;
/// `configure` may change any of it.
struct Secured {
    test: TestBroker,
    nsq: SocketAddr,
    nsq_http: SocketAddr,
    rules: PathBuf,
    _dir: tempfile::TempDir,
}

impl Secured {
    async fn start(configure: impl FnOnce(&mut Config)) -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.toml");
        write_atomically(&rules, RULES);
        let path = rules.clone();
        let test = TestBroker::start_with(move |config| {
            config.rules_file = Some(path);
            config.auth.token = tokens(&["alice", "bob", "carol"]);
            configure(config);
        })
        .await;
        let (nsq, nsq_http) = (test.nsq_tcp.unwrap(), test.nsq_http.unwrap());
        Secured {
            test,
            nsq,
            nsq_http,
            rules,
            _dir: dir,
        }
    }

    fn stats(&self) -> BrokerStats {
        let internal = Principal::internal();
        self.test.broker().stats(&internal, None).unwrap()
    }

    /// Messages stored in `topic` (0 if it does not exist).
    fn stored(&self, topic: &str) -> u64 {
        self.stats().topic(topic).map_or(0, |t| t.message_count)
    }
}

/// A hand-driven NSQ connection, in the clear or over TLS.
struct Nsq<S> {
    stream: S,
}

impl Nsq<TcpStream> {
    async fn connect(addr: SocketAddr) -> Nsq<TcpStream> {
        let mut nsq = Nsq {
            stream: TcpStream::connect(addr).await.unwrap(),
        };
        nsq.send(b"  V2").await;
        nsq
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Nsq<S> {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next frame, skipping heartbeats; `None` at the end of the stream.
    async fn frame_or_end(&mut self) -> Option<(i32, Vec<u8>)> {
        loop {
            let frame = timeout(PATIENCE, read_frame(&mut self.stream))
                .await
                .expect("a frame or the end of the stream in time")?;
            if frame != (RESPONSE, b"_heartbeat_".to_vec()) {
                return Some(frame);
            }
        }
    }

    async fn frame(&mut self) -> (i32, Vec<u8>) {
        let frame = self.frame_or_end().await;
        frame.expect("a frame, not the end of the stream")
    }

    async fn response(&mut self) -> Vec<u8> {
        let (kind, data) = self.frame().await;
        let text = String::from_utf8_lossy(&data);
        assert_eq!(kind, RESPONSE, "expected a response, got {text:?}");
        data
    }

    async fn error(&mut self) -> String {
        let (kind, data) = self.frame().await;
        let text = String::from_utf8(data).unwrap();
        assert_eq!(kind, ERROR, "expected an error, got {text:?}");
        text
    }

    /// The broker closed the connection (cleanly or with a reset) with nothing more sent.
    async fn closed(&mut self) {
        let mut rest = Vec::new();
        let read = timeout(PATIENCE, self.stream.read_to_end(&mut rest))
            .await
            .expect("the broker closes the connection");
        if read.is_ok() {
            assert!(rest.is_empty(), "bytes after the last frame: {rest:?}");
        }
    }

    /// Sends `command`: `Ok` for an `OK`, else the error text.
    async fn command(&mut self, command: &[u8]) -> Result<(), String> {
        self.send(command).await;
        match self.frame().await {
            (RESPONSE, ok) if ok == b"OK" => Ok(()),
            (ERROR, text) => Err(String::from_utf8(text).unwrap()),
            other => panic!("unexpected answer: {other:?}"),
        }
    }

    /// IDENTIFY (with feature negotiation) or AUTH: the broker's JSON answer.
    async fn json(&mut self, verb: &str, body: &str) -> Value {
        self.send(&with_body(&format!("{verb}\n"), body.as_bytes()))
            .await;
        serde_json::from_slice(&self.response().await).unwrap()
    }

    async fn auth(&mut self, secret: &str) -> Value {
        self.json("AUTH", secret).await
    }

    async fn publish(&mut self, topic: &str, body: &str) -> Result<(), String> {
        let pub_ = with_body(&format!("PUB {topic}\n"), body.as_bytes());
        self.command(&pub_).await
    }

    /// SUB, then RDY once subscribed.
    async fn subscribe(&mut self, topic: &str, channel: &str) -> Result<(), String> {
        self.command(format!("SUB {topic} {channel}\n").as_bytes())
            .await?;
        self.send(b"RDY 10\n").await;
        Ok(())
    }

    /// The next message, finished: its body.
    async fn message(&mut self) -> String {
        let (kind, data) = self.frame().await;
        assert_eq!(kind, MESSAGE, "{:?}", String::from_utf8_lossy(&data));
        let id = data[10..26].to_vec();
        let mut fin = b"FIN ".to_vec();
        fin.extend_from_slice(&id);
        fin.push(b'\n');
        self.send(&fin).await;
        String::from_utf8(data[26..].to_vec()).unwrap()
    }
}

async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Option<(i32, Vec<u8>)> {
    let size = stream.read_i32().await.ok()?;
    let kind = stream.read_i32().await.ok()?;
    let mut data = vec![0; usize::try_from(size).ok()?.checked_sub(4)?];
    stream.read_exact(&mut data).await.ok()?;
    Some((kind, data))
}

fn with_body(line: &str, body: &[u8]) -> Vec<u8> {
    let mut out = line.as_bytes().to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// nsqd's fatal answer to an operation the principal may not do.
fn unauthorized(verb: &str, topic: &str, channel: &str) -> String {
    format!("E_UNAUTHORIZED AUTH failed for {verb} on {topic:?} {channel:?}")
}

/// The IDENTIFY that asks for the broker's JSON answer.
const NEGOTIATE: &str = r#"{"feature_negotiation":true}"#;

#[tokio::test]
async fn nsq_identify_says_auth_required_and_commands_before_auth_are_refused() {
    let broker = Secured::start(|_| {}).await;
    let mut nsq = Nsq::connect(broker.nsq).await;
    assert_eq!(nsq.json("IDENTIFY", NEGOTIATE).await["auth_required"], true);
    let refused = nsq.publish("orders", "m").await.unwrap_err();
    assert_eq!(refused, "E_AUTH_FIRST AUTH required before PUB");
    nsq.closed().await;

    let dpub = with_body("DPUB orders 1000\n", b"m");
    let mpub = with_body("MPUB orders\n", b"\0\0\0\x01\0\0\0\x01m");
    for (command, verb) in [(dpub, "DPUB"), (mpub, "MPUB")] {
        let mut nsq = Nsq::connect(broker.nsq).await;
        nsq.send(&command).await;
        assert_eq!(
            nsq.error().await,
            format!("E_AUTH_FIRST AUTH required before {verb}")
        );
        nsq.closed().await;
    }
    let mut nsq = Nsq::connect(broker.nsq).await;
    let refused = nsq.subscribe("orders", "billing").await.unwrap_err();
    assert_eq!(refused, "E_AUTH_FIRST AUTH required before SUB");
    nsq.closed().await;

    assert_eq!(broker.stored("orders"), 0);
    let access = broker.stats().access;
    assert_eq!((access.denied_publish, access.denied_subscribe), (3, 1));
}

#[tokio::test]
async fn nsq_auth_with_a_wrong_token_fails_and_closes_the_connection() {
    let broker = Secured::start(|_| {}).await;
    let mut nsq = Nsq::connect(broker.nsq).await;
    // The PUB behind the refused AUTH is never executed.
    let mut commands = with_body("AUTH\n", b"not-a-token");
    commands.extend(with_body("PUB orders\n", b"m"));
    nsq.send(&commands).await;
    assert_eq!(nsq.error().await, "E_AUTH_FAILED AUTH failed");
    nsq.closed().await;
    assert_eq!(broker.stats().access.auth_failures, 1);
    assert_eq!(broker.stored("orders"), 0);
}

#[tokio::test]
async fn nsq_token_without_the_permission_is_unauthorized() {
    let broker = Secured::start(|_| {}).await;
    let mut bob = Nsq::connect(broker.nsq).await;
    let reply = bob.auth(&secret("bob")).await;
    let expected = json!({"identity": "bob", "identity_url": "", "permission_count": 0});
    assert_eq!(reply, expected);
    bob.publish("other", "allowed").await.unwrap();
    let refused = bob.publish("orders", "m").await.unwrap_err();
    assert_eq!(refused, unauthorized("PUB", "orders", ""));
    bob.closed().await;

    let mut bob = Nsq::connect(broker.nsq).await;
    bob.auth(&secret("bob")).await;
    let refused = bob.subscribe("other", "c").await.unwrap_err();
    assert_eq!(refused, unauthorized("SUB", "other", "c"));
    bob.closed().await;

    // alice may consume `orders`, but only on channel `billing`.
    let mut alice = Nsq::connect(broker.nsq).await;
    alice.auth(&secret("alice")).await;
    let refused = alice.subscribe("orders", "audit").await.unwrap_err();
    assert_eq!(refused, unauthorized("SUB", "orders", "audit"));
    alice.closed().await;

    assert_eq!((broker.stored("orders"), broker.stored("other")), (0, 1));
    let access = broker.stats().access;
    assert_eq!((access.denied_publish, access.denied_subscribe), (1, 2));
}

#[tokio::test]
async fn nsq_token_with_the_permission_publishes_and_its_subscription_delivers() {
    let broker = Secured::start(|_| {}).await;
    let mut consumer = Nsq::connect(broker.nsq).await;
    consumer.json("IDENTIFY", NEGOTIATE).await;
    assert_eq!(consumer.auth(&secret("alice")).await["identity"], "alice");
    consumer.subscribe("orders", "billing").await.unwrap();
    let mut producer = Nsq::connect(broker.nsq).await;
    producer.auth(&secret("alice")).await;
    producer.publish("orders", "order-1").await.unwrap();
    assert_eq!(consumer.message().await, "order-1");
    assert_eq!(broker.stored("orders"), 1);
    // The subscription records who consumes.
    let stats = broker.stats();
    let billing = stats.topic("orders").unwrap().channel("billing").unwrap();
    assert_eq!(billing.consumers[0].principal, "alice");
}

/// A `tokio-nsq` configuration presenting `secret` with AUTH.
fn credentials(secret: &str) -> NSQConfigShared {
    NSQConfigShared::new().set_credentials(secret.as_bytes().to_vec())
}

/// A producer, once its handshake (IDENTIFY, AUTH) is over: whether it became healthy.
async fn handshake(addr: SocketAddr, shared: NSQConfigShared) -> (NSQProducer, bool) {
    let config = NSQProducerConfig::new(addr.to_string()).set_shared(shared);
    let mut producer = config.build();
    match timeout(PATIENCE, producer.consume()).await {
        Ok(Some(NSQEvent::Healthy())) => (producer, true),
        Ok(Some(NSQEvent::Unhealthy())) | Ok(None) => (producer, false),
        other => panic!("expected the handshake to end, got {other:?}"),
    }
}

async fn healthy_producer(addr: SocketAddr, shared: NSQConfigShared) -> NSQProducer {
    let (producer, healthy) = handshake(addr, shared).await;
    assert!(healthy, "the broker refused the producer's handshake");
    producer
}

/// Publishes and waits for the broker's answer: `true` for OK, `false` when the broker
/// closed the connection instead.
async fn publish(producer: &mut NSQProducer, topic: &str, body: &str) -> bool {
    let body = body.as_bytes().to_vec();
    producer.publish(&nsq_topic(topic), body).await.unwrap();
    loop {
        match timeout(PATIENCE, producer.consume()).await {
            Ok(Some(NSQEvent::Ok())) => return true,
            Ok(Some(NSQEvent::Unhealthy())) | Ok(None) => return false,
            Ok(Some(NSQEvent::Healthy())) => continue,
            other => panic!("expected an answer to PUB, got {other:?}"),
        }
    }
}

/// The next message's body, finished.
async fn consume(consumer: &mut NSQConsumer) -> String {
    let message = timeout(PATIENCE, consumer.consume_filtered())
        .await
        .expect("a message in time")
        .expect("the consumer is open");
    let body = String::from_utf8(message.body.clone()).unwrap();
    message.finish().await;
    body
}

/// A consumer whose SUB the broker refuses: it turns unhealthy without delivering.
async fn refused_consumer(mut consumer: NSQConsumer) {
    match timeout(PATIENCE, consumer.consume()).await {
        Ok(Some(NSQEvent::Unhealthy())) | Ok(None) => {}
        other => panic!("expected the SUB to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn tokio_nsq_with_a_token_publishes_consumes_and_is_refused_elsewhere() {
    let broker = Secured::start(|_| {}).await;
    let alice = credentials(&secret("alice"));
    let mut orders = consumer(broker.nsq, "orders", "billing", alice.clone());
    let mut producer = healthy_producer(broker.nsq, alice.clone()).await;
    assert!(publish(&mut producer, "orders", "from-alice").await);
    assert_eq!(consume(&mut orders).await, "from-alice");

    // A topic alice has no grant for: the broker closes her producer's connection.
    assert!(!publish(&mut producer, "other", "nope").await);
    refused_consumer(consumer(broker.nsq, "orders", "audit", alice)).await;
    // Without credentials, and with a wrong secret.
    let mut anonymous = healthy_producer(broker.nsq, NSQConfigShared::new()).await;
    assert!(!publish(&mut anonymous, "orders", "nope").await);
    let nothing = NSQConfigShared::new();
    refused_consumer(consumer(broker.nsq, "orders", "billing", nothing)).await;
    assert!(!handshake(broker.nsq, credentials("wrong")).await.1);

    assert_eq!((broker.stored("orders"), broker.stored("other")), (1, 0));
    let access = broker.stats().access;
    assert_eq!((access.denied_publish, access.denied_subscribe), (2, 2));
    assert_eq!(access.auth_failures, 1);
}

#[tokio::test]
async fn revoking_subscribe_in_a_rules_reload_closes_the_open_nsq_subscription() {
    let broker = Secured::start(|_| {}).await;
    let mut alice = Nsq::connect(broker.nsq).await;
    alice.auth(&secret("alice")).await;
    alice.subscribe("orders", "billing").await.unwrap();
    let mut producer = Nsq::connect(broker.nsq).await;
    producer.auth(&secret("alice")).await;
    producer.publish("orders", "before").await.unwrap();
    assert_eq!(alice.message().await, "before");

    write_atomically(&broker.rules, REVOKED);
    let carol = format!("Bearer {}", secret("carol"));
    let auth = [("Authorization", carol.as_str())];
    let (status, body) = http(broker.test.http, "POST", "/rules/reload", &auth).await;
    assert_eq!(status, 200, "{body}");

    // The connection that may no longer consume ends with a fatal error, then closes.
    let last = alice.frame_or_end().await;
    let (kind, text) = last.expect("a fatal error before the connection closes, not a bare close");
    let text = String::from_utf8(text).unwrap();
    assert_eq!(kind, ERROR, "{text}");
    assert!(
        text.starts_with("E_UNAUTHORIZED ") && text.contains("orders"),
        "{text}"
    );
    alice.closed().await;
    // Publishing is still granted; subscribing again is not.
    producer.publish("orders", "after").await.unwrap();
    let mut again = Nsq::connect(broker.nsq).await;
    again.auth(&secret("alice")).await;
    let refused = again.subscribe("orders", "billing").await.unwrap_err();
    assert_eq!(refused, unauthorized("SUB", "orders", "billing"));
}

/// Publishes to `topic` every 100 ms until the broker refuses: how many were accepted, and
/// the refusal. For an auth server's answer to expire; fails the test after [`PATIENCE`].
async fn publish_until_refused(nsq: &mut Nsq<TcpStream>, topic: &str) -> (u64, String) {
    let deadline = Instant::now() + PATIENCE;
    let mut accepted = 0;
    loop {
        assert!(Instant::now() < deadline, "PUB was never refused");
        match nsq.publish(topic, "more").await {
            Ok(()) => accepted += 1,
            Err(refused) => return (accepted, refused),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Auth server settings for `server`, with neither tokens nor a rules file: only what the
/// auth server answers grants anything.
fn only_auth_server(server: &AuthServer) -> impl FnOnce(&mut Config) {
    let address = server.addr.to_string();
    move |config| {
        config.auth.token.clear();
        config.rules_file = None;
        config.auth.auth_http_address = vec![address];
    }
}

#[tokio::test]
async fn tokio_nsq_authenticates_with_an_auth_server_secret() {
    let auth = AuthServer::start().await;
    auth.answer(
        "s-dave",
        grant(3600, "dave", "^events$", &["publish", "subscribe"]),
    );
    let broker = Secured::start(only_auth_server(&auth)).await;
    let dave = credentials("s-dave");
    let mut events = consumer(broker.nsq, "events", "ch", dave.clone());
    let mut producer = healthy_producer(broker.nsq, dave.clone()).await;
    assert!(publish(&mut producer, "events", "from-dave").await);
    assert_eq!(consume(&mut events).await, "from-dave");
    // `^events$` does not match `events2`; the answer grants nothing else.
    assert!(!publish(&mut producer, "events2", "nope").await);
    assert!(!handshake(broker.nsq, credentials("s-unknown")).await.1);

    assert_eq!((broker.stored("events"), broker.stored("events2")), (1, 0));
    assert_eq!(broker.stats().access.auth_failures, 1);
    let secrets: Vec<String> = auth.queries().iter().map(|q| q["secret"].clone()).collect();
    assert!(secrets.iter().all(|s| s == "s-dave" || s == "s-unknown"));
    assert!(secrets.len() >= 3, "{secrets:?}");
}

#[tokio::test]
async fn an_expired_auth_server_answer_is_asked_again_on_the_next_publish() {
    let auth = AuthServer::start().await;
    auth.answer("s-erin", grant(1, "erin", "^events$", &["publish"]));
    let broker = Secured::start(only_auth_server(&auth)).await;
    let mut erin = Nsq::connect(broker.nsq).await;
    assert_eq!(erin.auth("s-erin").await["permission_count"], 1);
    erin.publish("events", "first").await.unwrap();
    let asked = auth.asked();

    // From now on the secret may publish `other` only; once the 1 s answer expires, the
    // next PUB asks again and is refused.
    auth.answer("s-erin", grant(1, "erin", "^other$", &["publish"]));
    let (accepted, refused) = publish_until_refused(&mut erin, "events").await;
    assert_eq!(refused, unauthorized("PUB", "events", ""));
    erin.closed().await;
    assert!(auth.asked() > asked, "the auth server was not asked again");
    assert_eq!(broker.stored("events"), 1 + accepted);
}

#[tokio::test]
async fn an_auth_server_that_is_down_fails_auth_and_nothing_is_published() {
    let mut auth = AuthServer::start().await;
    auth.answer("s-finn", grant(1, "finn", "^events$", &["publish"]));
    let broker = Secured::start(only_auth_server(&auth)).await;
    let mut finn = Nsq::connect(broker.nsq).await;
    finn.auth("s-finn").await;
    finn.publish("events", "first").await.unwrap();
    auth.stop().await;

    // Once the answer expires, asking again fails: the next PUB is refused, not stored.
    let (accepted, refused) = publish_until_refused(&mut finn, "events").await;
    assert_eq!(refused, "E_AUTH_FAILED AUTH failed");
    finn.closed().await;

    // A new connection cannot authenticate at all.
    let mut again = Nsq::connect(broker.nsq).await;
    let mut commands = with_body("AUTH\n", b"s-finn");
    commands.extend(with_body("PUB events\n", b"m"));
    again.send(&commands).await;
    assert_eq!(again.error().await, "E_AUTH_FAILED AUTH failed");
    again.closed().await;
    assert!(!handshake(broker.nsq, credentials("s-finn")).await.1);

    assert_eq!(broker.stored("events"), 1 + accepted);
    assert_eq!(broker.stats().access.auth_failures, 3);
}

/// A CA for client certificates, written to `dir/clients.pem` for `tls.client_ca`.
struct ClientCa {
    issuer: Issuer<'static, KeyPair>,
    path: PathBuf,
}

impl ClientCa {
    fn new(dir: &std::path::Path) -> ClientCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join("clients.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        ClientCa {
            issuer: Issuer::new(params, key),
            path,
        }
    }

    /// A TLS client configuration presenting a certificate with `cn` and the DNS SAN `san`,
    /// trusting the broker's certificate.
    fn client(&self, broker: &Secured, cn: &str, san: &str) -> rustls::ClientConfig {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![san.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let Trust::CaFile(path) = &broker.test.options.trust else {
            panic!("the harness trusts the broker's certificate file");
        };
        let pem = std::fs::read(path).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap()
    }
}

type TlsNsq = Nsq<tokio_rustls::client::TlsStream<TcpStream>>;

/// Negotiates `tls_v1` in the clear, then upgrades with `config`: the IDENTIFY answer and
/// the connection.
async fn upgrade(addr: SocketAddr, config: rustls::ClientConfig) -> (Value, TlsNsq) {
    let mut nsq = Nsq::connect(addr).await;
    let reply = nsq
        .json("IDENTIFY", r#"{"feature_negotiation":true,"tls_v1":true}"#)
        .await;
    assert_eq!(reply["tls_v1"], true);
    let name = ServerName::try_from("localhost").unwrap();
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, nsq.stream);
    let stream = timeout(PATIENCE, handshake).await.unwrap().unwrap();
    let mut nsq = Nsq { stream };
    assert_eq!(nsq.response().await, b"OK");
    (reply, nsq)
}

#[tokio::test]
async fn a_client_certificate_publishes_what_its_identity_is_granted_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::new(dir.path());
    // Client certificates are the only way in: there is nothing to AUTH with.
    let path = ca.path.clone();
    let broker = Secured::start(|config| {
        config.auth.token.clear();
        config.tls.client_ca = Some(path);
    })
    .await;
    let (reply, mut billing) = upgrade(broker.nsq, ca.client(&broker, "billing", "billing")).await;
    assert_eq!(reply["auth_required"], false);
    billing.publish("orders", "by-certificate").await.unwrap();
    let refused = billing.publish("other", "m").await.unwrap_err();
    assert_eq!(refused, unauthorized("PUB", "other", ""));
    billing.closed().await;

    let (_, mut stranger) = upgrade(broker.nsq, ca.client(&broker, "nobody", "nobody")).await;
    stranger.send(&with_body("AUTH\n", b"anything")).await;
    assert_eq!(stranger.error().await, "E_AUTH_DISABLED AUTH disabled");
    assert_eq!((broker.stored("orders"), broker.stored("other")), (1, 0));
}

#[tokio::test]
async fn the_auth_server_is_asked_with_nsqds_parameters() {
    let auth = AuthServer::start().await;
    auth.answer("s&gus =", grant(3600, "gus", "^events$", &["publish"]));
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::new(dir.path());
    let path = ca.path.clone();
    let broker = Secured::start(|config| {
        only_auth_server(&auth)(config);
        config.tls.client_ca = Some(path);
    })
    .await;
    let asked = |tls: &str, common_name: &str| {
        let query = auth.queries().pop().unwrap();
        let got = ["remote_ip", "tls", "secret", "common_name"].map(|k| query.get(k).cloned());
        let expected = ["127.0.0.1", tls, "s&gus =", common_name].map(|v| Some(v.to_owned()));
        assert_eq!(got, expected, "{query:?}");
    };
    let mut plain = Nsq::connect(broker.nsq).await;
    let reply = plain.auth("s&gus =").await;
    let expected = json!({
        "identity": "gus",
        "identity_url": "https://people.example/gus",
        "permission_count": 1,
    });
    assert_eq!(reply, expected);
    asked("false", "");
    plain.publish("events", "m").await.unwrap();

    // Over TLS with a client certificate: nsqd sends its subject's CN, not the SAN.
    let config = ca.client(&broker, "reports-cn", "reports.example");
    let (reply, mut tls) = upgrade(broker.nsq, config).await;
    assert_eq!(reply["auth_required"], true);
    assert_eq!(tls.auth("s&gus =").await["identity"], "gus");
    asked("true", "reports-cn");
    tls.publish("events", "m").await.unwrap();
    assert_eq!(broker.stored("events"), 2);
}

/// One HTTP/1.1 request with `headers` (a `Host` naming `addr` unless given): the status
/// and the body.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 1\r\nConnection: close\r\n\r\nm");
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = timeout(PATIENCE, exchange).await.unwrap().unwrap();
    let response = String::from_utf8(response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

#[tokio::test]
async fn nsqd_http_publish_needs_a_token_with_the_permission() {
    let broker = Secured::start(|_| {}).await;
    let (bob, alice) = (secret("bob"), secret("alice"));
    let cases = [
        (None, 401, r#"{"message":"AUTH_REQUIRED"}"#),
        (Some("wrong"), 401, r#"{"message":"AUTH_FAILED"}"#),
        (Some(bob.as_str()), 403, r#"{"message":"UNAUTHORIZED"}"#),
        (Some(alice.as_str()), 200, "OK"),
    ];
    for (token, status, body) in cases {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<_> = bearer
            .iter()
            .map(|b| ("Authorization", b.as_str()))
            .collect();
        let answer = http(broker.nsq_http, "POST", "/pub?topic=orders", &headers).await;
        assert_eq!(answer, (status, body.to_owned()), "{token:?}");
    }
    assert_eq!(broker.stored("orders"), 1);
    let access = broker.stats().access;
    assert_eq!((access.denied_publish, access.auth_failures), (2, 1));
}

#[tokio::test]
async fn nsqd_http_refuses_cross_site_requests_and_serves_same_origin_ones() {
    let broker = Secured::start(|_| {}).await;
    let internal = Principal::internal();
    let victim = topic("victim");
    broker
        .test
        .broker()
        .create_topic(&internal, &victim)
        .unwrap();
    let port = broker.nsq_http.port();
    let carol = format!("Bearer {}", secret("carol"));
    let attacker = format!("attacker.example:{port}");
    let ours = broker.nsq_http.to_string();
    let same_origin = format!("http://{ours}");
    let delete = "/topic/delete?topic=victim";
    let forbidden = (403, r#"{"message":"FORBIDDEN"}"#.to_owned());
    // A DNS-rebinding page, a cross-site form post, a cross-site fetch: refused, even with
    // the admin's token.
    let evil = ("Origin", "http://evil.example");
    let token = ("Authorization", carol.as_str());
    let cross_sites = [
        vec![("Host", attacker.as_str()), evil],
        vec![("Host", attacker.as_str()), evil, token],
        vec![evil, token],
        vec![("Sec-Fetch-Site", "cross-site"), token],
    ];
    for headers in cross_sites {
        let answer = http(broker.nsq_http, "POST", delete, &headers).await;
        assert_eq!(answer, forbidden, "{headers:?}");
    }
    assert!(broker.stats().topic("victim").is_some());

    let same = [("Origin", same_origin.as_str()), token];
    let (status, body) = http(broker.nsq_http, "POST", delete, &same).await;
    assert_eq!(status, 200, "{body}");
    assert!(broker.stats().topic("victim").is_none());
}

#[tokio::test]
async fn nsqd_http_publish_is_refused_once_a_reload_revokes_it() {
    let broker = Secured::start(|_| {}).await;
    let alice = format!("Bearer {}", secret("alice"));
    let alice = [("Authorization", alice.as_str())];
    let nsq_http = broker.nsq_http;
    let ok = http(nsq_http, "POST", "/pub?topic=orders", &alice).await;
    assert_eq!(ok, (200, "OK".to_owned()));

    write_atomically(
        &broker.rules,
        RULES.replace("\"publish\", \"subscribe\"", "\"subscribe\""),
    );
    let carol = format!("Bearer {}", secret("carol"));
    let (status, body) = http(
        broker.test.http,
        "POST",
        "/rules/reload",
        &[("Authorization", carol.as_str())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let refused = http(nsq_http, "POST", "/pub?topic=orders", &alice).await;
    assert_eq!(refused, (403, r#"{"message":"UNAUTHORIZED"}"#.to_owned()));
    assert_eq!(broker.stored("orders"), 1);
}
