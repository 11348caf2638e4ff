//! Registered images: machine images (`ami-`), kernels (`aki-`) and
//! ramdisks (`ari-`) whose bytes live in Walrus, with the digest the nodes
//! verify them against and who may launch them.

use std::{collections::BTreeSet, sync::Mutex};

use common::store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};

/// What an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    Machine,
    Kernel,
    Ramdisk,
}

impl ImageKind {
    /// The id prefix: `ami`, `aki` or `ari`.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Machine => "ami",
            Self::Kernel => "aki",
            Self::Ramdisk => "ari",
        }
    }

    /// EC2's `imageType`: `machine`, `kernel` or `ramdisk`.
    pub fn wire(self) -> &'static str {
        match self {
            Self::Machine => "machine",
            Self::Kernel => "kernel",
            Self::Ramdisk => "ramdisk",
        }
    }

    /// From EC2's `imageType` (also Walrus metadata `image-type`).
    pub fn from_wire(s: &str) -> Option<Self> {
        match s {
            "machine" => Some(Self::Machine),
            "kernel" => Some(Self::Kernel),
            "ramdisk" => Some(Self::Ramdisk),
            _ => None,
        }
    }
}

/// An image's state, as EC2 names it: CreateImage's are `pending` until
/// their snapshots are complete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    Pending,
    #[default]
    Available,
    Failed,
}

impl ImageState {
    /// EC2's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Available => "available",
            Self::Failed => "failed",
        }
    }
}

/// An EBS volume a block device mapping makes at launch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EbsDevice {
    /// The snapshot it is made from; empty when none.
    pub snapshot_id: Option<String>,
    /// GiB; the snapshot's size when not given.
    pub volume_size: Option<u64>,
    pub delete_on_termination: bool,
    /// `standard` or `gp2`.
    pub volume_type: Option<String>,
}

/// A block device mapping of an image or a launch (EC2's
/// `BlockDeviceMapping`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// `/dev/sda1`, `/dev/sdf`, ...
    pub device_name: String,
    pub ebs: Option<EbsDevice>,
    /// `ephemeralN`, for an instance-store disk.
    pub virtual_name: Option<String>,
    /// A launch's way to drop a mapping the image has.
    pub no_device: bool,
}

/// A registered image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub image_id: String,
    pub kind: ImageKind,
    pub name: String,
    pub description: String,
    pub owner_id: String,
    /// Where the bytes are in Walrus, and what they hash to.
    pub bucket: String,
    pub key: String,
    pub sha256: String,
    pub size: u64,
    pub architecture: String,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    pub root_device_name: Option<String>,
    pub virtualization_type: String,
    /// Its block device mappings; an EBS-backed image maps its root
    /// device to a snapshot (and has no bytes in Walrus).
    #[serde(default)]
    pub block_devices: Vec<BlockDevice>,
    #[serde(default)]
    pub state: ImageState,
    /// Why it failed, when it did.
    #[serde(default)]
    pub state_reason: String,
    /// Anyone may launch it.
    pub public: bool,
    /// Accounts (ids) the owner shared it with.
    pub launch_permissions: BTreeSet<String>,
    pub created_ms: i64,
}

impl Record for Image {
    const TABLE: &'static str = "images";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.image_id.clone()
    }
}

impl Image {
    /// The EBS mapping of its root device, when it is EBS-backed.
    pub fn ebs_root(&self) -> Option<&EbsDevice> {
        let root = self.root_device_name.as_deref()?;
        self.block_devices
            .iter()
            .find(|b| b.device_name == root)
            .and_then(|b| b.ebs.as_ref())
    }

    /// EC2's `rootDeviceType`: `ebs` or `instance-store`.
    pub fn root_device_type(&self) -> &'static str {
        if self.ebs_root().is_some() {
            "ebs"
        } else {
            "instance-store"
        }
    }

    /// True when `account_id` may see and launch this image.
    pub fn launchable_by(&self, account_id: &str) -> bool {
        self.owner_id == account_id || self.public || self.launch_permissions.contains(account_id)
    }
}

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("AMI name {name} is already in use by AMI {existing}")]
    DuplicateName { name: String, existing: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The image registry.
#[derive(Debug)]
pub struct Images {
    table: Table<Image>,
    /// Serializes registrations, so names stay unique per owner.
    registering: Mutex<()>,
}

impl Images {
    /// The registry in `store`.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table()?,
            registering: Mutex::new(()),
        })
    }

    /// Records `image` (durably) unless its owner has one of that name.
    pub fn register(&self, image: &Image) -> Result<(), ImageError> {
        let _one_at_a_time = self.registering.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = self
            .table
            .list()?
            .into_iter()
            .find(|i| i.owner_id == image.owner_id && i.name == image.name)
        {
            return Err(ImageError::DuplicateName {
                name: image.name.clone(),
                existing: existing.image_id,
            });
        }
        self.table.put(image)?;
        Ok(())
    }

    /// The image `id`.
    pub fn get(&self, id: &str) -> Result<Option<Image>, StoreError> {
        self.table.get(&id.to_string())
    }

    /// Every image, by id.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        self.table.list()
    }

    /// Replaces an image's record (its permissions, say).
    pub fn update(&self, image: &Image) -> Result<(), StoreError> {
        self.table.put(image).map(|_| ())
    }

    /// Forgets image `id`; true if it was there.
    pub fn deregister(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.table.delete(&id.to_string())?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, owner: &str, name: &str) -> Image {
        Image {
            image_id: id.into(),
            kind: ImageKind::Machine,
            name: name.into(),
            description: String::new(),
            owner_id: owner.into(),
            bucket: "b".into(),
            key: "k".into(),
            sha256: "0".repeat(64),
            size: 1,
            architecture: "x86_64".into(),
            kernel_id: None,
            ramdisk_id: None,
            root_device_name: None,
            virtualization_type: "paravirtual".into(),
            block_devices: Vec::new(),
            state: ImageState::Available,
            state_reason: String::new(),
            public: false,
            launch_permissions: BTreeSet::new(),
            created_ms: 0,
        }
    }

    #[test]
    fn names_are_unique_per_owner_and_permissions_decide_who_launches() {
        let store = Store::temporary().expect("store");
        let images = Images::open(&store).expect("open");
        images
            .register(&image("ami-1", "111", "tiny"))
            .expect("register");
        assert!(matches!(
            images.register(&image("ami-2", "111", "tiny")),
            Err(ImageError::DuplicateName { .. })
        ));
        images
            .register(&image("ami-3", "222", "tiny"))
            .expect("another owner");
        let mut shared = images.get("ami-1").expect("get").expect("there");
        assert!(shared.launchable_by("111") && !shared.launchable_by("222"));
        shared.launch_permissions.insert("222".into());
        images.update(&shared).expect("update");
        assert!(images
            .get("ami-1")
            .expect("get")
            .expect("there")
            .launchable_by("222"));
        assert!(images.deregister("ami-1").expect("deregister"));
        assert!(!images.deregister("ami-1").expect("again"));
        assert_eq!(images.list().expect("list").len(), 1);
    }
}
