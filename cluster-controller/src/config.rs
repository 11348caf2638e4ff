//! The cluster controller's configuration file.

use std::path::PathBuf;

use serde::Deserialize;

/// How the CC picks nodes for new instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PlacementPolicy {
    /// First node (in name order) with room.
    Greedy,
    /// Next node after the last one used, in turn.
    RoundRobin,
    /// Pack onto the busiest nodes that fit, so idle ones can be powered down.
    PowerSave,
    /// First node with room, nodes ordered as they joined.
    FirstFit,
    /// Like ROUNDROBIN, skipping nodes above a load or usage mark.
    Threshold,
}

impl PlacementPolicy {
    /// The name shown in admin views.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Greedy => "GREEDY",
            Self::RoundRobin => "ROUNDROBIN",
            Self::PowerSave => "POWERSAVE",
            Self::FirstFit => "FIRSTFIT",
            Self::Threshold => "THRESHOLD",
        }
    }
}

/// `cluster-controller --config cc.toml`. Every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Name of this cluster. Default `cluster-1`.
    pub name: String,
    /// Availability zone (Eucalyptus partition) it serves. Default `zone-1`.
    pub zone: String,
    /// gRPC address nodes and the CLC use. Port 0 picks a free port, written
    /// to `<state_dir>/listen.addr`. Default `127.0.0.1:8774`.
    pub listen: String,
    /// Address the CLC and nodes are told to use, when `listen` is not
    /// reachable as is (e.g. `0.0.0.0`). Default: the bound address.
    pub advertise: String,
    /// The cloud controller's gRPC address. Default `127.0.0.1:8780`.
    pub clc: String,
    /// Where the database lives. Default `/var/lib/gumtree/cc`.
    pub state_dir: PathBuf,
    /// File holding the cluster secret. Default `/var/lib/gumtree/cluster.secret`.
    pub cluster_secret_file: PathBuf,
    /// This CC's certificate for the internal connections:
    /// `internal_tls = { dir = "/var/lib/gumtree/pki" }` finds `ca.pem`,
    /// `cc-<name>.pem` and `cc-<name>.key` there.
    pub internal_tls: common::pki::TlsFiles,
    /// GREEDY, ROUNDROBIN, POWERSAVE, FIRSTFIT or THRESHOLD. Default `ROUNDROBIN`.
    pub placement_policy: PlacementPolicy,
    /// Virtual cores offered per core of a node. Default 1.0 (no overcommit).
    pub cpu_overcommit: f64,
    /// Memory offered per MiB of a node. Default 1.0 (no overcommit).
    pub memory_overcommit: f64,
    /// THRESHOLD policy: nodes whose core or memory usage is above this
    /// share are skipped. Default 0.8.
    pub placement_threshold: f64,
    /// Automatic rebalancing: a node whose guests keep more than
    /// `rebalance_threshold` percent of its cores busy for
    /// `rebalance_window_secs` has an instance moved live off it (the CLC
    /// decides, from the nodes' load). Default false.
    pub rebalance: bool,
    /// Percent of a node's cores. Default 80.
    pub rebalance_threshold: f64,
    /// Default 60.
    pub rebalance_window_secs: u64,
    /// A moved instance is not moved again for this long. Default 600.
    pub rebalance_cooldown_secs: u64,
    /// Seconds between reports to the CLC when nothing changes. Default 2.
    pub heartbeat_secs: u64,
    /// Seconds without a report before a node shows NOTREADY. Default 6.
    pub node_timeout_secs: u64,
    /// `MANAGED-NOVLAN` (a private address per instance from
    /// `private_subnet`) or `NONE`. Default `MANAGED-NOVLAN`.
    pub network_mode: crate::network::NetworkMode,
    /// The cluster's private network, CIDR, /16 to /29: its first address
    /// is the nodes' bridge, the rest but the broadcast go to instances.
    /// Default `172.31.0.0/20`.
    pub private_subnet: String,
    /// Name of the bridge nodes make for the private network (at most 15
    /// characters). Default `gtbr0`.
    pub bridge: String,
    /// VXLAN network id of the tunnels that join the nodes' bridges across
    /// hosts (UDP 4789 between the nodes' `tunnel_address`es); 0: no
    /// tunnels. Default 1.
    pub tunnel_id: u32,
    /// Log filter (`RUST_LOG` syntax; `RUST_LOG` wins). Default `info`.
    pub log_filter: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: "cluster-1".into(),
            zone: "zone-1".into(),
            listen: "127.0.0.1:8774".into(),
            advertise: String::new(),
            clc: "127.0.0.1:8780".into(),
            state_dir: "/var/lib/gumtree/cc".into(),
            cluster_secret_file: "/var/lib/gumtree/cluster.secret".into(),
            internal_tls: Default::default(),
            placement_policy: PlacementPolicy::RoundRobin,
            cpu_overcommit: 1.0,
            memory_overcommit: 1.0,
            placement_threshold: 0.8,
            rebalance: false,
            rebalance_threshold: 80.0,
            rebalance_window_secs: 60,
            rebalance_cooldown_secs: 600,
            heartbeat_secs: 2,
            node_timeout_secs: 6,
            network_mode: crate::network::NetworkMode::ManagedNoVlan,
            private_subnet: "172.31.0.0/20".into(),
            bridge: "gtbr0".into(),
            tunnel_id: 1,
            log_filter: "info".into(),
        }
    }
}

impl common::daemon::DaemonConfig for ClusterConfig {
    fn log_filter(&self) -> &str {
        &self.log_filter
    }
    fn start_at(&self) -> common::rpc::StartAt<'_> {
        common::rpc::StartAt {
            state_dir: &self.state_dir,
            secret_file: &self.cluster_secret_file,
            tls: &self.internal_tls,
            who: common::pki::Role::Cc,
            name: self.name.as_str().into(),
            listen: &self.listen,
            advertise: &self.advertise,
        }
    }
}
