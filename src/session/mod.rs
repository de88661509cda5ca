//! One task per QUIC connection, one per stream: frames in, broker calls, frames out.
//!
//! The first frame a client sends on a stream fixes the stream's role: a publish frame makes
//! it a publish stream, SUB a subscription stream, ADMIN a one-shot admin stream. Errors are
//! answered with typed ERROR frames; a fatal one ends only its own stream.

mod admin;
mod publish;
mod subscribe;

use std::sync::Arc;

use bytes::BytesMut;
use quinn::{Connection, SendStream};
use rustls::pki_types::CertificateDer;
use tokio_util::task::TaskTracker;

use crate::auth::{self, certificate_identity, Authenticator, Credentials};
use crate::broker::{Broker, BrokerError, ErrorKind, Principal};
use crate::protocol::{Command, ErrorCode, Reply, WireError};
use crate::rules::Reloader;
use crate::storage::StorageError;
use crate::transport::{FrameReader, ReadError};

/// QUIC application error code for a normal close.
pub const CLOSE_NORMAL: u32 = 0;
/// QUIC application error code when the broker shuts down.
pub const CLOSE_SHUTDOWN: u32 = 1;

/// The connection's credentials, shared by its streams: who it is, from its client
/// certificate or its last AUTH.
#[derive(Debug, Clone)]
pub(crate) struct Caller(Arc<tokio::sync::Mutex<Credentials>>);

impl Caller {
    /// The principal in force; an auth server is asked again once its answer expired.
    pub(crate) async fn principal(&self) -> Result<Arc<Principal>, WireError> {
        let mut credentials = self.0.lock().await;
        credentials.current().await.map_err(|e| {
            WireError::new(
                ErrorCode::AuthFailed,
                0,
                format!("authentication failed: {e}"),
            )
        })
    }
}

/// Serves one connection until the peer closes it or the broker shuts down. `rules`, when
/// the broker has rules, adds theirs to the stats answer.
pub async fn run_connection(
    conn: Connection,
    broker: Broker,
    rules: Option<Reloader>,
    auth: Arc<Authenticator>,
) {
    let remote_addr = conn.remote_address();
    let remote = remote_addr.to_string();
    tracing::debug!(%remote, "connection open");
    let certificate = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().and_then(|c| certificate_identity(c)));
    let credentials = Credentials::new(
        auth,
        auth::Connection {
            remote: remote_addr,
            tls: true,
            certificate,
        },
    );
    let caller = Caller(Arc::new(tokio::sync::Mutex::new(credentials)));
    let streams = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = broker.shutting_down() => break,
            accepted = conn.accept_bi() => accepted,
        };
        match accepted {
            Ok((send, recv)) => {
                let broker = broker.clone();
                let caller = caller.clone();
                let rules = rules.clone();
                let reader = FrameReader::new(recv);
                streams.spawn(run_stream(send, reader, broker, rules, caller));
            }
            Err(e) => {
                tracing::debug!(%remote, reason = %e, "connection closed");
                break;
            }
        }
    }
    // Subscription streams see the broker's shutdown themselves, requeue and say why.
    streams.close();
    streams.wait().await;
    conn.close(CLOSE_SHUTDOWN.into(), b"shutting down");
}

async fn run_stream(
    mut send: SendStream,
    mut reader: FrameReader,
    broker: Broker,
    rules: Option<Reloader>,
    caller: Caller,
) {
    let first = match reader.next().await {
        Ok(Some(raw)) => Command::decode(raw).map_err(|e| e.to_wire(0)),
        Ok(None) => return,
        Err(e) => Err(read_error(&e)),
    };
    let result = match first {
        Ok(cmd @ (Command::Pub { .. } | Command::Mpub { .. } | Command::Dpub { .. })) => {
            publish::run(cmd, reader, &mut send, &broker, &caller).await
        }
        Ok(Command::Sub {
            topic,
            channel,
            msg_timeout,
        }) => match caller.principal().await {
            Ok(who) => {
                let sub = broker
                    .subscribe_when_ready(&who, &topic, &channel, msg_timeout)
                    .await;
                subscribe::run(sub, reader, &mut send).await
            }
            Err(e) => Err(e.fatal()),
        },
        Ok(Command::Admin(request)) => match caller.principal().await {
            Ok(who) => admin::run(request, &mut send, &broker, rules.as_ref(), &who).await,
            Err(e) => Err(e.fatal()),
        },
        Ok(Command::Auth { secret }) => authenticate(secret, &mut send, &broker, &caller).await,
        Ok(other) => Err(WireError::new(
            ErrorCode::Invalid,
            0,
            format!("{other:?} can't open a stream; send PUB, MPUB, DPUB, SUB or ADMIN first"),
        )
        .fatal()),
        Err(e) => Err(e.fatal()),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "stream ended with an error");
        let _ = write_reply(&mut send, &Reply::Error(e)).await;
    }
    let _ = send.finish();
    // Let the peer read the last frames before the stream's state is dropped.
    let _ = send.stopped().await;
}

/// AUTH: the secret is checked and, if accepted, becomes the connection's identity.
async fn authenticate(
    secret: String,
    send: &mut SendStream,
    broker: &Broker,
    caller: &Caller,
) -> Result<(), WireError> {
    let mut credentials = caller.0.lock().await;
    let result = credentials.authenticate(secret).await;
    let logged_in = match result {
        Ok(logged_in) => logged_in,
        Err(e) => {
            broker.count_auth_failure();
            let remote = credentials.connection().remote;
            tracing::warn!(target: "quiver::audit", %remote, error = %e, "QUIC AUTH failed");
            let delay = credentials.authenticator().throttle().delay(remote.ip());
            drop(credentials);
            tokio::time::sleep(delay).await;
            let message = format!("authentication failed: {e}");
            return Err(WireError::new(ErrorCode::AuthFailed, 0, message));
        }
    };
    let json = serde_json::json!({
        "identity": logged_in.principal.identity(),
        "method": logged_in.principal.method().as_str(),
        "identity_url": logged_in.identity_url,
        "permission_count": logged_in.permission_count,
    });
    drop(credentials);
    let reply = Reply::AuthOk(json.to_string().into_bytes().into());
    let _ = write_reply(send, &reply).await;
    Ok(())
}

/// Maps a read failure to the error frame a peer gets, when it can still get one.
fn read_error(e: &ReadError) -> WireError {
    match e {
        ReadError::Frame(frame) => frame.to_wire(0).fatal(),
        other => WireError::new(ErrorCode::BadFrame, 0, other.to_string()).fatal(),
    }
}

/// Maps a broker refusal to the error a client gets, over QUIC or HTTP: the one table from
/// [`ErrorKind`] to wire codes.
pub fn broker_error(e: &BrokerError, seq: u64) -> WireError {
    let code = match e.kind() {
        ErrorKind::NotFound => ErrorCode::NotFound,
        ErrorKind::DiskFull => ErrorCode::DiskFull,
        ErrorKind::StorageFailed => ErrorCode::PubFailed,
        ErrorKind::Invalid => ErrorCode::Invalid,
        ErrorKind::ReqFailed => ErrorCode::ReqFailed,
        ErrorKind::FinFailed => ErrorCode::FinFailed,
        ErrorKind::TouchFailed => ErrorCode::TouchFailed,
        ErrorKind::ShuttingDown => ErrorCode::ShuttingDown,
        ErrorKind::Unrouted => ErrorCode::Unrouted,
        ErrorKind::Unauthenticated | ErrorKind::Denied => ErrorCode::Unauthorized,
        ErrorKind::NotLeader => ErrorCode::NotLeader,
        ErrorKind::Unavailable => ErrorCode::Unavailable,
    };
    if let BrokerError::Storage {
        source: StorageError::NotLeader { leader, .. },
        ..
    } = e
    {
        let addr = leader.quic.as_deref().unwrap_or("?");
        let text = format!("leader={addr} node={}: {}", leader.node, error_chain(e));
        return WireError::new(code, seq, text);
    }
    WireError::new(code, seq, error_chain(e))
}

/// An error and its sources, on one line, `: `-separated (for the NSQ listener and
/// `to-http` too).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn write_reply(send: &mut SendStream, reply: &Reply) -> Result<(), quinn::WriteError> {
    let mut buf = BytesMut::new();
    reply.encode(&mut buf);
    send.write_all(&buf).await
}
