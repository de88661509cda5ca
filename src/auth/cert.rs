//! The identity a verified TLS client certificate stands for.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Who a client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The first DNS name, e-mail address or URI of the subject alternative names, else the
    /// subject's common name.
    pub identity: String,
    /// The subject's common name (empty if it has none): what nsqd sends an auth server as
    /// `common_name`.
    pub common_name: String,
}

/// Reads the identity from a DER certificate that TLS has already verified. `None` when it
/// names nobody (no usable SAN and no CN) or cannot be parsed.
pub fn certificate_identity(der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|ext| {
            ext.value.general_names.iter().find_map(|name| match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    Some((*s).to_owned())
                }
                _ => None,
            })
        });
    let identity = san.or_else(|| (!common_name.is_empty()).then(|| common_name.clone()))?;
    Some(CertIdentity {
        identity,
        common_name,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: Vec<String>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if !cn.is_empty() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_san_wins_over_the_common_name() {
        let id = certificate_identity(&cert("cn-name", vec!["svc.example".into()])).unwrap();
        assert_eq!(id.identity, "svc.example");
        assert_eq!(id.common_name, "cn-name");
    }

    #[test]
    fn the_common_name_is_used_without_a_san() {
        let id = certificate_identity(&cert("billing", vec![])).unwrap();
        assert_eq!(id.identity, "billing");
    }

    #[test]
    fn a_certificate_naming_nobody_has_no_identity() {
        assert_eq!(certificate_identity(&cert("", vec![])), None);
        assert_eq!(certificate_identity(b"not a certificate"), None);
    }
}
