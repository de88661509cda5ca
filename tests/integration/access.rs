//! Identity and access through the QUIC listener and the admin HTTP API: tokens, client
//! certificates, grants from the rules file and their revocation, cross-site refusals, and
//! the refusal to serve a network without authentication.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quiver::auth::{hash_token, TokenConfig};
use quiver::broker::Principal;
use quiver::client::{Client, ClientError, SubEvent, SubscribeOptions};
use quiver::config::Config;
use quiver::message::NewMessage;
use quiver::protocol::{AdminRequest, ErrorCode};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

use crate::process::{write_atomically, BIN};
use crate::support::{channel, next_event, next_message, topic, TestBroker};

const SOON: Duration = Duration::from_secs(20);

/// Grants: alice publishes and consumes `orders` (channel `billing` only); bob publishes
/// `other`; the certificate identity `billing` publishes `orders`; the `ops` group (carol)
/// administers everything. Shared with the NSQ entry points' tests.
pub(crate) const RULES: &str = r#"
[groups]
ops = ["carol"]

[[grant]]
to = ["alice"]
topics = ["orders"]
channels = ["billing"]
permissions = ["publish", "subscribe"]

[[grant]]
to = ["bob"]
topics = ["other"]
permissions = ["publish"]

[[grant]]
to = ["billing"]
topics = ["orders"]
permissions = ["publish"]

[[grant]]
to = ["group:ops"]
topics = ["*"]
permissions = ["admin"]
"#;

/// The same, with alice's subscribe permission taken away.
pub(crate) const REVOKED: &str = r#"
[groups]
ops = ["carol"]

[[grant]]
to = ["alice"]
topics = ["orders"]
permissions = ["publish"]

[[grant]]
to = ["group:ops"]
topics = ["*"]
permissions = ["admin"]
"#;

pub(crate) fn secret(name: &str) -> String {
    format!("secret-of-{name}-0123456789")
}

pub(crate) fn tokens(names: &[&str]) -> Vec<TokenConfig> {
    names
        .iter()
        .map(|n| TokenConfig {
            name: n.to_string(),
            sha256: hash_token(&secret(n)),
        })
        .collect()
}

/// A broker with tokens for alice, bob and carol and [`RULES`] in a rules file it watches.
async fn secured(dir: &Path, configure: impl FnOnce(&mut Config)) -> (TestBroker, PathBuf) {
    let rules = dir.join("rules.toml");
    write_atomically(&rules, RULES);
    let path = rules.clone();
    let broker = TestBroker::start_with(move |c| {
        c.auth.token = tokens(&["alice", "bob", "carol"]);
        c.rules_file = Some(path);
        configure(c);
    })
    .await;
    (broker, rules)
}

async fn client_with(broker: &TestBroker, token: Option<&str>) -> Result<Client, ClientError> {
    let mut options = broker.options.clone();
    options.token = token.map(str::to_owned);
    Client::connect(&options).await
}

fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Broker(e)) => (e.code, e.message),
        other => panic!("expected a refusal from the broker, got {other:?}"),
    }
}

async fn publish(client: &Client, t: &str) -> Result<(), ClientError> {
    let producer = client.producer().await?;
    producer.publish(&topic(t), NewMessage::new("m")).await?;
    Ok(())
}

fn stored(broker: &TestBroker, t: &str) -> u64 {
    let stats = broker.broker().stats(&Principal::internal(), None).unwrap();
    stats.topic(t).map_or(0, |t| t.message_count)
}

#[tokio::test]
async fn quic_without_credentials_is_refused_and_told_to_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = secured(dir.path(), |_| {}).await;
    let anonymous = client_with(&broker, None).await.unwrap();
    let (code, message) = refusal(publish(&anonymous, "orders").await);
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(message.contains("no credentials"), "{message}");
    let (code, _) = refusal(
        anonymous
            .subscribe(
                &topic("orders"),
                &channel("billing"),
                SubscribeOptions::default(),
            )
            .await,
    );
    assert_eq!(code, ErrorCode::Unauthorized);
    let (code, _) = refusal(anonymous.stats(None).await);
    assert_eq!(code, ErrorCode::Unauthorized);
    assert_eq!(stored(&broker, "orders"), 0);
    let access = broker
        .broker()
        .stats(&Principal::internal(), None)
        .unwrap()
        .access;
    assert_eq!(
        (
            access.denied_publish,
            access.denied_subscribe,
            access.denied_admin
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn quic_auth_with_a_wrong_token_fails_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = secured(dir.path(), |_| {}).await;
    let (code, message) = refusal(client_with(&broker, Some("not-a-token")).await);
    assert_eq!(code, ErrorCode::AuthFailed);
    assert!(message.contains("not valid"), "{message}");
    let stats = broker.broker().stats(&Principal::internal(), None).unwrap();
    assert_eq!(stats.access.auth_failures, 1);
    // The connection is still usable, as the anonymous identity it was.
    let client = client_with(&broker, None).await.unwrap();
    let (code, _) = refusal(client.authenticate("also-wrong").await);
    assert_eq!(code, ErrorCode::AuthFailed);
    let alice = client.authenticate(&secret("alice")).await.unwrap();
    assert_eq!(alice, "alice");
    publish(&client, "orders").await.unwrap();
}

#[tokio::test]
async fn quic_tokens_get_what_the_grants_give_them_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = secured(dir.path(), |_| {}).await;
    let bob = client_with(&broker, Some(&secret("bob"))).await.unwrap();
    let (code, message) = refusal(publish(&bob, "orders").await);
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(message.contains("bob may not publish orders"), "{message}");
    publish(&bob, "other").await.unwrap();
    let (code, _) = refusal(
        bob.admin(AdminRequest::Topic {
            op: quiver::protocol::AdminOp::Delete,
            topic: topic("other"),
        })
        .await,
    );
    assert_eq!(code, ErrorCode::Unauthorized);

    let alice = client_with(&broker, Some(&secret("alice"))).await.unwrap();
    publish(&alice, "orders").await.unwrap();
    let mut sub = alice
        .subscribe(
            &topic("orders"),
            &channel("billing"),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    sub.rdy(10).await.unwrap();
    let first = next_message(&mut sub, SOON).await;
    sub.fin(first.id).await.unwrap();
    // A channel the grant does not name.
    let (code, _) = refusal(
        alice
            .subscribe(
                &topic("orders"),
                &channel("audit"),
                SubscribeOptions::default(),
            )
            .await,
    );
    assert_eq!(code, ErrorCode::Unauthorized);

    let carol = client_with(&broker, Some(&secret("carol"))).await.unwrap();
    let stats = carol.stats(None).await.unwrap();
    assert_eq!(stats.topic("orders").unwrap().message_count, 1);
    let consumers = &stats
        .topic("orders")
        .unwrap()
        .channel("billing")
        .unwrap()
        .consumers;
    assert_eq!(consumers[0].principal, "alice");
    assert_eq!(stored(&broker, "other"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_revokes_subscribe_closes_open_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, rules) = secured(dir.path(), |_| {}).await;
    let alice = client_with(&broker, Some(&secret("alice"))).await.unwrap();
    let mut sub = alice
        .subscribe(
            &topic("orders"),
            &channel("billing"),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    sub.rdy(10).await.unwrap();
    publish(&alice, "orders").await.unwrap();
    let m = next_message(&mut sub, SOON).await;
    sub.fin(m.id).await.unwrap();

    write_atomically(&rules, REVOKED);
    let (status, body) = admin_http(
        broker.http,
        "POST",
        "/rules/reload",
        Some(&secret("carol")),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let ended = loop {
        match next_event(&mut sub, SOON).await {
            Some(SubEvent::Message(_)) => continue,
            other => break other,
        }
    };
    match ended {
        Some(SubEvent::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Unauthorized);
            assert!(
                e.message.contains("alice may not subscribe orders/billing"),
                "{e:?}"
            );
        }
        None => {}
        other => panic!("expected the subscription to end with E_UNAUTHORIZED, got {other:?}"),
    }
    // The next operation is decided by the new grants at once; publish is still granted.
    let (code, _) = refusal(
        alice
            .subscribe(
                &topic("orders"),
                &channel("billing"),
                SubscribeOptions::default(),
            )
            .await,
    );
    assert_eq!(code, ErrorCode::Unauthorized);
    publish(&alice, "orders").await.unwrap();
}

/// A CA for client certificates, and certificates it signs.
struct ClientCa {
    issuer: Issuer<'static, KeyPair>,
    path: PathBuf,
}

impl ClientCa {
    fn new(dir: &Path) -> ClientCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join("clients-ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        ClientCa {
            issuer: Issuer::new(params, key),
            path,
        }
    }

    /// A client certificate whose SAN is `name`, written as PEM files.
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

#[tokio::test]
async fn quic_client_certificates_are_identities() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClientCa::new(dir.path());
    let ca_path = ca.path.clone();
    let (broker, _) = secured(dir.path(), move |c| c.tls.client_ca = Some(ca_path)).await;
    let connect = |name: &str| {
        let mut options = broker.options.clone();
        options.client_identity = Some(ca.issue(dir.path(), name));
        async move { Client::connect(&options).await.unwrap() }
    };
    let alice = connect("alice").await;
    publish(&alice, "orders").await.unwrap();
    let mallory = connect("mallory").await;
    let (code, message) = refusal(publish(&mallory, "orders").await);
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(message.contains("mallory"), "{message}");
    // A token presented on a certificate's connection takes over its identity.
    mallory.authenticate(&secret("carol")).await.unwrap();
    mallory.stats(None).await.unwrap();
    assert_eq!(stored(&broker, "orders"), 1);
}

/// One HTTP/1.1 request with extra headers; the status and body.
fn admin_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nContent-Length: 1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\nx");
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_http_checks_bearer_tokens_and_grants() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, rules) = secured(dir.path(), |_| {}).await;
    let http = broker.http;
    // No credentials: 401 and a WWW-Authenticate challenge.
    let (status, body) = admin_http(http, "POST", "/pub?topic=orders", None, &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("E_UNAUTHORIZED"), "{body}");
    // A wrong token.
    let (status, body) = admin_http(http, "POST", "/pub?topic=orders", Some("wrong"), &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("E_AUTH_FAILED"), "{body}");
    // A right token without the permission.
    let (status, body) = admin_http(http, "POST", "/pub?topic=orders", Some(&secret("bob")), &[]);
    assert_eq!(status, 403, "{body}");
    let (status, _) = admin_http(http, "GET", "/stats", Some(&secret("bob")), &[]);
    assert_eq!(status, 403);
    // Granted.
    let (status, body) = admin_http(
        http,
        "POST",
        "/pub?topic=orders",
        Some(&secret("alice")),
        &[],
    );
    assert_eq!((status, body.as_str()), (200, "OK"));
    let (status, body) = admin_http(http, "GET", "/metrics", Some(&secret("carol")), &[]);
    assert_eq!(status, 200);
    assert!(
        body.contains("quiver_denied_total{operation=\"publish\"} 2"),
        "{body}"
    );
    assert!(body.contains("quiver_auth_failures_total 1"), "{body}");
    // Revoked: alice loses publish on the next request after the reload.
    write_atomically(
        &rules,
        RULES.replace("\"publish\", \"subscribe\"", "\"subscribe\""),
    );
    let (status, _) = admin_http(http, "POST", "/rules/reload", Some(&secret("carol")), &[]);
    assert_eq!(status, 200);
    let (status, _) = admin_http(
        http,
        "POST",
        "/pub?topic=orders",
        Some(&secret("alice")),
        &[],
    );
    assert_eq!(status, 403);
    // Reloading the rules is administration of the whole broker.
    let (status, _) = admin_http(http, "POST", "/rules/reload", Some(&secret("alice")), &[]);
    assert_eq!(status, 403);
    assert_eq!(stored(&broker, "orders"), 1);
}

/// The two requests a web page in a browser could make, from the issue that asked for this.
fn cross_site_attacks(http: SocketAddr, token: Option<&str>) -> [(u16, String); 2] {
    let foreign_host = format!("attacker.example:{}", http.port());
    [
        admin_http(
            http,
            "POST",
            "/topic/delete?topic=backlog",
            token,
            &[("Origin", "http://evil.example"), ("Host", &foreign_host)],
        ),
        admin_http(
            http,
            "POST",
            "/pub?topic=t",
            token,
            &[
                ("Origin", "http://evil.example"),
                ("Content-Type", "text/plain"),
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_are_refused_with_or_without_authentication() {
    let open = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (secured, _) = secured(dir.path(), |_| {}).await;
    for (broker, token) in [(&open, None), (&secured, Some(secret("carol")))] {
        broker
            .broker()
            .create_topic(&Principal::internal(), &topic("backlog"))
            .unwrap();
        for (status, body) in cross_site_attacks(broker.http, token.as_deref()) {
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("E_FORBIDDEN"), "{body}");
            assert!(!body.contains("access-control"), "{body}");
        }
        assert!(broker
            .broker()
            .stats(&Principal::internal(), Some(&topic("backlog")))
            .is_ok());
        assert_eq!(stored(broker, "t"), 0);
        // A browser page the broker served itself (same origin) is fine.
        let origin = format!("http://{}", broker.http);
        let (status, body) = admin_http(
            broker.http,
            "POST",
            "/topic/create?topic=fine",
            token.as_deref(),
            &[("Origin", &origin)],
        );
        assert_eq!(status, 200, "{body}");
    }
    let stats = open.broker().stats(&Principal::internal(), None).unwrap();
    assert_eq!(
        stats.access.auth_failures, 2,
        "cross-site refusals are counted"
    );
}

#[test]
fn serve_refuses_a_network_address_without_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--quic", "0.0.0.0:0", "--http", "127.0.0.1:0"])
        .args(["--nsq-tcp", "off", "--nsq-http", "off"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve the QUIC listener on 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(stderr.contains("quiver auth token"), "{stderr}");
    assert!(stderr.contains("allow_anonymous"), "{stderr}");
}
