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

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Mutex,
};

use bytes::Bytes;
use common::{pki::Role, rpc::Trust};
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response};
use nix::fcntl::{Flock, FlockArg};
use proto::{metadata_service_client::MetadataServiceClient, MetadataRequest};

/// The metadata service's address, as guests see it.
pub const METADATA_IP: &str = "169.254.169.254";

/// A private network to attach guests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
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
        })
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

/// Where the metadata relay sends requests.
#[derive(Debug, Clone)]
pub struct Relay {
    /// The CLC's gRPC address.
    pub clc: String,
    /// How this node proves itself (the CLC answers for its guests only).
    pub trust: Trust,
}

/// The node's network plumbing.
#[derive(Debug)]
pub struct HostNetwork {
    netns: Option<String>,
    dir: PathBuf,
    metadata_port: u16,
    relay: Relay,
    proxies: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    changing: tokio::sync::Mutex<()>,
    /// Interface public addresses are put on (None: routed to the host).
    public_interface: Option<String>,
    /// The policy last applied to each guest by this process.
    applied: Mutex<HashMap<String, AppliedPolicy>>,
    /// IPv4 forwarding was turned on.
    forwarding: std::sync::atomic::AtomicBool,
}

/// A guest's firewall as applied, and when.
type AppliedPolicy = (std::time::Instant, (Guest, Vec<FlowRule>, Vec<FlowRule>));

/// How long an applied policy is trusted to still be in place.
const REAPPLY_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

impl HostNetwork {
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
            applied: Mutex::new(HashMap::new()),
            forwarding: Default::default(),
        }
    }

    /// Public addresses go on `iface` (in the plumbing's namespace).
    pub fn with_public_interface(mut self, iface: Option<String>) -> Self {
        self.public_interface = iface;
        self
    }

    fn command(&self, program: &str, args: &[&str]) -> tokio::process::Command {
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

    async fn run(&self, program: &str, args: &[&str]) -> Result<String, NetError> {
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

    fn bridge_dir(&self, bridge: &str) -> PathBuf {
        self.dir.join(bridge)
    }

    async fn ensure_bridge(&self, net: &NetSpec) -> Result<(), NetError> {
        if self
            .run("ip", &["link", "show", "dev", &net.bridge])
            .await
            .is_ok()
        {
            return Ok(());
        }
        // Never put the cluster's subnet over a network this host already
        // routes: that would cut the host off from it.
        let routes = self.run("ip", &["-4", "-o", "route", "show"]).await?;
        if let Some(clash) = overlapping_route(&routes, net) {
            return Err(NetError::Invalid(format!(
                "the private subnet {}/{} overlaps this host's route {clash}; choose another private_subnet for the cluster",
                net.network(),
                net.prefix
            )));
        }
        let addr = format!("{}/{}", net.gateway, net.prefix);
        self.run("ip", &["link", "add", &net.bridge, "type", "bridge"])
            .await?;
        self.run("ip", &["addr", "add", &addr, "dev", &net.bridge])
            .await?;
        self.run("ip", &["link", "set", &net.bridge, "up"]).await?;
        tracing::info!(bridge = %net.bridge, address = %addr, netns = ?self.netns, "bridge made");
        Ok(())
    }

    fn dnsmasq_pid(&self, bridge: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.bridge_dir(bridge).join("dnsmasq.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains("dnsmasq")
            .then_some(pid)
    }

    async fn ensure_dnsmasq(&self, net: &NetSpec) -> Result<(), NetError> {
        if self.dnsmasq_pid(&net.bridge).is_some() {
            return Ok(());
        }
        let dir = self.bridge_dir(&net.bridge);
        let hosts = dir.join("hosts");
        if !hosts.exists() {
            std::fs::write(&hosts, "")?;
        }
        let p = |name: &str| dir.join(name).display().to_string();
        let range = format!("{},static,{},1h", net.network(), net.mask());
        let router = format!("option:router,{}", net.gateway);
        let args = [
            "--conf-file=/dev/null".to_string(),
            "--user=root".into(),
            format!("--pid-file={}", p("dnsmasq.pid")),
            format!("--dhcp-hostsfile={}", p("hosts")),
            format!("--dhcp-leasefile={}", p("leases")),
            format!("--interface={}", net.bridge),
            "--bind-interfaces".into(),
            "--except-interface=lo".into(),
            "--port=0".into(),
            format!("--dhcp-range={range}"),
            format!("--dhcp-option={router}"),
            "--dhcp-authoritative".into(),
            format!("--log-facility={}", p("dnsmasq.log")),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run("dnsmasq", &args).await?;
        tracing::info!(bridge = %net.bridge, "dnsmasq started");
        Ok(())
    }

    fn nat_rule(&self, net: &NetSpec) -> Vec<String> {
        vec![
            "PREROUTING".into(),
            "-i".into(),
            net.bridge.clone(),
            "-d".into(),
            format!("{METADATA_IP}/32"),
            "-p".into(),
            "tcp".into(),
            "--dport".into(),
            "80".into(),
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            format!("gumtree metadata {}", net.bridge),
            "-j".into(),
            "DNAT".into(),
            "--to-destination".into(),
            format!("{}:{}", net.gateway, self.metadata_port),
        ]
    }

    async fn iptables(&self, op: &str, rule: &[String]) -> Result<String, NetError> {
        let mut args = vec!["-w", "-t", "nat", op];
        args.extend(rule.iter().map(String::as_str));
        self.run("iptables", &args).await
    }

    async fn ensure_metadata(&self, net: &NetSpec) -> Result<(), NetError> {
        let rule = self.nat_rule(net);
        if self.iptables("-C", &rule).await.is_err() {
            self.iptables("-A", &rule).await?;
        }
        let mut proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        if proxies.get(&net.bridge).is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        let addr = SocketAddr::from((net.gateway, self.metadata_port));
        let listener = match bind_in(self.netns.as_deref(), addr) {
            Ok(l) => l,
            // Another node controller on this host relays for this bridge.
            Err(NetError::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::info!(bridge = %net.bridge, listen = %addr, "metadata relay already served on this host");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let relay = self.relay.clone();
        let handle = tokio::spawn(async move {
            common::http::serve(listener, None, move |req| {
                let relay = relay.clone();
                async move { relay_request(&relay, req).await }
            })
            .await
        });
        proxies.insert(net.bridge.clone(), handle);
        tracing::info!(bridge = %net.bridge, listen = %addr, "metadata relay listening");
        Ok(())
    }

    fn write_hosts(
        &self,
        bridge: &str,
        edit: impl FnOnce(&mut Vec<String>),
    ) -> Result<(), NetError> {
        let path = self.bridge_dir(bridge).join("hosts");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        edit(&mut lines);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, lines.join("\n") + "\n")?;
        std::fs::rename(&tmp, &path)?;
        if let Some(pid) = self.dnsmasq_pid(bridge) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
        Ok(())
    }

    /// The host-wide lock of `bridge`'s plumbing.
    async fn host_lock(&self, bridge: &str) -> Result<Flock<std::fs::File>, NetError> {
        self.lock_file(&self.bridge_dir(bridge).join("lock")).await
    }

    /// The host-wide lock of the firewall: node controllers on one host
    /// take turns (ebtables, unlike iptables, does not wait for another
    /// one's change and fails instead).
    async fn firewall_lock(&self) -> Result<Flock<std::fs::File>, NetError> {
        self.lock_file(&self.dir.join("firewall.lock")).await
    }

    async fn lock_file(&self, path: &Path) -> Result<Flock<std::fs::File>, NetError> {
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

    /// Makes sure the network is there and that the guest with `mac` gets
    /// `ip` from DHCP.
    pub async fn attach(&self, net: &NetSpec, mac: &str, ip: &str) -> Result<(), NetError> {
        let _changing = self.changing.lock().await;
        let _host = self.host_lock(&net.bridge).await?;
        self.ensure_bridge(net).await?;
        let entry = format!("{mac},{ip}");
        self.write_hosts(&net.bridge, |lines| {
            lines.retain(|l| !l.starts_with(&format!("{mac},")) && !l.is_empty());
            lines.push(entry.clone());
        })?;
        self.ensure_dnsmasq(net).await?;
        self.ensure_metadata(net).await?;
        Ok(())
    }

    /// Forgets the guest with `mac`; when it was the last guest on the
    /// bridge (of any node controller on this host), tears the network down.
    pub async fn detach(&self, net: &NetSpec, mac: &str) -> Result<(), NetError> {
        let _changing = self.changing.lock().await;
        if !self.bridge_dir(&net.bridge).exists() {
            return Ok(());
        }
        let host = self.host_lock(&net.bridge).await?;
        let mut left = 0;
        self.write_hosts(&net.bridge, |lines| {
            lines.retain(|l| !l.starts_with(&format!("{mac},")) && !l.is_empty());
            left = lines.len();
        })?;
        if left == 0 {
            self.teardown(net).await;
        } else {
            // dnsmasq keeps the gone guest's lease and would refuse its
            // address to the next guest the CC gives it to: restart it
            // without that lease.
            self.stop_dnsmasq(&net.bridge).await;
            let leases = self.bridge_dir(&net.bridge).join("leases");
            if let Ok(text) = std::fs::read_to_string(&leases) {
                let kept: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.to_ascii_lowercase().contains(&mac.to_ascii_lowercase()))
                    .collect();
                std::fs::write(&leases, kept.join("\n") + "\n")?;
            }
            self.ensure_dnsmasq(net).await?;
        }
        drop(host);
        Ok(())
    }

    /// Stops the bridge's dnsmasq and waits (up to 2 s) until it is gone.
    async fn stop_dnsmasq(&self, bridge: &str) {
        let Some(pid) = self.dnsmasq_pid(bridge) else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..100 {
            if self.dnsmasq_pid(bridge).is_none() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Feeds `tables` (table name, lines) to iptables-restore without
    /// flushing anything else: chains it declares are replaced, in one
    /// transaction per table.
    async fn restore(&self, tables: &[(&str, Vec<String>)]) -> Result<(), NetError> {
        use tokio::io::AsyncWriteExt;
        let mut text = String::new();
        for (table, lines) in tables {
            text.push_str(&format!("*{table}\n"));
            for l in lines {
                text.push_str(l);
                text.push('\n');
            }
            text.push_str("COMMIT\n");
        }
        let mut child = self
            .command("iptables-restore", &["-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| NetError::Command {
                command: "iptables-restore".into(),
                detail: e.to_string(),
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            return Err(NetError::Command {
                command: "iptables-restore".into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Makes sure each dispatch chain exists and is jumped to: FORWARD sends
    /// bridged traffic through every guest's egress rules (GT-OUT), then
    /// every guest's ingress (GT-IN); the nat table's PREROUTING and OUTPUT
    /// go through GT-DNAT, POSTROUTING through GT-SNAT.
    async fn ensure_dispatch(&self) -> Result<(), NetError> {
        for (table, chain, hooks) in DISPATCH {
            if self
                .run("iptables", &["-w", "-t", table, "-n", "-L", chain])
                .await
                .is_err()
            {
                let _ = self
                    .run("iptables", &["-w", "-t", table, "-N", chain])
                    .await;
            }
            for (hook, pos) in *hooks {
                if self
                    .run("iptables", &["-w", "-t", table, "-C", hook, "-j", chain])
                    .await
                    .is_err()
                {
                    self.run(
                        "iptables",
                        &["-w", "-t", table, "-I", hook, pos, "-j", chain],
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Adds each jump of `jumps` (table, rule) that is not there yet.
    async fn ensure_jumps(&self, jumps: &[(&str, Vec<String>)]) -> Result<(), NetError> {
        for (table, jump) in jumps {
            let mut check = vec!["-w", "-t", table, "-C"];
            check.extend(jump.iter().map(String::as_str));
            if self.run("iptables", &check).await.is_err() {
                let mut add = vec!["-w", "-t", table, "-A"];
                add.extend(jump.iter().map(String::as_str));
                self.run("iptables", &add).await?;
            }
        }
        Ok(())
    }

    /// The public address the guest's DNAT chain holds now, if any.
    async fn current_public(&self, dnat_chain: &str) -> Option<Ipv4Addr> {
        let listed = self
            .run("iptables", &["-w", "-t", "nat", "-S", dnat_chain])
            .await
            .ok()?;
        listed.lines().find_map(|l| {
            let d = l.split_whitespace().skip_while(|w| *w != "-d").nth(1)?;
            d.trim_end_matches("/32").parse().ok()
        })
    }

    /// Takes `ip`, which the guest with DNAT chain `dnat` no longer has,
    /// off the public interface, unless another guest's DNAT chain on this
    /// host holds it (it moved there first).
    async fn release_public(&self, ip: Ipv4Addr, dnat: &str) {
        let listed = self
            .run("iptables", &["-w", "-t", "nat", "-S"])
            .await
            .unwrap_or_default();
        let needle = format!(" -d {ip}/32 ");
        let in_use = listed
            .lines()
            .any(|l| l.starts_with("-A GTD-") && !l.contains(dnat) && l.contains(&needle));
        if let (false, Some(iface)) = (in_use, &self.public_interface) {
            let addr = format!("{ip}/32");
            let _ = self.run("ip", &["addr", "del", &addr, "dev", iface]).await;
        }
    }

    /// Puts `ip` on the public interface, so this host answers for it
    /// (announcing it when it is new here); without a public interface the
    /// network must route the public addresses to this host.
    async fn public_address(&self, ip: Ipv4Addr, announce: bool) -> Result<(), NetError> {
        let Some(iface) = &self.public_interface else {
            return Ok(());
        };
        let addr = format!("{ip}/32");
        self.run("ip", &["addr", "replace", &addr, "dev", iface])
            .await?;
        if announce {
            // Gratuitous ARP, so the network's neighbour caches (the
            // router's) follow an address that moved from another node at
            // once; in the background, it takes a second.
            let ip = ip.to_string();
            let mut arping = self.command(
                "busybox",
                &["arping", "-q", "-U", "-c", "2", "-I", iface, "-s", &ip, &ip],
            );
            arping
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            match arping.spawn() {
                Ok(mut child) => {
                    tokio::spawn(async move {
                        let _ = child.wait().await;
                    });
                }
                Err(e) => tracing::warn!(error = %e, "gratuitous ARP not sent"),
            }
        }
        Ok(())
    }

    /// Drops the connection tracking of the flows a guest started, and of
    /// those to its former and new public addresses, when its public
    /// address changed: a tracked flow keeps the translation it started
    /// with (or none), so a connection the guest was retrying would never
    /// leave as its new address, nor one to the old address move on.
    async fn forget_flows(&self, private: Ipv4Addr, publics: [Option<Ipv4Addr>; 2]) {
        let selectors = std::iter::once(("-s", private))
            .chain(publics.into_iter().flatten().map(|p| ("-d", p)));
        for (flag, ip) in selectors {
            let ip = ip.to_string();
            // Exit status 1 means no flow matched.
            if let Err(NetError::Command { detail, .. }) =
                self.run("conntrack", &["-D", flag, &ip]).await
            {
                if !detail.contains("0 flow entries") && !detail.is_empty() {
                    tracing::warn!(%detail, "connection tracking not cleared (is the conntrack tool installed?)");
                }
            }
        }
    }

    /// Keeps bridged frames from a guest's tap honest: only its own MAC,
    /// and only its own IPv4 address (or 0.0.0.0 asking DHCP) in IPv4 and
    /// ARP; everything else it sends is dropped, to other guests and to
    /// this host (whose metadata relay knows guests by address).
    async fn guard(&self, g: &Guest) -> Result<(), NetError> {
        let (tap, chain) = (tap_name(&g.instance_id), guard_chain(&g.instance_id));
        let mac = g.mac.as_str();
        let ip = g.private_ip.to_string();
        let _ = self.run("ebtables", &["-N", &chain, "-P", "DROP"]).await;
        self.run("ebtables", &["-F", &chain]).await?;
        // (MAC and address were checked by Guest::new: no spaces in them.)
        let rules = [
            format!("-p IPv4 -s {mac} --ip-src {ip} -j RETURN"),
            format!("-p IPv4 -s {mac} --ip-src 0.0.0.0 --ip-proto udp --ip-sport 68 --ip-dport 67 -j RETURN"),
            format!("-p ARP -s {mac} --arp-mac-src {mac} --arp-ip-src {ip} -j RETURN"),
            // Address conflict probes (RFC 5227).
            format!("-p ARP -s {mac} --arp-mac-src {mac} --arp-ip-src 0.0.0.0 -j RETURN"),
        ];
        for rule in &rules {
            let mut args = vec!["-A", chain.as_str()];
            args.extend(rule.split_whitespace());
            self.run("ebtables", &args).await?;
        }
        for hook in ["FORWARD", "INPUT"] {
            let jump = ["-i", tap.as_str(), "-j", chain.as_str()];
            while self
                .run("ebtables", &[&["-D", hook][..], &jump].concat())
                .await
                .is_ok()
            {}
            self.run("ebtables", &[&["-A", hook][..], &jump].concat())
                .await?;
        }
        Ok(())
    }

    async fn unguard(&self, instance_id: &str) {
        let (tap, chain) = (tap_name(instance_id), guard_chain(instance_id));
        for hook in ["FORWARD", "INPUT"] {
            while self
                .run("ebtables", &["-D", hook, "-i", &tap, "-j", &chain])
                .await
                .is_ok()
            {}
        }
        let _ = self.run("ebtables", &["-F", &chain]).await;
        let _ = self.run("ebtables", &["-X", &chain]).await;
    }

    /// Enforces a guest's security group rules on its tap (ingress denied
    /// unless a rule allows it, egress as its rules say), its public
    /// address (DNAT in, SNAT out) and its anti-spoofing guard. Chains are
    /// replaced in one transaction; a policy already applied by this
    /// process is not applied again.
    pub async fn apply_firewall(
        &self,
        g: &Guest,
        ingress: &[FlowRule],
        egress: &[FlowRule],
    ) -> Result<(), NetError> {
        let wanted = (g.clone(), ingress.to_vec(), egress.to_vec());
        let _changing = self.changing.lock().await;
        let previous = self
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&g.instance_id)
            .cloned();
        // Unchanged and recent: nothing to do. A policy is applied again
        // after a while regardless, so rules someone else removed (a
        // firewall reload) come back.
        if previous
            .as_ref()
            .is_some_and(|(at, p)| *p == wanted && at.elapsed() < REAPPLY_AFTER)
        {
            return Ok(());
        }
        // The guard depends on the MAC and address only; rebuilding it
        // drops the guest's frames for a moment, so an old one is only
        // checked for.
        let guarded = match previous {
            Some((at, (p, _, _))) if p.mac == g.mac && p.private_ip == g.private_ip => {
                at.elapsed() < REAPPLY_AFTER
                    || self
                        .run("ebtables", &["-L", &guard_chain(&g.instance_id)])
                        .await
                        .is_ok()
            }
            _ => false,
        };
        let _host = self.firewall_lock().await?;
        let c = guest_chains(g);
        self.ensure_dispatch().await?;
        let old_public = self.current_public(&c.dnat).await;
        let mut filter = chain_lines(&c.ingress, ingress, true, "ACCEPT");
        filter.extend(chain_lines(&c.egress, egress, false, "RETURN"));
        let nat = nat_lines(g, &c.dnat, &c.snat);
        self.restore(&[("filter", filter), ("nat", nat)]).await?;
        self.ensure_jumps(&c.jumps).await?;
        if let Some(old) = old_public.filter(|old| Some(*old) != g.public_ip) {
            self.release_public(old, &c.dnat).await;
        }
        if old_public != g.public_ip {
            self.forget_flows(g.private_ip, [old_public, g.public_ip])
                .await;
        }
        if let Some(public) = g.public_ip {
            self.public_address(public, old_public != Some(public))
                .await?;
            if !self.forwarding.load(std::sync::atomic::Ordering::SeqCst) {
                self.run("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])
                    .await?;
                self.forwarding
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if !guarded {
            self.guard(g).await?;
        }
        tracing::debug!(
            instance_id = %g.instance_id,
            ingress = ingress.len(),
            egress = egress.len(),
            public_ip = ?g.public_ip,
            "firewall applied"
        );
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(g.instance_id.clone(), (std::time::Instant::now(), wanted));
        Ok(())
    }

    /// Removes a guest's chains, jumps, public address and guard.
    pub async fn remove_firewall(&self, g: &Guest) {
        let _changing = self.changing.lock().await;
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&g.instance_id);
        let _host = self.firewall_lock().await;
        let c = guest_chains(g);
        let old_public = self.current_public(&c.dnat).await;
        for (table, jump) in &c.jumps {
            let mut del = vec!["-w", "-t", table, "-D"];
            del.extend(jump.iter().map(String::as_str));
            while self.run("iptables", &del).await.is_ok() {}
        }
        for (table, chain) in [
            ("filter", &c.ingress),
            ("filter", &c.egress),
            ("nat", &c.dnat),
            ("nat", &c.snat),
        ] {
            let _ = self
                .run("iptables", &["-w", "-t", table, "-F", chain])
                .await;
            let _ = self
                .run("iptables", &["-w", "-t", table, "-X", chain])
                .await;
        }
        if let Some(old) = old_public {
            self.release_public(old, &c.dnat).await;
        }
        self.unguard(&g.instance_id).await;
    }

    /// Removes the bridge, dnsmasq, the NAT rule and the relay of `net`.
    pub async fn teardown(&self, net: &NetSpec) {
        if let Some(h) = self
            .proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&net.bridge)
        {
            h.abort();
        }
        self.stop_dnsmasq(&net.bridge).await;
        let rule = self.nat_rule(net);
        while self.iptables("-D", &rule).await.is_ok() {}
        let _ = self.run("ip", &["link", "del", &net.bridge]).await;
        // The dispatch chains go when no guest's chains are left in them.
        let _host = self.firewall_lock().await;
        for (table, chain, hooks) in DISPATCH {
            let listed = self
                .run("iptables", &["-w", "-t", table, "-S", chain])
                .await
                .unwrap_or_default();
            if listed.lines().count() <= 1 {
                for (hook, _) in *hooks {
                    while self
                        .run("iptables", &["-w", "-t", table, "-D", hook, "-j", chain])
                        .await
                        .is_ok()
                    {}
                }
                let _ = self
                    .run("iptables", &["-w", "-t", table, "-X", chain])
                    .await;
            }
        }
        let dir = self.bridge_dir(&net.bridge);
        for f in ["hosts", "leases", "dnsmasq.pid", "dnsmasq.log", "hosts.tmp"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        tracing::info!(bridge = %net.bridge, "network torn down");
    }
}

/// The first route of `ip -4 -o route show` output (not on `net`'s own
/// bridge) whose destination overlaps `net`'s subnet.
fn overlapping_route(routes: &str, net: &NetSpec) -> Option<String> {
    let ours = (u32::from(net.network()), u32::from(net.mask()));
    routes.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let dest = words.next()?;
        let dev = line
            .split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
            .unwrap_or_default();
        if dest == "default" || dev == net.bridge {
            return None;
        }
        let (addr, len) = dest.split_once('/').unwrap_or((dest, "32"));
        let addr: Ipv4Addr = addr.parse().ok()?;
        let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let common = mask & ours.1;
        (u32::from(addr) & common == ours.0 & common).then(|| line.trim().to_string())
    })
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

/// Built-in chains a dispatch chain is jumped to from: (hook, position).
type Hooks = &'static [(&'static str, &'static str)];

/// Our dispatch chains: (table, chain, hooks).
const DISPATCH: &[(&str, &str, Hooks)] = &[
    ("filter", "GT-OUT", &[("FORWARD", "1")]),
    ("filter", "GT-IN", &[("FORWARD", "2")]),
    ("nat", "GT-DNAT", &[("PREROUTING", "1"), ("OUTPUT", "1")]),
    ("nat", "GT-SNAT", &[("POSTROUTING", "1")]),
];

/// A guest as its firewall, NAT and guard see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    pub instance_id: String,
    pub mac: String,
    pub private_ip: Ipv4Addr,
    pub net: NetSpec,
    pub public_ip: Option<Ipv4Addr>,
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
        })
    }
}

/// The chains of one guest and the jumps to them from the dispatch chains
/// (table, rule without the `-A`/`-C`/`-D` verb).
struct GuestChains {
    ingress: String,
    egress: String,
    dnat: String,
    snat: String,
    jumps: Vec<(&'static str, Vec<String>)>,
}

fn guard_chain(instance_id: &str) -> String {
    format!("GTS-{}", tap_name(instance_id))
}

fn guest_chains(g: &Guest) -> GuestChains {
    let tap = tap_name(&g.instance_id);
    let [ingress, egress, dnat, snat] = ["GTI", "GTO", "GTD", "GTN"].map(|p| format!("{p}-{tap}"));
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let private = format!("{}/32", g.private_ip);
    let jumps = vec![
        // Bridged from another guest.
        (
            "filter",
            words(&[
                "GT-IN",
                "-m",
                "physdev",
                "--physdev-out",
                &tap,
                "--physdev-is-bridged",
                "-j",
                &ingress,
            ]),
        ),
        // Routed in (through its public address).
        (
            "filter",
            words(&["GT-IN", "-o", &g.net.bridge, "-d", &private, "-j", &ingress]),
        ),
        (
            "filter",
            words(&[
                "GT-OUT",
                "-m",
                "physdev",
                "--physdev-in",
                &tap,
                "-j",
                &egress,
            ]),
        ),
        ("nat", words(&["GT-DNAT", "-j", &dnat])),
        ("nat", words(&["GT-SNAT", "-j", &snat])),
    ];
    GuestChains {
        ingress,
        egress,
        dnat,
        snat,
        jumps,
    }
}

/// `iptables-restore` lines of a guest's NAT chains: its public address
/// DNAT to its private one, and what it sends beyond its subnet SNAT to
/// the public one. Empty chains without a public address.
fn nat_lines(g: &Guest, dnat: &str, snat: &str) -> Vec<String> {
    let mut out = vec![format!(":{dnat} - [0:0]"), format!(":{snat} - [0:0]")];
    if let Some(public) = g.public_ip {
        let subnet = format!("{}/{}", g.net.network(), g.net.prefix);
        out.push(format!(
            "-A {dnat} -d {public}/32 -j DNAT --to-destination {}",
            g.private_ip
        ));
        out.push(format!(
            "-A {snat} -s {}/32 ! -d {subnet} -j SNAT --to-source {public}",
            g.private_ip
        ));
    }
    out
}

/// One allowed flow of a firewall, rendered for iptables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRule {
    pub protocol: String,
    pub from_port: i32,
    pub to_port: i32,
    pub cidrs: Vec<String>,
}

fn valid_cidr(c: &str) -> bool {
    let (addr, len) = c.split_once('/').unwrap_or((c, "32"));
    addr.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
}

/// `iptables-restore` lines that fill `chain` with `rules`, ending in
/// `otherwise` (DROP); allowed packets go to `allow` (ACCEPT or RETURN).
fn chain_lines(chain: &str, rules: &[FlowRule], ingress: bool, allow: &str) -> Vec<String> {
    // DHCP always passes: a guest that cannot get its address is no use.
    let dhcp = if ingress {
        "--sport 67 --dport 68"
    } else {
        "--sport 68 --dport 67"
    };
    let mut out = vec![
        format!(":{chain} - [0:0]"),
        format!("-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j {allow}"),
        format!("-A {chain} -p udp {dhcp} -j {allow}"),
    ];
    let peer = if ingress { "-s" } else { "-d" };
    for r in rules {
        let proto = match r.protocol.as_str() {
            "tcp" | "udp" => {
                let ports = if r.from_port == r.to_port {
                    r.from_port.to_string()
                } else {
                    format!("{}:{}", r.from_port, r.to_port)
                };
                format!("-p {} --dport {ports}", r.protocol)
            }
            "icmp" if r.from_port >= 0 && r.to_port >= 0 => {
                format!("-p icmp --icmp-type {}/{}", r.from_port, r.to_port)
            }
            "icmp" if r.from_port >= 0 => format!("-p icmp --icmp-type {}", r.from_port),
            "icmp" => "-p icmp".into(),
            "-1" => String::new(),
            _ => continue,
        };
        for c in r.cidrs.iter().filter(|c| valid_cidr(c)) {
            out.push(format!("-A {chain} {peer} {c} {proto} -j {allow}").replace("  ", " "));
        }
    }
    out.push(format!("-A {chain} -j DROP"));
    out
}

/// A listener on `addr` in network namespace `netns` (a named one under
/// /run/netns), or in this process's.
fn bind_in(netns: Option<&str>, addr: SocketAddr) -> Result<tokio::net::TcpListener, NetError> {
    let std_listener = match netns {
        None => std::net::TcpListener::bind(addr)?,
        Some(ns) => {
            let path = format!("/run/netns/{ns}");
            // A socket keeps the namespace it was made in: make it on a
            // thread that entered the namespace, then hand it back.
            std::thread::scope(|s| {
                s.spawn(|| -> std::io::Result<std::net::TcpListener> {
                    let file = std::fs::File::open(&path)?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    std::net::TcpListener::bind(addr)
                })
                .join()
                .map_err(|_| std::io::Error::other("namespace thread panicked"))?
            })?
        }
    };
    std_listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(std_listener)?)
}

fn plain(status: u16, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    r
}

/// Passes one guest request to the CLC and its answer back.
async fn relay_request(relay: &Relay, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(peer) = req.extensions().get::<common::http::PeerAddr>().copied() else {
        return plain(500, "no peer address");
    };
    let headers = req
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let request = MetadataRequest {
        source_ip: peer.0.ip().to_string(),
        method: req.method().as_str().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        headers,
    };
    let channel = match relay.trust.channel(&relay.clc, Role::Clc) {
        Ok(c) => c,
        Err(e) => return plain(502, &format!("metadata service unreachable: {e}")),
    };
    let mut client = MetadataServiceClient::new(channel);
    match client.get(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            let mut r = Response::new(Full::new(Bytes::from(reply.body)));
            *r.status_mut() = http::StatusCode::from_u16(reply.status as u16)
                .unwrap_or(http::StatusCode::BAD_GATEWAY);
            if let Ok(v) = http::HeaderValue::from_str(&reply.content_type) {
                r.headers_mut().insert(http::header::CONTENT_TYPE, v);
            }
            r
        }
        Err(e) => {
            tracing::warn!(error = %e.message(), "metadata relay failed");
            plain(502, "metadata service unavailable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        let n = NetSpec::new("gtbr0", "172.31.0.1", 20).expect("spec");
        assert_eq!(n.mask(), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(n.network(), Ipv4Addr::new(172, 31, 0, 0));
        assert!(NetSpec::new("br;rm -rf", "172.31.0.1", 20).is_err());
        assert!(NetSpec::new("averyveryverylongname", "172.31.0.1", 20).is_err());
        assert!(NetSpec::new("gtbr0", "x", 20).is_err());
        assert!(NetSpec::new("gtbr0", "172.31.0.1", 8).is_err());
    }

    #[test]
    fn firewall_chains_allow_what_the_rules_say_and_drop_the_rest() {
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
    fn public_addresses_nat_both_ways_and_guests_are_checked() {
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
    fn subnets_over_the_hosts_networks_are_refused() {
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
