//! `POST /topic/*` and `POST /channel/*`, with nsqd's checks: a topic call validates the name
//! only where nsqd does (create and empty), and a channel call needs its topic to exist.
//! Success is `200` with an empty body.

use axum::extract::State;
use axum::Extension;

use super::params::Params;
use super::reply::{NsqError, Reply};
use super::{NsqHttp, Who};
use crate::broker::{Broker, BrokerError, Principal};
use crate::message::TopicName;

type Answer = Result<Reply, NsqError>;

/// Refuses changes once the broker is shutting down, as nsqd refuses them while exiting.
fn refuse_if_exiting(broker: &Broker) -> Result<(), NsqError> {
    if broker.is_shutting_down() {
        return Err(BrokerError::ShuttingDown.into());
    }
    Ok(())
}

pub(super) async fn create_topic(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Params,
) -> Answer {
    let topic = params.topic("INVALID_TOPIC")?;
    refuse_if_exiting(&state.broker)?;
    state.broker.create_topic(&who, &topic)?;
    Ok(Reply::Empty)
}

pub(super) async fn delete_topic(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Params,
) -> Answer {
    let topic = params.existing_topic()?;
    refuse_if_exiting(&state.broker)?;
    state.broker.delete_topic(&who, &topic)?;
    Ok(Reply::Empty)
}

pub(super) async fn empty_topic(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Params,
) -> Answer {
    let topic = params.topic("INVALID_TOPIC")?;
    refuse_if_exiting(&state.broker)?;
    state.broker.empty_topic(&who, &topic)?;
    Ok(Reply::Empty)
}

pub(super) async fn pause_topic(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Params,
) -> Answer {
    set_topic_paused(&state.broker, &who, &params, true)
}

pub(super) async fn unpause_topic(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Params,
) -> Answer {
    set_topic_paused(&state.broker, &who, &params, false)
}

fn set_topic_paused(broker: &Broker, who: &Principal, params: &Params, paused: bool) -> Answer {
    let topic = params.existing_topic()?;
    refuse_if_exiting(broker)?;
    broker.pause_topic(who, &topic, paused)?;
    Ok(Reply::Empty)
}

/// Creates the channel of an existing topic: nsqd does not create the topic here.
pub(super) async fn create_channel(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Params,
) -> Answer {
    let (topic, channel) = params.topic_channel()?;
    refuse_if_exiting(&state.broker)?;
    require_topic(&state.broker, &who, &topic)?;
    let settings = params.channel_settings()?;
    state
        .broker
        .create_channel(&who, &topic, &channel, settings)?;
    Ok(Reply::Empty)
}

pub(super) async fn delete_channel(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Params,
) -> Answer {
    let (topic, channel) = params.topic_channel()?;
    refuse_if_exiting(&state.broker)?;
    state.broker.delete_channel(&who, &topic, &channel)?;
    Ok(Reply::Empty)
}

pub(super) async fn empty_channel(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Params,
) -> Answer {
    let (topic, channel) = params.topic_channel()?;
    refuse_if_exiting(&state.broker)?;
    state.broker.empty_channel(&who, &topic, &channel)?;
    Ok(Reply::Empty)
}

pub(super) async fn pause_channel(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Params,
) -> Answer {
    set_channel_paused(&state.broker, &who, &params, true)
}

pub(super) async fn unpause_channel(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Params,
) -> Answer {
    set_channel_paused(&state.broker, &who, &params, false)
}

fn set_channel_paused(broker: &Broker, who: &Principal, params: &Params, paused: bool) -> Answer {
    let (topic, channel) = params.topic_channel()?;
    refuse_if_exiting(broker)?;
    broker.pause_channel(who, &topic, &channel, paused)?;
    Ok(Reply::Empty)
}

/// `TOPIC_NOT_FOUND` unless `topic` exists. The broker has no cheaper existence check than
/// one topic's stats.
fn require_topic(broker: &Broker, who: &Principal, topic: &TopicName) -> Result<(), NsqError> {
    broker
        .stats(who, Some(topic))
        .map(drop)
        .map_err(NsqError::from)
}
