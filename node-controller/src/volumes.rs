//! The node's side of EBS volumes: a relay per attached volume, from a
//! UNIX socket QEMU opens as an NBD disk to the storage controller's
//! export, over mutual TLS with this node's certificate (the SC serves a
//! volume only to the node it exported it to).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use common::{mtls::Tls, pki::Role};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    task::JoinHandle,
};

/// Where an export is: the SC's `host:port` and the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub volume_id: String,
}

impl Connection {
    /// `nbd+tls://host:port/vol-...`, as the SC gives it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("nbd+tls://")
            .ok_or_else(|| format!("not an export: {s}"))?;
        let (addr, volume_id) = rest
            .split_once('/')
            .ok_or_else(|| format!("no volume in {s}"))?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("no port in {s}"))?;
        let port = port.parse().map_err(|_| format!("bad port in {s}"))?;
        if !common::ids::well_formed(volume_id, &["vol"]) {
            return Err(format!("bad volume id in {s}"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            volume_id: volume_id.to_string(),
        })
    }
}

/// The relays of this node's attached volumes.
#[derive(Debug)]
pub struct VolumeRelays {
    dir: PathBuf,
    tls: Arc<Tls>,
    relays: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// One stream to the export, past the SC's check.
async fn open(
    tls: &Tls,
    c: &Connection,
) -> Result<BufReader<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>, String> {
    let mut stream = common::mtls::dial(tls, &c.host, c.port, Role::Sc)
        .await
        .map_err(|e| format!("storage controller at {}:{}: {e}", c.host, c.port))?;
    stream
        .write_all(format!("{}\n", c.volume_id).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    match line.trim() {
        "OK" => Ok(stream),
        other => Err(format!(
            "the storage controller refused {}: {}",
            c.volume_id,
            other.trim_start_matches("ERR ")
        )),
    }
}

/// The runtime the relays run on, for as long as the process does.
fn relay_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("volume-relays")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("the volume relays' runtime: {e}"))
    })
}

impl VolumeRelays {
    /// Relays with sockets under `dir`, dialling as `tls` says.
    pub fn new(dir: &Path, tls: Arc<Tls>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tls,
            relays: Mutex::new(HashMap::new()),
        })
    }

    /// The socket QEMU opens for `volume_id`.
    pub fn socket(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.sock"))
    }

    /// Checks the export answers, then relays `connection` on its socket
    /// (again, if a relay ran); returns the socket.
    pub async fn start(&self, connection: &str) -> Result<PathBuf, String> {
        let c = Connection::parse(connection)?;
        drop(open(&self.tls, &c).await?);
        let socket = self.socket(&c.volume_id);
        self.stop(&c.volume_id);
        let _ = std::fs::remove_file(&socket);
        // Relays run on a runtime of their own: QEMU waits on a relay while
        // libvirt starts or hot-plugs a disk, and that can hold the node's
        // libvirt connection, on which the node's other tasks may block.
        let rt = relay_runtime();
        let listener = {
            let _in_relays = rt.enter();
            UnixListener::bind(&socket).map_err(|e| format!("{}: {e}", socket.display()))?
        };
        let tls = self.tls.clone();
        let volume_id = c.volume_id.clone();
        let task = rt.spawn(async move {
            // The relay's connections end with it (a detach stops it).
            let mut connections = tokio::task::JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((qemu, _)) = listener.accept().await else {
                    continue;
                };
                let tls = tls.clone();
                let c = c.clone();
                // The relay speaks NBD: it dials the export again when it
                // goes away (a storage controller restart) and QEMU's I/O
                // waits meanwhile.
                let dial = move || {
                    let (tls, c) = (tls.clone(), c.clone());
                    async move { open(&tls, &c).await }
                };
                let patience = std::time::Duration::from_secs(u64::from(
                    crate::hypervisor::VOLUME_RECONNECT_SECS,
                ));
                connections.spawn(crate::nbd::relay(qemu, dial, patience));
            }
        });
        self.relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(volume_id, task);
        Ok(socket)
    }

    /// Ends the relay of `volume_id`.
    pub fn stop(&self, volume_id: &str) {
        if let Some(task) = self
            .relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(volume_id)
        {
            task.abort();
            let _ = std::fs::remove_file(self.socket(volume_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_parsed_and_checked() {
        let c = Connection::parse("nbd+tls://10.0.0.5:41000/vol-0123456789abcdef0").expect("ok");
        assert_eq!(c.host, "10.0.0.5");
        assert_eq!(c.port, 41000);
        assert_eq!(c.volume_id, "vol-0123456789abcdef0");
        for bad in [
            "nbd://10.0.0.5:1/vol-0123456789abcdef0",
            "nbd+tls://10.0.0.5/vol-0123456789abcdef0",
            "nbd+tls://10.0.0.5:1/../etc/passwd",
            "nbd+tls://10.0.0.5:x/vol-0123456789abcdef0",
        ] {
            assert!(Connection::parse(bad).is_err(), "{bad}");
        }
    }
}
