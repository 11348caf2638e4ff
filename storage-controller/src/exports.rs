//! Volume exports: how a node reaches the volumes attached to its guests.
//!
//! Each exported volume is served by its own `qemu-nbd` on a UNIX socket
//! under the SC's state directory (started and restarted by the SC). Nodes
//! reach it through one mutual-TLS listener ([`serve`]): a node proves who
//! it is with its certificate from the cluster CA, names the volume on the
//! first line, and gets the NBD stream only when the volume is exported to
//! that very node. Exports are durable: a restarted SC serves them again.
//! The SC follows the NBD stream: a change to a volume while a snapshot of
//! it is being taken waits until the snapshot has kept what it replaces.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    mtls::Tls,
    pki::Role,
    store::{Record, Store, Table},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, UnixStream},
    process::{Child, Command},
};
use tokio_stream::StreamExt;

use crate::volumes::{VolumeError, VolumeState, Volumes};

/// A volume exported to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    pub volume_id: String,
    pub node: String,
    pub created_ms: i64,
    /// Live migrations' targets that may reach it too, until the
    /// migration ends (one of the two is unexported).
    pub also: Vec<String>,
}

impl Record for ExportRecord {
    const TABLE: &'static str = "exports";
    /// 2: `also` added.
    const SCHEMA: u32 = 2;
    type Key = String;
    fn key(&self) -> String {
        self.volume_id.clone()
    }
    fn migrate(from: u32, value: serde_json::Value) -> Result<serde_json::Value, String> {
        common::store::add_field(from, value, &[("also", serde_json::json!([]))])
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("volume {0} is not available for export (state {1})")]
    NotAvailable(String, &'static str),
    #[error("volume {0} is exported to node {1}")]
    Elsewhere(String, String),
    #[error("volume {0} is not exported to any node")]
    NotExported(String),
    #[error("volume {0}: {1}")]
    Server(String, String),
    #[error(transparent)]
    Store(#[from] common::store::StoreError),
}

/// The exports of this SC.
#[derive(Debug, Clone)]
pub struct Exports {
    table: Table<ExportRecord>,
    volumes: Volumes,
    /// Where the `qemu-nbd` sockets live.
    dir: PathBuf,
    /// `host:port` of the TLS listener, as nodes are told.
    pub endpoint: String,
    servers: Arc<Mutex<HashMap<String, Child>>>,
}

impl Exports {
    /// The exports recorded in `store`, served from `dir`, reached at
    /// `endpoint`; starts the servers of every recorded export.
    pub fn open(
        store: &Store,
        volumes: Volumes,
        dir: &Path,
        endpoint: String,
    ) -> Result<Self, ExportError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ExportError::Server(String::new(), e.to_string()))?;
        let exports = Self {
            table: store.table()?,
            volumes,
            dir: dir.to_path_buf(),
            endpoint,
            servers: Arc::default(),
        };
        for r in exports.table.list()? {
            if let Err(e) = exports.ensure_server(&r.volume_id) {
                tracing::warn!(volume = %r.volume_id, error = %e, "export not served");
            }
        }
        Ok(exports)
    }

    fn socket(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.sock"))
    }

    /// Starts `qemu-nbd` for `volume_id` unless one runs.
    fn ensure_server(&self, volume_id: &str) -> Result<(), ExportError> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = servers.get_mut(volume_id) {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
            tracing::warn!(volume = %volume_id, "volume server exited; starting it again");
        }
        let path = self
            .volumes
            .backend()
            .local_path(volume_id)
            .ok_or_else(|| ExportError::Server(volume_id.into(), "no file to serve".into()))?;
        let socket = self.socket(volume_id);
        let _ = std::fs::remove_file(&socket);
        // A server an earlier SC started (and was killed before it could
        // stop it) goes first.
        let pid_file = self.dir.join(format!("{volume_id}.pid"));
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "qemu-nbd" && !servers.contains_key(volume_id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let child = Command::new("qemu-nbd")
            .arg(format!("--socket={}", socket.display()))
            .args([
                "--format=raw",
                "--persistent",
                "--shared=8",
                "--cache=writeback",
            ])
            .arg(&path)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| ExportError::Server(volume_id.into(), format!("qemu-nbd: {e}")))?;
        if let Some(pid) = child.id() {
            let _ = std::fs::write(&pid_file, pid.to_string());
        }
        servers.insert(volume_id.to_string(), child);
        Ok(())
    }

    /// Exports `volume_id` to node `node`; returns how the node reaches it.
    /// Exporting it again to the same node is fine.
    pub fn export(&self, volume_id: &str, node: &str) -> Result<String, ExportError> {
        let v = self
            .volumes
            .get(volume_id)?
            .ok_or_else(|| VolumeError::NotFound(volume_id.to_string()))?;
        if v.state != VolumeState::Available {
            return Err(ExportError::NotAvailable(volume_id.into(), v.state.name()));
        }
        match self.table.get(&volume_id.to_string())? {
            Some(r) if r.node != node => {
                return Err(ExportError::Elsewhere(volume_id.into(), r.node));
            }
            Some(_) => {}
            None => {
                self.table.put(&ExportRecord {
                    volume_id: volume_id.to_string(),
                    node: node.to_string(),
                    created_ms: common::time::unix_ms(),
                    also: Vec::new(),
                })?;
            }
        }
        self.ensure_server(volume_id)?;
        Ok(format!("nbd+tls://{}/{volume_id}", self.endpoint))
    }

    /// Exports `volume_id`, exported to another node, to `node` too: the
    /// target of its instance's live migration. Returns how `node`
    /// reaches it.
    pub fn export_also(&self, volume_id: &str, node: &str) -> Result<String, ExportError> {
        let Some(mut r) = self.table.get(&volume_id.to_string())? else {
            return Err(ExportError::NotExported(volume_id.into()));
        };
        if r.node != node && !r.also.iter().any(|n| n == node) {
            r.also.push(node.to_string());
            self.table.put(&r)?;
        }
        self.ensure_server(volume_id)?;
        Ok(format!("nbd+tls://{}/{volume_id}", self.endpoint))
    }

    /// Waits (up to 10 s) until the server of `volume_id` listens: a node
    /// told about the export right away must find it served.
    pub async fn served(&self, volume_id: &str) -> Result<(), ExportError> {
        let socket = self.socket(volume_id);
        for _ in 0..1000 {
            if UnixStream::connect(&socket).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(ExportError::Server(
            volume_id.into(),
            "qemu-nbd did not start listening".into(),
        ))
    }

    /// Ends the export of `volume_id` (to `node`, or any node when empty).
    /// A migration's node that also has it keeps it: the migration's
    /// target once its source is unexported, or the source when the
    /// target is.
    pub fn unexport(&self, volume_id: &str, node: &str) -> Result<(), ExportError> {
        match self.table.get(&volume_id.to_string())? {
            Some(mut r) if !node.is_empty() && r.also.iter().any(|n| n == node) => {
                r.also.retain(|n| n != node);
                self.table.put(&r)?;
                return Ok(());
            }
            Some(mut r) if !node.is_empty() && r.node == node && !r.also.is_empty() => {
                r.node = r.also.remove(0);
                self.table.put(&r)?;
                return Ok(());
            }
            Some(r) if node.is_empty() || r.node == node => {
                self.table.delete(&volume_id.to_string())?;
            }
            _ => return Ok(()),
        }
        if let Some(mut child) = self
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(volume_id)
        {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_file(self.socket(volume_id));
        let _ = std::fs::remove_file(self.dir.join(format!("{volume_id}.pid")));
        Ok(())
    }

    /// True when `volume_id` is exported (to any node).
    pub fn exported(&self, volume_id: &str) -> Result<bool, ExportError> {
        Ok(self.table.get(&volume_id.to_string())?.is_some())
    }

    /// True when `volume_id` is exported to `node` (or to a migration's
    /// target `node` too).
    fn exported_to(&self, volume_id: &str, node: &str) -> bool {
        self.table
            .get(&volume_id.to_string())
            .ok()
            .flatten()
            .is_some_and(|r| r.node == node || r.also.iter().any(|n| n == node))
    }

    /// Forever: restarts servers that exited.
    pub async fn supervise(self) {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            for r in self.table.list().unwrap_or_default() {
                if let Err(e) = self.ensure_server(&r.volume_id) {
                    tracing::warn!(volume = %r.volume_id, error = %e, "export not served");
                }
            }
        }
    }
}

/// Serves the exports to nodes on `listener`, forever.
pub async fn serve(exports: Exports, listener: TcpListener, tls: Arc<Tls>) {
    let mut incoming = common::mtls::incoming(listener, tls);
    while let Some(conn) = incoming.next().await {
        let Ok(conn) = conn else { continue };
        let exports = exports.clone();
        tokio::spawn(async move {
            if let Err(e) = connect(&exports, conn).await {
                tracing::warn!(error = %e, "export connection refused");
            }
        });
    }
}

/// One node connection: the volume line, the check, then the NBD stream.
async fn connect(exports: &Exports, conn: common::mtls::TlsConn) -> Result<(), String> {
    use tonic::transport::server::Connected;
    let peer = conn.connect_info();
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut limited = (&mut conn).take(128);
        limited.read_line(&mut line).await
    })
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return Err(format!("{}: no volume named", peer.identity));
    }
    let volume_id = line.trim().to_string();
    let allowed =
        peer.identity.role == Role::Nc && exports.exported_to(&volume_id, &peer.identity.name);
    if !allowed {
        let _ = conn
            .get_mut()
            .write_all(b"ERR the volume is not exported to you\n")
            .await;
        return Err(format!(
            "{} asked for {volume_id}, not exported to it",
            peer.identity
        ));
    }
    let nbd = match UnixStream::connect(exports.socket(&volume_id)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = conn
                .get_mut()
                .write_all(b"ERR the volume is not served now\n")
                .await;
            return Err(format!("{volume_id}: {e}"));
        }
    };
    conn.get_mut()
        .write_all(b"OK\n")
        .await
        .map_err(|e| e.to_string())?;
    // The NBD stream, watched: a change to the volume while a snapshot of
    // it is taken first keeps what it replaces (see `fleece`).
    let fleeces = exports.volumes.fleeces().clone();
    let before_change = move |offset: u64, len: u32| {
        let (f, v) = (fleeces.clone(), volume_id.clone());
        async move {
            if f.watched(&v) {
                let _ = tokio::task::spawn_blocking(move || {
                    f.before_change(&v, offset, u64::from(len))
                })
                .await;
            }
        }
    };
    let _ = common::nbd::watch_changes(conn, nbd, before_change).await;
    Ok(())
}

use tokio::io::AsyncReadExt;
