//! The QUIC endpoint between nodes: ALPN `quiver-peer/1`, mutual TLS under the cluster CA,
//! a handshake, then request/response calls, one bidirectional stream each.
//!
//! One UDP socket serves both directions: the endpoint accepts connections from peers
//! (`accept.rs`) and dials them (`dial.rs`), each remote node over at most one connection
//! this node opened, shared by every [`PeerClient`] of that node. The bytes are in
//! [`wire`]; `docs/PROTOCOL.md` describes them, and decision 42 of `docs/ARCHITECTURE.md`
//! says why it is built this way.
//!
//! # The handshake
//! The dialer opens the first stream and sends a Hello (cluster id, node id, a nonce
//! random per endpoint, the address it advertises). The accepting node refuses:
//! - a dialer of another cluster ("node 4 belongs to cluster X, this is cluster Y");
//! - a Hello whose node id is not the one its certificate names, or is this node's own;
//! - a second instance of a node id while a live connection holds it with another nonce
//!   ("node id 2 is already in use by a node at ADDR"; see `claims.rs`).
//!
//! A refusal is logged at WARN on both sides, and the dialer's calls fail with
//! [`PeerError::Refused`] while it retries with a backoff. The handler is never called on a
//! connection that was not welcomed.
//!
//! # Invariants
//! - The caller of a handled request is the node id of its verified certificate.
//! - Every call ends within its timeout; a call never hangs on a refused or dead node.
//! - No frame over [`wire::MAX_BODY`] (plus the status byte) is read or sent: the length
//!   is checked before anything is allocated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::NoInitialCipherSuite;
use quinn::{RecvStream, VarInt};
use rustls::client::VerifierBuilderError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::identity::{self, ClusterIdentity};
use super::settings::ClusterSettings;
use super::{NodeId, PeerError, PeerHandler};

mod accept;
mod claims;
mod dial;
mod tls;
pub mod wire;

pub use tls::client_config;

/// ALPN protocol id of the peer protocol.
pub const ALPN: &[u8] = b"quiver-peer/1";

/// How often each side of an idle connection sends a keep-alive.
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// A connection that hears nothing for this long is closed: a dead or stopped peer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection attempt (QUIC, TLS and the Hello) or a Hello may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls served at once on one connection; the dialer's next calls wait for a stream.
pub const MAX_CALLS_PER_CONNECTION: u32 = 1024;
/// How long [`PeerEndpoint::close`] lets calls in progress finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// QUIC application close codes of the peer protocol.
pub mod close_code {
    /// An orderly close (shutdown, a probe done); the reason says which.
    pub const CLOSED: u64 = 0;
    /// The handshake was refused; the reason says why.
    pub const REFUSED: u64 = 1;
    /// The peer broke the protocol (bad magic, an oversized frame).
    pub const PROTOCOL: u64 = 2;
    /// A new instance of the same node id replaced this silent connection.
    pub const SUPERSEDED: u64 = 3;
}

/// Why an endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot bind the peer endpoint to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the node's TLS identity is not usable")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the certificate verifier for the cluster CA")]
    Verifier(#[from] VerifierBuilderError),
    #[error("the TLS configuration is not usable for QUIC")]
    Quic(#[from] NoInitialCipherSuite),
    #[error("cannot make the endpoint's nonce")]
    Random(#[from] identity::IdentityError),
}

/// This node's end of the peer protocol. Closing it (or dropping it) stops serving calls
/// and closes every connection.
#[derive(Debug)]
pub struct PeerEndpoint {
    shared: Arc<Shared>,
}

/// Calls one remote node. Cheap to clone; every client of a node shares one connection,
/// made on the first call and made again after it is lost.
#[derive(Debug, Clone)]
pub struct PeerClient {
    shared: Arc<Shared>,
    link: Arc<dial::Link>,
}

/// What the endpoint's tasks share.
struct Shared {
    node_id: NodeId,
    cluster_id: String,
    nonce: u64,
    advertise: String,
    endpoint: quinn::Endpoint,
    tls: tls::Tls,
    handler: Arc<dyn PeerHandler>,
    claims: claims::Claims,
    links: Mutex<HashMap<NodeId, Arc<dial::Link>>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

impl PeerEndpoint {
    /// Binds `settings.listen` and starts accepting peers, whose calls go to `handler`.
    /// `identity` is this node's, from [`identity::load_identity`]. When `listen` has port 0
    /// and no `advertise` is set, the node advertises the port it got.
    pub async fn bind(
        settings: &ClusterSettings,
        identity: &ClusterIdentity,
        handler: Arc<dyn PeerHandler>,
    ) -> Result<PeerEndpoint, BindError> {
        let tls = tls::Tls::new(identity)?;
        let server = tls.server_config()?;
        let endpoint =
            quinn::Endpoint::server(server, settings.listen).map_err(|source| BindError::Bind {
                addr: settings.listen,
                source,
            })?;
        let local = endpoint.local_addr().map_err(|source| BindError::Bind {
            addr: settings.listen,
            source,
        })?;
        let advertise = match &settings.advertise {
            Some(addr) => addr.clone(),
            None => local.to_string(),
        };
        let mut nonce = [0u8; 8];
        identity::fill_random(&mut nonce)?;
        let shared = Arc::new(Shared {
            node_id: identity.node_id,
            cluster_id: identity.cluster_id.clone(),
            nonce: u64::from_be_bytes(nonce),
            advertise,
            endpoint,
            tls,
            handler,
            claims: claims::Claims::default(),
            links: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        shared.tasks.spawn(accept::accept_loop(shared.clone()));
        tracing::info!(
            node = shared.node_id,
            addr = %local,
            advertise = %shared.advertise,
            "peer endpoint listening (ALPN quiver-peer/1)"
        );
        Ok(PeerEndpoint { shared })
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared
            .endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// What this node tells peers to dial.
    pub fn advertise(&self) -> &str {
        &self.shared.advertise
    }

    /// A client of node `node` at `addr` (`HOST:PORT`; names are resolved on each
    /// connection). Clients of the same node share its connection; the latest `addr` given
    /// is the one the next connection dials.
    pub fn client(&self, node: NodeId, addr: String) -> PeerClient {
        let link = {
            let mut links = lock(&self.shared.links);
            let link = links
                .entry(node)
                .or_insert_with(|| Arc::new(dial::Link::new(node, addr.clone())));
            link.set_addr(addr);
            link.clone()
        };
        PeerClient {
            shared: self.shared.clone(),
            link,
        }
    }

    /// Connects to node `node` at `addr` and runs only the handshake, on a connection of
    /// its own that is closed right after; the node id that answered. Used at start: a
    /// refusal (another cluster, a node id already in use) should stop the node.
    pub async fn probe(&self, node: NodeId, addr: &str) -> Result<NodeId, PeerError> {
        self.probe_as(Some(node), addr).await
    }

    /// [`probe`](Self::probe) for a node whose id is not known yet (the address of
    /// `join`): any node of the cluster may answer.
    pub async fn probe_any(&self, addr: &str) -> Result<NodeId, PeerError> {
        self.probe_as(None, addr).await
    }

    async fn probe_as(&self, node: Option<NodeId>, addr: &str) -> Result<NodeId, PeerError> {
        let (conn, answered) = dial::connect(&self.shared, node, addr).await?;
        conn.close(VarInt::from_u32(close_code::CLOSED as u32), b"probe done");
        self.shared.claims.release(answered, &conn);
        Ok(answered)
    }

    /// Stops accepting connections and calls, lets the calls in progress answer (for up to
    /// 5 s), then closes every connection and waits for the close to be sent.
    pub async fn close(&self) {
        self.shared.cancel.cancel();
        self.shared.tasks.close();
        if tokio::time::timeout(CLOSE_GRACE, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                node = self.shared.node_id,
                "peer calls still running after {CLOSE_GRACE:?}; closing anyway"
            );
        }
        self.shared.endpoint.close(
            VarInt::from_u32(close_code::CLOSED as u32),
            b"node shutting down",
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
    }
}

impl Drop for PeerEndpoint {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        self.shared.endpoint.close(
            VarInt::from_u32(close_code::CLOSED as u32),
            b"node shutting down",
        );
    }
}

impl PeerClient {
    /// The node this client calls.
    pub fn node(&self) -> NodeId {
        self.link.node
    }

    /// Sends `request` to the node's handler and waits, at most `timeout` in all
    /// (connecting included), for its answer. Calls on one connection run concurrently.
    pub async fn call(&self, request: Bytes, timeout: Duration) -> Result<Bytes, PeerError> {
        let node = self.link.node;
        if request.len() > wire::MAX_BODY {
            return Err(PeerError::TooLarge {
                node,
                reason: format!(
                    "a request of {} bytes is over the limit of {} bytes",
                    request.len(),
                    wire::MAX_BODY
                ),
            });
        }
        let call = async {
            let conn = self.link.connection(&self.shared).await?;
            dial::exchange(&conn, node, &self.link.addr(), request).await
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout {
                node,
                after_ms: timeout.as_millis() as u64,
            }),
        }
    }
}

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("{0}")]
    TooLarge(wire::WireError),
    #[error("the stream ended before a whole frame")]
    Ended,
    #[error("reading: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("writing: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("{0}")]
    Lost(quinn::ConnectionError),
}

impl From<quinn::ReadExactError> for FrameError {
    fn from(error: quinn::ReadExactError) -> Self {
        match error {
            quinn::ReadExactError::FinishedEarly(_) => FrameError::Ended,
            quinn::ReadExactError::ReadError(error) => FrameError::Read(error),
        }
    }
}

/// Reads one frame of at most `max` bytes: the length first, checked before allocating.
async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Bytes, FrameError> {
    let mut header = [0u8; wire::HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let len = wire::frame_len(header, max).map_err(FrameError::TooLarge)?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await?;
    Ok(Bytes::from(payload))
}

/// Locks a mutex, ignoring poisoning: every critical section here only moves values in and
/// out of maps and enums, leaving them consistent at every step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
