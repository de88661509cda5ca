//! A stand-in for an nsqd auth server (pynsqauthd and the like): a real HTTP server on
//! 127.0.0.1:0 answering `GET /auth?remote_ip=&tls=&secret=&common_name=` from a table
//! keyed by secret. It records every query it was asked, its answers can be changed while it
//! runs, and it can be stopped (its port then refuses connections).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One query as the server received it: its parameters by name.
pub type Asked = HashMap<String, String>;

#[derive(Debug, Default)]
struct Table {
    answers: HashMap<String, Value>,
    asked: Vec<Asked>,
}

type Shared = Arc<Mutex<Table>>;

/// The running server; stopped when dropped.
#[derive(Debug)]
pub struct AuthServer {
    pub addr: SocketAddr,
    table: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl AuthServer {
    pub async fn start() -> AuthServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let table = Shared::default();
        let app = Router::new()
            .route("/auth", get(answer))
            .with_state(Arc::clone(&table));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        AuthServer {
            addr,
            table,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Answers `secret` with `answer` from now on (replacing any earlier answer).
    pub fn answer(&self, secret: &str, answer: Value) {
        self.lock().answers.insert(secret.to_owned(), answer);
    }

    /// How many queries the server has answered or refused.
    pub fn asked(&self) -> usize {
        self.lock().asked.len()
    }

    /// Every query so far, oldest first.
    pub fn queries(&self) -> Vec<Asked> {
        self.lock().asked.clone()
    }

    /// Stops serving: the listener and every open connection are closed once this returns.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the auth server stops")
                .unwrap();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// `GET /auth`: the answer for the secret, or 403 for a secret the table does not hold.
async fn answer(State(table): State<Shared>, Query(query): Query<Asked>) -> Response {
    let mut table = table.lock().unwrap();
    let found = query
        .get("secret")
        .and_then(|s| table.answers.get(s))
        .cloned();
    table.asked.push(query);
    match found {
        Some(answer) => Json(answer).into_response(),
        None => (
            StatusCode::FORBIDDEN,
            Json(json!({"message": "NOT_AUTHORIZED"})),
        )
            .into_response(),
    }
}

/// An answer in nsqd's format: `identity` may do `permissions` on topics matching `topic`
/// (a regular expression) and on every channel, for `ttl` seconds.
pub fn grant(ttl: u64, identity: &str, topic: &str, permissions: &[&str]) -> Value {
    json!({
        "ttl": ttl,
        "identity": identity,
        "identity_url": format!("https://people.example/{identity}"),
        "authorizations": [
            {"topic": topic, "channels": [".*"], "permissions": permissions}
        ]
    })
}
