//! Mutual TLS between nodes: both sides present a certificate signed by the cluster CA,
//! the only trusted root. The accepting side takes any such certificate (the handshake
//! then checks what it names); the dialing side also checks that the certificate names the
//! node it meant to dial, ignoring DNS names: nodes are named by their SAN URI
//! (`identity::NodeName`).
//!
//! Also here: the transport parameters, and what a failed connection means in words.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, IdleTimeout, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{close_code, BindError, ALPN, IDLE_TIMEOUT, KEEPALIVE, MAX_CALLS_PER_CONNECTION};
use crate::cluster::identity::{self, ClusterIdentity, NodeName};
use crate::cluster::NodeId;
use crate::transport::tls as transport_tls;

/// The server name a dialer sends; certificates are not checked against it.
pub(super) const SERVER_NAME: &str = "quiver-peer";

/// The node's TLS material, ready to make configs from.
pub(super) struct Tls {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    server_verifier: Arc<WebPkiServerVerifier>,
}

impl Tls {
    pub(super) fn new(identity: &ClusterIdentity) -> Result<Tls, BindError> {
        let provider = transport_tls::provider();
        let roots = Arc::new(identity::roots(&identity.ca)?);
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        Ok(Tls {
            provider,
            roots,
            chain: identity.chain.clone(),
            key: identity.key.clone_key(),
            server_verifier,
        })
    }

    /// Accepts connections from nodes with a certificate chaining to the cluster CA.
    pub(super) fn server_config(&self) -> Result<quinn::ServerConfig, BindError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.max_early_data_size = 0;
        let mut config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        config.transport_config(Arc::new(transport_config(MAX_CALLS_PER_CONNECTION)));
        Ok(config)
    }

    /// Dials a node: its certificate must chain to the cluster CA and, when `expect` is
    /// given, name that node id.
    pub(super) fn client_config(
        &self,
        expect: Option<NodeId>,
    ) -> Result<quinn::ClientConfig, BindError> {
        let verifier = Arc::new(NodeVerifier {
            inner: self.server_verifier.clone(),
            expect,
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.enable_early_data = false;
        let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        // The accepting side never opens streams towards the dialer.
        config.transport_config(Arc::new(transport_config(0)));
        Ok(config)
    }
}

/// The client config a node uses to dial `expect` (or any node of the cluster): for tools
/// and tests that speak `quiver-peer/1` by hand.
pub fn client_config(
    identity: &ClusterIdentity,
    expect: Option<NodeId>,
) -> Result<quinn::ClientConfig, BindError> {
    Tls::new(identity)?.client_config(expect)
}

/// Keep-alives every second and a short idle timeout, so that a dead or stopped peer is
/// noticed within seconds; `streams` calls at once from the other side.
fn transport_config(streams: u32) -> quinn::TransportConfig {
    const MIB: u32 = 1024 * 1024;
    let mut config = quinn::TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(8 * MIB))
        .receive_window(VarInt::from_u32(64 * MIB))
        .send_window(u64::from(64 * MIB))
        .keep_alive_interval(Some(KEEPALIVE))
        .max_idle_timeout(Some(idle_timeout(IDLE_TIMEOUT)));
    config
}

fn idle_timeout(after: Duration) -> IdleTimeout {
    IdleTimeout::from(VarInt::from_u32(after.as_millis() as u32))
}

/// The node a connection's verified peer certificate names.
pub(super) fn peer_node(conn: &quinn::Connection) -> Option<NodeName> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    NodeName::from_certificate(certs.first()?)
}

/// Checks the chain with WebPKI against the cluster CA, then that the certificate names
/// the node being dialed. DNS names are not checked: WebPKI checks them after the chain, so
/// a name error means the chain was good.
#[derive(Debug)]
struct NodeVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expect: Option<NodeId>,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(e)) if identity::ignores_name(&e) => {}
            Err(e) => return Err(e),
        }
        let named = NodeName::from_certificate(end_entity);
        match (self.expect, named) {
            (_, None) => Err(rustls::Error::General(
                "its certificate names no quiver node".into(),
            )),
            (Some(expect), Some(named)) if named.node_id != expect => {
                Err(rustls::Error::General(format!(
                    "the node at this address is node {}, not node {expect}",
                    named.node_id
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What ended (or failed to start) a connection, in words, and whether it was a refusal
/// (TLS or handshake) rather than a network failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ending {
    pub refused: bool,
    pub reason: String,
}

/// Describes a connection error as seen from this node. `refused` holds for a TLS failure
/// on either side and for a handshake refusal: retrying does not help.
pub(super) fn ending(error: &ConnectionError) -> Ending {
    let refused = |reason: String| Ending {
        refused: true,
        reason,
    };
    let lost = |reason: String| Ending {
        refused: false,
        reason,
    };
    match error {
        ConnectionError::ApplicationClosed(close) => {
            let text = String::from_utf8_lossy(&close.reason).into_owned();
            match close.error_code.into_inner() {
                close_code::REFUSED => refused(text),
                close_code::CLOSED if text.is_empty() => lost("it closed the connection".into()),
                close_code::CLOSED => lost(format!("it closed the connection ({text})")),
                _ => lost(format!("it closed the connection: {text}")),
            }
        }
        ConnectionError::ConnectionClosed(close) => match alert(close.error_code) {
            Some(alert) => refused(remote_alert(alert)),
            None => lost(format!("it closed the connection: {close}")),
        },
        ConnectionError::TransportError(error) => match alert(error.code) {
            Some(alert) => refused(local_alert(alert, &error.reason)),
            None => lost(format!("transport error: {error}")),
        },
        ConnectionError::TimedOut => lost("no answer (the connection timed out)".into()),
        ConnectionError::Reset => lost("the connection was reset (did the node restart?)".into()),
        ConnectionError::LocallyClosed => lost("this node closed the connection".into()),
        other => lost(other.to_string()),
    }
}

/// The TLS alert a QUIC crypto error code carries.
fn alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..0x200)
        .contains(&code)
        .then_some((code & 0xff) as u8)
}

/// The other side refused this node's certificate (or TLS) with `alert`.
fn remote_alert(alert: u8) -> String {
    let why = match alert {
        48 => "this node's certificate is not signed by its cluster CA",
        116 => "this node presented no certificate",
        42 | 43 | 46 => "it does not accept this node's certificate",
        45 => "this node's certificate has expired or is not valid yet",
        120 => "it does not speak quiver-peer/1 (ALPN)",
        _ => "the TLS handshake failed",
    };
    format!("{why} (TLS alert {alert})")
}

/// This node refused the other side's certificate (or TLS); `reason` is rustls' words.
fn local_alert(alert: u8, reason: &str) -> String {
    let detail = reason.trim_start_matches("unexpected error: ");
    match alert {
        48 => format!(
            "its certificate is not signed by the cluster CA, so this node does not trust it \
             ({detail})"
        ),
        _ => format!("this node does not accept it: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn refusals_and_losses_are_told_apart() {
        let closed = |code: u32, reason: &'static str| {
            ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: VarInt::from_u32(code),
                reason: Bytes::from_static(reason.as_bytes()),
            })
        };
        let e = ending(&closed(
            close_code::REFUSED as u32,
            "node id 2 is already in use",
        ));
        assert!(e.refused);
        assert_eq!(e.reason, "node id 2 is already in use");
        assert!(!ending(&closed(close_code::CLOSED as u32, "bye")).refused);
        let unknown_ca = ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(48),
            frame_type: None,
            reason: Bytes::new(),
        });
        let e = ending(&unknown_ca);
        assert!(e.refused);
        assert!(
            e.reason.contains("not signed by its cluster CA"),
            "{}",
            e.reason
        );
        assert!(!ending(&ConnectionError::TimedOut).refused);
    }
}
