//! Which running instance holds each node id: the nonce of the node behind this node's
//! live connections to it, in either direction.
//!
//! # Invariants
//! - All live connections registered for a node id carry the same nonce: a second
//!   instance with the same id is refused while the first is alive.
//! - "Alive" is shown, not assumed: a connection whose process died (SIGKILL) stays open
//!   here until its idle timeout, so on a conflict the holder's connections must receive a
//!   packet (each side sends a keep-alive every second) within [`LIVENESS_WINDOW`]. A
//!   holder that stays silent loses the id to the newcomer, and its connections are
//!   closed. A node that restarts at once is therefore accepted, not refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use quinn::{Connection, VarInt};

use super::{close_code, lock};
use crate::cluster::NodeId;

/// How long the holder of an id has to show it is alive when another instance claims it.
pub(super) const LIVENESS_WINDOW: Duration = Duration::from_secs(3);
/// How often its packet count is looked at meanwhile.
const LIVENESS_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub(super) struct Claims {
    by_node: Mutex<HashMap<NodeId, Claim>>,
}

#[derive(Debug)]
struct Claim {
    nonce: u64,
    addr: String,
    conns: Vec<Connection>,
}

/// What to do about a claim, decided under the lock.
enum Verdict {
    Granted,
    /// Another instance holds the id on these connections; is it alive?
    Contested {
        addr: String,
        conns: Vec<Connection>,
    },
}

impl Claims {
    /// Registers `conn` as node `node`'s, whose instance has `nonce` and is reached at
    /// `addr`; or refuses, with the reason, when another live instance holds the id.
    pub(super) async fn claim(
        &self,
        node: NodeId,
        nonce: u64,
        addr: &str,
        conn: &Connection,
    ) -> Result<(), String> {
        // Twice at most: once more after closing a silent holder's connections.
        for _ in 0..2 {
            let (holder, conns) = match self.try_claim(node, nonce, addr, conn) {
                Verdict::Granted => return Ok(()),
                Verdict::Contested { addr, conns } => (addr, conns),
            };
            if heard_from_any(&conns, LIVENESS_WINDOW).await {
                return Err(format!(
                    "node id {node} is already in use by a node at {holder}"
                ));
            }
            tracing::warn!(
                node,
                holder = %holder,
                "node {node} at {holder} sent nothing for {LIVENESS_WINDOW:?} while a new \
                 instance claimed its id; closing its connections"
            );
            for old in &conns {
                old.close(
                    VarInt::from_u32(close_code::SUPERSEDED as u32),
                    b"a new instance of this node id took its place",
                );
            }
        }
        Err(format!(
            "node id {node} is contested by more than one instance"
        ))
    }

    fn try_claim(&self, node: NodeId, nonce: u64, addr: &str, conn: &Connection) -> Verdict {
        let mut claims = lock(&self.by_node);
        let claim = claims.entry(node).or_insert_with(|| Claim {
            nonce,
            addr: addr.to_owned(),
            conns: Vec::new(),
        });
        claim.conns.retain(|c| c.close_reason().is_none());
        if claim.nonce != nonce && !claim.conns.is_empty() {
            return Verdict::Contested {
                addr: claim.addr.clone(),
                conns: claim.conns.clone(),
            };
        }
        claim.nonce = nonce;
        claim.addr = addr.to_owned();
        claim.conns.push(conn.clone());
        Verdict::Granted
    }

    /// Forgets `conn` (closed, or a probe done).
    pub(super) fn release(&self, node: NodeId, conn: &Connection) {
        let mut claims = lock(&self.by_node);
        let Some(claim) = claims.get_mut(&node) else {
            return;
        };
        claim
            .conns
            .retain(|c| c.stable_id() != conn.stable_id() && c.close_reason().is_none());
        if claim.conns.is_empty() {
            claims.remove(&node);
        }
    }
}

/// Whether any of `conns` receives a packet within `window`.
async fn heard_from_any(conns: &[Connection], window: Duration) -> bool {
    let received = |c: &Connection| c.stats().udp_rx.datagrams;
    let before: Vec<u64> = conns.iter().map(received).collect();
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let heard = conns
            .iter()
            .zip(&before)
            .any(|(c, was)| c.close_reason().is_none() && received(c) > *was);
        if heard {
            return true;
        }
        if conns.iter().all(|c| c.close_reason().is_some()) {
            return false;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(LIVENESS_POLL).await;
    }
}
