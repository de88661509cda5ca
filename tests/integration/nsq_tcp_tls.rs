//! The NSQ `tls_v1` upgrade with client certificates checked against `tls.client_ca`.

use std::sync::Arc;

use quiver::transport::tls::Trust;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::nsq_tcp::NsqBroker;
use super::support::SOON;

async fn frame(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(i32, Vec<u8>)> {
    let size = stream.read_i32().await?;
    let kind = stream.read_i32().await?;
    let mut data = vec![0; size as usize - 4];
    stream.read_exact(&mut data).await?;
    Ok((kind, data))
}

async fn publish(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) -> std::io::Result<Vec<u8>> {
    stream.write_all(b"PUB secure\n\x00\x00\x00\x02hi").await?;
    stream.flush().await?;
    Ok(frame(stream).await?.1)
}

/// Negotiates `tls_v1` in the clear, then runs the handshake with `config`.
async fn upgrade(
    broker: &NsqBroker,
    config: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(broker.nsq).await?;
    let body = br#"{"feature_negotiation":true,"tls_v1":true}"#;
    tcp.write_all(b"  V2IDENTIFY\n").await?;
    tcp.write_all(&(body.len() as u32).to_be_bytes()).await?;
    tcp.write_all(body).await?;
    let (kind, json) = frame(&mut tcp).await?;
    assert_eq!(kind, 0);
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["tls_v1"], true);
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (kind, ok) = frame(&mut tls).await?;
    assert_eq!((kind, ok.as_slice()), (0, &b"OK"[..]));
    Ok(tls)
}

fn roots(broker: &NsqBroker) -> rustls::RootCertStore {
    let Trust::CaFile(path) = &broker.quic.trust else {
        panic!("the harness trusts the broker's CA file");
    };
    let pem = std::fs::read(path).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[tokio::test]
async fn tls_upgrade_checks_client_certificates_against_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = dir.path().join("clients.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["client".to_string()]).unwrap();
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    // With mTLS on, the certificate is the identity, and it needs a grant.
    let rules = dir.path().join("rules.toml");
    let grant =
        "[[grant]]\nto = [\"client\"]\ntopics = [\"secure\"]\npermissions = [\"publish\"]\n";
    std::fs::write(&rules, grant).unwrap();
    let broker = NsqBroker::start_with(|c| {
        c.tls.client_ca = Some(ca_path.clone());
        c.rules_file = Some(rules.clone());
    })
    .await;
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&broker))
    };

    // With a certificate the CA signed: upgraded, and publishing works over TLS.
    let chain = vec![CertificateDer::from(client_cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key.serialize_der()));
    let config = builder().with_client_auth_cert(chain, key).unwrap();
    let mut tls = timeout(SOON, upgrade(&broker, config))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        timeout(SOON, publish(&mut tls)).await.unwrap().unwrap(),
        b"OK"
    );

    // Without one: the broker refuses the handshake, and nothing gets through.
    let config = builder().with_no_client_auth();
    let refused = match timeout(SOON, upgrade(&broker, config)).await.unwrap() {
        Err(_) => true,
        Ok(mut tls) => timeout(SOON, publish(&mut tls)).await.unwrap().is_err(),
    };
    assert!(
        refused,
        "a client without a certificate must not get through"
    );
}
