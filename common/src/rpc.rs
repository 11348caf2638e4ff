//! gRPC plumbing shared by the daemons: listening, connecting, the address file.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint, Server};

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

/// `http://host:port` for an endpoint given as `host:port` or a URL.
pub fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// A lazily connecting channel to `endpoint`, with keep-alives so a dead
/// peer is noticed within seconds.
pub fn channel(endpoint: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(endpoint_url(endpoint))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(4))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Connects to `endpoint` now.
pub async fn connect(endpoint: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(endpoint_url(endpoint))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(4))
        .keep_alive_while_idle(true)
        .connect()
        .await
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
pub fn server() -> Server {
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
    Io(#[from] io::Error),
    #[error("invalid advertise address {0:?}: use host:port")]
    Advertise(String),
}

/// What every daemon sets up before serving.
#[derive(Debug)]
pub struct Started {
    /// The cloud's shared secret.
    pub secret: crate::auth::ClusterSecret,
    /// The bound gRPC listener.
    pub listener: TcpListener,
    /// Where it is bound.
    pub addr: SocketAddr,
    /// Where other tiers reach this daemon.
    pub advertise: String,
}

/// Creates the state directory, reads the secret, binds `listen` and writes
/// the address file. `advertise` (if not empty) is what this daemon tells
/// others to call; otherwise the bound address.
pub async fn start(
    state_dir: &Path,
    secret_file: &Path,
    listen: &str,
    advertise: &str,
) -> Result<Started, StartError> {
    std::fs::create_dir_all(state_dir).map_err(|source| StartError::StateDir {
        path: state_dir.to_path_buf(),
        source,
    })?;
    let secret = crate::auth::ClusterSecret::from_file(secret_file)?;
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
        secret,
        listener,
        addr,
        advertise,
    })
}
