//! TLS for the client-facing endpoints (S3, EC2): rustls with a certificate
//! chain and key from PEM files.

use std::{path::Path, sync::Arc};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::{rustls, TlsAcceptor};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading certificates from {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("reading the private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificates in a PEM file.
pub fn certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates {
            path: file.display().to_string(),
            reason: e.to_string(),
        })
}

/// A TLS acceptor serving the chain in `cert_file` (PEM, leaf first) with
/// the key in `key_file` (PEM: PKCS#8, PKCS#1 or SEC1), HTTP/1.1 only.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = certificates(cert_file)?;
    if certs.is_empty() {
        return Err(TlsError::Certificates {
            path: cert_file.display().to_string(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Key {
        path: key_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let Err(err) = acceptor(&empty, &empty) else {
            panic!("an empty file has no certificate")
        };
        assert!(err.to_string().contains("no certificate"), "{err}");
        let Err(err) = acceptor(&dir.path().join("missing.pem"), &empty) else {
            panic!("a missing file is an error")
        };
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
