//! `GET /stats` and the `/topic/*` and `/channel/*` administration endpoints.

use axum::extract::State;
use axum::Json;

use super::error::ApiError;
use super::params::Params;
use super::refuse_if_shutting_down;
use crate::broker::{Broker, BrokerStats};
use crate::protocol::AdminOp;

/// `GET /stats[?topic=T]`: all topics, or just `T`.
pub(crate) async fn stats(
    State(broker): State<Broker>,
    params: Params,
) -> Result<Json<BrokerStats>, ApiError> {
    let topic = params.topic_opt()?;
    Ok(Json(broker.stats(topic.as_ref())?))
}

/// `POST /topic/<op>?topic=T`.
pub(crate) async fn topic(
    State(broker): State<Broker>,
    params: Params,
    op: AdminOp,
) -> Result<&'static str, ApiError> {
    let topic = params.topic()?;
    refuse_if_shutting_down(&broker)?;
    match op {
        AdminOp::Create => broker.create_topic(&topic),
        AdminOp::Delete => broker.delete_topic(&topic),
        AdminOp::Pause => broker.pause_topic(&topic, true),
        AdminOp::Unpause => broker.pause_topic(&topic, false),
        AdminOp::Empty => broker.empty_topic(&topic),
    }?;
    Ok("OK")
}

/// `POST /channel/<op>?topic=T&channel=C[&max_attempts=N]`; `max_attempts` only on create.
pub(crate) async fn channel(
    State(broker): State<Broker>,
    params: Params,
    op: AdminOp,
) -> Result<&'static str, ApiError> {
    let topic = params.topic()?;
    let channel = params.channel()?;
    refuse_if_shutting_down(&broker)?;
    match op {
        AdminOp::Create => broker.create_channel(&topic, &channel, params.max_attempts()?),
        AdminOp::Delete => broker.delete_channel(&topic, &channel),
        AdminOp::Pause => broker.pause_channel(&topic, &channel, true),
        AdminOp::Unpause => broker.pause_channel(&topic, &channel, false),
        AdminOp::Empty => broker.empty_channel(&topic, &channel),
    }?;
    Ok("OK")
}
