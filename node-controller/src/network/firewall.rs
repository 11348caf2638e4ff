//! Each guest's firewall: its security group rules as iptables chains on
//! its tap, and its public address as DNAT in and SNAT out, replaced in one
//! transaction per change.

use std::net::Ipv4Addr;

use super::{guard::guard_chain, tap_name, Guest, LinuxNetwork, NetError, REAPPLY_AFTER};

impl LinuxNetwork {
    /// Feeds `tables` (table name, lines) to iptables-restore without
    /// flushing anything else: chains it declares are replaced, in one
    /// transaction per table.
    pub(super) async fn restore(&self, tables: &[(&str, Vec<String>)]) -> Result<(), NetError> {
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
    pub(super) async fn ensure_dispatch(&self) -> Result<(), NetError> {
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
    pub(super) async fn ensure_jumps(&self, jumps: &[(&str, Vec<String>)]) -> Result<(), NetError> {
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
    pub(super) async fn current_public(&self, dnat_chain: &str) -> Option<Ipv4Addr> {
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
    pub(super) async fn release_public(&self, ip: Ipv4Addr, dnat: &str) {
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
    pub(super) async fn public_address(
        &self,
        ip: Ipv4Addr,
        announce: bool,
    ) -> Result<(), NetError> {
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
    pub(super) async fn forget_flows(&self, private: Ipv4Addr, publics: [Option<Ipv4Addr>; 2]) {
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
        // Its address is announced when it is new here, or was held back
        // until now (a migration's target once the guest runs here), or
        // after a restart.
        let was_held = previous
            .as_ref()
            .is_none_or(|(_, (p, _, _))| p.hold_address);
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
            if !g.hold_address {
                self.public_address(public, old_public != Some(public) || was_held)
                    .await?;
            }
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
}

/// Built-in chains a dispatch chain is jumped to from: (hook, position).
pub(super) type Hooks = &'static [(&'static str, &'static str)];

/// Our dispatch chains: (table, chain, hooks).
pub(super) const DISPATCH: &[(&str, &str, Hooks)] = &[
    ("filter", "GT-OUT", &[("FORWARD", "1")]),
    ("filter", "GT-IN", &[("FORWARD", "2")]),
    ("nat", "GT-DNAT", &[("PREROUTING", "1"), ("OUTPUT", "1")]),
    ("nat", "GT-SNAT", &[("POSTROUTING", "1")]),
];

/// The chains of one guest and the jumps to them from the dispatch chains
/// (table, rule without the `-A`/`-C`/`-D` verb).
pub(super) struct GuestChains {
    pub(super) ingress: String,
    pub(super) egress: String,
    pub(super) dnat: String,
    pub(super) snat: String,
    pub(super) jumps: Vec<(&'static str, Vec<String>)>,
}

pub(super) fn guest_chains(g: &Guest) -> GuestChains {
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
pub(super) fn nat_lines(g: &Guest, dnat: &str, snat: &str) -> Vec<String> {
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

pub(super) fn valid_cidr(c: &str) -> bool {
    let (addr, len) = c.split_once('/').unwrap_or((c, "32"));
    addr.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
}

/// `iptables-restore` lines that fill `chain` with `rules`, ending in
/// `otherwise` (DROP); allowed packets go to `allow` (ACCEPT or RETURN).
pub(super) fn chain_lines(
    chain: &str,
    rules: &[FlowRule],
    ingress: bool,
    allow: &str,
) -> Vec<String> {
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
