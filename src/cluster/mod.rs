//! The cluster: nodes that replicate durable topics through Raft (openraft).
//!
//! # Layout
//! - [`settings`]: the `[cluster]` config section (node id, peer address, members or join).
//! - [`identity`]: the cluster CA, node certificates and the cluster id; `quiver cluster init`.
//! - [`peer`]: the QUIC endpoint between nodes (ALPN `quiver-peer/1`, mutual TLS under the
//!   cluster CA): a handshake that refuses foreign clusters and duplicate node ids, then
//!   request/response calls, one bidirectional stream each.
//! - `raft`: the Raft groups (the meta group, one group per durable topic), their storage,
//!   state machines and the network adapter over [`peer`].
//!
//! A node without a `[cluster]` section runs none of this.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

pub mod identity;
pub mod peer;
pub mod raft;
pub mod settings;

/// A node's id in the cluster, unique among its members, fixed at `quiver cluster init`.
pub type NodeId = u64;

/// A boxed future, for the handler trait (no `async fn` in a `dyn` trait).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Serves the calls that other nodes make to this one. [`peer::PeerEndpoint`] calls it for
/// each request, once the caller's handshake succeeded, with the caller's node id (taken
/// from its certificate, never from what it claims).
pub trait PeerHandler: Send + Sync + 'static {
    /// Answers one request. An `Err` goes back to the caller as [`PeerError::Remote`].
    fn handle(&self, from: NodeId, request: Bytes) -> BoxFuture<'static, Result<Bytes, String>>;
}

/// Why a call to another node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// Nothing answered at the node's address, or the connection was lost.
    #[error("node {node} at {addr} is unreachable: {reason}")]
    Unreachable {
        node: NodeId,
        addr: String,
        reason: String,
    },
    /// The node did not answer within the call's timeout.
    #[error("node {node} did not answer within {after_ms} ms")]
    Timeout { node: NodeId, after_ms: u64 },
    /// The handshake was refused, by either side: another cluster, a duplicate node id, a
    /// certificate not signed by the cluster CA. Retrying does not help.
    #[error("node {node} refused the connection: {reason}")]
    Refused { node: NodeId, reason: String },
    /// The node's handler answered with an error.
    #[error("node {node} answered with an error: {reason}")]
    Remote { node: NodeId, reason: String },
    /// A request or its answer is over the peer protocol's frame limit
    /// ([`peer::wire::MAX_BODY`], 64 MiB). Retrying does not help.
    #[error("a call to node {node} is too large: {reason}")]
    TooLarge { node: NodeId, reason: String },
}
