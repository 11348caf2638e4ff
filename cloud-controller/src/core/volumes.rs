//! EBS volumes: CreateVolume, DeleteVolume and the volume attributes. The
//! cloud records each change first and answers; the zone's storage
//! controller carries it out in the background, and [`Cloud::finish_volumes`]
//! carries out what a restart or an absent SC left undone.

use std::time::Duration;

use super::{error::IdKind, storage::StorageError, tags::TagPair, Cloud, ClusterError, CoreError};
use crate::{
    tags::Tag,
    volumes::{VolumeRecord, VolumeState},
};

/// A CreateVolume request.
#[derive(Debug, Clone, Default)]
pub struct NewVolume {
    pub account_id: String,
    pub zone: String,
    pub size_gib: Option<u64>,
    pub snapshot_id: Option<String>,
    /// `standard` or `gp2` (the default).
    pub volume_type: Option<String>,
    pub tags: Vec<TagPair>,
    pub client_token: Option<String>,
}

/// A volume as just made, with its tags.
#[derive(Debug, Clone)]
pub struct CreatedVolume {
    pub volume: VolumeRecord,
    pub tags: Vec<Tag>,
}

/// The largest volume of each type, in GiB.
pub(super) fn max_gib(volume_type: &str) -> u64 {
    match volume_type {
        "standard" => 1024,
        _ => 16384,
    }
}

impl Cloud {
    /// Checks that `account_id`'s volume quota leaves room for `count`
    /// more volumes of `gib` GiB in all.
    pub(super) fn volume_quota_allows(
        &self,
        account_id: &str,
        count: usize,
        gib: u64,
    ) -> Result<(), CoreError> {
        let quota = self
            .accounts
            .find(account_id)
            .map_err(|e| CoreError::Store(e.to_string()))?
            .quota;
        if quota.volumes.is_none() && quota.volume_gib.is_none() {
            return Ok(());
        }
        let held = self.volumes.of(account_id)?;
        let used_gib: u64 = held.iter().map(|v| v.size_gib).sum();
        if let Some(most) = quota.volumes {
            if held.len() + count > most as usize {
                return Err(CoreError::VolumeLimit(format!(
                    "You have reached your quota of {most} volume(s) ({} held).",
                    held.len()
                )));
            }
        }
        if let Some(most) = quota.volume_gib {
            if used_gib + gib > most {
                return Err(CoreError::VolumeLimit(format!(
                    "Your quota of {most} GiB of volume storage allows {} GiB more ({used_gib} GiB held); {gib} GiB asked.",
                    most.saturating_sub(used_gib)
                )));
            }
        }
        Ok(())
    }

    /// Checks that zone `zone`'s storage controller has room for `gib` GiB
    /// more, as it last reported (it checks again when it makes them).
    pub(super) fn storage_room_for(&self, zone: &str, gib: u64) -> Result<(), CoreError> {
        match self.registry.storage_room(zone) {
            Some((capacity, provisioned)) if provisioned.saturating_add(gib) > capacity => {
                Err(CoreError::VolumeCapacity(format!(
                    "There is not enough free volume capacity in {zone}: {} GiB of {capacity} GiB free, {gib} GiB asked.",
                    capacity.saturating_sub(provisioned)
                )))
            }
            _ => Ok(()),
        }
    }

    /// Volume `id` of account `account_id`.
    pub fn own_volume(&self, account_id: &str, id: &str) -> Result<VolumeRecord, CoreError> {
        if !IdKind::Volume.well_formed(id) {
            return Err(CoreError::Malformed {
                kind: IdKind::Volume,
                id: id.to_string(),
            });
        }
        match self.volumes.get(id)? {
            Some(v) if v.account_id == account_id => Ok(v),
            _ => Err(CoreError::NotFound {
                kind: IdKind::Volume,
                ids: vec![id.to_string()],
            }),
        }
    }

    /// CreateVolume: checks the request, records the volume `creating`
    /// and has the zone's storage controller make it.
    pub async fn create_volume(
        &self,
        req: NewVolume,
        dry_run: bool,
    ) -> Result<CreatedVolume, CoreError> {
        let volume_type = req.volume_type.clone().unwrap_or_else(|| "gp2".into());
        if !matches!(volume_type.as_str(), "standard" | "gp2") {
            return Err(CoreError::InvalidValue {
                param: "VolumeType",
                value: volume_type,
                why: "This cloud offers the volume types standard and gp2.".into(),
            });
        }
        let snapshot = match &req.snapshot_id {
            Some(id) => Some(self.restorable_snapshot(&req.account_id, id)?),
            None => None,
        };
        let size_gib = match (&snapshot, req.size_gib) {
            (Some(s), Some(size)) if size < s.volume_size_gib => {
                return Err(CoreError::InvalidValue {
                    param: "Size",
                    value: size.to_string(),
                    why: format!(
                        "The volume size is invalid for the snapshot: it is {} GiB.",
                        s.volume_size_gib
                    ),
                })
            }
            (Some(s), None) => s.volume_size_gib,
            (_, Some(size)) => size,
            (None, None) => return Err(CoreError::Missing("Size")),
        };
        let max = max_gib(&volume_type);
        if !(1..=max).contains(&size_gib) {
            return Err(CoreError::InvalidValue {
                param: "Size",
                value: size_gib.to_string(),
                why: format!("A {volume_type} volume is 1 to {max} GiB."),
            });
        }
        if !self.clusters.clusters().iter().any(|c| c.zone == req.zone) {
            return Err(CoreError::InvalidValue {
                param: "AvailabilityZone",
                value: req.zone.clone(),
                why: format!("Invalid availability zone: [{}]", req.zone),
            });
        }
        if let Some(token) = &req.client_token {
            if let Some(v) = self
                .volumes
                .of(&req.account_id)?
                .into_iter()
                .find(|v| v.client_token.as_ref() == Some(token))
            {
                if v.size_gib != size_gib || v.zone != req.zone || v.volume_type != volume_type {
                    return Err(CoreError::IdempotentMismatch);
                }
                let tags = self.tags_by_resource(&req.account_id)?;
                let tags = tags.get(&v.volume_id).cloned().unwrap_or_default();
                return Ok(CreatedVolume { volume: v, tags });
            }
        }
        self.volume_quota_allows(&req.account_id, 1, size_gib)?;
        self.storage_room_for(&req.zone, size_gib)?;
        if !self.storage.serves(&req.zone) {
            return Err(CoreError::Unavailable(format!(
                "no storage controller serves {} now",
                req.zone
            )));
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let volume = VolumeRecord {
            volume_id: common::ids::resource_id("vol"),
            account_id: req.account_id.clone(),
            zone: req.zone.clone(),
            size_gib,
            snapshot_id: snapshot.map(|s| s.snapshot_id),
            volume_type,
            state: VolumeState::Creating,
            created_ms: common::time::unix_ms(),
            attachment: None,
            reason: String::new(),
            client_token: req.client_token.clone(),
            auto_enable_io: false,
        };
        self.volumes.insert(&volume)?;
        let tags = self.tag_new(
            &req.account_id,
            &[(volume.volume_id.as_str(), "volume")],
            &req.tags,
        )?;
        let cloud = self.clone();
        let id = volume.volume_id.clone();
        tokio::spawn(async move { cloud.follow_volume(&id).await });
        Ok(CreatedVolume { volume, tags })
    }

    /// DeleteVolume: an attached volume is refused; otherwise it is
    /// recorded `deleting` and the storage controller deletes its data.
    pub async fn delete_volume(
        &self,
        account_id: &str,
        id: &str,
        dry_run: bool,
    ) -> Result<(), CoreError> {
        let v = self.own_volume(account_id, id)?;
        if let Some(a) = &v.attachment {
            return Err(CoreError::VolumeInUse(format!(
                "Volume {id} is currently attached to {}",
                a.instance_id
            )));
        }
        if v.state == VolumeState::Deleting {
            return Err(CoreError::IncorrectVolumeState(format!(
                "The volume '{id}' is already being deleted."
            )));
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        self.volumes.put(&VolumeRecord {
            state: VolumeState::Deleting,
            ..v
        })?;
        let cloud = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { cloud.carry_out_volume(&id).await });
        Ok(())
    }

    /// ModifyVolumeAttribute `autoEnableIO`.
    pub fn set_auto_enable_io(
        &self,
        account_id: &str,
        id: &str,
        on: bool,
        dry_run: bool,
    ) -> Result<(), CoreError> {
        let v = self.own_volume(account_id, id)?;
        if dry_run {
            return Err(CoreError::DryRun);
        }
        self.volumes.put(&VolumeRecord {
            auto_enable_io: on,
            ..v
        })?;
        Ok(())
    }

    /// Carries out volume `id`'s creation and follows it (a volume filled
    /// from a snapshot takes a while) for up to a minute; what is left
    /// then is [`Cloud::finish_volumes`]'s.
    pub(super) async fn follow_volume(&self, id: &str) {
        let mut wait = Duration::from_millis(100);
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            self.carry_out_volume(id).await;
            let creating = matches!(
                self.volumes.get(id),
                Ok(Some(v)) if v.state == VolumeState::Creating
            );
            if !creating || tokio::time::Instant::now() + wait > until {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Carries out what volume `id`'s state asks of its storage controller
    /// (make it, delete it); leaves it for [`Cloud::finish_volumes`] when the
    /// SC cannot be reached.
    pub(super) async fn carry_out_volume(&self, id: &str) {
        let Ok(Some(v)) = self.volumes.get(id) else {
            return;
        };
        let outcome = match v.state {
            VolumeState::Creating => {
                let walrus = self.registry.known_walrus().unwrap_or_default();
                let from = v.snapshot_id.as_deref().map(|s| (s, walrus.as_str()));
                match self
                    .storage
                    .create_volume(&v.zone, id, v.size_gib, from)
                    .await
                {
                    // A launch's volume is attaching to its instance already.
                    Ok(state) if state == "available" && v.attachment.is_some() => {
                        Ok(Some(VolumeState::InUse))
                    }
                    Ok(state) if state == "available" => Ok(Some(VolumeState::Available)),
                    Ok(state) if state == "error" => Err(StorageError::Refused(
                        "the storage controller could not make it".into(),
                    )),
                    // Still being filled from its snapshot: asked again later.
                    Ok(_) => return,
                    Err(e) => Err(e),
                }
            }
            VolumeState::Deleting => self.storage.delete_volume(&v.zone, id).await.map(|()| None),
            _ => return,
        };
        let attach = matches!(outcome, Ok(Some(VolumeState::InUse)));
        let result = match outcome {
            Ok(Some(state)) => self.volumes.put(&VolumeRecord { state, ..v }),
            Ok(None) => self
                .volumes
                .remove(id)
                .and_then(|()| self.tags.forget(id).map(|_| ())),
            Err(StorageError::Refused(why)) => {
                tracing::warn!(volume = %id, %why, "storage controller refused the volume");
                self.root_volume_failed(&v, &why).await;
                self.volumes.put(&VolumeRecord {
                    state: VolumeState::Error,
                    reason: why,
                    attachment: None,
                    ..v
                })
            }
            Err(e) => {
                tracing::info!(volume = %id, error = %e, "volume change left for later");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(volume = %id, error = %e, "volume record not updated");
        } else if attach {
            Box::pin(self.carry_out_attachment(id)).await;
        }
    }

    /// An EBS-backed instance whose root volume could not be made ends:
    /// terminated, with the reason.
    async fn root_volume_failed(&self, v: &VolumeRecord, why: &str) {
        let Some(a) = &v.attachment else { return };
        let Ok(Some(r)) = self.instances.get(&a.instance_id) else {
            return;
        };
        if r.root_device.as_deref() != Some(a.device.as_str()) {
            return;
        }
        tracing::warn!(instance_id = %r.instance_id, volume = %v.volume_id, %why, "the root volume could not be made; the instance ends");
        if let Err(e) = self
            .terminate(&r.account_id, std::slice::from_ref(&r.instance_id), false)
            .await
        {
            tracing::error!(instance_id = %r.instance_id, error = %e, "instance not terminated");
        }
        let _ = self.instances.set_state(
            &r.instance_id,
            crate::instances::InstanceState::Terminated,
            &format!("Server.InternalError: its root volume could not be made: {why}"),
            None,
        );
    }

    /// Forever (run it in its own task): every `every`, carries out the
    /// volume changes recorded but not done (a CLC restart, an SC away).
    pub async fn finish_volumes(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.follow_snapshots().await;
            self.follow_images();
            self.follow_images();
            let pending = match self.volumes.list() {
                Ok(all) => all,
                Err(e) => {
                    tracing::warn!(error = %e, "volumes not read");
                    continue;
                }
            };
            for v in pending {
                if matches!(v.state, VolumeState::Creating | VolumeState::Deleting) {
                    self.carry_out_volume(&v.volume_id).await;
                } else if v.attachment.is_some() {
                    // Attachments in flight, and those whose instance is gone.
                    self.carry_out_attachment(&v.volume_id).await;
                }
            }
        }
    }
}

/// True for the device names EC2 takes for EBS volumes (`/dev/sdf`,
/// `/dev/xvdg`, `/dev/sdh1`, ...), the root's excepted.
pub fn valid_device(d: &str) -> bool {
    matches!(super::images::device_letter(d), Some(letter) if letter != 'a')
}

impl Cloud {
    /// AttachVolume: checks the request, records the volume `in-use` and
    /// the attachment `attaching`, then has the SC export the volume to the
    /// instance's node and the cluster attach it to the guest.
    pub async fn attach_volume(
        &self,
        account_id: &str,
        volume_id: &str,
        instance_id: &str,
        device: &str,
        dry_run: bool,
    ) -> Result<VolumeRecord, CoreError> {
        let v = self.own_volume(account_id, volume_id)?;
        let instance = self
            .own_instances(account_id, &[instance_id.to_string()])?
            .remove(0);
        if !valid_device(device) {
            return Err(CoreError::InvalidValue {
                param: "device",
                value: device.to_string(),
                why: format!("{device} is not a valid EBS device name."),
            });
        }
        if v.attachment.is_some() || v.state == VolumeState::InUse {
            return Err(CoreError::VolumeInUse(format!(
                "{volume_id} is already attached to an instance"
            )));
        }
        if v.state != VolumeState::Available {
            return Err(CoreError::IncorrectVolumeState(format!(
                "{volume_id} is not 'available'."
            )));
        }
        if !matches!(
            instance.state,
            crate::instances::InstanceState::Running | crate::instances::InstanceState::Stopped
        ) || instance.node.is_empty()
        {
            return Err(CoreError::IncorrectState {
                id: instance_id.to_string(),
                wanted: "attached to",
            });
        }
        if instance.zone != v.zone {
            return Err(CoreError::ZoneMismatch(format!(
                "The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'"
            )));
        }
        if self
            .volumes
            .of(account_id)?
            .iter()
            .filter_map(|o| o.attachment.as_ref())
            .any(|a| a.instance_id == instance_id && a.device == device)
        {
            return Err(CoreError::InvalidValue {
                param: "device",
                value: device.to_string(),
                why: format!("Attachment point {device} is already in use"),
            });
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let attaching = VolumeRecord {
            state: VolumeState::InUse,
            attachment: Some(crate::volumes::Attachment {
                instance_id: instance_id.to_string(),
                device: device.to_string(),
                state: "attaching".into(),
                attach_ms: common::time::unix_ms(),
                delete_on_termination: false,
            }),
            ..v
        };
        self.volumes.put(&attaching)?;
        let cloud = self.clone();
        let id = volume_id.to_string();
        tokio::spawn(async move { cloud.carry_out_attachment(&id).await });
        Ok(attaching)
    }

    /// DetachVolume: records the attachment `detaching`; the cluster takes
    /// the disk from the guest and the SC ends the export.
    pub async fn detach_volume(
        &self,
        account_id: &str,
        volume_id: &str,
        instance_id: Option<&str>,
        force: bool,
        dry_run: bool,
    ) -> Result<VolumeRecord, CoreError> {
        let v = self.own_volume(account_id, volume_id)?;
        let Some(a) = v.attachment.clone() else {
            return Err(CoreError::IncorrectVolumeState(format!(
                "Volume '{volume_id}' is in the '{}' state.",
                v.state.name()
            )));
        };
        if let Some(i) = instance_id {
            if i != a.instance_id {
                return Err(CoreError::AttachmentNotFound(format!(
                    "The volume {volume_id} is not attached to instance {i}"
                )));
            }
        }
        if let Ok(Some(r)) = self.instances.get(&a.instance_id) {
            if r.root_device.as_deref() == Some(a.device.as_str())
                && r.state != crate::instances::InstanceState::Terminated
            {
                return Err(CoreError::IncorrectVolumeState(format!(
                    "Unable to detach root volume '{volume_id}' from instance '{}'",
                    a.instance_id
                )));
            }
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let detaching = VolumeRecord {
            attachment: Some(crate::volumes::Attachment {
                state: if force {
                    "force-detaching"
                } else {
                    "detaching"
                }
                .into(),
                ..a
            }),
            ..v
        };
        self.volumes.put(&detaching)?;
        let cloud = self.clone();
        let id = volume_id.to_string();
        tokio::spawn(async move { cloud.carry_out_attachment(&id).await });
        let mut shown = detaching;
        if let Some(a) = shown.attachment.as_mut() {
            a.state = "detaching".into();
        }
        Ok(shown)
    }

    /// Carries out what volume `id`'s attachment asks (attach, detach), or
    /// detaches it from an instance that is gone; what cannot be done now
    /// is left for [`Cloud::finish_volumes`].
    pub(super) async fn carry_out_attachment(&self, id: &str) {
        let Ok(Some(v)) = self.volumes.get(id) else {
            return;
        };
        let Some(a) = v.attachment.clone() else {
            return;
        };
        let instance = self.instances.get(&a.instance_id).ok().flatten();
        let gone = instance.as_ref().is_none_or(|r| {
            matches!(
                r.state,
                crate::instances::InstanceState::Terminated
                    | crate::instances::InstanceState::ShuttingDown
            )
        });
        let node = instance
            .as_ref()
            .map(|r| r.node.clone())
            .unwrap_or_default();
        let cluster = instance
            .as_ref()
            .map(|r| r.cluster.clone())
            .unwrap_or_default();
        let root = instance
            .as_ref()
            .is_some_and(|r| r.root_device.as_deref() == Some(a.device.as_str()));
        let outcome: Result<Option<VolumeRecord>, String> = match a.state.as_str() {
            _ if gone => {
                // The instance is gone: the export ends and the volume is
                // free again (or deleted, as its attachment asked).
                match self.storage.unexport(&v.zone, id, &node).await {
                    Ok(()) if a.delete_on_termination => Ok(Some(VolumeRecord {
                        state: VolumeState::Deleting,
                        attachment: None,
                        ..v.clone()
                    })),
                    Ok(()) => Ok(Some(VolumeRecord {
                        state: VolumeState::Available,
                        attachment: None,
                        ..v.clone()
                    })),
                    Err(e) => Err(e.to_string()),
                }
            }
            "attaching" if node.is_empty() || v.state == VolumeState::Creating => {
                // Not placed, or not made, yet.
                Ok(None)
            }
            "attaching" => {
                let attached = async {
                    let connection = self
                        .storage
                        .export(&v.zone, id, &node)
                        .await
                        .map_err(|e| (e.to_string(), matches!(e, StorageError::Refused(_))))?;
                    self.clusters
                        .attach_volume(&cluster, &a.instance_id, id, &connection, root)
                        .await
                        .map_err(|e| (e.to_string(), !e.retry()))
                }
                .await;
                match attached {
                    Ok(target) => {
                        tracing::info!(volume = %id, instance_id = %a.instance_id, %target, "volume attached");
                        let mut done = v.clone();
                        if let Some(at) = done.attachment.as_mut() {
                            at.state = "attached".into();
                        }
                        Ok(Some(done))
                    }
                    Err((why, true))
                        if instance.as_ref().is_some_and(|r| {
                            r.state == crate::instances::InstanceState::Pending
                        }) =>
                    {
                        // A launch's volume may come before its node has
                        // recorded the instance: asked again later.
                        Err(why)
                    }
                    Err((why, true)) => {
                        // Refused for good: the volume is free again.
                        tracing::warn!(volume = %id, instance_id = %a.instance_id, %why, "volume not attached");
                        let _ = self.storage.unexport(&v.zone, id, &node).await;
                        Ok(Some(VolumeRecord {
                            state: VolumeState::Available,
                            attachment: None,
                            reason: format!("not attached: {why}"),
                            ..v.clone()
                        }))
                    }
                    Err((why, false)) => Err(why),
                }
            }
            "detaching" | "force-detaching" => {
                let force = a.state == "force-detaching";
                let detached = match self
                    .clusters
                    .detach_volume(&cluster, &a.instance_id, id, force)
                    .await
                {
                    Ok(()) | Err(ClusterError::NotFound(_)) => Ok(()),
                    Err(e) if force => {
                        tracing::warn!(volume = %id, error = %e, "forced detach without the node");
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                };
                match detached {
                    Ok(()) => match self.storage.unexport(&v.zone, id, &node).await {
                        Ok(()) => Ok(Some(VolumeRecord {
                            state: VolumeState::Available,
                            attachment: None,
                            ..v.clone()
                        })),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e),
                }
            }
            _ => Ok(None),
        };
        match outcome {
            Ok(Some(next)) => {
                let deleting = next.state == VolumeState::Deleting;
                if let Err(e) = self.volumes.put(&next) {
                    tracing::error!(volume = %id, error = %e, "volume record not updated");
                }
                if deleting {
                    self.carry_out_volume(id).await;
                }
            }
            Ok(None) => {}
            Err(why) => {
                tracing::info!(volume = %id, %why, "volume attachment change left for later");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::fake::{launch, system_account, test_cloud, FakeCluster, FakeStorage};

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn volumes_are_checked_made_and_deleted_through_the_storage_controller() {
        let (mut cloud, _dir) = test_cloud(Arc::new(FakeCluster::new(1, 8)));
        let storage = Arc::new(FakeStorage::default());
        cloud.storage = storage.clone();
        let me = system_account(&cloud);
        let req = |size: Option<u64>, zone: &str| NewVolume {
            account_id: me.clone(),
            zone: zone.into(),
            size_gib: size,
            ..Default::default()
        };
        let refused = [
            (req(None, "zone-1"), "no size"),
            (req(Some(0), "zone-1"), "too small"),
            (req(Some(16385), "zone-1"), "too large"),
            (req(Some(1), "zone-9"), "unknown zone"),
            (
                NewVolume {
                    volume_type: Some("io1".into()),
                    ..req(Some(1), "zone-1")
                },
                "unknown type",
            ),
            (
                NewVolume {
                    snapshot_id: Some("snap-bad".into()),
                    ..req(Some(1), "zone-1")
                },
                "malformed snapshot",
            ),
        ];
        for (r, why) in refused {
            assert!(cloud.create_volume(r, false).await.is_err(), "{why}");
        }
        storage.set_down(true);
        assert!(matches!(
            cloud.create_volume(req(Some(1), "zone-1"), false).await,
            Err(CoreError::Unavailable(_))
        ));
        storage.set_down(false);
        assert!(
            cloud.volumes.list().expect("list").is_empty(),
            "nothing recorded"
        );
        assert_eq!(
            cloud
                .create_volume(req(Some(1), "zone-1"), true)
                .await
                .map(|_| ()),
            Err(CoreError::DryRun)
        );
        let made = cloud
            .create_volume(req(Some(2), "zone-1"), false)
            .await
            .expect("create");
        assert_eq!(made.volume.state, VolumeState::Creating);
        settle().await;
        let id = made.volume.volume_id.clone();
        assert_eq!(storage.volumes(), vec![(id.clone(), 2)]);
        assert_eq!(
            cloud.volumes.get(&id).expect("get").map(|v| v.state),
            Some(VolumeState::Available)
        );
        // Another account can neither see nor delete it.
        cloud.accounts.create("alice").expect("alice");
        let alice = cloud.accounts.find("alice").expect("alice").account_id;
        assert!(matches!(
            cloud.delete_volume(&alice, &id, false).await,
            Err(CoreError::NotFound { .. })
        ));
        assert!(matches!(
            cloud.delete_volume(&me, "vol-zz", false).await,
            Err(CoreError::Malformed { .. })
        ));
        cloud.delete_volume(&me, &id, false).await.expect("delete");
        settle().await;
        assert!(storage.volumes().is_empty());
        assert_eq!(cloud.volumes.get(&id).expect("get"), None);
    }

    #[tokio::test]
    async fn a_volume_the_sc_could_not_make_is_made_later() {
        let (mut cloud, _dir) = test_cloud(Arc::new(FakeCluster::new(1, 8)));
        let storage = Arc::new(FakeStorage::default());
        cloud.storage = storage.clone();
        let me = system_account(&cloud);
        storage.set_failing(true);
        let made = cloud
            .create_volume(
                NewVolume {
                    account_id: me,
                    zone: "zone-1".into(),
                    size_gib: Some(1),
                    ..Default::default()
                },
                false,
            )
            .await
            .expect("create");
        settle().await;
        let id = made.volume.volume_id;
        assert_eq!(
            cloud.volumes.get(&id).expect("get").map(|v| v.state),
            Some(VolumeState::Creating)
        );
        storage.set_failing(false);
        let task = tokio::spawn(cloud.clone().finish_volumes(Duration::from_millis(10)));
        for _ in 0..100 {
            if cloud.volumes.get(&id).expect("get").map(|v| v.state) == Some(VolumeState::Available)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        assert_eq!(
            cloud.volumes.get(&id).expect("get").map(|v| v.state),
            Some(VolumeState::Available)
        );
    }

    #[tokio::test]
    async fn a_volume_is_attached_detached_and_freed_when_its_instance_goes() {
        let fake = Arc::new(FakeCluster::new(1, 8));
        let (mut cloud, _dir) = test_cloud(fake.clone());
        let storage = Arc::new(FakeStorage::default());
        cloud.storage = storage.clone();
        let me = system_account(&cloud);
        let made = cloud
            .create_volume(
                NewVolume {
                    account_id: me.clone(),
                    zone: "zone-1".into(),
                    size_gib: Some(1),
                    ..Default::default()
                },
                false,
            )
            .await
            .expect("create");
        settle().await;
        let vol = made.volume.volume_id;
        let launched = launch(&cloud, &me, 1, Default::default()).await;
        let r = &launched.records[0];
        let id = r.instance_id.clone();
        // Pending: not yet.
        assert!(matches!(
            cloud.attach_volume(&me, &vol, &id, "/dev/sdf", false).await,
            Err(CoreError::IncorrectState { .. })
        ));
        cloud
            .instances
            .set_state(
                &id,
                crate::instances::InstanceState::Running,
                "",
                Some(&r.node),
            )
            .expect("running");
        for (device, why) in [
            ("/dev/sda1", "the root"),
            ("/dev/foo", "no EBS name"),
            ("sdf", "no /dev"),
        ] {
            assert!(
                matches!(
                    cloud.attach_volume(&me, &vol, &id, device, false).await,
                    Err(CoreError::InvalidValue { .. })
                ),
                "{why}"
            );
        }
        let v = cloud
            .attach_volume(&me, &vol, &id, "/dev/sdf", false)
            .await
            .expect("attach");
        assert_eq!(v.state, VolumeState::InUse);
        assert_eq!(
            v.attachment.as_ref().map(|a| a.state.as_str()),
            Some("attaching")
        );
        settle().await;
        let v = cloud.volumes.get(&vol).expect("get").expect("there");
        assert_eq!(
            v.attachment.as_ref().map(|a| a.state.as_str()),
            Some("attached")
        );
        assert_eq!(storage.exports(), vec![(vol.clone(), r.node.clone())]);
        assert_eq!(fake.state().attached, vec![(id.clone(), vol.clone())]);
        // In use: not twice, not deleted.
        assert!(matches!(
            cloud.attach_volume(&me, &vol, &id, "/dev/sdg", false).await,
            Err(CoreError::VolumeInUse(_))
        ));
        assert!(matches!(
            cloud.delete_volume(&me, &vol, false).await,
            Err(CoreError::VolumeInUse(_))
        ));
        assert!(matches!(
            cloud
                .detach_volume(&me, &vol, Some("i-0000000000000000f"), false, false)
                .await,
            Err(CoreError::AttachmentNotFound(_))
        ));
        cloud
            .detach_volume(&me, &vol, Some(&id), false, false)
            .await
            .expect("detach");
        settle().await;
        let v = cloud.volumes.get(&vol).expect("get").expect("there");
        assert_eq!(v.state, VolumeState::Available);
        assert!(v.attachment.is_none());
        assert!(storage.exports().is_empty());
        assert!(fake.state().attached.is_empty());
        // Attached again, then the instance terminates: the volume is freed.
        cloud
            .attach_volume(&me, &vol, &id, "/dev/sdf", false)
            .await
            .expect("attach again");
        settle().await;
        cloud
            .terminate(&me, std::slice::from_ref(&id), false)
            .await
            .expect("terminate");
        cloud.carry_out_attachment(&vol).await;
        let v = cloud.volumes.get(&vol).expect("get").expect("there");
        assert_eq!(v.state, VolumeState::Available);
        assert!(storage.exports().is_empty());
    }

    #[tokio::test]
    async fn an_ebs_backed_image_launches_on_its_own_root_volume() {
        use crate::core::images::RegisterRequest;
        use crate::images::{BlockDevice, EbsDevice};
        let fake = Arc::new(FakeCluster::new(1, 8));
        let (mut cloud, _dir) = test_cloud(fake.clone());
        let storage = Arc::new(FakeStorage::default());
        cloud.storage = storage.clone();
        let me = system_account(&cloud);
        let snap = super::super::fake::completed_snapshot(&cloud, &me, 2).await;
        let root = |snapshot: &str, size: Option<u64>| BlockDevice {
            device_name: "/dev/sda1".into(),
            ebs: Some(EbsDevice {
                snapshot_id: Some(snapshot.into()),
                volume_size: size,
                delete_on_termination: true,
                volume_type: None,
            }),
            ..Default::default()
        };
        let register = |name: &str, devices: Vec<BlockDevice>| RegisterRequest {
            account_id: me.clone(),
            name: name.into(),
            root_device_name: Some("/dev/sda1".into()),
            block_devices: devices,
            ..Default::default()
        };
        // Refused: a smaller volume than the snapshot, a bad device name, a
        // root that maps to no snapshot.
        for (req, why) in [
            (register("small", vec![root(&snap, Some(1))]), "too small"),
            (
                register(
                    "bad-name",
                    vec![BlockDevice {
                        device_name: "/dev/hda".into(),
                        ..root(&snap, None)
                    }],
                ),
                "device name",
            ),
            (register("no-root", Vec::new()), "no root snapshot"),
        ] {
            assert!(
                matches!(
                    cloud.register_image(req, false).await,
                    Err(CoreError::BlockDeviceMapping(_))
                ),
                "{why}"
            );
        }
        let image = cloud
            .register_image(register("tiny-ebs", vec![root(&snap, None)]), false)
            .await
            .expect("register");
        assert_eq!(image.root_device_type(), "ebs");
        assert_eq!(
            image.block_devices[0]
                .ebs
                .as_ref()
                .and_then(|e| e.volume_size),
            Some(2)
        );
        assert!(matches!(
            cloud.delete_snapshot(&me, &snap, false).await,
            Err(CoreError::SnapshotInUse(_))
        ));

        let launched = cloud
            .launch(crate::core::launch::LaunchRequest {
                account_id: me.clone(),
                image_id: image.image_id.clone(),
                min: 1,
                max: 1,
                ..Default::default()
            })
            .await
            .expect("launch");
        let r = &launched.records[0];
        assert_eq!(r.root_device.as_deref(), Some("/dev/sda1"));
        settle().await;
        let volumes = cloud.volumes.of(&me).expect("volumes");
        let root_volume = volumes
            .iter()
            .find(|v| {
                v.attachment
                    .as_ref()
                    .is_some_and(|a| a.instance_id == r.instance_id)
            })
            .expect("a root volume")
            .clone();
        assert_eq!(root_volume.snapshot_id.as_deref(), Some(snap.as_str()));
        assert_eq!(root_volume.size_gib, 2);
        assert_eq!(root_volume.state, VolumeState::InUse);
        let a = root_volume.attachment.clone().expect("attachment");
        assert_eq!(
            (a.device.as_str(), a.state.as_str()),
            ("/dev/sda1", "attached")
        );
        assert!(a.delete_on_termination);
        assert_eq!(
            fake.state().attached,
            vec![(r.instance_id.clone(), root_volume.volume_id.clone())]
        );
        assert!(matches!(
            cloud
                .detach_volume(&me, &root_volume.volume_id, None, false, false)
                .await,
            Err(CoreError::IncorrectVolumeState(_))
        ));
        // Terminated: the root goes with it.
        cloud
            .terminate(&me, std::slice::from_ref(&r.instance_id), false)
            .await
            .expect("terminate");
        cloud.carry_out_attachment(&root_volume.volume_id).await;
        assert_eq!(
            cloud.volumes.get(&root_volume.volume_id).expect("get"),
            None
        );
    }

    #[tokio::test]
    async fn the_volume_quota_counts_volumes_and_gib() {
        let (mut cloud, _dir) = test_cloud(Arc::new(FakeCluster::new(1, 8)));
        cloud.storage = Arc::new(FakeStorage::default());
        cloud.accounts.create("lab").expect("lab");
        let lab = cloud.accounts.find("lab").expect("lab").account_id;
        cloud
            .accounts
            .set_quota(
                "lab",
                crate::accounts::Quota {
                    volumes: Some(2),
                    volume_gib: Some(5),
                    ..Default::default()
                },
            )
            .expect("quota");
        let create = |size: u64| NewVolume {
            account_id: lab.clone(),
            zone: "zone-1".into(),
            size_gib: Some(size),
            ..Default::default()
        };
        assert!(matches!(
            cloud.create_volume(create(6), false).await,
            Err(CoreError::VolumeLimit(_))
        ));
        cloud.create_volume(create(4), false).await.expect("4 GiB");
        assert!(matches!(
            cloud.create_volume(create(2), false).await,
            Err(CoreError::VolumeLimit(_))
        ));
        cloud.create_volume(create(1), false).await.expect("1 GiB");
        assert!(matches!(
            cloud.create_volume(create(1), false).await,
            Err(CoreError::VolumeLimit(_))
        ));
        assert_eq!(cloud.volumes.of(&lab).expect("list").len(), 2);
        // Another account is not limited by lab's quota.
        let me = system_account(&cloud);
        cloud
            .create_volume(
                NewVolume {
                    account_id: me,
                    ..create(8)
                },
                false,
            )
            .await
            .expect("another account");
    }
}
