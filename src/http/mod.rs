//! The HTTP API: publishing, topic and channel administration, stats and metrics over plain
//! HTTP/1.1, modelled on nsqd's HTTP API.
//!
//! This module owns request parsing (query parameters, `X-Quiver-Header-*` headers, size-limited
//! bodies), the mapping of [`BrokerError`] to HTTP statuses and JSON
//! errors, and the Prometheus rendering of [`BrokerStats`](crate::broker::BrokerStats). All the
//! semantics live in [`Broker`]; every handler here is a thin translation.
//!
//! # Endpoints
//! | Method | Path | Parameters | Does |
//! |---|---|---|---|
//! | GET | `/ping` | | `OK` |
//! | GET | `/stats` | `topic`? | [`Broker::stats`] as JSON |
//! | GET | `/metrics` | | Prometheus text format 0.0.4 |
//! | POST | `/pub` | `topic`, `defer`? (ms) | publishes the body as one message (a DPUB with `defer`) |
//! | POST | `/mpub` | `topic`, `defer`? (ms) | publishes each non-empty line of the body, as one batch |
//! | POST | `/topic/{create,delete,pause,unpause,empty}` | `topic` | topic administration |
//! | POST | `/channel/{create,delete,pause,unpause,empty}` | `topic`, `channel`, `max_attempts`? | channel administration (`max_attempts` on create only) |
//! | POST | `/rules/reload` | | reloads the rules: 200 with their status, 422 with the reason (the old rules stay), 404 without rules |
//!
//! With rules, `/stats` has a `rules` object ([`RulesStatus`](crate::rules::RulesStatus)) and
//! `/metrics` their counters.
//!
//! Successful POSTs answer `200 OK` with the body `OK`; `/pub` and `/mpub` only once the broker
//! reports the messages durable. Message headers come from request headers named
//! `X-Quiver-Header-<name>`: `<name>` is lowercased, the value must be UTF-8.
//!
//! Errors are JSON, `{"error": "...", "code": "E_..."}`, with the wire protocol's error codes:
//! 400 for bad input (naming the parameter), 404 for an unknown topic or channel, 413 for an
//! oversized body, 503 while shutting down and 500 when storage fails.

mod admin;
mod body;
mod error;
pub(crate) mod guard;
mod metrics;
mod params;
pub(crate) mod publish;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod test_client;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::auth::Authenticator;
use crate::broker::{Broker, BrokerError, Principal};
use crate::cluster::raft::node::ClusterNode;
use crate::protocol::AdminOp;
use crate::rules::Reloader;
use error::ApiError;
use params::Params;

/// What the handlers share: the broker, and the rules when there are any.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    broker: Broker,
    rules: Option<Reloader>,
    /// The node's part in a cluster, when it has a `[cluster]` section.
    cluster: Option<Arc<ClusterNode>>,
}

impl FromRef<AppState> for Broker {
    fn from_ref(state: &AppState) -> Broker {
        state.broker.clone()
    }
}

/// Serves the HTTP API on `listener` until [`Broker::shutting_down`] fires, then stops accepting
/// and returns once the open requests are answered. With `rules`, `/stats` and `/metrics`
/// report on them and `POST /rules/reload` reloads them.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Broker,
    rules: Option<Reloader>,
    auth: Arc<Authenticator>,
    cluster: Option<Arc<ClusterNode>>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!(%addr, "HTTP API listening");
    }
    let stop = broker.clone();
    let app = router_all(broker, rules, auth, cluster);
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.shutting_down().await })
    .await;
    if let Err(error) = result {
        tracing::error!(%error, "HTTP API stopped");
    }
}

/// The HTTP API's routes over `broker`, without rules or authentication.
pub fn router(broker: Broker) -> Router {
    router_with_rules(broker, None, Arc::new(Authenticator::disabled()))
}

/// The HTTP API's routes over `broker` and its `rules`, behind the guard (`guard.rs`):
/// cross-site refusals and bearer tokens.
pub fn router_with_rules(
    broker: Broker,
    rules: Option<Reloader>,
    auth: Arc<Authenticator>,
) -> Router {
    router_all(broker, rules, auth, None)
}

/// [`router_with_rules`], and on a cluster node `/stats` and `GET /cluster/status` report
/// on the cluster.
pub fn router_all(
    broker: Broker,
    rules: Option<Reloader>,
    auth: Arc<Authenticator>,
    cluster: Option<Arc<ClusterNode>>,
) -> Router {
    let guard = guard::Guard {
        auth,
        broker: broker.clone(),
        render: guard::render_admin,
    };
    let mut router = Router::new()
        .route("/ping", get(ping))
        .route("/stats", get(admin::stats))
        .route("/cluster/status", get(admin::cluster_status))
        .route("/cluster/nodes/add", post(admin::add_node))
        .route("/cluster/nodes/remove", post(admin::remove_node))
        .route("/metrics", get(metrics::metrics))
        .route("/rules/reload", post(admin::reload_rules))
        .route("/pub", post(publish::publish))
        .route("/mpub", post(publish::multi_publish));
    for (name, op) in OPS {
        router = router
            .route(
                &format!("/topic/{name}"),
                post(move |state: State<AppState>, who: Who, params: Params| {
                    admin::topic(state, who, params, op)
                }),
            )
            .route(
                &format!("/channel/{name}"),
                post(move |state: State<Broker>, who: Who, params: Params| {
                    admin::channel(state, who, params, op)
                }),
            );
    }
    router
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .with_state(AppState {
            broker,
            rules,
            cluster,
        })
}

/// The caller, as the [`guard`] authenticated it.
type Who = Extension<Arc<Principal>>;

/// Administrative operations by their path segment.
const OPS: [(&str, AdminOp); 5] = [
    ("create", AdminOp::Create),
    ("delete", AdminOp::Delete),
    ("pause", AdminOp::Pause),
    ("unpause", AdminOp::Unpause),
    ("empty", AdminOp::Empty),
];

/// Refuses changes once the broker is shutting down, before any work is done for them.
fn refuse_if_shutting_down(broker: &Broker) -> Result<(), ApiError> {
    if broker.is_shutting_down() {
        return Err(BrokerError::ShuttingDown.into());
    }
    Ok(())
}

async fn ping() -> &'static str {
    "OK"
}

async fn no_route() -> ApiError {
    ApiError::NoRoute
}
