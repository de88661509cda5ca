//! `GET /stats` and the `/topic/*` and `/channel/*` administration endpoints.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::params::Params;
use super::{refuse_if_shutting_down, AppState};
use crate::broker::{Broker, BrokerError, BrokerStats, Operation, Principal};
use crate::cluster::raft::node::ClusterStatus;
use crate::protocol::AdminOp;
use crate::rules::RulesStatus;

/// The `/stats` document: the broker's stats, plus the rules' when there are rules.
#[derive(Debug, Serialize)]
pub(crate) struct Stats {
    #[serde(flatten)]
    broker: BrokerStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<RulesStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterStatus>,
}

/// `GET /stats[?topic=T]`: all topics, or just `T`.
pub(crate) async fn stats(
    State(state): State<AppState>,
    Extension(who): Extension<Arc<Principal>>,
    params: Params,
) -> Result<Json<Stats>, ApiError> {
    let topic = params.topic_opt()?;
    Ok(Json(Stats {
        broker: state.broker.stats(&who, topic.as_ref())?,
        rules: state.rules.as_ref().map(|r| r.status()),
        cluster: state.cluster.as_ref().map(|c| c.status()),
    }))
}

/// `GET /cluster/status`: this node's view of the cluster; 404 on a single node.
pub(crate) async fn cluster_status(
    State(state): State<AppState>,
    Extension(who): Extension<Arc<Principal>>,
) -> Result<Json<ClusterStatus>, ApiError> {
    state
        .broker
        .administer(&who, Operation::AdminAll, "read the cluster status")?;
    match &state.cluster {
        Some(cluster) => Ok(Json(cluster.status())),
        None => Err(ApiError::NotClustered),
    }
}

/// The cluster node, or the error for a node without one; the caller must be allowed to
/// administer everything.
fn cluster_admin(
    state: &AppState,
    who: &Principal,
    action: &str,
) -> Result<Arc<crate::cluster::raft::node::ClusterNode>, ApiError> {
    state.broker.administer(who, Operation::AdminAll, action)?;
    state.cluster.clone().ok_or(ApiError::NotClustered)
}

/// `POST /cluster/nodes/add?id=N&peer_addr=HOST:PORT`: makes the node a voting member once
/// it has caught up with the metadata.
pub(crate) async fn add_node(
    State(state): State<AppState>,
    Extension(who): Extension<Arc<Principal>>,
    params: Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cluster = cluster_admin(&state, &who, "add a cluster member")?;
    let (id, peer_addr) = (params.node_id()?, params.peer_addr()?);
    tracing::info!(node = id, %peer_addr, by = who.identity(), "adding a cluster member");
    cluster
        .add_node(id, peer_addr.clone())
        .await
        .map_err(ApiError::Cluster)?;
    Ok(Json(
        serde_json::json!({ "node": id, "peer_addr": peer_addr }),
    ))
}

/// `POST /cluster/nodes/remove?id=N`: moves the member's replicas to the others, then
/// removes it; answers when it is out, with the topics moved.
pub(crate) async fn remove_node(
    State(state): State<AppState>,
    Extension(who): Extension<Arc<Principal>>,
    params: Params,
) -> Result<Json<crate::cluster::raft::node::Removed>, ApiError> {
    let cluster = cluster_admin(&state, &who, "remove a cluster member")?;
    let id = params.node_id()?;
    tracing::info!(node = id, by = who.identity(), "removing a cluster member");
    let removed = cluster.remove_node(id).await.map_err(ApiError::Cluster)?;
    Ok(Json(removed))
}

/// `POST /rules/reload`: 200 with the new status, 422 with the reason the old rules stay.
pub(crate) async fn reload_rules(
    State(state): State<AppState>,
    Extension(who): Extension<Arc<Principal>>,
) -> Response {
    let error = |status: StatusCode, code: &str, message: String| {
        let body = serde_json::json!({ "error": message, "code": code });
        (status, Json(body)).into_response()
    };
    if let Err(e) = state
        .broker
        .administer(&who, Operation::AdminAll, "reload rules")
    {
        return ApiError::from(e).into_response();
    }
    let Some(rules) = &state.rules else {
        let why = "no rules are configured (start with --rules FILE)".to_owned();
        return error(StatusCode::NOT_FOUND, "E_NO_RULES", why);
    };
    match rules.reload().await {
        Ok(status) => Json(status).into_response(),
        Err(reason) => error(StatusCode::UNPROCESSABLE_ENTITY, "E_RULES_INVALID", reason),
    }
}

/// `POST /topic/<op>?topic=T`; a create on a cluster node may take `&replication=N`.
pub(crate) async fn topic(
    State(state): State<AppState>,
    Extension(who): Extension<Arc<Principal>>,
    params: Params,
    op: AdminOp,
) -> Result<&'static str, ApiError> {
    let topic = params.topic()?;
    let broker = &state.broker;
    refuse_if_shutting_down(broker)?;
    let replication = params.replication()?;
    match (&state.cluster, op) {
        (Some(cluster), AdminOp::Create) if !topic.is_ephemeral() => {
            // Created in the cluster's metadata; its leader opens it.
            broker.administer(&who, Operation::Admin(&topic, None), "create topic")?;
            cluster
                .create_topic(&topic, replication)
                .await
                .map_err(ApiError::Cluster)?;
            return Ok("OK");
        }
        (Some(cluster), AdminOp::Delete) if !topic.is_ephemeral() => {
            // Deleted from the cluster's metadata; every replica then stops and removes
            // its data, and the leader's consumers are disconnected.
            broker.administer(&who, Operation::Admin(&topic, None), "delete topic")?;
            if !cluster.meta().topics.contains_key(topic.as_str()) {
                return Err(BrokerError::TopicNotFound(topic).into());
            }
            cluster
                .delete_topic(&topic)
                .await
                .map_err(ApiError::Cluster)?;
            return Ok("OK");
        }
        (_, AdminOp::Create) if replication.is_some() => {
            let why = "a replication factor applies to a durable topic on a cluster node";
            return Err(ApiError::bad("replication", why));
        }
        _ => {}
    }
    match op {
        AdminOp::Create => broker.create_topic(&who, &topic),
        AdminOp::Delete => broker.delete_topic(&who, &topic),
        AdminOp::Pause => broker.pause_topic(&who, &topic, true),
        AdminOp::Unpause => broker.pause_topic(&who, &topic, false),
        AdminOp::Empty => broker.empty_topic(&who, &topic),
    }?;
    Ok("OK")
}

/// `POST /channel/<op>?topic=T&channel=C[&max_attempts=N][&ordering=O[&order_key_header=H]]`;
/// the settings only on create.
pub(crate) async fn channel(
    State(broker): State<Broker>,
    Extension(who): Extension<Arc<Principal>>,
    params: Params,
    op: AdminOp,
) -> Result<&'static str, ApiError> {
    let topic = params.topic()?;
    let channel = params.channel()?;
    refuse_if_shutting_down(&broker)?;
    match op {
        AdminOp::Create => {
            broker.create_channel(&who, &topic, &channel, params.channel_settings()?)
        }
        AdminOp::Delete => broker.delete_channel(&who, &topic, &channel),
        AdminOp::Pause => broker.pause_channel(&who, &topic, &channel, true),
        AdminOp::Unpause => broker.pause_channel(&who, &topic, &channel, false),
        AdminOp::Empty => broker.empty_channel(&who, &topic, &channel),
    }?;
    Ok("OK")
}
