//! EBS snapshots: CreateSnapshot, DeleteSnapshot and who may make volumes
//! from them. The cloud records a snapshot `pending` and answers; the
//! volume's storage controller writes it into Walrus, and the cloud follows
//! its progress until it is `completed` (or `error`).

use std::time::Duration;

use super::{error::IdKind, tags::TagPair, Cloud, CoreError};
use crate::{
    snapshots::{SnapshotRecord, SnapshotState},
    tags::Tag,
    volumes::VolumeState,
};

/// A snapshot as just started, with its tags.
#[derive(Debug, Clone)]
pub struct CreatedSnapshot {
    pub snapshot: SnapshotRecord,
    pub tags: Vec<Tag>,
}

/// A change of who may make volumes from a snapshot.
#[derive(Debug, Clone, Default)]
pub struct PermissionChange {
    /// Account ids, or `all`.
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl Cloud {
    fn snapshot_id_checked(id: &str) -> Result<(), CoreError> {
        if IdKind::Snapshot.well_formed(id) {
            Ok(())
        } else {
            Err(CoreError::Malformed {
                kind: IdKind::Snapshot,
                id: id.to_string(),
            })
        }
    }

    pub(super) fn no_snapshot(id: &str) -> CoreError {
        CoreError::NotFound {
            kind: IdKind::Snapshot,
            ids: vec![id.to_string()],
        }
    }

    /// Snapshot `id` of account `account_id`.
    pub fn own_snapshot(&self, account_id: &str, id: &str) -> Result<SnapshotRecord, CoreError> {
        Self::snapshot_id_checked(id)?;
        match self.snapshots.get(id)? {
            Some(s) if s.account_id == account_id => Ok(s),
            _ => Err(Self::no_snapshot(id)),
        }
    }

    /// Snapshot `id` if `account_id` may make volumes from it (and it is
    /// completed).
    pub fn restorable_snapshot(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<SnapshotRecord, CoreError> {
        Self::snapshot_id_checked(id)?;
        match self.snapshots.get(id)? {
            Some(s) if s.restorable_by(account_id) => {
                if s.state != SnapshotState::Completed {
                    return Err(CoreError::IncorrectVolumeState(format!(
                        "Snapshot {id} is not completed."
                    )));
                }
                Ok(s)
            }
            _ => Err(Self::no_snapshot(id)),
        }
    }

    /// CreateSnapshot of one of the account's volumes.
    pub async fn create_snapshot(
        &self,
        account_id: &str,
        volume_id: &str,
        description: &str,
        tags: &[TagPair],
        dry_run: bool,
    ) -> Result<CreatedSnapshot, CoreError> {
        let v = self.own_volume(account_id, volume_id)?;
        if !matches!(v.state, VolumeState::Available | VolumeState::InUse) {
            return Err(CoreError::IncorrectVolumeState(format!(
                "Volume '{volume_id}' is in the '{}' state.",
                v.state.name()
            )));
        }
        if description.len() > 255 {
            return Err(CoreError::InvalidValue {
                param: "Description",
                value: description.chars().take(20).collect(),
                why: "A description is at most 255 characters.".into(),
            });
        }
        if self.registry.known_walrus().is_none() || !self.storage.serves(&v.zone) {
            return Err(CoreError::Unavailable(format!(
                "snapshots need Walrus and the storage controller of {}",
                v.zone
            )));
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let snapshot = SnapshotRecord {
            snapshot_id: common::ids::resource_id("snap"),
            account_id: account_id.to_string(),
            volume_id: volume_id.to_string(),
            zone: v.zone.clone(),
            volume_size_gib: v.size_gib,
            state: SnapshotState::Pending,
            progress: "0%".into(),
            start_ms: common::time::unix_ms(),
            description: description.to_string(),
            create_volume_permissions: Default::default(),
            reason: String::new(),
            stored_bytes: 0,
        };
        self.snapshots.put(&snapshot)?;
        let tags = self.tag_new(account_id, &[(&snapshot.snapshot_id, "snapshot")], tags)?;
        let cloud = self.clone();
        let id = snapshot.snapshot_id.clone();
        tokio::spawn(async move {
            // Followed closely for a while, then by the volume task.
            for _ in 0..600 {
                if !cloud.follow_snapshot(&id).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Ok(CreatedSnapshot { snapshot, tags })
    }

    /// Asks the storage controller how far pending snapshot `id` is and
    /// records it; true while it is still pending.
    pub(super) async fn follow_snapshot(&self, id: &str) -> bool {
        let Ok(Some(s)) = self.snapshots.get(id) else {
            return false;
        };
        if s.state != SnapshotState::Pending {
            return false;
        }
        let walrus = self.registry.known_walrus().unwrap_or_default();
        match self
            .storage
            .create_snapshot(&s.zone, id, &s.volume_id, &walrus)
            .await
        {
            Ok(p) => {
                let state = SnapshotState::parse(&p.state).unwrap_or(SnapshotState::Pending);
                let next = SnapshotRecord {
                    state,
                    progress: p.progress,
                    reason: p.reason,
                    stored_bytes: p.stored_bytes,
                    ..s
                };
                if let Err(e) = self.snapshots.put(&next) {
                    tracing::error!(snapshot = %id, error = %e, "snapshot record not updated");
                }
                if state == SnapshotState::Completed {
                    tracing::info!(snapshot = %id, stored_bytes = next.stored_bytes, "snapshot completed");
                }
                state == SnapshotState::Pending
            }
            Err(super::StorageError::Refused(why)) => {
                let _ = self.snapshots.put(&SnapshotRecord {
                    state: SnapshotState::Error,
                    reason: why,
                    ..s
                });
                false
            }
            Err(e) => {
                tracing::info!(snapshot = %id, error = %e, "snapshot progress not known now");
                true
            }
        }
    }

    /// DeleteSnapshot: its data leaves Walrus, then the record goes.
    pub async fn delete_snapshot(
        &self,
        account_id: &str,
        id: &str,
        dry_run: bool,
    ) -> Result<(), CoreError> {
        let s = self.own_snapshot(account_id, id)?;
        if s.state == SnapshotState::Pending {
            return Err(CoreError::IncorrectVolumeState(format!(
                "Snapshot {id} is still pending."
            )));
        }
        if let Some(image) = self.images.list()?.into_iter().find(|i| {
            i.block_devices
                .iter()
                .filter_map(|b| b.ebs.as_ref())
                .any(|e| e.snapshot_id.as_deref() == Some(id))
        }) {
            return Err(CoreError::SnapshotInUse(format!(
                "The snapshot {id} is currently in use by {}",
                image.image_id
            )));
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let walrus = self
            .registry
            .known_walrus()
            .ok_or_else(|| CoreError::Unavailable("Walrus is not known".into()))?;
        self.storage
            .delete_snapshot(&s.zone, id, &walrus)
            .await
            .map_err(|e| CoreError::Unavailable(e.to_string()))?;
        self.snapshots.remove(id)?;
        self.tags.forget(id)?;
        tracing::info!(snapshot = %id, "snapshot deleted");
        Ok(())
    }

    /// ModifySnapshotAttribute `createVolumePermission`.
    pub fn modify_snapshot_permission(
        &self,
        account_id: &str,
        id: &str,
        change: PermissionChange,
        dry_run: bool,
    ) -> Result<(), CoreError> {
        let mut s = self.own_snapshot(account_id, id)?;
        for who in change.add.iter().chain(&change.remove) {
            if who != "all" && !(who.len() == 12 && who.bytes().all(|b| b.is_ascii_digit())) {
                return Err(CoreError::InvalidAttributeItem(who.clone()));
            }
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        for who in change.add {
            s.create_volume_permissions.insert(who);
        }
        for who in &change.remove {
            s.create_volume_permissions.remove(who);
        }
        self.snapshots.put(&s)?;
        Ok(())
    }

    /// ResetSnapshotAttribute `createVolumePermission`: the owner only.
    pub fn reset_snapshot_permission(
        &self,
        account_id: &str,
        id: &str,
        dry_run: bool,
    ) -> Result<(), CoreError> {
        let mut s = self.own_snapshot(account_id, id)?;
        if dry_run {
            return Err(CoreError::DryRun);
        }
        s.create_volume_permissions.clear();
        self.snapshots.put(&s)?;
        Ok(())
    }

    /// Follows every pending snapshot once (the volume task's round).
    pub(super) async fn follow_snapshots(&self) {
        for s in self.snapshots.list().unwrap_or_default() {
            if s.state == SnapshotState::Pending {
                self.follow_snapshot(&s.snapshot_id).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::{
        describe::SnapshotQuery,
        fake::{system_account, test_cloud, FakeCluster, FakeStorage},
        volumes::NewVolume,
    };

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn snapshots_are_taken_shared_restored_and_deleted() {
        let (mut cloud, _dir) = test_cloud(Arc::new(FakeCluster::new(1, 8)));
        cloud.storage = Arc::new(FakeStorage::default());
        let me = system_account(&cloud);
        let volume = |account: &str, size: Option<u64>, snap: Option<&str>| NewVolume {
            account_id: account.to_string(),
            zone: "zone-1".into(),
            size_gib: size,
            snapshot_id: snap.map(str::to_string),
            ..Default::default()
        };
        let vol = cloud
            .create_volume(volume(&me, Some(3), None), false)
            .await
            .expect("volume")
            .volume
            .volume_id;
        settle().await;
        let snap = cloud
            .create_snapshot(&me, &vol, "nightly", &[], false)
            .await
            .expect("snapshot")
            .snapshot;
        assert_eq!(snap.state, SnapshotState::Pending);
        assert_eq!(snap.volume_size_gib, 3);
        for _ in 0..100 {
            settle().await;
            if cloud
                .snapshots
                .get(&snap.snapshot_id)
                .expect("get")
                .map(|s| s.state)
                == Some(SnapshotState::Completed)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let id = snap.snapshot_id.clone();
        assert_eq!(
            cloud.snapshots.get(&id).expect("get").map(|s| s.state),
            Some(SnapshotState::Completed)
        );
        // Smaller than the snapshot: refused; no size: the snapshot's.
        assert!(matches!(
            cloud
                .create_volume(volume(&me, Some(2), Some(&id)), false)
                .await,
            Err(CoreError::InvalidValue { param: "Size", .. })
        ));
        let restored = cloud
            .create_volume(volume(&me, None, Some(&id)), false)
            .await
            .expect("from the snapshot");
        assert_eq!(restored.volume.size_gib, 3);
        assert_eq!(restored.volume.snapshot_id.as_deref(), Some(id.as_str()));
        // Another account sees it only once it is shared.
        cloud.accounts.create("alice").expect("alice");
        let alice = cloud.accounts.find("alice").expect("alice").account_id;
        let theirs = |cloud: &Cloud| {
            cloud
                .describe_snapshots(SnapshotQuery {
                    account_id: alice.clone(),
                    ..Default::default()
                })
                .expect("describe")
                .items
                .len()
        };
        assert_eq!(theirs(&cloud), 0);
        assert!(matches!(
            cloud
                .create_volume(volume(&alice, None, Some(&id)), false)
                .await,
            Err(CoreError::NotFound { .. })
        ));
        assert!(matches!(
            cloud.modify_snapshot_permission(
                &me,
                &id,
                PermissionChange {
                    add: vec!["not-an-account".into()],
                    ..Default::default()
                },
                false
            ),
            Err(CoreError::InvalidAttributeItem(_))
        ));
        cloud
            .modify_snapshot_permission(
                &me,
                &id,
                PermissionChange {
                    add: vec![alice.clone()],
                    ..Default::default()
                },
                false,
            )
            .expect("share");
        assert_eq!(theirs(&cloud), 1);
        cloud
            .create_volume(volume(&alice, None, Some(&id)), false)
            .await
            .expect("alice restores it");
        assert!(matches!(
            cloud.delete_snapshot(&alice, &id, false).await,
            Err(CoreError::NotFound { .. })
        ));
        cloud
            .reset_snapshot_permission(&me, &id, false)
            .expect("reset");
        assert_eq!(theirs(&cloud), 0);
        cloud
            .delete_snapshot(&me, &id, false)
            .await
            .expect("delete");
        assert_eq!(cloud.snapshots.get(&id).expect("get"), None);
    }
}
