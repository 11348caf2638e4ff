//! An in-memory cluster for unit tests of the core: nodes with room for a
//! number of cores, private addresses handed out in order, and a log of
//! every call, so launch, quota, placement-failure and firewall logic can
//! be tested without processes.

use std::{collections::BTreeMap, sync::Mutex};

use proto::{GroupMembers, InstanceFirewall, InstanceSpec};

use super::cluster::{ClusterApi, ClusterError, ClusterInfo, NotStarted, Placement, Power};
use super::storage::{SnapshotProgress, StorageApi, StorageError};
use crate::instances::InstanceType;

/// One fake cluster (zone `zone-1`, named `cluster-1`).
#[derive(Debug, Default)]
pub struct FakeCluster {
    state: Mutex<FakeState>,
}

/// What the fake holds and has been told.
#[derive(Debug, Default, Clone)]
pub struct FakeState {
    /// Node name to cores free.
    pub free_cores: BTreeMap<String, u32>,
    /// Specs placed and not started yet, by instance id.
    pub kept: BTreeMap<String, InstanceSpec>,
    /// Instances started, with the firewall each started with.
    pub started: BTreeMap<String, Option<InstanceFirewall>>,
    /// Every firewall pushed, in order.
    pub pushed: Vec<InstanceFirewall>,
    /// Instances terminated.
    pub terminated: Vec<String>,
    /// Volumes attached: (instance id, volume id).
    pub attached: Vec<(String, String)>,
    /// The latest membership pushed of each group, by group id.
    pub members: BTreeMap<String, Vec<String>>,
    /// Instance ids of every spec `place` was sent, per call.
    pub place_calls: Vec<Vec<String>>,
    /// False to answer every call as a cluster that is down.
    pub down: bool,
    next_ip: u32,
}

impl FakeCluster {
    /// A cluster of `nodes` nodes with `cores` cores each.
    pub fn new(nodes: usize, cores: u32) -> Self {
        let fake = Self::default();
        {
            let mut s = fake.lock();
            for n in 0..nodes {
                s.free_cores.insert(format!("node-{n}"), cores);
            }
            s.next_ip = 10;
        }
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the fake holds now.
    pub fn state(&self) -> FakeState {
        self.lock().clone()
    }

    /// Makes the cluster answer as down (or up again).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    fn check(&self, cluster: &str) -> Result<(), ClusterError> {
        if cluster != "cluster-1" {
            return Err(ClusterError::Unknown(cluster.to_string()));
        }
        if self.lock().down {
            return Err(ClusterError::Failed {
                message: format!("cluster {cluster}: the cluster did not answer"),
                retry: true,
            });
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ClusterApi for FakeCluster {
    fn clusters(&self) -> Vec<ClusterInfo> {
        vec![ClusterInfo {
            name: "cluster-1".into(),
            zone: "zone-1".into(),
            enabled: !self.lock().down,
        }]
    }

    async fn place(
        &self,
        cluster: &str,
        specs: Vec<InstanceSpec>,
        _walrus: &str,
    ) -> Result<Vec<Placement>, ClusterError> {
        self.check(cluster)?;
        let mut s = self.lock();
        s.place_calls
            .push(specs.iter().map(|p| p.instance_id.clone()).collect());
        let mut free = s.free_cores.clone();
        let mut chosen = Vec::new();
        for spec in &specs {
            let node = free
                .iter()
                .filter(|(_, c)| **c >= spec.cores)
                .max_by_key(|(_, c)| **c)
                .map(|(n, _)| n.clone())
                .ok_or_else(|| {
                    ClusterError::Capacity(format!(
                        "no node has room for {} instance(s) of {} core(s)",
                        specs.len(),
                        spec.cores
                    ))
                })?;
            if let Some(c) = free.get_mut(&node) {
                *c -= spec.cores;
            }
            chosen.push(node);
        }
        s.free_cores = free;
        let mut out = Vec::new();
        for (spec, node) in specs.into_iter().zip(chosen) {
            let ip = format!("10.0.0.{}", s.next_ip);
            s.next_ip += 1;
            out.push(Placement {
                instance_id: spec.instance_id.clone(),
                node,
                private_ip: ip,
                mac: "d0:0d:00:00:00:01".into(),
            });
            s.kept.insert(spec.instance_id.clone(), spec);
        }
        Ok(out)
    }

    async fn run(
        &self,
        cluster: &str,
        starts: Vec<(String, Option<InstanceFirewall>)>,
        _walrus: &str,
    ) -> Result<Vec<NotStarted>, ClusterError> {
        self.check(cluster)?;
        let mut s = self.lock();
        let mut failed = Vec::new();
        for (id, firewall) in starts {
            if s.kept.remove(&id).is_some() {
                s.started.insert(id, firewall);
            } else {
                failed.push(NotStarted {
                    instance_id: id,
                    reason: "Server.InternalError: never placed".into(),
                });
            }
        }
        Ok(failed)
    }

    async fn terminate(&self, cluster: &str, id: &str) -> Result<(), ClusterError> {
        self.check(cluster)?;
        self.lock().terminated.push(id.to_string());
        Ok(())
    }

    async fn power(&self, cluster: &str, _id: &str, _what: Power) -> Result<(), ClusterError> {
        self.check(cluster)
    }

    /// Echoes what is typed, as a terminal would.
    async fn open_console(
        &self,
        cluster: &str,
        _id: &str,
        mut typed: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, ClusterError> {
        self.check(cluster)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(data) = typed.recv().await {
                if tx.send(data).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    async fn console_output(&self, cluster: &str, _id: &str) -> Result<Vec<u8>, ClusterError> {
        self.check(cluster)?;
        Ok(Vec::new())
    }

    async fn set_firewalls(
        &self,
        cluster: &str,
        firewalls: Vec<InstanceFirewall>,
        groups: Vec<GroupMembers>,
    ) -> Result<u32, ClusterError> {
        self.check(cluster)?;
        let n = firewalls.len() as u32;
        let mut s = self.lock();
        s.pushed.extend(firewalls);
        for g in groups {
            s.members.insert(g.group_id, g.addresses);
        }
        Ok(n)
    }

    async fn resize(
        &self,
        cluster: &str,
        _id: &str,
        _t: &InstanceType,
    ) -> Result<(), ClusterError> {
        self.check(cluster)
    }

    async fn stop_guest(&self, cluster: &str, _node: &str, _id: &str) -> Result<(), ClusterError> {
        self.check(cluster)
    }

    async fn set_node_disabled(
        &self,
        cluster: &str,
        _node: &str,
        _disabled: bool,
    ) -> Result<(), ClusterError> {
        self.check(cluster)
    }

    async fn plan_migration(
        &self,
        cluster: &str,
        _id: &str,
        destinations: &[String],
    ) -> Result<String, ClusterError> {
        self.check(cluster)?;
        Ok(destinations
            .first()
            .cloned()
            .unwrap_or_else(|| "fake-node-2".into()))
    }

    async fn migrate(
        &self,
        cluster: &str,
        spec: InstanceSpec,
        _walrus: &str,
        destinations: &[String],
    ) -> Result<crate::core::migrate::Migrated, ClusterError> {
        self.check(cluster)?;
        Ok(crate::core::migrate::Migrated {
            instance_id: spec.instance_id,
            source: "fake-node".into(),
            destination: destinations
                .first()
                .cloned()
                .unwrap_or_else(|| "fake-node-2".into()),
            seconds: 0.0,
        })
    }

    async fn attach_volume(
        &self,
        cluster: &str,
        id: &str,
        volume_id: &str,
        _connection: &str,
        root: bool,
    ) -> Result<String, ClusterError> {
        self.check(cluster)?;
        let mut s = self.lock();
        let n = s.attached.iter().filter(|(i, _)| i == id).count();
        s.attached.push((id.to_string(), volume_id.to_string()));
        if root {
            return Ok("vda".into());
        }
        Ok(format!("vd{}", (b'b' + n as u8) as char))
    }

    async fn detach_volume(
        &self,
        cluster: &str,
        id: &str,
        volume_id: &str,
        _force: bool,
    ) -> Result<(), ClusterError> {
        self.check(cluster)?;
        self.lock()
            .attached
            .retain(|(i, v)| !(i == id && v == volume_id));
        Ok(())
    }
}

/// A cloud over a temporary store and a [`FakeCluster`], with an image
/// (`ami-00000001`, owned by the system account) and a known Walrus.
#[cfg(test)]
pub(crate) fn test_cloud(fake: std::sync::Arc<FakeCluster>) -> (super::Cloud, tempfile::TempDir) {
    use common::{pki::Role, store::Store};

    use crate::registry::{Registry, ServiceRecord};

    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, common::auth::ClusterSecret::generate()).expect("secret");
    let pki = dir.path().join("pki");
    common::pki::init_ca(&pki, false).expect("ca");
    let who = common::pki::Identity {
        role: Role::Clc,
        name: "clc".into(),
    };
    common::pki::issue_in(&pki, &who).expect("certificate");
    let trust = common::rpc::Trust::load(&secret, &common::pki::TlsFiles::in_dir(&pki), &who)
        .expect("trust");
    let store = Store::open(&dir.path().join("db")).expect("store");
    let service = |kind: &str, name: &str| ServiceRecord {
        service_type: kind.into(),
        name: name.into(),
        partition: String::new(),
        endpoint: "127.0.0.1:1".into(),
        public_endpoint: String::new(),
        first_seen_ms: 0,
    };
    store
        .table::<ServiceRecord>()
        .expect("services")
        .put(&service(crate::registry::WALRUS, "walrus"))
        .expect("walrus");
    let registry =
        Registry::open(&store, service(crate::registry::CLOUD, "clc")).expect("registry");
    let accounts = crate::accounts::Accounts::open(&store, "eucalyptus").expect("accounts");
    accounts.bootstrap().expect("system account");
    let cloud = super::Cloud::open(
        &store,
        super::Parts {
            registry: std::sync::Arc::new(registry),
            accounts,
            trust,
            public_ips: Default::default(),
            settings: super::Settings {
                region: "gumtree".into(),
                ..Default::default()
            },
            clusters: Some(fake),
            storage: Some(std::sync::Arc::new(FakeStorage::default())),
            metrics: std::sync::Arc::new(
                metric_store::MetricStore::temporary().expect("metric store"),
            ),
        },
    )
    .expect("cloud");
    let owner = cloud.accounts.find("eucalyptus").expect("system account");
    cloud
        .images
        .register(&crate::images::Image {
            image_id: "ami-00000001".into(),
            kind: crate::images::ImageKind::Machine,
            name: "tiny".into(),
            description: String::new(),
            owner_id: owner.account_id,
            bucket: "images".into(),
            key: "tiny.img".into(),
            sha256: String::new(),
            size: 1,
            architecture: "x86_64".into(),
            kernel_id: None,
            ramdisk_id: None,
            root_device_name: None,
            virtualization_type: "hvm".into(),
            block_devices: Vec::new(),
            state: Default::default(),
            state_reason: String::new(),
            public: true,
            launch_permissions: Default::default(),
            created_ms: 0,
        })
        .expect("image");
    (cloud, dir)
}

/// The system account's id in a [`test_cloud`].
#[cfg(test)]
pub(crate) fn system_account(cloud: &super::Cloud) -> String {
    cloud
        .accounts
        .find("eucalyptus")
        .expect("the system account")
        .account_id
}

/// Launches `count` instances of the test image for `account_id`.
#[cfg(test)]
pub(crate) async fn launch(
    cloud: &super::Cloud,
    account_id: &str,
    count: usize,
    more: super::launch::LaunchRequest,
) -> super::launch::Launched {
    cloud
        .launch(super::launch::LaunchRequest {
            account_id: account_id.to_string(),
            image_id: "ami-00000001".into(),
            min: count,
            max: count,
            ..more
        })
        .await
        .expect("launch")
}

/// An in-memory storage controller for zone `zone-1`: volumes by id with
/// their sizes.
#[derive(Debug, Default)]
pub struct FakeStorage {
    state: Mutex<FakeStorageState>,
}

#[derive(Debug, Default)]
struct FakeStorageState {
    volumes: BTreeMap<String, u64>,
    /// Volume id to the node it is exported to.
    exports: BTreeMap<String, String>,
    /// Snapshot id to its volume's size.
    snapshots: BTreeMap<String, u64>,
    /// No SC serves the zone.
    down: bool,
    /// The SC serves the zone but its calls fail.
    failing: bool,
}

impl FakeStorage {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeStorageState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The volumes exported, with the node each is exported to.
    pub fn exports(&self) -> Vec<(String, String)> {
        self.lock().exports.clone().into_iter().collect()
    }

    /// The volumes held, by id, with their sizes in GiB.
    pub fn volumes(&self) -> Vec<(String, u64)> {
        self.lock().volumes.clone().into_iter().collect()
    }

    /// As if no SC served the zone (or one did again).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// As if the SC's calls failed (or worked again).
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    fn call(
        &self,
        zone: &str,
    ) -> Result<std::sync::MutexGuard<'_, FakeStorageState>, StorageError> {
        let s = self.lock();
        if s.down || zone != "zone-1" {
            return Err(StorageError::NoController(zone.to_string()));
        }
        if s.failing {
            return Err(StorageError::Failed(
                "the storage controller is failing".into(),
            ));
        }
        Ok(s)
    }
}

#[tonic::async_trait]
impl StorageApi for FakeStorage {
    fn serves(&self, zone: &str) -> bool {
        let s = self.lock();
        !s.down && zone == "zone-1"
    }

    async fn create_volume(
        &self,
        zone: &str,
        id: &str,
        size_gib: u64,
        from: Option<(&str, &str)>,
    ) -> Result<String, StorageError> {
        let mut s = self.call(zone)?;
        if let Some((snap, _)) = from {
            if !s.snapshots.contains_key(snap) {
                return Err(StorageError::Refused(format!("no snapshot {snap}")));
            }
        }
        s.volumes.insert(id.to_string(), size_gib);
        Ok("available".into())
    }

    async fn create_snapshot(
        &self,
        zone: &str,
        id: &str,
        volume_id: &str,
        _walrus: &str,
    ) -> Result<SnapshotProgress, StorageError> {
        let mut s = self.call(zone)?;
        let size = *s
            .volumes
            .get(volume_id)
            .ok_or_else(|| StorageError::Refused(format!("no volume {volume_id}")))?;
        s.snapshots.insert(id.to_string(), size);
        Ok(SnapshotProgress {
            state: "completed".into(),
            progress: "100%".into(),
            reason: String::new(),
            volume_size_gib: size,
            stored_bytes: 0,
        })
    }

    async fn delete_snapshot(
        &self,
        zone: &str,
        id: &str,
        _walrus: &str,
    ) -> Result<(), StorageError> {
        self.call(zone)?.snapshots.remove(id);
        Ok(())
    }

    async fn delete_volume(&self, zone: &str, id: &str) -> Result<(), StorageError> {
        let mut s = self.call(zone)?;
        if s.exports.contains_key(id) {
            return Err(StorageError::Refused(format!("{id} is exported")));
        }
        s.volumes.remove(id);
        Ok(())
    }

    async fn export(&self, zone: &str, id: &str, node: &str) -> Result<String, StorageError> {
        let mut s = self.call(zone)?;
        if !s.volumes.contains_key(id) {
            return Err(StorageError::Refused(format!("no volume {id}")));
        }
        s.exports.insert(id.to_string(), node.to_string());
        Ok(format!("nbd+tls://127.0.0.1:1/{id}"))
    }

    async fn export_also(&self, zone: &str, id: &str, _node: &str) -> Result<String, StorageError> {
        let s = self.call(zone)?;
        if !s.exports.contains_key(id) {
            return Err(StorageError::Refused(format!("{id} is not exported")));
        }
        Ok(format!("nbd+tls://127.0.0.1:1/{id}"))
    }

    async fn unexport(&self, zone: &str, id: &str, _node: &str) -> Result<(), StorageError> {
        self.call(zone)?.exports.remove(id);
        Ok(())
    }
}

/// A completed snapshot of a new volume of `size_gib` GiB of `account_id`
/// (the cloud's storage must be a [`FakeStorage`]).
#[cfg(test)]
pub(crate) async fn completed_snapshot(
    cloud: &super::Cloud,
    account_id: &str,
    size_gib: u64,
) -> String {
    let source = cloud
        .create_volume(
            super::volumes::NewVolume {
                account_id: account_id.to_string(),
                zone: "zone-1".into(),
                size_gib: Some(size_gib),
                ..Default::default()
            },
            false,
        )
        .await
        .expect("volume")
        .volume
        .volume_id;
    let snap = loop {
        match cloud
            .create_snapshot(account_id, &source, "root", &[], false)
            .await
        {
            Ok(made) => break made.snapshot.snapshot_id,
            // Not available yet.
            Err(super::CoreError::IncorrectVolumeState(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await
            }
            Err(e) => panic!("snapshot: {e}"),
        }
    };
    for _ in 0..200 {
        if cloud.snapshots.get(&snap).expect("get").map(|s| s.state)
            == Some(crate::snapshots::SnapshotState::Completed)
        {
            return snap;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("snapshot {snap} not completed");
}
