//! Walrus's configuration file.

use std::path::PathBuf;

use serde::Deserialize;

/// `walrus --config walrus.toml`. Every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalrusConfig {
    /// Name of this Walrus. Default `walrus`.
    pub name: String,
    /// Internal gRPC address (NCs fetch images, the SC stores snapshots).
    /// Port 0 picks a free port, written to `<state_dir>/listen.addr`.
    /// Default `127.0.0.1:8777`.
    pub listen: String,
    /// Address the other tiers are told to use, when `listen` is not
    /// reachable as is. Default: the bound address.
    pub advertise: String,
    /// The S3 API's address for clients. Port 0 picks a free port, written
    /// to `<state_dir>/s3.addr`. Default `127.0.0.1:8779`.
    pub s3_listen: String,
    /// A second S3 address serving HTTPS (empty: none). Port 0 picks a free
    /// port, written to `<state_dir>/s3tls.addr`. Needs `tls_cert_file` and
    /// `tls_key_file`. Default: none.
    pub s3_tls_listen: String,
    /// PEM certificate chain (leaf first) for HTTPS. Default: none.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for HTTPS. Default: none.
    pub tls_key_file: Option<PathBuf>,
    /// Virtual-host style buckets are addressed as `<bucket>.<s3_domain>`.
    /// Default `localhost`.
    pub s3_domain: String,
    /// Region name reported for buckets created without a
    /// LocationConstraint. Default `gumtree`.
    pub region: String,
    /// The cloud controller's gRPC address. Default `127.0.0.1:8780`.
    pub clc: String,
    /// Where objects and the database live. Default `/var/lib/gumtree/walrus`.
    pub state_dir: PathBuf,
    /// File holding the cluster secret. Default `/var/lib/gumtree/cluster.secret`.
    pub cluster_secret_file: PathBuf,
    /// This Walrus's certificate for the internal connections:
    /// `internal_tls = { dir = "/var/lib/gumtree/pki" }` finds `ca.pem`,
    /// `walrus-<name>.pem` and `walrus-<name>.key` there.
    pub internal_tls: common::pki::TlsFiles,
    /// Seconds between reports to the CLC when nothing changes. Default 2.
    pub heartbeat_secs: u64,
    /// Log filter (`RUST_LOG` syntax; `RUST_LOG` wins). Default `info`.
    pub log_filter: String,
}

impl Default for WalrusConfig {
    fn default() -> Self {
        Self {
            name: "walrus".into(),
            listen: "127.0.0.1:8777".into(),
            advertise: String::new(),
            s3_listen: "127.0.0.1:8779".into(),
            s3_tls_listen: String::new(),
            tls_cert_file: None,
            tls_key_file: None,
            s3_domain: "localhost".into(),
            region: "gumtree".into(),
            clc: "127.0.0.1:8780".into(),
            state_dir: "/var/lib/gumtree/walrus".into(),
            cluster_secret_file: "/var/lib/gumtree/cluster.secret".into(),
            internal_tls: Default::default(),
            heartbeat_secs: 2,
            log_filter: "info".into(),
        }
    }
}

impl common::daemon::DaemonConfig for WalrusConfig {
    fn log_filter(&self) -> &str {
        &self.log_filter
    }
    fn start_at(&self) -> common::rpc::StartAt<'_> {
        common::rpc::StartAt {
            state_dir: &self.state_dir,
            secret_file: &self.cluster_secret_file,
            tls: &self.internal_tls,
            who: common::pki::Role::Walrus,
            name: self.name.as_str().into(),
            listen: &self.listen,
            advertise: &self.advertise,
        }
    }
}
