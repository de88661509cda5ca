//! Query parameters, parsed leniently as strings and validated one by one, so every error
//! names the parameter that caused it.

use std::time::Duration;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::Deserialize;

use super::error::ApiError;
use crate::message::{ChannelName, ChannelSettings, OrderBy, TopicName};

/// The query parameters any endpoint may take. Each endpoint reads the ones it uses.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Params {
    topic: Option<String>,
    channel: Option<String>,
    defer: Option<String>,
    max_attempts: Option<String>,
    ordering: Option<String>,
    order_key_header: Option<String>,
    id: Option<String>,
    peer_addr: Option<String>,
    replication: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<Params>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| params)
            .map_err(|e| ApiError::BadParam {
                param: "query",
                message: e.body_text(),
            })
    }
}

impl Params {
    pub(crate) fn topic(&self) -> Result<TopicName, ApiError> {
        let name = self.topic.as_deref().ok_or(ApiError::missing("topic"))?;
        TopicName::new(name).map_err(|e| ApiError::BadParam {
            param: "topic",
            message: e.to_string(),
        })
    }

    /// The topic, when the parameter is given.
    pub(crate) fn topic_opt(&self) -> Result<Option<TopicName>, ApiError> {
        self.topic.as_ref().map(|_| self.topic()).transpose()
    }

    pub(crate) fn channel(&self) -> Result<ChannelName, ApiError> {
        let name = self
            .channel
            .as_deref()
            .ok_or(ApiError::missing("channel"))?;
        ChannelName::new(name).map_err(|e| ApiError::BadParam {
            param: "channel",
            message: e.to_string(),
        })
    }

    /// The DPUB delay in milliseconds, at most `max`; zero when absent.
    pub(crate) fn defer(&self, max: Duration) -> Result<Duration, ApiError> {
        let Some(text) = self.defer.as_deref() else {
            return Ok(Duration::ZERO);
        };
        let ms: u64 = text
            .parse()
            .map_err(|_| ApiError::bad("defer", "expected milliseconds as a whole number"))?;
        let delay = Duration::from_millis(ms);
        if delay > max {
            let why = format!("{ms} ms is over the maximum of {} ms", max.as_millis());
            return Err(ApiError::bad("defer", why));
        }
        Ok(delay)
    }

    /// A channel create's settings: `max_attempts`, `ordering` and `order_key_header`.
    pub(crate) fn channel_settings(&self) -> Result<ChannelSettings, ApiError> {
        Ok(ChannelSettings {
            max_attempts: self.max_attempts()?,
            ordering: self.ordering()?,
            ..ChannelSettings::default()
        })
    }

    /// `ordering` (`none`, `channel`, `key`) with `order_key_header` for `key`.
    pub(crate) fn ordering(&self) -> Result<Option<OrderBy>, ApiError> {
        let header = self.order_key_header.as_deref();
        OrderBy::parse_setting(self.ordering.as_deref(), header)
            .map_err(|why| ApiError::bad("ordering", why))
    }

    pub(crate) fn max_attempts(&self) -> Result<Option<u16>, ApiError> {
        self.max_attempts
            .as_deref()
            .map(|text| {
                text.parse().map_err(|_| {
                    ApiError::bad("max_attempts", format!("expected 0 to {}", u16::MAX))
                })
            })
            .transpose()
    }

    /// A topic's `replication` factor, 1 or more.
    pub(crate) fn replication(&self) -> Result<Option<u16>, ApiError> {
        let Some(text) = self.replication.as_deref() else {
            return Ok(None);
        };
        match text.parse() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(ApiError::bad(
                "replication",
                "expected a whole number, 1 or more",
            )),
        }
    }

    /// A cluster member's `id`.
    pub(crate) fn node_id(&self) -> Result<u64, ApiError> {
        let text = self.id.as_deref().ok_or(ApiError::missing("id"))?;
        match text.parse() {
            Ok(id) if id > 0 => Ok(id),
            _ => Err(ApiError::bad("id", "expected a node id (1 or more)")),
        }
    }

    /// A node's `peer_addr`, `HOST:PORT`.
    pub(crate) fn peer_addr(&self) -> Result<String, ApiError> {
        let text = self
            .peer_addr
            .as_deref()
            .ok_or(ApiError::missing("peer_addr"))?;
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(text.to_string())
            }
            _ => Err(ApiError::bad("peer_addr", "expected HOST:PORT")),
        }
    }
}
