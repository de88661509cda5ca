//! Who a node is to its peers: the cluster CA, node certificates that name their node, and
//! the checks that a node's own files are consistent before it starts.
//!
//! A node certificate is signed by the cluster CA and carries a URI subject alternative name
//! `quiver-node:<cluster_id>:<node_id>` (see [`NodeName`]), so a peer's node id and cluster
//! id are read from a certificate that TLS has verified, never taken from what the peer
//! says. It also names the node's host (a DNS or IP SAN) for tools that check names, and
//! allows both server and client authentication: every node is both.
//!
//! `quiver cluster init` (in [`init`]) makes the CA, the certificates and a config file per
//! node.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::settings::ClusterSettings;
use super::NodeId;
use crate::transport::tls::{self, TlsError};

pub mod init;

/// The URI scheme of the subject alternative name that names a node.
pub const NODE_URI_SCHEME: &str = "quiver-node";

/// A node as its certificate names it: `quiver-node:<cluster_id>:<node_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeName {
    pub cluster_id: String,
    pub node_id: NodeId,
}

impl NodeName {
    pub fn new(cluster_id: impl Into<String>, node_id: NodeId) -> NodeName {
        NodeName {
            cluster_id: cluster_id.into(),
            node_id,
        }
    }

    /// The SAN URI: `quiver-node:<cluster_id>:<node_id>`.
    pub fn uri(&self) -> String {
        format!("{NODE_URI_SCHEME}:{}:{}", self.cluster_id, self.node_id)
    }

    /// Reads a SAN URI written by [`uri`](Self::uri); None for any other URI.
    pub fn parse_uri(uri: &str) -> Option<NodeName> {
        let rest = uri.strip_prefix(NODE_URI_SCHEME)?.strip_prefix(':')?;
        let (cluster_id, node_id) = rest.rsplit_once(':')?;
        let node_id = node_id.parse().ok()?;
        if cluster_id.is_empty() {
            return None;
        }
        Some(NodeName::new(cluster_id, node_id))
    }

    /// The node a DER certificate names (its first `quiver-node:` SAN URI). Only meaningful
    /// for a certificate already verified against the cluster CA.
    pub fn from_certificate(der: &[u8]) -> Option<NodeName> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let sans = cert.subject_alternative_name().ok().flatten()?;
        sans.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => NodeName::parse_uri(uri),
            _ => None,
        })
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} of cluster {}", self.node_id, self.cluster_id)
    }
}

/// A node's verified TLS identity: the cluster CA, its certificate chain and key.
pub struct ClusterIdentity {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// The cluster CA certificate: the only trust anchor for peers.
    pub ca: CertificateDer<'static>,
    /// This node's certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClusterIdentity {
    fn clone(&self) -> Self {
        ClusterIdentity {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for ClusterIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterIdentity")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Why a node's certificates could not be loaded or made. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written, or holds no PEM certificate or key.
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cluster CA {}: not a usable CA certificate: {source}", path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{}: not a usable private key: {source}", path.display())]
    BadKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{} is not the private key of the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{} is not signed by the cluster CA {}: {reason}", cert.display(), ca.display())]
    NotSignedByCa {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error(
        "{} names no quiver node: it has no `{NODE_URI_SCHEME}:` URI among its subject \
         alternative names (make node certificates with `quiver cluster init`)",
        cert.display()
    )]
    NotANodeCertificate { cert: PathBuf },
    #[error("{} is the certificate of node {named}, but cluster.node_id is {expected}", cert.display())]
    WrongNode {
        cert: PathBuf,
        named: NodeId,
        expected: NodeId,
    },
    #[error(
        "{} is a certificate of cluster {named}, but cluster.cluster_id is {expected}",
        cert.display()
    )]
    WrongCluster {
        cert: PathBuf,
        named: String,
        expected: String,
    },
    #[error(
        "{} already exists; refusing to overwrite it{hint}",
        path.display()
    )]
    Exists { path: PathBuf, hint: &'static str },
    #[error("{}: {why}", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("{0}")]
    Layout(String),
    #[error("cannot make a certificate")]
    Generate(#[from] rcgen::Error),
    #[error("the system's random number generator failed")]
    Random,
}

/// Loads and checks a node's files named by `[cluster]`: the CA, the node's certificate
/// and key. The certificate must be signed by the CA, match the key, and name
/// `settings.node_id` of `settings.cluster_id`.
pub fn load_identity(settings: &ClusterSettings) -> Result<ClusterIdentity, IdentityError> {
    let ca = read_ca(&settings.ca)?;
    let chain = tls::read_certs(&settings.cert)?;
    let key = tls::read_key(&settings.key)?;
    check_key(&chain, &key, &settings.cert, &settings.key)?;
    verify_chain(&ca, &chain).map_err(|source| IdentityError::NotSignedByCa {
        cert: settings.cert.clone(),
        ca: settings.ca.clone(),
        reason: describe_chain_error(&source),
    })?;
    let cert = settings.cert.clone();
    let named = NodeName::from_certificate(&chain[0])
        .ok_or_else(|| IdentityError::NotANodeCertificate { cert: cert.clone() })?;
    if named.cluster_id != settings.cluster_id {
        return Err(IdentityError::WrongCluster {
            cert,
            named: named.cluster_id,
            expected: settings.cluster_id.clone(),
        });
    }
    if named.node_id != settings.node_id {
        return Err(IdentityError::WrongNode {
            cert,
            named: named.node_id,
            expected: settings.node_id,
        });
    }
    Ok(ClusterIdentity {
        cluster_id: named.cluster_id,
        node_id: named.node_id,
        ca,
        chain,
        key,
    })
}

/// The first certificate of a CA file, checked to be a usable trust anchor.
fn read_ca(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    let ca = tls::read_certs(path)?.swap_remove(0);
    roots(&ca).map_err(|source| IdentityError::BadCa {
        path: path.to_owned(),
        source,
    })?;
    Ok(ca)
}

fn check_key(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), IdentityError> {
    let provider = tls::provider();
    match rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(IdentityError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        }),
        Err(source) => Err(IdentityError::BadKey {
            path: key_path.to_owned(),
            source,
        }),
    }
}

/// A root store holding only the cluster CA.
pub(crate) fn roots(ca: &CertificateDer<'static>) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(roots)
}

/// Checks that `chain` leads to `ca` for both uses a node certificate has: serving peers
/// and dialing them. Names are not checked here (a node is named by its SAN URI).
pub(crate) fn verify_chain(
    ca: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
) -> Result<(), rustls::Error> {
    let (end_entity, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let provider = tls::provider();
    let roots = Arc::new(roots(ca)?);
    let now = UnixTime::now();
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?
        .verify_client_cert(end_entity, intermediates, now)?;
    let server = WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let name =
        ServerName::try_from("quiver-node").map_err(|e| rustls::Error::General(e.to_string()))?;
    match server.verify_server_cert(end_entity, intermediates, &name, &[], now) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(e)) if ignores_name(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a certificate error is only about the DNS name, which peers do not check (the
/// chain was verified before the name).
pub(crate) fn ignores_name(error: &CertificateError) -> bool {
    matches!(
        error,
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
    )
}

/// Says what a chain verification error means for a cluster's certificates.
pub(crate) fn describe_chain_error(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the certificate is not signed by the cluster CA".into()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the certificate has expired".into(),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the certificate is not valid yet (check the clock)".into(),
        other => other.to_string(),
    }
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<String, IdentityError> {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), IdentityError> {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| IdentityError::Random)
}

/// A cluster CA able to sign node certificates.
pub struct ClusterCa {
    cluster_id: String,
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

/// A node certificate and its key, in PEM.
#[derive(Clone)]
pub struct NodePem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for NodePem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodePem").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for cluster `cluster_id`, with a fresh key.
    pub fn generate(cluster_id: &str) -> Result<ClusterCa, IdentityError> {
        let params = ca_params(cluster_id)?;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cluster_id: cluster_id.to_owned(),
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA of cluster `cluster_id` made by [`generate`](Self::generate), from its files.
    /// The key must be the certificate's.
    pub fn load(cluster_id: &str, cert: &Path, key: &Path) -> Result<ClusterCa, IdentityError> {
        let ca = read_ca(cert)?;
        let key_pem = std::fs::read_to_string(key).map_err(|source| TlsError::Read {
            path: key.to_owned(),
            source,
        })?;
        let key_pair = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::Invalid {
            path: key.to_owned(),
            why: format!("not a usable CA key: {e}"),
        })?;
        let der_key = tls::read_key(key)?;
        check_key(std::slice::from_ref(&ca), &der_key, cert, key)?;
        let cert_pem = std::fs::read_to_string(cert).map_err(|source| TlsError::Read {
            path: cert.to_owned(),
            source,
        })?;
        Ok(ClusterCa {
            cluster_id: cluster_id.to_owned(),
            cert_pem,
            issuer: rcgen::Issuer::new(ca_params(cluster_id)?, key_pair),
        })
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a certificate for `name` (which may name another cluster: tests use that),
    /// with `host` as a DNS or IP SAN, and checks that it verifies against this CA.
    pub fn issue(&self, name: &NodeName, host: &str) -> Result<NodePem, IdentityError> {
        let mut names = vec![host.to_owned()];
        // Clients check the name they dialled; on loopback that is often `localhost`.
        if host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        {
            names.push("localhost".to_owned());
        }
        let mut params = rcgen::CertificateParams::new(names)?;
        let uri = rcgen::string::Ia5String::try_from(name.uri())?;
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("quiver node {}", name.node_id),
        );
        params.distinguished_name.push(
            rcgen::DnType::OrganizationName,
            format!("Quiver cluster {}", name.cluster_id),
        );
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(serial()?);
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let ca = tls_pem_cert(&self.cert_pem)?;
        verify_chain(&ca, &[cert.der().clone()]).map_err(|e| {
            IdentityError::Layout(format!(
                "the certificate signed for {name} does not verify against the CA: {}",
                describe_chain_error(&e)
            ))
        })?;
        Ok(NodePem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The CA's parameters, the same each time for one cluster id, so that a CA loaded from
/// its files signs with exactly the issuer name its certificate has.
fn ca_params(cluster_id: &str) -> Result<rcgen::CertificateParams, IdentityError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Quiver cluster CA");
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        format!("Quiver cluster {cluster_id}"),
    );
    Ok(params)
}

/// A random positive 128-bit serial number.
fn serial() -> Result<rcgen::SerialNumber, IdentityError> {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes)?;
    bytes[0] &= 0x7F;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

fn tls_pem_cert(pem: &str) -> Result<CertificateDer<'static>, IdentityError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| IdentityError::Layout("the CA certificate is not PEM".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Writes a CA and one node certificate into `dir`; returns the node's settings.
    fn write_node(dir: &Path, ca: &ClusterCa, name: &NodeName) -> ClusterSettings {
        let pem = ca.issue(name, "127.0.0.1").unwrap();
        let n = name.node_id;
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.join(format!("n{n}.pem")), pem.cert_pem).unwrap();
        std::fs::write(dir.join(format!("n{n}.key")), pem.key_pem).unwrap();
        ClusterSettings::new(
            n,
            ca.cluster_id(),
            dir.join("ca.pem"),
            dir.join(format!("n{n}.pem")),
            dir.join(format!("n{n}.key")),
        )
    }

    #[test]
    fn node_names_round_trip_through_the_uri_and_the_certificate() {
        let name = NodeName::new("0a1b", 7);
        assert_eq!(name.uri(), "quiver-node:0a1b:7");
        assert_eq!(NodeName::parse_uri(&name.uri()), Some(name.clone()));
        for other in [
            "quiver-node:x",
            "quiver-node::3",
            "https://x",
            "quiver-node:c:x",
        ] {
            assert_eq!(NodeName::parse_uri(other), None, "{other}");
        }
        let ca = ClusterCa::generate("0a1b").unwrap();
        let pem = ca.issue(&name, "node-7.example").unwrap();
        let der = tls_pem_cert(&pem.cert_pem).unwrap();
        assert_eq!(NodeName::from_certificate(&der), Some(name));
        let ca_der = tls_pem_cert(ca.cert_pem()).unwrap();
        assert_eq!(NodeName::from_certificate(&ca_der), None);
    }

    #[test]
    fn a_node_loads_its_own_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("c1").unwrap();
        let settings = write_node(dir.path(), &ca, &NodeName::new("c1", 2));
        let identity = load_identity(&settings).unwrap();
        assert_eq!(identity.node_id, 2);
        assert_eq!(identity.cluster_id, "c1");
        assert!(!format!("{identity:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ours = ClusterCa::generate("c1").unwrap();
        let theirs = ClusterCa::generate("c1").unwrap();
        let settings = write_node(dir.path(), &theirs, &NodeName::new("c1", 2));
        std::fs::write(&settings.ca, ours.cert_pem()).unwrap();
        let err = load_identity(&settings).unwrap_err();
        assert!(
            matches!(err, IdentityError::NotSignedByCa { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("n2.pem"), "{text}");
        assert!(text.contains("not signed by the cluster CA"), "{text}");
    }

    #[test]
    fn a_certificate_of_another_node_or_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("c1").unwrap();
        let mut settings = write_node(dir.path(), &ca, &NodeName::new("c1", 2));
        settings.node_id = 3;
        let err = load_identity(&settings).unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::WrongNode {
                    named: 2,
                    expected: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("n2.pem"), "{err}");
        settings.node_id = 2;
        settings.cluster_id = "c2".into();
        let err = load_identity(&settings).unwrap_err();
        assert!(matches!(err, IdentityError::WrongCluster { .. }), "{err:?}");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("c1").unwrap();
        let settings = write_node(dir.path(), &ca, &NodeName::new("c1", 2));
        let other = write_node(dir.path(), &ca, &NodeName::new("c1", 3));
        let mut mixed = settings.clone();
        mixed.key = other.key;
        let err = load_identity(&mixed).unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("n3.key"), "{err}");
        let mut missing = settings;
        missing.ca = dir.path().join("absent.pem");
        let err = load_identity(&missing).unwrap_err().to_string();
        assert!(err.contains("absent.pem"), "{err}");
    }

    #[test]
    fn a_loaded_ca_signs_certificates_that_verify() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("c9").unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("ca.key"), ca.key_pem()).unwrap();
        let loaded =
            ClusterCa::load("c9", &dir.path().join("ca.pem"), &dir.path().join("ca.key")).unwrap();
        let settings = write_node(dir.path(), &loaded, &NodeName::new("c9", 4));
        load_identity(&settings).unwrap();
    }
}
