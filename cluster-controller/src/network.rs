//! The cluster's private network: its mode and subnet, and the private
//! addresses the CC hands to instances (lowest free first, never one in use;
//! an address is free again once its instance is terminated).

use std::{collections::BTreeSet, fmt, net::Ipv4Addr, str::FromStr};

use serde::Deserialize;

/// How instances are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum NetworkMode {
    /// One bridge per cluster on each node, a private address per instance
    /// from `private_subnet`, DHCP with static leases (Eucalyptus'
    /// MANAGED-NOVLAN).
    #[serde(rename = "MANAGED-NOVLAN")]
    ManagedNoVlan,
    /// No private addresses: instances get no network from the cloud.
    #[serde(rename = "NONE")]
    None,
}

impl NetworkMode {
    /// The name shown in admin views.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ManagedNoVlan => "MANAGED-NOVLAN",
            Self::None => "NONE",
        }
    }
}

/// An IPv4 subnet in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: u32,
    prefix: u8,
}

/// Why a subnet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid private subnet {0:?}: use an IPv4 network in CIDR form with a prefix of /16 to /29, e.g. 172.31.0.0/20")]
pub struct BadSubnet(pub String);

impl FromStr for Subnet {
    type Err = BadSubnet;
    fn from_str(s: &str) -> Result<Self, BadSubnet> {
        let bad = || BadSubnet(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(16..=29).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        let network = u32::from(addr);
        if network & !mask != 0 {
            return Err(bad());
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl Subnet {
    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The first host address: the nodes' side of the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network's address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    /// Whether `ip` is an instance address of this subnet.
    pub fn holds(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v & self.mask() == self.network && v > self.network + 1 && v < (self.network | !self.mask())
    }

    /// The `count` lowest addresses for instances not in `used`, or None
    /// when fewer are free.
    pub fn allocate(&self, used: &BTreeSet<Ipv4Addr>, count: usize) -> Option<Vec<Ipv4Addr>> {
        let first = self.network + 2;
        let last = (self.network | !self.mask()) - 1;
        let mut out = Vec::with_capacity(count);
        let mut v = first;
        while out.len() < count && v <= last {
            let ip = Ipv4Addr::from(v);
            if !used.contains(&ip) {
                out.push(ip);
            }
            v += 1;
        }
        (out.len() == count).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_refuse_what_they_must() {
        let s: Subnet = "172.31.0.0/20".parse().expect("subnet");
        assert_eq!(s.to_string(), "172.31.0.0/20");
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 31, 0, 1));
        assert!(s.holds(Ipv4Addr::new(172, 31, 15, 254)));
        assert!(!s.holds(Ipv4Addr::new(172, 31, 15, 255)), "broadcast");
        assert!(!s.holds(Ipv4Addr::new(172, 31, 0, 1)), "gateway");
        assert!(!s.holds(Ipv4Addr::new(172, 31, 16, 2)));
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.1/24",
            "10.0.0.0/8",
            "10.0.0.0/30",
            "x/24",
            "10.0.0.0/x",
        ] {
            assert_eq!(bad.parse::<Subnet>(), Err(BadSubnet(bad.into())), "{bad}");
        }
    }

    #[test]
    fn allocation_takes_the_lowest_free_addresses_and_runs_out() {
        let s: Subnet = "10.9.0.0/29".parse().expect("subnet");
        // .0 network, .1 gateway, .7 broadcast: .2 to .6 for instances.
        let mut used = BTreeSet::new();
        let first = s.allocate(&used, 2).expect("two");
        assert_eq!(
            first,
            [Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 3)]
        );
        used.extend(first);
        used.insert(Ipv4Addr::new(10, 9, 0, 5));
        assert_eq!(
            s.allocate(&used, 2).expect("two more"),
            [Ipv4Addr::new(10, 9, 0, 4), Ipv4Addr::new(10, 9, 0, 6)]
        );
        assert_eq!(s.allocate(&used, 3), None, "only two are free");
        used.remove(&Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(
            s.allocate(&used, 1).expect("freed"),
            [Ipv4Addr::new(10, 9, 0, 2)]
        );
    }
}
