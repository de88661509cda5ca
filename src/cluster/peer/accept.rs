//! The accepting side: one task per incoming connection runs the handshake, then serves
//! its calls, one task per stream, at most [`MAX_CALLS_PER_CONNECTION`] at once.
//!
//! # Invariants
//! - The handler is called only on a connection whose handshake this node welcomed, with
//!   the node id its certificate names.
//! - A connection that breaks the protocol (bad magic, an oversized frame, no Hello in
//!   time) is closed with a log line naming the peer and what it sent; other connections
//!   are untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use quinn::{Connection, Incoming, RecvStream, SendStream, VarInt};
use tokio::sync::Semaphore;

use super::wire::{self, Answer, Hello, Response, WireError};
use super::{
    close_code, read_frame, tls, FrameError, Shared, HANDSHAKE_TIMEOUT, MAX_CALLS_PER_CONNECTION,
};
use crate::cluster::identity::NodeName;
use crate::cluster::NodeId;

/// Accepts connections until the endpoint closes.
pub(super) async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            incoming = shared.endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else {
            return;
        };
        let task = serve(shared.clone(), incoming);
        shared.tasks.spawn(task);
    }
}

async fn serve(shared: Arc<Shared>, incoming: Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(error) => {
            let ending = tls::ending(&error);
            if ending.refused {
                tracing::warn!(peer = %remote, "peer connection from {remote} refused: {}", ending.reason);
            } else {
                tracing::debug!(peer = %remote, "peer connection failed: {}", ending.reason);
            }
            return;
        }
    };
    let Some(from) = handshake(&shared, &conn, remote).await else {
        return;
    };
    calls(&shared, &conn, from).await;
    shared.claims.release(from, &conn);
}

/// Runs the accepting side of the handshake; the peer's node id once welcomed.
async fn handshake(shared: &Shared, conn: &Connection, remote: SocketAddr) -> Option<NodeId> {
    let named = tls::peer_node(conn);
    let read_hello = async {
        let (send, mut recv) = conn.accept_bi().await.map_err(FrameError::Lost)?;
        let payload = read_frame(&mut recv, wire::MAX_HANDSHAKE).await?;
        Ok::<_, FrameError>((send, payload))
    };
    let (mut send, payload) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_hello).await {
        Ok(Ok(read)) => read,
        Ok(Err(FrameError::TooLarge(error))) => {
            disconnect(conn, remote, &format!("sent a Hello too large: {error}"));
            return None;
        }
        Ok(Err(error)) => {
            tracing::debug!(peer = %remote, "peer left before its Hello: {error}");
            return None;
        }
        Err(_) => {
            disconnect(
                conn,
                remote,
                &format!("sent no Hello within {HANDSHAKE_TIMEOUT:?}"),
            );
            return None;
        }
    };
    let hello = match Hello::decode(&payload) {
        Ok(hello) => hello,
        Err(WireError::Version(version)) => {
            let reason = format!(
                "it speaks peer protocol version {version}; this node speaks {}",
                wire::VERSION
            );
            refuse(conn, &mut send, remote, &reason).await;
            return None;
        }
        Err(error) => {
            disconnect(conn, remote, &format!("sent a bad Hello: {error}"));
            return None;
        }
    };
    let local = Local {
        cluster_id: &shared.cluster_id,
        node_id: shared.node_id,
    };
    if let Err(reason) = judge(&local, named.as_ref(), &hello) {
        refuse(conn, &mut send, remote, &reason).await;
        return None;
    }
    let claimed = shared
        .claims
        .claim(hello.node_id, hello.nonce, &hello.advertise, conn)
        .await;
    if let Err(reason) = claimed {
        refuse(conn, &mut send, remote, &reason).await;
        return None;
    }
    let welcome = Answer::Welcome {
        node_id: shared.node_id,
        nonce: shared.nonce,
    };
    let sent = send.write_all(&wire::frame(&welcome.encode())).await;
    if let Err(error) = sent
        .map_err(|e| e.to_string())
        .and_then(|()| send.finish().map_err(|e| e.to_string()))
    {
        tracing::debug!(peer = %remote, node = hello.node_id, "peer left during the handshake: {error}");
        shared.claims.release(hello.node_id, conn);
        return None;
    }
    tracing::debug!(peer = %remote, node = hello.node_id, "peer connected");
    Some(hello.node_id)
}

/// What the accepting node checks a Hello against.
pub(super) struct Local<'a> {
    pub cluster_id: &'a str,
    pub node_id: NodeId,
}

/// The checks of a Hello that need no other connection: the cluster, the node id against
/// the certificate's, and not this node's own id.
pub(super) fn judge(
    local: &Local<'_>,
    named: Option<&NodeName>,
    hello: &Hello,
) -> Result<(), String> {
    let Some(named) = named else {
        return Err("its certificate names no quiver node".into());
    };
    if hello.cluster_id != local.cluster_id {
        return Err(format!(
            "node {} belongs to cluster {}, this is cluster {}",
            hello.node_id, hello.cluster_id, local.cluster_id
        ));
    }
    if named.cluster_id != local.cluster_id {
        return Err(format!(
            "its certificate is for cluster {}, this is cluster {}",
            named.cluster_id, local.cluster_id
        ));
    }
    if hello.node_id != named.node_id {
        return Err(format!(
            "it claims node id {} but its certificate names node {}",
            hello.node_id, named.node_id
        ));
    }
    if hello.node_id == local.node_id {
        return Err(format!("node id {} is this node's own id", hello.node_id));
    }
    Ok(())
}

/// Answers Refused, lets the dialer read it, and closes the connection with the reason.
async fn refuse(conn: &Connection, send: &mut SendStream, remote: SocketAddr, reason: &str) {
    tracing::warn!(peer = %remote, "refused the peer at {remote}: {reason}");
    let answer = Answer::Refused {
        reason: reason.to_owned(),
    };
    if send.write_all(&wire::frame(&answer.encode())).await.is_ok() && send.finish().is_ok() {
        // The dialer closes once it has read the answer; don't wait for a silent one.
        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.closed()).await;
    }
    conn.close(
        VarInt::from_u32(close_code::REFUSED as u32),
        wire::truncate(reason, 1000).as_bytes(),
    );
}

/// Closes a connection that broke the protocol, saying so in the log.
fn disconnect(conn: &Connection, remote: SocketAddr, what: &str) {
    tracing::warn!(peer = %remote, "the peer at {remote} {what}; disconnected");
    conn.close(
        VarInt::from_u32(close_code::PROTOCOL as u32),
        wire::truncate(what, 1000).as_bytes(),
    );
}

/// Serves the calls of a welcomed connection until it closes or the endpoint does.
async fn calls(shared: &Arc<Shared>, conn: &Connection, from: NodeId) {
    let permits = Arc::new(Semaphore::new(MAX_CALLS_PER_CONNECTION as usize));
    loop {
        let permit = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            permit = permits.clone().acquire_owned() => permit,
        };
        // The semaphore is never closed.
        let Ok(permit) = permit else { return };
        let stream = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            stream = conn.accept_bi() => stream,
        };
        let (send, recv) = match stream {
            Ok(stream) => stream,
            Err(error) => {
                let ending = tls::ending(&error);
                tracing::debug!(
                    node = from,
                    "connection from node {from} ended: {}",
                    ending.reason
                );
                return;
            }
        };
        let call = serve_call(shared.clone(), conn.clone(), from, send, recv);
        shared.tasks.spawn(async move {
            call.await;
            drop(permit);
        });
    }
}

/// Reads one request, asks the handler, writes its answer.
async fn serve_call(
    shared: Arc<Shared>,
    conn: Connection,
    from: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let request = match read_frame(&mut recv, wire::MAX_BODY).await {
        Ok(request) => request,
        Err(FrameError::TooLarge(error)) => {
            let what = format!("(node {from}) sent a request too large: {error}");
            disconnect(&conn, conn.remote_address(), &what);
            return;
        }
        Err(error) => {
            tracing::debug!(node = from, "a call from node {from} ended early: {error}");
            return;
        }
    };
    let response = match shared.handler.handle(from, request).await {
        Ok(body) if body.len() > wire::MAX_BODY => Response::Error(format!(
            "the answer of {} bytes is over the limit of {} bytes",
            body.len(),
            wire::MAX_BODY
        )),
        Ok(body) => Response::Ok(body),
        Err(reason) => Response::Error(reason),
    };
    let (status, body) = match response {
        Response::Ok(body) => (wire::STATUS_OK, body),
        Response::Error(reason) => (wire::STATUS_ERROR, Bytes::from(reason)),
    };
    let head = wire::response_head(status, body.len());
    let written = async {
        send.write_all(&head).await?;
        send.write_chunk(body).await?;
        send.finish()?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    if let Err(error) = written.await {
        tracing::debug!(
            node = from,
            "could not answer a call from node {from}: {error}"
        );
        return;
    }
    // Until the caller has the whole answer, so that a graceful close does not cut it.
    let _ = send.stopped().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(cluster: &str, node: NodeId) -> Hello {
        Hello {
            cluster_id: cluster.into(),
            node_id: node,
            nonce: 1,
            advertise: "h:1".into(),
        }
    }

    #[test]
    fn a_hello_is_judged_against_the_cluster_and_the_certificate() {
        let local = Local {
            cluster_id: "c1",
            node_id: 1,
        };
        let cert = |cluster: &str, node| Some(NodeName::new(cluster, node));
        assert_eq!(
            judge(&local, cert("c1", 2).as_ref(), &hello("c1", 2)),
            Ok(())
        );
        let refused =
            |named: Option<NodeName>, h: Hello| judge(&local, named.as_ref(), &h).unwrap_err();
        assert_eq!(
            refused(cert("c2", 2), hello("c2", 2)),
            "node 2 belongs to cluster c2, this is cluster c1"
        );
        assert!(refused(cert("c2", 2), hello("c1", 2)).contains("certificate is for cluster c2"));
        assert!(refused(cert("c1", 3), hello("c1", 2)).contains("certificate names node 3"));
        assert!(refused(cert("c1", 1), hello("c1", 1)).contains("this node's own id"));
        assert!(refused(None, hello("c1", 2)).contains("names no quiver node"));
    }
}
