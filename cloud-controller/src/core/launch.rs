//! Launching instances: RunInstances as the cloud does it.
//!
//! The instances are recorded `pending` before any tier below hears of
//! them; a cluster places them (all or nothing, `max` down to `min`) and
//! keeps their specs; the launch answers with their addresses while the
//! cluster starts them in the background (only their ids and firewalls
//! travel the second time). Their states arrive with the cluster's reports.

use crate::instances::InstanceState;
use std::collections::HashMap;

use base64::Engine;
use common::time;
use proto::{ImageRef, InstanceSpec};

use super::{cluster::ClusterInfo, Cloud, ClusterError, CoreError, IdKind};
use crate::{
    images::{Image, ImageKind},
    instances::{InstanceRecord, InstanceType},
    security_groups::SecurityGroup,
    tags::Tag,
};

/// The most user data a launch takes (decoded).
pub const MAX_USER_DATA: usize = 16 * 1024;

/// What a launch asks for, as the caller named it.
#[derive(Debug, Clone, Default)]
pub struct LaunchRequest {
    pub account_id: String,
    pub image_id: String,
    /// `m1.small` when not given.
    pub instance_type: Option<String>,
    pub min: usize,
    pub max: usize,
    /// Overrides the image's.
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    /// Base64, as given.
    pub user_data: Option<String>,
    pub key_name: Option<String>,
    /// Security groups by name and by id; the account's `default` when both
    /// are empty.
    pub group_names: Vec<String>,
    pub group_ids: Vec<String>,
    pub zone: Option<String>,
    pub client_token: Option<String>,
    /// Tags for the new instances.
    pub tags: Vec<(String, Option<String>)>,
    pub disable_api_termination: bool,
    /// Volumes to make for each instance, over the image's mappings.
    pub block_devices: Vec<crate::images::BlockDevice>,
    /// Detailed monitoring from the start (`Monitoring.Enabled`).
    pub monitoring: bool,
    pub dry_run: bool,
}

/// What a launch made (or, for a client token used before, had made).
#[derive(Debug, Clone)]
pub struct Launched {
    pub records: Vec<InstanceRecord>,
    /// The instances' groups, by id, with their names.
    pub groups: HashMap<String, String>,
    /// Instance id to public address.
    pub public_ips: HashMap<String, String>,
    pub tags: Vec<Tag>,
}

/// How a node finds an image (in Walrus, or its cache by digest).
pub(super) fn image_ref(image: &Image) -> ImageRef {
    ImageRef {
        id: image.image_id.clone(),
        bucket: image.bucket.clone(),
        key: image.key.clone(),
        sha256: image.sha256.clone(),
        size: image.size,
    }
}

/// How many more instances of `itype` a quota leaves room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Room {
    count: usize,
    cores: usize,
    memory: usize,
}

impl Cloud {
    /// The account's group with this id or name.
    pub fn own_group(
        &self,
        account_id: &str,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<SecurityGroup, CoreError> {
        if let Some(id) = id.filter(|id| !IdKind::Group.well_formed(id)) {
            return Err(CoreError::Malformed {
                kind: IdKind::Group,
                id: id.to_string(),
            });
        }
        let groups = self.security_groups.of(account_id)?;
        let wanted = id.or(name).unwrap_or_default();
        groups
            .into_iter()
            .find(|g| match id {
                Some(id) => g.group_id == id,
                None => Some(g.name.as_str()) == name,
            })
            .ok_or_else(|| CoreError::NotFound {
                kind: IdKind::Group,
                ids: vec![wanted.to_string()],
            })
    }

    /// The groups a launch names (its account's `default` if none), by id.
    fn launch_groups(&self, req: &LaunchRequest) -> Result<Vec<SecurityGroup>, CoreError> {
        let me = &req.account_id;
        let mut out = Vec::new();
        for name in &req.group_names {
            out.push(self.own_group(me, None, Some(name))?);
        }
        for id in &req.group_ids {
            out.push(self.own_group(me, Some(id), None)?);
        }
        if out.is_empty() {
            out.push(self.own_group(me, None, Some("default"))?);
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(out)
    }

    /// Gives instance `instance_id` a public address from the pool, when
    /// the cloud does that (and the pool has one left).
    pub fn give_public_ip(&self, account_id: &str, instance_id: &str) -> Option<String> {
        if !self.settings.assign_public_ips {
            return None;
        }
        match self.addresses.assign(account_id, instance_id) {
            Ok(Some(a)) => {
                tracing::info!(instance_id, public_ip = %a.public_ip, "public address given");
                Some(a.public_ip)
            }
            Ok(None) => {
                tracing::warn!(
                    instance_id,
                    "the public address pool is exhausted: the instance has a private address only"
                );
                None
            }
            Err(e) => {
                tracing::error!(instance_id, error = %e, "no public address given");
                None
            }
        }
    }

    /// How many more instances of `itype` the account's quota allows (an
    /// error when fewer than `min`). Reads the account's own instances only.
    fn quota_allows(
        &self,
        account_id: &str,
        itype: &InstanceType,
        min: usize,
    ) -> Result<usize, CoreError> {
        let quota = self
            .accounts
            .find(account_id)
            .map_err(|e| CoreError::Store(e.to_string()))?
            .quota;
        if quota == crate::accounts::Quota::default() {
            return Ok(usize::MAX);
        }
        let types: HashMap<String, InstanceType> = self
            .instances
            .instance_types()?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let (mut count, mut cores, mut memory) = (0u64, 0u64, 0u64);
        for r in self.instances.of_account(account_id) {
            if r.state != InstanceState::Terminated {
                count += 1;
                if let Some(t) = types.get(&r.instance_type) {
                    cores += u64::from(t.cores);
                    memory += t.memory_mib;
                }
            }
        }
        let room = |limit: Option<u64>, used: u64, each: u64| match limit {
            None => usize::MAX,
            Some(l) => (l.saturating_sub(used) / each.max(1)) as usize,
        };
        let left = Room {
            count: room(quota.instances.map(u64::from), count, 1),
            cores: room(quota.cores.map(u64::from), cores, u64::from(itype.cores)),
            memory: room(quota.memory_mib, memory, itype.memory_mib),
        };
        if left.count < min {
            return Err(CoreError::InstanceLimit(format!(
                "Your quota allows for {} more running instance(s). You requested at least {min}.",
                left.count
            )));
        }
        if left.cores < min {
            return Err(CoreError::VcpuLimit(format!(
                "You have requested more vCPU capacity than your current vCPU limit of {} allows ({cores} in use).",
                quota.cores.unwrap_or_default()
            )));
        }
        if left.memory < min {
            return Err(CoreError::InstanceLimit(format!(
                "Your memory quota of {} MiB allows for {} more {} instance(s) ({memory} MiB in use). You requested at least {min}.",
                quota.memory_mib.unwrap_or_default(),
                left.memory,
                itype.name
            )));
        }
        Ok(left.count.min(left.cores).min(left.memory))
    }

    /// The cluster a launch goes to: the zone asked for, else the first
    /// ENABLED one.
    fn launch_cluster(&self, zone: Option<&str>) -> Result<ClusterInfo, CoreError> {
        let all = self.clusters.clusters();
        match zone {
            Some(z) => {
                all.into_iter()
                    .find(|c| c.zone == z)
                    .ok_or_else(|| CoreError::InvalidValue {
                        param: "AvailabilityZone",
                        value: z.to_string(),
                        why: "Invalid availability zone.".into(),
                    })
            }
            None => all.into_iter().find(|c| c.enabled).ok_or(CoreError::NoZone),
        }
    }

    fn tags_of(&self, account_id: &str, records: &[InstanceRecord]) -> Result<Vec<Tag>, CoreError> {
        let mut tags = Vec::new();
        for r in records {
            tags.extend(self.tags.of(account_id, &r.instance_id)?);
        }
        Ok(tags)
    }

    /// Launches instances (see the module's documentation).
    pub async fn launch(&self, req: LaunchRequest) -> Result<Launched, CoreError> {
        let me = req.account_id.clone();
        let image = self.launchable_image(&me, &req.image_id, ImageKind::Machine)?;
        let type_name = req.instance_type.as_deref().unwrap_or("m1.small");
        let itype =
            self.instances
                .instance_type(type_name)?
                .ok_or_else(|| CoreError::InvalidValue {
                    param: "InstanceType",
                    value: type_name.to_string(),
                    why: "No such instance type.".into(),
                })?;
        let (min, max) = (req.min.max(1), req.max.max(1));
        if min > max {
            return Err(CoreError::Counts { min });
        }
        let companion = |id: Option<&String>, kind: ImageKind, what: IdKind| {
            id.map(|k| {
                self.launchable_image(&me, k, kind)
                    .map_err(|_| CoreError::NotFound {
                        kind: what,
                        ids: vec![k.clone()],
                    })
            })
            .transpose()
        };
        let kernel = companion(
            req.kernel_id.as_ref().or(image.kernel_id.as_ref()),
            ImageKind::Kernel,
            IdKind::Kernel,
        )?;
        let ramdisk = companion(
            req.ramdisk_id.as_ref().or(image.ramdisk_id.as_ref()),
            ImageKind::Ramdisk,
            IdKind::Ramdisk,
        )?;
        let user_data = match &req.user_data {
            None => None,
            Some(u) => {
                let bad = |why: &str| CoreError::InvalidValue {
                    param: "UserData",
                    value: "(omitted)".into(),
                    why: why.into(),
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(u.trim())
                    .map_err(|_| bad("Invalid BASE64 encoding of user data."))?;
                if decoded.len() > MAX_USER_DATA {
                    return Err(bad("User data is limited to 16384 bytes."));
                }
                Some((u.trim().to_string(), decoded))
            }
        };
        // The EBS volumes each instance gets (its root first, when the
        // image is EBS-backed).
        let mut devices = self.check_block_devices(
            &me,
            &super::images::launch_devices(&image, &req.block_devices),
            Some(&image),
        )?;
        devices.retain(|d| d.ebs.is_some());
        let root_device = image
            .root_device_name
            .clone()
            .filter(|root| devices.iter().any(|d| &d.device_name == root));
        if image.key.is_empty() && root_device.is_none() {
            return Err(CoreError::BlockDeviceMapping(format!(
                "{} is EBS-backed: its root device cannot be left out",
                image.image_id
            )));
        }
        devices.sort_by_key(|d| Some(&d.device_name) != root_device.as_ref());
        let groups = self.launch_groups(&req)?;
        let group_names: HashMap<String, String> = groups
            .iter()
            .map(|g| (g.group_id.clone(), g.name.clone()))
            .collect();
        let key_pair = match &req.key_name {
            Some(name) => {
                Some(
                    self.keypairs
                        .get(&me, name)?
                        .ok_or_else(|| CoreError::NotFound {
                            kind: IdKind::KeyPair,
                            ids: vec![name.clone()],
                        })?,
                )
            }
            None => None,
        };
        let cluster = self.launch_cluster(req.zone.as_deref().filter(|z| !z.is_empty()))?;
        let _launching = self.launches.lock().await;
        let client_token = req.client_token.clone().filter(|t| !t.is_empty());
        if let Some(token) = &client_token {
            if token.len() > 64 {
                return Err(CoreError::InvalidValue {
                    param: "ClientToken",
                    value: token.clone(),
                    why: "At most 64 characters.".into(),
                });
            }
            let mut earlier = self.instances.by_client_token(&me, token);
            if !earlier.is_empty() {
                if earlier[0].image_id != image.image_id || earlier[0].instance_type != itype.name {
                    return Err(CoreError::IdempotentMismatch);
                }
                earlier.sort_by_key(|r| r.launch_index);
                let mut public_ips = self.addresses.by_instance()?;
                public_ips.retain(|id, _| earlier.iter().any(|r| &r.instance_id == id));
                return Ok(Launched {
                    tags: self.tags_of(&me, &earlier)?,
                    records: earlier,
                    groups: group_names,
                    public_ips,
                });
            }
        }
        let max = max.min(self.quota_allows(&me, &itype, min)?);
        if !devices.is_empty() {
            let per_instance: u64 = devices
                .iter()
                .filter_map(|d| d.ebs.as_ref()?.volume_size)
                .sum();
            self.volume_quota_allows(&me, devices.len() * min, per_instance * min as u64)?;
            self.storage_room_for(&cluster.zone, per_instance * min as u64)?;
            if !self.storage.serves(&cluster.zone) {
                return Err(CoreError::Unavailable(format!(
                    "no storage controller serves {} now",
                    cluster.zone
                )));
            }
        }
        if req.dry_run {
            return Err(CoreError::DryRun);
        }
        // A node fetches from Walrus only images it has not cached: a launch
        // of cached images does not wait for Walrus to be ENABLED.
        let walrus = self
            .registry
            .known_walrus()
            .ok_or_else(|| CoreError::Unavailable("no Walrus is known".into()))?;
        let reservation_id = common::ids::resource_id("r");
        let now = time::unix_ms();
        let mut last_error = String::new();
        for count in (min..=max).rev() {
            let mut records: Vec<InstanceRecord> = (0..count)
                .map(|i| InstanceRecord {
                    instance_id: common::ids::resource_id("i"),
                    reservation_id: reservation_id.clone(),
                    account_id: me.clone(),
                    image_id: image.image_id.clone(),
                    kernel_id: kernel.as_ref().map(|k| k.image_id.clone()),
                    ramdisk_id: ramdisk.as_ref().map(|r| r.image_id.clone()),
                    instance_type: itype.name.clone(),
                    zone: cluster.zone.clone(),
                    cluster: cluster.name.clone(),
                    node: String::new(),
                    state: InstanceState::Pending,
                    state_reason: String::new(),
                    launch_ms: now,
                    changed_ms: now,
                    key_name: req.key_name.clone(),
                    user_data: user_data.as_ref().map(|u| u.0.clone()),
                    client_token: client_token.clone(),
                    launch_index: i as u32,
                    private_ip: String::new(),
                    mac: String::new(),
                    security_groups: groups.iter().map(|g| g.group_id.clone()).collect(),
                    desired: None,
                    disable_api_termination: req.disable_api_termination,
                    root_device: root_device.clone(),
                    monitoring: req.monitoring,
                })
                .collect();
            // An EBS-backed instance's root volume id travels with its spec.
            let root_volumes: HashMap<String, String> = records
                .iter()
                .filter(|_| root_device.is_some())
                .map(|r| (r.instance_id.clone(), common::ids::resource_id("vol")))
                .collect();
            let specs: Vec<InstanceSpec> = records
                .iter()
                .map(|r| InstanceSpec {
                    instance_id: r.instance_id.clone(),
                    account_id: r.account_id.clone(),
                    instance_type: itype.name.clone(),
                    cores: itype.cores,
                    memory_mib: itype.memory_mib,
                    disk_gib: itype.disk_gib,
                    image: Some(image_ref(&image)),
                    kernel: kernel.as_ref().map(image_ref),
                    ramdisk: ramdisk.as_ref().map(image_ref),
                    user_data: user_data.as_ref().map(|u| u.1.clone()).unwrap_or_default(),
                    key_name: r.key_name.clone().unwrap_or_default(),
                    security_groups: r.security_groups.clone(),
                    public_key: key_pair
                        .as_ref()
                        .map(|k| k.public_key.clone())
                        .unwrap_or_default(),
                    root_volume_id: root_volumes
                        .get(&r.instance_id)
                        .cloned()
                        .unwrap_or_default(),
                    ..Default::default()
                })
                .collect();
            // Recorded before any tier below hears of them.
            self.instances.create(&records)?;
            let forget = |records: &[InstanceRecord]| {
                for r in records {
                    let _ = self.instances.remove(&r.instance_id);
                    let _ = self.tags.forget(&r.instance_id);
                }
            };
            let ids: Vec<(&str, &str)> = records
                .iter()
                .map(|r| (r.instance_id.as_str(), "instance"))
                .collect();
            let tags = match self.tag_new(&me, &ids, &req.tags) {
                Ok(tags) => tags,
                Err(e) => {
                    forget(&records);
                    return Err(e);
                }
            };
            match self.clusters.place(&cluster.name, specs, &walrus).await {
                Ok(placed) => {
                    for p in &placed {
                        if let Some(r) = records.iter_mut().find(|r| r.instance_id == p.instance_id)
                        {
                            r.node = p.node.clone();
                            r.mac = p.mac.clone();
                            r.private_ip = p.private_ip.clone();
                        }
                    }
                    let at: Vec<(&str, &str, &str, &str)> = placed
                        .iter()
                        .map(|p| {
                            (
                                p.instance_id.as_str(),
                                p.node.as_str(),
                                p.private_ip.as_str(),
                                p.mac.as_str(),
                            )
                        })
                        .collect();
                    // The cluster holds them now: a record that cannot say
                    // where is filled in by the cluster's next report, and
                    // the launch goes on (as it did before placements were
                    // written in one batch).
                    if let Err(e) = self.instances.placed(&at) {
                        tracing::error!(error = %e, %reservation_id, "placements not recorded; the cluster's reports will tell");
                    }
                    tracing::info!(%reservation_id, count, image_id = %image.image_id, instance_type = %itype.name, zone = %cluster.zone, "instances placed");
                    if !devices.is_empty() {
                        self.make_launch_volumes(&records, &devices, &root_volumes, &image);
                    }
                    let mut public_ips = HashMap::new();
                    for r in &records {
                        if let Some(ip) = self.give_public_ip(&me, &r.instance_id) {
                            public_ips.insert(r.instance_id.clone(), ip);
                        }
                    }
                    // Each new instance starts with its own rules in place.
                    // Memberships change only when a rule names one of the new
                    // instances' groups as its source, and the cluster needs
                    // those of the groups the new rules name.
                    let mut firewalls = self.firewalls_of(&records).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "firewalls of new instances not computed");
                        HashMap::new()
                    });
                    let names_groups = firewalls.values().any(|f| {
                        f.ingress
                            .iter()
                            .chain(f.egress.iter())
                            .any(|r| !r.source_groups.is_empty())
                    });
                    if names_groups
                        || self
                            .named_as_source(&records[0].security_groups)
                            .unwrap_or(true)
                    {
                        self.firewall_changed.notify_one();
                    }
                    let starts: Vec<(String, Option<proto::InstanceFirewall>)> = records
                        .iter()
                        .map(|r| (r.instance_id.clone(), firewalls.remove(&r.instance_id)))
                        .collect();
                    let this = self.clone();
                    let cluster_name = cluster.name.clone();
                    tokio::spawn(
                        async move { this.start_placed(&cluster_name, starts, &walrus).await },
                    );
                    return Ok(Launched {
                        records,
                        groups: group_names,
                        public_ips,
                        tags,
                    });
                }
                Err(ClusterError::Capacity(why)) => {
                    forget(&records);
                    last_error = why;
                }
                Err(e) => {
                    forget(&records);
                    return Err(CoreError::Unavailable(e.to_string()));
                }
            }
        }
        Err(CoreError::Capacity(format!(
            "There is not enough capacity to fulfill your request for {min} instance(s) of {}. {last_error}",
            itype.name
        )))
    }

    /// Records the EBS volumes of just-placed instances (`creating`, each
    /// already attaching to its instance) and has the storage controller
    /// make them; an EBS-backed instance boots once its root arrives.
    fn make_launch_volumes(
        &self,
        records: &[InstanceRecord],
        devices: &[crate::images::BlockDevice],
        root_volumes: &HashMap<String, String>,
        image: &Image,
    ) {
        let now = time::unix_ms();
        for r in records {
            for d in devices {
                let Some(ebs) = &d.ebs else { continue };
                let root = image.root_device_name.as_ref() == Some(&d.device_name);
                let volume_id = match root_volumes.get(&r.instance_id) {
                    Some(id) if root => id.clone(),
                    _ => common::ids::resource_id("vol"),
                };
                let volume = crate::volumes::VolumeRecord {
                    volume_id: volume_id.clone(),
                    account_id: r.account_id.clone(),
                    zone: r.zone.clone(),
                    size_gib: ebs.volume_size.unwrap_or(1),
                    snapshot_id: ebs.snapshot_id.clone(),
                    volume_type: ebs.volume_type.clone().unwrap_or_else(|| "gp2".into()),
                    state: crate::volumes::VolumeState::Creating,
                    created_ms: now,
                    attachment: Some(crate::volumes::Attachment {
                        instance_id: r.instance_id.clone(),
                        device: d.device_name.clone(),
                        state: "attaching".into(),
                        attach_ms: now,
                        delete_on_termination: ebs.delete_on_termination,
                    }),
                    reason: String::new(),
                    client_token: None,
                    auto_enable_io: false,
                };
                if let Err(e) = self.volumes.insert(&volume) {
                    tracing::error!(instance_id = %r.instance_id, volume = %volume_id, error = %e, "launch volume not recorded");
                    continue;
                }
                let cloud = self.clone();
                tokio::spawn(async move { cloud.follow_volume(&volume_id).await });
            }
        }
    }

    /// Has `cluster` start instances it placed; those it cannot start are
    /// recorded terminated, with the reason.
    async fn start_placed(
        &self,
        cluster: &str,
        starts: Vec<(String, Option<proto::InstanceFirewall>)>,
        walrus: &str,
    ) {
        match self.clusters.run(cluster, starts, walrus).await {
            Ok(failed) => {
                for f in failed {
                    let _ = self.instances.set_state(
                        &f.instance_id,
                        InstanceState::Terminated,
                        &f.reason,
                        None,
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the cluster could not start the instances");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::fake::{test_cloud, FakeCluster};

    fn request(cloud: &Cloud, account: &str, min: usize, max: usize) -> LaunchRequest {
        LaunchRequest {
            account_id: cloud.accounts.find(account).expect("account").account_id,
            image_id: "ami-00000001".into(),
            min,
            max,
            ..Default::default()
        }
    }

    /// Lets the task that starts placed instances run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_launch_records_places_and_starts_its_instances_in_one_trip() {
        let fake = Arc::new(FakeCluster::new(2, 4));
        let (cloud, _dir) = test_cloud(fake.clone());
        let mut req = request(&cloud, "eucalyptus", 2, 2);
        req.tags = vec![("Name".into(), Some("web".into()))];
        let launched = cloud.launch(req).await.expect("launch");
        assert_eq!(launched.records.len(), 2);
        for r in &launched.records {
            let stored = cloud
                .instances
                .get(&r.instance_id)
                .expect("get")
                .expect("recorded");
            assert_eq!(stored.state, InstanceState::Pending);
            assert!(stored.node.starts_with("node-"), "placed: {stored:?}");
            assert!(stored.private_ip.starts_with("10.0.0."), "{stored:?}");
            assert_eq!(stored.zone, "zone-1");
        }
        assert_eq!(launched.tags.len(), 2, "a tag on each instance");
        settle().await;
        let state = fake.state();
        assert_eq!(state.place_calls.len(), 1, "one placement");
        assert!(state.kept.is_empty(), "every placed spec was started");
        assert_eq!(state.started.len(), 2);
        // Each started with its groups' rules: the default group lets its
        // members in, so each one's ingress names the group, and the
        // cluster's membership of it holds both addresses.
        let mut ips: Vec<String> = launched
            .records
            .iter()
            .map(|r| format!("{}/32", r.private_ip))
            .collect();
        ips.sort();
        let group = launched.records[0].security_groups[0].clone();
        for r in &launched.records {
            let firewall = state.started[&r.instance_id].clone().expect("a firewall");
            assert!(
                firewall
                    .ingress
                    .iter()
                    .any(|i| i.source_groups.contains(&group)),
                "{firewall:?}"
            );
        }
        let policy = cloud.firewalls().expect("firewalls");
        assert_eq!(policy["cluster-1"].groups[&group], ips);
        // The task that keeps nodes in step sends the membership once, not
        // in every member's firewall.
        let task = tokio::spawn(cloud.clone().sync_firewalls());
        cloud.firewall_changed.notify_one();
        for _ in 0..100 {
            if fake.state().members.contains_key(&group) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        task.abort();
        assert_eq!(fake.state().members.get(&group), Some(&ips));
    }

    #[tokio::test]
    async fn a_launch_shrinks_to_what_fits_and_a_failed_one_leaves_nothing() {
        let fake = Arc::new(FakeCluster::new(1, 3));
        let (cloud, _dir) = test_cloud(fake.clone());
        let launched = cloud
            .launch(request(&cloud, "eucalyptus", 2, 5))
            .await
            .expect("launch");
        assert_eq!(launched.records.len(), 3, "MaxCount down to what fits");
        let me = launched.records[0].account_id.clone();
        let err = cloud
            .launch(request(&cloud, "eucalyptus", 1, 1))
            .await
            .expect_err("no room left");
        assert!(matches!(err, CoreError::Capacity(_)), "{err:?}");
        assert_eq!(
            cloud.instances.of_account(&me).len(),
            3,
            "nothing left behind"
        );
        fake.set_down(true);
        let err = cloud
            .launch(request(&cloud, "eucalyptus", 1, 1))
            .await
            .expect_err("cluster down");
        assert_eq!(err, CoreError::NoZone);
        let mut req = request(&cloud, "eucalyptus", 1, 1);
        req.zone = Some("zone-1".into());
        let err = cloud.launch(req).await.expect_err("cluster down");
        assert!(matches!(err, CoreError::Unavailable(_)), "{err:?}");
        assert_eq!(
            cloud.instances.of_account(&me).len(),
            3,
            "nothing left behind"
        );
    }

    #[tokio::test]
    async fn quotas_count_the_accounts_own_instances() {
        let fake = Arc::new(FakeCluster::new(4, 16));
        let (cloud, _dir) = test_cloud(fake);
        cloud.accounts.create("alice").expect("alice");
        cloud
            .accounts
            .set_quota(
                "alice",
                crate::accounts::Quota {
                    instances: Some(3),
                    ..Default::default()
                },
            )
            .expect("quota");
        // Another account's instances do not count.
        cloud
            .launch(request(&cloud, "eucalyptus", 5, 5))
            .await
            .expect("system account");
        let err = cloud
            .launch(request(&cloud, "alice", 4, 4))
            .await
            .expect_err("over quota");
        assert!(matches!(err, CoreError::InstanceLimit(_)), "{err:?}");
        let two = cloud
            .launch(request(&cloud, "alice", 1, 2))
            .await
            .expect("within quota");
        assert_eq!(two.records.len(), 2);
        let one = cloud
            .launch(request(&cloud, "alice", 1, 5))
            .await
            .expect("the rest");
        assert_eq!(one.records.len(), 1, "MaxCount cut to the quota");
        let mut dry = request(&cloud, "eucalyptus", 1, 1);
        dry.dry_run = true;
        assert_eq!(cloud.launch(dry).await.expect_err("dry"), CoreError::DryRun);
    }

    #[tokio::test]
    async fn a_client_token_launches_once() {
        let fake = Arc::new(FakeCluster::new(1, 8));
        let (cloud, _dir) = test_cloud(fake.clone());
        let mut req = request(&cloud, "eucalyptus", 2, 2);
        req.client_token = Some("token-1".into());
        let first = cloud.launch(req.clone()).await.expect("first");
        let again = cloud.launch(req.clone()).await.expect("again");
        let ids = |l: &Launched| -> Vec<String> {
            l.records.iter().map(|r| r.instance_id.clone()).collect()
        };
        assert_eq!(ids(&first), ids(&again));
        assert_eq!(fake.state().place_calls.len(), 1, "placed once");
        req.instance_type = Some("m1.large".into());
        assert_eq!(
            cloud.launch(req).await.expect_err("other parameters"),
            CoreError::IdempotentMismatch
        );
    }

    #[tokio::test]
    async fn bad_references_are_refused_before_anything_is_recorded() {
        let fake = Arc::new(FakeCluster::new(1, 8));
        let (cloud, _dir) = test_cloud(fake.clone());
        let base = request(&cloud, "eucalyptus", 1, 1);
        type Expect = fn(&CoreError) -> bool;
        let cases: Vec<(LaunchRequest, Expect)> = vec![
            (
                LaunchRequest {
                    image_id: "ami-zzz".into(),
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        CoreError::Malformed {
                            kind: IdKind::Image,
                            ..
                        }
                    )
                },
            ),
            (
                LaunchRequest {
                    image_id: "ami-12345678".into(),
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        CoreError::NotFound {
                            kind: IdKind::Image,
                            ..
                        }
                    )
                },
            ),
            (
                LaunchRequest {
                    instance_type: Some("m9.huge".into()),
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        CoreError::InvalidValue {
                            param: "InstanceType",
                            ..
                        }
                    )
                },
            ),
            (
                LaunchRequest {
                    min: 3,
                    max: 2,
                    ..base.clone()
                },
                |e| matches!(e, CoreError::Counts { min: 3 }),
            ),
            (
                LaunchRequest {
                    key_name: Some("nope".into()),
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        CoreError::NotFound {
                            kind: IdKind::KeyPair,
                            ..
                        }
                    )
                },
            ),
            (
                LaunchRequest {
                    group_ids: vec!["sg-nothere".into()],
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        CoreError::Malformed {
                            kind: IdKind::Group,
                            ..
                        }
                    )
                },
            ),
            (
                LaunchRequest {
                    user_data: Some("not base64!".into()),
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        CoreError::InvalidValue {
                            param: "UserData",
                            ..
                        }
                    )
                },
            ),
            (
                LaunchRequest {
                    kernel_id: Some("aki-12345678".into()),
                    ..base.clone()
                },
                |e| {
                    matches!(
                        e,
                        CoreError::NotFound {
                            kind: IdKind::Kernel,
                            ..
                        }
                    )
                },
            ),
        ];
        for (req, expected) in cases {
            let err = cloud.launch(req).await.expect_err("refused");
            assert!(expected(&err), "{err:?}");
        }
        assert!(cloud.instances.list().expect("list").is_empty());
        assert!(fake.state().place_calls.is_empty());
    }
}
