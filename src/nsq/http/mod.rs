//! The nsqd HTTP API (nsqd 1.3.0), so that NSQ tools (`curl` scripts, `nsq_stat`, `nsqadmin`,
//! dashboards reading `/stats`) work against Quiver unchanged.
//!
//! Every handler is a thin translation onto [`Broker`]: this module owns nsqd's parameter
//! names, its error codes and statuses, its response framing and the `/stats` document. It
//! shares nothing with the Quiver admin API in [`crate::http`], whose shapes differ.
//!
//! # Endpoints
//! | Method | Path | Parameters | Does |
//! |---|---|---|---|
//! | GET | `/ping` | | `OK` (500 with the reason once the broker is shutting down) |
//! | GET | `/info` | | version, hostname, ports, start time, nsqd's client limits |
//! | GET | `/stats` | `format`, `topic`, `channel`, `include_clients`, `include_mem` | text, or JSON with `format=json` |
//! | POST | `/pub` | `topic`, `defer`? (ms) | the body is one message |
//! | POST | `/mpub` | `topic`, `binary`? | one message per `\n`-separated line, or nsqd's binary batch |
//! | POST | `/topic/{create,delete,empty,pause,unpause}` | `topic` | topic administration |
//! | POST | `/channel/{create,delete,empty,pause,unpause}` | `topic`, `channel` | channel administration |
//!
//! # Responses, as nsqd's `http_api.V1`
//! - Success: `200`, with `X-NSQ-Content-Type: nsq; version=1.0`; the body is `OK` for
//!   publishes, JSON for `/info` and `/stats?format=json`, empty for administration.
//!   Nothing is wrapped in `{"status_code":...,"data":...}`: nsqd stopped that in 1.0,
//!   whatever the `Accept` header says.
//! - Failure: a 4xx or 5xx status and `{"message":"<CODE>"}`, with nsqd's codes
//!   (`MISSING_ARG_TOPIC`, `INVALID_TOPIC`, `MSG_TOO_BIG`, `TOPIC_NOT_FOUND`, ...). An unknown
//!   path is `404 NOT_FOUND`, a known path with the wrong method `405 METHOD_NOT_ALLOWED`.
//!
//! `/pub` and `/mpub` answer `OK` only once the broker reports the messages durable.

mod admin;
mod body;
mod params;
mod publish;
mod reply;
mod stats;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
mod text;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::broker::{Broker, Principal};
use crate::config::NsqConfig;
use crate::http::guard::{self, Guard};
use reply::{NsqError, Reply};

/// The caller, as the [`guard`] authenticated it.
pub(crate) type Who = axum::Extension<Arc<Principal>>;

/// What the handlers share: the broker and facts about this node.
#[derive(Debug, Clone)]
pub(crate) struct NsqHttp {
    broker: Broker,
    node: Arc<Node>,
}

/// Facts `/info` and `/stats` report about this node.
#[derive(Debug)]
pub(crate) struct Node {
    hostname: String,
    /// -1 when off, as nsqd reports a port it has not (a unix socket).
    http_port: i32,
    tcp_port: i32,
    started: SystemTime,
    /// The `[nsq]` limits: `/info` reports the client ones, `/pub` and `/mpub` apply the
    /// message and body sizes, as nsqd's `--max-msg-size` and `--max-body-size`.
    limits: NsqConfig,
}

impl Node {
    /// This node, serving HTTP on `http` and NSQ TCP on `tcp` with `limits`, starting now.
    pub(crate) fn new(
        http: Option<SocketAddr>,
        tcp: Option<SocketAddr>,
        limits: NsqConfig,
    ) -> Node {
        let port = |addr: Option<SocketAddr>| addr.map_or(-1, |a| i32::from(a.port()));
        Node {
            hostname: hostname(),
            http_port: port(http),
            tcp_port: port(tcp),
            started: SystemTime::now(),
            limits,
        }
    }

    fn start_time(&self) -> i64 {
        unix_secs(self.started)
    }

    /// The largest message body accepted.
    pub(crate) fn max_msg_size(&self) -> usize {
        usize::try_from(self.limits.max_msg_size).unwrap_or(usize::MAX)
    }

    /// The largest `/mpub` body accepted.
    pub(crate) fn max_body_size(&self) -> usize {
        usize::try_from(self.limits.max_body_size).unwrap_or(usize::MAX)
    }
}

/// Serves the nsqd HTTP API on `listener` until [`Broker::shutting_down`] fires, then stops
/// accepting and returns once the open requests are answered. `tcp` is the NSQ TCP
/// listener's address, which `/info` reports (nsqd's `tcp_port`); `config` holds the limits.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    config: NsqConfig,
    tcp: Option<SocketAddr>,
    auth: Arc<Authenticator>,
) {
    let addr = listener.local_addr().ok();
    if let Some(addr) = addr {
        tracing::debug!(%addr, "nsqd HTTP API listening");
    }
    let stop = broker.clone();
    let app = router(broker, Node::new(addr, tcp, config), auth);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.shutting_down().await })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "nsqd HTTP API stopped");
    }
}

/// The nsqd HTTP API's routes over `broker`.
pub(crate) fn router(broker: Broker, node: Node, auth: Arc<Authenticator>) -> Router {
    let guard = Guard {
        auth,
        broker: broker.clone(),
        render: reply::render_refusal,
    };
    let state = NsqHttp {
        broker,
        node: Arc::new(node),
    };
    Router::new()
        .route("/ping", get(ping))
        .route("/info", get(info))
        .route("/stats", get(stats::stats))
        .route("/pub", post(publish::publish))
        .route("/mpub", post(publish::multi_publish))
        .route("/topic/create", post(admin::create_topic))
        .route("/topic/delete", post(admin::delete_topic))
        .route("/topic/empty", post(admin::empty_topic))
        .route("/topic/pause", post(admin::pause_topic))
        .route("/topic/unpause", post(admin::unpause_topic))
        .route("/channel/create", post(admin::create_channel))
        .route("/channel/delete", post(admin::delete_channel))
        .route("/channel/empty", post(admin::empty_channel))
        .route("/channel/pause", post(admin::pause_channel))
        .route("/channel/unpause", post(admin::unpause_channel))
        .fallback(|| async { NsqError::not_found("NOT_FOUND") })
        .method_not_allowed_fallback(|| async { NsqError::METHOD_NOT_ALLOWED })
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .with_state(state)
}

/// The broker's health in nsqd's words: `OK`, or `NOK - <reason>`.
fn health(broker: &Broker) -> Result<&'static str, &'static str> {
    if broker.is_shutting_down() {
        return Err("NOK - the broker is shutting down");
    }
    Ok("OK")
}

/// `GET /ping`: the health as plain text, 500 when unhealthy.
async fn ping(State(state): State<NsqHttp>) -> Reply {
    match health(&state.broker) {
        Ok(health) => Reply::plain(200, health),
        Err(health) => Reply::plain(500, health),
    }
}

/// The `/info` document, field for field as nsqd 1.3.0's (durations in nanoseconds, as Go
/// encodes `time.Duration`).
#[derive(Debug, Serialize)]
struct Info<'a> {
    version: String,
    broadcast_address: &'a str,
    hostname: &'a str,
    http_port: i32,
    tcp_port: i32,
    start_time: i64,
    max_heartbeat_interval: u128,
    max_output_buffer_size: u64,
    max_output_buffer_timeout: u128,
    max_deflate_level: u32,
}

/// `GET /info`.
async fn info(State(state): State<NsqHttp>) -> Result<Reply, NsqError> {
    let node = &state.node;
    Reply::json(&Info {
        version: version(),
        broadcast_address: &node.hostname,
        hostname: &node.hostname,
        http_port: node.http_port,
        tcp_port: node.tcp_port,
        start_time: node.start_time(),
        max_heartbeat_interval: node.limits.max_heartbeat_interval.as_nanos(),
        max_output_buffer_size: node.limits.max_output_buffer_size,
        max_output_buffer_timeout: node.limits.max_output_buffer_timeout.as_nanos(),
        max_deflate_level: node.limits.max_deflate_level,
    })
}

/// The version the API reports: [`NSQD_VERSION`](super::NSQD_VERSION).
fn version() -> String {
    super::NSQD_VERSION.to_owned()
}

/// The machine's host name, as nsqd's default `--broadcast-address`.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

fn unix_secs(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
