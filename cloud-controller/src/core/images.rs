//! Images as accounts see them: visible (their own, public, or shared with
//! them), owned, and deregistered.

use std::collections::BTreeSet;

use common::time;
use proto::ObjectRef;
use tonic::Code;

use super::{Cloud, CoreError, IdKind};
use crate::images::{BlockDevice, Image, ImageError, ImageKind};

/// RegisterImage's request.
#[derive(Debug, Clone, Default)]
pub struct RegisterRequest {
    pub account_id: String,
    /// The caller is the cloud's administrator (may register what only
    /// `aws-exec-read` lets the cloud read).
    pub admin: bool,
    /// `bucket/key` in Walrus (`s3://` and a leading `/` allowed); none
    /// for an EBS-backed image, whose root device maps to a snapshot.
    pub location: Option<String>,
    pub name: String,
    pub description: Option<String>,
    /// Default `x86_64`.
    pub architecture: Option<String>,
    /// Default `paravirtual`.
    pub virtualization_type: Option<String>,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    pub root_device_name: Option<String>,
    pub block_devices: Vec<BlockDevice>,
}

/// Checks an AMI name as EC2 does.
pub fn check_image_name(name: &str) -> Result<(), CoreError> {
    if !(3..=128).contains(&name.chars().count())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c))
    {
        return Err(invalid(
            "Name",
            name,
            "AMI names must be 3 to 128 characters of letters, numbers, ( ) [ ] space . / - ' @ _",
        ));
    }
    Ok(())
}

/// The drive letter of a device name EC2 takes in a block device mapping
/// (`/dev/sda1`, `/dev/xvdf`, `/dev/vdb`, ...); None for any other name.
pub fn device_letter(d: &str) -> Option<char> {
    let rest = d
        .strip_prefix("/dev/xvd")
        .or_else(|| d.strip_prefix("/dev/sd"))
        .or_else(|| d.strip_prefix("/dev/vd"))?;
    let mut chars = rest.chars();
    let letter = chars.next().filter(char::is_ascii_lowercase)?;
    let digits: String = chars.collect();
    (digits.len() <= 2 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(letter)
}

/// True for a device name EC2 takes in a block device mapping.
pub fn valid_device_name(d: &str) -> bool {
    device_letter(d).is_some()
}

/// The mappings a launch of `image` makes: the image's, with `asked`'s
/// replacing those of the same device (and `NoDevice` dropping them).
pub fn launch_devices(image: &Image, asked: &[BlockDevice]) -> Vec<BlockDevice> {
    let mut out: Vec<BlockDevice> = image
        .block_devices
        .iter()
        .filter(|b| !asked.iter().any(|a| a.device_name == b.device_name))
        .cloned()
        .collect();
    out.extend(asked.iter().filter(|a| !a.no_device).cloned());
    out
}

/// An image's bytes in Walrus; none (a machine image, empty) for an
/// EBS-backed one.
#[derive(Debug)]
struct ImageObject {
    kind: ImageKind,
    bucket: String,
    key: String,
    sha256: String,
    size: u64,
}

impl Default for ImageObject {
    fn default() -> Self {
        Self {
            kind: ImageKind::Machine,
            bucket: String::new(),
            key: String::new(),
            sha256: String::new(),
            size: 0,
        }
    }
}

/// Who an image's launch permission names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    /// A group; the only one is `all` (the image is public).
    Group(String),
    /// One account, by id.
    Account(String),
}

/// ModifyImageAttribute's changes.
#[derive(Debug, Clone, Default)]
pub struct ImageChange {
    pub add: Vec<Launcher>,
    pub remove: Vec<Launcher>,
    pub description: Option<String>,
}

fn invalid(param: &'static str, value: &str, why: &str) -> CoreError {
    CoreError::InvalidValue {
        param,
        value: value.to_string(),
        why: why.to_string(),
    }
}

impl Cloud {
    /// Records a new image, its name unique among its owner's.
    pub(super) fn record_image(&self, image: &Image) -> Result<(), CoreError> {
        self.images.register(image).map_err(|e| match e {
            ImageError::DuplicateName { .. } => CoreError::DuplicateImageName(e.to_string()),
            ImageError::Store(e) => CoreError::from(e),
        })
    }

    /// Checks block device mappings for `account_id` and fills in what a
    /// snapshot implies (its size, when none is given). The snapshots of
    /// `image`'s own mappings are usable by whoever may launch it (as with
    /// a public EBS-backed image in EC2).
    pub fn check_block_devices(
        &self,
        account_id: &str,
        devices: &[BlockDevice],
        image: Option<&Image>,
    ) -> Result<Vec<BlockDevice>, CoreError> {
        let granted = |id: &str| {
            image.is_some_and(|i| {
                i.block_devices
                    .iter()
                    .filter_map(|b| b.ebs.as_ref())
                    .any(|e| e.snapshot_id.as_deref() == Some(id))
            })
        };
        let mut out: Vec<BlockDevice> = Vec::with_capacity(devices.len());
        for d in devices {
            if !valid_device_name(&d.device_name) {
                return Err(CoreError::BlockDeviceMapping(format!(
                    "Invalid device name {}",
                    d.device_name
                )));
            }
            if out.iter().any(|o| o.device_name == d.device_name) {
                return Err(CoreError::BlockDeviceMapping(format!(
                    "The device {} is mapped more than once",
                    d.device_name
                )));
            }
            let mut checked = d.clone();
            if let Some(ebs) = checked.ebs.as_mut() {
                let volume_type = ebs.volume_type.as_deref().unwrap_or("gp2");
                if !matches!(volume_type, "standard" | "gp2") {
                    return Err(invalid(
                        "VolumeType",
                        volume_type,
                        "This cloud offers the volume types standard and gp2.",
                    ));
                }
                let smallest = match ebs.snapshot_id.as_deref().filter(|s| !s.is_empty()) {
                    Some(id) if granted(id) => match self.snapshots.get(id)? {
                        Some(s) if s.state == crate::snapshots::SnapshotState::Completed => {
                            Some(s.volume_size_gib)
                        }
                        _ => return Err(Self::no_snapshot(id)),
                    },
                    Some(id) => Some(self.restorable_snapshot(account_id, id)?.volume_size_gib),
                    None => None,
                };
                let size = match (ebs.volume_size, smallest) {
                    (Some(size), Some(min)) if size < min => {
                        return Err(CoreError::BlockDeviceMapping(format!(
                            "Volume of size {size} GiB is smaller than snapshot '{}', expect size >= {min}",
                            ebs.snapshot_id.as_deref().unwrap_or_default()
                        )))
                    }
                    (Some(size), _) => size,
                    (None, Some(min)) => min,
                    (None, None) => {
                        return Err(CoreError::BlockDeviceMapping(format!(
                            "The device {} needs a volume size or a snapshot",
                            d.device_name
                        )))
                    }
                };
                let max = super::volumes::max_gib(volume_type);
                if !(1..=max).contains(&size) {
                    return Err(CoreError::BlockDeviceMapping(format!(
                        "A {volume_type} volume is 1 to {max} GiB, not {size}"
                    )));
                }
                ebs.volume_size = Some(size);
            }
            out.push(checked);
        }
        Ok(out)
    }

    /// Image `id`, if `account_id` may see it (and launch it).
    pub fn visible_image(&self, account_id: &str, id: &str) -> Result<Image, CoreError> {
        if !IdKind::Image.well_formed(id) {
            return Err(CoreError::Malformed {
                kind: IdKind::Image,
                id: id.to_string(),
            });
        }
        match self.images.get(id)? {
            Some(i) if i.launchable_by(account_id) => Ok(i),
            _ => Err(CoreError::NotFound {
                kind: IdKind::Image,
                ids: vec![id.to_string()],
            }),
        }
    }

    /// Image `id` of `kind`, if `account_id` may launch it.
    pub fn launchable_image(
        &self,
        account_id: &str,
        id: &str,
        kind: ImageKind,
    ) -> Result<Image, CoreError> {
        let image = self.visible_image(account_id, id)?;
        if image.kind != kind {
            return Err(CoreError::NotFound {
                kind: IdKind::Image,
                ids: vec![id.to_string()],
            });
        }
        if image.state != crate::images::ImageState::Available {
            return Err(CoreError::ImageUnavailable(format!(
                "Image {id} is not available: it is {}.",
                image.state.name()
            )));
        }
        Ok(image)
    }

    /// Image `id`, if `account_id` owns it (`what` names the operation
    /// refused otherwise).
    pub fn owned_image(&self, account_id: &str, id: &str, what: &str) -> Result<Image, CoreError> {
        let image = self.visible_image(account_id, id)?;
        if image.owner_id != account_id {
            return Err(CoreError::Unauthorized(format!(
                "You are not authorized to {what} image {id}"
            )));
        }
        Ok(image)
    }

    /// RegisterImage: records the Walrus object `req.location` (which must
    /// exist, be readable by the caller and say what kind of image it is
    /// in its `image-type` metadata) as an image of the caller's.
    pub async fn register_image(
        &self,
        req: RegisterRequest,
        dry_run: bool,
    ) -> Result<Image, CoreError> {
        let name = &req.name;
        check_image_name(name)?;
        let architecture = req.architecture.as_deref().unwrap_or("x86_64");
        if !matches!(architecture, "x86_64" | "i386" | "arm64") {
            return Err(invalid(
                "Architecture",
                architecture,
                "Use x86_64, i386 or arm64.",
            ));
        }
        let virtualization_type = req.virtualization_type.as_deref().unwrap_or("paravirtual");
        if !matches!(virtualization_type, "paravirtual" | "hvm") {
            return Err(invalid(
                "VirtualizationType",
                virtualization_type,
                "Use paravirtual or hvm.",
            ));
        }
        let block_devices = self.check_block_devices(&req.account_id, &req.block_devices, None)?;
        let linked = |id: &Option<String>, kind: ImageKind, id_kind: IdKind| {
            let Some(id) = id.as_deref().filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            match self.visible_image(&req.account_id, id) {
                Ok(i) if i.kind == kind => Ok(Some(i.image_id)),
                _ => Err(CoreError::NotFound {
                    kind: id_kind,
                    ids: vec![id.to_string()],
                }),
            }
        };
        let kernel_id = linked(&req.kernel_id, ImageKind::Kernel, IdKind::Kernel)?;
        let ramdisk_id = linked(&req.ramdisk_id, ImageKind::Ramdisk, IdKind::Ramdisk)?;
        let ebs_root = req.root_device_name.as_deref().is_some_and(|root| {
            block_devices
                .iter()
                .any(|b| b.device_name == root && b.ebs.is_some())
        });
        let object = match req.location.as_deref() {
            Some(location) => {
                if ebs_root {
                    return Err(CoreError::Combination(
                        "An image with an ImageLocation has an instance-store root; do not map its root device to a volume".into(),
                    ));
                }
                let linked = kernel_id.is_some() || ramdisk_id.is_some();
                Some(self.image_object(&req, location, linked).await?)
            }
            None => {
                // EBS-backed: its root is made from a snapshot at each launch.
                let root = req
                    .root_device_name
                    .as_deref()
                    .ok_or(CoreError::Missing("RootDeviceName"))?;
                if !valid_device_name(root) {
                    return Err(invalid(
                        "RootDeviceName",
                        root,
                        "Expected a device name such as /dev/sda1.",
                    ));
                }
                let from_snapshot = block_devices.iter().any(|b| {
                    b.device_name == root && b.ebs.as_ref().is_some_and(|e| e.snapshot_id.is_some())
                });
                if !from_snapshot {
                    return Err(CoreError::BlockDeviceMapping(format!(
                        "Without an ImageLocation, the root device {root} must map to a snapshot"
                    )));
                }
                None
            }
        };
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let ImageObject {
            kind,
            bucket,
            key,
            sha256,
            size,
        } = object.unwrap_or_default();
        let image = Image {
            image_id: common::ids::resource_id(kind.prefix()),
            kind,
            name: name.clone(),
            description: req.description.clone().unwrap_or_default(),
            owner_id: req.account_id.clone(),
            bucket,
            key,
            sha256,
            size,
            architecture: architecture.to_string(),
            kernel_id,
            ramdisk_id,
            root_device_name: req.root_device_name.clone(),
            virtualization_type: virtualization_type.to_string(),
            block_devices,
            state: crate::images::ImageState::Available,
            state_reason: String::new(),
            public: false,
            launch_permissions: BTreeSet::new(),
            created_ms: time::unix_ms(),
        };
        self.record_image(&image)?;
        tracing::info!(image_id = %image.image_id, kind = image.kind.wire(), root_device_type = image.root_device_type(), bucket = %image.bucket, key = %image.key, size = image.size, "image registered");
        Ok(image)
    }

    /// The Walrus object `location` (`bucket/key`) names, checked for
    /// RegisterImage: it exists, `req`'s caller may read it, and its
    /// `image-type` metadata says what it is (a kernel or ramdisk cannot
    /// link others, which `linked` says the request does).
    async fn image_object(
        &self,
        req: &RegisterRequest,
        location: &str,
        linked: bool,
    ) -> Result<ImageObject, CoreError> {
        let trimmed = location.trim_start_matches("s3://").trim_start_matches('/');
        let (bucket, key) = trimmed
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| invalid("ImageLocation", location, "Expected bucket/key."))?;
        let mut walrus = self.walrus().map_err(CoreError::Unavailable)?;
        let info = walrus
            .head_object(ObjectRef {
                bucket: bucket.to_string(),
                key: key.to_string(),
            })
            .await
            .map_err(|s| match s.code() {
                Code::NotFound => CoreError::InvalidManifest(format!(
                    "There is no object {bucket}/{key} in Walrus"
                )),
                _ => CoreError::Unavailable(format!("Walrus: {}", s.message())),
            })?
            .into_inner();
        let readable = info.owner_id == req.account_id
            || matches!(
                info.acl.as_str(),
                "public-read" | "public-read-write" | "authenticated-read"
            )
            || (info.acl == "aws-exec-read" && req.admin);
        if !readable {
            return Err(CoreError::Unauthorized(format!(
                "You are not authorized to read {bucket}/{key}"
            )));
        }
        let kind = match info.metadata.get("image-type") {
            None => ImageKind::Machine,
            Some(t) => ImageKind::from_wire(t).ok_or_else(|| {
                invalid(
                    "ImageLocation",
                    location,
                    &format!(
                        "The object's image-type metadata ({t}) must be machine, kernel or ramdisk."
                    ),
                )
            })?,
        };
        if kind != ImageKind::Machine && linked {
            return Err(CoreError::Combination(
                "A kernel or ramdisk image cannot name a kernel or ramdisk".into(),
            ));
        }
        Ok(ImageObject {
            kind,
            bucket: bucket.to_string(),
            key: key.to_string(),
            sha256: info.sha256,
            size: info.size,
        })
    }

    /// ModifyImageAttribute: who may launch the account's image `id`, and
    /// its description.
    pub fn modify_image(
        &self,
        account_id: &str,
        id: &str,
        change: ImageChange,
        dry_run: bool,
    ) -> Result<Image, CoreError> {
        let mut image = self.owned_image(account_id, id, "modify")?;
        for who in change.add.iter().chain(&change.remove) {
            match who {
                Launcher::Group(g) if g != "all" => {
                    return Err(invalid("Group", g, "The only group is all."))
                }
                Launcher::Account(u) if u.len() != 12 || !u.bytes().all(|b| b.is_ascii_digit()) => {
                    return Err(CoreError::InvalidAttributeItem(u.clone()))
                }
                _ => {}
            }
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        for who in change.add {
            match who {
                Launcher::Group(_) => image.public = true,
                Launcher::Account(u) => {
                    image.launch_permissions.insert(u);
                }
            }
        }
        for who in change.remove {
            match who {
                Launcher::Group(_) => image.public = false,
                Launcher::Account(u) => {
                    image.launch_permissions.remove(&u);
                }
            }
        }
        if let Some(d) = change.description {
            image.description = d;
        }
        self.images.update(&image)?;
        tracing::info!(image_id = %image.image_id, public = image.public, shared = image.launch_permissions.len(), "image attributes changed");
        Ok(image)
    }

    /// Deregisters the account's image `id` (its bytes stay in Walrus).
    pub fn deregister_image(
        &self,
        account_id: &str,
        id: &str,
        dry_run: bool,
    ) -> Result<Image, CoreError> {
        let image = self.owned_image(account_id, id, "deregister")?;
        if dry_run {
            return Err(CoreError::DryRun);
        }
        self.images.deregister(&image.image_id)?;
        self.tags.forget(&image.image_id)?;
        tracing::info!(image_id = %image.image_id, "image deregistered");
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::fake::{system_account, test_cloud, FakeCluster};

    #[test]
    fn only_the_owner_deregisters_and_others_see_public_images() {
        let (cloud, _dir) = test_cloud(Arc::new(FakeCluster::new(1, 1)));
        let me = system_account(&cloud);
        cloud.accounts.create("alice").expect("alice");
        let alice = cloud.accounts.find("alice").expect("alice").account_id;
        // The test image is public: Alice sees and launches it, but it is
        // not hers to deregister.
        assert!(cloud.visible_image(&alice, "ami-00000001").is_ok());
        assert!(cloud
            .launchable_image(&alice, "ami-00000001", ImageKind::Kernel)
            .is_err());
        assert!(matches!(
            cloud.deregister_image(&alice, "ami-00000001", false),
            Err(CoreError::Unauthorized(_))
        ));
        assert!(matches!(
            cloud.visible_image(&me, "ami-zz"),
            Err(CoreError::Malformed { .. })
        ));
        assert_eq!(
            cloud.deregister_image(&me, "ami-00000001", true).err(),
            Some(CoreError::DryRun)
        );
        cloud
            .deregister_image(&me, "ami-00000001", false)
            .expect("the owner");
        assert!(matches!(
            cloud.visible_image(&me, "ami-00000001"),
            Err(CoreError::NotFound { .. })
        ));
    }
}
