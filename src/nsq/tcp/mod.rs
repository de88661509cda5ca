//! The NSQ TCP protocol V2 listener: existing NSQ clients (go-nsq, pynsq, nsqjs, tokio-nsq)
//! publish and consume through it, on the same topics and channels as QUIC clients.
//!
//! # Layout
//! - [`wire`]: the pure codec, commands in and frames out, with nsqd's error texts.
//! - [`identify`]: IDENTIFY settings and feature negotiation, pure.
//! - [`compress`]: snappy framing and raw deflate, as nsqd puts them on the wire, pure.
//! - `link`: the byte stream, with the in-band TLS upgrade and compression.
//! - `session`: one task per connection, commands to broker calls.
//! - `refusal`: broker refusals as nsqd's errors; a SUB on a cluster node that does not
//!   lead the topic names its leader.
//!
//! The session makes the broker calls a QUIC session makes, so the guarantees are the same:
//! `OK` to a publish means durable as the fsync policy promises; what a connection had in
//! flight is requeued when it ends. On a cluster node that does not lead a topic, publishes
//! are forwarded to its leader (answered `OK` once the leader confirmed them) and a SUB is
//! refused with the leader's address. NSQ messages carry no headers: NSQ publishes are stored
//! with none, and the headers of QUIC-published messages are not sent to NSQ consumers.
//!
//! Message ids are the message's offset in its topic as 16 hex digits; with the topic of the
//! connection's one subscription, that names a Quiver [`MessageId`](crate::message::MessageId)
//! exactly.

pub mod compress;
pub mod identify;
mod link;
mod refusal;
mod session;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::config::NsqConfig;

/// What the listener needs besides the broker.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    pub config: NsqConfig,
    /// The server side of the `tls_v1` upgrade; None: not offered.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Tokens, the auth server, client certificates.
    pub auth: Arc<Authenticator>,
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    broker: Broker,
    config: NsqConfig,
    limits: wire::Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    auth: Arc<Authenticator>,
}

/// Accepts NSQ connections until the broker shuts down. Connections run on `tasks`, so that
/// shutdown waits for them; each sees the broker's shutdown, answers what it owes and closes.
pub async fn serve(listener: TcpListener, broker: Broker, options: TcpOptions, tasks: TaskTracker) {
    let config = options.config;
    let shared = Arc::new(Shared {
        limits: wire::Limits {
            max_msg_size: config.max_msg_size,
            max_body_size: config.max_body_size,
            max_defer_ms: config.max_req_timeout.as_millis() as u64,
        },
        tls: options.tls.filter(|_| config.tls),
        config,
        broker: broker.clone(),
        auth: options.auth,
    });
    let max = options.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let accepted = tokio::select! {
            _ = broker.shutting_down() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, usually: give connections time to close.
                tracing::warn!(error = %e, "accepting an NSQ connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%remote, max, "NSQ connection refused: at the connection limit");
            continue;
        };
        // nsqd's Go listener sets TCP_NODELAY too; frames are batched by the session.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%remote, error = %e, "setting TCP_NODELAY");
        }
        let shared = shared.clone();
        tasks.spawn(async move {
            session::run(stream, remote, shared).await;
            drop(permit);
        });
    }
}
