//! The bridge and its DHCP: the cluster's bridge with the gateway
//! address, dnsmasq with a static lease per guest, attaching and detaching
//! guests, and tearing the bridge down after its last guest.

use std::{net::Ipv4Addr, path::PathBuf};

use super::{firewall::DISPATCH, LinuxNetwork, NetError, NetSpec, METADATA_IP};

impl LinuxNetwork {
    pub(super) fn bridge_dir(&self, bridge: &str) -> PathBuf {
        self.dir.join(bridge)
    }

    pub(super) async fn ensure_bridge(&self, net: &NetSpec) -> Result<(), NetError> {
        if self
            .run("ip", &["link", "show", "dev", &net.bridge])
            .await
            .is_err()
        {
            self.make_bridge(net).await?;
        }
        self.ensure_tunnel(net).await
    }

    async fn make_bridge(&self, net: &NetSpec) -> Result<(), NetError> {
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
        self.run(
            "ip",
            &["link", "set", &net.bridge, "address", &net.bridge_mac()],
        )
        .await?;
        self.run("ip", &["addr", "add", &addr, "dev", &net.bridge])
            .await?;
        self.run("ip", &["link", "set", &net.bridge, "up"]).await?;
        tracing::info!(bridge = %net.bridge, address = %addr, netns = ?self.netns, "bridge made");
        Ok(())
    }

    /// The bridge's VXLAN port and its peers, as the CC last said (`net`'s
    /// tunnels, else those remembered): frames for guests on other nodes
    /// go to every peer until the port learns where each MAC is. The port
    /// takes 1500-byte frames, as guests send them: where the nodes'
    /// network carries less than 1550, the kernel fragments the tunnel's
    /// packets. Nothing when this node has no tunnel address.
    pub(super) async fn ensure_tunnel(&self, net: &NetSpec) -> Result<(), NetError> {
        let Some(local) = self.tunnel_address else {
            return Ok(());
        };
        let Some(tunnel) = self.remember_tunnel(net) else {
            return Ok(());
        };
        let port = net.tunnel_port();
        // The fence goes up with the port, and again if it went.
        let mut fence = self
            .run("ebtables", &["-L", &tunnel_chain(net)])
            .await
            .is_err();
        if self
            .run("ip", &["link", "show", "dev", &port])
            .await
            .is_err()
        {
            fence = true;
            let (id, local) = (tunnel.id.to_string(), local.to_string());
            self.run(
                "ip",
                &[
                    "link", "add", &port, "type", "vxlan", "id", &id, "local", &local, "dstport",
                    "4789",
                ],
            )
            .await?;
            self.run("ip", &["link", "set", &port, "mtu", "1500"])
                .await?;
            self.run("ip", &["link", "set", &port, "master", &net.bridge])
                .await?;
            tracing::info!(bridge = %net.bridge, %port, %local, id = tunnel.id, "tunnel port made");
        }
        if fence {
            self.fence_tunnel(net, &port).await?;
        }
        // Up only once fenced.
        self.run("ip", &["link", "set", &port, "up"]).await?;
        let listed = self
            .run("bridge", &["fdb", "show", "dev", &port])
            .await
            .unwrap_or_default();
        let have = flood_peers(&listed);
        let want: Vec<std::net::Ipv4Addr> = tunnel
            .peers
            .iter()
            .copied()
            .filter(|p| *p != local)
            .collect();
        for p in want.iter().filter(|p| !have.contains(p)) {
            let dst = p.to_string();
            self.run(
                "bridge",
                &["fdb", "append", FLOOD, "dev", &port, "dst", &dst],
            )
            .await?;
            tracing::info!(bridge = %net.bridge, peer = %dst, "tunnel peer added");
        }
        for p in have.iter().filter(|p| !want.contains(p)) {
            let dst = p.to_string();
            let _ = self
                .run("bridge", &["fdb", "del", FLOOD, "dev", &port, "dst", &dst])
                .await;
            tracing::info!(bridge = %net.bridge, peer = %dst, "tunnel peer removed");
        }
        Ok(())
    }

    /// The tunnels to use for `net`: its own (kept for later), else those
    /// kept from the CC's last word.
    fn remember_tunnel(&self, net: &NetSpec) -> Option<super::Tunnel> {
        let mut kept = self.tunnel.lock().unwrap_or_else(|p| p.into_inner());
        if net.tunnel.is_some() {
            kept.clone_from(&net.tunnel);
        }
        kept.clone()
    }

    /// What each node serves its own guests stays off the tunnel: DHCP
    /// (another node's dnsmasq would refuse a lease it does not hold) and
    /// ARP for the gateway (every node's bridge is the gateway).
    async fn fence_tunnel(&self, net: &NetSpec, port: &str) -> Result<(), NetError> {
        let chain = tunnel_chain(net);
        let _ = self.run("ebtables", &["-N", &chain, "-P", "RETURN"]).await;
        self.run("ebtables", &["-F", &chain]).await?;
        let gw = net.gateway.to_string();
        let rules: [&[&str]; 3] = [
            &[
                "-p",
                "IPv4",
                "--ip-proto",
                "udp",
                "--ip-dport",
                "67:68",
                "-j",
                "DROP",
            ],
            &["-p", "ARP", "--arp-ip-dst", &gw, "-j", "DROP"],
            &["-p", "ARP", "--arp-ip-src", &gw, "-j", "DROP"],
        ];
        for rule in rules {
            self.run("ebtables", &[&["-A", chain.as_str()][..], rule].concat())
                .await?;
        }
        for (hook, dir) in TUNNEL_HOOKS {
            // After the guests' guards.
            self.jump_once(hook, &[dir, port, "-j", &chain]).await?;
        }
        Ok(())
    }

    async fn unfence_tunnel(&self, net: &NetSpec) {
        let (chain, port) = (tunnel_chain(net), net.tunnel_port());
        for (hook, dir) in TUNNEL_HOOKS {
            while self
                .run("ebtables", &["-D", hook, dir, &port, "-j", &chain])
                .await
                .is_ok()
            {}
        }
        let _ = self.run("ebtables", &["-F", &chain]).await;
        let _ = self.run("ebtables", &["-X", &chain]).await;
    }

    /// The cluster's network as the CC says it is now: an existing bridge's
    /// tunnels follow it at once, a bridge made later starts with it.
    pub async fn set_network(&self, net: &NetSpec) -> Result<(), NetError> {
        self.remember_tunnel(net);
        let _changing = self.changing.lock().await;
        if self
            .run("ip", &["link", "show", "dev", &net.bridge])
            .await
            .is_err()
        {
            return Ok(());
        }
        let _host = self.host_lock(&net.bridge).await?;
        self.ensure_tunnel(net).await
    }

    pub(super) fn dnsmasq_pid(&self, bridge: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.bridge_dir(bridge).join("dnsmasq.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains("dnsmasq")
            .then_some(pid)
    }

    pub(super) async fn ensure_dnsmasq(&self, net: &NetSpec) -> Result<(), NetError> {
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

    pub(super) fn nat_rule(&self, net: &NetSpec) -> Vec<String> {
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

    pub(super) fn write_hosts(
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

    /// Makes sure the network is there and that the guest with `mac` gets
    /// `ip` from DHCP.
    pub async fn attach(&self, net: &NetSpec, mac: &str, ip: &str) -> Result<(), NetError> {
        let _changing = self.changing.lock().await;
        let _host = self.host_lock(&net.bridge).await?;
        self.ensure_bridge(net).await?;
        let mut others = Vec::new();
        self.write_hosts(&net.bridge, |lines| others = set_host(lines, mac, ip))?;
        if !others.is_empty() {
            self.forget_leases(&net.bridge, &others, Some(ip)).await?;
        }
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
            self.forget_leases(&net.bridge, &[mac.to_string()], None)
                .await?;
            self.ensure_dnsmasq(net).await?;
        }
        drop(host);
        Ok(())
    }

    /// Stops the bridge's dnsmasq and drops the leases of `macs` (and of
    /// `ip`) from its lease file; the caller starts dnsmasq again.
    async fn forget_leases(
        &self,
        bridge: &str,
        macs: &[String],
        ip: Option<&str>,
    ) -> Result<(), NetError> {
        self.stop_dnsmasq(bridge).await;
        let leases = self.bridge_dir(bridge).join("leases");
        if let Ok(text) = std::fs::read_to_string(&leases) {
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !lease_matches(l, macs, ip))
                .collect();
            std::fs::write(&leases, kept.join("\n") + "\n")?;
        }
        Ok(())
    }

    /// Stops the bridge's dnsmasq and waits (up to 2 s) until it is gone.
    pub(super) async fn stop_dnsmasq(&self, bridge: &str) {
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
        self.unfence_tunnel(net).await;
        let _ = self.run("ip", &["link", "del", &net.tunnel_port()]).await;
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

/// Where frames cross a bridge's tunnel port: in, out (bridged), to this
/// node and from it.
const TUNNEL_HOOKS: [(&str, &str); 4] = [
    ("FORWARD", "-i"),
    ("FORWARD", "-o"),
    ("INPUT", "-i"),
    ("OUTPUT", "-o"),
];

/// The ebtables chain that fences `net`'s tunnel port.
/// Makes `mac,ip` the one DHCP host entry of `mac` and of `ip`. Returns
/// the other MACs that held `ip`: guests gone without their detach (a node
/// controller stopped mid-way), whose leases must go too, since the CC gave
/// the address to this guest.
pub(super) fn set_host(lines: &mut Vec<String>, mac: &str, ip: &str) -> Vec<String> {
    let (ours, holds) = (format!("{mac},"), format!(",{ip}"));
    let others = lines
        .iter()
        .filter(|l| l.ends_with(&holds) && !l.starts_with(&ours))
        .filter_map(|l| l.split(',').next().map(str::to_string))
        .collect();
    lines.retain(|l| !l.is_empty() && !l.starts_with(&ours) && !l.ends_with(&holds));
    lines.push(format!("{mac},{ip}"));
    others
}

/// Whether a dnsmasq lease line (`expiry mac ip name client-id`) is one
/// of `macs`' or holds `ip`.
pub(super) fn lease_matches(line: &str, macs: &[String], ip: Option<&str>) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (Some(mac), Some(addr)) = (words.get(1), words.get(2)) else {
        return false;
    };
    macs.iter().any(|m| m.eq_ignore_ascii_case(mac)) || ip == Some(*addr)
}

fn tunnel_chain(net: &NetSpec) -> String {
    format!("GTT-{}", net.bridge)
}

/// The MAC of a VXLAN port's flood entries (one per peer).
const FLOOD: &str = "00:00:00:00:00:00";

/// The peers of a VXLAN port's flood entries in `bridge fdb show` output.
pub(super) fn flood_peers(listed: &str) -> Vec<std::net::Ipv4Addr> {
    listed
        .lines()
        .filter(|l| l.starts_with(FLOOD))
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip_while(|w| *w != "dst");
            words.nth(1)?.parse().ok()
        })
        .collect()
}

/// The first route of `ip -4 -o route show` output (not on `net`'s own
/// bridge) whose destination overlaps `net`'s subnet.
pub(super) fn overlapping_route(routes: &str, net: &NetSpec) -> Option<String> {
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
