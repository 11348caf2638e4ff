//! The cloud's record of EBS volumes: who owns each, in which zone, its
//! size, state and attachment. The data lives on the zone's storage
//! controller.

use common::store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};

/// A volume's state, as EC2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    Creating,
    Available,
    InUse,
    Deleting,
    Error,
}

impl VolumeState {
    /// EC2's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Available => "available",
            Self::InUse => "in-use",
            Self::Deleting => "deleting",
            Self::Error => "error",
        }
    }
}

/// An attachment to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub instance_id: String,
    pub device: String,
    /// `attaching`, `attached`, `detaching`.
    pub state: String,
    pub attach_ms: i64,
    pub delete_on_termination: bool,
}

/// A volume of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// `vol-` and 17 hex digits.
    pub volume_id: String,
    pub account_id: String,
    /// The availability zone (its storage controller holds the data).
    pub zone: String,
    pub size_gib: u64,
    /// The snapshot it was made from, if any.
    pub snapshot_id: Option<String>,
    /// `standard` or `gp2`.
    pub volume_type: String,
    pub state: VolumeState,
    pub created_ms: i64,
    pub attachment: Option<Attachment>,
    /// Why it is in `error`, or why its last attachment was refused.
    #[serde(default)]
    pub reason: String,
    /// The `ClientToken` it was created with, if any.
    #[serde(default)]
    pub client_token: Option<String>,
    /// ModifyVolumeAttribute's `autoEnableIO`.
    #[serde(default)]
    pub auto_enable_io: bool,
}

impl Record for VolumeRecord {
    const TABLE: &'static str = "volumes";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.volume_id.clone()
    }
}

/// The volume store.
#[derive(Debug)]
pub struct Volumes {
    table: Table<VolumeRecord>,
}

impl Volumes {
    /// The volumes in `store`.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table()?,
        })
    }

    /// Records a new volume.
    pub fn insert(&self, v: &VolumeRecord) -> Result<bool, StoreError> {
        self.table.insert_new(v)
    }

    /// Replaces the record of a volume.
    pub fn put(&self, v: &VolumeRecord) -> Result<(), StoreError> {
        self.table.put(v).map(|_| ())
    }

    /// Volume `id`.
    pub fn get(&self, id: &str) -> Result<Option<VolumeRecord>, StoreError> {
        self.table.get(&id.to_string())
    }

    /// Every volume.
    pub fn list(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        self.table.list()
    }

    /// Every volume of `account_id`.
    pub fn of(&self, account_id: &str) -> Result<Vec<VolumeRecord>, StoreError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|v| v.account_id == account_id)
            .collect())
    }

    /// Forgets volume `id`.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.table.delete(&id.to_string()).map(|_| ())
    }
}

/// A root volume replacement (CreateReplaceRootVolumeTask): an instance's
/// root volume swapped for a new one made from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceRootTask {
    /// `replacevol-` and 17 hex digits.
    pub task_id: String,
    pub account_id: String,
    pub instance_id: String,
    /// EC2's `taskState`: `pending`, `in-progress`, `succeeded`, `failed`.
    pub state: String,
    pub start_ms: i64,
    pub complete_ms: Option<i64>,
    /// The snapshot the new root is made from.
    pub snapshot_id: String,
    /// The image asked for, when one was.
    pub image_id: Option<String>,
    /// Whether the snapshot was asked for (else the launch state's).
    pub snapshot_asked: bool,
    pub delete_replaced: bool,
    pub old_volume_id: String,
    pub new_volume_id: Option<String>,
    /// Why it failed, when it did.
    pub reason: String,
}

impl Record for ReplaceRootTask {
    const TABLE: &'static str = "replace_root_tasks";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.task_id.clone()
    }
}
