//! A tiny HTTP/1.1 client for the tests: hand-written requests with `Connection: close`, over a
//! raw `TcpStream`, against a real broker behind the real router on a loopback socket.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::router;
use crate::broker::{Broker, BrokerConfig, BrokerStats};
use crate::storage::MemoryStorage;

#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) head: String,
    pub(super) body: String,
}

impl Response {
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }

    pub(super) fn error_code(&self) -> String {
        self.json()["code"].as_str().unwrap().to_string()
    }

    pub(super) fn error_message(&self) -> String {
        self.json()["error"].as_str().unwrap().to_string()
    }
}

pub(super) async fn start() -> (Broker, SocketAddr) {
    let broker = Broker::new(BrokerConfig::default(), Arc::new(MemoryStorage));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(broker.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (broker, addr)
}

/// Sends `request` as is and reads the response until EOF (or a reset after the response).
pub(super) async fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.split();
    let reader = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = read.read(&mut chunk).await {
            buf.extend_from_slice(&chunk[..n]);
        }
        buf
    };
    // The server may answer and close before taking all of an oversized body.
    let writer = async {
        let _ = write.write_all(request).await;
    };
    let (buf, ()) = tokio::join!(reader, writer);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Response {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

pub(super) async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes).await
}

pub(super) async fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], b"").await
}

pub(super) async fn post(addr: SocketAddr, target: &str, body: &[u8]) -> Response {
    request(addr, "POST", target, &[], body).await
}

pub(super) async fn stats(addr: SocketAddr) -> BrokerStats {
    let response = get(addr, "/stats").await;
    assert_eq!(response.status, 200, "{response:?}");
    serde_json::from_str(&response.body).unwrap()
}

pub(super) fn assert_ok(response: &Response) {
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "OK"),
        "{response:?}"
    );
}
