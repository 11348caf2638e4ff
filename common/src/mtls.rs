//! Mutual TLS on every internal gRPC connection.
//!
//! Both ends present a certificate from the cluster CA ([`crate::pki`]).
//! A server accepts only clients with such a certificate and hands the
//! client's [`Identity`] to its handlers as a [`Peer`] (the connection info
//! of every request); a client accepts only a server whose certificate
//! names the role it meant to call.
//!
//! The files are read again when they change (checked at each new
//! connection), so certificates and the CA bundle can be replaced while
//! the cloud runs: connections opened afterwards use the new ones.

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{rustls, TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;

use crate::pki::{Identity, Role, TlsFiles};

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error(
        "internal TLS: {path}: {reason} (make the cluster's certificates with `gumtree-admin pki`)"
    )]
    File { path: PathBuf, reason: String },
    #[error("internal TLS: {0}")]
    Config(String),
}

fn file_error(path: &std::path::Path, reason: impl ToString) -> MtlsError {
    MtlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

struct Loaded {
    stamps: Vec<Option<SystemTime>>,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

/// This component's certificate, key and trusted CAs, reloaded on change.
pub struct Tls {
    identity: Identity,
    paths: [PathBuf; 3],
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.identity)
            .field("paths", &self.paths)
            .finish()
    }
}

fn stamps(paths: &[PathBuf; 3]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn build(paths: &[PathBuf; 3]) -> Result<(Identity, Loaded), MtlsError> {
    let [ca, cert, key] = paths;
    let stamps = stamps(paths);
    // AES-128-GCM first: the cheapest of TLS 1.3's suites with AES-NI, and
    // volumes' data goes through it (the other suites stay allowed).
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(ca, e))?;
    if cas.is_empty() {
        return Err(file_error(ca, "no CA certificate in the file"));
    }
    for c in cas {
        roots.add(c).map_err(|e| file_error(ca, e))?;
    }
    let roots = Arc::new(roots);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(cert, e))?;
    let Some(leaf) = chain.first() else {
        return Err(file_error(cert, "no certificate in the file"));
    };
    let identity = Identity::of_certificate(leaf).map_err(|e| file_error(cert, e))?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let config = |e: rustls::Error| MtlsError::Config(e.to_string());
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| MtlsError::Config(e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), private.clone_key())
        .map_err(config)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private)
        .map_err(config)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok((
        identity,
        Loaded {
            stamps,
            server: Arc::new(server),
            client: Arc::new(client),
        },
    ))
}

impl Tls {
    /// Loads the files of component `who` and checks the certificate names it.
    pub fn load(files: &TlsFiles, who: &Identity) -> Result<Arc<Self>, MtlsError> {
        let paths = [files.ca(), files.cert(who), files.key(who)];
        let (identity, loaded) = build(&paths)?;
        if &identity != who {
            return Err(file_error(
                &paths[1],
                format!("the certificate names {identity}, but this is {who}"),
            ));
        }
        Ok(Arc::new(Self {
            identity,
            paths,
            loaded: Mutex::new(loaded),
        }))
    }

    /// The CA, certificate and key files it was loaded from (a helper
    /// process of the same component loads them too, with `load_files`).
    pub fn files(&self) -> &[PathBuf; 3] {
        &self.paths
    }

    /// Loads the CA, certificate and key `files`, whoever the certificate
    /// names.
    pub fn load_files(files: [PathBuf; 3]) -> Result<Arc<Self>, MtlsError> {
        let (identity, loaded) = build(&files)?;
        Ok(Arc::new(Self {
            identity,
            paths: files,
            loaded: Mutex::new(loaded),
        }))
    }

    /// Who this component is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    fn current(&self) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if stamps(&self.paths) != loaded.stamps {
            match build(&self.paths) {
                Ok((identity, fresh)) if identity == self.identity => {
                    tracing::info!(identity = %identity, "internal TLS files changed: new connections use them");
                    *loaded = fresh;
                }
                Ok((identity, _)) => {
                    tracing::error!(now = %identity, was = %self.identity, "the new certificate names another component: keeping the old one");
                    loaded.stamps = stamps(&self.paths);
                }
                // Half-written files are retried on the next connection.
                Err(e) => {
                    tracing::warn!(error = %e, "internal TLS files changed but cannot be used yet")
                }
            }
        }
        (loaded.server.clone(), loaded.client.clone())
    }
}

/// The authenticated other end of an internal connection, in each
/// request's extensions.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Who its certificate names.
    pub identity: Identity,
    /// Where it connected from.
    pub addr: Option<SocketAddr>,
}

/// An accepted, authenticated internal connection.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
}

impl Connected for TlsConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections `listener` accepts, after a successful mutual TLS
/// handshake; peers without a certificate from the cluster CA never get
/// past it (and are logged).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (server, _) = tls.current();
            let tx = tx.clone();
            tokio::spawn(async move {
                let accepted =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(server).accept(tcp))
                        .await;
                let stream = match accepted {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %addr, error = %e, "refused internal connection: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(peer = %addr, "refused internal connection: no TLS handshake in time");
                        return;
                    }
                };
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|leaf| Identity::of_certificate(leaf));
                let identity = match identity {
                    Some(Ok(identity)) => identity,
                    Some(Err(e)) => {
                        tracing::warn!(peer = %addr, error = %e, "refused internal connection");
                        return;
                    }
                    None => {
                        tracing::warn!(peer = %addr, "refused internal connection: no client certificate");
                        return;
                    }
                };
                let peer = Peer {
                    identity,
                    addr: Some(addr),
                };
                let _ = tx.send(Ok(TlsConn { stream, peer })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Dials servers of one role over mutual TLS (a tower connector for tonic).
#[derive(Clone, Debug)]
pub struct Connector {
    tls: Arc<Tls>,
    role: Role,
}

impl Connector {
    /// Connects to servers that must prove they are `role`.
    pub fn new(tls: Arc<Tls>, role: Role) -> Self {
        Self { tls, role }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (_, client) = self.tls.current();
        let role = self.role;
        Box::pin(async move {
            let host = uri.host().ok_or("the endpoint has no host")?;
            let port = uri.port_u16().unwrap_or(80);
            let stream = dial_with(client, host, port, role).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

async fn dial_with(
    client: Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
    role: Role,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BoxError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(role.server_name())?;
    Ok(TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with the {role} at {host}:{port} failed: {e}"))?)
}

/// A raw mutual-TLS stream to the `role` at `host:port` (for byte streams
/// that are not gRPC, such as volume exports).
pub async fn dial(
    tls: &Tls,
    host: &str,
    port: u16,
    role: Role,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BoxError> {
    let (_, client) = tls.current();
    dial_with(client, host, port, role).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    #[test]
    fn a_certificate_for_another_component_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        pki::init_ca(dir.path(), false).expect("ca");
        let nc = Identity {
            role: Role::Nc,
            name: "n1".into(),
        };
        let files = pki::issue_in(dir.path(), &nc).expect("issue");
        assert_eq!(Tls::load(&files, &nc).expect("load").identity(), &nc);
        let other = Identity {
            role: Role::Cc,
            name: "n1".into(),
        };
        let wrong = TlsFiles {
            cert: Some(files.cert(&nc)),
            key: Some(files.key(&nc)),
            ..files.clone()
        };
        let err = Tls::load(&wrong, &other).expect_err("a node's certificate for a cluster");
        assert!(err.to_string().contains("names nc/n1"), "{err}");
        let missing = Tls::load(&files, &other).expect_err("no files");
        assert!(missing.to_string().contains("cc-n1.pem"), "{missing}");
    }
}
