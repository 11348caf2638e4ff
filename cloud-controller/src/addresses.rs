//! Elastic IPs: the cloud's public address pool, and which account holds
//! each address and which instance it is associated with. Addresses the
//! cloud gives instances at launch (`auto`) come from the same pool; they
//! are not the account's elastic IPs and go back to the pool when the
//! instance goes or gets an elastic IP.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Mutex};

use common::{
    ids,
    store::{Record, Store, StoreError, Table},
    time,
};
use serde::{Deserialize, Serialize};

/// An allocated address, keyed by the address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub public_ip: String,
    pub account_id: String,
    /// `eipalloc-` and 17 hex digits.
    pub allocation_id: String,
    pub instance_id: Option<String>,
    /// `eipassoc-` and 17 hex digits, while associated.
    pub association_id: Option<String>,
    pub allocated_ms: i64,
    /// Given by the cloud at launch, not allocated by the account.
    pub auto: bool,
}

impl Record for Address {
    const TABLE: &'static str = "addresses";
    /// 2: `auto` added.
    const SCHEMA: u32 = 2;
    type Key = String;
    fn key(&self) -> String {
        self.public_ip.clone()
    }
    fn migrate(from: u32, value: serde_json::Value) -> Result<serde_json::Value, String> {
        common::store::add_field(from, value, &[("auto", serde_json::Value::Bool(false))])
    }
}

/// Why a pool was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid public address pool entry {0:?}: use an IPv4 address, a range a.b.c.d-a.b.c.e, or a CIDR block of /20 or smaller")]
pub struct BadPool(pub String);

/// The addresses of pool entries: single addresses, ranges and CIDR blocks.
pub fn parse_pool(entries: &[String]) -> Result<BTreeSet<Ipv4Addr>, BadPool> {
    let mut out = BTreeSet::new();
    for e in entries {
        let bad = || BadPool(e.clone());
        let e = e.trim();
        if let Some((a, b)) = e.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
            let (a, b) = (u32::from(a), u32::from(b));
            if a > b || b - a > 4096 {
                return Err(bad());
            }
            out.extend((a..=b).map(Ipv4Addr::from));
        } else if let Some((a, len)) = e.split_once('/') {
            let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
            let len: u32 = len.parse().map_err(|_| bad())?;
            if !(20..=32).contains(&len) {
                return Err(bad());
            }
            let start = u32::from(a);
            let size = 1u32 << (32 - len);
            if !start.is_multiple_of(size) {
                return Err(bad());
            }
            out.extend((start..start + size).map(Ipv4Addr::from));
        } else {
            out.insert(e.parse().map_err(|_| bad())?);
        }
    }
    Ok(out)
}

/// The address store over the configured pool.
#[derive(Debug)]
pub struct Addresses {
    table: Table<Address>,
    pool: BTreeSet<Ipv4Addr>,
    writing: Mutex<()>,
}

impl Addresses {
    /// The addresses in `store`, handing out `pool`.
    pub fn open(store: &Store, pool: BTreeSet<Ipv4Addr>) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table()?,
            pool,
            writing: Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Size of the pool.
    pub fn pool_size(&self) -> usize {
        self.pool.len()
    }

    /// The lowest address of the pool that none of `held` is.
    fn free_address(&self, held: &[Address]) -> Option<Ipv4Addr> {
        let taken: BTreeSet<&str> = held.iter().map(|a| a.public_ip.as_str()).collect();
        self.pool
            .iter()
            .find(|ip| !taken.contains(ip.to_string().as_str()))
            .copied()
    }

    /// Allocates the lowest free address of the pool to `account_id`.
    pub fn allocate(&self, account_id: &str) -> Result<Option<Address>, StoreError> {
        let _w = self.lock();
        let Some(ip) = self.free_address(&self.table.list()?) else {
            return Ok(None);
        };
        let a = Address {
            public_ip: ip.to_string(),
            account_id: account_id.to_string(),
            allocation_id: ids::resource_id("eipalloc"),
            instance_id: None,
            association_id: None,
            allocated_ms: time::unix_ms(),
            auto: false,
        };
        self.table.put(&a)?;
        Ok(Some(a))
    }

    /// Gives `instance_id` (of `account_id`) the lowest free address, unless
    /// it has one; None when the pool is exhausted.
    pub fn assign(
        &self,
        account_id: &str,
        instance_id: &str,
    ) -> Result<Option<Address>, StoreError> {
        let _w = self.lock();
        let held = self.table.list()?;
        if let Some(a) = held
            .iter()
            .find(|a| a.instance_id.as_deref() == Some(instance_id))
        {
            return Ok(Some(a.clone()));
        }
        let Some(ip) = self.free_address(&held) else {
            return Ok(None);
        };
        let a = Address {
            public_ip: ip.to_string(),
            account_id: account_id.to_string(),
            allocation_id: String::new(),
            instance_id: Some(instance_id.to_string()),
            association_id: None,
            allocated_ms: time::unix_ms(),
            auto: true,
        };
        self.table.put(&a)?;
        Ok(Some(a))
    }

    /// Every allocated address.
    pub fn list(&self) -> Result<Vec<Address>, StoreError> {
        self.table.list()
    }

    /// The account's elastic IPs.
    pub fn of(&self, account_id: &str) -> Result<Vec<Address>, StoreError> {
        Ok(self
            .table
            .list()?
            .into_iter()
            .filter(|a| a.account_id == account_id && !a.auto)
            .collect())
    }

    /// Frees `a`, associated with an instance that no longer has it: an
    /// address given at launch goes back to the pool, an elastic IP stays
    /// with its account.
    fn let_go(&self, mut a: Address) -> Result<(), StoreError> {
        if a.auto {
            self.table.delete(&a.public_ip)?;
        } else {
            a.instance_id = None;
            a.association_id = None;
            self.table.put(&a)?;
        }
        Ok(())
    }

    /// Associates `public_ip` with `instance_id`, moving it from any other
    /// instance and moving any other address off `instance_id`. Returns the
    /// new association id.
    pub fn associate(&self, public_ip: &str, instance_id: &str) -> Result<String, StoreError> {
        let _w = self.lock();
        for other in self.table.list()? {
            if other.public_ip != public_ip && other.instance_id.as_deref() == Some(instance_id) {
                self.let_go(other)?;
            }
        }
        let association = ids::resource_id("eipassoc");
        if let Some(mut a) = self.table.get(&public_ip.to_string())? {
            a.instance_id = Some(instance_id.to_string());
            a.association_id = Some(association.clone());
            self.table.put(&a)?;
        }
        Ok(association)
    }

    /// Disassociates `public_ip`.
    pub fn disassociate(&self, public_ip: &str) -> Result<(), StoreError> {
        let _w = self.lock();
        if let Some(mut a) = self.table.get(&public_ip.to_string())? {
            a.instance_id = None;
            a.association_id = None;
            self.table.put(&a)?;
        }
        Ok(())
    }

    /// Frees whatever address `instance_id` has (it was terminated).
    pub fn instance_gone(&self, instance_id: &str) -> Result<(), StoreError> {
        let _w = self.lock();
        for a in self.table.list()? {
            if a.instance_id.as_deref() == Some(instance_id) {
                self.let_go(a)?;
            }
        }
        Ok(())
    }

    /// The public address of each instance that has one.
    pub fn by_instance(&self) -> Result<std::collections::HashMap<String, String>, StoreError> {
        Ok(self
            .table
            .list()?
            .into_iter()
            .filter_map(|a| Some((a.instance_id?, a.public_ip)))
            .collect())
    }

    /// Returns `public_ip` to the pool.
    pub fn release(&self, public_ip: &str) -> Result<(), StoreError> {
        let _w = self.lock();
        self.table.delete(&public_ip.to_string()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_ranges_blocks_and_addresses() {
        let pool = parse_pool(&[
            "192.0.2.10-192.0.2.12".into(),
            "198.51.100.0/30".into(),
            "203.0.113.7".into(),
        ])
        .expect("pool");
        assert_eq!(pool.len(), 3 + 4 + 1);
        for bad in [
            "192.0.2.12-192.0.2.10",
            "10.0.0.0/8",
            "10.0.0.1/30",
            "x",
            "1.2.3.4-y",
        ] {
            assert_eq!(parse_pool(&[bad.into()]), Err(BadPool(bad.into())), "{bad}");
        }
    }

    #[test]
    fn addresses_are_allocated_moved_and_released() {
        let store = Store::temporary().expect("store");
        let pool = parse_pool(&["192.0.2.1-192.0.2.2".into()]).expect("pool");
        let a = Addresses::open(&store, pool).expect("open");
        let first = a.allocate("111").expect("alloc").expect("free");
        let second = a.allocate("222").expect("alloc").expect("free");
        assert_eq!(
            (first.public_ip.as_str(), second.public_ip.as_str()),
            ("192.0.2.1", "192.0.2.2")
        );
        assert_eq!(a.allocate("111").expect("alloc"), None, "pool exhausted");
        a.associate("192.0.2.1", "i-1").expect("assoc");
        a.associate("192.0.2.1", "i-2").expect("move");
        let now = a.of("111").expect("of");
        assert_eq!(now[0].instance_id.as_deref(), Some("i-2"));
        a.instance_gone("i-2").expect("gone");
        assert_eq!(a.of("111").expect("of")[0].instance_id, None);
        a.release("192.0.2.1").expect("release");
        assert_eq!(
            a.allocate("333").expect("alloc").expect("free").public_ip,
            "192.0.2.1"
        );
    }

    #[test]
    fn launch_addresses_go_back_to_the_pool() {
        let store = Store::temporary().expect("store");
        let pool = parse_pool(&["192.0.2.1-192.0.2.2".into()]).expect("pool");
        let a = Addresses::open(&store, pool).expect("open");
        let given = a.assign("111", "i-1").expect("assign").expect("free");
        assert!(given.auto && given.public_ip == "192.0.2.1");
        assert_eq!(
            a.assign("111", "i-1").expect("again").map(|g| g.public_ip),
            Some("192.0.2.1".into()),
            "one address per instance"
        );
        assert!(a.of("111").expect("of").is_empty(), "not an elastic IP");
        // An elastic IP replaces it; the launch address is free again.
        let eip = a.allocate("111").expect("alloc").expect("free");
        a.associate(&eip.public_ip, "i-1").expect("assoc");
        assert_eq!(
            a.by_instance().expect("map").get("i-1"),
            Some(&eip.public_ip)
        );
        assert_eq!(a.list().expect("list").len(), 1);
        let again = a.assign("111", "i-2").expect("assign").expect("free");
        assert_eq!(again.public_ip, "192.0.2.1");
        a.instance_gone("i-2").expect("gone");
        a.instance_gone("i-1").expect("gone");
        assert_eq!(a.list().expect("list").len(), 1, "the elastic IP stays");
        assert_eq!(a.of("111").expect("of")[0].instance_id, None);
    }
}
