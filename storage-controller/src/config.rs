//! The storage controller's configuration file.

use std::path::PathBuf;

use serde::Deserialize;

/// `storage-controller --config sc.toml`. Every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Name of this storage controller. Default `sc-1`.
    pub name: String,
    /// Availability zone (partition) whose volumes it serves. Default `zone-1`.
    pub partition: String,
    /// gRPC address the CLC uses. Port 0 picks a free port, written to
    /// `<state_dir>/listen.addr`. Default `127.0.0.1:8776`.
    pub listen: String,
    /// Address the CLC is told to use, when `listen` is not reachable as is.
    /// Default: the bound address.
    pub advertise: String,
    /// Where nodes reach the volumes they attach (mutual TLS). Default: the
    /// host of `listen` (or of `advertise`), a free port.
    pub export_listen: String,
    /// The cloud controller's gRPC address. Default `127.0.0.1:8780`.
    pub clc: String,
    /// Where volumes and the database live. Default `/var/lib/gumtree/sc`.
    pub state_dir: PathBuf,
    /// File holding the cluster secret. Default `/var/lib/gumtree/cluster.secret`.
    pub cluster_secret_file: PathBuf,
    /// This SC's certificate for the internal connections:
    /// `internal_tls = { dir = "/var/lib/gumtree/pki" }` finds `ca.pem`,
    /// `sc-<name>.pem` and `sc-<name>.key` there.
    pub internal_tls: common::pki::TlsFiles,
    /// GiB its volumes may take in all (their full sizes, though their
    /// files are sparse). Default 0: the size of the file system that holds
    /// `state_dir`.
    pub capacity_gib: u64,
    /// Seconds between reports to the CLC when nothing changes. Default 2.
    pub heartbeat_secs: u64,
    /// Log filter (`RUST_LOG` syntax; `RUST_LOG` wins). Default `info`.
    pub log_filter: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            name: "sc-1".into(),
            partition: "zone-1".into(),
            listen: "127.0.0.1:8776".into(),
            advertise: String::new(),
            export_listen: String::new(),
            clc: "127.0.0.1:8780".into(),
            state_dir: "/var/lib/gumtree/sc".into(),
            cluster_secret_file: "/var/lib/gumtree/cluster.secret".into(),
            internal_tls: Default::default(),
            capacity_gib: 0,
            heartbeat_secs: 2,
            log_filter: "info".into(),
        }
    }
}

impl common::daemon::DaemonConfig for StorageConfig {
    fn log_filter(&self) -> &str {
        &self.log_filter
    }
    fn start_at(&self) -> common::rpc::StartAt<'_> {
        common::rpc::StartAt {
            state_dir: &self.state_dir,
            secret_file: &self.cluster_secret_file,
            tls: &self.internal_tls,
            who: common::pki::Role::Sc,
            name: self.name.as_str().into(),
            listen: &self.listen,
            advertise: &self.advertise,
        }
    }
}
