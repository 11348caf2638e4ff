//! The cloud controller's configuration file.

use std::path::PathBuf;

use serde::Deserialize;

/// `cloud-controller --config clc.toml`. Every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Name of this cloud controller in service listings. Default `clc`.
    pub name: String,
    /// gRPC address the other tiers and the admin CLI use. Port 0 picks a
    /// free port, written to `<state_dir>/listen.addr`. Default `127.0.0.1:8780`.
    pub listen: String,
    /// Where the database lives. Default `/var/lib/gumtree/clc`.
    pub state_dir: PathBuf,
    /// File holding the cluster secret shared by all tiers (at least 16
    /// characters). Default `/var/lib/gumtree/cluster.secret`.
    pub cluster_secret_file: PathBuf,
    /// This CLC's certificate for the internal connections:
    /// `internal_tls = { dir = "/var/lib/gumtree/pki" }` finds `ca.pem`,
    /// `clc-<name>.pem` and `clc-<name>.key` there (`cert`, `key` and `ca`
    /// name other files).
    pub internal_tls: common::pki::TlsFiles,
    /// What to do with a guest a node has that the cloud has no record of
    /// (shown to the administrator in any case): `stop` powers it off
    /// after 30 s (its disks stay), `report` leaves it. Default `stop`.
    pub unknown_guests: crate::grpc::UnknownGuestPolicy,
    /// Seconds a guest may be unknown before the policy applies (a record
    /// and its guest can cross in flight). Default 30.
    pub unknown_guest_grace_secs: u64,
    /// Seconds without a report before a service or node shows NOTREADY. Default 6.
    pub report_timeout_secs: u64,
    /// System account created with an access key on first start. Default `eucalyptus`.
    pub admin_account: String,
    /// The EC2 Query API's address for clients. Port 0 picks a free port,
    /// written to `<state_dir>/ec2.addr`. Default `127.0.0.1:8773`.
    pub ec2_listen: String,
    /// A second EC2 address serving HTTPS (empty: none), written to
    /// `<state_dir>/ec2tls.addr`. Needs `tls_cert_file` and `tls_key_file`.
    /// Default: none.
    pub ec2_tls_listen: String,
    /// The web console's HTTPS address (empty: no console), written to
    /// `<state_dir>/console.addr`. Needs `tls_cert_file` and `tls_key_file`;
    /// the console also trusts exactly the certificates in `tls_cert_file`
    /// when it reaches Walrus over HTTPS. Default: none.
    pub console_listen: String,
    /// Minutes a console session lives unused. Default 30.
    pub console_idle_minutes: u64,
    /// PEM certificate chain (leaf first) for HTTPS. Default: none.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for HTTPS. Default: none.
    pub tls_key_file: Option<PathBuf>,
    /// The region name clients use (DescribeRegions). Default `gumtree`.
    pub region: String,
    /// The public addresses handed out as elastic IPs: single addresses,
    /// ranges (`192.0.2.10-192.0.2.20`) or CIDR blocks (/20 or smaller).
    /// Default: none.
    pub public_ips: Vec<String>,
    /// Every new instance gets a public address from `public_ips` (while
    /// free ones last), returned to the pool when the instance goes or
    /// gets an elastic IP: Eucalyptus' default. Default true.
    pub assign_public_ips: bool,
    /// The metadata service refuses reads without an IMDSv2 session token.
    /// Default false (IMDSv1 and IMDSv2 both work).
    pub metadata_tokens_required: bool,
    /// MiB of memory the metric store (`<state_dir>/metrics`) may cache;
    /// what it keeps on disk is bounded by CloudWatch's retention
    /// schedule. Default 64.
    pub metrics_cache_mib: u64,
    /// Log filter (`RUST_LOG` syntax; `RUST_LOG` wins). Default `info`.
    pub log_filter: String,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            name: "clc".into(),
            listen: "127.0.0.1:8780".into(),
            state_dir: "/var/lib/gumtree/clc".into(),
            cluster_secret_file: "/var/lib/gumtree/cluster.secret".into(),
            internal_tls: Default::default(),
            unknown_guests: crate::grpc::UnknownGuestPolicy::Stop,
            unknown_guest_grace_secs: 30,
            report_timeout_secs: 6,
            admin_account: "eucalyptus".into(),
            ec2_listen: "127.0.0.1:8773".into(),
            ec2_tls_listen: String::new(),
            console_listen: String::new(),
            console_idle_minutes: 30,
            tls_cert_file: None,
            tls_key_file: None,
            region: "gumtree".into(),
            public_ips: Vec::new(),
            assign_public_ips: true,
            metadata_tokens_required: false,
            metrics_cache_mib: 64,
            log_filter: "info".into(),
        }
    }
}

impl common::daemon::DaemonConfig for CloudConfig {
    fn log_filter(&self) -> &str {
        &self.log_filter
    }
    fn start_at(&self) -> common::rpc::StartAt<'_> {
        common::rpc::StartAt {
            state_dir: &self.state_dir,
            secret_file: &self.cluster_secret_file,
            tls: &self.internal_tls,
            who: common::pki::Role::Clc,
            name: self.name.as_str().into(),
            listen: &self.listen,
            advertise: "",
        }
    }
}
