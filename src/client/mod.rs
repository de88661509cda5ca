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
use crate::protocol::{AdminRequest, Command, ErrorCode, FrameError, Reply, WireError};
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
    /// How long the connection may stay silent before it is given up as dead (keep-alives
    /// are sent at a third of it). `None` takes the default, 30 s. A shorter one notices a
    /// broker that died without closing its connections (a killed or hung cluster leader)
    /// sooner.
    pub idle_timeout: Option<Duration>,
}

impl ClientOptions {
    pub fn new(addr: SocketAddr, trust: Trust) -> Self {
        ClientOptions {
            addr,
            server_name: "localhost".into(),
            trust,
            client_identity: None,
            token: None,
            idle_timeout: None,
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

impl ClientError {
    /// The leader's address when a cluster node answered that another node leads the topic
    /// (`E_NOT_LEADER`, whose message starts with `leader=ADDR`).
    pub fn redirect(&self) -> Option<SocketAddr> {
        match self {
            ClientError::Broker(e) if e.code == ErrorCode::NotLeader => leader_in(&e.message),
            _ => None,
        }
    }

    /// Whether the broker said to retry shortly: the topic has no leader right now (an
    /// election in a cluster), or the node knows another leads it but not yet where that
    /// node serves clients (`E_NOT_LEADER` with `leader=?`, while the leader's addresses
    /// are being advertised).
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClientError::Broker(e) => {
                e.code == ErrorCode::Unavailable
                    || (e.code == ErrorCode::NotLeader && leader_in(&e.message).is_none())
            }
            _ => false,
        }
    }
}

/// The address in an `E_NOT_LEADER` message: `leader=ADDR node=ID: reason`.
fn leader_in(message: &str) -> Option<SocketAddr> {
    let rest = message.strip_prefix("leader=")?;
    let addr = rest.split_whitespace().next()?;
    addr.parse().ok()
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
        let mut config = tls::client_config(&options.trust, identity)?;
        if let Some(idle) = options.idle_timeout {
            let mut transport = tls::transport_config();
            let idle = idle.max(Duration::from_millis(300));
            transport
                .keep_alive_interval(Some(idle / 3))
                .max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
            config.transport_config(std::sync::Arc::new(transport));
        }
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

    /// Where `topic` is served: `None` for this broker, else the QUIC address of the cluster
    /// node that leads it. Asks as a subscriber of `channel`, or without one as a publisher;
    /// creates the topic if it does not exist.
    pub async fn locate(
        &self,
        topic: &TopicName,
        channel: Option<&ChannelName>,
    ) -> Result<Option<SocketAddr>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Located {
            here: bool,
            leader: Option<crate::storage::LeaderHint>,
        }
        let json = self
            .admin(AdminRequest::Locate {
                topic: topic.clone(),
                channel: channel.cloned(),
            })
            .await?;
        let located: Located = serde_json::from_slice(&json)?;
        if located.here {
            return Ok(None);
        }
        let quic = located.leader.and_then(|l| l.quic);
        match quic.as_deref().map(str::parse::<SocketAddr>) {
            Some(Ok(addr)) => Ok(Some(addr)),
            _ => Err(ClientError::Unexpected(format!(
                "topic {topic} is led by a node whose QUIC address is not known (yet): {quic:?}"
            ))),
        }
    }

    /// Connects to the broker that serves `topic`: the one at `options.addr`, or the cluster
    /// node it names as the topic's leader. A topic without a leader right now (an election)
    /// is asked again until `patience` has passed.
    pub async fn connect_serving(
        options: &ClientOptions,
        topic: &TopicName,
        channel: Option<&ChannelName>,
        patience: Duration,
    ) -> Result<Client, ClientError> {
        let deadline = tokio::time::Instant::now() + patience;
        let origin = options.addr;
        let mut options = options.clone();
        let mut wait = Duration::from_millis(50);
        loop {
            let client = match Client::connect(&options).await {
                Ok(client) => client,
                // A leader named a moment ago may have just died: ask the first node again.
                Err(e) if options.addr != origin && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(addr = %options.addr, error = %e, "the named leader does not answer");
                    options.addr = origin;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let located = client.locate(topic, channel).await;
            match located {
                Ok(None) => return Ok(client),
                Ok(Some(leader)) if leader == options.addr => return Ok(client),
                Ok(Some(leader)) if tokio::time::Instant::now() < deadline => {
                    // Nodes may name each other for a moment during a leader change; the
                    // deadline ends that.
                    tracing::debug!(%topic, %leader, "connecting to the topic's leader");
                    client.close().await;
                    options.addr = leader;
                }
                Ok(Some(leader)) => {
                    client.close().await;
                    return Err(ClientError::Unexpected(format!(
                        "topic {topic}: the nodes still disagree on its leader after \
                         {patience:?} (last named {leader})"
                    )));
                }
                Err(e) if e.is_unavailable() && tokio::time::Instant::now() < deadline => {
                    client.close().await;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
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

    /// The address of the broker this client is connected to.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WireError;

    fn refused(code: ErrorCode, message: &str) -> ClientError {
        ClientError::Broker(WireError {
            code,
            fatal: false,
            seq: 1,
            message: message.to_string(),
        })
    }

    #[test]
    fn a_redirect_without_an_address_is_retried_not_followed() {
        let named = refused(
            ErrorCode::NotLeader,
            "leader=127.0.0.1:7410 node=2: served there",
        );
        assert_eq!(named.redirect(), "127.0.0.1:7410".parse().ok());
        assert!(!named.is_unavailable());
        let unnamed = refused(ErrorCode::NotLeader, "leader=? node=3: served by node 3");
        assert_eq!(unnamed.redirect(), None);
        assert!(unnamed.is_unavailable());
        assert!(refused(ErrorCode::Unavailable, "electing").is_unavailable());
        assert!(!refused(ErrorCode::Invalid, "no").is_unavailable());
    }
}
