//! `POST /topic/*` and `POST /channel/*`, with nsqd's checks: a topic call validates the name
//! only where nsqd does (create and empty), and a channel call needs its topic to exist.
//! Success is `200` with an empty body.

use axum::extract::State;

use super::params::Params;
use super::reply::{NsqError, Reply};
use super::NsqHttp;
use crate::broker::{Broker, BrokerError};
use crate::message::TopicName;

type Answer = Result<Reply, NsqError>;

/// Refuses changes once the broker is shutting down, as nsqd refuses them while exiting.
fn refuse_if_exiting(broker: &Broker) -> Result<(), NsqError> {
    if broker.is_shutting_down() {
        return Err(BrokerError::ShuttingDown.into());
    }
    Ok(())
}

pub(super) async fn create_topic(State(state): State<NsqHttp>, params: Params) -> Answer {
    let topic = params.topic("INVALID_TOPIC")?;
    refuse_if_exiting(&state.broker)?;
    state.broker.create_topic(&topic)?;
    Ok(Reply::Empty)
}

pub(super) async fn delete_topic(State(state): State<NsqHttp>, params: Params) -> Answer {
    let topic = params.existing_topic()?;
    refuse_if_exiting(&state.broker)?;
    state.broker.delete_topic(&topic)?;
    Ok(Reply::Empty)
}

pub(super) async fn empty_topic(State(state): State<NsqHttp>, params: Params) -> Answer {
    let topic = params.topic("INVALID_TOPIC")?;
    refuse_if_exiting(&state.broker)?;
    state.broker.empty_topic(&topic)?;
    Ok(Reply::Empty)
}

pub(super) async fn pause_topic(State(state): State<NsqHttp>, params: Params) -> Answer {
    set_topic_paused(&state.broker, &params, true)
}

pub(super) async fn unpause_topic(State(state): State<NsqHttp>, params: Params) -> Answer {
    set_topic_paused(&state.broker, &params, false)
}

fn set_topic_paused(broker: &Broker, params: &Params, paused: bool) -> Answer {
    let topic = params.existing_topic()?;
    refuse_if_exiting(broker)?;
    broker.pause_topic(&topic, paused)?;
    Ok(Reply::Empty)
}

/// Creates the channel of an existing topic: nsqd does not create the topic here.
pub(super) async fn create_channel(State(state): State<NsqHttp>, params: Params) -> Answer {
    let (topic, channel) = params.topic_channel()?;
    refuse_if_exiting(&state.broker)?;
    require_topic(&state.broker, &topic)?;
    state.broker.create_channel(&topic, &channel, None)?;
    Ok(Reply::Empty)
}

pub(super) async fn delete_channel(State(state): State<NsqHttp>, params: Params) -> Answer {
    let (topic, channel) = params.topic_channel()?;
    refuse_if_exiting(&state.broker)?;
    state.broker.delete_channel(&topic, &channel)?;
    Ok(Reply::Empty)
}

pub(super) async fn empty_channel(State(state): State<NsqHttp>, params: Params) -> Answer {
    let (topic, channel) = params.topic_channel()?;
    refuse_if_exiting(&state.broker)?;
    state.broker.empty_channel(&topic, &channel)?;
    Ok(Reply::Empty)
}

pub(super) async fn pause_channel(State(state): State<NsqHttp>, params: Params) -> Answer {
    set_channel_paused(&state.broker, &params, true)
}

pub(super) async fn unpause_channel(State(state): State<NsqHttp>, params: Params) -> Answer {
    set_channel_paused(&state.broker, &params, false)
}

fn set_channel_paused(broker: &Broker, params: &Params, paused: bool) -> Answer {
    let (topic, channel) = params.topic_channel()?;
    refuse_if_exiting(broker)?;
    broker.pause_channel(&topic, &channel, paused)?;
    Ok(Reply::Empty)
}

/// `TOPIC_NOT_FOUND` unless `topic` exists. The broker has no cheaper existence check than
/// one topic's stats.
fn require_topic(broker: &Broker, topic: &TopicName) -> Result<(), NsqError> {
    broker.stats(Some(topic)).map(drop).map_err(NsqError::from)
}
