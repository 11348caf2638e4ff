//! CreateImage: an EBS-backed instance's volumes become snapshots and the
//! snapshots an image. The image is recorded `pending` and answered at
//! once; unless NoReboot, a running instance is stopped first (so its file
//! systems are at rest), the snapshots are taken, and the instance starts
//! again once they are complete (the storage controller reads a volume as
//! it copies it, so the guest must not write until then). The image is
//! `available` once every snapshot is complete, `failed` if one fails.

use std::time::Duration;

use common::time;

use super::{images::check_image_name, Cloud, CoreError};
use crate::{
    images::{BlockDevice, EbsDevice, Image, ImageKind, ImageState},
    instances::InstanceState,
    snapshots::SnapshotState,
    volumes::VolumeRecord,
};

/// A CreateImage request.
#[derive(Debug, Clone, Default)]
pub struct CreateImageRequest {
    pub account_id: String,
    pub instance_id: String,
    pub name: String,
    pub description: Option<String>,
    pub no_reboot: bool,
}

/// How long a pending image may lack a snapshot before it is taken as
/// interrupted (a CLC restart in the middle of its creation).
const INTERRUPTED_AFTER_MS: i64 = 10 * 60 * 1000;

impl Cloud {
    /// CreateImage (see the module's documentation).
    pub async fn create_image(
        &self,
        req: CreateImageRequest,
        dry_run: bool,
    ) -> Result<Image, CoreError> {
        let r = self
            .own_instances(&req.account_id, std::slice::from_ref(&req.instance_id))?
            .remove(0);
        let Some(root) = r.root_device.clone() else {
            return Err(CoreError::Unsupported(format!(
                "The instance '{}' does not have an 'ebs' root device type and cannot be used to create an image.",
                r.instance_id
            )));
        };
        if !matches!(r.state, InstanceState::Running | InstanceState::Stopped) {
            return Err(CoreError::IncorrectState {
                id: r.instance_id.clone(),
                wanted: "imaged",
            });
        }
        check_image_name(&req.name)?;
        let volumes = self.volumes_of_instance(&req.account_id, &r.instance_id)?;
        if !volumes.iter().any(|v| {
            v.attachment
                .as_ref()
                .is_some_and(|a| a.device == root && a.state == "attached")
        }) {
            return Err(CoreError::IncorrectVolumeState(format!(
                "The root volume of '{}' is not attached.",
                r.instance_id
            )));
        }
        if self.registry.known_walrus().is_none() || !self.storage.serves(&r.zone) {
            return Err(CoreError::Unavailable(format!(
                "images need Walrus and the storage controller of {}",
                r.zone
            )));
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let source = self.images.get(&r.image_id)?;
        let image = Image {
            image_id: common::ids::resource_id(ImageKind::Machine.prefix()),
            kind: ImageKind::Machine,
            name: req.name.clone(),
            description: req.description.clone().unwrap_or_default(),
            owner_id: req.account_id.clone(),
            bucket: String::new(),
            key: String::new(),
            sha256: String::new(),
            size: 0,
            architecture: source
                .as_ref()
                .map_or_else(|| "x86_64".into(), |i| i.architecture.clone()),
            kernel_id: r.kernel_id.clone(),
            ramdisk_id: r.ramdisk_id.clone(),
            root_device_name: Some(root),
            virtualization_type: source
                .as_ref()
                .map_or_else(|| "paravirtual".into(), |i| i.virtualization_type.clone()),
            // Filled in with each volume's snapshot as it is taken.
            block_devices: volumes
                .iter()
                .filter_map(|v| {
                    let a = v.attachment.as_ref()?;
                    Some(BlockDevice {
                        device_name: a.device.clone(),
                        ebs: Some(EbsDevice {
                            snapshot_id: None,
                            volume_size: Some(v.size_gib),
                            delete_on_termination: a.delete_on_termination,
                            volume_type: Some(v.volume_type.clone()),
                        }),
                        ..Default::default()
                    })
                })
                .collect(),
            state: ImageState::Pending,
            state_reason: String::new(),
            public: false,
            launch_permissions: Default::default(),
            created_ms: time::unix_ms(),
        };
        self.record_image(&image)?;
        tracing::info!(image_id = %image.image_id, instance_id = %r.instance_id, no_reboot = req.no_reboot, "creating an image");
        let cloud = self.clone();
        let (made, reboot) = (
            image.clone(),
            !req.no_reboot && r.state == InstanceState::Running,
        );
        tokio::spawn(async move {
            if let Err(why) = cloud.make_image(&made, &req, reboot).await {
                tracing::warn!(image_id = %made.image_id, %why, "image creation failed");
                cloud.image_failed(&made.image_id, &why);
            }
        });
        Ok(image)
    }

    /// The account's volumes attached (or attaching) to `instance_id`.
    fn volumes_of_instance(
        &self,
        account_id: &str,
        instance_id: &str,
    ) -> Result<Vec<VolumeRecord>, CoreError> {
        Ok(self
            .volumes
            .of(account_id)?
            .into_iter()
            .filter(|v| {
                v.attachment
                    .as_ref()
                    .is_some_and(|a| a.instance_id == instance_id)
            })
            .collect())
    }

    /// Waits until `instance_id` is in `state` (at most two minutes).
    pub(super) async fn wait_instance(
        &self,
        instance_id: &str,
        state: InstanceState,
    ) -> Result<(), String> {
        for _ in 0..240 {
            match self.instances.get(instance_id) {
                Ok(Some(r)) if r.state == state => return Ok(()),
                Ok(Some(r)) if r.state == InstanceState::Terminated => {
                    return Err(format!("{instance_id} was terminated"))
                }
                Ok(None) => return Err(format!("{instance_id} is gone")),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        Err(format!("{instance_id} did not become {}", state.name()))
    }

    /// Stops the instance (unless `no_reboot`), snapshots its volumes into
    /// the pending `image`, waits for them and starts the instance again.
    async fn make_image(
        &self,
        image: &Image,
        req: &CreateImageRequest,
        reboot: bool,
    ) -> Result<(), String> {
        let account = &req.account_id;
        let ids = std::slice::from_ref(&req.instance_id);
        if reboot {
            self.stop_or_start(account, ids, true, false)
                .await
                .map_err(|e| format!("the instance did not stop: {e}"))?;
            self.wait_instance(&req.instance_id, InstanceState::Stopped)
                .await?;
        }
        let taken = async {
            let volumes = self
                .volumes_of_instance(account, &req.instance_id)
                .map_err(|e| e.to_string())?;
            let mut devices = image.block_devices.clone();
            for d in devices.iter_mut() {
                let Some(v) = volumes.iter().find(|v| {
                    v.attachment
                        .as_ref()
                        .is_some_and(|a| a.device == d.device_name)
                }) else {
                    return Err(format!("no volume at {} any more", d.device_name));
                };
                let description = format!(
                    "Created by CreateImage({}) for {} from {}",
                    req.instance_id, image.image_id, v.volume_id
                );
                let snapshot = self
                    .create_snapshot(account, &v.volume_id, &description, &[], false)
                    .await
                    .map_err(|e| format!("{}: {e}", v.volume_id))?
                    .snapshot;
                if let Some(ebs) = d.ebs.as_mut() {
                    ebs.snapshot_id = Some(snapshot.snapshot_id);
                }
            }
            let mut recorded = self
                .images
                .get(&image.image_id)
                .map_err(|e| e.to_string())?
                .ok_or("the image was deregistered")?;
            recorded.block_devices = devices;
            self.images.update(&recorded).map_err(|e| e.to_string())?;
            // Complete (or failed) within ten minutes.
            for _ in 0..1200 {
                match self.follow_image(&image.image_id) {
                    ImageState::Pending => tokio::time::sleep(Duration::from_millis(500)).await,
                    _ => return Ok(()),
                }
            }
            Err("its snapshots did not complete in time".to_string())
        }
        .await;
        if reboot {
            if let Err(e) = self.stop_or_start(account, ids, false, false).await {
                tracing::warn!(instance_id = %req.instance_id, error = %e, "the instance was not started again after CreateImage");
            }
        }
        taken
    }

    /// Settles pending image `id` by its snapshots: `available` once all
    /// are complete, `failed` if one failed. Answers its state.
    pub(super) fn follow_image(&self, id: &str) -> ImageState {
        let Ok(Some(image)) = self.images.get(id) else {
            return ImageState::Failed;
        };
        if image.state != ImageState::Pending {
            return image.state;
        }
        let mut all_done = true;
        for d in &image.block_devices {
            let Some(ebs) = &d.ebs else { continue };
            let Some(snap) = &ebs.snapshot_id else {
                if time::unix_ms() - image.created_ms > INTERRUPTED_AFTER_MS {
                    self.image_failed(id, "its creation was interrupted");
                    return ImageState::Failed;
                }
                all_done = false;
                continue;
            };
            match self.snapshots.get(snap).ok().flatten().map(|s| s.state) {
                Some(SnapshotState::Completed) => {}
                Some(SnapshotState::Pending) => all_done = false,
                _ => {
                    self.image_failed(id, &format!("snapshot {snap} failed"));
                    return ImageState::Failed;
                }
            }
        }
        if !all_done {
            return ImageState::Pending;
        }
        if let Err(e) = self.images.update(&Image {
            state: ImageState::Available,
            ..image
        }) {
            tracing::error!(image_id = %id, error = %e, "image state not recorded");
            return ImageState::Pending;
        }
        tracing::info!(image_id = %id, "image available");
        ImageState::Available
    }

    fn image_failed(&self, id: &str, why: &str) {
        if let Ok(Some(image)) = self.images.get(id) {
            let _ = self.images.update(&Image {
                state: ImageState::Failed,
                state_reason: why.to_string(),
                ..image
            });
        }
    }

    /// Settles every pending image (after a restart, say).
    pub(super) fn follow_images(&self) {
        for image in self.images.list().unwrap_or_default() {
            if image.state == ImageState::Pending {
                self.follow_image(&image.image_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::{
        fake::{completed_snapshot, launch, system_account, test_cloud, FakeCluster, FakeStorage},
        images::RegisterRequest,
        launch::LaunchRequest,
    };

    #[tokio::test]
    async fn an_ebs_backed_instance_becomes_an_image_of_its_snapshots() {
        let fake = Arc::new(FakeCluster::new(1, 8));
        let (mut cloud, _dir) = test_cloud(fake.clone());
        cloud.storage = Arc::new(FakeStorage::default());
        let me = system_account(&cloud);
        let snap = completed_snapshot(&cloud, &me, 1).await;
        let ebs = cloud
            .register_image(
                RegisterRequest {
                    account_id: me.clone(),
                    name: "ebs".into(),
                    root_device_name: Some("/dev/sda1".into()),
                    block_devices: vec![BlockDevice {
                        device_name: "/dev/sda1".into(),
                        ebs: Some(EbsDevice {
                            snapshot_id: Some(snap.clone()),
                            delete_on_termination: true,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                false,
            )
            .await
            .expect("register");
        // An instance-store instance has no volumes to image.
        let store = launch(&cloud, &me, 1, LaunchRequest::default())
            .await
            .records[0]
            .instance_id
            .clone();
        let ask = |instance_id: &str, name: &str| CreateImageRequest {
            account_id: me.clone(),
            instance_id: instance_id.to_string(),
            name: name.to_string(),
            no_reboot: true,
            ..Default::default()
        };
        assert!(matches!(
            cloud.create_image(ask(&store, "from-store"), false).await,
            Err(CoreError::Unsupported(_))
        ));
        let r = cloud
            .launch(LaunchRequest {
                account_id: me.clone(),
                image_id: ebs.image_id.clone(),
                min: 1,
                max: 1,
                ..Default::default()
            })
            .await
            .expect("launch")
            .records
            .remove(0);
        for _ in 0..200 {
            if cloud
                .volumes_of_instance(&me, &r.instance_id)
                .expect("volumes")
                .iter()
                .any(|v| v.attachment.as_ref().is_some_and(|a| a.state == "attached"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cloud
            .instances
            .set_state(&r.instance_id, InstanceState::Running, "", Some(&r.node))
            .expect("running");
        assert!(matches!(
            cloud.create_image(ask(&r.instance_id, "x"), false).await,
            Err(CoreError::InvalidValue { .. })
        ));
        let image = cloud
            .create_image(ask(&r.instance_id, "from-ebs"), false)
            .await
            .expect("create image");
        assert_eq!(image.state, ImageState::Pending);
        assert!(matches!(
            cloud.launchable_image(&me, &image.image_id, ImageKind::Machine),
            Err(CoreError::ImageUnavailable(_))
        ));
        let mut state = ImageState::Pending;
        for _ in 0..400 {
            state = cloud.follow_image(&image.image_id);
            if state != ImageState::Pending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(state, ImageState::Available);
        let made = cloud
            .images
            .get(&image.image_id)
            .expect("get")
            .expect("there");
        assert_eq!(made.root_device_type(), "ebs");
        let root = made.ebs_root().expect("an EBS root");
        let new_snap = root.snapshot_id.clone().expect("a snapshot");
        assert_ne!(new_snap, snap);
        assert_eq!(root.volume_size, Some(1));
        assert!(cloud
            .snapshots
            .get(&new_snap)
            .expect("get")
            .is_some_and(|s| s.description.contains(&r.instance_id)));
        cloud
            .launch(LaunchRequest {
                account_id: me.clone(),
                image_id: made.image_id.clone(),
                min: 1,
                max: 1,
                ..Default::default()
            })
            .await
            .expect("the new image launches");
    }
}
