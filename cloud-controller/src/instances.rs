//! Instance records, the cloud's state of record for instances, and the
//! instance types they are launched as.
//!
//! An instance is recorded `pending` before any tier below hears of it. From
//! then on its state is what its node reports (through its cluster), except
//! that the CLC remembers `terminated` instances for an hour, as EC2 shows
//! them, and that a stop or terminate in progress shows as `stopping` /
//! `shutting-down` until the node confirms.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Mutex, RwLock},
};

pub use common::instance::InstanceState;
use common::{
    store::{Record, Store, StoreError, Table},
    time,
};
use proto::{ClusterReport, InstanceState as WireState};
use serde::{Deserialize, Serialize};

/// How long terminated instances stay visible.
pub const TERMINATED_VISIBLE_MS: i64 = 60 * 60 * 1000;

/// An instance type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceType {
    pub name: String,
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Record for InstanceType {
    const TABLE: &'static str = "instance_types";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// Eucalyptus' 18 instance types: name, cores, memory MiB, disk GiB.
pub const SEED_TYPES: [(&str, u32, u64, u64); 18] = [
    ("t1.micro", 1, 256, 5),
    ("m1.small", 1, 256, 5),
    ("m1.medium", 1, 512, 10),
    ("c1.medium", 2, 512, 10),
    ("m1.large", 2, 512, 10),
    ("m1.xlarge", 2, 1024, 10),
    ("c1.xlarge", 2, 2048, 10),
    ("m2.xlarge", 2, 2048, 10),
    ("m3.xlarge", 4, 2048, 15),
    ("m2.2xlarge", 2, 4096, 30),
    ("m3.2xlarge", 4, 4096, 30),
    ("cc1.4xlarge", 8, 3072, 60),
    ("m2.4xlarge", 8, 4096, 60),
    ("hi1.4xlarge", 8, 6144, 120),
    ("cc2.8xlarge", 16, 6144, 120),
    ("cg1.4xlarge", 16, 12288, 200),
    ("cr1.8xlarge", 16, 16384, 240),
    ("hs1.8xlarge", 48, 119808, 24000),
];

/// One instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub reservation_id: String,
    pub account_id: String,
    pub image_id: String,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    pub instance_type: String,
    pub zone: String,
    pub cluster: String,
    pub node: String,
    /// Stored as EC2's name (`shutting-down`, ...).
    pub state: InstanceState,
    pub state_reason: String,
    pub launch_ms: i64,
    pub changed_ms: i64,
    pub key_name: Option<String>,
    /// Base64, as given.
    pub user_data: Option<String>,
    pub client_token: Option<String>,
    pub launch_index: u32,
    pub private_ip: String,
    pub mac: String,
    /// Ids of its security groups.
    pub security_groups: Vec<String>,
    /// The state a StopInstances or StartInstances asked for (`stopped`,
    /// `running`) until its node shows it: carried out again while it is
    /// not (the node was down, a tier restarted).
    #[serde(default)]
    pub desired: Option<InstanceState>,
    /// TerminateInstances refuses it while set (EC2's termination protection).
    #[serde(default)]
    pub disable_api_termination: bool,
    /// The root device (`/dev/sda1`) of an EBS-backed instance, whose
    /// root is a volume; none for an instance-store one.
    #[serde(default)]
    pub root_device: Option<String>,
    /// Detailed monitoring (MonitorInstances): its metrics every minute
    /// rather than every five.
    #[serde(default)]
    pub monitoring: bool,
}

impl Record for InstanceRecord {
    const TABLE: &'static str = "instances";
    /// 2: `security_groups` added.
    const SCHEMA: u32 = 2;
    type Key = String;
    fn key(&self) -> String {
        self.instance_id.clone()
    }
    fn migrate(from: u32, value: serde_json::Value) -> Result<serde_json::Value, String> {
        common::store::add_field(from, value, &[("security_groups", serde_json::json!([]))])
    }
}

impl InstanceRecord {
    /// EC2's state code.
    pub fn state_code(&self) -> u32 {
        self.state.code()
    }
}

/// A state as a node reports it.
/// The instance records, with indexes kept in memory beside them (every
/// record is read once, at start): by id, by account, by client token, by
/// security group and by private address in a cluster. Lookups cost what
/// they return, not every instance on record; every write goes to the
/// store first, durably, then to the indexes.
#[derive(Debug)]
pub struct Instances {
    table: Table<InstanceRecord>,
    types: Table<InstanceType>,
    /// The records and their indexes; its write lock also serializes
    /// read-modify-write of records (reports against calls).
    index: RwLock<Index>,
    /// When each cluster's records were last checked for instances its
    /// nodes no longer report (a scan of every record: not on every report).
    reconciled: Mutex<BTreeMap<String, i64>>,
}

/// A key of two strings.
type Pair = (String, String);

/// Every record, and the ids under each key that lookups use.
#[derive(Debug, Default)]
struct Index {
    records: BTreeMap<String, InstanceRecord>,
    by_account: HashMap<String, BTreeSet<String>>,
    by_token: HashMap<Pair, BTreeSet<String>>,
    by_group: HashMap<String, BTreeSet<String>>,
    by_address: HashMap<Pair, BTreeSet<String>>,
}

fn link<K: Eq + std::hash::Hash>(map: &mut HashMap<K, BTreeSet<String>>, key: K, id: &str) {
    map.entry(key).or_default().insert(id.to_string());
}

fn unlink<K: Eq + std::hash::Hash>(map: &mut HashMap<K, BTreeSet<String>>, key: &K, id: &str) {
    if let Some(ids) = map.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

impl Index {
    /// Its (account, client token) and (cluster, private address) keys.
    fn keys(r: &InstanceRecord) -> (Option<Pair>, Option<Pair>) {
        (
            r.client_token
                .as_ref()
                .map(|t| (r.account_id.clone(), t.clone())),
            (!r.private_ip.is_empty()).then(|| (r.cluster.clone(), r.private_ip.clone())),
        )
    }

    fn insert(&mut self, r: InstanceRecord) {
        self.remove(&r.instance_id);
        let id = r.instance_id.as_str();
        link(&mut self.by_account, r.account_id.clone(), id);
        let (token, address) = Self::keys(&r);
        if let Some(t) = token {
            link(&mut self.by_token, t, id);
        }
        if let Some(a) = address {
            link(&mut self.by_address, a, id);
        }
        for g in &r.security_groups {
            link(&mut self.by_group, g.clone(), id);
        }
        self.records.insert(r.instance_id.clone(), r);
    }

    fn remove(&mut self, id: &str) -> Option<InstanceRecord> {
        let r = self.records.remove(id)?;
        unlink(&mut self.by_account, &r.account_id, id);
        let (token, address) = Self::keys(&r);
        if let Some(t) = token {
            unlink(&mut self.by_token, &t, id);
        }
        if let Some(a) = address {
            unlink(&mut self.by_address, &a, id);
        }
        for g in &r.security_groups {
            unlink(&mut self.by_group, g, id);
        }
        Some(r)
    }

    fn all<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Vec<InstanceRecord> {
        ids.into_iter()
            .filter_map(|id| self.records.get(id).cloned())
            .collect()
    }
}

impl Instances {
    /// The records in `store`; seeds the instance types on first start.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        let table: Table<InstanceRecord> = store.table()?;
        let mut index = Index::default();
        for r in table.list()? {
            index.insert(r);
        }
        let this = Self {
            table,
            types: store.table()?,
            index: RwLock::new(index),
            reconciled: Mutex::new(BTreeMap::new()),
        };
        if this.types.is_empty() {
            for (name, cores, memory_mib, disk_gib) in SEED_TYPES {
                this.types.put(&InstanceType {
                    name: name.into(),
                    cores,
                    memory_mib,
                    disk_gib,
                })?;
            }
        }
        Ok(this)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `r` durably, then indexes it.
    fn save(&self, index: &mut Index, r: InstanceRecord) -> Result<(), StoreError> {
        self.table.put(&r)?;
        index.insert(r);
        Ok(())
    }

    /// Stores `records` durably in one write, then indexes them.
    fn save_all(&self, index: &mut Index, records: Vec<InstanceRecord>) -> Result<(), StoreError> {
        self.table.put_all(&records)?;
        for r in records {
            index.insert(r);
        }
        Ok(())
    }

    /// The instance type `name`.
    pub fn instance_type(&self, name: &str) -> Result<Option<InstanceType>, StoreError> {
        self.types.get(&name.to_string())
    }

    /// Every instance type, by name.
    pub fn instance_types(&self) -> Result<Vec<InstanceType>, StoreError> {
        self.types.list()
    }

    /// Records new instances (durably, all of them).
    pub fn create(&self, records: &[InstanceRecord]) -> Result<(), StoreError> {
        let mut index = self.write();
        self.save_all(&mut index, records.to_vec())
    }

    /// Forgets instance `id` (a launch that never happened).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let mut index = self.write();
        self.table.delete(&id.to_string())?;
        index.remove(id);
        Ok(())
    }

    /// The instance `id`.
    pub fn get(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        Ok(self.read().records.get(id).cloned())
    }

    /// The instances of account `account_id`, by id.
    pub fn of_account(&self, account_id: &str) -> Vec<InstanceRecord> {
        let index = self.read();
        index.all(index.by_account.get(account_id).into_iter().flatten())
    }

    /// The instances account `account_id` launched with client token `token`.
    pub fn by_client_token(&self, account_id: &str, token: &str) -> Vec<InstanceRecord> {
        let index = self.read();
        let key = (account_id.to_string(), token.to_string());
        index.all(index.by_token.get(&key).into_iter().flatten())
    }

    /// The instances in any of `groups` (security group ids), by id.
    pub fn in_groups<'a>(
        &self,
        groups: impl IntoIterator<Item = &'a String>,
    ) -> Vec<InstanceRecord> {
        let index = self.read();
        let ids: BTreeSet<&String> = groups
            .into_iter()
            .filter_map(|g| index.by_group.get(g))
            .flatten()
            .collect();
        index.all(ids)
    }

    /// The instances holding private address `ip` in `cluster`.
    pub fn at_address(&self, cluster: &str, ip: &str) -> Vec<InstanceRecord> {
        let index = self.read();
        let key = (cluster.to_string(), ip.to_string());
        index.all(index.by_address.get(&key).into_iter().flatten())
    }

    /// Every instance, terminated ones past their hour dropped.
    pub fn list(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let now = time::unix_ms();
        let expired = |r: &InstanceRecord| {
            r.state == InstanceState::Terminated && now - r.changed_ms >= TERMINATED_VISIBLE_MS
        };
        let (live, gone): (Vec<_>, Vec<_>) = self
            .read()
            .records
            .values()
            .cloned()
            .partition(|r| !expired(r));
        if !gone.is_empty() {
            let mut index = self.write();
            for r in gone {
                self.table.delete(&r.instance_id)?;
                index.remove(&r.instance_id);
            }
        }
        Ok(live)
    }

    /// Sets the state of `id` (from a call's answer), unless it is already
    /// terminated.
    pub fn set_state(
        &self,
        id: &str,
        state: InstanceState,
        reason: &str,
        node: Option<&str>,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        self.update_live(id, |r| {
            if let Some(n) = node.filter(|n| !n.is_empty()) {
                r.node = n.to_string();
            }
            if r.state != state {
                r.state = state;
                r.state_reason = reason.to_string();
                r.changed_ms = time::unix_ms();
            }
        })
    }

    /// Changes `id`'s record with `f` and stores it, unless it is
    /// terminated (then it is returned as it is).
    fn update_live(
        &self,
        id: &str,
        f: impl FnOnce(&mut InstanceRecord),
    ) -> Result<Option<InstanceRecord>, StoreError> {
        let mut index = self.write();
        let Some(mut r) = index.records.get(id).cloned() else {
            return Ok(None);
        };
        if r.state == InstanceState::Terminated {
            return Ok(Some(r));
        }
        f(&mut r);
        self.save(&mut index, r.clone())?;
        Ok(Some(r))
    }

    /// Records a stop or start: the state it shows now and the one its
    /// node must reach.
    pub fn request(
        &self,
        id: &str,
        state: InstanceState,
        reason: &str,
        desired: InstanceState,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        self.update_live(id, |r| {
            r.state = state;
            r.state_reason = reason.to_string();
            r.changed_ms = time::unix_ms();
            r.desired = Some(desired);
        })
    }

    /// Drops what a stop or start asked for (it cannot be done).
    pub fn forget_request(&self, id: &str) -> Result<(), StoreError> {
        let mut index = self.write();
        if let Some(mut r) = index.records.get(id).cloned() {
            if r.desired.take().is_some() {
                self.save(&mut index, r)?;
            }
        }
        Ok(())
    }

    /// Records the address and MAC the cluster gave `id`.
    pub fn set_network(&self, id: &str, private_ip: &str, mac: &str) -> Result<(), StoreError> {
        let mut index = self.write();
        if let Some(mut r) = index.records.get(id).cloned() {
            r.private_ip = private_ip.to_string();
            r.mac = mac.to_string();
            self.save(&mut index, r)?;
        }
        Ok(())
    }

    /// Records where each instance was placed: (id, node, private
    /// address, MAC), in one write.
    pub fn placed(&self, placements: &[(&str, &str, &str, &str)]) -> Result<(), StoreError> {
        let mut index = self.write();
        let mut changed = Vec::new();
        for (id, node, ip, mac) in placements {
            if let Some(mut r) = index.records.get(*id).cloned() {
                if r.state == InstanceState::Terminated {
                    continue;
                }
                r.node = node.to_string();
                r.private_ip = ip.to_string();
                r.mac = mac.to_string();
                changed.push(r);
            }
        }
        self.save_all(&mut index, changed)
    }

    /// Sets or clears `id`'s termination protection.
    pub fn set_termination_protection(&self, id: &str, on: bool) -> Result<(), StoreError> {
        self.update_live(id, |r| r.disable_api_termination = on)
            .map(|_| ())
    }

    /// Turns `id`'s detailed monitoring on or off.
    pub fn set_monitoring(&self, id: &str, on: bool) -> Result<(), StoreError> {
        self.update_live(id, |r| r.monitoring = on).map(|_| ())
    }

    /// Changes the type (and so the size) of `id`.
    pub fn set_type(&self, id: &str, instance_type: &str) -> Result<(), StoreError> {
        let mut index = self.write();
        if let Some(mut r) = index.records.get(id).cloned() {
            r.instance_type = instance_type.to_string();
            self.save(&mut index, r)?;
        }
        Ok(())
    }

    /// Takes the states a cluster reports for its instances: `report` is
    /// whole or a delta (only what changed). Every [`RECONCILE_EVERY_MS`]
    /// the cluster's whole report (from `whole`) is compared instead, which
    /// also finds the records its nodes no longer have.
    pub fn observe(
        &self,
        report: &ClusterReport,
        whole: impl FnOnce() -> Option<ClusterReport>,
    ) -> Result<(), StoreError> {
        let now = time::unix_ms();
        let due = {
            let mut last = self.reconciled.lock().unwrap_or_else(|p| p.into_inner());
            let at = last.entry(report.cluster_name.clone()).or_insert(0);
            let due = now - *at >= RECONCILE_EVERY_MS;
            if due {
                *at = now;
            }
            due
        };
        match due.then(whole).flatten() {
            Some(whole) => self.take_states(&whole, true),
            None => self.take_states(report, false),
        }
    }

    /// Takes the states of `report`. An instance a call has put in
    /// `stopping` or `shutting-down` keeps that until the node shows it
    /// stopped or gone, and one a start is still owed to stays `pending`
    /// while its node shows it stopped. With `reconcile` (the report is
    /// whole), a record a healthy node no longer has is terminated.
    fn take_states(&self, report: &ClusterReport, reconcile: bool) -> Result<(), StoreError> {
        // What each node says, borrowed from the report: a report names
        // every instance of the cluster, and most of them have not changed.
        let mut reported: HashMap<&str, (InstanceState, &proto::InstanceStatus, &str)> =
            HashMap::new();
        for node in &report.nodes {
            for s in &node.instances {
                let state = WireState::try_from(s.state).unwrap_or(WireState::Pending);
                reported.insert(
                    s.instance_id.as_str(),
                    (InstanceState::from(state), s, node.name.as_str()),
                );
            }
        }
        // The changes, found under the read lock; records are cloned only
        // when they change.
        use InstanceState::*;
        let changes = |index: &Index| -> Vec<InstanceRecord> {
            let mut changed = Vec::new();
            for (id, (state, s, node)) in &reported {
                let Some(r) = index.records.get(*id) else {
                    continue;
                };
                if r.cluster != report.cluster_name || r.state == Terminated {
                    continue;
                }
                let keep = match (r.state, *state) {
                    (Stopping, Running) | (ShuttingDown, _) => true,
                    (Pending, Stopped) => r.desired == Some(Running),
                    _ => false,
                };
                let confirmed = r.desired == Some(*state);
                if !confirmed
                    && (keep
                        || (r.state == *state
                            && r.node == *node
                            && r.private_ip == s.private_ip
                            && r.mac == s.mac))
                {
                    continue;
                }
                let mut r = r.clone();
                if confirmed {
                    r.desired = None;
                }
                if r.state != *state {
                    tracing::info!(instance_id = %id, from = %r.state, to = %state, "instance state");
                    r.state = *state;
                    r.state_reason = s.reason.clone();
                    r.changed_ms = time::unix_ms();
                }
                r.node = node.to_string();
                if !s.private_ip.is_empty() {
                    r.private_ip = s.private_ip.clone();
                }
                if !s.mac.is_empty() {
                    r.mac = s.mac.clone();
                }
                changed.push(r);
            }
            changed
        };
        let now = time::unix_ms();
        if !reconcile && changes(&self.read()).is_empty() {
            return Ok(());
        }
        let mut index = self.write();
        // Found again under the write lock: a call may have changed a
        // record meanwhile.
        let changed = changes(&index);
        // Every change of the report in one write.
        self.save_all(&mut index, changed)?;
        if !reconcile {
            return Ok(());
        }
        let seen: std::collections::HashSet<&str> = reported.keys().copied().collect();
        // A healthy node reports every instance it has: a record on it that
        // it no longer reports (past a grace for launches in flight) is
        // gone below the CLC, and so terminated here too.
        let healthy: std::collections::HashSet<&str> = report
            .nodes
            .iter()
            .filter(|n| n.state == proto::ServiceState::Enabled as i32)
            .map(|n| n.name.as_str())
            .collect();
        let gone: Vec<InstanceRecord> = index
            .records
            .values()
            .filter(|r| {
                r.cluster == report.cluster_name
                    && r.state != InstanceState::Terminated
                    && healthy.contains(r.node.as_str())
                    && !seen.contains(r.instance_id.as_str())
                    && now - r.changed_ms >= RECONCILE_GRACE_MS
            })
            .cloned()
            .collect();
        for mut r in gone {
            tracing::warn!(instance_id = %r.instance_id, node = %r.node, from = %r.state, "the node no longer has the instance: terminated");
            r.state = InstanceState::Terminated;
            r.state_reason = "Server.InternalError: the node no longer has the instance".into();
            r.changed_ms = now;
            self.save(&mut index, r)?;
        }
        Ok(())
    }
}

/// How long a record may go unreported by its healthy node before it is
/// taken for gone (a launch on its way to the node is not reported yet).
pub const RECONCILE_GRACE_MS: i64 = 30_000;

/// How often a cluster's records are checked against its nodes' reports.
const RECONCILE_EVERY_MS: i64 = 5_000;

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{InstanceStatus, NodeView};

    fn record(id: &str) -> InstanceRecord {
        InstanceRecord {
            instance_id: id.into(),
            reservation_id: "r-1".into(),
            account_id: "111".into(),
            image_id: "ami-1".into(),
            kernel_id: None,
            ramdisk_id: None,
            instance_type: "m1.small".into(),
            zone: "zone-1".into(),
            cluster: "cluster-1".into(),
            node: String::new(),
            state: InstanceState::Pending,
            state_reason: String::new(),
            launch_ms: 0,
            changed_ms: time::unix_ms(),
            key_name: None,
            user_data: None,
            client_token: None,
            launch_index: 0,
            private_ip: String::new(),
            mac: String::new(),
            security_groups: Vec::new(),
            desired: None,
            disable_api_termination: false,
            root_device: None,
            monitoring: false,
        }
    }

    fn report(id: &str, state: WireState) -> ClusterReport {
        ClusterReport {
            cluster_name: "cluster-1".into(),
            nodes: vec![NodeView {
                name: "nc-1".into(),
                instances: vec![InstanceStatus {
                    instance_id: id.into(),
                    state: state as i32,
                    node: "nc-1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn types_are_seeded_and_reports_drive_states() {
        let store = Store::temporary().expect("store");
        let instances = Instances::open(&store).expect("open");
        assert_eq!(instances.instance_types().expect("types").len(), 18);
        let small = instances
            .instance_type("m1.small")
            .expect("get")
            .expect("there");
        assert_eq!((small.cores, small.memory_mib, small.disk_gib), (1, 256, 5));
        instances.create(&[record("i-1")]).expect("create");
        instances
            .observe(&report("i-1", WireState::Running), || None)
            .expect("observe");
        let r = instances.get("i-1").expect("get").expect("there");
        assert_eq!(
            (r.state, r.node.as_str(), r.state_code()),
            (InstanceState::Running, "nc-1", 16)
        );
        // A stop in progress is not undone by a report from before it.
        instances
            .set_state("i-1", InstanceState::Stopping, "", None)
            .expect("stopping");
        instances
            .observe(&report("i-1", WireState::Running), || None)
            .expect("observe");
        assert_eq!(
            instances.get("i-1").expect("get").expect("there").state,
            InstanceState::Stopping
        );
        instances
            .observe(&report("i-1", WireState::Stopped), || None)
            .expect("observe");
        assert_eq!(
            instances.get("i-1").expect("get").expect("there").state,
            InstanceState::Stopped
        );
        instances
            .set_state("i-1", InstanceState::Terminated, "", None)
            .expect("terminated");
        instances
            .observe(&report("i-1", WireState::Running), || None)
            .expect("observe");
        assert_eq!(
            instances.get("i-1").expect("get").expect("there").state,
            InstanceState::Terminated
        );
        assert_eq!(
            instances.list().expect("list").len(),
            1,
            "visible for an hour"
        );
    }
}
