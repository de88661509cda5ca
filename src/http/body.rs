//! Reading request bodies under a size limit without buffering more than the limit.
//!
//! A declared `Content-Length` over the limit is refused before any of the body is read; a
//! body without one (chunked) is read until it passes the limit, then refused.

use std::future::poll_fn;
use std::pin::Pin;

use axum::body::{Body, HttpBody};
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};

use super::error::ApiError;

/// Reads all of `body`, or fails with [`ApiError::TooLarge`] once it exceeds `limit` bytes.
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge {
        what: "request body",
        limit,
    };
    let declared = content_length(headers)?;
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    // `declared` is at most `limit` here.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame
            .map_err(|e| ApiError::BadMessage(format!("could not read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| ApiError::BadMessage("invalid Content-Length".to_string()))
        })
        .transpose()
}
