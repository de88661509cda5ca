//! TLS for Quiver's QUIC transport.
//!
//! This module owns everything about certificates and trust: loading the
//! broker's identity from PEM files (or minting a self-signed development
//! certificate), SHA-256 certificate fingerprints, the ways a client can decide
//! to trust a broker, and turning all of that into `quinn` server and client
//! configurations (TLS 1.3 only, ALPN `quiver/1`, no 0-RTT, optional mTLS)
//! with Quiver's shared transport parameters.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::RootCertStore;

/// ALPN protocol id for Quiver's wire protocol.
pub const ALPN: &[u8] = b"quiver/1";

/// File name of the certificate chain inside an identity directory.
const CERT_FILE: &str = "cert.pem";
/// File name of the private key inside an identity directory.
const KEY_FILE: &str = "key.pem";
/// Subject alternative names of the self-signed development certificate.
const DEV_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Everything that can go wrong while loading identities or building configs.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("malformed PEM in {path}")]
    Pem {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no certificate in file {path}")]
    NoCertificate { path: PathBuf },
    #[error("no private key in file {path}")]
    NoPrivateKey { path: PathBuf },
    #[error("{present} exists but {missing} does not; refusing to overwrite a partial identity")]
    PartialIdentity { present: PathBuf, missing: PathBuf },
    #[error("certificate in {path} is not a usable trust anchor")]
    TrustAnchor {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("invalid SHA-256 fingerprint {text:?}: {reason}")]
    BadFingerprint { text: String, reason: &'static str },
    #[error("cannot generate the development certificate")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration rejected")]
    Rustls(#[from] rustls::Error),
    #[error("cannot build the client certificate verifier")]
    ClientVerifier(#[from] VerifierBuilderError),
    #[error("TLS configuration is not usable for QUIC")]
    Quic(#[from] NoInitialCipherSuite),
}

/// The broker's certificate chain and key, loaded from disk.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub fingerprint: String,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("chain_len", &self.chain.len())
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// How a client decides to trust the broker.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Trust anchors from a PEM file (a CA, or the broker's own self-signed cert).
    CaFile(PathBuf),
    /// Accept exactly the server certificate whose SHA-256 matches (the handshake signature is still verified).
    Fingerprint([u8; 32]),
    /// Accept any certificate. Development only.
    DangerousInsecure,
}

/// Loads `dir/cert.pem` + `dir/key.pem`, or, if neither exists, makes a
/// self-signed dev certificate (SANs: "localhost", "127.0.0.1", "::1"),
/// writes both files (key file mode 0600 on unix), and returns it.
///
/// If exactly one of the two files exists, that is an error: nothing is overwritten.
pub fn load_or_create_dev_identity(dir: &Path) -> Result<ServerIdentity, TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    match (exists(&cert_path)?, exists(&key_path)?) {
        (true, true) => load_identity(&cert_path, &key_path),
        (false, false) => create_dev_identity(dir, &cert_path, &key_path),
        (true, false) => Err(partial(cert_path, key_path)),
        (false, true) => Err(partial(key_path, cert_path)),
    }
}

/// Loads a chain + key from explicit PEM files.
pub fn load_identity(cert: &Path, key: &Path) -> Result<ServerIdentity, TlsError> {
    let chain = read_certs(cert)?;
    let key = read_key(key)?;
    // `read_certs` never returns an empty chain.
    let fingerprint = fingerprint(&chain[0]);
    Ok(ServerIdentity {
        chain,
        key,
        fingerprint,
    })
}

/// SHA-256 of a DER certificate, as uppercase hex pairs separated by ':'
/// (like `openssl x509 -fingerprint -sha256`).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    sha256(cert)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses the form produced by [`fingerprint`]; also accepts lowercase and no
/// separators.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let bad = |reason| TlsError::BadFingerprint {
        text: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    let hex: String = if trimmed.contains(':') {
        if trimmed.split(':').any(|pair| pair.len() != 2) {
            return Err(bad("separated groups must be exactly two hex digits"));
        }
        trimmed.split(':').collect()
    } else {
        trimmed.to_owned()
    };
    if hex.len() != 64 {
        return Err(bad("expected 32 bytes (64 hex digits)"));
    }
    let digits: Vec<u8> = hex
        .chars()
        .map(|c| c.to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("contains a character that is not a hex digit"))?;
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (pair[0] << 4) | pair[1];
    }
    Ok(out)
}

/// Server-side QUIC config: TLS 1.3 only, ALPN `quiver/1`, no 0-RTT, optional
/// mTLS (when `client_ca` is `Some`, clients must present a certificate
/// chaining to it), and the transport tuned by [`transport_config`].
pub fn server_config(
    identity: &ServerIdentity,
    client_ca: Option<&Path>,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        Some(path) => {
            let roots = Arc::new(root_store(path)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder.with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;

    let quic = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// Server-side TLS for the NSQ TCP listener's in-band upgrade (`tls_v1`): the broker's own
/// certificate, TLS 1.2 or 1.3 (NSQ clients predate 1.3), no ALPN, and the same optional
/// client-certificate check as QUIC.
pub fn tcp_server_config(
    identity: &ServerIdentity,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        Some(path) => {
            let roots = Arc::new(root_store(path)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let tls = builder.with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    Ok(Arc::new(tls))
}

/// Client-side QUIC config for the given trust, with an optional client
/// certificate `(cert path, key path)` for mTLS.
pub fn client_config(
    trust: &Trust,
    client_identity: Option<(&Path, &Path)>,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match trust {
        Trust::CaFile(path) => builder.with_root_certificates(root_store(path)?),
        Trust::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(danger::PinnedCert::new(*pin, algorithms))),
        Trust::DangerousInsecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(danger::AnyCert::new(algorithms))),
    };
    let mut tls = match client_identity {
        Some((cert, key)) => builder.with_client_auth_cert(read_certs(cert)?, read_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;

    let quic = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// Transport parameters shared by both sides.
pub fn transport_config() -> quinn::TransportConfig {
    const MIB: u32 = 1024 * 1024;
    let mut config = quinn::TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(1024))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(8 * MIB))
        .receive_window(VarInt::from_u32(32 * MIB))
        .send_window(u64::from(32 * MIB))
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(30_000))));
    config
}

/// The crypto provider used everywhere in this module, independent of any
/// process-wide default.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn sha256(cert: &CertificateDer<'_>) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    path.try_exists().map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn partial(present: PathBuf, missing: PathBuf) -> TlsError {
    TlsError::PartialIdentity { present, missing }
}

/// Generates the development certificate and writes it to `cert_path` and
/// `key_path`, neither of which may exist yet.
fn create_dev_identity(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<ServerIdentity, TlsError> {
    let (cert, key) = generate_dev_cert()?;
    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write_new(key_path, &key.serialize_pem(), 0o600)?;
    if let Err(err) = write_new(cert_path, &cert.pem(), 0o644) {
        // Best effort: don't leave a lone key behind, which would make every
        // later start fail with `PartialIdentity`. The write error is the one to report.
        let _ = fs::remove_file(key_path);
        return Err(err);
    }
    tracing::info!(cert = %cert_path.display(), "created self-signed development certificate");

    let cert = cert.der().clone();
    Ok(ServerIdentity {
        fingerprint: fingerprint(&cert),
        chain: vec![cert],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    })
}

/// A fresh self-signed certificate for [`DEV_SANS`] (IPs become IP SANs).
fn generate_dev_cert() -> Result<(rcgen::Certificate, rcgen::KeyPair), TlsError> {
    let sans: Vec<String> = DEV_SANS.iter().map(|s| s.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Quiver development certificate");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

/// Writes `contents` to a file that must not exist yet, with `mode` on unix.
pub(crate) fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    options
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })
}

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Reads every certificate in a PEM file; at least one is required.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: path.to_owned(),
        })
}

/// Builds a root store from every certificate in a PEM file.
fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::TrustAnchor {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// Server certificate verifiers that bypass WebPKI path validation. Both still
/// verify the TLS 1.3 handshake signature, so the peer must hold the private
/// key of the certificate it presents.
mod danger {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{verify_tls13_signature, WebPkiSupportedAlgorithms};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{
        CertificateError, DigitallySignedStruct, Error, PeerIncompatible, SignatureScheme,
    };

    /// Accepts exactly the end-entity certificate whose SHA-256 equals the pin.
    #[derive(Debug)]
    pub(super) struct PinnedCert {
        pin: [u8; 32],
        algorithms: WebPkiSupportedAlgorithms,
    }

    impl PinnedCert {
        pub(super) fn new(pin: [u8; 32], algorithms: WebPkiSupportedAlgorithms) -> Self {
            Self { pin, algorithms }
        }
    }

    impl ServerCertVerifier for PinnedCert {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            if equal_bytes(&super::sha256(end_entity), &self.pin) {
                Ok(ServerCertVerified::assertion())
            } else {
                tracing::warn!(
                    presented = %super::fingerprint(end_entity),
                    "server certificate does not match the pinned fingerprint"
                );
                Err(Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Err(tls12_refused())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }

    /// Accepts any certificate. Development only.
    #[derive(Debug)]
    pub(super) struct AnyCert {
        algorithms: WebPkiSupportedAlgorithms,
    }

    impl AnyCert {
        pub(super) fn new(algorithms: WebPkiSupportedAlgorithms) -> Self {
            Self { algorithms }
        }
    }

    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Err(tls12_refused())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }

    /// Quiver only speaks TLS 1.3, so a TLS 1.2 signature is never acceptable.
    fn tls12_refused() -> Error {
        Error::PeerIncompatible(PeerIncompatible::Tls13RequiredForQuic)
    }

    /// Compares two digests without stopping at the first differing byte.
    fn equal_bytes(a: &[u8; 32], b: &[u8; 32]) -> bool {
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    const LOCALHOST: &str = "localhost";

    fn install_dev_identity() -> (tempfile::TempDir, ServerIdentity) {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = load_or_create_dev_identity(dir.path()).expect("create identity");
        (dir, identity)
    }

    /// Runs one handshake between a fresh server and client on loopback and
    /// returns both sides' outcomes.
    async fn handshake(
        server: quinn::ServerConfig,
        client: quinn::ClientConfig,
        server_name: &str,
    ) -> (
        Result<quinn::Connection, quinn::ConnectionError>,
        Result<quinn::Connection, quinn::ConnectionError>,
    ) {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let server_ep = quinn::Endpoint::server(server, any).expect("server endpoint");
        let server_addr = server_ep.local_addr().expect("server addr");
        let client_ep = quinn::Endpoint::client(any).expect("client endpoint");

        let accept = async {
            let incoming = server_ep.accept().await.expect("incoming connection");
            incoming.await
        };
        let connect = async {
            client_ep
                .connect_with(client, server_addr, server_name)
                .expect("start connect")
                .await
        };
        let timeout = Duration::from_secs(10);
        let both = async { tokio::join!(accept, connect) };
        tokio::time::timeout(timeout, both)
            .await
            .expect("handshake timed out")
    }

    /// True when the client side ends up without a usable connection: either
    /// the handshake failed or the server closed it right afterwards (in TLS
    /// 1.3 the client may finish before the server judges its certificate).
    async fn client_refused(result: Result<quinn::Connection, quinn::ConnectionError>) -> bool {
        match result {
            Err(_) => true,
            Ok(conn) => {
                let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
                matches!(closed, Ok(reason) if !matches!(reason, quinn::ConnectionError::LocallyClosed))
            }
        }
    }

    fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
        conn.handshake_data()?
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .ok()?
            .protocol
    }

    #[test]
    fn create_then_reload_keeps_identity() {
        let (dir, created) = install_dev_identity();
        let cert_path = dir.path().join(CERT_FILE);
        let key_path = dir.path().join(KEY_FILE);
        let cert_before = fs::read(&cert_path).expect("read cert");
        let key_before = fs::read(&key_path).expect("read key");
        let modified_before = fs::metadata(&cert_path)
            .and_then(|m| m.modified())
            .expect("mtime");

        let reloaded = load_or_create_dev_identity(dir.path()).expect("reload identity");
        assert_eq!(created.fingerprint, reloaded.fingerprint);
        assert_eq!(fs::read(&cert_path).expect("read cert"), cert_before);
        assert_eq!(fs::read(&key_path).expect("read key"), key_before);
        let modified_after = fs::metadata(&cert_path)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(modified_before, modified_after);
        assert!(!format!("{reloaded:?}").contains("PRIVATE"));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key_path)
                .expect("key metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn one_missing_file_is_an_error() {
        let (dir, _) = install_dev_identity();
        let key_path = dir.path().join(KEY_FILE);
        fs::remove_file(&key_path).expect("remove key");
        let err = load_or_create_dev_identity(dir.path()).expect_err("partial identity");
        assert!(matches!(err, TlsError::PartialIdentity { .. }), "{err:?}");
        assert!(!key_path.exists(), "must not recreate the key");
    }

    #[test]
    fn files_without_the_expected_pem_are_reported() {
        let (dir, _) = install_dev_identity();
        let cert_path = dir.path().join(CERT_FILE);
        let key_path = dir.path().join(KEY_FILE);
        let err = load_identity(&cert_path, &cert_path).expect_err("no key");
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
        let err = load_identity(&key_path, &key_path).expect_err("no cert");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        let err = load_identity(&dir.path().join("absent.pem"), &key_path).expect_err("no file");
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    }

    #[test]
    fn fingerprint_round_trips_and_rejects_bad_input() {
        let (_dir, identity) = install_dev_identity();
        let text = fingerprint(&identity.chain[0]);
        assert_eq!(text.len(), 32 * 3 - 1);
        assert_eq!(text, text.to_uppercase());
        let bytes = parse_fingerprint(&text).expect("parse canonical");
        assert_eq!(bytes, sha256(&identity.chain[0]));
        assert_eq!(
            parse_fingerprint(&text.to_lowercase()).expect("lowercase"),
            bytes
        );
        assert_eq!(
            parse_fingerprint(&text.replace(':', "")).expect("bare"),
            bytes
        );

        for bad in [
            "",
            "AB:CD",
            &text[..text.len() - 3],
            &format!("{text}:00"),
            &format!("ZZ{}", &text[2..]),
            &text.replacen(':', "", 1),
            &text.replace(':', "-"),
        ] {
            let err = parse_fingerprint(bad).expect_err(bad);
            assert!(matches!(err, TlsError::BadFingerprint { .. }), "{err:?}");
        }
    }

    #[tokio::test]
    async fn ca_file_trust_connects_with_alpn() {
        let (dir, identity) = install_dev_identity();
        let server = server_config(&identity, None).expect("server config");
        let trust = Trust::CaFile(dir.path().join(CERT_FILE));
        let client = client_config(&trust, None).expect("client config");

        let (server_side, client_side) = handshake(server, client, LOCALHOST).await;
        let conn = client_side.expect("client connects");
        server_side.expect("server accepts");
        assert_eq!(negotiated_alpn(&conn).as_deref(), Some(ALPN));

        // The dev certificate carries the loopback address as an IP SAN.
        let server = server_config(&identity, None).expect("server config");
        let client = client_config(&trust, None).expect("client config");
        let (_, client_side) = handshake(server, client, "127.0.0.1").await;
        client_side.expect("client connects by IP");
    }

    #[tokio::test]
    async fn fingerprint_trust_checks_the_pin() {
        let (_dir, identity) = install_dev_identity();
        let pin = parse_fingerprint(&identity.fingerprint).expect("parse pin");

        let server = server_config(&identity, None).expect("server config");
        let client = client_config(&Trust::Fingerprint(pin), None).expect("client config");
        let (server_side, client_side) = handshake(server, client, LOCALHOST).await;
        client_side.expect("right pin connects");
        server_side.expect("server accepts");

        let mut wrong = pin;
        wrong[0] ^= 0xFF;
        let server = server_config(&identity, None).expect("server config");
        let client = client_config(&Trust::Fingerprint(wrong), None).expect("client config");
        let (server_side, client_side) = handshake(server, client, LOCALHOST).await;
        assert!(client_side.is_err(), "wrong pin must fail the handshake");
        assert!(server_side.is_err());
    }

    #[tokio::test]
    async fn insecure_trust_connects() {
        let (_dir, identity) = install_dev_identity();
        let server = server_config(&identity, None).expect("server config");
        let client = client_config(&Trust::DangerousInsecure, None).expect("client config");
        let (server_side, client_side) = handshake(server, client, LOCALHOST).await;
        client_side.expect("client connects");
        server_side.expect("server accepts");
    }

    #[tokio::test]
    async fn mtls_requires_a_client_cert_from_the_ca() {
        let (dir, identity) = install_dev_identity();
        let ca_path = dir.path().join("client-ca.pem");
        let client_cert = dir.path().join("client.pem");
        let client_key = dir.path().join("client-key.pem");
        write_client_ca_and_cert(&ca_path, &client_cert, &client_key);
        let trust = Trust::CaFile(dir.path().join(CERT_FILE));

        let server = server_config(&identity, Some(&ca_path)).expect("server config");
        let anonymous = client_config(&trust, None).expect("client config");
        let (server_side, client_side) = handshake(server, anonymous, LOCALHOST).await;
        assert!(
            server_side.is_err(),
            "server must reject a client without a cert"
        );
        assert!(client_refused(client_side).await);

        let server = server_config(&identity, Some(&ca_path)).expect("server config");
        let with_cert = client_config(&trust, Some((&client_cert, &client_key))).expect("config");
        let (server_side, client_side) = handshake(server, with_cert, LOCALHOST).await;
        server_side.expect("server accepts the client cert");
        client_side.expect("client connects");
    }

    /// Writes a test CA certificate and a client certificate + key signed by it.
    fn write_client_ca_and_cert(ca_path: &Path, cert_path: &Path, key_path: &Path) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "quiver test client CA");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let mut params = rcgen::CertificateParams::new(vec!["client".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "quiver test client");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &issuer).expect("client cert");

        fs::write(ca_path, ca_cert.pem()).expect("write ca");
        fs::write(cert_path, cert.pem()).expect("write client cert");
        fs::write(key_path, key.serialize_pem()).expect("write client key");
    }
}
