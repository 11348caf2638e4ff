//! The node's side of EBS volumes: a relay per attached volume, from a
//! UNIX socket QEMU opens as an NBD disk to the storage controller's
//! export, over mutual TLS with this node's certificate (the SC serves a
//! volume only to the node it exported it to).
//!
//! Each relay is a process of its own (`gumtree-volume-relay`), so that a
//! restart of the node controller leaves QEMU's connections alone: the
//! node controller finds its relays again when it comes back. A relay ends
//! when the node controller stops it (detach, termination), when its socket
//! is removed or taken by another, or when no node controller runs and no
//! QEMU has used it for a while (its guest is gone).

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{mtls::Tls, pki::Role};
use nix::{sys::signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
};

/// How long a relay whose node controller is gone waits for QEMU to come
/// back before it ends.
const ORPHAN_IDLE: Duration = Duration::from_secs(30);

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

/// The relays of this node's attached volumes: their processes, sockets
/// and pid files under one directory.
#[derive(Debug)]
pub struct VolumeRelays {
    dir: PathBuf,
    tls: Arc<Tls>,
    program: PathBuf,
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
    // Replies carry up to megabytes: read in large pieces.
    let mut stream = BufReader::with_capacity(256 << 10, stream);
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

/// Whether process `pid` is alive.
fn alive(pid: i32) -> bool {
    pid > 0 && signal::kill(Pid::from_raw(pid), None).is_ok()
}

/// Serves `connection` on `socket` until the relay has no reason to run
/// on (see the module's doc); `node_pid` names the file holding the node
/// controller's pid. This is the relay process's work.
pub async fn serve(
    socket: &Path,
    c: Connection,
    tls: Arc<Tls>,
    node_pid: &Path,
) -> Result<(), String> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let ours = std::fs::metadata(socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?
        .ino();
    let mut connections = tokio::task::JoinSet::new();
    let mut idle_since = Some(Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((qemu, _)) = accepted else { continue };
                let (tls, c) = (tls.clone(), c.clone());
                // The relay speaks NBD: it dials the export again when it
                // goes away (a storage controller restart) and QEMU's I/O
                // waits meanwhile.
                let dial = move || {
                    let (tls, c) = (tls.clone(), c.clone());
                    async move { open(&tls, &c).await }
                };
                let patience =
                    Duration::from_secs(u64::from(crate::hypervisor::VOLUME_RECONNECT_SECS));
                connections.spawn(common::nbd::relay(qemu, dial, patience));
                idle_since = None;
            }
            _ = tick.tick() => {
                while connections.try_join_next().is_some() {}
                if std::fs::metadata(socket).map(|m| m.ino()).ok() != Some(ours) {
                    tracing::info!(volume = %c.volume_id, "the relay's socket is gone; relay ends");
                    return Ok(());
                }
                if !connections.is_empty() {
                    idle_since = None;
                    continue;
                }
                let since = *idle_since.get_or_insert_with(Instant::now);
                let node = std::fs::read_to_string(node_pid)
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok());
                if since.elapsed() >= ORPHAN_IDLE && !node.is_some_and(alive) {
                    tracing::info!(volume = %c.volume_id, "no node controller and no guest; relay ends");
                    return Ok(());
                }
            }
        }
    }
}

impl VolumeRelays {
    /// Relays with sockets under `dir`, dialling as `tls` says, run as
    /// `program`. Records this process as their node controller.
    pub fn new(dir: &Path, tls: Arc<Tls>, program: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let relays = Self {
            dir: dir.to_path_buf(),
            tls,
            program: program.to_path_buf(),
        };
        std::fs::write(relays.node_pid(), std::process::id().to_string())?;
        Ok(relays)
    }

    /// The relay program beside this one's executable.
    pub fn program_beside_this() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("gumtree-volume-relay")))
            .unwrap_or_else(|| PathBuf::from("gumtree-volume-relay"))
    }

    fn node_pid(&self) -> PathBuf {
        self.dir.join("node.pid")
    }

    /// The socket QEMU opens for `volume_id`.
    pub fn socket(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.sock"))
    }

    fn pid_file(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.pid"))
    }

    fn log_file(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.log"))
    }

    /// The relay of `volume_id` that runs, as (pid, connection).
    fn running(&self, volume_id: &str) -> Option<(i32, String)> {
        let text = std::fs::read_to_string(self.pid_file(volume_id)).ok()?;
        let mut lines = text.lines();
        let pid: i32 = lines.next()?.trim().parse().ok()?;
        let connection = lines.next()?.trim().to_string();
        // The pid is a relay of this volume's (not a process that got the
        // number since).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let socket = self.socket(volume_id);
        let ours = String::from_utf8_lossy(&cmdline)
            .split('\0')
            .any(|a| Path::new(a) == socket);
        (ours && alive(pid)).then_some((pid, connection))
    }

    /// Relays `connection` on its socket, with the relay that runs already
    /// when there is one for it (after a node controller restart), else a
    /// new one once the export answers; returns the socket.
    pub async fn start(&self, connection: &str) -> Result<PathBuf, String> {
        let c = Connection::parse(connection)?;
        let socket = self.socket(&c.volume_id);
        if let Some((_, running)) = self.running(&c.volume_id) {
            if running == connection && socket.exists() {
                return Ok(socket);
            }
        }
        drop(open(&self.tls, &c).await?);
        self.stop(&c.volume_id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(&c.volume_id))
            .map_err(|e| format!("the relay's log: {e}"))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let [ca, cert, key] = self.tls.files();
        let mut child = tokio::process::Command::new(&self.program)
            .arg("--socket")
            .arg(&socket)
            .args(["--connection", connection])
            .arg("--ca")
            .arg(ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--node-pid")
            .arg(self.node_pid())
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: what stops the node controller's
            // group (a terminal's ^C) leaves the guests' disks alone.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.program.display()))?;
        let pid = child.id().map_or(0, |p| p as i32);
        std::fs::write(
            self.pid_file(&c.volume_id),
            format!("{pid}\n{connection}\n"),
        )
        .map_err(|e| format!("the relay's pid file: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the relay of {} ended at once ({status}); see {}",
                    c.volume_id,
                    self.log_file(&c.volume_id).display()
                ));
            }
            if Instant::now() > deadline {
                self.stop(&c.volume_id);
                return Err(format!("the relay of {} did not start", c.volume_id));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Dropped, the child is reaped by tokio when it ends (it is not
        // killed: it outlives this process by design).
        drop(child);
        Ok(socket)
    }

    /// Ends the relay of `volume_id` (and with it QEMU's connection).
    pub fn stop(&self, volume_id: &str) {
        if let Some((pid, _)) = self.running(volume_id) {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGTERM);
        }
        let _ = std::fs::remove_file(self.pid_file(volume_id));
        let _ = std::fs::remove_file(self.socket(volume_id));
    }

    /// Ends every relay but those of `keep` (a node controller that starts
    /// finds relays of volumes detached while it was away).
    pub fn keep_only(&self, keep: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(volume_id) = name.strip_suffix(".pid") {
                if volume_id.starts_with("vol-") && !keep.contains(volume_id) {
                    tracing::info!(volume = %volume_id, "relay of a volume no instance holds ended");
                    self.stop(volume_id);
                }
            }
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
