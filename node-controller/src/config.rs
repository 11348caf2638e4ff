//! The node controller's configuration file.

use std::path::PathBuf;

use serde::Deserialize;

/// `node-controller --config nc.toml`. Every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of this node in its cluster. Default: the host name.
    pub name: String,
    /// gRPC address the CC uses. Port 0 picks a free port, written to
    /// `<state_dir>/listen.addr`. Default `127.0.0.1:8775`.
    pub listen: String,
    /// Address the CC is told to use, when `listen` is not reachable as is
    /// (e.g. `0.0.0.0`). Default: the bound address.
    pub advertise: String,
    /// The cluster controller's gRPC address. Default `127.0.0.1:8774`.
    pub cc: String,
    /// Where the node keeps its state. Default `/var/lib/gumtree/nc`.
    pub state_dir: PathBuf,
    /// Where instance disks live; its file system's size is the node's disk.
    /// Default `<state_dir>/instances`.
    pub instance_dir: Option<PathBuf>,
    /// File holding the cluster secret. Default `/var/lib/gumtree/cluster.secret`.
    pub cluster_secret_file: PathBuf,
    /// This node's certificate for the internal connections:
    /// `internal_tls = { dir = "/var/lib/gumtree/pki" }` finds `ca.pem`,
    /// `nc-<name>.pem` and `nc-<name>.key` there.
    pub internal_tls: common::pki::TlsFiles,
    /// Cores offered to instances; 0 means all of the host's. Default 0.
    pub cores: u32,
    /// Memory offered to instances in MiB; 0 means the host's total. Default 0.
    pub memory_mib: u64,
    /// Disk offered to instances in GiB; 0 means the size of `instance_dir`'s
    /// file system. Default 0.
    pub disk_gib: u64,
    /// Where fetched images are cached. Default `<state_dir>/images`.
    pub image_cache_dir: Option<PathBuf>,
    /// Most MiB of images kept in the cache (images in use may exceed it).
    /// Default 10240.
    pub image_cache_mib: u64,
    /// libvirt connection URI. Default `qemu:///system`.
    pub libvirt_uri: String,
    /// Virtualization: `kvm`, `qemu` (TCG) or `auto`, which proves KVM
    /// with a test boot and falls back to TCG. Default `auto`.
    pub hypervisor: String,
    /// Kernel of the test guest `auto` boots to prove KVM (the tiny
    /// guest's `vmlinuz`; it must print `GUMTREE-BOOT-OK` on ttyS0).
    /// Default none: `auto` then uses TCG.
    pub probe_kernel: Option<PathBuf>,
    /// Initramfs of that test guest (the tiny guest's `initrd.gz`).
    pub probe_ramdisk: Option<PathBuf>,
    /// Seconds a guest started under KVM may keep its serial console
    /// silent before the node takes KVM for broken, restarts the guest
    /// under TCG and keeps to TCG; 0 turns the watchdog off. Default 30.
    pub kvm_watchdog_secs: u64,
    /// The QEMU binary (or a wrapper around it) guests run; default:
    /// libvirt's own.
    pub emulator: Option<PathBuf>,
    /// Seconds between reports to the CC when nothing changes. Default 2.
    pub heartbeat_secs: u64,
    /// Seconds between samples of what the guests use (their CPU time from
    /// libvirt), reported up. Default 5.
    pub load_sample_secs: u64,
    /// Seconds between metric samples of every guest (CPU, disk, network,
    /// volumes, memory) and of the host, sent up for CloudWatch. Default 10.
    pub sample_secs: u64,
    /// Build the cluster's private network for guests (bridge, DHCP,
    /// metadata relay). Default true.
    pub manage_network: bool,
    /// Named network namespace (under /run/netns) that libvirtd, and so
    /// the guests' taps, live in; empty: the node's own. Default empty.
    pub netns: String,
    /// Host-wide state of the private networks (shared by every node
    /// controller on the host). Default `/run/gumtree/net`.
    pub network_dir: PathBuf,
    /// The CLC's gRPC address, for the metadata relay. Default `127.0.0.1:8780`.
    pub clc: String,
    /// Port of the metadata relay on each bridge's gateway address (guests'
    /// requests to 169.254.169.254:80 are forwarded to it). Default 8781.
    pub metadata_port: u16,
    /// Interface (in `netns`) the instances' public addresses are put on,
    /// so the node answers for them; empty: the network routes them to
    /// the node. Default empty.
    pub public_interface: String,
    /// Address (in `netns`) this node's VXLAN tunnels to the other nodes'
    /// bridges start from, reported to the CC; empty: the host of
    /// `advertise` unless that is a loopback address (then no tunnels: the
    /// node controllers of one host share one bridge). "none": no tunnels.
    /// Default empty.
    pub tunnel_address: String,
    /// Directory with this node's libvirt TLS credentials (`cacert.pem`,
    /// `clientcert.pem`, `clientkey.pem`, as `scripts/host-libvirt` makes
    /// them) for dialling other nodes' libvirtds in live migrations; empty:
    /// the node takes no part in migrations. Migrations reach the node at
    /// its tunnel address. Default empty.
    pub migration_tls_dir: String,
    /// Log filter (`RUST_LOG` syntax; `RUST_LOG` wins). Default `info`.
    pub log_filter: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            listen: "127.0.0.1:8775".into(),
            advertise: String::new(),
            cc: "127.0.0.1:8774".into(),
            state_dir: "/var/lib/gumtree/nc".into(),
            instance_dir: None,
            cluster_secret_file: "/var/lib/gumtree/cluster.secret".into(),
            internal_tls: Default::default(),
            cores: 0,
            memory_mib: 0,
            disk_gib: 0,
            image_cache_dir: None,
            image_cache_mib: 10240,
            libvirt_uri: "qemu:///system".into(),
            hypervisor: "auto".into(),
            probe_kernel: None,
            probe_ramdisk: None,
            kvm_watchdog_secs: 30,
            emulator: None,
            heartbeat_secs: 2,
            load_sample_secs: 5,
            sample_secs: 10,
            manage_network: true,
            netns: String::new(),
            network_dir: "/run/gumtree/net".into(),
            clc: "127.0.0.1:8780".into(),
            metadata_port: 8781,
            public_interface: String::new(),
            tunnel_address: String::new(),
            migration_tls_dir: String::new(),
            log_filter: "info".into(),
        }
    }
}

impl NodeConfig {
    /// The node's name: configured, or the host name.
    pub fn node_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".into())
    }

    /// Where fetched images are cached.
    pub fn image_cache_dir(&self) -> PathBuf {
        self.image_cache_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("images"))
    }

    /// The tunnel address (see `tunnel_address`), given the advertised
    /// endpoint; None: no tunnels.
    pub fn tunnel_address(&self, advertise: &str) -> Result<Option<std::net::Ipv4Addr>, String> {
        match self.tunnel_address.as_str() {
            "none" => Ok(None),
            "" => {
                let host = advertise.rsplit_once(':').map_or(advertise, |(h, _)| h);
                Ok(host
                    .parse::<std::net::Ipv4Addr>()
                    .ok()
                    .filter(|a| !a.is_loopback() && !a.is_unspecified()))
            }
            a => a
                .parse::<std::net::Ipv4Addr>()
                .map(Some)
                .map_err(|_| format!("tunnel_address {a:?} is not an IPv4 address")),
        }
    }

    /// Where instance disks live.
    pub fn instance_dir(&self) -> PathBuf {
        self.instance_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("instances"))
    }
}

impl common::daemon::DaemonConfig for NodeConfig {
    fn log_filter(&self) -> &str {
        &self.log_filter
    }
    fn start_at(&self) -> common::rpc::StartAt<'_> {
        common::rpc::StartAt {
            state_dir: &self.state_dir,
            secret_file: &self.cluster_secret_file,
            tls: &self.internal_tls,
            who: common::pki::Role::Nc,
            name: self.node_name().into(),
            listen: &self.listen,
            advertise: &self.advertise,
        }
    }
}
