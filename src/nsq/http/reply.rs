//! Responses as nsqd frames them (`internal/http_api`): `V1` for the API, with its
//! `X-NSQ-Content-Type` header and `{"message":"<CODE>"}` errors, and plain text for `/ping`.

use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::broker::{BrokerError, ErrorKind};
use crate::http::guard::Refusal;

const X_NSQ_CONTENT_TYPE: HeaderName = HeaderName::from_static("x-nsq-content-type");
const NSQ_V1: HeaderValue = HeaderValue::from_static("nsq; version=1.0");
const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");
/// What Go's `net/http` sniffs for a text body.
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// A failed request: a status and one of nsqd's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NsqError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
}

impl NsqError {
    pub(crate) const METHOD_NOT_ALLOWED: NsqError =
        NsqError::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
    pub(crate) const INTERNAL_ERROR: NsqError =
        NsqError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR");
    pub(crate) const INVALID_REQUEST: NsqError = NsqError::bad_request("INVALID_REQUEST");

    pub(crate) const fn new(status: StatusCode, code: &'static str) -> NsqError {
        NsqError { status, code }
    }

    pub(crate) const fn bad_request(code: &'static str) -> NsqError {
        NsqError::new(StatusCode::BAD_REQUEST, code)
    }

    pub(crate) const fn not_found(code: &'static str) -> NsqError {
        NsqError::new(StatusCode::NOT_FOUND, code)
    }

    pub(crate) const fn too_large(code: &'static str) -> NsqError {
        NsqError::new(StatusCode::PAYLOAD_TOO_LARGE, code)
    }

    /// A broker refusal in nsqd's terms, logged with its cause (nsqd's codes carry none).
    pub(crate) fn broker(error: BrokerError) -> NsqError {
        let (status, code) = match error.kind() {
            ErrorKind::NotFound => match &error {
                BrokerError::ChannelNotFound { .. } => (StatusCode::NOT_FOUND, "CHANNEL_NOT_FOUND"),
                _ => (StatusCode::NOT_FOUND, "TOPIC_NOT_FOUND"),
            },
            ErrorKind::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "EXITING"),
            // nsqd answers 503 whenever a publish cannot be stored.
            ErrorKind::DiskFull | ErrorKind::StorageFailed => {
                (StatusCode::SERVICE_UNAVAILABLE, "PUB_FAILED")
            }
            ErrorKind::Unrouted => (StatusCode::UNPROCESSABLE_ENTITY, "UNROUTED"),
            ErrorKind::Invalid if matches!(error, BrokerError::OutOfRange { .. }) => {
                (StatusCode::BAD_REQUEST, "INVALID_DEFER")
            }
            ErrorKind::Invalid if matches!(error, BrokerError::BadMessage(_)) => {
                (StatusCode::BAD_REQUEST, "BAD_MESSAGE")
            }
            ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "AUTH_REQUIRED"),
            // A publish to a follower is forwarded to the leader before it gets here.
            ErrorKind::NotLeader => (StatusCode::MISDIRECTED_REQUEST, "NOT_LEADER"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            ErrorKind::Denied => (StatusCode::FORBIDDEN, "UNAUTHORIZED"),
            ErrorKind::Invalid
            | ErrorKind::ReqFailed
            | ErrorKind::FinFailed
            | ErrorKind::TouchFailed => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        };
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(%status, code, %error, "nsqd HTTP request failed");
        } else {
            tracing::debug!(%status, code, %error, "nsqd HTTP request refused");
        }
        NsqError::new(status, code)
    }
}

impl From<BrokerError> for NsqError {
    fn from(error: BrokerError) -> Self {
        NsqError::broker(error)
    }
}

impl IntoResponse for NsqError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "message": self.code }).to_string();
        let headers = [(CONTENT_TYPE, JSON), (X_NSQ_CONTENT_TYPE, NSQ_V1)];
        (self.status, headers, body).into_response()
    }
}

/// A request the guard refused, as nsqd frames errors: `{"message":"FORBIDDEN"}` for a
/// cross-site request (403), `{"message":"AUTH_FAILED"}` for bad credentials (401),
/// `{"message":"AUTH_UNAVAILABLE"}` when no auth server could be asked (503).
pub(crate) fn render_refusal(refusal: &Refusal) -> Response {
    let code = match refusal {
        Refusal::CrossSite(_) => "FORBIDDEN",
        Refusal::BadCredentials(_) => "AUTH_FAILED",
        Refusal::Unavailable(_) => "AUTH_UNAVAILABLE",
    };
    NsqError::new(refusal.status(), code).into_response()
}

/// A successful response.
#[derive(Debug)]
pub(crate) enum Reply {
    /// `V1` text, such as `OK`.
    Text(String),
    /// `V1` with no body (administration).
    Empty,
    /// `V1` JSON, already encoded.
    Json(Vec<u8>),
    /// nsqd's `PlainText` decorator (`/ping`): no `X-NSQ-Content-Type`, any status.
    Plain(StatusCode, &'static str),
}

impl Reply {
    pub(crate) fn ok() -> Reply {
        Reply::Text("OK".to_string())
    }

    pub(crate) fn json(value: &impl Serialize) -> Result<Reply, NsqError> {
        serde_json::to_vec(value).map(Reply::Json).map_err(|error| {
            tracing::error!(%error, "encoding an nsqd HTTP response");
            NsqError::INTERNAL_ERROR
        })
    }

    pub(crate) fn plain(status: u16, text: &'static str) -> Reply {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Reply::Plain(status, text)
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let v1 = (X_NSQ_CONTENT_TYPE, NSQ_V1);
        match self {
            Reply::Text(text) => ([(CONTENT_TYPE, TEXT), v1], text).into_response(),
            Reply::Empty => ([v1], ()).into_response(),
            Reply::Json(bytes) => ([(CONTENT_TYPE, JSON), v1], bytes).into_response(),
            Reply::Plain(status, text) => (status, [(CONTENT_TYPE, TEXT)], text).into_response(),
        }
    }
}
