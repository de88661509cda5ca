//! An nsqd-style auth server behind the QUIC listener, the admin HTTP API and the nsqd HTTP
//! API (the NSQ TCP cases are in `access_nsq.rs`): an answer that expires is asked again and
//! a changed answer takes effect; an auth server that is down is a clear error and nothing
//! is published.

use std::time::Duration;

use quiver::broker::Principal;
use quiver::client::{Client, ClientError};
use quiver::config::Config;
use quiver::message::NewMessage;
use quiver::protocol::ErrorCode;
use tokio::time::Instant;

use crate::access_nsq::http;
use crate::auth_server::{grant, AuthServer};
use crate::support::{topic, TestBroker};

/// The overall deadline of anything a test waits for: generous, for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);
/// Between two attempts while waiting for an answer to expire.
const RETRY: Duration = Duration::from_millis(50);

/// A broker whose only source of grants is `server`: no tokens, no rules file.
async fn behind(server: &AuthServer) -> TestBroker {
    let address = server.addr.to_string();
    TestBroker::start_with(move |config: &mut Config| {
        config.auth.token.clear();
        config.rules_file = None;
        config.auth.auth_http_address = vec![address];
    })
    .await
}

fn stored(broker: &TestBroker, t: &str) -> u64 {
    let stats = broker.broker().stats(&Principal::internal(), None).unwrap();
    stats.topic(t).map_or(0, |t| t.message_count)
}

async fn client_with(broker: &TestBroker, secret: &str) -> Result<Client, ClientError> {
    let mut options = broker.options.clone();
    options.token = Some(secret.to_owned());
    Client::connect(&options).await
}

async fn publish(client: &Client, t: &str) -> Result<(), ClientError> {
    let producer = client.producer().await?;
    producer.publish(&topic(t), NewMessage::new("m")).await?;
    Ok(())
}

fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Broker(e)) => (e.code, e.message),
        other => panic!("expected a refusal from the broker, got {other:?}"),
    }
}

/// Publishes to `t` until the broker refuses, as it will once the auth server's answer
/// expires: how many were accepted before, and the refusal.
async fn quic_publish_until_refused(client: &Client, t: &str) -> (u64, (ErrorCode, String)) {
    let deadline = Instant::now() + PATIENCE;
    let mut accepted = 0;
    loop {
        match publish(client, t).await {
            Ok(()) => accepted += 1,
            refused => return (accepted, refusal(refused)),
        }
        assert!(
            Instant::now() < deadline,
            "still accepted after {PATIENCE:?}"
        );
        tokio::time::sleep(RETRY).await;
    }
}

/// Sends `POST path` with the bearer `secret` until the status is not 200: how many were
/// accepted, and the final status and body.
async fn http_publish_until_refused(
    addr: std::net::SocketAddr,
    path: &str,
    secret: &str,
) -> (u64, (u16, String)) {
    let bearer = format!("Bearer {secret}");
    let deadline = Instant::now() + PATIENCE;
    let mut accepted = 0;
    loop {
        let answer = http(addr, "POST", path, &[("Authorization", &bearer)]).await;
        if answer.0 != 200 {
            return (accepted, answer);
        }
        accepted += 1;
        assert!(
            Instant::now() < deadline,
            "still accepted after {PATIENCE:?}"
        );
        tokio::time::sleep(RETRY).await;
    }
}

#[tokio::test]
async fn quic_asks_again_when_the_answer_expires_and_a_changed_answer_takes_effect() {
    let auth = AuthServer::start().await;
    auth.answer("s-erin", grant(1, "erin", "^events$", &["publish"]));
    let broker = behind(&auth).await;
    let erin = client_with(&broker, "s-erin").await.unwrap();
    publish(&erin, "events").await.unwrap();
    let asked = auth.asked();

    // From now on the secret may publish `other` only: once the 1 s answer expires, the
    // next publish asks again and is refused.
    auth.answer("s-erin", grant(1, "erin", "^other$", &["publish"]));
    let (accepted, (code, message)) = quic_publish_until_refused(&erin, "events").await;
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(message.contains("erin may not publish events"), "{message}");
    assert!(auth.asked() > asked, "the auth server was not asked again");
    // The same connection now has the new answer's permissions.
    publish(&erin, "other").await.unwrap();
    assert_eq!(stored(&broker, "events"), 1 + accepted);
    assert_eq!(stored(&broker, "other"), 1);
}

#[tokio::test]
async fn quic_with_the_auth_server_down_fails_clearly_and_publishes_nothing() {
    let mut auth = AuthServer::start().await;
    auth.answer("s-finn", grant(1, "finn", "^events$", &["publish"]));
    let broker = behind(&auth).await;
    let finn = client_with(&broker, "s-finn").await.unwrap();
    publish(&finn, "events").await.unwrap();
    auth.stop().await;

    // Once the answer expires, asking again fails: the publish is refused, not stored.
    let (accepted, (code, message)) = quic_publish_until_refused(&finn, "events").await;
    assert_eq!(code, ErrorCode::AuthFailed);
    assert!(
        message.contains("no auth server could be asked"),
        "{message}"
    );

    // A new connection cannot authenticate at all, and says why.
    let (code, message) = refusal(client_with(&broker, "s-finn").await);
    assert_eq!(code, ErrorCode::AuthFailed);
    assert!(
        message.contains("no auth server could be asked"),
        "{message}"
    );
    assert_eq!(stored(&broker, "events"), 1 + accepted);
}

/// The admin API and the nsqd API, each with a publish path and its refusal bodies.
fn http_entry_points(broker: &TestBroker) -> [(std::net::SocketAddr, &'static str); 2] {
    [
        (broker.http, "/pub?topic=events"),
        (
            broker.nsq_http.expect("nsqd HTTP listens"),
            "/pub?topic=events",
        ),
    ]
}

#[tokio::test]
async fn http_reuses_an_answer_until_its_ttl_then_asks_again() {
    let auth = AuthServer::start().await;
    let broker = behind(&auth).await;
    for (i, (addr, path)) in http_entry_points(&broker).into_iter().enumerate() {
        let secret = format!("s-gina-{i}");
        auth.answer(&secret, grant(1, "gina", "^events$", &["publish"]));
        let before = auth.asked();
        let bearer = format!("Bearer {secret}");
        let ok = http(addr, "POST", path, &[("Authorization", &bearer)]).await;
        assert_eq!(ok, (200, "OK".to_owned()), "{addr}");
        assert_eq!(auth.asked(), before + 1);

        // The answer changes; the broker sees it once the 1 s TTL has passed.
        auth.answer(&secret, grant(1, "gina", "^other$", &["publish"]));
        let (_, (status, body)) = http_publish_until_refused(addr, path, &secret).await;
        assert_eq!(status, 403, "{addr}: {body}");
        assert!(body.contains("UNAUTHORIZED"), "{addr}: {body}");
        assert!(
            auth.asked() >= before + 2,
            "the auth server was not asked again"
        );
    }

    // Within the TTL, requests do not ask again.
    auth.answer("s-hana", grant(3600, "hana", "^events$", &["publish"]));
    let before = auth.asked();
    for (addr, path) in http_entry_points(&broker) {
        for _ in 0..3 {
            let ok = http(addr, "POST", path, &[("Authorization", "Bearer s-hana")]).await;
            assert_eq!(ok.0, 200, "{addr}: {}", ok.1);
        }
    }
    assert_eq!(
        auth.asked(),
        before + 1,
        "a valid answer was asked for again"
    );
}

#[tokio::test]
async fn http_with_the_auth_server_down_is_unavailable_and_publishes_nothing() {
    let mut auth = AuthServer::start().await;
    auth.answer("s-ivan", grant(1, "ivan", "^events$", &["publish"]));
    let broker = behind(&auth).await;
    let bearer = [("Authorization", "Bearer s-ivan")];
    for (addr, path) in http_entry_points(&broker) {
        assert_eq!(http(addr, "POST", path, &bearer).await.0, 200);
    }
    auth.stop().await;

    let expected = [
        r#""code":"E_AUTH_UNAVAILABLE""#,
        r#"{"message":"AUTH_UNAVAILABLE"}"#,
    ];
    let mut total = 2;
    for ((addr, path), expected) in http_entry_points(&broker).into_iter().zip(expected) {
        // A secret whose answer expired, and one never seen: both cannot be checked.
        let (accepted, (status, body)) = http_publish_until_refused(addr, path, "s-ivan").await;
        total += accepted;
        assert_eq!(status, 503, "{addr}: {body}");
        assert!(body.contains(expected), "{addr}: {body}");
        let fresh = http(addr, "POST", path, &[("Authorization", "Bearer s-new")]).await;
        assert_eq!(fresh.0, 503, "{addr}: {}", fresh.1);
    }
    assert_eq!(stored(&broker, "events"), total);
}
