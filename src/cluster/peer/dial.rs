//! The dialing side: one [`Link`] per remote node, shared by every client of it, holding at
//! most one connection; the Hello; and calls.
//!
//! # Invariants
//! - At most one connection attempt per link runs at a time; every caller waiting for a
//!   connection waits for that one attempt (a task of its own, so a caller that gives up
//!   does not cancel it for the others).
//! - After a failed attempt the link stays down for a backoff (doubling, capped) and calls
//!   fail at once with the attempt's error. A refused link keeps answering with its
//!   refusal while it tries again in the background, so no call hangs on a refusal.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, SendStream, VarInt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::wire::{self, Answer, Hello, Response};
use super::{close_code, lock, read_frame, tls, FrameError, Shared, HANDSHAKE_TIMEOUT};
use crate::cluster::{NodeId, PeerError};

/// First and longest wait after a failed attempt to reach a node.
const UNREACHABLE_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(2));
/// First and longest wait after a refusal.
const REFUSED_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(10));

/// The way to one remote node.
#[derive(Debug)]
pub(super) struct Link {
    pub node: NodeId,
    addr: Mutex<String>,
    state: Mutex<State>,
    /// Woken when an attempt ends.
    settled: Notify,
}

#[derive(Debug)]
enum State {
    /// No connection; the next call dials.
    Idle,
    /// An attempt runs. `last` is the refusal the link had before it, if any.
    Connecting {
        failures: u32,
        last: Option<PeerError>,
    },
    Up(Connection),
    /// The last attempt failed; calls fail with its error until `retry_at`.
    Down {
        error: PeerError,
        retry_at: Instant,
        failures: u32,
    },
}

/// What a caller does next, decided under the link's lock.
enum Next {
    Use(Connection),
    Fail(PeerError),
    Wait,
    Dial,
    /// Dial in the background, and fail now with the link's refusal.
    DialAndFail(PeerError),
}

impl Link {
    pub(super) fn new(node: NodeId, addr: String) -> Link {
        Link {
            node,
            addr: Mutex::new(addr),
            state: Mutex::new(State::Idle),
            settled: Notify::new(),
        }
    }

    pub(super) fn addr(&self) -> String {
        lock(&self.addr).clone()
    }

    /// The next attempt dials `addr`.
    pub(super) fn set_addr(&self, addr: String) {
        *lock(&self.addr) = addr;
    }

    /// The link's connection, dialing if there is none.
    pub(super) async fn connection(
        self: &Arc<Link>,
        shared: &Arc<Shared>,
    ) -> Result<Connection, PeerError> {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before looking at the state, so that no attempt's end is missed.
            settled.as_mut().enable();
            match self.next(Instant::now()) {
                Next::Use(conn) => return Ok(conn),
                Next::Fail(error) => return Err(error),
                Next::Wait => {}
                Next::Dial => self.spawn_attempt(shared),
                Next::DialAndFail(error) => {
                    self.spawn_attempt(shared);
                    return Err(error);
                }
            }
            settled.await;
        }
    }

    fn next(&self, now: Instant) -> Next {
        let mut state = lock(&self.state);
        let (failures, last) = match &*state {
            State::Up(conn) if conn.close_reason().is_none() => return Next::Use(conn.clone()),
            State::Up(_) | State::Idle => (0, None),
            State::Connecting {
                last: Some(error), ..
            } => return Next::Fail(error.clone()),
            State::Connecting { .. } => return Next::Wait,
            State::Down {
                error, retry_at, ..
            } if now < *retry_at => return Next::Fail(error.clone()),
            State::Down {
                error, failures, ..
            } => (
                *failures,
                matches!(error, PeerError::Refused { .. }).then(|| error.clone()),
            ),
        };
        *state = State::Connecting {
            failures,
            last: last.clone(),
        };
        match last {
            Some(error) => Next::DialAndFail(error),
            None => Next::Dial,
        }
    }

    fn spawn_attempt(self: &Arc<Link>, shared: &Arc<Shared>) {
        let link = self.clone();
        let shared_for_task = shared.clone();
        shared.tasks.spawn(async move {
            let shared = shared_for_task;
            let addr = link.addr();
            let result = connect(&shared, Some(link.node), &addr).await;
            if let Ok((conn, _)) = &result {
                watch(&shared, link.node, conn.clone());
            }
            link.settle(result.map(|(conn, _)| conn));
        });
    }

    fn settle(&self, result: Result<Connection, PeerError>) {
        let mut state = lock(&self.state);
        let failures = match &*state {
            State::Connecting { failures, .. } => *failures,
            _ => 0,
        };
        *state = match result {
            Ok(conn) => State::Up(conn),
            Err(error) => {
                let failures = failures.saturating_add(1);
                let retry_at = Instant::now() + backoff(&error, failures);
                State::Down {
                    error,
                    retry_at,
                    failures,
                }
            }
        };
        drop(state);
        self.settled.notify_waiters();
    }
}

/// How long a link stays down after its `failures`-th failed attempt in a row.
fn backoff(error: &PeerError, failures: u32) -> Duration {
    let (first, most) = match error {
        PeerError::Refused { .. } => REFUSED_BACKOFF,
        _ => UNREACHABLE_BACKOFF,
    };
    first
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(most)
}

/// Forgets the claim of an outgoing connection once it closes.
fn watch(shared: &Arc<Shared>, node: NodeId, conn: Connection) {
    let shared_for_task = shared.clone();
    shared.tasks.spawn(async move {
        let shared = shared_for_task;
        let error = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            error = conn.closed() => error,
        };
        shared.claims.release(node, &conn);
        tracing::debug!(
            node,
            "connection to node {node} ended: {}",
            tls::ending(&error).reason
        );
    });
}

/// Dials `addr` and runs the Hello; the connection and the node id that welcomed it.
/// `expect`: the node id the certificate must name (None: any node of the cluster).
/// Refusals are logged here, at WARN.
pub(super) async fn connect(
    shared: &Shared,
    expect: Option<NodeId>,
    addr: &str,
) -> Result<(Connection, NodeId), PeerError> {
    let node = expect.unwrap_or(0);
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, hello(shared, expect, addr)).await {
        Ok(result) => result,
        Err(_) => Err(PeerError::Unreachable {
            node,
            addr: addr.to_owned(),
            reason: format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
        }),
    };
    if let Err(PeerError::Refused { reason, .. }) = &result {
        tracing::warn!(
            node,
            addr,
            "connection to node {node} at {addr} refused: {reason}"
        );
    }
    result
}

async fn hello(
    shared: &Shared,
    expect: Option<NodeId>,
    addr: &str,
) -> Result<(Connection, NodeId), PeerError> {
    let node = expect.unwrap_or(0);
    let unreachable = |reason: String| PeerError::Unreachable {
        node,
        addr: addr.to_owned(),
        reason,
    };
    let ended = |error: &quinn::ConnectionError| ending_error(node, addr, error);
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| unreachable(format!("cannot resolve the address: {e}")))?
        .collect();
    // An IPv4 socket cannot send to IPv6 addresses; an IPv6 one may reach both.
    let ipv4_only = shared.endpoint.local_addr().is_ok_and(|a| a.is_ipv4());
    let socket = resolved
        .iter()
        .find(|a| !ipv4_only || a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| unreachable("the address resolves to nothing".into()))?;
    let config = shared
        .tls
        .client_config(expect)
        .map_err(|e| unreachable(format!("TLS setup failed: {e}")))?;
    let conn = shared
        .endpoint
        .connect_with(config, socket, tls::SERVER_NAME)
        .map_err(|e| unreachable(format!("cannot dial: {e}")))?
        .await
        .map_err(|e| ended(&e))?;
    let request = Hello {
        cluster_id: shared.cluster_id.clone(),
        node_id: shared.node_id,
        nonce: shared.nonce,
        advertise: shared.advertise.clone(),
    };
    let answer = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| ended(&e))?;
        send.write_all(&wire::frame(&request.encode()))
            .await
            .map_err(|e| stream_error(node, addr, &conn, e.into()))?;
        let _ = send.finish();
        read_frame(&mut recv, wire::MAX_HANDSHAKE)
            .await
            .map_err(|e| stream_error(node, addr, &conn, e))
    };
    let payload = answer.await?;
    match Answer::decode(&payload) {
        Ok(Answer::Welcome { node_id, nonce }) => {
            if expect.is_some_and(|expected| expected != node_id) {
                let reason = format!("it answered as node {node_id}");
                return Err(refuse(&conn, node, reason));
            }
            if let Err(reason) = shared.claims.claim(node_id, nonce, addr, &conn).await {
                return Err(refuse(&conn, node_id, reason));
            }
            Ok((conn, node_id))
        }
        Ok(Answer::Refused { reason }) => {
            conn.close(VarInt::from_u32(close_code::CLOSED as u32), b"refused");
            Err(PeerError::Refused { node, reason })
        }
        Err(error) => {
            let reason =
                format!("it answered the Hello with bytes that are not quiver-peer/1: {error}");
            tracing::warn!(node, addr, "node {node} at {addr}: {reason}; disconnected");
            conn.close(VarInt::from_u32(close_code::PROTOCOL as u32), b"bad answer");
            Err(unreachable(reason))
        }
    }
}

/// Closes a connection this node refuses after the Welcome, telling the other side why.
fn refuse(conn: &Connection, node: NodeId, reason: String) -> PeerError {
    conn.close(
        VarInt::from_u32(close_code::REFUSED as u32),
        wire::truncate(&reason, 1000).as_bytes(),
    );
    PeerError::Refused { node, reason }
}

/// A connection error as the caller's error.
pub(super) fn ending_error(node: NodeId, addr: &str, error: &quinn::ConnectionError) -> PeerError {
    let ending = tls::ending(error);
    if ending.refused {
        return PeerError::Refused {
            node,
            reason: ending.reason,
        };
    }
    PeerError::Unreachable {
        node,
        addr: addr.to_owned(),
        reason: ending.reason,
    }
}

/// A failed read or write on a stream of `conn` as the caller's error: the connection's
/// ending if it ended, else what happened to the stream.
fn stream_error(node: NodeId, addr: &str, conn: &Connection, error: FrameError) -> PeerError {
    if let Some(ended) = conn.close_reason() {
        return ending_error(node, addr, &ended);
    }
    match error {
        FrameError::TooLarge(error) => {
            tracing::warn!(
                node,
                addr,
                "node {node} at {addr} sent {error}; disconnected"
            );
            conn.close(
                VarInt::from_u32(close_code::PROTOCOL as u32),
                b"frame too large",
            );
            PeerError::TooLarge {
                node,
                reason: format!("the answer is too large: {error}"),
            }
        }
        FrameError::Ended => PeerError::Remote {
            node,
            reason: "it ended the call without an answer".into(),
        },
        other => PeerError::Unreachable {
            node,
            addr: addr.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// One call on `conn`: the request out, the response back.
pub(super) async fn exchange(
    conn: &Connection,
    node: NodeId,
    addr: &str,
    request: Bytes,
) -> Result<Bytes, PeerError> {
    let (send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| ending_error(node, addr, &e))?;
    write_request(send, request)
        .await
        .map_err(|e| stream_error(node, addr, conn, e))?;
    let payload = read_frame(&mut recv, wire::MAX_BODY + 1)
        .await
        .map_err(|e| stream_error(node, addr, conn, e))?;
    match Response::decode(payload) {
        Ok(Response::Ok(body)) => Ok(body),
        Ok(Response::Error(reason)) => Err(PeerError::Remote { node, reason }),
        Err(error) => {
            tracing::warn!(
                node,
                addr,
                "node {node} at {addr} answered a call with bad bytes ({error}); disconnected"
            );
            conn.close(
                VarInt::from_u32(close_code::PROTOCOL as u32),
                b"bad response",
            );
            Err(PeerError::Unreachable {
                node,
                addr: addr.to_owned(),
                reason: format!("it answered with bytes that are not quiver-peer/1: {error}"),
            })
        }
    }
}

async fn write_request(mut send: SendStream, request: Bytes) -> Result<(), FrameError> {
    send.write_all(&wire::header(request.len())).await?;
    send.write_chunk(request).await?;
    // Only fails if the stream is already gone, which the read then reports.
    let _ = send.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_is_longer_after_a_refusal() {
        let unreachable = PeerError::Unreachable {
            node: 1,
            addr: "h:1".into(),
            reason: "no".into(),
        };
        let refused = PeerError::Refused {
            node: 1,
            reason: "no".into(),
        };
        let waits: Vec<u64> = (1..=6)
            .map(|n| backoff(&unreachable, n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000]);
        assert_eq!(backoff(&refused, 1), Duration::from_secs(1));
        assert_eq!(backoff(&refused, 4), Duration::from_secs(8));
        assert_eq!(backoff(&refused, u32::MAX), Duration::from_secs(10));
    }
}
