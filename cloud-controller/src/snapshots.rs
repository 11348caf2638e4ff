//! The cloud's record of EBS snapshots: who owns each, of which volume,
//! how far it is, and who may make volumes from it. The data lives in
//! Walrus, written by the zone's storage controller.

use std::collections::BTreeSet;

use common::store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};

pub use common::snapshot::SnapshotState;

/// A snapshot of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// `snap-` and 17 hex digits.
    pub snapshot_id: String,
    pub account_id: String,
    pub volume_id: String,
    /// The zone whose storage controller took it.
    pub zone: String,
    pub volume_size_gib: u64,
    pub state: SnapshotState,
    /// `0%` to `100%`.
    pub progress: String,
    pub start_ms: i64,
    pub description: String,
    /// Accounts (or `all`) that may make volumes from it.
    pub create_volume_permissions: BTreeSet<String>,
    /// Why it is in error.
    pub reason: String,
    /// Bytes it added to Walrus.
    pub stored_bytes: u64,
}

impl SnapshotRecord {
    /// True when `account_id` may make volumes from it.
    pub fn restorable_by(&self, account_id: &str) -> bool {
        self.account_id == account_id
            || self.create_volume_permissions.contains("all")
            || self.create_volume_permissions.contains(account_id)
    }
}

impl Record for SnapshotRecord {
    const TABLE: &'static str = "snapshots";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.snapshot_id.clone()
    }
}

/// The snapshot store.
#[derive(Debug)]
pub struct Snapshots {
    table: Table<SnapshotRecord>,
}

impl Snapshots {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table()?,
        })
    }

    pub fn put(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        self.table.put(s).map(|_| ())
    }

    pub fn get(&self, id: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        self.table.get(&id.to_string())
    }

    pub fn list(&self) -> Result<Vec<SnapshotRecord>, StoreError> {
        self.table.list()
    }

    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.table.delete(&id.to_string()).map(|_| ())
    }
}
