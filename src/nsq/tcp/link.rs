//! One connection's byte stream: TCP, maybe upgraded in band to TLS, maybe compressed, with
//! the buffers between it and the session. The session parses commands from
//! [`Link::input`] and encodes frames into [`Link::out`]; the link does the rest.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::compress::{Codec, CodecError};

/// How long the TLS handshake may take (nsqd's deadline).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read per read call, at most.
const READ_CHUNK: usize = 64 * 1024;

/// Why the link failed; the connection ends.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connection I/O")]
    Io(#[from] io::Error),
    #[error("reading the compressed stream")]
    Codec(#[from] CodecError),
    #[error("the TLS handshake took longer than {TLS_HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("the client sent {0} bytes before the TLS handshake")]
    EarlyData(usize),
    #[error("writing took longer than {0:?}")]
    WriteTimeout(Duration),
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the TCP stream is handed to the TLS handshake.
    Upgrading,
}

/// The stream and its buffers.
pub struct Link {
    stream: Stream,
    codec: Option<Codec>,
    /// Compressed bytes not yet decoded (only with a codec).
    raw_in: BytesMut,
    /// Plain bytes read: commands.
    pub input: BytesMut,
    /// Plain bytes to write: frames.
    pub out: BytesMut,
    /// Compressed bytes to write (only with a codec).
    raw_out: BytesMut,
    tls: bool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("tls", &self.tls)
            .field("codec", &self.codec)
            .field("input", &self.input.len())
            .field("out", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link over `stream`, whose first `input` bytes were read already.
    pub fn new(stream: TcpStream, input: BytesMut) -> Link {
        Link {
            stream: Stream::Plain(stream),
            codec: None,
            raw_in: BytesMut::new(),
            input,
            out: BytesMut::with_capacity(READ_CHUNK),
            raw_out: BytesMut::new(),
            tls: false,
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The client's verified certificate chain, after a TLS upgrade with mTLS.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match &self.stream {
            Stream::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|c| c.as_ref()),
            _ => None,
        }
    }

    /// Reads once, decoding onto [`Link::input`]. Ok(false) at end of stream. Cancel-safe:
    /// nothing is lost if the future is dropped before it completes.
    pub async fn read(&mut self) -> Result<bool, LinkError> {
        let Some(codec) = &mut self.codec else {
            self.input.reserve(READ_CHUNK);
            return Ok(self.stream.read_buf(&mut self.input).await? > 0);
        };
        self.raw_in.reserve(READ_CHUNK);
        if self.stream.read_buf(&mut self.raw_in).await? == 0 {
            return Ok(false);
        }
        codec.decode(&mut self.raw_in, &mut self.input)?;
        Ok(true)
    }

    /// Writes everything in [`Link::out`], within `limit` if there is one.
    pub async fn flush(&mut self, limit: Option<Duration>) -> Result<(), LinkError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            match &mut self.codec {
                None => self.stream.write_all(&self.out).await?,
                Some(codec) => {
                    codec.encode(&self.out, &mut self.raw_out)?;
                    self.stream.write_all(&self.raw_out).await?;
                    self.raw_out.clear();
                }
            }
            // TLS keeps records until flushed; for TCP this does nothing.
            self.stream.flush().await?;
            self.out.clear();
            Ok::<(), LinkError>(())
        };
        match limit {
            None => write.await,
            Some(limit) => tokio::time::timeout(limit, write)
                .await
                .map_err(|_| LinkError::WriteTimeout(limit))?,
        }
    }

    /// The in-band TLS upgrade, after the IDENTIFY reply went out in the clear.
    pub async fn upgrade_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<(), LinkError> {
        if !self.input.is_empty() {
            return Err(LinkError::EarlyData(self.input.len()));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            return Err(io::Error::other("TLS is already on").into());
        };
        let accept = TlsAcceptor::from(config).accept(tcp);
        let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept)
            .await
            .map_err(|_| LinkError::HandshakeTimeout)??;
        self.stream = Stream::Tls(Box::new(tls));
        self.tls = true;
        Ok(())
    }

    /// Compresses both directions from now on. Bytes already read are compressed ones.
    pub fn compress(&mut self, codec: Codec) -> Result<(), LinkError> {
        let mut codec = codec;
        self.raw_in = std::mem::take(&mut self.input);
        codec.decode(&mut self.raw_in, &mut self.input)?;
        self.codec = Some(codec);
        Ok(())
    }

    /// Closes the write side, so the client sees the end of the stream after the last frame.
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

fn upgrading() -> io::Error {
    io::Error::other("the stream is being upgraded to TLS")
}
