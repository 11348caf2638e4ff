//! The CC's ledger of what it placed where, durable in the store, with
//! what placement reads kept in memory beside it: the placements by id,
//! each node's use and the private addresses taken. A placement costs what
//! it places, not every instance in the cluster.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::RwLock,
};

use common::store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};

/// An instance this CC placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placed {
    pub instance_id: String,
    pub node: String,
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// Its private address; empty without a private network.
    pub private_ip: String,
}

impl Record for Placed {
    const TABLE: &'static str = "placed";
    /// 2: `private_ip` added.
    const SCHEMA: u32 = 2;
    type Key = String;
    fn key(&self) -> String {
        self.instance_id.clone()
    }
    fn migrate(from: u32, value: serde_json::Value) -> Result<serde_json::Value, String> {
        common::store::add_field(from, value, &[("private_ip", serde_json::Value::from(""))])
    }
}

/// What a node's placed instances hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub instances: usize,
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

#[derive(Debug, Default)]
struct Index {
    placed: BTreeMap<String, Placed>,
    by_node: HashMap<String, Usage>,
    ips: BTreeSet<Ipv4Addr>,
}

impl Index {
    fn insert(&mut self, p: Placed) {
        self.remove(&p.instance_id);
        let u = self.by_node.entry(p.node.clone()).or_default();
        u.instances += 1;
        u.cores += p.cores;
        u.memory_mib += p.memory_mib;
        u.disk_gib += p.disk_gib;
        if let Ok(ip) = p.private_ip.parse() {
            self.ips.insert(ip);
        }
        self.placed.insert(p.instance_id.clone(), p);
    }

    fn remove(&mut self, id: &str) {
        let Some(p) = self.placed.remove(id) else {
            return;
        };
        if let Some(u) = self.by_node.get_mut(&p.node) {
            u.instances -= 1;
            u.cores -= p.cores;
            u.memory_mib -= p.memory_mib;
            u.disk_gib -= p.disk_gib;
            if u.instances == 0 {
                self.by_node.remove(&p.node);
            }
        }
        // Two placements never share an address.
        if let Ok(ip) = p.private_ip.parse::<Ipv4Addr>() {
            self.ips.remove(&ip);
        }
    }
}

/// The ledger.
#[derive(Debug)]
pub struct Ledger {
    table: Table<Placed>,
    index: RwLock<Index>,
}

impl Ledger {
    /// The ledger in `store` (read once, here).
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        let table: Table<Placed> = store.table()?;
        let mut index = Index::default();
        for p in table.list()? {
            index.insert(p);
        }
        Ok(Self {
            table,
            index: RwLock::new(index),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The placement of instance `id`.
    pub fn get(&self, id: &str) -> Option<Placed> {
        self.read().placed.get(id).cloned()
    }

    /// True when instance `id` is placed.
    pub fn contains(&self, id: &str) -> bool {
        self.read().placed.contains_key(id)
    }

    /// Records `p` durably.
    pub fn put(&self, p: &Placed) -> Result<(), StoreError> {
        let mut index = self.write();
        self.table.put(p)?;
        index.insert(p.clone());
        Ok(())
    }

    /// Records every placement of `all` durably, in one write.
    pub fn put_all(&self, all: &[Placed]) -> Result<(), StoreError> {
        let mut index = self.write();
        self.table.put_all(all)?;
        for p in all {
            index.insert(p.clone());
        }
        Ok(())
    }

    /// Forgets the placement of `id` durably; returns it.
    pub fn delete(&self, id: &str) -> Result<Option<Placed>, StoreError> {
        let mut index = self.write();
        let old = self.table.delete(&id.to_string())?;
        index.remove(id);
        Ok(old)
    }

    /// Every placement, by instance id.
    pub fn list(&self) -> Vec<Placed> {
        self.read().placed.values().cloned().collect()
    }

    /// What node `node`'s placed instances hold.
    pub fn usage(&self, node: &str) -> Usage {
        self.read().by_node.get(node).copied().unwrap_or_default()
    }

    /// The instances placed on `node`.
    pub fn on(&self, node: &str) -> Vec<String> {
        self.read()
            .placed
            .values()
            .filter(|p| p.node == node)
            .map(|p| p.instance_id.clone())
            .collect()
    }

    /// The private addresses taken.
    pub fn used_ips(&self) -> BTreeSet<Ipv4Addr> {
        self.read().ips.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(id: &str, node: &str, ip: &str) -> Placed {
        Placed {
            instance_id: id.into(),
            node: node.into(),
            cores: 2,
            memory_mib: 512,
            disk_gib: 5,
            private_ip: ip.into(),
        }
    }

    #[test]
    fn the_indexes_follow_writes_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let store = Store::open(dir.path()).expect("store");
            let ledger = Ledger::open(&store).expect("ledger");
            ledger.put(&placed("i-1", "nc-1", "10.0.0.2")).expect("put");
            ledger.put(&placed("i-2", "nc-1", "10.0.0.3")).expect("put");
            ledger.put(&placed("i-3", "nc-2", "")).expect("put");
            assert_eq!(ledger.usage("nc-1").cores, 4);
            assert_eq!(ledger.usage("nc-1").instances, 2);
            // Moving a placement moves its use.
            ledger.put(&placed("i-2", "nc-2", "10.0.0.3")).expect("put");
            assert_eq!(ledger.usage("nc-1").cores, 2);
            assert_eq!(ledger.usage("nc-2").memory_mib, 1024);
            ledger.delete("i-1").expect("delete");
            assert_eq!(ledger.usage("nc-1"), Usage::default());
            assert_eq!(
                ledger.used_ips().into_iter().collect::<Vec<_>>(),
                vec![Ipv4Addr::new(10, 0, 0, 3)]
            );
        }
        let store = Store::open(dir.path()).expect("store");
        let ledger = Ledger::open(&store).expect("ledger");
        assert!(!ledger.contains("i-1"));
        assert_eq!(ledger.get("i-2").expect("i-2").node, "nc-2");
        assert_eq!(ledger.usage("nc-2").instances, 2);
        assert_eq!(ledger.on("nc-2").len(), 2);
    }
}
