//! The SC's volumes: a durable record of each volume it holds (sled), its
//! data in a [`VolumeBackend`]. Every change is recorded before it is made
//! and finished on restart, so a crash leaves no half-made or half-deleted
//! volume behind.

use std::sync::Arc;

use common::store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, VolumeBackend};

const GIB: u64 = 1 << 30;

/// The largest volume, in GiB (EC2's for gp2).
pub const MAX_GIB: u64 = 16384;

/// Where a volume is in its life on this SC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    Creating,
    Available,
    Deleting,
    /// Its snapshot could not be restored.
    Error,
}

impl VolumeState {
    /// EC2's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Available => "available",
            Self::Deleting => "deleting",
            Self::Error => "error",
        }
    }
}

/// A volume this SC holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub volume_id: String,
    pub size_gib: u64,
    pub state: VolumeState,
    pub created_ms: i64,
    /// The snapshot it is made from, if any, and Walrus's address.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub walrus: String,
    /// Why it is in error.
    #[serde(default)]
    pub reason: String,
}

impl Record for VolumeRecord {
    const TABLE: &'static str = "volumes";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.volume_id.clone()
    }
}

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume id {0}")]
    InvalidId(String),
    #[error("a volume is 1 to {MAX_GIB} GiB, not {0}")]
    InvalidSize(u64),
    #[error("volume {0} does not exist")]
    NotFound(String),
    #[error("volume {id} exists with {have} GiB")]
    Conflict { id: String, have: u64 },
    #[error("{asked} GiB asked, {free} GiB of this storage controller's capacity free")]
    Capacity { asked: u64, free: u64 },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fleece(#[from] crate::fleece::FleeceError),
}

/// The volumes of this SC.
#[derive(Debug, Clone)]
pub struct Volumes {
    table: Table<VolumeRecord>,
    backend: Arc<dyn VolumeBackend>,
    /// GiB its volumes may take in all (their full sizes); no limit unless
    /// set.
    capacity_gib: Arc<std::sync::atomic::AtomicU64>,
    /// Held from a create's capacity check to its record.
    admit: Arc<std::sync::Mutex<()>>,
    /// The snapshots being taken, and what they saved.
    fleeces: crate::fleece::Fleeces,
}

impl Volumes {
    /// The volumes recorded in `store`, their data in `backend`; finishes
    /// what a crash interrupted.
    pub fn open(store: &Store, backend: Arc<dyn VolumeBackend>) -> Result<Self, VolumeError> {
        let v = Self {
            table: store.table()?,
            capacity_gib: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
            admit: Arc::default(),
            fleeces: crate::fleece::Fleeces::open(store, backend.clone())?,
            backend,
        };
        for r in v.table.list()? {
            match r.state {
                VolumeState::Creating if r.snapshot_id.is_some() => {
                    // Filled again from its snapshot (see `snapshots`).
                    v.backend.create(&r.volume_id, r.size_gib * GIB)?;
                }
                VolumeState::Creating => {
                    v.backend.create(&r.volume_id, r.size_gib * GIB)?;
                    v.table.put(&VolumeRecord {
                        state: VolumeState::Available,
                        ..r.clone()
                    })?;
                    tracing::info!(volume = %r.volume_id, "finished a create a restart interrupted");
                }
                VolumeState::Deleting => {
                    v.backend.delete(&r.volume_id)?;
                    v.table.delete(&r.volume_id)?;
                    tracing::info!(volume = %r.volume_id, "finished a delete a restart interrupted");
                }
                VolumeState::Available | VolumeState::Error => {}
            }
        }
        Ok(v)
    }

    /// The volume `id`, if held here.
    pub fn get(&self, id: &str) -> Result<Option<VolumeRecord>, VolumeError> {
        Ok(self.table.get(&id.to_string())?)
    }

    /// Every volume held here.
    pub fn list(&self) -> Result<Vec<VolumeRecord>, VolumeError> {
        Ok(self.table.list()?)
    }

    /// Limits what its volumes may take in all to `gib` GiB.
    pub fn set_capacity(&self, gib: u64) {
        self.capacity_gib
            .store(gib, std::sync::atomic::Ordering::Relaxed);
    }

    /// What its volumes may take in all, GiB.
    pub fn capacity_gib(&self) -> u64 {
        self.capacity_gib.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What its volumes take (their full sizes), GiB.
    pub fn provisioned_gib(&self) -> Result<u64, VolumeError> {
        Ok(self.table.list()?.iter().map(|v| v.size_gib).sum())
    }

    /// Checks the id and size, records volume `id` `creating` (from
    /// `snapshot`, with Walrus's address, when given) and makes its empty
    /// data. `Ok(Err(record))` when it was recorded already: the same
    /// request again answers the volume as it is.
    fn begin_create(
        &self,
        id: &str,
        size_gib: u64,
        snapshot: Option<(&str, &str)>,
    ) -> Result<Result<VolumeRecord, VolumeRecord>, VolumeError> {
        if !common::ids::well_formed(id, &["vol"]) {
            return Err(VolumeError::InvalidId(id.to_string()));
        }
        if !(1..=MAX_GIB).contains(&size_gib) {
            return Err(VolumeError::InvalidSize(size_gib));
        }
        let creating = VolumeRecord {
            volume_id: id.to_string(),
            size_gib,
            state: VolumeState::Creating,
            created_ms: common::time::unix_ms(),
            snapshot_id: snapshot.map(|(s, _)| s.to_string()),
            walrus: snapshot.map(|(_, w)| w.to_string()).unwrap_or_default(),
            reason: String::new(),
        };
        let admitted = self.admit.lock().unwrap_or_else(|p| p.into_inner());
        if self.get(id)?.is_none() {
            let (capacity, used) = (self.capacity_gib(), self.provisioned_gib()?);
            if used.saturating_add(size_gib) > capacity {
                return Err(VolumeError::Capacity {
                    asked: size_gib,
                    free: capacity.saturating_sub(used),
                });
            }
        }
        let inserted = self.table.insert_new(&creating)?;
        drop(admitted);
        if !inserted {
            return match self.get(id)? {
                Some(r) if r.size_gib == size_gib => Ok(Err(r)),
                Some(r) => Err(VolumeError::Conflict {
                    id: id.to_string(),
                    have: r.size_gib,
                }),
                None => Err(VolumeError::NotFound(id.to_string())),
            };
        }
        self.backend.create(id, size_gib * GIB)?;
        Ok(Ok(creating))
    }

    /// Makes volume `id` of `size_gib` GiB, empty. Idempotent: the same
    /// request again answers the volume as it is.
    pub fn create(&self, id: &str, size_gib: u64) -> Result<VolumeRecord, VolumeError> {
        let creating = match self.begin_create(id, size_gib, None)? {
            Ok(new) => new,
            Err(existing) => return Ok(existing),
        };
        let available = VolumeRecord {
            state: VolumeState::Available,
            ..creating
        };
        self.table.put(&available)?;
        Ok(available)
    }

    /// Makes volume `id` of `size_gib` GiB, empty and `creating`, to be
    /// filled from `snapshot_id` ([`Volumes::filled`] ends it). Idempotent.
    pub fn create_from(
        &self,
        id: &str,
        size_gib: u64,
        snapshot_id: &str,
        walrus: &str,
    ) -> Result<VolumeRecord, VolumeError> {
        Ok(self
            .begin_create(id, size_gib, Some((snapshot_id, walrus)))?
            .unwrap_or_else(|existing| existing))
    }

    /// Ends the filling of volume `id`: available, or in error with `failed`.
    pub fn filled(&self, id: &str, failed: Option<String>) -> Result<(), VolumeError> {
        let Some(r) = self.get(id)? else {
            return Ok(());
        };
        self.table.put(&VolumeRecord {
            state: if failed.is_some() {
                VolumeState::Error
            } else {
                VolumeState::Available
            },
            reason: failed.unwrap_or_default(),
            ..r
        })?;
        Ok(())
    }

    /// Deletes volume `id` and its data; one not held here is gone already.
    pub fn delete(&self, id: &str) -> Result<(), VolumeError> {
        let Some(r) = self.get(id)? else {
            return Ok(());
        };
        self.table.put(&VolumeRecord {
            state: VolumeState::Deleting,
            ..r
        })?;
        self.backend.delete(id)?;
        self.table.delete(&id.to_string())?;
        Ok(())
    }

    /// The backend, for exports and snapshots.
    pub fn backend(&self) -> &Arc<dyn VolumeBackend> {
        &self.backend
    }

    /// The snapshots being taken of volumes in use (copy before write).
    pub fn fleeces(&self) -> &crate::fleece::Fleeces {
        &self.fleeces
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{FileBackend, MemoryBackend};

    const ID: &str = "vol-0123456789abcdef0";

    #[test]
    fn volumes_are_made_once_checked_and_deleted() {
        let store = Store::in_memory();
        let v = Volumes::open(&store, Arc::new(MemoryBackend::default())).expect("open");
        assert!(matches!(
            v.create("vol-xyz", 1),
            Err(VolumeError::InvalidId(_))
        ));
        assert!(matches!(v.create(ID, 0), Err(VolumeError::InvalidSize(0))));
        assert!(matches!(
            v.create(ID, MAX_GIB + 1),
            Err(VolumeError::InvalidSize(_))
        ));
        assert!(v.list().expect("list").is_empty(), "nothing was recorded");
        let r = v.create(ID, 2).expect("create");
        assert_eq!(r.state, VolumeState::Available);
        assert_eq!(v.backend().size(ID).expect("size"), Some(2 * GIB));
        assert_eq!(v.create(ID, 2).expect("again").created_ms, r.created_ms);
        assert!(matches!(v.create(ID, 3), Err(VolumeError::Conflict { .. })));
        v.delete(ID).expect("delete");
        v.delete(ID).expect("delete again");
        assert_eq!(v.get(ID).expect("get"), None);
        assert_eq!(v.backend().size(ID).expect("size"), None);
    }

    #[test]
    fn creates_stop_at_the_capacity() {
        let store = Store::in_memory();
        let v = Volumes::open(&store, Arc::new(MemoryBackend::default())).expect("open");
        v.set_capacity(3);
        v.create(ID, 2).expect("2 of 3 GiB");
        let other = "vol-0000000000000000f";
        assert!(matches!(
            v.create(other, 2),
            Err(VolumeError::Capacity { asked: 2, free: 1 })
        ));
        assert_eq!(v.get(other).expect("get"), None, "nothing recorded");
        assert_eq!(v.provisioned_gib().expect("provisioned"), 2);
        v.create(ID, 2)
            .expect("the same create again is no new room");
        v.create(other, 1).expect("1 GiB fits");
        v.delete(ID).expect("delete");
        assert_eq!(v.provisioned_gib().expect("provisioned"), 1);
    }

    #[test]
    fn a_restart_finishes_interrupted_creates_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("store");
        let backend = Arc::new(FileBackend::open(&dir.path().join("volumes")).expect("backend"));
        let table: Table<VolumeRecord> = store.table().expect("table");
        // A create recorded but not made, and a delete recorded but not done.
        table
            .put(&VolumeRecord {
                volume_id: ID.into(),
                size_gib: 1,
                state: VolumeState::Creating,
                created_ms: 1,
                snapshot_id: None,
                walrus: String::new(),
                reason: String::new(),
            })
            .expect("put");
        let gone = "vol-0123456789abcdef1";
        backend.create(gone, GIB).expect("create");
        table
            .put(&VolumeRecord {
                volume_id: gone.into(),
                size_gib: 1,
                state: VolumeState::Deleting,
                created_ms: 1,
                snapshot_id: None,
                walrus: String::new(),
                reason: String::new(),
            })
            .expect("put");
        let v = Volumes::open(&store, backend.clone()).expect("open");
        assert_eq!(
            v.get(ID).expect("get").map(|r| r.state),
            Some(VolumeState::Available)
        );
        assert_eq!(backend.size(ID).expect("size"), Some(GIB));
        assert_eq!(v.get(gone).expect("get"), None);
        assert_eq!(backend.size(gone).expect("size"), None);
    }
}
