//! Request bodies read as nsqd reads them: through `io.LimitReader(body, limit + 1)`, so that a
//! body longer than the limit shows as one byte too many, and no more than that is buffered.

use std::future::poll_fn;
use std::pin::Pin;

use axum::body::{Body, HttpBody};
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};

use super::reply::NsqError;

/// The declared `Content-Length`, when there is one (Go's `req.ContentLength`).
pub(crate) fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok())
}

/// Reads `body` until it ends or holds `limit + 1` bytes; a result longer than `limit` means
/// the body is over it. A body that cannot be read is nsqd's `500 INTERNAL_ERROR`.
pub(crate) async fn read_at_most(mut body: Body, limit: usize) -> Result<Bytes, NsqError> {
    let cap = limit.saturating_add(1);
    let mut buf = BytesMut::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|error| {
            tracing::debug!(%error, "reading an nsqd HTTP request body");
            NsqError::INTERNAL_ERROR
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let room = cap - buf.len();
        buf.extend_from_slice(&data[..data.len().min(room)]);
        if buf.len() == cap {
            break;
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_at_most_one_byte_past_the_limit() {
        let short = read_at_most(Body::from("abc"), 3).await.unwrap();
        assert_eq!(&short[..], b"abc");
        let long = read_at_most(Body::from("abcdef"), 3).await.unwrap();
        assert_eq!(&long[..], b"abcd");
    }

    #[test]
    fn declared_length_is_read_when_valid() {
        let mut headers = HeaderMap::new();
        assert_eq!(declared_len(&headers), None);
        headers.insert(header::CONTENT_LENGTH, "12".parse().unwrap());
        assert_eq!(declared_len(&headers), Some(12));
    }
}
