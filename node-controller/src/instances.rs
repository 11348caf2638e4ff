//! The instances of this node: each a record in the node's store, a
//! directory under `instance_dir` (qcow2 overlay, console log) and a
//! libvirt domain named after it.
//!
//! The record is written before the domain is defined and removed after it
//! is gone, so after any crash the node knows every domain it made. What an
//! instance is doing is never remembered, only read from the hypervisor:
//! [`Instances::statuses`] joins the records with libvirt's domains.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use common::instance::{InstanceId, InstanceState};
use common::{
    store::{Record, Store, StoreError, Table},
    time,
};
use serde::{Deserialize, Serialize};

use crate::{
    hypervisor::{
        volume_disk_xml, DomainSpec, DomainState, Hypervisor, HypervisorError, VolumeDisk,
    },
    images::{ImageCache, ImageError, ImageRef, ImageSource},
    network::{tap_name, FlowRule, Guest, HostNetwork, NetSpec},
    virt::{Virt, Virtualization},
};

/// Most bytes of console output returned.
pub const CONSOLE_BYTES: u64 = 64 * 1024;

/// An instance as this node records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub instance_type: String,
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// Digests of the cached images it uses (pinned while it exists).
    pub image_sha256: String,
    pub kernel_sha256: Option<String>,
    pub ramdisk_sha256: Option<String>,
    pub mac: String,
    pub private_ip: String,
    pub created_ms: i64,
    /// True once the user asked it to stop (StopInstances).
    pub stopped: bool,
    /// The private network it is on.
    pub network: Option<NetworkRecord>,
    /// EBS volumes attached to it.
    #[serde(default)]
    pub volumes: Vec<VolumeAttachment>,
    /// The EBS volume it boots from (as `vda`), when it is EBS-backed: it
    /// starts once that volume is attached.
    #[serde(default)]
    pub root_volume: Option<String>,
    /// Prepared as a live migration's target: its domain comes from the
    /// source node (until FinishMigration says how it went).
    #[serde(default)]
    pub incoming: bool,
}

/// An EBS volume attached to an instance of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    pub volume_id: String,
    /// The guest's device (`vdb`, ...).
    pub target: String,
    /// Where the storage controller exports it.
    pub connection: String,
}

/// A private network as a record keeps it (stored as the array
/// `[bridge, gateway, prefix]`, as records always have).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(String, String, u32)", into = "(String, String, u32)")]
pub struct NetworkRecord {
    pub bridge: String,
    pub gateway: String,
    pub prefix: u32,
}

impl From<(String, String, u32)> for NetworkRecord {
    fn from((bridge, gateway, prefix): (String, String, u32)) -> Self {
        Self {
            bridge,
            gateway,
            prefix,
        }
    }
}

impl From<NetworkRecord> for (String, String, u32) {
    fn from(n: NetworkRecord) -> Self {
        (n.bridge, n.gateway, n.prefix)
    }
}

impl From<&NetSpec> for NetworkRecord {
    fn from(n: &NetSpec) -> Self {
        Self {
            bridge: n.bridge.clone(),
            gateway: n.gateway.to_string(),
            prefix: u32::from(n.prefix),
        }
    }
}

impl Record for InstanceRecord {
    const TABLE: &'static str = "instances";
    /// 2: `network` added.
    const SCHEMA: u32 = 2;
    type Key = String;
    fn key(&self) -> String {
        self.instance_id.clone()
    }
    fn migrate(from: u32, value: serde_json::Value) -> Result<serde_json::Value, String> {
        common::store::add_field(from, value, &[("network", serde_json::Value::Null)])
    }
}

impl InstanceRecord {
    /// True while it is EBS-backed and its root volume is not attached.
    fn waits_for_root(&self) -> bool {
        self.root_volume
            .as_ref()
            .is_some_and(|root| !self.volumes.iter().any(|v| &v.volume_id == root))
    }

    fn net(&self) -> Option<NetSpec> {
        let n = self.network.as_ref()?;
        NetSpec::new(&n.bridge, &n.gateway, n.prefix).ok()
    }

    /// It as its firewall sees it, with `public_ip` (empty: none).
    fn guest(&self, public_ip: &str) -> Result<Option<Guest>, InstanceError> {
        let Some(net) = self.net() else {
            return Ok(None);
        };
        Guest::new(
            &self.instance_id,
            &self.mac,
            &self.private_ip,
            net,
            public_ip,
        )
        .map(Some)
        .map_err(|e| InstanceError::Network(e.to_string()))
    }
}

/// Why an instance operation failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{0}")]
    Invalid(String),
    #[error("no instance {0} on this node")]
    NotFound(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error("instance disk: {0}")]
    Disk(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("instance files: {0}")]
    Io(#[from] std::io::Error),
    #[error("instance network: {0}")]
    Network(String),
    #[error("volume: {0}")]
    Volume(String),
}

/// What a launch needs, in domain terms.
#[derive(Debug, Clone)]
pub struct Launch {
    pub instance_id: String,
    pub instance_type: String,
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// The machine image its disk is made from; none for an EBS-backed
    /// instance, which boots from `root_volume`.
    pub image: Option<ImageRef>,
    pub root_volume: Option<String>,
    pub kernel: Option<ImageRef>,
    pub ramdisk: Option<ImageRef>,
    pub mac: String,
    pub private_ip: String,
    pub network: Option<NetSpec>,
    /// Its security group rules and public address at launch.
    pub firewall: Option<Policy>,
    /// A live migration's target: everything but the domain, which comes
    /// from the source node.
    pub incoming: bool,
    /// A live migration's target: the instance's volumes, exported to this
    /// node already (their devices come with the domain).
    pub volumes: Vec<VolumeAttachment>,
}

/// A node's files of an instance, as a live migration maps them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrationPaths {
    pub disk: String,
    pub kernel: String,
    pub ramdisk: String,
    pub console_log: String,
    /// Each volume's relay socket: (volume id, path).
    pub volumes: Vec<(String, String)>,
}

/// A prepared migration target: where it is reached, where its files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationTarget {
    pub address: String,
    pub paths: MigrationPaths,
}

/// The node's instances.
#[derive(Debug)]
pub struct Instances {
    hv: Arc<dyn Hypervisor>,
    images: Arc<ImageCache>,
    table: Table<InstanceRecord>,
    dir: PathBuf,
    node: String,
    virt: Arc<Virtualization>,
    /// Guests started under KVM that have not yet printed anything: when
    /// they started and how long their console log was then.
    kvm_unproven: Mutex<HashMap<String, (Instant, u64)>>,
    /// How long each guest's console log was when it was last started
    /// (what it has written since is its instance status check).
    console_at_start: Mutex<HashMap<String, u64>>,
    /// What each guest was last started under (guests found again after a
    /// restart: the node's virtualization).
    running_under: Mutex<HashMap<String, Virt>>,
    /// Launches still fetching their images (not recorded yet), with their
    /// address and MAC: reported as pending, so no tier above takes them
    /// for gone while a large image comes.
    launching: Mutex<BTreeMap<String, (String, String)>>,
    /// Launches recorded whose disk and network are still being made: an
    /// EBS-backed one whose root volume comes meanwhile boots when its
    /// launch is done, not before (its bridge may not be there yet).
    setting_up: Mutex<std::collections::HashSet<String>>,
    /// When each instance last changed state, for reports.
    changed: Mutex<BTreeMap<String, (InstanceState, i64)>>,
    /// The private network plumbing, when the node builds it.
    network: Option<Arc<dyn HostNetwork>>,
    /// The last firewall the CLC sent for each instance, kept while it is
    /// stopped (its rules come off with it and go back on at start).
    policies: Mutex<HashMap<String, Policy>>,
    /// The members (private addresses as /32 blocks) of each security group
    /// the CLC sent, by group id: rules naming a group admit them.
    members: Mutex<HashMap<String, Vec<String>>>,
    /// The relays of attached volumes, when this node serves volumes.
    relays: std::sync::OnceLock<Arc<crate::volumes::VolumeRelays>>,
    /// Held while a guest's rules go on or come off together with the
    /// record change that decides it, so a push racing a terminate or stop
    /// cannot put back the rules just taken off.
    firewall_turn: tokio::sync::Mutex<()>,
    /// Held while a volume is attached or detached.
    volume_turn: tokio::sync::Mutex<()>,
    /// This node's address for live migration and its libvirt TLS
    /// directory (`pkipath`), when it takes part in migrations.
    migration: std::sync::OnceLock<(String, PathBuf)>,
}

/// What the node knows about one of its guests, read from libvirt.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestStatus {
    pub instance_id: String,
    pub state: InstanceState,
    pub node: String,
    pub private_ip: String,
    pub mac: String,
    /// Why it is in `state` (EC2's StateReason), when that says more.
    pub reason: String,
    /// Unix milliseconds of its last change of state.
    pub changed_ms: i64,
    /// What it runs under, while it runs.
    pub virt: Option<Virt>,
    /// It wrote to its console since it was last started (it came up).
    pub guest_output: bool,
}

impl GuestStatus {
    fn new(instance_id: &str, state: InstanceState, node: &str) -> Self {
        Self {
            instance_id: instance_id.to_string(),
            state,
            node: node.to_string(),
            private_ip: String::new(),
            mac: String::new(),
            reason: String::new(),
            changed_ms: time::unix_ms(),
            virt: None,
            guest_output: false,
        }
    }
}

/// The node's guests as its reports show them.
#[derive(Debug, Clone)]
pub struct Survey {
    /// Every recorded instance (and launch in progress).
    pub statuses: Vec<GuestStatus>,
    /// Cores and memory held by the instances that are not stopped.
    pub cores_held: u32,
    pub memory_held: u64,
    /// Domains named like instances that the node has no record of.
    pub unknown: Vec<GuestStatus>,
}

/// A rule as the CLC sends it: a flow, and the security groups whose
/// members it admits too (resolved here, from the memberships sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub flow: FlowRule,
    pub groups: Vec<String>,
}

impl From<FlowRule> for PolicyRule {
    fn from(flow: FlowRule) -> Self {
        Self {
            flow,
            groups: Vec::new(),
        }
    }
}

/// A guest's firewall as the CLC sends it: ingress, egress, public address.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    ingress: Vec<PolicyRule>,
    egress: Vec<PolicyRule>,
    public_ip: String,
}

impl Policy {
    /// Traffic allowed in and out, and the public address (empty: none).
    pub fn new(ingress: Vec<PolicyRule>, egress: Vec<PolicyRule>, public_ip: String) -> Self {
        Self {
            ingress,
            egress,
            public_ip,
        }
    }

    /// Before the CLC said anything: nothing in, everything out.
    fn closed() -> Self {
        Self {
            ingress: Vec::new(),
            egress: vec![FlowRule {
                protocol: "-1".into(),
                from_port: -1,
                to_port: -1,
                cidrs: vec!["0.0.0.0/0".into()],
            }
            .into()],
            public_ip: String::new(),
        }
    }

    /// True when a rule names one of `groups`.
    fn names_any(&self, groups: &std::collections::HashSet<String>) -> bool {
        self.ingress
            .iter()
            .chain(self.egress.iter())
            .any(|r| r.groups.iter().any(|g| groups.contains(g)))
    }
}

impl Instances {
    /// The instances of node `node`, pinning the images of those recorded.
    pub fn open(
        hv: Arc<dyn Hypervisor>,
        images: Arc<ImageCache>,
        store: &Store,
        dir: &Path,
        node: &str,
        virt: Arc<Virtualization>,
        network: Option<Arc<dyn HostNetwork>>,
    ) -> Result<Self, InstanceError> {
        std::fs::create_dir_all(dir)?;
        let this = Self {
            hv,
            images,
            table: store.table()?,
            dir: dir.to_path_buf(),
            node: node.to_string(),
            virt,
            kvm_unproven: Mutex::new(HashMap::new()),
            console_at_start: Mutex::new(HashMap::new()),
            running_under: Mutex::new(HashMap::new()),
            launching: Mutex::new(BTreeMap::new()),
            setting_up: Mutex::new(Default::default()),
            changed: Mutex::new(BTreeMap::new()),
            network,
            policies: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            relays: std::sync::OnceLock::new(),
            firewall_turn: tokio::sync::Mutex::new(()),
            volume_turn: tokio::sync::Mutex::new(()),
            migration: std::sync::OnceLock::new(),
        };
        for r in this.table.list()? {
            this.pin(&r, true);
        }
        Ok(this)
    }

    fn pin(&self, r: &InstanceRecord, pin: bool) {
        let digests = std::iter::once(&r.image_sha256)
            .chain(r.kernel_sha256.iter())
            .chain(r.ramdisk_sha256.iter());
        for d in digests {
            if pin {
                self.images.pin(d);
            } else {
                self.images.unpin(d);
            }
        }
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The serial console log of `id`.
    pub fn console_path(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("console.log")
    }

    /// What the console of `id` printed on the node it migrated from, up
    /// to the switch: [`Self::console`] puts the log after it.
    fn console_before_path(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("console.before")
    }

    fn record(&self, id: &str) -> Result<InstanceRecord, InstanceError> {
        self.table
            .get(&id.to_string())?
            .ok_or_else(|| InstanceError::NotFound(id.to_string()))
    }

    fn spec(&self, r: &InstanceRecord) -> DomainSpec {
        let cache = |sha: &Option<String>| sha.as_ref().map(|s| self.images.path_of(s));
        DomainSpec {
            name: r.instance_id.clone(),
            virt: self.virt.current().0,
            emulator: self.virt.emulator().map(Path::to_path_buf),
            vcpus: r.cores,
            memory_mib: r.memory_mib,
            kernel: cache(&r.kernel_sha256),
            ramdisk: cache(&r.ramdisk_sha256),
            cmdline: "console=ttyS0 root=/dev/vda ro panic=1".into(),
            // An EBS-backed instance's root is its root volume, as vda.
            disk: r
                .root_volume
                .is_none()
                .then(|| self.instance_dir(&r.instance_id).join("disk.qcow2")),
            console_log: self.console_path(&r.instance_id),
            nic: r
                .network
                .as_ref()
                .filter(|_| self.network.is_some() && !r.mac.is_empty())
                .map(|n| (n.bridge.clone(), r.mac.clone(), tap_name(&r.instance_id))),
            volumes: self.volume_disks(r),
        }
    }

    fn volume_disks(&self, r: &InstanceRecord) -> Vec<VolumeDisk> {
        let Some(relays) = self.relays.get() else {
            return Vec::new();
        };
        r.volumes
            .iter()
            .map(|v| VolumeDisk {
                volume_id: v.volume_id.clone(),
                target: v.target.clone(),
                socket: relays.socket(&v.volume_id),
            })
            .collect()
    }

    /// Takes part in live migrations from now on: reached at `address` (its
    /// libvirtd's TLS listener and QEMU's migration stream), dialling other
    /// nodes' libvirtds with the credentials in `tls_dir`.
    pub fn serve_migrations(&self, address: String, tls_dir: PathBuf) {
        let _ = self.migration.set((address, tls_dir));
    }

    fn migration_paths(&self, r: &InstanceRecord) -> MigrationPaths {
        let spec = self.spec(r);
        let text = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        MigrationPaths {
            disk: text(&spec.disk),
            kernel: text(&spec.kernel),
            ramdisk: text(&spec.ramdisk),
            console_log: spec.console_log.display().to_string(),
            volumes: self
                .volume_disks(r)
                .into_iter()
                .map(|v| (v.volume_id, v.socket.display().to_string()))
                .collect(),
        }
    }

    /// Live migration, target side: everything a launch makes but the
    /// domain (images from the cache, the disk's top layer over them, the
    /// guest's network, firewall and guard), and its console log so far.
    pub async fn prepare_incoming(
        &self,
        source: &dyn ImageSource,
        mut l: Launch,
        console: &[u8],
    ) -> Result<MigrationTarget, InstanceError> {
        let Some((address, _)) = self.migration.get().cloned() else {
            return Err(InstanceError::Invalid(
                "this node takes no live migrations (no migration address and libvirt TLS directory)".into(),
            ));
        };
        l.incoming = true;
        let volumes = std::mem::take(&mut l.volumes);
        let relays = match (volumes.is_empty(), self.relays.get()) {
            (true, _) => None,
            (false, Some(relays)) => Some(relays.clone()),
            (false, None) => {
                return Err(InstanceError::Invalid("this node serves no volumes".into()))
            }
        };
        let id = l.instance_id.clone();
        if let Some(r) = self.table.get(&id)? {
            if !r.incoming {
                return Err(InstanceError::Invalid(format!(
                    "{id} runs on this node already"
                )));
            }
        } else {
            // Its console so far, until the source's at the switch replaces
            // it; the domain's own log starts afresh.
            tokio::fs::create_dir_all(self.instance_dir(&id)).await?;
            tokio::fs::write(self.console_before_path(&id), console).await?;
            let _ = tokio::fs::remove_file(self.console_path(&id)).await;
            self.launch(source, l).await?;
        }
        // Its volumes' relays, to their exports to this node.
        if let Some(relays) = relays {
            let _turn = self.volume_turn.lock().await;
            let mut r = self.record(&id)?;
            for v in volumes {
                if r.volumes.iter().any(|had| had.volume_id == v.volume_id) {
                    continue;
                }
                if let Err(e) = relays.start(&v.connection).await {
                    let _ = self
                        .forget(
                            &id,
                            "incoming migration dropped: a volume's relay did not start",
                        )
                        .await;
                    return Err(InstanceError::Volume(e));
                }
                r.volumes.push(v);
            }
            self.table.put(&r)?;
        }
        let r = self.record(&id)?;
        Ok(MigrationTarget {
            address,
            paths: self.migration_paths(&r),
        })
    }

    /// Live migration, source side: moves running instance `id` to the
    /// prepared `target` (its memory, and its disk's top layer by NBD),
    /// then forgets it here: its network, firewall and files go. Returns
    /// its console log as it was at the switch. On failure it runs here as
    /// before.
    pub async fn migrate_out(
        &self,
        id: &str,
        target: &MigrationTarget,
    ) -> Result<(GuestStatus, Vec<u8>, Vec<VolumeAttachment>), InstanceError> {
        let Some((_, tls_dir)) = self.migration.get().cloned() else {
            return Err(InstanceError::Invalid(
                "this node takes no part in live migrations (no libvirt TLS directory)".into(),
            ));
        };
        let r = self.record(id)?;
        if self.status(id).await?.state != InstanceState::Running {
            return Err(InstanceError::Invalid(format!("{id} is not running")));
        }
        let address: std::net::IpAddr = target.address.parse().map_err(|_| {
            InstanceError::Invalid(format!("bad target address {:?}", target.address))
        })?;
        let ours = self.migration_paths(&r);
        let pairs = [
            (&ours.disk, &target.paths.disk),
            (&ours.kernel, &target.paths.kernel),
            (&ours.ramdisk, &target.paths.ramdisk),
            (&ours.console_log, &target.paths.console_log),
        ];
        let mut rewrite = Vec::new();
        for (from, to) in pairs {
            if from.is_empty() != to.is_empty() {
                return Err(InstanceError::Invalid(format!(
                    "the target's files do not match this node's ({from:?} and {to:?})"
                )));
            }
            if !from.is_empty() {
                rewrite.push((from.clone(), to.clone()));
            }
        }
        // Its volumes' relays there.
        for (volume_id, socket) in &ours.volumes {
            let theirs = target
                .paths
                .volumes
                .iter()
                .find(|(v, _)| v == volume_id)
                .ok_or_else(|| {
                    InstanceError::Invalid(format!("the target has no relay for {volume_id}"))
                })?;
            rewrite.push((socket.clone(), theirs.1.clone()));
        }
        let m = crate::hypervisor::Migration {
            dest_uri: format!(
                "qemu+tls://{address}/system?pkipath={}&no_tty=1",
                tls_dir.display()
            ),
            migrate_uri: format!("tcp://{address}"),
            rewrite,
            // The local disk's top layer goes with it; volumes stay where
            // they are (the target reaches them).
            copy_disks: if ours.disk.is_empty() {
                Vec::new()
            } else {
                vec!["vda".to_string()]
            },
        };
        let name = id.to_string();
        let started = Instant::now();
        self.blocking(move |hv| hv.migrate(&name, &m)).await?;
        tracing::info!(instance_id = %id, target = %address, secs = started.elapsed().as_secs_f64(), "instance migrated out");
        // Its domain runs on the target now: its console so far goes with
        // it, and what is left here goes.
        let console = self.console(id).await.unwrap_or_default();
        self.forget(id, "instance left for another node").await?;
        Ok((
            GuestStatus::new(id, InstanceState::Running, &target.address),
            console,
            r.volumes,
        ))
    }

    /// Live migration, source side: ends the migration of `id` in
    /// progress (its target is gone); it runs on here.
    pub async fn abort_migration(&self, id: &str) -> Result<(), InstanceError> {
        self.record(id)?;
        let name = id.to_string();
        self.blocking(move |hv| hv.abort_migration(&name)).await?;
        tracing::warn!(instance_id = %id, "migration aborted: its target is gone");
        Ok(())
    }

    /// Live migration, target side, once the source answered: the
    /// instance is this node's own from now on, or (`succeeded` false)
    /// what preparing it made goes.
    pub async fn finish_incoming(
        &self,
        id: &str,
        succeeded: bool,
        console: &[u8],
        volumes: &[VolumeAttachment],
    ) -> Result<GuestStatus, InstanceError> {
        let mut r = self.record(id)?;
        if !r.incoming {
            return self.status(id).await;
        }
        // Its volumes' devices, as the source had them.
        for v in r.volumes.iter_mut() {
            if let Some(theirs) = volumes.iter().find(|s| s.volume_id == v.volume_id) {
                v.target = theirs.target.clone();
            }
        }
        if succeeded && !console.is_empty() {
            // The source's console up to the switch; this node's log goes
            // on from there.
            tokio::fs::write(self.console_before_path(id), console).await?;
        }
        if !succeeded {
            return self
                .forget(
                    id,
                    "incoming migration dropped: the instance stays at its source",
                )
                .await;
        }
        let name = id.to_string();
        let here = self.blocking(move |hv| hv.domains(&name)).await?;
        if !here.iter().any(|(n, _)| n == id) {
            return Err(InstanceError::Invalid(format!(
                "{id} has not arrived on this node"
            )));
        }
        r.incoming = false;
        self.table.put(&r)?;
        // Its public address moves here now (with a gratuitous ARP).
        if let Some(hn) = &self.network {
            let _turn = self.firewall_turn.lock().await;
            let policy = self.policy_of(id);
            if let Err(e) = self.apply_policy(hn.as_ref(), &r, &policy).await {
                tracing::warn!(instance_id = %id, error = %e, "firewall not applied after the migration");
            }
        }
        self.running_under
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), self.virt.current().0);
        let console = self.console_len(id);
        self.console_at_start
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), console);
        tracing::info!(instance_id = %id, "instance migrated in");
        self.status(id).await
    }

    /// The counters (CPU time, I/O, memory) of each of this node's running
    /// guests (not those migrating in).
    pub async fn guest_stats(
        &self,
    ) -> Result<Vec<crate::hypervisor::GuestCounters>, InstanceError> {
        let mine: std::collections::HashSet<String> = self
            .table
            .list()?
            .into_iter()
            .filter(|r| !r.incoming)
            .map(|r| r.instance_id)
            .collect();
        let all = self.blocking(|hv| hv.guest_stats("i-")).await?;
        Ok(all.into_iter().filter(|g| mine.contains(&g.name)).collect())
    }

    /// After a restart, settles the migrations this node was taking when
    /// it stopped: an instance whose domain arrived and runs is taken as
    /// this node's own; any other (its domain never came, or is still
    /// coming: removing it ends that migration, and the instance runs on
    /// at its source) goes.
    pub async fn settle_incoming(&self) {
        let Ok(records) = self.table.list() else {
            return;
        };
        for r in records.into_iter().filter(|r| r.incoming) {
            let name = r.instance_id.clone();
            let arrived = self
                .blocking(move |hv| hv.domains(&name))
                .await
                .map(|d| {
                    d.iter()
                        .any(|(n, s)| *n == r.instance_id && *s == DomainState::Running)
                })
                .unwrap_or(false);
            let settled = self
                .finish_incoming(&r.instance_id, arrived, &[], &[])
                .await;
            tracing::info!(instance_id = %r.instance_id, taken = arrived, ok = settled.is_ok(), "settled a migration this node was taking when it stopped");
        }
    }

    /// Serves EBS volumes through `relays` from now on.
    pub fn serve_volumes(&self, relays: Arc<crate::volumes::VolumeRelays>) {
        let _ = self.relays.set(relays);
    }

    /// Attaches the volume exported at `connection` to instance `id` (hot,
    /// when it runs); returns the guest's device. Attaching it again
    /// answers the same device. A `root` volume becomes the instance's
    /// root device, `vda` (a new root only while it is stopped, the old one
    /// detached).
    pub async fn attach_volume(
        &self,
        id: &str,
        volume_id: &str,
        connection: &str,
        root: bool,
    ) -> Result<String, InstanceError> {
        let relays = self
            .relays
            .get()
            .ok_or_else(|| InstanceError::Invalid("this node serves no volumes".into()))?
            .clone();
        let _turn = self.volume_turn.lock().await;
        let mut r = self.record(id)?;
        if let Some(v) = r.volumes.iter().find(|v| v.volume_id == volume_id) {
            return Ok(v.target.clone());
        }
        if root && r.root_volume.as_deref() != Some(volume_id) {
            // A replacement root.
            if r.volumes.iter().any(|v| v.target == "vda") || r.root_volume.is_none() {
                return Err(InstanceError::Invalid(format!(
                    "{id} still has its root device, or boots from its own disk"
                )));
            }
            if !r.stopped {
                return Err(InstanceError::Invalid(format!(
                    "{id} must be stopped to get a new root volume"
                )));
            }
            r.root_volume = Some(volume_id.to_string());
        }
        let root = r.root_volume.as_deref() == Some(volume_id);
        let target = if root {
            "vda".to_string()
        } else {
            ('b'..='z')
                .map(|c| format!("vd{c}"))
                .find(|t| !r.volumes.iter().any(|v| &v.target == t))
                .ok_or_else(|| InstanceError::Invalid(format!("{id} has no free device left")))?
        };
        let socket = relays
            .start(connection)
            .await
            .map_err(InstanceError::Volume)?;
        let xml = volume_disk_xml(&VolumeDisk {
            volume_id: volume_id.to_string(),
            target: target.clone(),
            socket,
        });
        let name = id.to_string();
        // The root volume comes before the guest has a domain: it is part
        // of the domain defined below.
        let hot = if root {
            Ok(())
        } else {
            self.blocking(move |hv| hv.attach_device(&name, &xml)).await
        };
        match hot {
            Ok(()) | Err(InstanceError::Hypervisor(HypervisorError::NoDomain(_))) => {}
            Err(e) => {
                relays.stop(volume_id);
                return Err(e);
            }
        }
        r.volumes.push(VolumeAttachment {
            volume_id: volume_id.to_string(),
            target: target.clone(),
            connection: connection.to_string(),
        });
        self.table.put(&r)?;
        tracing::info!(instance_id = %id, volume = %volume_id, %target, "volume attached");
        let launch_boots_it = self
            .setting_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id);
        if root && launch_boots_it {
            tracing::info!(instance_id = %id, "root volume attached; the instance boots when its launch is done");
        } else if root && !r.stopped {
            // Its root is there: the EBS-backed instance boots.
            if let Err(e) = self.boot(&r).await {
                tracing::warn!(instance_id = %id, error = %e, "the EBS-backed instance did not start");
                return Err(e);
            }
            tracing::info!(instance_id = %id, virt = %self.virt.current().0, "instance started from its root volume");
        }
        Ok(target)
    }

    /// Detaches `volume_id` from instance `id`; one not attached is gone
    /// already. The guest is asked to let go; `force` takes it away even
    /// when the hypervisor refuses.
    pub async fn detach_volume(
        &self,
        id: &str,
        volume_id: &str,
        force: bool,
    ) -> Result<(), InstanceError> {
        let _turn = self.volume_turn.lock().await;
        let mut r = self.record(id)?;
        let Some(v) = r.volumes.iter().find(|v| v.volume_id == volume_id).cloned() else {
            return Ok(());
        };
        if let Some(relays) = self.relays.get() {
            let xml = volume_disk_xml(&VolumeDisk {
                volume_id: v.volume_id.clone(),
                target: v.target.clone(),
                socket: relays.socket(volume_id),
            });
            let name = id.to_string();
            let serial = crate::hypervisor::volume_serial(volume_id);
            match self.blocking(move |hv| hv.detach_device(&name, &xml)).await {
                Ok(()) | Err(InstanceError::Hypervisor(HypervisorError::NoDomain(_))) => {}
                Err(e) if force => {
                    tracing::warn!(instance_id = %id, volume = %volume_id, error = %e, "forced detach: the guest did not let go");
                }
                Err(e) => {
                    // Gone already (an earlier request the guest honoured late).
                    let (name, serial) = (id.to_string(), serial.clone());
                    if !matches!(
                        self.blocking(move |hv| hv.has_disk(&name, &serial)).await,
                        Ok(false) | Err(InstanceError::Hypervisor(HypervisorError::NoDomain(_)))
                    ) {
                        return Err(e);
                    }
                }
            }
            // The guest lets go of a hot-plugged disk in its own time; the
            // volume is free only once it has (or when forced).
            let mut released = false;
            for _ in 0..100 {
                let (name, serial) = (id.to_string(), serial.clone());
                match self.blocking(move |hv| hv.has_disk(&name, &serial)).await {
                    Ok(false) | Err(InstanceError::Hypervisor(HypervisorError::NoDomain(_))) => {
                        released = true;
                        break;
                    }
                    // Still held, or libvirt could not tell (busy with the
                    // guest): only a domain without the disk releases it.
                    Ok(true) | Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await
                    }
                }
            }
            if !released && !force {
                return Err(InstanceError::Volume(format!(
                    "the guest has not released {volume_id} yet"
                )));
            }
            relays.stop(volume_id);
        }
        r.volumes.retain(|a| a.volume_id != volume_id);
        self.table.put(&r)?;
        tracing::info!(instance_id = %id, volume = %volume_id, "volume detached");
        Ok(())
    }

    /// The cluster's network as the CC says it is now (its tunnels' peers).
    pub async fn set_network(&self, net: &NetSpec) -> Result<(), InstanceError> {
        match &self.network {
            Some(hn) => hn
                .set_network(net)
                .await
                .map_err(|e| InstanceError::Network(e.to_string())),
            None => Ok(()),
        }
    }

    /// Enforces security group rules and public addresses on this node's
    /// instances among `firewalls`, with the group memberships `groups`
    /// (which replace those held for each group listed; every instance
    /// whose rules name a group that changed gets its rules again). Returns
    /// how many firewalls were applied (one that fails is logged and the
    /// rest still applied).
    pub async fn set_firewalls(
        &self,
        firewalls: &[(String, Policy)],
        groups: &[(String, Vec<String>)],
    ) -> Result<u32, InstanceError> {
        let Some(hn) = &self.network else {
            return Ok(0);
        };
        let mut changed = std::collections::HashSet::new();
        {
            let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
            for (g, addresses) in groups {
                if members.get(g) != Some(addresses) {
                    members.insert(g.clone(), addresses.clone());
                    changed.insert(g.clone());
                }
            }
        }
        let mut work: Vec<(String, Policy)> = firewalls.to_vec();
        if !changed.is_empty() {
            let policies = self.policies.lock().unwrap_or_else(|p| p.into_inner());
            for (id, p) in policies.iter() {
                if p.names_any(&changed) && !firewalls.iter().any(|(f, _)| f == id) {
                    work.push((id.clone(), p.clone()));
                }
            }
        }
        let mut applied = 0;
        for (id, policy) in &work {
            let _turn = self.firewall_turn.lock().await;
            let Some(r) = self.table.get(id)? else {
                continue;
            };
            self.policies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(r.instance_id.clone(), policy.clone());
            if r.stopped {
                continue;
            }
            match self.apply_policy(hn.as_ref(), &r, policy).await {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(instance_id = %id, error = %e, "firewall not applied")
                }
            }
        }
        Ok(applied)
    }

    /// `rules` as flows: each one's groups turned into their members'
    /// addresses; a rule left with no address at all admits nothing.
    fn resolve(&self, rules: &[PolicyRule]) -> Vec<FlowRule> {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        rules
            .iter()
            .filter_map(|r| {
                let mut flow = r.flow.clone();
                for g in &r.groups {
                    flow.cidrs
                        .extend(members.get(g).into_iter().flatten().cloned());
                }
                (!flow.cidrs.is_empty()).then_some(flow)
            })
            .collect()
    }

    /// Puts `policy` on `r`'s tap; false when it is on no private network.
    /// An instance migrating in gets its public address's NAT at once (its
    /// replies leave from here as soon as it runs here), but the address
    /// itself (announced) only once it is here: until then the source
    /// answers for it.
    async fn apply_policy(
        &self,
        hn: &dyn HostNetwork,
        r: &InstanceRecord,
        policy: &Policy,
    ) -> Result<bool, InstanceError> {
        let Some(mut guest) = r.guest(&policy.public_ip)? else {
            return Ok(false);
        };
        guest.hold_address = r.incoming;
        let (ingress, egress) = (self.resolve(&policy.ingress), self.resolve(&policy.egress));
        hn.apply_firewall(&guest, &ingress, &egress)
            .await
            .map_err(|e| InstanceError::Network(e.to_string()))?;
        Ok(true)
    }

    /// The last policy the CLC sent for `id`, or a closed one.
    fn policy_of(&self, id: &str) -> Policy {
        self.policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_else(Policy::closed)
    }

    /// Rebuilds the network of every recorded instance (after a restart:
    /// the relay lives in this process; the rest is checked and kept).
    pub async fn reattach(&self) {
        let Some(hn) = &self.network else { return };
        let Ok(records) = self.table.list() else {
            return;
        };
        for r in records {
            if let Some(net) = r.net() {
                if let Err(e) = hn.attach(&net, &r.mac, &r.private_ip).await {
                    tracing::warn!(instance_id = %r.instance_id, error = %e, "network not restored");
                }
            }
        }
    }

    /// Finds the relays of every attached volume after a restart (they
    /// outlive the node controller), starts any that is missing (QEMU
    /// reconnects to it), and ends those of volumes no instance holds.
    pub async fn relay_volumes(&self) {
        let Some(relays) = self.relays.get() else {
            return;
        };
        let Ok(records) = self.table.list() else {
            return;
        };
        relays.keep_only(
            &records
                .iter()
                .flat_map(|r| r.volumes.iter().map(|v| v.volume_id.clone()))
                .collect(),
        );
        for r in records {
            for v in &r.volumes {
                match relays.start(&v.connection).await {
                    Ok(_) => {
                        tracing::info!(instance_id = %r.instance_id, volume = %v.volume_id, "volume relay restored")
                    }
                    Err(e) => {
                        tracing::warn!(instance_id = %r.instance_id, volume = %v.volume_id, error = %e, "volume relay not restored")
                    }
                }
            }
        }
    }

    /// Fetches the images, makes the disk and starts the domain.
    pub async fn launch(
        &self,
        source: &dyn ImageSource,
        l: Launch,
    ) -> Result<GuestStatus, InstanceError> {
        if InstanceId::parse(&l.instance_id).is_err() {
            return Err(InstanceError::Invalid(format!(
                "{} is not an instance id",
                l.instance_id
            )));
        }
        if l.cores == 0 || l.memory_mib < 16 {
            return Err(InstanceError::Invalid(
                "an instance needs a core and 16 MiB".into(),
            ));
        }
        if self.table.get(&l.instance_id)?.is_some() {
            // A retried launch: report what there is.
            return self.status(&l.instance_id).await;
        }
        self.launching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(l.instance_id.clone(), (l.private_ip.clone(), l.mac.clone()));
        let fetched = async {
            let image = match &l.image {
                Some(i) => Some(self.images.get(source, i).await?),
                None if l.root_volume.is_some() => None,
                None => return Err(InstanceError::Invalid("no image to boot".into())),
            };
            if let Some(k) = &l.kernel {
                self.images.get(source, k).await?;
            }
            if let Some(r) = &l.ramdisk {
                self.images.get(source, r).await?;
            }
            Ok::<_, InstanceError>(image)
        }
        .await;
        let done_fetching = || {
            self.launching
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&l.instance_id);
        };
        let image = match fetched {
            Ok(image) => image,
            Err(e) => {
                done_fetching();
                return Err(e);
            }
        };
        let record = InstanceRecord {
            instance_id: l.instance_id.clone(),
            instance_type: l.instance_type.clone(),
            cores: l.cores,
            memory_mib: l.memory_mib,
            disk_gib: l.disk_gib,
            image_sha256: l
                .image
                .as_ref()
                .map(|i| i.sha256.clone())
                .unwrap_or_default(),
            kernel_sha256: l.kernel.as_ref().map(|k| k.sha256.clone()),
            ramdisk_sha256: l.ramdisk.as_ref().map(|r| r.sha256.clone()),
            mac: l.mac.clone(),
            private_ip: l.private_ip.clone(),
            created_ms: time::unix_ms(),
            stopped: false,
            network: l.network.as_ref().map(NetworkRecord::from),
            volumes: Vec::new(),
            root_volume: l.root_volume.clone(),
            incoming: l.incoming,
        };
        self.setting_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(l.instance_id.clone());
        let recorded = self.table.put(&record);
        done_fetching();
        if let Err(e) = recorded {
            self.set_up(&l.instance_id);
            return Err(e.into());
        }
        self.pin(&record, true);
        let launched = async {
            let dir = self.instance_dir(&l.instance_id);
            tokio::fs::create_dir_all(&dir).await?;
            if let Some(image) = &image {
                make_overlay(&image.path, &dir.join("disk.qcow2"), l.disk_gib).await?;
            }
            if let (Some(hn), Some(net)) = (&self.network, &l.network) {
                hn.attach(net, &l.mac, &l.private_ip)
                    .await
                    .map_err(|e| InstanceError::Network(e.to_string()))?;
                // Its groups' rules, or (without them) nothing in, all out.
                let policy = l.firewall.clone().unwrap_or_else(Policy::closed);
                self.policies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(l.instance_id.clone(), policy.clone());
                let _turn = self.firewall_turn.lock().await;
                if self.table.get(&l.instance_id)?.is_none() {
                    // Terminated while launching.
                    return Err(InstanceError::NotFound(l.instance_id.clone()));
                }
                self.apply_policy(hn.as_ref(), &record, &policy).await?;
            }
            // Its root volume may have come while this launch made the rest
            // (attach_volume left the boot to it): read the record again,
            // under the same lock attach_volume decides under.
            let now = {
                let mut setting_up = self.setting_up.lock().unwrap_or_else(|p| p.into_inner());
                setting_up.remove(&l.instance_id);
                self.table.get(&l.instance_id)?
            };
            let Some(now) = now else {
                return Err(InstanceError::NotFound(l.instance_id.clone()));
            };
            if now.waits_for_root() || now.stopped || now.incoming {
                // Pending until its root volume is attached, or its domain
                // comes from the node it migrates from.
                return Ok(());
            }
            self.boot(&now).await
        }
        .await;
        self.set_up(&l.instance_id);
        if let Err(e) = launched {
            tracing::warn!(instance_id = %l.instance_id, error = %e, "launch failed; cleaning up");
            let _ = self.remove(&l.instance_id).await;
            return Err(e);
        }
        if l.incoming {
            tracing::info!(instance_id = %l.instance_id, "prepared for an incoming live migration");
            return Ok(GuestStatus::new(
                &l.instance_id,
                InstanceState::Pending,
                &self.node,
            ));
        }
        tracing::info!(instance_id = %l.instance_id, virt = %self.virt.current().0, cores = l.cores, memory_mib = l.memory_mib, "instance started");
        self.status(&l.instance_id).await
    }

    /// The launch of `id` is done making its disk and network.
    fn set_up(&self, id: &str) {
        self.setting_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, HypervisorError> + Send + 'static,
    ) -> Result<T, InstanceError> {
        let hv = self.hv.clone();
        Ok(tokio::task::spawn_blocking(move || f(hv.as_ref()))
            .await
            .map_err(|e| InstanceError::Disk(e.to_string()))??)
    }

    /// Destroys the domain, deletes its files and forgets it.
    pub async fn remove(&self, id: &str) -> Result<GuestStatus, InstanceError> {
        self.forget(id, "instance terminated").await
    }

    /// What [`Self::remove`] does, logged as `what` (the instance may live
    /// on elsewhere: it migrated away, or never arrived).
    async fn forget(&self, id: &str, what: &'static str) -> Result<GuestStatus, InstanceError> {
        let record = self.table.get(&id.to_string())?;
        let name = id.to_string();
        self.blocking(move |hv| hv.remove(&name)).await?;
        let dir = self.instance_dir(id);
        if dir.exists() {
            tokio::fs::remove_dir_all(&dir).await?;
        }
        if let Some(r) = record {
            let _turn = self.firewall_turn.lock().await;
            if let Some(relays) = self.relays.get() {
                for v in &r.volumes {
                    relays.stop(&v.volume_id);
                }
            }
            self.table.delete(&id.to_string())?;
            self.pin(&r, false);
            if let (Some(hn), Some(net)) = (&self.network, r.net()) {
                if let Ok(Some(guest)) = r.guest("") {
                    hn.remove_firewall(&guest).await;
                }
                if let Err(e) = hn.detach(&net, &r.mac).await {
                    tracing::warn!(instance_id = %id, error = %e, "network cleanup failed");
                }
            }
            tracing::info!(instance_id = %id, "{what}");
        }
        self.changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.running_under
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(GuestStatus::new(id, InstanceState::Terminated, &self.node))
    }

    /// Powers the instance off and keeps it (StopInstances).
    pub async fn stop(&self, id: &str) -> Result<GuestStatus, InstanceError> {
        let turn = self.firewall_turn.lock().await;
        let mut r = self.record(id)?;
        r.stopped = true;
        self.table.put(&r)?;
        // Its firewall, public address and guard come off while it is
        // stopped (its private address and lease stay).
        if let (Some(hn), Ok(Some(guest))) = (&self.network, r.guest("")) {
            hn.remove_firewall(&guest).await;
        }
        drop(turn);
        let name = id.to_string();
        match self.blocking(move |hv| hv.power_off(&name)).await {
            Ok(()) | Err(InstanceError::Hypervisor(HypervisorError::NoDomain(_))) => {}
            Err(e) => return Err(e),
        }
        self.status(id).await
    }

    /// Starts a stopped instance; redefines its domain if libvirt lost it.
    pub async fn start(&self, id: &str) -> Result<GuestStatus, InstanceError> {
        let turn = self.firewall_turn.lock().await;
        let mut r = self.record(id)?;
        if r.incoming {
            return Err(InstanceError::Invalid(format!(
                "{id} is migrating to this node"
            )));
        }
        let now = self.status(id).await?;
        if !r.stopped && now.state == InstanceState::Running {
            // Already running: starting it is a no-op (as in EC2), not a reset.
            return Ok(now);
        }
        r.stopped = false;
        self.table.put(&r)?;
        if let Some(hn) = &self.network {
            self.apply_policy(hn.as_ref(), &r, &self.policy_of(id))
                .await?;
        }
        drop(turn);
        if r.waits_for_root() {
            // It boots once its root volume is attached.
            return self.status(id).await;
        }
        self.boot(&r).await?;
        self.status(id).await
    }

    /// Defines `r`'s domain afresh (the node's virtualization may have
    /// changed since it was last defined) and starts it. A guest that KVM
    /// cannot start makes the node fall back to TCG and starts it so; one
    /// started under KVM is watched until its console shows it runs.
    async fn boot(&self, r: &InstanceRecord) -> Result<(), InstanceError> {
        let id = r.instance_id.clone();
        if let Some(relays) = self.relays.get() {
            // A relay ends when its guest is long gone and no node
            // controller watched over it: a stopped instance's may have.
            for v in &r.volumes {
                relays
                    .start(&v.connection)
                    .await
                    .map_err(InstanceError::Volume)?;
            }
        }
        let spec = self.spec(r);
        let virt = spec.virt;
        let console = self.console_len(&id);
        let name = id.clone();
        let started = self
            .blocking(move |hv| {
                hv.remove(&name)?;
                hv.launch(&spec)
            })
            .await;
        match started {
            Ok(()) => {
                self.console_at_start
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), console);
                self.running_under
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), virt);
                if virt == Virt::Kvm && !self.virt.watchdog().is_zero() {
                    self.kvm_unproven
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, (Instant::now(), console));
                }
                Ok(())
            }
            Err(e) if virt == Virt::Kvm => {
                self.fall_back(r, &format!("{id} could not start under KVM: {e}"))
                    .await
            }
            Err(e) => Err(e),
        }
    }

    fn console_len(&self, id: &str) -> u64 {
        std::fs::metadata(self.console_path(id)).map_or(0, |m| m.len())
    }

    /// KVM let `r` down (`why`): the node takes TCG from now on, notes it
    /// on the guest's console and starts the guest again under TCG, with
    /// the same disk, addresses and firewall.
    async fn fall_back(&self, r: &InstanceRecord, why: &str) -> Result<(), InstanceError> {
        let id = r.instance_id.clone();
        self.kvm_unproven
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.virt.kvm_failed(why);
        let note = format!(
            "\r\n[gumtree node {}] {}: {why}; KVM is not used on this node any more: the guest starts again under QEMU TCG\r\n",
            self.node,
            time::iso8601_ms(time::unix_ms())
        );
        let path = self.console_path(&id);
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(note.as_bytes()))
        })
        .await
        .map_err(|e| InstanceError::Disk(e.to_string()))??;
        let spec = self.spec(r);
        let name = id.clone();
        self.blocking(move |hv| {
            hv.remove(&name)?;
            hv.launch(&spec)
        })
        .await?;
        self.running_under
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Virt::Qemu);
        tracing::warn!(instance_id = %id, "instance restarted under QEMU TCG");
        Ok(())
    }

    /// Checks the guests started under KVM that have not shown they run:
    /// one libvirt shows crashed or paused (QEMU pauses a guest on a KVM
    /// internal error), or whose console stays silent past the deadline,
    /// is restarted under TCG and the node keeps to TCG. Called every
    /// second.
    pub async fn kvm_watchdog(&self) {
        let watched: Vec<(String, Instant, u64)> = self
            .kvm_unproven
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, (at, len))| (id.clone(), *at, *len))
            .collect();
        if watched.is_empty() {
            return;
        }
        let Ok(domains) = self.blocking(|hv| hv.domains("i-")).await else {
            return;
        };
        let domains: HashMap<String, DomainState> = domains.into_iter().collect();
        for (id, since, len) in watched {
            let why = match domains.get(&id) {
                _ if self.console_len(&id) > len => None,
                Some(DomainState::Crashed) => Some("libvirt shows the guest crashed".to_string()),
                Some(DomainState::Paused) => Some("libvirt shows the guest paused".to_string()),
                Some(DomainState::Running) if since.elapsed() > self.virt.watchdog() => {
                    Some(format!(
                        "its console stayed silent for {}s",
                        self.virt.watchdog().as_secs()
                    ))
                }
                Some(DomainState::Running) => continue,
                // Stopped, being stopped or gone: nothing to judge.
                _ => None,
            };
            let Some(why) = why else {
                self.kvm_unproven
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                continue;
            };
            // Not while a terminate or stop of it is under way.
            let _turn = self.firewall_turn.lock().await;
            match self.table.get(&id) {
                Ok(Some(r)) if !r.stopped => {
                    if let Err(e) = self.fall_back(&r, &format!("{id}: {why}")).await {
                        tracing::warn!(instance_id = %id, error = %e, "could not restart the guest under TCG");
                    }
                }
                _ => {
                    self.kvm_unproven
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                }
            }
        }
    }

    /// What guests run under now, and why.
    pub fn virtualization(&self) -> (Virt, String) {
        self.virt.current()
    }

    /// Resets the instance.
    pub async fn reboot(&self, id: &str) -> Result<GuestStatus, InstanceError> {
        self.record(id)?;
        let name = id.to_string();
        self.blocking(move |hv| hv.reboot(&name)).await?;
        self.status(id).await
    }

    /// Changes CPU and memory of a stopped instance.
    pub async fn resize(
        &self,
        id: &str,
        instance_type: &str,
        cores: u32,
        memory_mib: u64,
    ) -> Result<GuestStatus, InstanceError> {
        let mut r = self.record(id)?;
        if self.status(id).await?.state != InstanceState::Stopped {
            return Err(InstanceError::Invalid(format!("{id} is not stopped")));
        }
        r.instance_type = instance_type.to_string();
        r.cores = cores;
        r.memory_mib = memory_mib;
        self.table.put(&r)?;
        // The domain is defined again, with the new size, on the next start.
        let name = id.to_string();
        self.blocking(move |hv| hv.remove(&name)).await?;
        self.status(id).await
    }

    /// The serial console of running instance `id`, both ways.
    pub async fn open_console(
        &self,
        id: &str,
    ) -> Result<crate::hypervisor::ConsoleIo, InstanceError> {
        self.record(id)?;
        if self.status(id).await?.state != InstanceState::Running {
            return Err(InstanceError::Invalid(format!("{id} is not running")));
        }
        let name = id.to_string();
        self.blocking(move |hv| hv.open_console(&name)).await
    }

    /// The last `CONSOLE_BYTES` of the serial console.
    pub async fn console(&self, id: &str) -> Result<Vec<u8>, InstanceError> {
        self.record(id)?;
        let mut data = Vec::new();
        // What it printed on the node it migrated from, then here.
        for path in [self.console_before_path(id), self.console_path(id)] {
            match tokio::fs::read(&path).await {
                Ok(d) => data.extend(d),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        let start = data.len().saturating_sub(CONSOLE_BYTES as usize);
        Ok(data[start..].to_vec())
    }

    /// The status of `id`.
    pub async fn status(&self, id: &str) -> Result<GuestStatus, InstanceError> {
        self.statuses()
            .await?
            .into_iter()
            .find(|s| s.instance_id == id)
            .ok_or_else(|| InstanceError::NotFound(id.to_string()))
    }

    /// libvirt domains named like instances that this node has no record
    /// of (and is not launching), with the state libvirt shows.
    pub async fn unknown_guests(&self) -> Result<Vec<GuestStatus>, InstanceError> {
        Ok(self.survey().await?.unknown)
    }

    fn unknown_of(
        &self,
        records: &[InstanceRecord],
        domains: &BTreeMap<String, DomainState>,
    ) -> Vec<GuestStatus> {
        let known: std::collections::HashSet<&str> =
            records.iter().map(|r| r.instance_id.as_str()).collect();
        let launching = self.launching.lock().unwrap_or_else(|p| p.into_inner());
        domains
            .iter()
            .filter(|(name, _)| !known.contains(name.as_str()) && !launching.contains_key(*name))
            .map(|(name, state)| {
                let state = match state {
                    DomainState::Running | DomainState::Paused => InstanceState::Running,
                    DomainState::ShuttingDown => InstanceState::Stopping,
                    _ => InstanceState::Stopped,
                };
                GuestStatus::new(name, state, &self.node)
            })
            .collect()
    }

    /// Powers off guest `id` for the unknown-guest policy: an instance of
    /// this node is stopped as by StopInstances; a domain it has no record
    /// of is powered off in libvirt (and left defined, with its disks).
    pub async fn stop_guest(&self, id: &str) -> Result<(), InstanceError> {
        if !id.starts_with("i-") {
            return Err(InstanceError::NotFound(id.to_string()));
        }
        if self.table.get(&id.to_string())?.is_some() {
            return self.stop(id).await.map(|_| ());
        }
        let name = id.to_string();
        match self.blocking(move |hv| hv.power_off(&name)).await {
            Ok(()) | Err(InstanceError::Hypervisor(HypervisorError::NoDomain(_))) => {
                tracing::warn!(domain = %id, "a guest this node has no record of was powered off (unknown-guest policy)");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Every recorded instance with the state libvirt shows.
    pub async fn statuses(&self) -> Result<Vec<GuestStatus>, InstanceError> {
        Ok(self.survey().await?.statuses)
    }

    /// What the node's reports say of its guests, from one read of the
    /// records and one of libvirt's domains (read off the async runtime:
    /// libvirt may take its time while a guest starts or stops).
    pub async fn survey(&self) -> Result<Survey, InstanceError> {
        let domains: BTreeMap<String, DomainState> = self
            .blocking(|hv| hv.domains("i-"))
            .await?
            .into_iter()
            .collect();
        let records = self.table.list()?;
        let statuses = self.statuses_of(&records, &domains);
        let stopped: std::collections::HashSet<&str> = statuses
            .iter()
            .filter(|s| s.state == InstanceState::Stopped)
            .map(|s| s.instance_id.as_str())
            .collect();
        let (cores_held, memory_held) = records
            .iter()
            .filter(|r| !stopped.contains(r.instance_id.as_str()))
            .fold((0, 0), |(c, m), r| (c + r.cores, m + r.memory_mib));
        let unknown = self.unknown_of(&records, &domains);
        Ok(Survey {
            statuses,
            cores_held,
            memory_held,
            unknown,
        })
    }

    fn statuses_of(
        &self,
        records: &[InstanceRecord],
        domains: &BTreeMap<String, DomainState>,
    ) -> Vec<GuestStatus> {
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        let under = self
            .running_under
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let node_virt = self.virt.current().0;
        let at_start = self
            .console_at_start
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = Vec::new();
        // An incoming migration is the source's until it is finished.
        for r in records.iter().filter(|r| !r.incoming) {
            let (state, reason) = match domains.get(&r.instance_id) {
                Some(DomainState::Running) | Some(DomainState::Paused) => {
                    (InstanceState::Running, "")
                }
                Some(DomainState::ShuttingDown) => (InstanceState::Stopping, ""),
                Some(DomainState::Shutoff) if r.stopped => {
                    (InstanceState::Stopped, "User initiated")
                }
                Some(DomainState::Shutoff) => (
                    InstanceState::Stopped,
                    "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
                ),
                Some(DomainState::Crashed) => (
                    InstanceState::Stopped,
                    "Server.InternalError: The guest crashed",
                ),
                Some(DomainState::Other) => (InstanceState::Pending, ""),
                None if r.stopped => (InstanceState::Stopped, "User initiated"),
                None => (InstanceState::Pending, ""),
            };
            let now = time::unix_ms();
            let entry = changed.entry(r.instance_id.clone()).or_insert((state, now));
            if entry.0 != state {
                *entry = (state, now);
            }
            out.push(GuestStatus {
                instance_id: r.instance_id.clone(),
                state,
                node: self.node.clone(),
                private_ip: r.private_ip.clone(),
                mac: r.mac.clone(),
                reason: reason.to_string(),
                changed_ms: entry.1,
                virt: (state == InstanceState::Running)
                    .then(|| under.get(&r.instance_id).copied().unwrap_or(node_virt)),
                // A guest found running after a restart of the node
                // controller counts from the start of its log.
                guest_output: state == InstanceState::Running
                    && self.console_len(&r.instance_id)
                        > at_start.get(&r.instance_id).copied().unwrap_or(0),
            });
        }
        // Launches still fetching their images are pending here too.
        let now = time::unix_ms();
        for (id, (ip, mac)) in self
            .launching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if out.iter().any(|s| &s.instance_id == id) {
                continue;
            }
            out.push(GuestStatus {
                private_ip: ip.clone(),
                mac: mac.clone(),
                changed_ms: now,
                ..GuestStatus::new(id, InstanceState::Pending, &self.node)
            });
        }
        out
    }

    /// Cores and memory held by instances that are not stopped.
    pub async fn held(&self) -> Result<(u32, u64), InstanceError> {
        let s = self.survey().await?;
        Ok((s.cores_held, s.memory_held))
    }
}

/// A qcow2 overlay of `base` (raw or qcow2) at `overlay`, `disk_gib` large
/// (never smaller than the base).
async fn make_overlay(base: &Path, overlay: &Path, disk_gib: u64) -> Result<(), InstanceError> {
    let mut magic = [0u8; 4];
    {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(base).await?;
        let _ = f.read(&mut magic).await?;
    }
    let format = if &magic == b"QFI\xfb" { "qcow2" } else { "raw" };
    let base_size = tokio::fs::metadata(base).await?.len();
    let size = (disk_gib << 30).max(base_size);
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(base)
        .arg(overlay)
        .arg(size.to_string())
        .output()
        .await
        .map_err(|e| InstanceError::Disk(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(InstanceError::Disk(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::Fake;
    use sha2::{Digest, Sha256};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    struct Source;

    #[tonic::async_trait]
    impl ImageSource for Source {
        async fn fetch(&self, image: &ImageRef, out: &mut tokio::fs::File) -> Result<(), String> {
            out.write_all(image.key.as_bytes())
                .await
                .map_err(|e| e.to_string())
        }
    }

    fn image(key: &str) -> ImageRef {
        ImageRef {
            bucket: "b".into(),
            key: key.into(),
            sha256: hex::encode(Sha256::digest(key.as_bytes())),
            size: key.len() as u64,
        }
    }

    fn launch(id: &str) -> Launch {
        Launch {
            instance_id: id.into(),
            instance_type: "m1.small".into(),
            cores: 1,
            memory_mib: 256,
            disk_gib: 1,
            image: Some(image("disk image bytes")),
            root_volume: None,
            kernel: Some(image("kernel bytes")),
            ramdisk: None,
            mac: "d0:0d:00:00:00:01".into(),
            private_ip: "10.0.0.2".into(),
            network: None,
            firewall: None,
            incoming: false,
            volumes: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_networked_guest_is_attached_firewalled_and_taken_off_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::temporary().expect("store");
        let cache = Arc::new(ImageCache::open(&dir.path().join("cache"), 1 << 20).expect("cache"));
        let net = Arc::new(crate::network::Fake::default());
        let instances = Instances::open(
            Arc::new(Fake::default()),
            cache,
            &store,
            &dir.path().join("instances"),
            "nc-1",
            Arc::new(Virtualization::fixed(Virt::Qemu, "test")),
            Some(net.clone()),
        )
        .expect("open");
        let id = "i-0123456789abcdef1";
        let mut l = launch(id);
        l.network = Some(NetSpec::new("gtbr0", "10.0.0.1", 24).expect("net"));
        l.firewall = Some(Policy {
            ingress: vec![FlowRule {
                protocol: "tcp".into(),
                from_port: 22,
                to_port: 22,
                cidrs: vec!["0.0.0.0/0".into()],
            }
            .into()],
            ..Default::default()
        });
        instances.launch(&Source, l).await.expect("launch");
        let calls = net.calls();
        assert!(
            calls.contains(&"attach d0:0d:00:00:00:01 10.0.0.2".to_string()),
            "{calls:?}"
        );
        assert!(calls.contains(&format!("firewall {id} 1")), "{calls:?}");
        // The record keeps its network as records always stored it.
        let stored = instances
            .table
            .get(&id.to_string())
            .expect("get")
            .expect("there");
        assert_eq!(
            serde_json::to_value(&stored.network).expect("json"),
            serde_json::json!(["gtbr0", "10.0.0.1", 24])
        );
        instances.remove(id).await.expect("remove");
        let calls = net.calls();
        assert!(calls.contains(&format!("unfirewall {id}")), "{calls:?}");
        assert!(
            calls.contains(&"detach d0:0d:00:00:00:01".to_string()),
            "{calls:?}"
        );
    }

    #[tokio::test]
    async fn rules_naming_a_group_follow_its_members() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::temporary().expect("store");
        let cache = Arc::new(ImageCache::open(&dir.path().join("cache"), 1 << 20).expect("cache"));
        let net = Arc::new(crate::network::Fake::default());
        let instances = Instances::open(
            Arc::new(Fake::default()),
            cache,
            &store,
            &dir.path().join("instances"),
            "nc-1",
            Arc::new(Virtualization::fixed(Virt::Qemu, "test")),
            Some(net.clone()),
        )
        .expect("open");
        let id = "i-0123456789abcdef1";
        let mut l = launch(id);
        l.network = Some(NetSpec::new("gtbr0", "10.0.0.1", 24).expect("net"));
        l.firewall = Some(Policy {
            ingress: vec![PolicyRule {
                flow: FlowRule {
                    protocol: "tcp".into(),
                    from_port: 22,
                    to_port: 22,
                    cidrs: Vec::new(),
                },
                groups: vec!["sg-00000001".into()],
            }],
            ..Default::default()
        });
        instances.launch(&Source, l).await.expect("launch");
        // The group's members are not known yet: the rule admits nobody.
        assert!(
            net.calls().contains(&format!("sources {id} ")),
            "{:?}",
            net.calls()
        );
        let members = |ips: &[&str]| ips.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        let applied = instances
            .set_firewalls(
                &[],
                &[(
                    "sg-00000001".into(),
                    members(&["10.0.0.7/32", "10.0.0.9/32"]),
                )],
            )
            .await
            .expect("members");
        assert_eq!(applied, 1, "the guest naming the group got its rules again");
        assert!(
            net.calls()
                .contains(&format!("sources {id} 10.0.0.7/32,10.0.0.9/32")),
            "{:?}",
            net.calls()
        );
        // The same membership again, or another group's: nothing to redo.
        let before = net.calls().len();
        let applied = instances
            .set_firewalls(
                &[],
                &[
                    (
                        "sg-00000001".into(),
                        members(&["10.0.0.7/32", "10.0.0.9/32"]),
                    ),
                    ("sg-00000002".into(), members(&["10.0.0.8/32"])),
                ],
            )
            .await
            .expect("members");
        assert_eq!(applied, 0);
        assert_eq!(net.calls().len(), before);
    }

    #[tokio::test]
    async fn lifecycle_follows_the_hypervisor_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::temporary().expect("store");
        let cache = Arc::new(ImageCache::open(&dir.path().join("cache"), 1 << 20).expect("cache"));
        let hv = Arc::new(Fake::default());
        let instances = Instances::open(
            hv.clone(),
            cache.clone(),
            &store,
            &dir.path().join("instances"),
            "nc-1",
            Arc::new(Virtualization::fixed(Virt::Qemu, "test")),
            None,
        )
        .expect("open");
        let id = "i-0123456789abcdef0";
        let s = instances.launch(&Source, launch(id)).await.expect("launch");
        assert_eq!(s.state, InstanceState::Running);
        let spec = hv.spec(id).expect("domain");
        assert_eq!(
            spec.kernel,
            Some(cache.path_of(&image("kernel bytes").sha256))
        );
        assert!(spec.disk.is_some_and(|d| d.exists()), "the overlay exists");
        assert_eq!(instances.held().await.expect("held"), (1, 256));
        // The guest powers itself off: EC2 shows it stopped, by the instance.
        hv.set_state(id, DomainState::Shutoff);
        let s = instances.status(id).await.expect("status");
        assert_eq!(s.state, InstanceState::Stopped);
        assert!(
            s.reason.contains("InstanceInitiatedShutdown"),
            "{}",
            s.reason
        );
        assert_eq!(instances.held().await.expect("held"), (0, 0));
        instances.start(id).await.expect("start");
        // Starting a running instance leaves its domain alone (a domain
        // made again would come back Running).
        hv.set_state(id, DomainState::Paused);
        instances.start(id).await.expect("start a running instance");
        assert_eq!(
            hv.domains(id).expect("list"),
            [(id.to_string(), DomainState::Paused)]
        );
        hv.set_state(id, DomainState::Running);
        instances.stop(id).await.expect("stop");
        instances
            .resize(id, "m1.large", 2, 512)
            .await
            .expect("resize when stopped");
        let s = instances.start(id).await.expect("start again");
        assert_eq!(s.state, InstanceState::Running);
        assert_eq!(hv.spec(id).expect("domain").vcpus, 2, "the new size");
        assert!(
            instances.resize(id, "m1.small", 1, 256).await.is_err(),
            "not while running"
        );
        // Terminate: domain, files and pins are gone.
        instances.remove(id).await.expect("remove");
        assert!(hv.spec(id).is_none());
        assert!(!dir.path().join("instances").join(id).exists());
        assert!(instances.statuses().await.expect("statuses").is_empty());
        assert!(matches!(
            instances.console(id).await,
            Err(InstanceError::NotFound(_))
        ));
        assert!(matches!(
            instances.launch(&Source, launch("i-nope")).await,
            Err(InstanceError::Invalid(_))
        ));
    }

    fn open_with(
        hv: Arc<Fake>,
        dir: &Path,
        virt: Virt,
        watchdog: Duration,
    ) -> (Instances, Arc<Virtualization>) {
        let store = Store::temporary().expect("store");
        let cache = Arc::new(ImageCache::open(&dir.join("cache"), 1 << 20).expect("cache"));
        let v = Arc::new(Virtualization::fixed(virt, "test").with_watchdog(watchdog));
        let instances = Instances::open(
            hv,
            cache,
            &store,
            &dir.join("instances"),
            "nc-1",
            v.clone(),
            None,
        )
        .expect("open");
        (instances, v)
    }

    #[tokio::test]
    async fn domains_the_node_has_no_record_of_are_unknown_and_can_be_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hv = Arc::new(Fake::default());
        let (instances, _) = open_with(hv.clone(), dir.path(), Virt::Qemu, Duration::ZERO);
        let ours = "i-0123456789abcdef1";
        instances
            .launch(&Source, launch(ours))
            .await
            .expect("launch");
        // A domain named like an instance, made behind the node's back.
        let mut stray = hv.spec(ours).expect("domain");
        stray.name = "i-0badc0ffee0000002".into();
        hv.launch(&stray).expect("a stray domain");
        let unknown = instances.unknown_guests().await.expect("unknown");
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        assert_eq!(unknown[0].instance_id, "i-0badc0ffee0000002");
        assert_eq!(unknown[0].state, InstanceState::Running);
        instances
            .stop_guest("i-0badc0ffee0000002")
            .await
            .expect("stop the stray");
        let unknown = instances.unknown_guests().await.expect("unknown");
        assert_eq!(unknown[0].state, InstanceState::Stopped);
        // The node's own instance is stopped as by StopInstances.
        instances.stop_guest(ours).await.expect("stop ours");
        assert_eq!(
            instances.status(ours).await.expect("status").state,
            InstanceState::Stopped
        );
        assert!(instances.stop_guest("not-a-guest").await.is_err());
    }

    #[tokio::test]
    async fn a_guest_kvm_cannot_start_starts_under_tcg() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hv = Arc::new(Fake::default());
        hv.refuse(Virt::Kvm);
        let (instances, virt) =
            open_with(hv.clone(), dir.path(), Virt::Kvm, Duration::from_secs(30));
        let id = "i-0123456789abcdef1";
        let s = instances.launch(&Source, launch(id)).await.expect("launch");
        assert_eq!(s.state, InstanceState::Running);
        assert_eq!(hv.spec(id).expect("domain").virt, Virt::Qemu);
        let (now, why) = virt.current();
        assert_eq!(now, Virt::Qemu);
        assert!(why.contains("could not start under KVM"), "{why}");
        let console =
            String::from_utf8(instances.console(id).await.expect("console")).expect("utf8");
        assert!(console.contains("starts again under QEMU TCG"), "{console}");
    }

    #[tokio::test]
    async fn the_watchdog_restarts_a_silent_kvm_guest_under_tcg() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hv = Arc::new(Fake::default());
        let (instances, virt) = open_with(
            hv.clone(),
            dir.path(),
            Virt::Kvm,
            Duration::from_millis(300),
        );
        let talking = "i-0123456789abcdef2";
        let silent = "i-0123456789abcdef3";
        instances
            .launch(&Source, launch(talking))
            .await
            .expect("launch");
        instances
            .launch(&Source, launch(silent))
            .await
            .expect("launch");
        assert_eq!(hv.spec(silent).expect("domain").virt, Virt::Kvm);
        // One guest prints its boot; the other stays silent.
        std::fs::write(instances.console_path(talking), "Linux version 6.1\n").expect("write");
        instances.kvm_watchdog().await;
        assert_eq!(virt.current().0, Virt::Kvm, "not before the deadline");
        tokio::time::sleep(Duration::from_millis(400)).await;
        instances.kvm_watchdog().await;
        let (now, why) = virt.current();
        assert_eq!(now, Virt::Qemu);
        assert!(why.contains(silent) && why.contains("silent"), "{why}");
        assert_eq!(
            hv.spec(silent).expect("domain").virt,
            Virt::Qemu,
            "restarted under TCG"
        );
        assert_eq!(
            instances.status(silent).await.expect("status").state,
            InstanceState::Running
        );
        let console =
            String::from_utf8(instances.console(silent).await.expect("console")).expect("utf8");
        assert!(console.contains("console stayed silent"), "{console}");
        // The guest that ran is left alone; new guests start under TCG.
        assert_eq!(hv.spec(talking).expect("domain").virt, Virt::Kvm);
        let next = "i-0123456789abcdef4";
        instances
            .launch(&Source, launch(next))
            .await
            .expect("launch");
        assert_eq!(hv.spec(next).expect("domain").virt, Virt::Qemu);
    }

    #[tokio::test]
    async fn the_watchdog_restarts_a_paused_kvm_guest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hv = Arc::new(Fake::default());
        let (instances, virt) =
            open_with(hv.clone(), dir.path(), Virt::Kvm, Duration::from_secs(60));
        let id = "i-0123456789abcdef5";
        instances.launch(&Source, launch(id)).await.expect("launch");
        // QEMU pauses a guest on a KVM internal error.
        hv.set_state(id, DomainState::Paused);
        instances.kvm_watchdog().await;
        let (now, why) = virt.current();
        assert_eq!(now, Virt::Qemu);
        assert!(why.contains("paused"), "{why}");
        assert_eq!(hv.spec(id).expect("domain").virt, Virt::Qemu);
        assert_eq!(
            instances.status(id).await.expect("status").state,
            InstanceState::Running
        );
    }

    struct SlowSource;

    #[tonic::async_trait]
    impl ImageSource for SlowSource {
        async fn fetch(&self, image: &ImageRef, out: &mut tokio::fs::File) -> Result<(), String> {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Source.fetch(image, out).await
        }
    }

    #[tokio::test]
    async fn a_launch_fetching_its_images_is_reported_pending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hv = Arc::new(Fake::default());
        let (instances, _) = open_with(hv, dir.path(), Virt::Qemu, Duration::ZERO);
        let id = "i-0123456789abcdef6";
        let watch = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            instances.statuses().await.expect("statuses")
        };
        let (launched, during) = tokio::join!(instances.launch(&SlowSource, launch(id)), watch);
        assert_eq!(launched.expect("launch").state, InstanceState::Running);
        assert_eq!(during.len(), 1, "{during:?}");
        assert_eq!(during[0].instance_id, id);
        assert_eq!(during[0].state, InstanceState::Pending);
        assert_eq!(during[0].private_ip, "10.0.0.2");
        let after = instances.statuses().await.expect("statuses");
        assert_eq!(after.len(), 1, "reported once: {after:?}");
    }
}
