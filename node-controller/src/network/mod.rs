//! The node's side of a cluster's private network (MANAGED-NOVLAN): the
//! cluster's bridge with its gateway address, dnsmasq handing each guest
//! its address by static lease, and the metadata service at
//! 169.254.169.254 (a DNAT to a listener on the gateway that relays each
//! request, with the guest's address, to the CLC).
//!
//! Everything is made in the network namespace libvirtd (and so the
//! guests' taps) lives in: the node's own, or the one `netns` names. The
//! plumbing of a bridge is the host's, not one node controller's: its
//! state (the DHCP hosts of every guest on it, dnsmasq's pid) lives in a
//! host-wide directory under a file lock, so several node controllers on
//! one host (as in tests) share one bridge, one dnsmasq and one relay. It is
//! torn down when the last guest on the bridge is gone.
//!
//! The instances see it through the [`HostNetwork`] trait; [`LinuxNetwork`]
//! carries it out, one concern a module:
//! - [`bridge`]: the bridge, dnsmasq's static leases, attaching and
//!   detaching guests, tearing a bridge down;
//! - [`firewall`]: each guest's security group chains and public-address
//!   NAT, in iptables transactions;
//! - [`guard`]: the anti-spoofing guard (ebtables) on each tap;
//! - [`relay`]: the metadata address and the HTTP-to-gRPC relay to the CLC.
//!
//! [`Fake`] records what it is asked, for unit tests of the instances.

pub mod bridge;
pub mod firewall;
pub mod guard;
pub mod relay;

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Mutex,
};

use nix::fcntl::{Flock, FlockArg};

pub use firewall::FlowRule;
pub use relay::Relay;

/// A host's network, as the instances use it.
#[tonic::async_trait]
pub trait HostNetwork: Send + Sync + std::fmt::Debug {
    /// Puts a guest on `net` (its bridge made first if need be) with a
    /// static lease of `ip` for `mac`.
    async fn attach(&self, net: &NetSpec, mac: &str, ip: &str) -> Result<(), NetError>;
    /// Takes a guest off `net` (the bridge torn down after the last).
    async fn detach(&self, net: &NetSpec, mac: &str) -> Result<(), NetError>;
    /// Enforces a guest's rules, public address and guard.
    async fn apply_firewall(
        &self,
        g: &Guest,
        ingress: &[FlowRule],
        egress: &[FlowRule],
    ) -> Result<(), NetError>;
    /// Removes everything `apply_firewall` put in place for `g`.
    async fn remove_firewall(&self, g: &Guest);
    /// The cluster's network as its CC sees it now: the bridge's tunnels
    /// follow its peers (when the bridge is there; else at its making).
    async fn set_network(&self, net: &NetSpec) -> Result<(), NetError>;
}

#[tonic::async_trait]
impl HostNetwork for LinuxNetwork {
    async fn attach(&self, net: &NetSpec, mac: &str, ip: &str) -> Result<(), NetError> {
        LinuxNetwork::attach(self, net, mac, ip).await
    }
    async fn detach(&self, net: &NetSpec, mac: &str) -> Result<(), NetError> {
        LinuxNetwork::detach(self, net, mac).await
    }
    async fn apply_firewall(
        &self,
        g: &Guest,
        ingress: &[FlowRule],
        egress: &[FlowRule],
    ) -> Result<(), NetError> {
        LinuxNetwork::apply_firewall(self, g, ingress, egress).await
    }
    async fn remove_firewall(&self, g: &Guest) {
        LinuxNetwork::remove_firewall(self, g).await
    }
    async fn set_network(&self, net: &NetSpec) -> Result<(), NetError> {
        LinuxNetwork::set_network(self, net).await
    }
}

/// A network that only records what it is asked.
#[derive(Debug, Default)]
pub struct Fake {
    /// One line per call: `attach MAC IP`, `detach MAC`,
    /// `firewall INSTANCE INGRESS-RULES`, `unfirewall INSTANCE`.
    pub calls: Mutex<Vec<String>>,
}

impl Fake {
    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, call: String) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }
}

#[tonic::async_trait]
impl HostNetwork for Fake {
    async fn attach(&self, _net: &NetSpec, mac: &str, ip: &str) -> Result<(), NetError> {
        self.record(format!("attach {mac} {ip}"));
        Ok(())
    }
    async fn detach(&self, _net: &NetSpec, mac: &str) -> Result<(), NetError> {
        self.record(format!("detach {mac}"));
        Ok(())
    }
    async fn apply_firewall(
        &self,
        g: &Guest,
        ingress: &[FlowRule],
        _egress: &[FlowRule],
    ) -> Result<(), NetError> {
        self.record(format!("firewall {} {}", g.instance_id, ingress.len()));
        let sources: Vec<&str> = ingress
            .iter()
            .flat_map(|r| r.cidrs.iter().map(String::as_str))
            .collect();
        self.record(format!("sources {} {}", g.instance_id, sources.join(",")));
        Ok(())
    }
    async fn remove_firewall(&self, g: &Guest) {
        self.record(format!("unfirewall {}", g.instance_id));
    }
    async fn set_network(&self, net: &NetSpec) -> Result<(), NetError> {
        let peers = net.tunnel.as_ref().map(|t| t.peers.len()).unwrap_or(0);
        self.record(format!("network {} {peers}", net.bridge));
        Ok(())
    }
}

/// The metadata service's address, as guests see it.
pub const METADATA_IP: &str = "169.254.169.254";

/// A private network to attach guests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// The VXLAN tunnels joining this bridge to the other nodes' bridges,
    /// when the CC said (records do not keep it: it changes as nodes come
    /// and go, and the CC tells it again).
    pub tunnel: Option<Tunnel>,
}

/// The VXLAN segment of a cluster's bridges: its id and the other nodes'
/// tunnel addresses (this node's own may be among them: it is left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub id: u32,
    pub peers: Vec<Ipv4Addr>,
}

impl NetSpec {
    /// Checks what the CC sent.
    pub fn new(bridge: &str, gateway: &str, prefix: u32) -> Result<Self, NetError> {
        let ok_name = (1..=15).contains(&bridge.len())
            && bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok_name {
            return Err(NetError::Invalid(format!("bridge name {bridge:?}")));
        }
        let gateway: Ipv4Addr = gateway
            .parse()
            .map_err(|_| NetError::Invalid(format!("gateway {gateway:?}")))?;
        if !(16..=29).contains(&prefix) {
            return Err(NetError::Invalid(format!("prefix /{prefix}")));
        }
        Ok(Self {
            bridge: bridge.to_string(),
            gateway,
            prefix: prefix as u8,
            tunnel: None,
        })
    }

    /// With the tunnels the CC sent (`id` 0: none); checks the peers.
    pub fn with_tunnel(mut self, id: u32, peers: &[String]) -> Result<Self, NetError> {
        if id == 0 {
            return Ok(self);
        }
        if id >= 1 << 24 {
            return Err(NetError::Invalid(format!("tunnel id {id}")));
        }
        let mut parsed = Vec::with_capacity(peers.len());
        for p in peers {
            parsed.push(
                p.parse::<Ipv4Addr>()
                    .map_err(|_| NetError::Invalid(format!("tunnel peer {p:?}")))?,
            );
        }
        parsed.sort();
        parsed.dedup();
        self.tunnel = Some(Tunnel { id, peers: parsed });
        Ok(self)
    }

    /// The bridge's MAC address: the same on every node of the cluster (a
    /// locally administered address from the bridge's name and gateway), so
    /// that whichever node answers a guest's ARP for the gateway, the guest
    /// reaches its own node's bridge, never another node's through a tunnel.
    pub fn bridge_mac(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self
            .bridge
            .bytes()
            .chain(self.gateway.octets())
            .chain([self.prefix])
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let b = h.to_be_bytes();
        format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4]
        )
    }

    /// The name of the bridge's VXLAN port.
    pub fn tunnel_port(&self) -> String {
        let cut = self.bridge.len().min(13);
        format!("vx{}", &self.bridge[..cut])
    }

    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - self.prefix))
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) & u32::from(self.mask()))
    }
}

/// Why network plumbing failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network: {0}")]
    Invalid(String),
    #[error("{command}: {detail}")]
    Command { command: String, detail: String },
    #[error("network files: {0}")]
    Io(#[from] std::io::Error),
}

/// The node's network plumbing.
#[derive(Debug)]
pub struct LinuxNetwork {
    netns: Option<String>,
    dir: PathBuf,
    metadata_port: u16,
    relay: Relay,
    proxies: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    changing: tokio::sync::Mutex<()>,
    /// Interface public addresses are put on (None: routed to the host).
    public_interface: Option<String>,
    /// This node's tunnel address (None: no tunnels).
    tunnel_address: Option<Ipv4Addr>,
    /// The tunnels the CC last sent, for bridges made from records.
    tunnel: Mutex<Option<Tunnel>>,
    /// The policy last applied to each guest by this process.
    applied: Mutex<HashMap<String, AppliedPolicy>>,
    /// IPv4 forwarding was turned on.
    forwarding: std::sync::atomic::AtomicBool,
}

/// A guest's firewall as applied, and when.
pub(super) type AppliedPolicy = (std::time::Instant, (Guest, Vec<FlowRule>, Vec<FlowRule>));

/// How long an applied policy is trusted to still be in place.
pub(super) const REAPPLY_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

impl LinuxNetwork {
    /// Plumbing in `netns` (None: the node's own namespace), state in `dir`.
    pub fn new(netns: Option<String>, dir: &Path, metadata_port: u16, relay: Relay) -> Self {
        Self {
            netns,
            dir: dir.to_path_buf(),
            metadata_port,
            relay,
            proxies: Mutex::new(HashMap::new()),
            changing: tokio::sync::Mutex::new(()),
            public_interface: None,
            tunnel_address: None,
            tunnel: Mutex::new(None),
            applied: Mutex::new(HashMap::new()),
            forwarding: Default::default(),
        }
    }

    /// Tunnels to the other nodes' bridges start from `address` (in the
    /// plumbing's namespace); None: no tunnels.
    pub fn with_tunnel_address(mut self, address: Option<Ipv4Addr>) -> Self {
        self.tunnel_address = address;
        self
    }

    /// Public addresses go on `iface` (in the plumbing's namespace).
    pub fn with_public_interface(mut self, iface: Option<String>) -> Self {
        self.public_interface = iface;
        self
    }

    pub(super) fn command(&self, program: &str, args: &[&str]) -> tokio::process::Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => tokio::process::Command::new(program),
        };
        c.args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        c
    }

    pub(super) async fn run(&self, program: &str, args: &[&str]) -> Result<String, NetError> {
        let out = self
            .command(program, args)
            .output()
            .await
            .map_err(|e| NetError::Command {
                command: program.to_string(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(NetError::Command {
                command: format!("{program} {}", args.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl LinuxNetwork {
    pub(super) async fn iptables(&self, op: &str, rule: &[String]) -> Result<String, NetError> {
        let mut args = vec!["-w", "-t", "nat", op];
        args.extend(rule.iter().map(String::as_str));
        self.run("iptables", &args).await
    }

    /// The host-wide lock of `bridge`'s plumbing.
    pub(super) async fn host_lock(&self, bridge: &str) -> Result<Flock<std::fs::File>, NetError> {
        self.lock_file(&self.bridge_dir(bridge).join("lock")).await
    }

    /// The host-wide lock of the firewall: node controllers on one host
    /// take turns (ebtables, unlike iptables, does not wait for another
    /// one's change and fails instead).
    pub(super) async fn firewall_lock(&self) -> Result<Flock<std::fs::File>, NetError> {
        self.lock_file(&self.dir.join("firewall.lock")).await
    }

    pub(super) async fn lock_file(&self, path: &Path) -> Result<Flock<std::fs::File>, NetError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        tokio::task::spawn_blocking(move || {
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| NetError::Io(std::io::Error::from(e)))
        })
        .await
        .map_err(|e| NetError::Io(std::io::Error::other(e.to_string())))?
    }
}

/// The tap device of an instance's NIC (named by us, so rules can name it).
pub fn tap_name(instance_id: &str) -> String {
    let hex: String = instance_id
        .trim_start_matches("i-")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(13)
        .collect();
    format!("gi{hex}")
}

/// A guest as its firewall, NAT and guard see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    pub instance_id: String,
    pub mac: String,
    pub private_ip: Ipv4Addr,
    pub net: NetSpec,
    pub public_ip: Option<Ipv4Addr>,
    /// Its public address's NAT is in place but the address is not put on
    /// the public interface (nor announced) yet: a guest migrating in, for
    /// which its source still answers.
    pub hold_address: bool,
}

impl Guest {
    /// Checks what the node's record and the CLC say (they end up in
    /// iptables and ebtables arguments).
    pub fn new(
        instance_id: &str,
        mac: &str,
        private_ip: &str,
        net: NetSpec,
        public_ip: &str,
    ) -> Result<Self, NetError> {
        let ok_mac = mac.len() == 17
            && mac.split(':').count() == 6
            && mac
                .split(':')
                .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
        if !ok_mac {
            return Err(NetError::Invalid(format!("MAC {mac:?}")));
        }
        let ip = |what: &str, v: &str| {
            v.parse::<Ipv4Addr>()
                .map_err(|_| NetError::Invalid(format!("{what} {v:?}")))
        };
        Ok(Self {
            instance_id: instance_id.to_string(),
            mac: mac.to_ascii_lowercase(),
            private_ip: ip("private address", private_ip)?,
            net,
            public_ip: match public_ip {
                "" => None,
                p => Some(ip("public address", p)?),
            },
            hold_address: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{
        bridge::{flood_peers, lease_matches, overlapping_route, set_host},
        firewall::{chain_lines, guest_chains, nat_lines},
        *,
    };

    #[test]
    pub(super) fn specs_are_checked() {
        let n = NetSpec::new("gtbr0", "172.31.0.1", 20).expect("spec");
        assert_eq!(n.mask(), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(n.network(), Ipv4Addr::new(172, 31, 0, 0));
        assert!(NetSpec::new("br;rm -rf", "172.31.0.1", 20).is_err());
        assert!(NetSpec::new("averyveryverylongname", "172.31.0.1", 20).is_err());
        assert!(NetSpec::new("gtbr0", "x", 20).is_err());
        assert!(NetSpec::new("gtbr0", "172.31.0.1", 8).is_err());
    }

    #[test]
    fn tunnels_are_checked_and_bridges_share_a_mac() {
        let n = NetSpec::new("gtbr0", "172.31.0.1", 20).expect("spec");
        let peers = ["10.0.0.3".to_string(), "10.0.0.2".into(), "10.0.0.3".into()];
        let t = n.clone().with_tunnel(7, &peers).expect("tunnel");
        let tunnel = t.tunnel.as_ref().expect("a tunnel");
        assert_eq!(tunnel.id, 7);
        assert_eq!(
            tunnel.peers,
            [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]
        );
        assert_eq!(n.clone().with_tunnel(0, &peers).expect("none").tunnel, None);
        assert!(n.clone().with_tunnel(1 << 24, &peers).is_err());
        assert!(n
            .clone()
            .with_tunnel(1, &["10.0.0.1; reboot".into()])
            .is_err());
        // Every node computes the same locally administered MAC for a
        // cluster's bridge; another cluster's differs.
        let mac = n.bridge_mac();
        assert_eq!(mac, t.bridge_mac());
        assert_eq!(mac.len(), 17);
        assert!(mac.starts_with("02:"));
        let other = NetSpec::new("gtbr0", "172.31.16.1", 20).expect("spec");
        assert_ne!(mac, other.bridge_mac());
        assert_eq!(n.tunnel_port(), "vxgtbr0");
        let long = NetSpec::new("abcdefghijklmno", "172.31.0.1", 20).expect("spec");
        assert_eq!(long.tunnel_port().len(), 15);
    }

    #[test]
    fn an_address_given_to_a_new_guest_leaves_the_old_holder() {
        let mut lines: Vec<String> = [
            "d0:0d:00:00:00:01,172.31.0.2",
            "d0:0d:00:00:00:02,172.31.0.3",
            "",
        ]
        .map(str::to_string)
        .into();
        // The same guest again: nothing else goes.
        assert!(set_host(&mut lines, "d0:0d:00:00:00:02", "172.31.0.3").is_empty());
        assert_eq!(
            lines,
            [
                "d0:0d:00:00:00:01,172.31.0.2",
                "d0:0d:00:00:00:02,172.31.0.3"
            ]
        );
        // A new guest with .2: the old holder's entry goes, and its lease.
        let others = set_host(&mut lines, "d0:0d:00:00:00:09", "172.31.0.2");
        assert_eq!(others, ["d0:0d:00:00:00:01"]);
        assert_eq!(
            lines,
            [
                "d0:0d:00:00:00:02,172.31.0.3",
                "d0:0d:00:00:00:09,172.31.0.2"
            ]
        );
        // Leases: by MAC (any case) or by address; short lines never match.
        let lease = "1700000000 d0:0d:00:00:00:01 172.31.0.2 * 01:d0:0d:00:00:00:01";
        assert!(lease_matches(lease, &others, None));
        assert!(lease_matches(&lease.to_uppercase(), &others, None));
        assert!(lease_matches(lease, &[], Some("172.31.0.2")));
        assert!(!lease_matches(lease, &[], Some("172.31.0.20")));
        assert!(!lease_matches(lease, &["d0:0d:00:00:00:02".into()], None));
        assert!(!lease_matches("duid 00:01", &others, Some("172.31.0.2")));
    }

    #[test]
    fn flood_entries_name_the_peers() {
        let listed = "\
00:00:00:00:00:00 dst 10.99.0.11 self permanent
00:00:00:00:00:00 dst 10.99.0.12 self permanent
d0:0d:12:34:56:78 dst 10.99.0.12 self
d0:0d:12:34:56:78 master gtbr0
";
        assert_eq!(
            flood_peers(listed),
            [Ipv4Addr::new(10, 99, 0, 11), Ipv4Addr::new(10, 99, 0, 12)]
        );
        assert!(flood_peers("").is_empty());
    }

    #[test]
    pub(super) fn firewall_chains_allow_what_the_rules_say_and_drop_the_rest() {
        assert_eq!(tap_name("i-0123456789abcdef0"), "gi0123456789abc");
        let rules = vec![
            FlowRule {
                protocol: "tcp".into(),
                from_port: 80,
                to_port: 80,
                cidrs: vec!["0.0.0.0/0".into(), "bogus".into()],
            },
            FlowRule {
                protocol: "udp".into(),
                from_port: 1000,
                to_port: 2000,
                cidrs: vec!["10.0.0.5/32".into()],
            },
            FlowRule {
                protocol: "-1".into(),
                from_port: -1,
                to_port: -1,
                cidrs: vec!["10.0.0.6".into()],
            },
        ];
        assert_eq!(
            chain_lines("GTI-x", &rules, true, "ACCEPT"),
            [
                ":GTI-x - [0:0]",
                "-A GTI-x -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A GTI-x -p udp --sport 67 --dport 68 -j ACCEPT",
                "-A GTI-x -s 0.0.0.0/0 -p tcp --dport 80 -j ACCEPT",
                "-A GTI-x -s 10.0.0.5/32 -p udp --dport 1000:2000 -j ACCEPT",
                "-A GTI-x -s 10.0.0.6 -j ACCEPT",
                "-A GTI-x -j DROP",
            ]
        );
    }

    #[test]
    pub(super) fn public_addresses_nat_both_ways_and_guests_are_checked() {
        let net = NetSpec::new("gtbr0", "10.9.0.1", 24).expect("spec");
        let g = Guest::new(
            "i-0123456789abcdef0",
            "D0:0D:12:34:56:78",
            "10.9.0.5",
            net.clone(),
            "203.0.113.10",
        )
        .expect("guest");
        assert_eq!(g.mac, "d0:0d:12:34:56:78");
        assert_eq!(
            nat_lines(&g, "GTD-x", "GTN-x"),
            [
                ":GTD-x - [0:0]",
                ":GTN-x - [0:0]",
                "-A GTD-x -d 203.0.113.10/32 -j DNAT --to-destination 10.9.0.5",
                "-A GTN-x -s 10.9.0.5/32 ! -d 10.9.0.0/24 -j SNAT --to-source 203.0.113.10",
            ]
        );
        let private =
            Guest::new("i-1", "d0:0d:12:34:56:78", "10.9.0.5", net.clone(), "").expect("guest");
        assert_eq!(
            nat_lines(&private, "GTD-x", "GTN-x").len(),
            2,
            "chains emptied"
        );
        let c = guest_chains(&g);
        assert_eq!(c.dnat, "GTD-gi0123456789abc");
        assert!(c.jumps.iter().any(|(t, j)| *t == "filter"
            && j.join(" ") == "GT-IN -o gtbr0 -d 10.9.0.5/32 -j GTI-gi0123456789abc"));
        for (mac, ip, public) in [
            ("d0:0d:12:34:56", "10.9.0.5", ""),
            ("d0:0d:12:34:56:7g", "10.9.0.5", ""),
            ("d0:0d:12:34:56:78 -j ACCEPT", "10.9.0.5", ""),
            ("d0:0d:12:34:56:78", "10.9.0.5 -j ACCEPT", ""),
            ("d0:0d:12:34:56:78", "10.9.0.5", "203.0.113.10/0"),
        ] {
            assert!(
                Guest::new("i-1", mac, ip, net.clone(), public).is_err(),
                "{mac} {ip} {public}"
            );
        }
    }

    #[test]
    pub(super) fn subnets_over_the_hosts_networks_are_refused() {
        let routes = "default via 192.0.2.1 dev eth0 \n192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2 \n172.31.0.0/20 dev gtbr0 proto kernel scope link src 172.31.0.1\n";
        let ours = NetSpec::new("gtbr0", "172.31.0.1", 20).expect("spec");
        assert_eq!(
            overlapping_route(routes, &ours),
            None,
            "its own bridge's route is fine"
        );
        let clash = NetSpec::new("gtbr1", "192.0.2.129", 25).expect("spec");
        assert!(overlapping_route(routes, &clash).is_some_and(|r| r.starts_with("192.0.2.0/24")));
        let wide = NetSpec::new("gtbr1", "192.0.0.1", 16).expect("spec");
        assert!(
            overlapping_route(routes, &wide).is_some(),
            "a wider subnet covering a route"
        );
        let apart = NetSpec::new("gtbr1", "10.9.0.1", 24).expect("spec");
        assert_eq!(overlapping_route(routes, &apart), None);
    }
}
