//! The Rust client: a QUIC connection to a broker, with a [`Producer`] that awaits each
//! PUB-OK, a raw [`Subscription`] for full control, and a [`consumer`] that runs a handler
//! with flow control, auto-TOUCH, retries with backoff and a graceful close.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quiver::client::ClientError> {
//! use quiver::client::{Client, ClientOptions};
//! use quiver::message::{NewMessage, TopicName};
//! use quiver::transport::tls::Trust;
//!
//! let options = ClientOptions::new("127.0.0.1:7400".parse().unwrap(), Trust::CaFile("quiver-data/tls/cert.pem".into()));
//! let client = Client::connect(&options).await?;
//! let producer = client.producer().await?;
//! producer.publish(&TopicName::new("orders").unwrap(), NewMessage::new("hello")).await?;
//! # Ok(()) }
//! ```

pub mod consumer;
mod producer;
mod retrying;
mod subscription;
mod writer;

pub use crate::message::{MSG_ID_HEADER, ORDER_KEY_HEADER};
pub use consumer::{ConsumerConfig, ConsumerSummary};
pub use producer::{Confirmation, Producer, ProducerOptions, Receipt};
pub use retrying::{RetryPolicy, RetryingProducer};
pub use subscription::{Acker, SubEvent, Subscription};

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::broker::BrokerStats;
use crate::message::{ChannelName, TopicName};
use crate::protocol::{AdminRequest, Command, FrameError, Reply, WireError};
use crate::transport::tls::{self, TlsError, Trust};
use crate::transport::{FrameReader, ReadError};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub addr: SocketAddr,
    /// Name checked against the broker's certificate. The dev certificate covers
    /// `localhost`, `127.0.0.1` and `::1`.
    pub server_name: String,
    pub trust: Trust,
    /// Certificate and key for mTLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// A token (or an auth server's secret) sent with AUTH right after connecting.
    pub token: Option<String>,
}

impl ClientOptions {
    pub fn new(addr: SocketAddr, trust: Trust) -> Self {
        ClientOptions {
            addr,
            server_name: "localhost".into(),
            trust,
            client_identity: None,
            token: None,
        }
    }
}

/// Options for one subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Deadline for each delivered message; `None` takes the broker's default.
    pub msg_timeout: Option<Duration>,
}

/// What went wrong, on the client side or as the broker said.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS setup")]
    Tls(#[from] TlsError),
    #[error("binding the client's UDP socket")]
    Bind(#[source] std::io::Error),
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("connection to the broker")]
    Connection(#[from] quinn::ConnectionError),
    #[error("reading from the broker")]
    Read(#[from] ReadError),
    #[error("writing to the broker")]
    Write(#[from] quinn::WriteError),
    #[error("bad frame from the broker")]
    Frame(#[from] FrameError),
    #[error("the broker refused: {0}")]
    Broker(#[from] WireError),
    #[error("unexpected reply from the broker: {0}")]
    Unexpected(String),
    #[error("the stream to the broker is closed")]
    Closed,
    #[error("bad JSON from the broker")]
    Json(#[from] serde_json::Error),
    #[error("{what}: no answer within {after:?}")]
    TimedOut {
        what: &'static str,
        after: std::time::Duration,
    },
}

/// A connection to a broker. Cheap to clone; streams opened from it share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl Client {
    pub async fn connect(options: &ClientOptions) -> Result<Client, ClientError> {
        let identity = options
            .client_identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let config = tls::client_config(&options.trust, identity)?;
        let bind = if options.addr.is_ipv6() {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(ClientError::Bind)?;
        endpoint.set_default_client_config(config);
        let connect = |source| ClientError::Connect {
            addr: options.addr,
            source,
        };
        let conn = endpoint
            .connect(options.addr, &options.server_name)
            .map_err(connect)?
            .await?;
        let client = Client { endpoint, conn };
        if let Some(token) = &options.token {
            client.authenticate(token).await?;
        }
        Ok(client)
    }

    /// Sends AUTH on a stream of its own and waits for the answer, so that every stream
    /// opened afterwards acts as the authenticated identity. Returns who the broker says
    /// the connection now is.
    pub async fn authenticate(&self, secret: &str) -> Result<String, ClientError> {
        let (mut send, recv) = self.conn.open_bi().await?;
        let mut buf = BytesMut::new();
        Command::Auth {
            secret: secret.to_owned(),
        }
        .encode(&mut buf);
        send.write_all(&buf).await?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv);
        let raw = reader.next().await?.ok_or(ClientError::Closed)?;
        match Reply::decode(raw)? {
            Reply::AuthOk(json) => {
                let answer: serde_json::Value = serde_json::from_slice(&json)?;
                Ok(answer["identity"].as_str().unwrap_or_default().to_owned())
            }
            Reply::Error(e) => Err(ClientError::Broker(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Opens a publish stream.
    pub async fn producer(&self) -> Result<Producer, ClientError> {
        self.producer_with(ProducerOptions::default()).await
    }

    /// Opens a publish stream with options (message ids given automatically, say).
    pub async fn producer_with(&self, options: ProducerOptions) -> Result<Producer, ClientError> {
        let (send, recv) = self.conn.open_bi().await?;
        Ok(Producer::start(send, FrameReader::new(recv), options))
    }

    /// Opens a subscription stream. Nothing is delivered until [`Subscription::rdy`].
    pub async fn subscribe(
        &self,
        topic: &TopicName,
        channel: &ChannelName,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        let (send, recv) = self.conn.open_bi().await?;
        let sub = Command::Sub {
            topic: topic.clone(),
            channel: channel.clone(),
            msg_timeout: options.msg_timeout,
        };
        Subscription::start(sub, send, FrameReader::new(recv)).await
    }

    /// Sends one admin request on its own stream and returns the JSON answer.
    pub async fn admin(&self, request: AdminRequest) -> Result<Bytes, ClientError> {
        let (mut send, recv) = self.conn.open_bi().await?;
        let mut buf = BytesMut::new();
        Command::Admin(request).encode(&mut buf);
        send.write_all(&buf).await?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv);
        let raw = reader.next().await?.ok_or(ClientError::Closed)?;
        match Reply::decode(raw)? {
            Reply::AdminOk(json) => Ok(json),
            Reply::Error(e) => Err(ClientError::Broker(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn stats(&self, topic: Option<&TopicName>) -> Result<BrokerStats, ClientError> {
        let json = self
            .admin(AdminRequest::Stats {
                topic: topic.cloned(),
            })
            .await?;
        Ok(serde_json::from_slice(&json)?)
    }

    /// Closes the connection and waits until the broker has been told.
    pub async fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }

    /// Resolves when the connection is closed, by either side.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.conn.closed().await
    }
}
