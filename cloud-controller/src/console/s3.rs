//! The console's way to Walrus: each S3 request a page makes is presigned
//! with the signed-in user's own access key and sent to Walrus' S3
//! endpoint, so Walrus authorises it exactly as it would the user's own
//! client. Bodies stream through both ways.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_rustls::{
    rustls::{
        self,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        pki_types::{CertificateDer, ServerName, UnixTime},
        DigitallySignedStruct, SignatureScheme,
    },
    TlsConnector,
};

/// Why Walrus could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no Walrus is known to the cloud")]
    NoWalrus,
    #[error("Walrus' address {0:?} is not a URL this console can reach")]
    BadEndpoint(String),
    #[error("cannot reach Walrus at {0}: {1}")]
    Connect(String, String),
}

/// A certificate verifier that takes exactly the certificates it was
/// given (the cloud's own, self-signed ones), and checks the handshake's
/// signatures.
#[derive(Debug)]
struct Pinned {
    certs: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "Walrus' certificate is not the one the console trusts".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Sends requests to Walrus.
#[derive(Clone)]
pub struct WalrusClient {
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for WalrusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalrusClient")
            .field("https", &self.tls.is_some())
            .finish()
    }
}

impl WalrusClient {
    /// A client trusting the certificates in `pinned` (PEM) for HTTPS.
    pub fn new(pinned: &[CertificateDer<'static>]) -> Result<Self, rustls::Error> {
        if pinned.is_empty() {
            return Ok(Self { tls: None });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                certs: pinned.to_vec(),
                provider,
            }))
            .with_no_client_auth();
        Ok(Self {
            tls: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    /// Sends `req` (its URI path and query as given) to `endpoint`
    /// (`http://host:port` or `https://…`), one connection per request.
    pub async fn send<B>(
        &self,
        endpoint: &str,
        mut req: Request<B>,
    ) -> Result<Response<Incoming>, ProxyError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let bad = || ProxyError::BadEndpoint(endpoint.to_string());
        let (https, hostport) = match endpoint.split_once("://") {
            Some(("https", rest)) => (true, rest.trim_end_matches('/')),
            Some(("http", rest)) => (false, rest.trim_end_matches('/')),
            _ => return Err(bad()),
        };
        let host = hostport
            .rsplit_once(':')
            .map_or(hostport, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let connect =
            |e: &dyn std::fmt::Display| ProxyError::Connect(endpoint.into(), e.to_string());
        let tcp = tokio::net::TcpStream::connect(hostport)
            .await
            .map_err(|e| connect(&e))?;
        let _ = tcp.set_nodelay(true);
        if let Ok(v) = http::HeaderValue::from_str(hostport) {
            req.headers_mut().insert(http::header::HOST, v);
        }
        if https {
            let tls = self
                .tls
                .as_ref()
                .ok_or_else(|| connect(&"the console has no certificate to trust Walrus by"))?;
            let name = ServerName::try_from(host).map_err(|_| bad())?;
            let stream = tls.connect(name, tcp).await.map_err(|e| connect(&e))?;
            Self::exchange(TokioIo::new(stream), req)
                .await
                .map_err(|e| connect(&e))
        } else {
            Self::exchange(TokioIo::new(tcp), req)
                .await
                .map_err(|e| connect(&e))
        }
    }

    async fn exchange<T, B>(io: T, req: Request<B>) -> Result<Response<Incoming>, hyper::Error>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Walrus connection ended with an error");
            }
        });
        sender.send_request(req).await
    }
}

/// Reads a whole (small) Walrus answer.
pub async fn read_all(body: Incoming) -> Bytes {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}
