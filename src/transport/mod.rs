//! QUIC transport: endpoints, TLS, and frame-at-a-time reading over quinn streams.
//!
//! Streams are read in large chunks into a buffer and frames are split off that buffer, which
//! is an order of magnitude faster than reading each frame exactly.

pub mod tls;

use bytes::BytesMut;

use crate::protocol::{split_frame, FrameError, RawFrame};

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 64 * 1024;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream read failed")]
    Stream(#[from] quinn::ReadError),
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Reads frames from a QUIC receive stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReader {
            recv,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// A frame that is already buffered, without waiting.
    pub fn buffered(&mut self) -> Result<Option<RawFrame>, FrameError> {
        split_frame(&mut self.buf)
    }

    /// The next frame, or `None` when the peer finished the stream cleanly between frames.
    ///
    /// Cancel-safe: bytes land in the buffer only when a read completes.
    pub async fn next(&mut self) -> Result<Option<RawFrame>, ReadError> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf)? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(READ_CHUNK, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(ReadError::Truncated {
                        buffered: self.buf.len(),
                    })
                }
            }
        }
    }

    /// Stops reading: the peer is told with this application error code.
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(code));
    }
}
