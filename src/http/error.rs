//! Errors of the HTTP API and their responses: a status and `{"error": "...", "code": "E_..."}`.
//!
//! Codes are the wire protocol's ([`ErrorCode::name`]), so clients of either surface handle
//! failures the same way.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::broker::BrokerError;
use crate::protocol::ErrorCode;

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// A query parameter is missing or invalid; `param` names it.
    BadParam {
        param: &'static str,
        message: String,
    },
    /// The message headers or body are unacceptable.
    BadMessage(String),
    /// The body, or one message in it, is over `limit` bytes.
    TooLarge { what: &'static str, limit: usize },
    /// The broker refused the call.
    Broker(BrokerError),
    /// No endpoint has this path.
    NoRoute,
}

impl ApiError {
    pub(crate) fn missing(param: &'static str) -> Self {
        ApiError::BadParam {
            param,
            message: format!("missing parameter {param:?}"),
        }
    }

    pub(crate) fn bad(param: &'static str, why: impl std::fmt::Display) -> Self {
        ApiError::BadParam {
            param,
            message: format!("invalid parameter {param:?}: {why}"),
        }
    }

    /// Status, code and message.
    fn parts(&self) -> (StatusCode, ErrorCode, String) {
        match self {
            ApiError::BadParam { param, message } => {
                let code = match *param {
                    "topic" => ErrorCode::BadTopic,
                    "channel" => ErrorCode::BadChannel,
                    _ => ErrorCode::Invalid,
                };
                (StatusCode::BAD_REQUEST, code, message.clone())
            }
            ApiError::BadMessage(message) => (
                StatusCode::BAD_REQUEST,
                ErrorCode::BadMessage,
                message.clone(),
            ),
            ApiError::TooLarge { what, limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BadMessage,
                format!("{what} is over the {limit}-byte limit"),
            ),
            ApiError::Broker(e) => {
                let (status, code) = broker_status(e);
                (status, code, error_chain(e))
            }
            ApiError::NoRoute => (
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such endpoint".to_string(),
            ),
        }
    }
}

/// The one place a broker error becomes an HTTP status and error code.
fn broker_status(e: &BrokerError) -> (StatusCode, ErrorCode) {
    match e {
        BrokerError::TopicNotFound(_)
        | BrokerError::ChannelNotFound { .. }
        | BrokerError::Deleted => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
        BrokerError::Storage { .. } => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::PubFailed),
        BrokerError::OutOfRange { .. }
        | BrokerError::RdyTooHigh { .. }
        | BrokerError::Settle { .. } => (StatusCode::BAD_REQUEST, ErrorCode::Invalid),
        BrokerError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ShuttingDown),
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        ApiError::Broker(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(%status, code = code.name(), error = %message, "HTTP request failed");
        } else {
            tracing::debug!(%status, code = code.name(), error = %message, "HTTP request refused");
        }
        let body = serde_json::json!({ "error": message, "code": code.name() });
        (status, Json(body)).into_response()
    }
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
