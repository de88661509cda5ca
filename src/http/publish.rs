//! `POST /pub` and `POST /mpub`: messages from request bodies, headers from
//! `X-Quiver-Header-<name>` request headers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Extension;
use bytes::Bytes;

use super::body::read_limited;
use super::error::ApiError;
use super::params::Params;
use super::refuse_if_shutting_down;
use crate::broker::{Broker, Principal};
use crate::message::{Headers, NewMessage, MAX_BODY_LEN};

/// Request headers with this prefix become message headers (`http` lowercases names).
const HEADER_PREFIX: &str = "x-quiver-header-";
/// Largest `/mpub` body, the same as the largest MPUB frame.
const MAX_MPUB_LEN: usize = 5 << 20;

/// `POST /pub?topic=T[&defer=MS]`: the body is one message.
pub(crate) async fn publish(
    State(broker): State<Broker>,
    Extension(who): Extension<Arc<Principal>>,
    params: Params,
    request_headers: HeaderMap,
    body: Body,
) -> Result<&'static str, ApiError> {
    let topic = params.topic()?;
    let delay = params.defer(broker.config().max_defer)?;
    let headers = message_headers(&request_headers)?;
    refuse_if_shutting_down(&broker)?;
    let body = read_limited(&request_headers, body, MAX_BODY_LEN).await?;
    broker
        .publish(&who, &topic, vec![NewMessage { headers, body }], delay)
        .await?;
    Ok("OK")
}

/// `POST /mpub?topic=T[&defer=MS]`: each non-empty line of the body is a message; all are
/// stored or none.
pub(crate) async fn multi_publish(
    State(broker): State<Broker>,
    Extension(who): Extension<Arc<Principal>>,
    params: Params,
    request_headers: HeaderMap,
    body: Body,
) -> Result<&'static str, ApiError> {
    let topic = params.topic()?;
    let delay = params.defer(broker.config().max_defer)?;
    let headers = message_headers(&request_headers)?;
    refuse_if_shutting_down(&broker)?;
    let body = read_limited(&request_headers, body, MAX_MPUB_LEN).await?;
    let messages = split_lines(&body, &headers)?;
    broker.publish(&who, &topic, messages, delay).await?;
    Ok("OK")
}

/// The non-empty `\n`-separated lines of `body`, each a message with `headers`.
fn split_lines(body: &Bytes, headers: &Headers) -> Result<Vec<NewMessage>, ApiError> {
    let mut messages = Vec::new();
    let mut start = 0;
    for line in body.split(|&b| b == b'\n') {
        let range = start..start + line.len();
        start = range.end + 1;
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_BODY_LEN {
            return Err(ApiError::TooLarge {
                what: "a message",
                limit: MAX_BODY_LEN,
            });
        }
        messages.push(NewMessage {
            headers: headers.clone(),
            body: body.slice(range),
        });
    }
    if messages.is_empty() {
        return Err(ApiError::BadMessage(
            "the body holds no messages".to_string(),
        ));
    }
    Ok(messages)
}

/// Message headers from `X-Quiver-Header-<name>` request headers, in the order their names
/// first appear.
fn message_headers(request: &HeaderMap) -> Result<Headers, ApiError> {
    let mut pairs = Vec::new();
    for (name, value) in request {
        let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        let value = std::str::from_utf8(value.as_bytes())
            .map_err(|_| ApiError::BadMessage(format!("header {name} is not valid UTF-8")))?;
        pairs.push((key.to_string(), value.to_string()));
    }
    Headers::from_pairs(pairs).map_err(|e| ApiError::BadMessage(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_on_newlines_and_skip_empty_ones() {
        let body = Bytes::from_static(b"a\n\nbc\n");
        let messages = split_lines(&body, &Headers::new()).unwrap();
        let bodies: Vec<&[u8]> = messages.iter().map(|m| &m.body[..]).collect();
        assert_eq!(bodies, [&b"a"[..], b"bc"]);
        assert!(split_lines(&Bytes::from_static(b"\n\n"), &Headers::new()).is_err());
    }

    #[test]
    fn quiver_headers_are_picked_and_lowercased() {
        let mut request = HeaderMap::new();
        request.insert("X-Quiver-Header-Trace-Id", "abc".parse().unwrap());
        request.insert("X-Other", "x".parse().unwrap());
        let headers = message_headers(&request).unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers.get("trace-id"), Some("abc"));
    }
}
