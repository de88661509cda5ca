//! `POST /pub` and `POST /mpub`: messages from request bodies, headers from
//! `X-Quiver-Header-<name>` request headers, the message id from `X-Quiver-Msg-Id`.
//!
//! On `/pub` the id is the message's; on `/mpub` message `i` (0-based, in body order) gets
//! `<id>-<i>`, so a retried request with the same header and body repeats every id. A
//! request whose messages were duplicates of ones in the topic's dedup window is answered
//! `OK` as usual with `X-Quiver-Duplicates: <count>` (absent when none was). The nsqd HTTP
//! API does the same (`src/nsq/http/publish.rs`). On a cluster node that does not lead the
//! topic, the publish is forwarded to the leader and answered with its confirmation
//! ([`Broker::append_anywhere`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
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
/// The request header that names the message id (`quiver-msg-id`).
const MSG_ID: &str = "x-quiver-msg-id";
/// The request header that gives every message of the request its order key
/// (`quiver-order-key`).
const ORDER_KEY: &str = "x-quiver-order-key";
/// The response header that counts the request's messages confirmed as duplicates.
const DUPLICATES: HeaderName = HeaderName::from_static("x-quiver-duplicates");
/// Largest `/mpub` body, the same as the largest MPUB frame.
const MAX_MPUB_LEN: usize = 5 << 20;

/// `POST /pub?topic=T[&defer=MS]`: the body is one message.
pub(crate) async fn publish(
    State(broker): State<Broker>,
    Extension(who): Extension<Arc<Principal>>,
    params: Params,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let topic = params.topic()?;
    let delay = params.defer(broker.config().max_defer)?;
    let headers = message_headers(&request_headers)?;
    refuse_if_shutting_down(&broker)?;
    let body = read_limited(&request_headers, body, MAX_BODY_LEN).await?;
    let mut messages = vec![NewMessage { headers, body }];
    assign_ids_and_keys(&request_headers, &mut messages).map_err(ApiError::BadMessage)?;
    let (_, duplicates) = broker
        .append_anywhere(&who, &topic, messages, delay)
        .await?
        .confirmed_marked()
        .await?;
    Ok(with_duplicates("OK".into_response(), &duplicates))
}

/// `POST /mpub?topic=T[&defer=MS]`: each non-empty line of the body is a message; all are
/// stored or none.
pub(crate) async fn multi_publish(
    State(broker): State<Broker>,
    Extension(who): Extension<Arc<Principal>>,
    params: Params,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let topic = params.topic()?;
    let delay = params.defer(broker.config().max_defer)?;
    let headers = message_headers(&request_headers)?;
    refuse_if_shutting_down(&broker)?;
    let body = read_limited(&request_headers, body, MAX_MPUB_LEN).await?;
    let mut messages = split_lines(&body, &headers)?;
    assign_ids_and_keys(&request_headers, &mut messages).map_err(ApiError::BadMessage)?;
    let (_, duplicates) = broker
        .append_anywhere(&who, &topic, messages, delay)
        .await?
        .confirmed_marked()
        .await?;
    Ok(with_duplicates("OK".into_response(), &duplicates))
}

/// Gives the messages the order key of `X-Quiver-Order-Key` (every message of the request)
/// and their ids from `X-Quiver-Msg-Id`: the id itself for one message, `<id>-<i>` for
/// message `i` of several. The broker checks the ids' length.
pub(crate) fn assign_ids_and_keys(
    request: &HeaderMap,
    messages: &mut [NewMessage],
) -> Result<(), String> {
    if let Some(value) = request.get(ORDER_KEY) {
        let key = value
            .to_str()
            .map_err(|_| format!("{ORDER_KEY} is not visible ASCII"))?;
        if key.is_empty() {
            return Err(format!("{ORDER_KEY} is empty"));
        }
        for message in messages.iter_mut() {
            *message = std::mem::take(message).with_order_key(key);
        }
    }
    let Some(value) = request.get(MSG_ID) else {
        return Ok(());
    };
    let id = value
        .to_str()
        .map_err(|_| format!("{MSG_ID} is not visible ASCII"))?;
    if id.is_empty() {
        return Err(format!("{MSG_ID} is empty"));
    }
    if let [one] = messages {
        *one = std::mem::take(one).with_msg_id(id);
        return Ok(());
    }
    for (i, message) in messages.iter_mut().enumerate() {
        *message = std::mem::take(message).with_msg_id(format!("{id}-{i}"));
    }
    Ok(())
}

/// `response` with `X-Quiver-Duplicates: <count>` when some messages were duplicates.
pub(crate) fn with_duplicates(mut response: Response, duplicates: &[bool]) -> Response {
    let count = duplicates.iter().filter(|&&d| d).count();
    if count > 0 {
        response
            .headers_mut()
            .insert(DUPLICATES, HeaderValue::from(count));
    }
    response
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
