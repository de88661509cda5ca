//! `POST /pub` and `POST /mpub`, checked in nsqd's order with nsqd's codes, and answered `OK`
//! once the broker reports the messages durable. NSQ messages carry no headers, but a
//! request may name a message id in `X-Quiver-Msg-Id` for the topic's dedup window, as on
//! the admin API (`crate::http::publish`): the answer stays nsqd's `OK`, with
//! `X-Quiver-Duplicates: <count>` when some messages were duplicates. `X-Quiver-Order-Key`
//! gives every message of the request an order key, for ordered channels. On a cluster node
//! that does not lead the topic, the publish is forwarded to the leader, which confirms it.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;

use super::body::{declared_len, read_at_most};
use super::params::Params;
use super::reply::{NsqError, Reply};
use super::{NsqHttp, Who};
use crate::http::publish::{assign_ids_and_keys, with_duplicates};
use crate::message::NewMessage;

const MSG_TOO_BIG: NsqError = NsqError::too_large("MSG_TOO_BIG");
const BODY_TOO_BIG: NsqError = NsqError::too_large("BODY_TOO_BIG");
/// nsqd answers binary `/mpub` errors with 413 and the TCP code minus its `E_`.
const BAD_BODY: NsqError = NsqError::too_large("BAD_BODY");
const BAD_MESSAGE: NsqError = NsqError::too_large("BAD_MESSAGE");
const INVALID_DEFER: NsqError = NsqError::bad_request("INVALID_DEFER");
/// `X-Quiver-Msg-Id` empty or not ASCII; an over-long one is the broker's `BAD_MESSAGE`.
const BAD_MSG_ID: NsqError = NsqError::bad_request("BAD_MESSAGE");

/// `POST /pub?topic=T[&defer=MS]`: the body is one message. As nsqd, the body is checked
/// before the parameters.
pub(super) async fn publish(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Result<Params, NsqError>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NsqError> {
    let max = state.node.max_msg_size();
    if declared_len(&headers).is_some_and(|len| len > max as u64) {
        return Err(MSG_TOO_BIG);
    }
    let body = read_at_most(body, max).await?;
    if body.len() > max {
        return Err(MSG_TOO_BIG);
    }
    if body.is_empty() {
        return Err(NsqError::bad_request("MSG_EMPTY"));
    }
    let params = params?;
    let topic = params.topic("INVALID_TOPIC")?;
    let delay = defer(&params, state.broker.config().max_defer)?;
    let mut messages = vec![NewMessage::new(body)];
    assign_ids_and_keys(&headers, &mut messages).map_err(|_| BAD_MSG_ID)?;
    let (_, duplicates) = state
        .broker
        .append_anywhere(&who, &topic, messages, delay)
        .await?
        .confirmed_marked()
        .await?;
    Ok(with_duplicates(Reply::ok().into_response(), &duplicates))
}

/// `POST /mpub?topic=T[&binary=true]`: one message per non-empty `\n`-separated line, or
/// nsqd's binary batch. All are stored or none. A text body without messages is `OK`, as in
/// nsqd.
pub(super) async fn multi_publish(
    State(state): State<NsqHttp>,
    Extension(who): Who,
    params: Result<Params, NsqError>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NsqError> {
    let (max_msg, max_body) = (state.node.max_msg_size(), state.node.max_body_size());
    if declared_len(&headers).is_some_and(|len| len > max_body as u64) {
        return Err(BODY_TOO_BIG);
    }
    let params = params?;
    let topic = params.topic("INVALID_TOPIC")?;
    // Absent is text; a value other than true/1/false/0 is binary (nsqd: deprecated).
    let binary = params.has("binary") && params.bool("binary").unwrap_or(true);
    let body = read_at_most(body, max_body).await?;
    let bodies = if binary {
        if body.len() > max_body {
            return Err(BODY_TOO_BIG);
        }
        binary_messages(&body, max_msg, max_body)?
    } else {
        text_messages(&body, max_msg, max_body)?
    };
    if bodies.is_empty() {
        return Ok(Reply::ok().into_response());
    }
    let mut messages: Vec<NewMessage> = bodies.into_iter().map(NewMessage::new).collect();
    assign_ids_and_keys(&headers, &mut messages).map_err(|_| BAD_MSG_ID)?;
    let (_, duplicates) = state
        .broker
        .append_anywhere(&who, &topic, messages, Duration::ZERO)
        .await?
        .confirmed_marked()
        .await?;
    Ok(with_duplicates(Reply::ok().into_response(), &duplicates))
}

/// `defer`, in milliseconds, from 0 to `max`; zero when absent.
fn defer(params: &Params, max: Duration) -> Result<Duration, NsqError> {
    let Some(text) = params.get("defer") else {
        return Ok(Duration::ZERO);
    };
    let ms: i64 = text.parse().map_err(|_| INVALID_DEFER)?;
    let ms = u64::try_from(ms).map_err(|_| INVALID_DEFER)?;
    let delay = Duration::from_millis(ms);
    if delay > max {
        return Err(INVALID_DEFER);
    }
    Ok(delay)
}

/// The messages of a text `/mpub` body, which holds at most `max_body + 1` bytes: the
/// non-empty lines, without their `\n`. As nsqd reads line by line, a line over `max_msg`
/// is `MSG_TOO_BIG` unless the body passed `max_body` first (`BODY_TOO_BIG`).
fn text_messages(body: &Bytes, max_msg: usize, max_body: usize) -> Result<Vec<Bytes>, NsqError> {
    let mut messages = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let end = body[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |at| start + at + 1);
        if end > max_body {
            return Err(BODY_TOO_BIG);
        }
        let line_end = if body[end - 1] == b'\n' { end - 1 } else { end };
        let line = start..line_end;
        start = end;
        if line.is_empty() {
            continue;
        }
        if line.len() > max_msg {
            return Err(MSG_TOO_BIG);
        }
        messages.push(body.slice(line));
    }
    Ok(messages)
}

/// The messages of a binary `/mpub` body: a big-endian `i32` count, then for each message an
/// `i32` size and that many bytes. Bytes after the last message are ignored, as by nsqd.
fn binary_messages(body: &Bytes, max_msg: usize, max_body: usize) -> Result<Vec<Bytes>, NsqError> {
    let mut at = 0;
    let count = read_i32(body, &mut at).ok_or(BAD_BODY)?;
    // 4 bytes of count, then at least 4 of size and 1 of body per message.
    let max_messages = (max_body.saturating_sub(4) / 5) as i64;
    if count <= 0 || i64::from(count) > max_messages {
        return Err(BAD_BODY);
    }
    let count = count.unsigned_abs() as usize;
    let mut messages = Vec::with_capacity(count.min(body.len() / 5));
    for _ in 0..count {
        let size = read_i32(body, &mut at).ok_or(BAD_MESSAGE)?;
        let size = usize::try_from(size).map_err(|_| BAD_MESSAGE)?;
        if size == 0 || size > max_msg || body.len() - at < size {
            return Err(BAD_MESSAGE);
        }
        messages.push(body.slice(at..at + size));
        at += size;
    }
    Ok(messages)
}

/// The big-endian `i32` at `*at`, advancing past it.
fn read_i32(body: &[u8], at: &mut usize) -> Option<i32> {
    let bytes: [u8; 4] = body.get(*at..*at + 4)?.try_into().ok()?;
    *at += 4;
    Some(i32::from_be_bytes(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn texts(messages: &[Bytes]) -> Vec<&[u8]> {
        messages.iter().map(|m| &m[..]).collect()
    }

    fn binary(bodies: &[&[u8]]) -> Bytes {
        let mut out = (bodies.len() as i32).to_be_bytes().to_vec();
        for body in bodies {
            out.extend_from_slice(&(body.len() as i32).to_be_bytes());
            out.extend_from_slice(body);
        }
        out.into()
    }

    #[test]
    fn text_lines_are_messages_and_empty_lines_are_skipped() {
        let body = Bytes::from_static(b"a\n\nbc\r\nd");
        let messages = text_messages(&body, 10, 100).unwrap();
        assert_eq!(texts(&messages), [&b"a"[..], b"bc\r", b"d"]);
        assert!(text_messages(&Bytes::from_static(b"\n\n"), 10, 100)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn text_limits_are_checked_line_by_line() {
        let long_line = Bytes::from_static(b"abcd\nx");
        assert_eq!(text_messages(&long_line, 3, 100), Err(MSG_TOO_BIG));
        // The body holds max_body + 1 bytes: over the limit.
        let over = Bytes::from_static(b"ab\ncd");
        assert_eq!(text_messages(&over, 10, 4), Err(BODY_TOO_BIG));
        // A long first line is found before the body passes its limit.
        let both = Bytes::from_static(b"abcd\ne");
        assert_eq!(text_messages(&both, 3, 5), Err(MSG_TOO_BIG));
        let exact = Bytes::from_static(b"ab\ncd");
        assert_eq!(text_messages(&exact, 10, 5).unwrap().len(), 2);
    }

    #[test]
    fn binary_batches_decode() {
        let body = binary(&[b"one", b"two\nlines", b"\x00\xff"]);
        let messages = binary_messages(&body, 100, 1000).unwrap();
        assert_eq!(texts(&messages), [&b"one"[..], b"two\nlines", b"\x00\xff"]);
        let mut trailing = body.to_vec();
        trailing.extend_from_slice(b"junk");
        assert_eq!(
            binary_messages(&trailing.into(), 100, 1000).unwrap().len(),
            3
        );
    }

    #[test]
    fn malformed_binary_batches_get_nsqd_codes() {
        let decode = |bytes: &[u8]| binary_messages(&Bytes::copy_from_slice(bytes), 5, 100);
        assert_eq!(decode(b"\x00\x00"), Err(BAD_BODY));
        assert_eq!(decode(&0i32.to_be_bytes()), Err(BAD_BODY));
        assert_eq!(decode(&(-1i32).to_be_bytes()), Err(BAD_BODY));
        // (100 - 4) / 5 = 19 messages at most.
        assert_eq!(decode(&20i32.to_be_bytes()), Err(BAD_BODY));
        assert_eq!(decode(&1i32.to_be_bytes()), Err(BAD_MESSAGE));
        assert_eq!(decode(b"\0\0\0\x01\0\0\0\0"), Err(BAD_MESSAGE));
        assert_eq!(decode(b"\0\0\0\x01\xff\xff\xff\xff"), Err(BAD_MESSAGE));
        assert_eq!(decode(b"\0\0\0\x01\0\0\0\x06abcdef"), Err(BAD_MESSAGE));
        assert_eq!(decode(b"\0\0\0\x01\0\0\0\x03ab"), Err(BAD_MESSAGE));
        assert_eq!(decode(b"\0\0\0\x02\0\0\0\x01a"), Err(BAD_MESSAGE));
        assert_eq!(BAD_MESSAGE.status.as_u16(), 413);
    }

    #[test]
    fn defer_is_whole_milliseconds_up_to_the_maximum() {
        let max = Duration::from_secs(3600);
        let with = |v: &str| defer(&Params::from_pairs(&[("defer", v)]), max);
        assert_eq!(defer(&Params::default(), max), Ok(Duration::ZERO));
        assert_eq!(with("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(with("+5"), Ok(Duration::from_millis(5)));
        assert_eq!(with("3600000"), Ok(max));
        for bad in ["3600001", "-1", "1.5", "", "abc", "99999999999999999999"] {
            assert_eq!(with(bad), Err(INVALID_DEFER), "{bad}");
        }
    }
}
