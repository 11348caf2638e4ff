//! gRPC plumbing shared by the daemons: listening, connecting, the address file.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint, Server};

use crate::{
    auth::{ClusterSecret, GuardLayer, SignCalls},
    mtls::{Connector, Tls},
    pki::{Identity, Role, TlsFiles},
};

/// Name of the file a daemon writes into its state directory once it listens.
pub const ADDR_FILE: &str = "listen.addr";

/// Binds `listen` (`host:port`; port 0 picks a free one).
pub async fn bind(listen: &str) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Records the bound address in `state_dir/listen.addr` (atomically), so
/// tools and tests that asked for port 0 can find the daemon.
pub fn write_addr_file(state_dir: &Path, addr: SocketAddr) -> io::Result<PathBuf> {
    write_named_addr_file(state_dir, ADDR_FILE, addr)
}

/// Records another bound address (a client endpoint) in `state_dir/name`,
/// atomically.
pub fn write_named_addr_file(
    state_dir: &Path,
    name: &str,
    addr: SocketAddr,
) -> io::Result<PathBuf> {
    let path = state_dir.join(name);
    let tmp = state_dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// `http://host:port` for an endpoint given as `host:port` or a URL (the
/// connector does the TLS: tonic sees plain HTTP/2).
pub fn endpoint_url(endpoint: &str) -> String {
    match endpoint.split_once("://") {
        Some((_, rest)) => format!("http://{rest}"),
        None => format!("http://{endpoint}"),
    }
}

fn endpoint(endpoint: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(endpoint_url(endpoint))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(4))
        .keep_alive_while_idle(true))
}

/// A channel to another tier: mutual TLS, every call signed.
pub type Client = SignCalls<Channel>;

/// What a component proves itself with: its certificate (and the CAs it
/// trusts) and the cluster secret.
#[derive(Clone, Debug)]
pub struct Trust {
    /// The cluster secret, the second factor of every call.
    pub secret: ClusterSecret,
    /// Certificates, reloaded when they change.
    pub tls: Arc<Tls>,
    /// Channels already made, by endpoint and role: one connection per
    /// peer, not a handshake per call.
    channels: Arc<std::sync::Mutex<std::collections::HashMap<(String, Role), Channel>>>,
}

impl Trust {
    /// Loads the TLS files of `who` and the secret.
    pub fn load(secret_file: &Path, files: &TlsFiles, who: &Identity) -> Result<Self, StartError> {
        Ok(Self {
            secret: ClusterSecret::from_file(secret_file)?,
            tls: Tls::load(files, who)?,
            channels: Arc::default(),
        })
    }

    /// This component's name (as its certificate names it).
    pub fn name(&self) -> &str {
        &self.tls.identity().name
    }

    /// A lazily connecting, signing channel to the `role` at `endpoint`,
    /// with keep-alives so a dead peer is noticed within seconds.
    pub fn channel(&self, endpoint_: &str, role: Role) -> Result<Client, tonic::transport::Error> {
        let key = (endpoint_.to_string(), role);
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(&key) {
            return Ok(self.sign(channel.clone()));
        }
        let channel = endpoint(endpoint_)?
            .connect_with_connector_lazy(Connector::new(self.tls.clone(), role));
        channels.insert(key, channel.clone());
        Ok(self.sign(channel))
    }

    /// Connects to the `role` at `endpoint` now.
    pub async fn connect(
        &self,
        endpoint_: &str,
        role: Role,
    ) -> Result<Client, tonic::transport::Error> {
        let channel = endpoint(endpoint_)?
            .connect_with_connector(Connector::new(self.tls.clone(), role))
            .await?;
        Ok(self.sign(channel))
    }

    /// Signs calls on `channel`.
    pub fn sign(&self, channel: Channel) -> Client {
        SignCalls::new(channel, self.secret.clone(), self.name())
    }

    /// A server that accepts only this cloud's components, each calling
    /// only what its role may ([`crate::auth::allowed`]).
    pub fn server(
        &self,
    ) -> Server<tower::layer::util::Stack<GuardLayer, tower::layer::util::Identity>> {
        server().layer(GuardLayer::new(self.secret.clone()))
    }

    /// The mutual-TLS connections `listener` accepts.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<crate::mtls::TlsConn>> {
        crate::mtls::incoming(listener, self.tls.clone())
    }
}

/// Whether a failed call never got an answer from its server (it could not
/// be reached, hung until keep-alive gave up, or the connection broke): a
/// status made here from a transport error carries that error as its
/// source, while one the server sent does not.
pub fn not_answered(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
        || matches!(
            status.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        )
}

/// A server builder with the keep-alive settings every tier uses.
fn server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(2)))
        .http2_keepalive_timeout(Some(Duration::from_secs(4)))
}

/// Runs a server until SIGTERM or SIGINT. `serve` gets the future that
/// starts graceful shutdown. Report streams never end by themselves, so after
/// the signal the server gets two seconds to drain and is then dropped.
pub async fn serve_until_signal<F, Fut, E>(serve: F) -> Result<(), E>
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let stop = Box::pin(async move {
        let _ = stop_rx.wait_for(|stopped| *stopped).await;
    });
    let server = serve(stop);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        _ = crate::shutdown::signal_received() => {
            let _ = stop_tx.send(true);
        }
    }
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Secret(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Tls(#[from] crate::mtls::MtlsError),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("invalid advertise address {0:?}: use host:port")]
    Advertise(String),
}

/// What every daemon sets up before serving.
#[derive(Debug)]
pub struct Started {
    /// The component's certificate and the cloud's shared secret.
    pub trust: Trust,
    /// The bound gRPC listener.
    pub listener: TcpListener,
    /// Where it is bound.
    pub addr: SocketAddr,
    /// Where other tiers reach this daemon.
    pub advertise: String,
}

/// Where a daemon starts from.
#[derive(Clone, Debug)]
pub struct StartAt<'a> {
    /// Its state directory (created if missing).
    pub state_dir: &'a Path,
    /// The cluster secret's file.
    pub secret_file: &'a Path,
    /// Its internal TLS files.
    pub tls: &'a TlsFiles,
    /// What it is: its certificate must name it.
    pub who: Role,
    /// Its name (configured, or worked out).
    pub name: std::borrow::Cow<'a, str>,
    /// `host:port` to listen on.
    pub listen: &'a str,
    /// What it tells others to call (if not empty); otherwise the bound address.
    pub advertise: &'a str,
}

/// Creates the state directory, reads the secret and the certificates,
/// binds `listen` and writes the address file.
pub async fn start(at: StartAt<'_>) -> Result<Started, StartError> {
    let StartAt {
        state_dir,
        secret_file,
        tls,
        who,
        name,
        listen,
        advertise,
    } = at;
    std::fs::create_dir_all(state_dir).map_err(|source| StartError::StateDir {
        path: state_dir.to_path_buf(),
        source,
    })?;
    let trust = Trust::load(
        secret_file,
        tls,
        &Identity {
            role: who,
            name: name.to_string(),
        },
    )?;
    let (listener, addr) = bind(listen).await?;
    write_addr_file(state_dir, addr)?;
    let advertise = if advertise.is_empty() {
        addr.to_string()
    } else if advertise
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    {
        advertise.to_string()
    } else {
        return Err(StartError::Advertise(advertise.to_string()));
    };
    Ok(Started {
        trust,
        listener,
        addr,
        advertise,
    })
}
