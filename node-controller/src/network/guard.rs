//! The anti-spoofing guard: ebtables rules on each guest's tap so it can
//! send only from its own MAC and private address.

use super::{tap_name, Guest, LinuxNetwork, NetError};

impl LinuxNetwork {
    /// Keeps bridged frames from a guest's tap honest: only its own MAC,
    /// and only its own IPv4 address (or 0.0.0.0 asking DHCP) in IPv4 and
    /// ARP; everything else it sends is dropped, to other guests and to
    /// this host (whose metadata relay knows guests by address).
    pub(super) async fn guard(&self, g: &Guest) -> Result<(), NetError> {
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
            self.jump_once(hook, &["-i", &tap, "-j", &chain]).await?;
        }
        Ok(())
    }

    /// Puts the ebtables rule `jump` in `hook` once, last.
    pub(super) async fn jump_once(&self, hook: &str, jump: &[&str]) -> Result<(), NetError> {
        while self
            .run("ebtables", &[&["-D", hook][..], jump].concat())
            .await
            .is_ok()
        {}
        self.run("ebtables", &[&["-A", hook][..], jump].concat())
            .await
            .map(drop)
    }

    pub(super) async fn unguard(&self, instance_id: &str) {
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
}

pub(super) fn guard_chain(instance_id: &str) -> String {
    format!("GTS-{}", tap_name(instance_id))
}
