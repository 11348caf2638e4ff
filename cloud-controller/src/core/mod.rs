//! The cloud controller's core: the cloud's state of record and every
//! operation on it, on domain types, with typed errors ([`CoreError`]).
//!
//! The wire layers (the EC2 Query API in [`crate::ec2`], the admin and
//! identity gRPC services in [`crate::grpc`], the metadata service in
//! [`crate::imds`]) parse a request, call the core and render its answer;
//! anything later (CloudWatch, a web console) calls the same operations.
//!
//! - [`launch`]: RunInstances as the cloud does it (images, quotas,
//!   client tokens, placement, addresses, firewalls).
//! - [`lifecycle`]: terminate, stop, start, reboot, the console, and the
//!   task that carries out requests a tier below missed.
//! - [`security_groups`]: creating and deleting groups, changing rules.
//! - [`firewall`]: what each instance's security groups allow, and the
//!   task that keeps the nodes in step.
//! - [`addresses`]: elastic IPs.
//! - [`describe`]: what each Describe call lists (ids, filters, paging).
//! - [`images`]: which images an account sees, launches and owns.
//! - [`keypairs`]: key pairs, made here or imported.
//! - [`accounts`]: deleting and purging accounts.
//! - [`upkeep`]: the background reconciliations (unknown guests, liveness).
//! - [`snapshots`]: EBS snapshots, written into Walrus by the SC.
//! - [`volumes`]: EBS volumes, made and deleted by the zone's storage
//!   controller ([`StorageApi`], over gRPC in [`storage`]).
//! - [`monitoring`]: metrics (published, measured, queried); [`alarms`]:
//!   metric alarms and their actions.
//! - [`cluster`]: how the core calls the clusters below ([`ClusterApi`]),
//!   over gRPC; [`fake`] is an in-memory cluster for unit tests.

pub mod accounts;
pub mod addresses;
pub mod alarms;
pub mod cluster;
pub mod create_image;
pub mod describe;
pub mod error;
pub mod fake;
pub mod firewall;
pub mod images;
pub mod keypairs;
pub mod launch;
pub mod lifecycle;
pub mod migrate;
pub mod monitoring;
pub mod rebalance;
pub mod replace_root;
pub mod security_groups;
pub mod snapshots;
pub mod storage;
pub mod tags;
pub mod upkeep;
pub mod volumes;

use std::sync::Arc;

use common::store::{Store, StoreError};

pub use cluster::{ClusterApi, ClusterError, ClusterInfo, GrpcClusters};
pub use error::{CoreError, IdKind};
pub use storage::{GrpcStorage, StorageApi, StorageError};

use crate::{accounts::Accounts, registry::Registry};

/// The cloud: its state of record and the operations on it. Cheap to
/// clone (every part is shared).
#[derive(Clone, Debug)]
pub struct Cloud {
    pub registry: Arc<Registry>,
    pub accounts: Accounts,
    pub instances: Arc<crate::instances::Instances>,
    pub images: Arc<crate::images::Images>,
    /// How this CLC proves itself to the other tiers.
    pub trust: common::rpc::Trust,
    /// What else an account holds (an account purge removes it).
    pub keypairs: Arc<crate::keypairs::KeyPairs>,
    pub security_groups: Arc<crate::security_groups::SecurityGroups>,
    pub addresses: Arc<crate::addresses::Addresses>,
    pub tags: Arc<crate::tags::Tags>,
    pub volumes: Arc<crate::volumes::Volumes>,
    pub snapshots: Arc<crate::snapshots::Snapshots>,
    /// Root volume replacements (CreateReplaceRootVolumeTask).
    pub root_tasks: Arc<common::store::Table<crate::volumes::ReplaceRootTask>>,
    /// Guests nodes report that the cloud has no record of (or only a
    /// terminated one), and what the policy did about them.
    pub unknown_guests: Arc<std::sync::Mutex<UnknownGuests>>,
    /// The clusters below, as the core calls them.
    pub clusters: Arc<dyn ClusterApi>,
    /// The storage controllers, as the core calls them.
    pub storage: Arc<dyn StorageApi>,
    /// Held from an account's quota check to its instances being recorded,
    /// so concurrent launches cannot both pass the check.
    pub launches: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the task that pushes security group rules to the nodes.
    pub firewall_changed: Arc<tokio::sync::Notify>,
    /// Instances migrating now (shown to administrators as `migrating`),
    /// each with the node it leaves.
    pub migrating: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    /// What the cloud decided and did (rebalancing, migrations).
    pub events: Arc<crate::events::Events>,
    /// Every account's metrics and alarms (CloudWatch).
    pub metrics: Arc<metric_store::MetricStore>,
    pub settings: Settings,
}

/// Settings of the cloud's front ends.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The region this cloud is.
    pub region: String,
    /// The public EC2 endpoint, for DescribeRegions.
    pub endpoint: String,
    /// The system account's name (its users are cloud administrators).
    pub admin_account: String,
    /// Every new instance gets a public address from the pool (while it
    /// lasts), as in Eucalyptus.
    pub assign_public_ips: bool,
}

/// What the cloud does with a guest it has no record of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownGuestPolicy {
    /// Power it off (its disks stay): the default.
    Stop,
    /// Only show it to the administrator.
    Report,
}

/// An unknown guest: where it is, since when, what was done.
#[derive(Clone, Debug)]
pub struct UnknownGuest {
    pub cluster: String,
    pub node: String,
    pub instance_id: String,
    pub running: bool,
    pub first_seen_ms: i64,
    pub detail: String,
}

/// The unknown guests by (cluster, node, instance id).
pub type UnknownGuests = std::collections::BTreeMap<(String, String, String), UnknownGuest>;

/// What [`Cloud::open`] needs besides the store.
#[derive(Debug)]
pub struct Parts {
    pub registry: Arc<Registry>,
    pub accounts: Accounts,
    pub trust: common::rpc::Trust,
    pub public_ips: std::collections::BTreeSet<std::net::Ipv4Addr>,
    pub settings: Settings,
    /// The clusters below; `None` for the gRPC ones the registry knows.
    pub clusters: Option<Arc<dyn ClusterApi>>,
    /// The storage controllers; `None` for the gRPC ones the registry knows.
    pub storage: Option<Arc<dyn StorageApi>>,
    /// The metric store (a database of its own).
    pub metrics: Arc<metric_store::MetricStore>,
}

impl Cloud {
    /// Tags `resources` (id and type, just made by `account_id`) with
    /// `tags`; returns them as stored.
    pub fn tag_new(
        &self,
        account_id: &str,
        resources: &[(&str, &str)],
        tags: &[(String, Option<String>)],
    ) -> Result<Vec<crate::tags::Tag>, CoreError> {
        let all: Vec<crate::tags::Tag> = resources
            .iter()
            .flat_map(|(resource_id, resource_type)| {
                tags.iter().map(move |(k, v)| crate::tags::Tag {
                    account_id: account_id.to_string(),
                    resource_id: resource_id.to_string(),
                    resource_type: resource_type.to_string(),
                    key: k.clone(),
                    value: v.clone().unwrap_or_default(),
                })
            })
            .collect();
        self.tags.set(&all)?;
        Ok(all)
    }

    /// Opens every table of the cloud in `store`.
    pub fn open(store: &Store, parts: Parts) -> Result<Self, StoreError> {
        let clusters = parts.clusters.unwrap_or_else(|| {
            Arc::new(GrpcClusters::new(
                parts.registry.clone(),
                parts.trust.clone(),
            ))
        });
        let storage = parts.storage.unwrap_or_else(|| {
            Arc::new(GrpcStorage::new(
                parts.registry.clone(),
                parts.trust.clone(),
            ))
        });
        Ok(Self {
            volumes: Arc::new(crate::volumes::Volumes::open(store)?),
            snapshots: Arc::new(crate::snapshots::Snapshots::open(store)?),
            root_tasks: Arc::new(store.table()?),
            storage,
            instances: Arc::new(crate::instances::Instances::open(store)?),
            images: Arc::new(crate::images::Images::open(store)?),
            keypairs: Arc::new(crate::keypairs::KeyPairs::open(store)?),
            security_groups: Arc::new(crate::security_groups::SecurityGroups::open(store)?),
            addresses: Arc::new(crate::addresses::Addresses::open(store, parts.public_ips)?),
            tags: Arc::new(crate::tags::Tags::open(store)?),
            registry: parts.registry,
            accounts: parts.accounts,
            trust: parts.trust,
            unknown_guests: Default::default(),
            clusters,
            launches: Default::default(),
            firewall_changed: Default::default(),
            migrating: Default::default(),
            events: Arc::new(crate::events::Events::open(store)?),
            metrics: parts.metrics,
            settings: parts.settings,
        })
    }
}
