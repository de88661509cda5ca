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
use crate::broker::{Broker, BrokerStats, Operation, Principal};
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

/// `POST /topic/<op>?topic=T`.
pub(crate) async fn topic(
    State(broker): State<Broker>,
    Extension(who): Extension<Arc<Principal>>,
    params: Params,
    op: AdminOp,
) -> Result<&'static str, ApiError> {
    let topic = params.topic()?;
    refuse_if_shutting_down(&broker)?;
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
