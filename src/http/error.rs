//! Errors of the HTTP API and their responses: a status and `{"error": "...", "code": "E_..."}`.
//!
//! Codes are the wire protocol's ([`ErrorCode::name`]), so clients of either surface handle
//! failures the same way.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::broker::{BrokerError, ErrorKind};
use crate::cluster::raft::node::ClusterError;
use crate::log_limit::{self, Site};
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
    /// A cluster endpoint on a node without a `[cluster]` section.
    NotClustered,
    /// The cluster could not make a change.
    Cluster(ClusterError),
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
                let wire = crate::session::broker_error(e, 0);
                let status = match e.kind() {
                    ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
                    _ => broker_status(wire.code),
                };
                (status, wire.code, wire.message)
            }
            ApiError::NoRoute => (
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such endpoint".to_string(),
            ),
            ApiError::NotClustered => (
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "this node is not part of a cluster (it has no [cluster] section)".to_string(),
            ),
            ApiError::Cluster(e @ ClusterError::Refused(_)) => {
                (StatusCode::CONFLICT, ErrorCode::Invalid, e.to_string())
            }
            ApiError::Cluster(
                e @ (ClusterError::NoLeader | ClusterError::Timeout(_) | ClusterError::Peer(_)),
            ) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                e.to_string(),
            ),
            ApiError::Cluster(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            ),
        }
    }
}

impl ApiError {
    /// Whether the error may be logged: a full disk refuses every publish to a topic, so its
    /// refusals are rate-limited per topic.
    fn log_allowed(&self) -> bool {
        match self {
            ApiError::Broker(e @ BrokerError::Storage { topic, .. })
                if e.kind() == ErrorKind::DiskFull =>
            {
                log_limit::allow(&DISK_FULL, &[("topic", topic.as_str())])
            }
            _ => true,
        }
    }
}

/// Publishes refused because the disk is full (507, `E_DISK_FULL`).
static DISK_FULL: Site = Site::new("HTTP request failed: the disk is full");

/// The HTTP status for a broker refusal; its code and message are the ones a QUIC client gets.
fn broker_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::ShuttingDown | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::NotLeader => StatusCode::MISDIRECTED_REQUEST,
        ErrorCode::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Unrouted => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Unauthorized => StatusCode::FORBIDDEN,
        ErrorCode::PubFailed | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
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
            if self.log_allowed() {
                tracing::error!(%status, code = code.name(), error = %message, "HTTP request failed");
            }
        } else {
            tracing::debug!(%status, code = code.name(), error = %message, "HTTP request refused");
        }
        let body = serde_json::json!({ "error": message, "code": code.name() });
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_limit::Limit;
    use crate::message::TopicName;
    use crate::storage::StorageError;

    fn storage_error(topic: &str, os_error: i32) -> ApiError {
        let source = std::io::Error::from_raw_os_error(os_error);
        ApiError::Broker(BrokerError::Storage {
            topic: TopicName::new(topic).unwrap(),
            source: StorageError::io(topic, "append", source),
        })
    }

    #[test]
    fn disk_full_refusals_are_logged_a_few_times_per_topic() {
        const ENOSPC: i32 = 28;
        const EIO: i32 = 5;
        let full = storage_error("http-error-test-full", ENOSPC);
        assert_eq!(full.parts().0, StatusCode::INSUFFICIENT_STORAGE);
        let logged = (0..100).filter(|_| full.log_allowed()).count();
        assert_eq!(logged, Limit::DEFAULT.lines as usize);
        let other = storage_error("http-error-test-other", ENOSPC);
        assert!(other.log_allowed(), "another topic has its own limit");
        let failed = storage_error("http-error-test-full", EIO);
        assert!(
            (0..100).all(|_| failed.log_allowed()),
            "other storage failures are not limited"
        );
    }
}
