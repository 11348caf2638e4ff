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
use common::auth::{ClusterSecret, SignCalls};
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

    fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - self.prefix))
    }

    fn network(&self) -> Ipv4Addr {
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
    pub clc: String,
    pub secret: ClusterSecret,
    pub node: String,
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
}

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
        }
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
        let dir = self.bridge_dir(bridge);
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
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

    async fn restore(&self, lines: &[String]) -> Result<(), NetError> {
        use tokio::io::AsyncWriteExt;
        let mut text = String::from("*filter\n");
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
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

    /// Makes sure FORWARD sends bridged traffic through our dispatch chains:
    /// every guest's egress rules (GT-OUT), then every guest's ingress (GT-IN).
    async fn ensure_dispatch(&self) -> Result<(), NetError> {
        for chain in ["GT-OUT", "GT-IN"] {
            if self
                .run("iptables", &["-w", "-n", "-L", chain])
                .await
                .is_err()
            {
                let _ = self.run("iptables", &["-w", "-N", chain]).await;
            }
        }
        for (pos, chain) in [("1", "GT-OUT"), ("2", "GT-IN")] {
            if self
                .run("iptables", &["-w", "-C", "FORWARD", "-j", chain])
                .await
                .is_err()
            {
                self.run("iptables", &["-w", "-I", "FORWARD", pos, "-j", chain])
                    .await?;
            }
        }
        Ok(())
    }

    /// Enforces an instance's security group rules on its tap: ingress
    /// denied unless a rule allows it, egress as its rules say. The chains
    /// are replaced in one transaction.
    pub async fn apply_firewall(
        &self,
        instance_id: &str,
        ingress: &[FlowRule],
        egress: &[FlowRule],
    ) -> Result<(), NetError> {
        let (cin, cout, jumps) = guest_chains(instance_id);
        let _changing = self.changing.lock().await;
        self.ensure_dispatch().await?;
        let mut lines = chain_lines(&cin, ingress, true, "ACCEPT");
        lines.extend(chain_lines(&cout, egress, false, "RETURN"));
        self.restore(&lines).await?;
        for jump in &jumps {
            let mut check = vec!["-w", "-C"];
            check.extend(jump.iter().map(String::as_str));
            if self.run("iptables", &check).await.is_err() {
                let mut add = vec!["-w", "-A"];
                add.extend(jump.iter().map(String::as_str));
                self.run("iptables", &add).await?;
            }
        }
        tracing::debug!(
            instance_id,
            ingress = ingress.len(),
            egress = egress.len(),
            "firewall applied"
        );
        Ok(())
    }

    /// Removes an instance's chains and jumps.
    pub async fn remove_firewall(&self, instance_id: &str) {
        let (cin, cout, jumps) = guest_chains(instance_id);
        for jump in &jumps {
            let mut del = vec!["-w", "-D"];
            del.extend(jump.iter().map(String::as_str));
            while self.run("iptables", &del).await.is_ok() {}
        }
        for chain in [&cin, &cout] {
            let _ = self.run("iptables", &["-w", "-F", chain]).await;
            let _ = self.run("iptables", &["-w", "-X", chain]).await;
        }
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
        for chain in ["GT-OUT", "GT-IN"] {
            let listed = self
                .run("iptables", &["-w", "-S", chain])
                .await
                .unwrap_or_default();
            if listed.lines().count() <= 1 {
                while self
                    .run("iptables", &["-w", "-D", "FORWARD", "-j", chain])
                    .await
                    .is_ok()
                {}
                let _ = self.run("iptables", &["-w", "-X", chain]).await;
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

/// A guest's ingress and egress chains, and the rules that jump to them
/// from the dispatch chains (without the `-A`/`-C`/`-D` verb).
fn guest_chains(instance_id: &str) -> (String, String, [Vec<String>; 2]) {
    let tap = tap_name(instance_id);
    let (cin, cout) = (format!("GTI-{tap}"), format!("GTO-{tap}"));
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let jump_in = words(&[
        "GT-IN",
        "-m",
        "physdev",
        "--physdev-out",
        &tap,
        "--physdev-is-bridged",
        "-j",
        &cin,
    ]);
    let jump_out = words(&["GT-OUT", "-m", "physdev", "--physdev-in", &tap, "-j", &cout]);
    (cin, cout, [jump_in, jump_out])
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
    let channel = match common::rpc::channel(&relay.clc) {
        Ok(c) => c,
        Err(e) => return plain(502, &format!("metadata service unreachable: {e}")),
    };
    let mut client = MetadataServiceClient::with_interceptor(
        channel,
        SignCalls::new(relay.secret.clone(), &relay.node),
    );
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
